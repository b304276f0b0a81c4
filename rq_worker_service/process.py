"""How the worker's processes end: children that must not outlive it, and the worker's own way out.

Children (the work horse and the scheduler): when systemd restarts an instance after ``kill -9``,
an OOM kill or a watchdog abort, the new process fails-and-retries the job its predecessor was
running. A horse still running that job as an orphan would then run it twice at once, so each
child asks the kernel to kill it with its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping
from pathlib import Path

_PR_SET_PDEATHSIG = 1

LEFT_FILE = "left"
"""In the unit's RuntimeDirectory: this run of the worker left through ``run``'s own way out. The
unit's ExecStopPost= fails a run that exited 0 without it (``systemd/rq-worker@.service``)."""


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def mark_left(env: Mapping[str, str] = os.environ) -> None:
    """Say that the worker leaves through its own way out, with the status ``run`` returned.

    A process that exits 0 without passing here left with a job in hand: a simple worker's job
    called ``os._exit(0)`` (or C code ``exit(0)``), which no handler of ours can see. systemd counts
    an exit 0 as a success, and ``Restart=on-failure`` would leave the instance down with the job
    started in no live worker; the unit's ExecStopPost= fails such a run instead, so that it is
    restarted and the next start re-queues the job. Outside systemd (no RuntimeDirectory): nothing.
    A file that cannot be written makes a clean stop look like that crash: restarted, the safe side."""
    marker = _left_file(env)
    if marker is not None:
        try:
            marker.touch()
        except OSError:
            pass


def forget_left(env: Mapping[str, str] = os.environ) -> None:
    """At start: a RuntimeDirectory kept across runs (``RuntimeDirectoryPreserve=``) must not carry
    the previous run's mark into this one."""
    marker = _left_file(env)
    if marker is not None:
        try:
            marker.unlink(missing_ok=True)
        except OSError:
            pass  # not ours to remove: the run's own mark still tells


def _left_file(env: Mapping[str, str]) -> Path | None:
    directory = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(directory) / LEFT_FILE if directory else None
