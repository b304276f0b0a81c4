"""The seed guide's app, reduced to its background job: analysing a report.

``process_report_analysis`` is the job function the worker runs (put this directory on
RQ_APP_PATH); ``enqueue_report_analysis`` is what the web app calls. Both are plain rq: nothing
here depends on rq-worker-service.
"""

from __future__ import annotations

import logging
import os
import time

from redis import Redis
from rq import Queue, Retry, get_current_job

log = logging.getLogger("report_analysis")

QUEUE = "report_analysis"


def process_report_analysis(report_id: int, seconds: float = 3.0, fail_times: int = 0) -> dict:
    """Simulated analysis: logs progress for ``seconds``; raises on the first ``fail_times`` attempts.

    It is idempotent (it only computes and returns), as every job must be: a job cut off by a crash
    runs again from the start.
    """
    job = get_current_job()
    attempt = 1
    if job is not None:
        attempt = int(job.meta.get("attempts", 0)) + 1
        job.meta["attempts"] = attempt
        job.save_meta()
    log.info("report %s: analysis started (attempt %d)", report_id, attempt)
    if attempt <= fail_times:
        raise RuntimeError(f"report {report_id}: upstream analysis service unavailable (attempt {attempt})")
    steps = max(1, int(seconds))
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        log.info("report %s: %d%% analysed", report_id, step * 100 // steps)
    log.info("report %s: analysis finished", report_id)
    return {"report_id": report_id, "score": report_id % 97, "attempts": attempt}


def enqueue_report_analysis(report_id: int, connection: Redis | None = None, *, seconds: float = 3.0,
                            fail_times: int = 0, retry_interval: int = 60):
    """What the app does: one job per report, retried up to 3 times (the seed's Retry(max=3, interval=60))."""
    conn = connection or Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    queue = Queue(QUEUE, connection=conn)
    return queue.enqueue(process_report_analysis, report_id, seconds=seconds, fail_times=fail_times,
                         job_id=f"report_analysis_{report_id}", retry=Retry(max=3, interval=retry_interval))
