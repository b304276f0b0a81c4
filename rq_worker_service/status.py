"""``rq-worker-service status``: is it healthy, and if not, what is stuck.

One collection of figures (``collect``) feeds three renderings: a table for people, JSON for
scripts and Prometheus text for monitoring; ``evaluate`` turns them into a Nagios-style verdict
(0 OK, 1 WARNING, 2 CRITICAL; 3 UNKNOWN when Redis cannot be asked).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.utils import as_text, utcparse
from rq.worker import BaseWorker

from . import keys
from .fencing import recent_fencings
from .levels import BY_NAME, CRITICAL, LEVELS, OK, WARNING, Threshold
from .recovery import started_executions
from .rqcompat import job_func, mixed_rq_message, same_rq_major

HEARTBEAT_SLACK = 60
"""rq sets a worker key to expire (its next heartbeat interval + 60 s): a worker whose heartbeat
is older than that interval has missed its own deadline and is shown stale."""


@dataclass
class QueueInfo:
    name: str
    queued: int
    oldest_age: float | None
    started: int
    scheduled: int
    deferred: int
    failed: int
    finished: int


@dataclass
class WorkerInfo:
    name: str
    host: str
    unit: str | None
    pid: int | None
    state: str
    queues: list[str]
    job_id: str | None
    job_func: str | None
    job_running_for: float | None
    heartbeat_age: float | None
    stale: bool
    successful_jobs: int
    failed_jobs: int
    rq_version: str


@dataclass
class AbandonedJob:
    job_id: str
    queue: str
    func: str
    worker: str
    since: float | None


@dataclass
class FencedWorker:
    """A worker another one fenced (``fencing``): where it ran, who fenced it, what was rescued."""

    worker: str
    host: str
    by: str
    ago: float
    jobs: list[str]


@dataclass
class AutoscalerInfo:
    """A host's autoscaler, as it last reported itself (``autoscaler.Autoscaler.state``)."""

    host: str
    age: float
    """Seconds since its last report; past AUTOSCALER_STALE it is shown stale (stopped or stuck)."""
    running: int
    busy: int
    minimum: int
    maximum: int
    queued: int | None
    holding: str
    """Why it neither starts nor stops now, when there is a reason worth saying ('' otherwise)."""
    last_decision: str | None
    last_decision_age: float | None
    instances: list[str]
    """``<n>:<state>``, with ``*`` for those it started."""
    memory: str
    """Available memory, the largest instance, the reserve (what caps starts)."""

    @property
    def stale(self) -> bool:
        return self.age > AUTOSCALER_STALE


AUTOSCALER_STALE = 60
"""Seconds without a report after which an autoscaler is shown stale (it reports every few seconds)."""
AUTOSCALER_FORGOTTEN = 86400
"""A report older than this is not shown (a clean stop removes its own; a killed one leaves it)."""


def _autoscalers(connection: Redis, now: float) -> list[AutoscalerInfo]:
    from .autoscale import mib

    found = []
    for raw in connection.hvals(keys.autoscalers()):
        try:
            s = json.loads(raw)
            age = max(0.0, now - s["at"])
            if age > AUTOSCALER_FORGOTTEN:
                continue  # an autoscaler that was killed and never came back: its entry says nothing now
            limits = s["limits"]
            found.append(AutoscalerInfo(
                host=s["host"], age=age, running=s["running"], busy=s["busy"],
                minimum=limits["min"], maximum=limits["max"], queued=s["queued"], holding=s["now"],
                last_decision=s["last_decision"],
                last_decision_age=None if s["last_decision_at"] is None else max(0.0, now - s["last_decision_at"]),
                instances=[f"{i['number']}:{i['state']}{'*' if i['ours'] else ''}" for i in s["instances"]],
                memory=f"available {mib(s['available'])}, instance ≤ {mib(s['instance_memory'])}, reserve "
                       f"{mib(limits['memory_reserve'])}"))
        except (ValueError, KeyError, TypeError):
            continue  # written by another version: not ours to show
    return sorted(found, key=lambda a: a.host)


FENCING_WARNS_FOR = 900
"""Seconds a fencing keeps the verdict at WARNING (it stays listed for a day)."""


@dataclass
class Report:
    redis: str
    queues: list[QueueInfo]
    workers: list[WorkerInfo]
    abandoned: list[AbandonedJob]
    key_prefix: str = field(default_factory=keys.imported)
    fenced: list[FencedWorker] = field(default_factory=list)
    autoscalers: list[AutoscalerInfo] = field(default_factory=list)
    level: int = OK
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.problems:
            return f"{LEVELS[self.level]}: " + "; ".join(self.problems)
        queued = sum(q.queued for q in self.queues)
        busy = sum(1 for w in self.workers if w.state == "busy")
        return (f"OK: {len(self.workers)} workers ({busy} busy), {queued} queued, "
                f"{sum(q.failed for q in self.queues)} failed")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["status"] = LEVELS[self.level]
        data["verdict"] = self.verdict
        return data


def _age(now: datetime, then: datetime | None) -> float | None:
    return max(0.0, (now - then).total_seconds()) if then else None


def _fetch(connection: Redis, job_id: str) -> Job | None:
    """The job, or None once it is gone (finished with result_ttl 0, expired): one round trip."""
    try:
        return Job.fetch(job_id, connection=connection)
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
    enqueued = connection.hget(Job.key_for(as_text(first)), "enqueued_at")
    return _age(now, utcparse(as_text(enqueued))) if enqueued else None


def _queue_info(connection: Redis, queue: Queue, now: datetime) -> QueueInfo:
    return QueueInfo(
        name=queue.name, queued=queue.count, oldest_age=oldest_age(connection, queue, now),
        started=connection.zcard(queue.started_job_registry.key),
        scheduled=connection.zcard(queue.scheduled_job_registry.key),
        deferred=connection.zcard(queue.deferred_job_registry.key),
        failed=connection.zcard(queue.failed_job_registry.key),
        finished=connection.zcard(queue.finished_job_registry.key))


def _worker_info(connection: Redis, worker: BaseWorker, now: datetime) -> WorkerInfo:
    heartbeat_age = _age(now, worker.last_heartbeat)
    # PTTL, not TTL: Redis rounds TTL to whole seconds, which made ``promised`` wobble by up to a
    # second, so a dead worker with a 1 s tick flipped between stale and live for half a second.
    pttl = connection.pttl(worker.key)
    stale = False
    if heartbeat_age is not None and pttl is not None and pttl >= 0:
        promised = heartbeat_age + pttl / 1000 - HEARTBEAT_SLACK  # the interval it promised at its last beat
        stale = heartbeat_age > max(promised, 1)
    job_id = worker.get_current_job_id()
    job = _fetch(connection, job_id) if job_id else None
    return WorkerInfo(
        name=worker.name, host=worker.hostname or "?", unit=unit_of(worker.name), pid=worker.pid,
        state=worker.get_state(), queues=worker.queue_names(), job_id=job_id,
        job_func=job_func(job) if job_id else None,
        job_running_for=_age(now, job.started_at) if job is not None else None,
        heartbeat_age=heartbeat_age, stale=stale,
        successful_jobs=worker.successful_job_count, failed_jobs=worker.failed_job_count, rq_version=worker.version)


def _abandoned(connection: Redis, queue: Queue, live: set[str], now: datetime) -> list[AbandonedJob]:
    """Started jobs whose worker is gone (no record, dead record, or stale)."""
    found = []
    for job_id, _, owner in started_executions(connection, queue.name):
        owner_name = owner or "?"
        if owner_name in live:
            continue
        job = _fetch(connection, job_id)
        since = _age(now, job.last_heartbeat) if job is not None else None
        found.append(AbandonedJob(job_id=job_id, queue=queue.name, func=job_func(job), worker=owner_name, since=since))
    return found


def collect(connection: Redis, redis_display: str, queue_names: list[str] | None = None) -> Report:
    """Read everything the report shows; raises redis errors (the caller maps them to UNKNOWN)."""
    now = datetime.now().astimezone()
    queues = ([Queue(n, connection=connection) for n in queue_names] if queue_names
              else sorted(Queue.all(connection=connection), key=lambda q: q.name))
    workers = sorted((_worker_info(connection, w, now) for w in Worker.all(connection=connection)),
                     key=lambda w: w.name)
    live = {w.name for w in workers if not w.stale}
    abandoned = [a for q in queues for a in _abandoned(connection, q, live, now)]
    fenced = [FencedWorker(worker=f.worker, host=f.host, by=f.by, ago=max(0.0, now.timestamp() - f.at), jobs=f.jobs)
              for f in recent_fencings(connection)]
    return Report(redis=redis_display, queues=[_queue_info(connection, q, now) for q in queues],
                  workers=workers, abandoned=abandoned, fenced=fenced,
                  autoscalers=_autoscalers(connection, now.timestamp()))


def evaluate(report: Report, *, max_queued: Threshold | None = None, max_age: Threshold | None = None,
             max_failed: Threshold | None = None, min_workers: Threshold | None = None,
             max_heartbeat_age: Threshold | None = None) -> Report:
    """Set ``report.level`` and ``report.problems`` from the thresholds and the built-in checks."""
    findings: list[tuple[int, str]] = []

    def check(level: int, message: str) -> None:
        if level:
            findings.append((level, message))

    queued = sum(q.queued for q in report.queues)
    ages = [q.oldest_age for q in report.queues if q.oldest_age is not None]
    failed = sum(q.failed for q in report.queues)
    alive = [w for w in report.workers if not w.stale]
    if max_queued:
        check(max_queued.level_above(queued), f"{queued} jobs queued (limit {max_queued.warning:g})")
    if max_age and ages:
        check(max_age.level_above(max(ages)), f"oldest queued job waits {max(ages):.0f}s "
                                              f"(limit {max_age.warning:g}s)")
    if max_failed:
        check(max_failed.level_above(failed), f"{failed} failed jobs (limit {max_failed.warning:g})")
    if min_workers:
        check(min_workers.level_below(len(alive)), f"{len(alive)} live workers (minimum {min_workers.warning:g})")
    if max_heartbeat_age:
        for w in report.workers:
            if w.heartbeat_age is not None:
                check(max_heartbeat_age.level_above(w.heartbeat_age),
                      f"worker {w.name} last heartbeat {w.heartbeat_age:.0f}s ago")
    for w in report.workers:
        if w.stale:
            check(WARNING, f"worker {w.name} is stale (heartbeat {w.heartbeat_age:.0f}s ago)")
    for w in alive:
        if not same_rq_major(w.rq_version):
            check(WARNING, mixed_rq_message(w.name, w.rq_version))
    if report.abandoned:
        check(WARNING, f"{len(report.abandoned)} abandoned started jobs")
    for a in report.autoscalers:
        if a.stale:
            check(WARNING, f"the autoscaler on {a.host} has not reported for {a.age:.0f}s (is "
                           "rq-worker-autoscale.service running?)")
    for f in report.fenced:
        if f.ago < FENCING_WARNS_FOR:
            check(WARNING, f"worker {f.worker} on host {f.host} was fenced by {f.by} {f.ago:.0f}s ago "
                           f"({len(f.jobs)} jobs re-queued): it went silent (frozen, cut off or host lost)")
    listened = {name for w in alive for name in w.queues}
    for q in report.queues:
        if q.queued and alive and q.name not in listened:
            critical = max_queued is not None and max_queued.level_above(q.queued) == CRITICAL
            check(CRITICAL if critical else WARNING,
                  f"{q.queued} jobs queued in {q.name}, which no live worker listens to (workers listen to: "
                  f"{', '.join(sorted(listened))}); check RQ_QUEUES")
    if queued and not alive:
        check(CRITICAL, f"{queued} jobs queued and no live worker")
    report.level = max((level for level, _ in findings), default=OK)
    report.problems = [message for level, message in sorted(findings, key=lambda f: -f[0])]
    return report


# -- renderings -------------------------------------------------------------------------------


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def render_text(report: Report) -> str:
    redis = f"Redis {report.redis}" + (f", key prefix {report.key_prefix}" if report.key_prefix != "rq" else "")
    lines = [report.verdict, redis, ""]
    lines += _table(["QUEUE", "QUEUED", "OLDEST", "STARTED", "SCHEDULED", "DEFERRED", "FAILED", "FINISHED"],
                    [[q.name, str(q.queued), _dur(q.oldest_age), str(q.started), str(q.scheduled), str(q.deferred),
                      str(q.failed), str(q.finished)] for q in report.queues])
    lines.append("")
    lines += _table(["WORKER", "HOST", "UNIT", "PID", "QUEUES", "STATE", "JOB", "RUNNING", "HEARTBEAT"],
                    [[w.name, w.host, w.unit or "-", str(w.pid or "-"), ",".join(w.queues),
                      "stale" if w.stale else w.state,
                      f"{w.job_id} ({w.job_func})" if w.job_id else "-", _dur(w.job_running_for),
                      _dur(w.heartbeat_age) + " ago"] for w in report.workers])
    if report.abandoned:
        lines += ["", "Abandoned jobs (started, but their worker is gone):"]
        lines += _table(["JOB", "QUEUE", "FUNCTION", "WORKER", "SINCE"],
                        [[a.job_id, a.queue, a.func, a.worker, _dur(a.since) + " ago"] for a in report.abandoned])
    if report.fenced:
        lines += ["", "Fenced workers (silent past their deadline; their jobs were re-queued), last 24 h:"]
        lines += _table(["WORKER", "HOST", "FENCED BY", "WHEN", "JOBS RE-QUEUED"],
                        [[f.worker, f.host, f.by, _dur(f.ago) + " ago", " ".join(f.jobs) or "-"]
                         for f in report.fenced])
    for a in report.autoscalers:
        state = f"stale (last report {_dur(a.age)} ago)" if a.stale else "running"
        lines += ["", f"Autoscaler on {a.host}: {state}; {a.running} instances running ({a.busy} busy), min "
                      f"{a.minimum}, max {a.maximum}; memory: {a.memory}",
                  f"  instances (* started by it): {' '.join(a.instances) or '-'}"]
        if a.last_decision:
            lines.append(f"  last decision, {_dur(a.last_decision_age)} ago: {a.last_decision}")
        if a.holding:
            lines.append(f"  now: {a.holding}")
    return "\n".join(lines) + "\n"


def report_from_dict(data: dict) -> Report:
    """A report read back from ``render_json`` (``status`` runs one process per key prefix)."""
    return Report(redis=data["redis"], queues=[QueueInfo(**q) for q in data["queues"]],
                  workers=[WorkerInfo(**w) for w in data["workers"]],
                  abandoned=[AbandonedJob(**a) for a in data["abandoned"]], key_prefix=data["key_prefix"],
                  fenced=[FencedWorker(**f) for f in data.get("fenced", [])],
                  autoscalers=[AutoscalerInfo(**a) for a in data.get("autoscalers", [])],
                  level=BY_NAME[data["status"]], problems=data["problems"])


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric(lines: list[str], name: str, kind: str, help_text: str,
            samples: list[tuple[dict[str, str], float]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")


def render_prometheus(report: Report | None) -> str:
    """Prometheus text exposition format (version 0.0.4); ``None`` means Redis was unreachable."""
    lines: list[str] = []
    _metric(lines, "rq_up", "gauge", "1 if Redis answered, 0 if not.", [({}, 0 if report is None else 1)])
    if report is None:
        return "\n".join(lines) + "\n"
    states = ("queued", "started", "scheduled", "deferred", "failed", "finished")
    _metric(lines, "rq_queue_jobs", "gauge", "Jobs per queue and state.",
            [({"queue": q.name, "state": s}, getattr(q, s)) for q in report.queues for s in states])
    _metric(lines, "rq_queue_oldest_job_age_seconds", "gauge", "Age of the oldest queued job (0 when empty).",
            [({"queue": q.name}, q.oldest_age or 0) for q in report.queues])
    info = [({"worker": w.name, "host": w.host, "unit": w.unit or ""}, w) for w in report.workers]
    _metric(lines, "rq_worker_busy", "gauge", "1 while the worker runs a job.",
            [(labels, 1 if w.state == "busy" else 0) for labels, w in info])
    _metric(lines, "rq_worker_stale", "gauge", "1 if the worker missed its heartbeat deadline.",
            [(labels, 1 if w.stale else 0) for labels, w in info])
    _metric(lines, "rq_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat.",
            [(labels, w.heartbeat_age or 0) for labels, w in info])
    _metric(lines, "rq_worker_jobs_total", "counter", "Jobs the worker finished, by outcome, since it started.",
            [({**labels, "outcome": o}, n) for labels, w in info
             for o, n in (("successful", w.successful_jobs), ("failed", w.failed_jobs))])
    _metric(lines, "rq_abandoned_jobs", "gauge", "Started jobs whose worker is gone.",
            [({"queue": q.name}, sum(1 for a in report.abandoned if a.queue == q.name)) for q in report.queues])
    _metric(lines, "rq_fenced_workers", "gauge", "Workers fenced in the last 24 hours, by the host they ran on.",
            [({"host": host}, sum(1 for f in report.fenced if f.host == host))
             for host in sorted({f.host for f in report.fenced})])
    _metric(lines, "rq_autoscaler_instances", "gauge", "Instances the host's autoscaler sees running.",
            [({"host": a.host}, a.running) for a in report.autoscalers])
    _metric(lines, "rq_autoscaler_max_instances", "gauge", "The host's RQ_AUTOSCALE_MAX.",
            [({"host": a.host}, a.maximum) for a in report.autoscalers])
    _metric(lines, "rq_health_status", "gauge", "0 OK, 1 WARNING, 2 CRITICAL (the --check verdict).",
            [({}, report.level)])
    return "\n".join(lines) + "\n"
