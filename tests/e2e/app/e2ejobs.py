"""Job functions for the e2e tests, installed in the sandbox at /srv/e2e-app (RQ_APP_PATH)."""

from __future__ import annotations

import ctypes
import json
import logging
import socket
import subprocess
import time

from rq import Worker, get_current_job

log = logging.getLogger("e2ejobs")


def _count() -> int:
    job = get_current_job()
    return int(job.connection.incr(f"executions:{job.id}"))


def sleep_job(seconds: float) -> str:
    n = _count()
    log.info("e2e job starting execution %d, %ss", n, seconds)
    time.sleep(seconds)
    log.info("e2e job done")
    return "ok"


def quick_job(value: int) -> int:
    _count()
    time.sleep(0.05)
    return value


def subprocess_job(seconds: float) -> str:
    """Runs ``sleep`` as a subprocess, as jobs run their tools: it starts with the job's environment."""
    _count()
    subprocess.run(["sleep", str(seconds)], check=True)
    return "ok"


def ffi_callback_job() -> list[int]:
    """C code calling back into Python through a libffi closure, as C extensions with callbacks do:
    the closure needs executable memory, which MemoryDenyWriteExecute= could forbid."""
    _count()
    values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))(
        lambda a, b: a[0] - b[0])
    ctypes.CDLL(None).qsort(values, len(values), ctypes.sizeof(ctypes.c_int), compare)
    return list(values)


def failing_job() -> None:
    _count()
    raise RuntimeError("this job always fails")


def traced_job(seconds: float) -> str:
    """Records each execution's start and end (host, Redis server time) in the list ``trace``, so a
    test can tell which host ran what, and when, across hosts whose clocks it does not trust."""
    job = get_current_job()
    conn = job.connection
    _count()
    conn.rpush("trace", json.dumps({"id": job.id, "host": socket.gethostname(), "event": "start",
                                    "t": _server_time(conn)}))
    time.sleep(seconds)
    conn.rpush("trace", json.dumps({"id": job.id, "host": socket.gethostname(), "event": "end",
                                    "t": _server_time(conn)}))
    return "ok"


def _server_time(conn) -> float:
    seconds, micros = conn.time()
    return seconds + micros / 1e6


def exiting_job() -> str:
    """Ends the process running it with status 0 on its first execution: in a simple worker, the
    worker itself (as a job calling os._exit(0), or C code exit(0), does)."""
    import os

    if _count() == 1:
        os._exit(0)
    return "ok"


class AppWorker(Worker):
    """An app's own worker class (RQ_WORKER_CLASS=e2ejobs.AppWorker): counts the jobs it ran in Redis,
    from the worker process, so a test sees that the app's override ran under the service."""

    def execute_job(self, job, queue):
        self.connection.incr("app-worker:jobs")
        return super().execute_job(job, queue)
