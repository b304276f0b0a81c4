"""The app side: ``enqueue`` with the service's retry defaults and duplicate-free job ids.

Apps keep enqueueing with plain rq; this helper is for those that want two things plain rq does
not give: the default ``Retry`` from the same configuration as the workers (RQ_JOB_RETRY_MAX /
RQ_JOB_RETRY_DELAY, RQ_JOB_TIMEOUT), and, given a ``job_id``, no second job while one with that id
is still pending (plain rq overwrites it). The check-and-enqueue is one Redis transaction
(WATCH/MULTI on the job's key), so two processes racing with the same id get one job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import redis
from rq import Queue, Retry
from rq.defaults import RQ_KEY_PREFIX
from rq.job import Job, JobStatus
from rq.utils import as_text

from .config import ConfigError, Settings, load_settings
from .connection import make_connection

PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
_UNSET: Any = object()


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    return load_settings(os.environ if env is None else env)


def enqueue(func: Callable[..., Any] | str, *args: Any, queue: str = "default", job_id: str | None = None,
            retry: Retry | None = _UNSET, connection: redis.Redis | None = None,
            env: Mapping[str, str] | None = None, **kwargs: Any) -> Job:
    """Enqueue ``func(*args, **kwargs)`` on ``queue``; return the new job, or the pending one with ``job_id``.

    As with rq's ``Queue.enqueue``, keyword arguments are the job function's, except rq's own
    (``job_timeout``, ``result_ttl``, ``meta``, ``depends_on`` …). ``retry`` defaults to
    ``Retry(max=RQ_JOB_RETRY_MAX, interval=RQ_JOB_RETRY_DELAY)`` (none when the max is 0); pass
    ``retry=None`` for no retry. ``job_timeout`` defaults to RQ_JOB_TIMEOUT when that is set.
    """
    settings = settings_from_env(env)
    if settings.key_prefix != RQ_KEY_PREFIX:  # rq read its prefix when the app imported it
        raise ConfigError("RQ_KEY_PREFIX", settings.key_prefix, f"the prefix rq was imported with "
                          f"({RQ_KEY_PREFIX!r}): set RQ_KEY_PREFIX in the environment before the app imports rq")
    conn = connection if connection is not None else make_connection(settings.redis, settings.key_prefix)
    if retry is _UNSET:
        retry = Retry(max=settings.retry_max, interval=settings.retry_delay) if settings.retry_max > 0 else None
    if settings.job_timeout is not None:
        kwargs.setdefault("job_timeout", settings.job_timeout)
    q = Queue(queue, connection=conn)
    if job_id is None:
        return q.enqueue(func, *args, retry=retry, **kwargs)  # type: ignore[type-var]
    key = Job.key_for(job_id)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                status = pipe.hget(key, "status")  # immediate while WATCHing: bytes, not the pipeline
                if status is not None and as_text(status) in PENDING:
                    pipe.unwatch()
                    return Job.fetch(job_id, connection=conn)
                pipe.multi()
                job = q.enqueue(func, *args, job_id=job_id, retry=retry, pipeline=pipe,  # type: ignore[type-var]
                                **kwargs)
                pipe.execute()
                return job
            except redis.exceptions.WatchError:
                continue  # another process touched that job id meanwhile: look again
