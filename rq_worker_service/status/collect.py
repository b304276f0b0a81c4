"""``status``'s figures, read from Redis: queues, workers, abandoned jobs, fencings, autoscalers, periodic jobs.

Nothing is judged here (``judge``) nor shown (``render``); every read is one that rq's own keys or
the service's (``keys``) answer, and a redis error goes up to the command (UNKNOWN).
"""

from __future__ import annotations

from datetime import datetime

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import as_text, utcparse
from rq.worker import BaseWorker

from .. import keys
from ..autoscale import mib
from ..autoscale_report import AutoscalerReport
from ..classes import RQ_DEFAULTS, AppClasses
from ..fencing import recent_fencings
from ..recovery import started_executions
from ..rqcompat import job_func
from ..variables import BY_NAME
from .cron import LEASE_PERIOD, collect_cron, server_time
from .report import AbandonedJob, AutoscalerInfo, FencedWorker, QueueInfo, Report, WorkerInfo

HEARTBEAT_SLACK = 60
"""rq sets a worker key to expire (its next heartbeat interval + 60 s): a worker whose heartbeat
is older than that interval has missed its own deadline and is shown stale."""
DEFAULT_LEASE_PERIOD = int(BY_NAME[LEASE_PERIOD].default)
AUTOSCALER_FORGOTTEN = 86400
"""A report older than this is not shown (a clean stop removes its own; a killed one leaves it)."""


def _autoscalers(connection: Redis, now: float) -> list[AutoscalerInfo]:
    found = []
    for raw in connection.hvals(keys.autoscalers()):
        try:
            report = AutoscalerReport.from_json(raw)
            age = max(0.0, now - report.at)
            if age > AUTOSCALER_FORGOTTEN:
                continue  # an autoscaler that was killed and never came back: its entry says nothing now
            limits = report.limits
            found.append(AutoscalerInfo(
                host=report.host, age=age, running=report.running, busy=report.busy, minimum=limits.minimum,
                maximum=limits.maximum, queued=report.queued, holding=report.holding,
                last_decision=report.last_decision,
                last_decision_age=None if report.last_decision_at is None else max(0.0, now - report.last_decision_at),
                instances=[f"{i.number}:{i.state}{'*' if i.ours else ''}" for i in report.instances],
                memory=f"available {mib(report.available)}, instance ≤ {mib(report.instance_memory)}, reserve "
                       f"{mib(limits.memory_reserve)}"))
        except (ValueError, KeyError, TypeError):
            continue  # written by another version: not ours to show
    return sorted(found, key=lambda a: a.host)


def _age(now: datetime, then: datetime | None) -> float | None:
    return max(0.0, (now - then).total_seconds()) if then else None


def _fetch(connection: Redis, job_id: str, classes: AppClasses) -> Job | None:
    """The job, or None once it is gone (finished with result_ttl 0, expired): one round trip."""
    try:
        return classes.fetch(job_id, connection)
    except NoSuchJobError:
        return None


def unit_of(worker_name: str) -> str | None:
    """``host.rq-worker@3`` → ``rq-worker@3.service`` (our naming); None for other workers."""
    if ".rq-worker@" in worker_name:
        return "rq-worker@" + worker_name.rsplit(".rq-worker@", 1)[1] + ".service"
    return None


def oldest_age(connection: Redis, queue: Queue, now: datetime) -> float | None:
    """Seconds the job at the head of ``queue`` has waited (None: the queue is empty)."""
    first = connection.lindex(queue.key, 0)
    if first is None:
        return None
    enqueued = connection.hget(queue.job_class.key_for(as_text(first)), "enqueued_at")  # (the app's job class)
    return _age(now, utcparse(as_text(enqueued))) if enqueued else None


def _queue_info(connection: Redis, queue: Queue, now: datetime) -> QueueInfo:
    return QueueInfo(
        name=queue.name, queued=queue.count, oldest_age=oldest_age(connection, queue, now),
        started=connection.zcard(queue.started_job_registry.key),
        scheduled=connection.zcard(queue.scheduled_job_registry.key),
        deferred=connection.zcard(queue.deferred_job_registry.key),
        failed=connection.zcard(queue.failed_job_registry.key),
        finished=connection.zcard(queue.finished_job_registry.key))


def _worker_info(connection: Redis, worker: BaseWorker, now: datetime, classes: AppClasses) -> WorkerInfo:
    heartbeat_age = _age(now, worker.last_heartbeat)
    # PTTL, not TTL: Redis rounds TTL to whole seconds, which made ``promised`` wobble by up to a
    # second, so a dead worker with a 1 s tick flipped between stale and live for half a second.
    pttl = connection.pttl(worker.key)
    stale = False
    if heartbeat_age is not None and pttl is not None and pttl >= 0:
        promised = heartbeat_age + pttl / 1000 - HEARTBEAT_SLACK  # the interval it promised at its last beat
        stale = heartbeat_age > max(promised, 1)
    job_id = worker.get_current_job_id()
    job = _fetch(connection, job_id, classes) if job_id else None
    return WorkerInfo(
        name=worker.name, host=worker.hostname or "?", unit=unit_of(worker.name), pid=worker.pid,
        state=worker.get_state(), queues=worker.queue_names(), job_id=job_id,
        job_func=job_func(job) if job_id else None,
        job_running_for=_age(now, job.started_at) if job is not None else None,
        heartbeat_age=heartbeat_age, stale=stale,
        successful_jobs=worker.successful_job_count, failed_jobs=worker.failed_job_count, rq_version=worker.version)


def _abandoned(connection: Redis, queue: Queue, live: set[str], now: datetime, classes: AppClasses
               ) -> list[AbandonedJob]:
    """Started jobs whose worker is gone (no record, dead record, or stale)."""
    found = []
    for job_id, _, owner in started_executions(connection, queue):
        owner_name = owner or "?"
        if owner_name in live:
            continue
        job = _fetch(connection, job_id, classes)
        since = _age(now, job.last_heartbeat) if job is not None else None
        found.append(AbandonedJob(job_id=job_id, queue=queue.name, func=job_func(job), worker=owner_name, since=since))
    return found


def collect(connection: Redis, redis_display: str, queue_names: list[str] | None = None, *,
            classes: AppClasses = RQ_DEFAULTS, cron_lease_period: int = DEFAULT_LEASE_PERIOD) -> Report:
    """Read everything the report shows; raises redis errors (the caller maps them to UNKNOWN).
    ``classes``: the app's serializer and job class (RQ_SERIALIZER, …), to read the jobs shown;
    ``cron_lease_period``: RQ_CRON_LEASE_PERIOD (``cron.lease_period``), the periodic jobs' time scale."""
    now = datetime.now().astimezone()
    queues = ([classes.queue(n, connection) for n in queue_names] if queue_names
              else sorted(classes.queue_class.all(connection=connection, job_class=classes.job_class,
                                                  serializer=classes.serializer), key=lambda q: q.name))
    workers = sorted((_worker_info(connection, w, now, classes) for w in Worker.all(connection=connection)),
                     key=lambda w: w.name)
    live = {w.name for w in workers if not w.stale}
    abandoned = [a for q in queues for a in _abandoned(connection, q, live, now, classes)]
    fenced = [FencedWorker(worker=f.worker, host=f.host, by=f.by, ago=max(0.0, now.timestamp() - f.at), jobs=f.jobs)
              for f in recent_fencings(connection)]
    suspension = connection.pttl(WORKERS_SUSPENDED)  # -2: none; -1: until `rq resume`
    return Report(redis=redis_display, queues=[_queue_info(connection, q, now) for q in queues],
                  workers=workers, abandoned=abandoned, fenced=fenced,
                  autoscalers=_autoscalers(connection, now.timestamp()), suspended=suspension != -2,
                  suspension_left=suspension / 1000 if suspension >= 0 else None,
                  cron=collect_cron(connection, server_time(connection), cron_lease_period, classes=classes))
