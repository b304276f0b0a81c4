"""The app side: ``enqueue`` with the service's retry defaults and duplicate-free job ids.

Apps keep enqueueing with plain rq; this helper is for those that want two things plain rq does
not give: the default ``Retry`` from the same configuration as the workers (RQ_JOB_RETRY_MAX /
RQ_JOB_RETRY_DELAY, RQ_JOB_TIMEOUT), and, given a ``job_id``, no second job while one with that id
is still pending (plain rq overwrites it). The check-and-enqueue is one Redis transaction
(WATCH/MULTI on the job's key), so two processes racing with the same id get one job.

With RQ_ENQUEUE_WAIT_REPLICAS it also returns only once that many replicas have the job (Redis
WAIT): Redis replicates asynchronously, and a primary that fails right after acknowledging a write
takes the write with it unless a replica that the sentinels can promote already has it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import as_text

from . import keys
from .classes import AppClasses, app_classes, connection_class
from .config import Settings, load_settings
from .connection import make_connection, refresh_primary
from .secret_env import environment

PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
_UNSET: Any = object()


class NotReplicated(Exception):
    """Fewer replicas than RQ_ENQUEUE_WAIT_REPLICAS acknowledged the job in time.

    The job *is* in Redis and runs as usual; what is missing is the guarantee that it survives a
    failover right now. ``job`` is the enqueued job, for an app that wants to record or retry it.
    """

    def __init__(self, job: Job, acknowledged: int, wanted: int, timeout: float) -> None:
        super().__init__(f"job {job.id} is queued, but only {acknowledged} of {wanted} replica(s) acknowledged it "
                         f"within {timeout:g}s (RQ_ENQUEUE_WAIT_REPLICAS, RQ_ENQUEUE_WAIT_TIMEOUT): a failover now "
                         "could lose it")
        self.job = job
        self.acknowledged = acknowledged


def wait_for_replicas(connection: redis.Redis, job: Job, settings: Settings) -> None:
    """Return once ``settings.enqueue_wait_replicas`` replicas have ``job``; raise NotReplicated if not.

    WAIT counts from the last write *of the connection it runs on*, and the enqueue's pipeline may
    have used another of the pool's: so this connection writes first (a counter under the service's
    keys), then waits. Replication keeps order, so a replica that has the counter has the job.
    """
    wanted = settings.enqueue_wait_replicas
    with connection.pipeline(transaction=False) as pipe:
        pipe.incr(keys.enqueued())
        pipe.wait(wanted, int(settings.enqueue_wait_timeout * 1000))
        _, acknowledged = pipe.execute()
    if acknowledged < wanted:
        raise NotReplicated(job, acknowledged, wanted, settings.enqueue_wait_timeout)


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """``env``, or the process's environment: in a job, that includes the secrets its worker keeps
    out of ``os.environ`` (``secret_env``), so a job enqueues with this helper as any app process does."""
    return load_settings(environment if env is None else env)


def enqueue(func: Callable[..., Any] | str, *args: Any, queue: str = "default", job_id: str | None = None,
            retry: Retry | None = _UNSET, connection: redis.Redis | None = None,
            env: Mapping[str, str] | None = None, **kwargs: Any) -> Job:
    """Enqueue ``func(*args, **kwargs)`` on ``queue``; return the new job, or the pending one with ``job_id``.

    As with rq's ``Queue.enqueue``, keyword arguments are the job function's, except rq's own
    (``job_timeout``, ``result_ttl``, ``meta``, ``depends_on`` …). ``retry`` defaults to
    ``Retry(max=RQ_JOB_RETRY_MAX, interval=RQ_JOB_RETRY_DELAY)`` (none when the max is 0); pass
    ``retry=None`` for no retry. ``job_timeout`` defaults to RQ_JOB_TIMEOUT when that is set.
    Raises ``NotReplicated`` (the job is queued) when RQ_ENQUEUE_WAIT_REPLICAS replicas do not
    acknowledge it in time, and redis-py's errors when Redis does not answer (the job may or may
    not be queued then: enqueue again with the same ``job_id`` to be sure of one job).
    """
    settings = settings_from_env(env)
    keys.check_imported(settings.key_prefix)  # rq read its prefix when the app imported it
    classes = app_classes(settings)  # RQ_SERIALIZER, RQ_JOB_CLASS, RQ_QUEUE_CLASS: as the workers read them
    conn = connection if connection is not None else make_connection(settings.redis, settings.key_prefix,
                                                                     redis_class=connection_class(settings))
    if retry is _UNSET:
        retry = Retry(max=settings.retry_max, interval=settings.retry_delay) if settings.retry_max > 0 else None
    if settings.job_timeout is not None:
        kwargs.setdefault("job_timeout", settings.job_timeout)
    refresh_primary(conn)  # under Sentinel: not to a primary the sentinels have just replaced
    q = classes.queue(queue, conn)
    job = _enqueue_once(q, classes, conn, func, args, job_id, retry, kwargs)
    if settings.enqueue_wait_replicas:
        wait_for_replicas(conn, job, settings)
    return job


def _enqueue_once(q: Queue, classes: AppClasses, conn: redis.Redis, func: Callable[..., Any] | str, args: tuple,
                  job_id: str | None, retry: Retry | None, kwargs: dict[str, Any]) -> Job:
    """The job, enqueued; with ``job_id``, the pending one of that id if there is one."""
    if job_id is None:
        return q.enqueue(func, *args, retry=retry, **kwargs)  # type: ignore[type-var]
    key = classes.job_class.key_for(job_id)  # (an app job class may keep its hashes under its own prefix)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                status = pipe.hget(key, "status")  # immediate while WATCHing: bytes, not the pipeline
                if status is not None and as_text(status) in PENDING:
                    pipe.unwatch()
                    return classes.fetch(job_id, conn)
                pipe.multi()
                job = q.enqueue(func, *args, job_id=job_id, retry=retry, pipeline=pipe,  # type: ignore[type-var]
                                **kwargs)
                pipe.execute()
                return job
            except redis.exceptions.WatchError:
                continue  # another process touched that job id meanwhile: look again
