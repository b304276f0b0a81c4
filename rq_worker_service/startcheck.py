"""Would the worker start now? ``run --check`` in a fresh process, as the unit's ExecReload= runs it.

A recycle (RQ_MAX_JOBS, RQ_MAX_MEMORY: ``parts.recycling``) re-executes the worker in place, as a reload
does, but nobody ran ``run --check`` before it: a start that fails then exits 78, which the unit's
RestartPreventExitStatus=78 leaves dead, jobs queued. Asking in the running process is not enough:
its app modules are imported already, and Python's import cache (and ``classes``/``appimport``'s)
answers with the code of the last start; an app deploy that renamed RQ_WORKER_CLASS's class, a job
class, an exception handler or broke the settings module passed such a check and failed the new
process. So the check is a process of its own, started as the re-execution will be: the same
interpreter, command line (``--check`` added after ``run``), working directory and environment, the
Redis secrets handed over in a memfd (``secret_env.handover``), never on its command line or in its
environment. It costs one interpreter start per recycle.

It may take as long as the app's imports: the caller ticks meanwhile (watchdog, fencing beat), and it
is bounded well under the watchdog period, which the re-executed process's own start must also fit in.
A stop or reload asked meanwhile ends it at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from .secret_env import handover

TIMEOUT = 30.0
"""Seconds a check may take without a watchdog; with one, half its period (``time_limit``)."""
SLICE = 0.2
"""Seconds between two looks at the check: the caller's tick and a stop asked meanwhile."""
CONFIG_ERROR = "configuration error: "
"""What ``run --check``'s one error line says before the problem (``service.run``)."""
NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""Only the worker talks to systemd (the unit's NotifyAccess=main)."""


def time_limit(watchdog_seconds: float | None) -> float:
    return min(TIMEOUT, watchdog_seconds / 2) if watchdog_seconds else TIMEOUT


def check_command(orig_argv: Sequence[str], argv: Sequence[str]) -> list[str]:
    """This process's command line (``sys.orig_argv``, what a re-execution runs) as ``run --check``:
    ``argv`` (``sys.argv``) is its tail from the script on, whose first argument is ``run``."""
    at = len(orig_argv) - len(argv) + 1  # "run": after the interpreter, its options and the script or -m module
    return [sys.executable, *orig_argv[1:at + 1], "--check", *orig_argv[at + 1:]]


def problem_line(status: int, stderr: bytes, secrets: Mapping[str, str]) -> str:
    """The one line saying why ``run --check`` failed (exit ``status``, its ``stderr``)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    said = [line[line.index(CONFIG_ERROR):] for line in lines if CONFIG_ERROR in line]
    if said:
        line = said[-1]
    else:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        line = f"run --check {how}" + (f": {lines[-1]}" if lines else "")
    for secret in filter(None, secrets.values()):
        line = line.replace(secret, "***")  # (a traceback's last line may quote one)
    return line


def start_problem(command: Sequence[str], environ: Mapping[str, str], secrets: Mapping[str, str], limit: float,
                  tick: Callable[[], None], interrupted: Callable[[], bool],
                  clock: Callable[[], float] = time.monotonic) -> str | None:
    """Why a start now would fail (the one line), or None: runs ``command`` (``check_command``) in
    ``environ`` with ``secrets`` handed over, calling ``tick`` every ``SLICE`` while it runs. None too
    once ``interrupted()`` (a stop or reload asked meanwhile: it wins over the recycle anyway)."""
    env = {key: value for key, value in environ.items() if key not in NOT_INHERITED}
    fd = handover(secrets, env)
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, pass_fds=() if fd is None else (fd,))
    except OSError as exc:
        return f"cannot start run --check ({command[0]}: {exc.strerror})"
    finally:
        if fd is not None:
            os.close(fd)  # the child has its own
    deadline = clock() + limit
    with proc:
        while True:
            try:
                _, stderr = proc.communicate(timeout=max(0.0, min(SLICE, deadline - clock())))
                break
            except subprocess.TimeoutExpired:
                if interrupted() or clock() >= deadline:
                    proc.kill()
                    proc.communicate()
                    return None if interrupted() else (f"run --check did not finish within {limit:g}s (the app's "
                                                       "imports or RQ_SETTINGS_MODULE hang or are that slow)")
                tick()
    return None if proc.returncode == 0 else problem_line(proc.returncode, stderr, secrets)
