"""Child processes that must not outlive the worker: the work horse and the scheduler.

When systemd restarts an instance after ``kill -9``, an OOM kill or a watchdog abort, the new
process fails-and-retries the job its predecessor was running. A horse still running that job as
an orphan would then run it twice at once, so each child asks the kernel to kill it with its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
