"""rq's failed end, whose Redis error rq logs and swallows, turned back into that error.

rq's ``handle_job_failure`` (and its retry step) runs the failure's transaction inside ``try: …
except Exception: log.exception("failed to persist failure of job …")`` and goes on: the job is left
STARTED in its StartedJobRegistry, and the worker, told nothing, takes the next job. A failover or a
dropped link at that moment left the job to rq's abandoned-job cleanup, up to its maintenance interval
later. A worker's IDLE write right after the job used to meet the same outage and report it; that write
now waits for an empty pop. So the worker listens for rq's line while rq's step runs (``watching``): a
Redis error there is raised again after the step, and reaches what handles a Redis error around a job
(a horse exits 1 and its worker records it as lost under the job; a simple worker marks the job for its
rescue once Redis answers). One warning, not rq's traceback, as for any outage.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .connection import REDIS_ERRORS

NOT_PERSISTED = "Worker %s: failed to persist failure of job %s"
"""rq's line (``BaseWorker.handle_job_failure``, ``handle_job_retry``) as it logs and swallows the error."""

log = logging.getLogger("rq_worker_service.worker")


class _Listening:
    """A stand-in for rq's worker logger that keeps the Redis error behind rq's ``NOT_PERSISTED``."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.error: BaseException | None = None

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        error = sys.exc_info()[1]
        if msg == NOT_PERSISTED and isinstance(error, REDIS_ERRORS):
            self.error = error
            return
        self.logger.exception(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


@contextmanager
def watching(worker: Any, job_id: str) -> Iterator[None]:
    """Run rq's failure step inside: a Redis error it swallowed is raised when the step returns."""
    listening = _Listening(worker.log)
    worker.log = listening
    try:
        yield
    finally:
        worker.log = listening.logger
    if listening.error is not None:
        log.warning("Lost Redis while recording the failure of job %s: %s; it is re-queued once Redis answers "
                    "unless its end was recorded", job_id, listening.error, extra={"RQ_JOB_ID": job_id})
        raise listening.error
