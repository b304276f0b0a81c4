"""Crash recovery: a restarted instance fails-and-retries what its dead predecessor was running.

Stock RQ finds such a job only when the StartedJobRegistry entry has expired (≈90 s after the last
heartbeat) *and* a worker runs its maintenance (every 10 minutes), so a job interrupted by
``kill -9``, the OOM killer or a watchdog abort sat for ~14 minutes before it ran again. Our worker
names are stable per host and instance, so the new process knows exactly whose record it inherits:
if that record is from this machine and its worker is gone (another boot, or its pid not running),
every job that worker was executing was cut off, and is handled at once — retried per its
``Retry`` (or the service's default policy), or failed with a reason that says what happened.
Workers on other hosts keep RQ's heartbeat cleanup, and fencing.

Every rescue, here or by a fencer, claims a job and re-queues it in one transaction (``claim``), so
a rescuer that dies half-way leaves the job to the next one instead of losing it.

The service's defaults for jobs live here too: the retry policy given to a job cut off under its
worker, and the timeout and failure TTL for jobs enqueued without them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import release_slot
from rq.results import Result
from rq.utils import as_text, current_timestamp, parse_composite_key

from . import aftermath, faults, host
from .appimport import exception_handlers
from .classes import app_classes
from .config import Settings
from .rqcompat import (
    REDIS_WORKER_KEYS,
    WORKERS_BY_QUEUE_KEY,
    execution_key,
    job_func,
    requeue_now,
    retry_in,
    worker_key,
)

log = logging.getLogger(__name__)


class WorkerNameInUse(Exception):
    """Another live process on this host already runs as this worker name."""


@dataclass(frozen=True)
class Recovered:
    job_id: str
    retried: bool


def apply_default_retry(job: Job, settings: Settings) -> bool:
    """Give a job enqueued without ``Retry`` the service's default policy; True if it was applied.

    Only called when the job's worker died under it (crash, kill, shutdown limit): such a failure
    says nothing about the job itself, so running it again is what the operator expects.
    """
    if job.retries_left is not None or settings.retry_max <= 0:
        return False
    job.retries_left = settings.retry_max
    job.retry_intervals = [settings.retry_delay]
    return True


def apply_job_defaults(job: Job, settings: Settings) -> None:
    """Fill in RQ_JOB_TIMEOUT / RQ_FAILURE_TTL where the job has none, saved in the job's hash so
    that any horse (forked or spawned) and any later recovery sees the same values."""
    fields: dict[str, int] = {}
    if job.timeout is None and settings.job_timeout is not None:
        job.timeout = fields["timeout"] = settings.job_timeout
    if job.failure_ttl is None and settings.failure_ttl is not None:
        job.failure_ttl = fields["failure_ttl"] = settings.failure_ttl
    if fields:
        job.connection.hset(job.key, mapping=fields)  # type: ignore[arg-type]


def record_interruption(job: Job, reason: str, worker_name: str, settings: Settings, pipeline=None) -> bool:
    """A job's execution was cut off under it: apply the default retry if it has none and, if it will
    be retried, record that execution as a failed Result (rq records nothing for a retried failure,
    so ``job.latest_result()`` would not say what happened). Returns True if it will be retried."""
    if apply_default_retry(job, settings):
        log.info("Job %s had no Retry: applying the default policy (RQ_JOB_RETRY_MAX=%d, RQ_JOB_RETRY_DELAY=%ds)",
                 job.id, settings.retry_max, settings.retry_delay)
    if job.should_retry:
        Result.create_failure(job, job.failure_ttl, exc_string=reason, worker_name=worker_name, pipeline=pipeline)
    return job.should_retry


def settle_interrupted(job: Job, queue: Queue, reason: str, worker_name: str, settings: Settings, pipeline, *,
                       at_once: bool = False) -> bool:
    """Queue in ``pipeline`` the writes that retry (per the job's Retry or the default policy) or fail a
    job whose execution was cut off; returns True if it will be retried.

    Writes only: the pipeline may be a transaction already in MULTI, where a read would return
    nothing (``claim``). The interruption is recorded as a failed Result in both cases, so
    ``job.latest_result()`` and ``rq-worker-service job <id>`` say what happened to that execution.
    ``at_once``: the retry takes one attempt but is queued now, at the front, whatever the retry
    interval: for a job whose *worker* was lost (fenced, or replaced after it went silent), which
    says nothing about the job.
    """
    retry = record_interruption(job, reason, worker_name, settings, pipeline=pipeline)
    if retry and at_once:
        requeue_now(job, queue, pipeline)
    elif retry:
        retry_in(job, queue, pipeline)
    else:
        job.set_status(JobStatus.FAILED, pipeline=pipeline)
        job._handle_failure(reason, pipeline, worker_name=worker_name)
    return retry


def process_is_worker(pid: int) -> bool:
    """True if ``pid`` is alive and runs rq-worker-service (not merely a recycled pid)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"rq_worker_service" in cmdline or b"rq-worker-service" in cmdline


def execution_owner(connection: Redis, composite: str, job_class: type[Job]) -> str | None:
    """The worker that runs a StartedJobRegistry entry: from the execution's hash, or, once that has
    expired, from the job's hash, at ``job_class``'s key (the app's RQ_JOB_CLASS may keep its hashes
    under its own prefix). ``connection`` may be a pipeline that watches both (``claim``)."""
    owner = connection.hget(execution_key(composite), "worker_name")
    if owner is None:
        owner = connection.hget(job_class.key_for(parse_composite_key(composite)[0]), "worker_name")
    return as_text(owner) if owner is not None else None


def started_executions(connection: Redis, queue: Queue) -> list[tuple[str, str, str | None]]:
    """(job id, execution composite key, owning worker name) of every entry in ``queue``'s StartedJobRegistry
    (``queue``: made with the app's classes, ``classes.AppClasses.queue``)."""
    found = []
    for entry in connection.zrange(queue.started_job_registry.key, 0, -1):
        composite = as_text(entry)  # type: ignore[arg-type]
        found.append((parse_composite_key(composite)[0], composite,
                      execution_owner(connection, composite, queue.job_class)))
    return found


@dataclass(frozen=True)
class Claimed:
    """A rescue this process committed: the job as it was re-queued or failed, for what follows."""

    job: Job
    retried: bool
    started: bool = True
    """False: registered but never started (put back at the front, untouched: no attempt, no callback)."""
    failure: str = ""
    """The failure recorded for the interrupted execution (its Result, and the FailedJobRegistry's when failed)."""


CLAIM_ATTEMPTS = 20
"""Transactions tried per entry before it is left for the next rescue: each retry follows a write to
the job or its execution by someone else (a heartbeat of a worker that is alive after all, its end,
another rescuer), which the next attempt reads and judges anew."""


def claim(queue: Queue, composite: str, owner: str | None, reason: str, settings: Settings, *, at_once: bool,
          unstarted_only: bool = False) -> Claimed | None:
    """Claim one StartedJobRegistry entry of ``owner`` and retry or fail its job, in one transaction.

    Until the transaction commits nothing has changed, so a rescuer that dies or is interrupted at
    any point before (kill -9, a stop, a Redis error) leaves the entry for the next rescue: the
    restarted instance, a fencer, rq's own cleanup. Watched: the job's hash and the execution's.
    Every path of rq's that ends an execution (the worker's end, rq's cleanup, a rescue of ours)
    writes one of them in the transaction that removes the entry, so a claim that commits is the
    only one; the registry itself is not watched, since every job starting or ending on the queue
    writes it. Returns None when the entry is no longer ``owner``'s to rescue, or is a leftover of
    a job not running any more (then it is only removed). ``unstarted_only``: leave anything but a
    job registered and never started (``put_back_unstarted``).
    """
    connection = queue.connection
    registry_key = queue.started_job_registry.key
    job_id = parse_composite_key(composite)[0]
    with connection.pipeline() as pipe:
        for _ in range(CLAIM_ATTEMPTS):
            try:
                pipe.watch(queue.job_class.key_for(job_id), execution_key(composite))
                if (pipe.zscore(registry_key, composite) is None
                        or execution_owner(pipe, composite, queue.job_class) != owner):
                    return None  # ended, claimed by another rescuer, or another worker's
                job, status = registered_job(queue, job_id)
                if unstarted_only and status != JobStatus.QUEUED:
                    return None
                pipe.multi()
                pipe.zrem(registry_key, composite)
                pipe.delete(execution_key(composite))
                if job is not None and status == JobStatus.QUEUED:
                    # Registered (prepare_execution) but its horse never set STARTED: it never ran. It
                    # is in no queue and no held list any more, so this entry is all that is left of it.
                    pipe.lrem(queue.key, 0, job_id)
                    pipe.lpush(queue.key, job_id)
                    pipe.execute()
                    return Claimed(job, retried=True, started=False)
                failure = f"{AbandonedJobError.__name__}: {reason}"
                retried = job is not None and status == JobStatus.STARTED and settle_interrupted(
                    job, queue, failure, settings.name, settings, pipe, at_once=at_once)
                pipe.execute()
                return Claimed(job, retried, failure=failure) if job is not None and status == JobStatus.STARTED \
                    else None
            except WatchError:
                continue
    log.warning("Left job %s of worker %s in the started registry: %d attempts to claim it met other writes; the "
                "next rescue or rq's cleanup takes it", job_id, owner, CLAIM_ATTEMPTS)
    return None


UNSTARTED_MARGIN = 5
"""Seconds before its expiry that ``put_back_unstarted`` takes an entry rq's cleanup is about to drop.
A registration that has not reached STARTED ≈55 s after its last heartbeat is no live worker's."""


def put_back_unstarted(queue: Queue, settings: Settings) -> list[str]:
    """Put back the jobs registered and never started whose StartedJobRegistry entry has expired.

    rq's ``StartedJobRegistry.cleanup`` (every worker's maintenance) handles only STARTED jobs and
    drops every other expired entry: a job whose worker died between the registration and its
    horse setting STARTED, and whose restarted instance or fencer did not come first (a host that
    stays down or reboots slowly, every worker of the fleet on it), was lost. Run before it."""
    connection = queue.connection
    done = []
    cutoff = current_timestamp() + UNSTARTED_MARGIN
    for entry in connection.zrangebyscore(queue.started_job_registry.key, 0, cutoff):
        composite = as_text(entry)  # type: ignore[arg-type]
        job_id = parse_composite_key(composite)[0]
        if as_text(connection.hget(queue.job_class.key_for(job_id), "status") or b"") != JobStatus.QUEUED.value:
            continue
        owner = execution_owner(connection, composite, queue.job_class)
        claimed = claim(queue, composite, owner, "its registration expired", settings, at_once=True,
                        unstarted_only=True)
        if claimed is not None:
            log.warning("Job %s (%s) was registered by worker %s, which never started it and is gone: put back at "
                        "the front of queue %s", job_id, job_func(claimed.job), owner or "?", queue.name,
                        extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": queue.name})
            done.append(job_id)
    return done


def registered_job(queue: Queue, job_id: str) -> tuple[Job | None, JobStatus | None]:
    """The job and its status, if it still exists. STARTED: it was running; QUEUED: registered but not
    started yet (the horse sets STARTED); any other: its registry entry is a leftover. Read with the
    queue's job class and serializer (the app's, ``classes``): a JSON job read with pickle was failed."""
    try:
        job = queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None, None
    return job, job.get_status(refresh=False)


def after_claim(job: Job, queue: Queue, retried: bool, failure: str,
                handlers: Sequence[Callable[..., object]] = ()) -> None:
    """What follows a committed rescue, as rq's worker does after it records a failure.

    Dependents and the rate-limit slot first, here: they are quick, and a rescuer that dies later would
    otherwise leave a dependent deferred for good. Then, on a thread of their own (``aftermath``: the
    rescuer's loop keeps ticking, pinging the watchdog and beating): the app's failure callback (up to
    its timeout), its exception handlers (RQ_EXCEPTION_HANDLERS, with AbandonedJobError, retried or not,
    as rq's cleanup of an abandoned job calls the cleaning worker's) and, for a job failed, its
    ``failed`` webhooks with the ``failure`` recorded (none for a job re-queued): in that order, at most
    once (a rescuer that dies after the commit skips what is left). rq's own
    ``StartedJobRegistry.cleanup`` runs the callback and handlers before its commit instead, so a cleanup
    that dies in between runs them again next time; it sends the webhooks after its commit, as here.
    """
    if not retried:
        queue.enqueue_dependents(job)
    release_slot(job)  # rq 3 rate limits: the slot goes to a waiting job unless this one was requeued
    aftermath.follow(job, handlers, None if retried else failure)


def rescue_executions(connection: Redis, owner: str, queue_names: list[str], settings: Settings, reason: str, *,
                      at_once: bool) -> list[Recovered]:
    """Retry or fail every job that worker ``owner`` was running in these queues (``claim``).

    Every rescue goes through here: the restarted instance's, a fencer's, a worker's of its own jobs.
    """
    recovered: list[Recovered] = []
    handlers = exception_handlers(settings)  # (imported at the start: ``prepare``)
    classes = app_classes(settings)
    for name in queue_names:
        queue = classes.queue(name, connection)
        for job_id, composite, job_owner in started_executions(connection, queue):
            if job_owner != owner:
                continue
            claimed = claim(queue, composite, owner, reason, settings, at_once=at_once)
            if claimed is None:
                continue
            faults.reached("rescue.claimed")
            if not claimed.started:
                log.warning("Job %s (%s) of worker %s was registered but never started: put back at the front of "
                            "queue %s", job_id, job_func(claimed.job), owner, name,
                            extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": name, "RQ_JOB_FUNC": job_func(claimed.job)})
                recovered.append(Recovered(job_id, True))
                continue
            log.warning("Rescued job %s (%s) of worker %s: %s", job_id, job_func(claimed.job), owner,
                        ("requeued at once" if at_once else "retrying") if claimed.retried
                        else "failed, no retries left",
                        extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": name, "RQ_JOB_FUNC": job_func(claimed.job)})
            recovered.append(Recovered(job_id, claimed.retried))
            after_claim(claimed.job, queue, claimed.retried, claimed.failure, handlers)
    return recovered


def predecessor_hung(instance: str, env: Mapping[str, str]) -> bool:
    """Whether systemd's watchdog ended this instance's previous run: the unit's ExecStopPost=
    writes $SERVICE_RESULT to ``$STATE_DIRECTORY/last-result-<instance>`` ("watchdog" then)."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if not state:
        return False
    try:
        return (Path(state) / f"last-result-{instance}").read_text().strip() == "watchdog"
    except OSError:
        return False


def refuse_if_alive(record: Mapping[str, str], name: str, hostname: str, here: host.HostIdentity) -> None:
    """Raise ``WorkerNameInUse`` unless the worker that left ``record`` (rq's hash, no death) is dead.

    A pid tells only on its own machine during its own boot, and host names are shared by cloned
    VMs and containers: so another host name, or the same one on another machine (machine id), is
    a live worker elsewhere whose jobs are not ours to rescue; the same machine in an earlier boot
    (boot id) is dead whatever its pid; the same boot leaves the pid to judge. A record without
    these ids (written by an older version) is judged by host name and pid alone.
    """
    pid = int(record.get("pid") or 0)
    their_host = record.get("hostname", "")
    if their_host and their_host != hostname:
        raise WorkerNameInUse(f"worker name {name} is registered by host {their_host}; "
                              "give this worker another --name or --instance")
    machine, boot = record.get("machine_id", ""), record.get("boot_id", "")
    if machine and here.machine_id and machine != here.machine_id:
        raise WorkerNameInUse(f"worker name {name} is registered by host {their_host or '?'} (machine id {machine}) "
                              f"and this host {hostname} is another machine (machine id {here.machine_id}): give the "
                              "hosts distinct hostnames, or this worker another --name or --instance")
    if machine and machine == here.machine_id and boot and here.boot_id and boot != here.boot_id:
        log.info("Worker %s's record is from an earlier boot of this machine: its pid %d is not running it", name, pid)
        return
    if process_is_worker(pid):
        raise WorkerNameInUse(f"worker {name} is already running as pid {pid} on this host; "
                              "stop it first, or start this one with another --instance")


def recover_predecessor(connection: Redis, settings: Settings, hostname: str, went_silent: bool = False
                        ) -> list[Recovered]:
    """Clean up the record a dead predecessor of this instance left, before we register.

    ``went_silent``: its main loop had stopped (frozen or hung) and the watchdog ended it: its jobs
    are requeued at once, as a fencer would have done. Otherwise it died suddenly (kill -9, the OOM
    killer, a crash), which its job may have caused: the job's retry interval applies.
    Raises ``WorkerNameInUse`` when that predecessor is in fact alive, or runs on another machine.
    """
    key = worker_key(settings.name)
    record = {as_text(k): as_text(v) for k, v in connection.hgetall(key).items()}
    if record and "death" not in record:
        refuse_if_alive(record, settings.name, hostname, host.identity())
    queue_names = list(settings.queues)
    for extra in filter(None, record.get("queues", "").split(",")):
        if extra not in queue_names:
            queue_names.append(extra)

    dead_pid = record.get("pid", "?")
    how = "stopped beating (frozen or hung) and was replaced" if went_silent else "died"
    recovered = rescue_executions(
        connection, settings.name, queue_names, settings,
        f"worker {settings.name} (pid {dead_pid}) {how} while running this job; recovered by its restarted instance",
        at_once=went_silent)
    if record:
        forget_worker(connection, settings.name, queue_names)
    return recovered


def forget_worker(connection: Redis, name: str, queue_names: list[str]) -> None:
    """Remove a lost worker's registration, as rq's own death registration would have."""
    key = worker_key(name)
    with connection.pipeline() as pipe:
        pipe.delete(key)
        pipe.srem(REDIS_WORKER_KEYS, key)
        for queue_name in queue_names:
            pipe.srem(WORKERS_BY_QUEUE_KEY % queue_name, key)
        pipe.execute()
