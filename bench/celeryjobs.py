"""The Celery side of ``bench/under_systemd.py``: a Celery 5 app with one no-op task, deployed as
Celery's documentation deploys it (``celery multi`` under its systemd unit, docs.celeryq.dev
"Daemonization"), the Redis broker, no result backend.

Each task notes when it started and ended in a file of its own process (no Redis command: the
measurement reads the files), as rq's ``started_at`` and ``ended_at`` do for the rq sides.
``CELERY_BENCH_ACKS_LATE=1`` (the unit's environment file) turns on ``task_acks_late``: a task is
acknowledged after it ran, not before, Celery's setting for not losing a task with its worker.
"""

from __future__ import annotations

import os
import time
from typing import IO

from celery import Celery

TIMES = os.environ.get("CELERY_BENCH_TIMES", "/var/lib/celery-bench")
"""Where each process notes its tasks' times: one file per pid, a line "start end" per task."""

app = Celery("celeryjobs", broker=os.environ.get("CELERY_BENCH_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, task_acks_late=os.environ.get("CELERY_BENCH_ACKS_LATE") == "1",
                broker_connection_retry_on_startup=True)

_times: IO[str] | None = None


@app.task
def noop(i: int) -> None:
    """Does nothing, then notes its start and end (line-buffered: one write per task)."""
    global _times
    started = time.time()
    if _times is None:
        _times = open(os.path.join(TIMES, str(os.getpid())), "a", buffering=1)
    _times.write(f"{started} {time.time()}\n")
