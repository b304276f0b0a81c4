"""The figures of one ``status``: what ``collect`` reads, ``judge`` sets a verdict on and ``render`` shows.

``to_dict`` is the JSON of ``status --json``; ``report_from_dict`` reads it back (``status`` runs
one process per key prefix, as rq's prefix is fixed once rq is imported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import keys
from ..levels import BY_NAME, LEVELS, OK


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


AUTOSCALER_STALE = 60
"""Seconds without a report after which an autoscaler is shown stale (it reports every few seconds)."""


@dataclass
class AutoscalerInfo:
    """A host's autoscaler as ``status`` shows it, from its last ``autoscale_report.AutoscalerReport``."""

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


@dataclass
class CronJobInfo:
    """One periodic job as the lease holder last wrote it (``keys.cron_jobs()``), and its last job's outcome."""

    name: str
    func_name: str
    queue: str
    cron: str | None
    interval: int | None
    zone: str
    catch_up: str
    next_run: float | None
    """Epoch seconds of its next slot."""
    last_slot: float | None
    """Epoch seconds of the last slot enqueued (or skipped)."""
    last_job_id: str | None
    last_outcome: str | None
    """rq's status of ``last_job_id`` (queued, started, finished, failed, …), ``gone`` once rq has dropped it
    (its result_ttl passed), None when nothing was enqueued yet."""
    enqueued_total: int
    skipped_total: int
    updated_age: float
    """Seconds since the leader last wrote the entry."""

    @property
    def schedule(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.interval}s"


@dataclass
class CronSchedulerInfo:
    """A running ``rq-cron.service`` (``keys.cron_schedulers()``), live: it beat within 3 lease periods."""

    holder: str
    host: str
    pid: int
    role: str
    """leader or standby."""
    since_age: float
    beat_age: float
    token: int | None
    config: str


@dataclass
class CronHandover:
    """One acquisition of the lease (``keys.cron_handovers()``), newest first."""

    at: float
    holder: str
    token: int
    previous: str | None


@dataclass
class CronInfo:
    """The periodic-job scheduler: who holds the lease, the cron jobs, the running schedulers, the hand-overs."""

    lease_period: int
    """RQ_CRON_LEASE_PERIOD as ``status`` reads it (worker.env, then cron.env beside it, the environment)."""
    holder: str | None
    token: int | None
    lease_left: float | None
    leaderless_for: float | None
    """Seconds since a lease holder was last seen (its last beat, enqueue or acquisition) while none holds it;
    None while one does, or when none ever did."""
    jobs: list[CronJobInfo] = field(default_factory=list)
    schedulers: list[CronSchedulerInfo] = field(default_factory=list)
    handovers: list[CronHandover] = field(default_factory=list)

    @property
    def leaderless(self) -> bool:
        """Cron jobs registered, and no lease holder for longer than the takeover bound (2 lease periods)."""
        return bool(self.jobs) and self.holder is None and (self.leaderless_for is None
                                                            or self.leaderless_for > 2 * self.lease_period)

    @classmethod
    def from_dict(cls, data: dict) -> CronInfo:
        return cls(lease_period=data["lease_period"], holder=data["holder"], token=data["token"],
                   lease_left=data["lease_left"], leaderless_for=data["leaderless_for"],
                   jobs=[CronJobInfo(**j) for j in data["jobs"]],
                   schedulers=[CronSchedulerInfo(**s) for s in data["schedulers"]],
                   handovers=[CronHandover(**h) for h in data["handovers"]])


@dataclass
class Report:
    redis: str
    queues: list[QueueInfo]
    workers: list[WorkerInfo]
    abandoned: list[AbandonedJob]
    key_prefix: str = field(default_factory=keys.imported)
    fenced: list[FencedWorker] = field(default_factory=list)
    autoscalers: list[AutoscalerInfo] = field(default_factory=list)
    suspended: bool = False
    """``rq suspend`` holds every worker of this prefix: they take no job until ``rq resume``."""
    suspension_left: float | None = None
    """Seconds until the suspension ends by itself (``rq suspend --duration``); None: until ``rq resume``."""
    cron: CronInfo | None = None
    """The periodic-job scheduler; None when Redis holds nothing of it (rq-cron.service never ran)."""
    level: int = OK
    problems: list[str] = field(default_factory=list)

    @property
    def suspension(self) -> str:
        """How the report says it: SUSPENDED, and until when."""
        until = "until `rq resume`" if self.suspension_left is None else f"{self.suspension_left:.0f}s left"
        return f"SUSPENDED (rq suspend, {until})"

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


def report_from_dict(data: dict) -> Report:
    """A report read back from ``Report.to_dict``'s JSON."""
    return Report(redis=data["redis"], queues=[QueueInfo(**q) for q in data["queues"]],
                  workers=[WorkerInfo(**w) for w in data["workers"]],
                  abandoned=[AbandonedJob(**a) for a in data["abandoned"]], key_prefix=data["key_prefix"],
                  fenced=[FencedWorker(**f) for f in data.get("fenced", [])],
                  autoscalers=[AutoscalerInfo(**a) for a in data.get("autoscalers", [])],
                  suspended=data.get("suspended", False), suspension_left=data.get("suspension_left"),
                  cron=CronInfo.from_dict(data["cron"]) if data.get("cron") else None,
                  level=BY_NAME[data["status"]], problems=data["problems"])
