"""The matrix's job: records each run's start and end outside rq's keys, and whether another run of
the same job held its lock at the start (two runs at once)."""

from __future__ import annotations

import fcntl
import json
import os
import time

from rq import get_current_job


def _record(name: str, **fields: object) -> None:
    line = json.dumps({**fields, "pid": os.getpid(), "t": time.time()}) + "\n"
    fd = os.open(os.path.join(os.environ["RQWS_FAULT_DIR"], name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write in append mode: lines from several processes do not mix
    finally:
        os.close(fd)


def run(seconds: float, fail: bool = False) -> str:
    job = get_current_job()
    assert job is not None
    lock = open(os.path.join(os.environ["RQWS_FAULT_DIR"], f"lock-{job.id}"), "a")
    try:
        # POSIX record lock: held by this process only (not inherited by a fork), freed when it dies.
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        overlap = False
    except OSError:
        overlap = True
    _record("runs.jsonl", job=job.id, event="start", overlap=overlap)
    time.sleep(seconds)
    _record("runs.jsonl", job=job.id, event="end", failed=fail)
    lock.close()
    if fail:
        raise RuntimeError("this job fails on purpose")
    return "ok"


def on_failure(job, connection, type, value, traceback) -> None:  # noqa: A002 (rq's parameter names)
    _record("callbacks.jsonl", job=job.id)
