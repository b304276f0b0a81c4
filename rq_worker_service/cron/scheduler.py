"""``rq-worker-service cron``: the loop of rq-cron.service, one per host, one of them acting.

Every scheduler runs the same loop: the one that holds the lease (``lease``) renews it every third of
its period and enqueues each slot that is due (``slots.due``, from the last handled slot kept in
Redis, so a restart or a takeover neither repeats nor loses one), each in its own transaction that
checks the lease again (``enqueue``); the others look every third of a period whether the lease is
free and take it then, within two periods of the leader's last renewal (``lease`` says why).

As in ``autoscaler`` (gunicorn's arbiter), signal handlers only record (SIGTERM/SIGINT: stop, SIGHUP:
reload) and wake the loop through a pipe; the loop acts: it reloads the schedule (keeping the old one
when the new one does not load), and at a stop releases the lease (if still ours), so that a standby
takes over at its next look, and exits 0. systemd hears READY=1 once Redis answered and the first
attempt at the lease was made (a standby is ready too), STATUS= with the role and the next job, and
WATCHDOG=1 from every turn of the loop. A Redis outage is said once and waited out: nothing is
enqueued meanwhile, and the leader stops acting by its own clock when its lease may have expired.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import redis
from rq.queue import Queue

from .. import exits, journal, keys
from ..acl import denied
from ..config import ConfigError, RedisTarget
from ..connection import (
    REDIS_ERRORS,
    RedisAuthError,
    RedisNoSuchDatabase,
    RedisUnavailable,
    make_connection,
    slot_moved,
    slot_moved_message,
    wait_for_redis,
)
from ..envfiles import refresh_environment
from ..notify import Notifier
from ..secret_env import environment
from .enqueue import MAX_ATTEMPTS, Contended, LeaseLost, Outcome, enqueue_slot, last_marks, mark
from .lease import Acquired, Lease, boottime, parse_value
from .records import JobRecord, publish_jobs, scheduler_record, stale_schedulers
from .schedule import Entry, Schedule, load
from .settings import CronSettings, cron_settings
from .slots import due, job_id, next_slot

log = logging.getLogger("rq_worker_service.cron")

MAX_SLEEP = 60.0


class RedisTime:
    """The time of the Redis server, read at each look: one clock for every host's scheduler.

    Slots, the grace, the marks and the beats are all judged by it. A host's own wall clock would not
    do: a host 5 minutes ahead taking over counts slots still to come as missed and skips them, and its
    mark in the future holds every other host back until then; one stepped by NTP does the same.
    Between two looks the time read is carried on by the boot clock, so that a wait computed from it
    does not ask Redis (nor fail during an outage)."""

    def __init__(self, connection, clock: Callable[[], float]) -> None:
        self.connection = connection
        self.clock = clock
        self.read_at: float | None = None
        self.server = 0.0

    def refresh(self) -> None:
        """Read the server's time (Redis errors pass through: the look is then an outage's)."""
        seconds, micros = self.connection.time()
        self.server, self.read_at = seconds + micros / 1e6, self.clock()

    def __call__(self) -> datetime:
        if self.read_at is None:
            self.refresh()
        assert self.read_at is not None
        return datetime.fromtimestamp(self.server + (self.clock() - self.read_at), UTC)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _job(entry: Entry, **fields: str) -> dict[str, str]:
    """``extra=`` for a line about ``entry``: the journal field naming the cron job, and ``fields``."""
    return {"RQ_CRON_JOB": entry.name, **fields}


class CronScheduler:
    """One scheduler: leader or standby, with the schedule it runs."""

    def __init__(self, connection, schedule: Schedule, queue: Callable[[str], Queue], cron: CronSettings,
                 host: str, pid: int, target: RedisTarget | None = None, clock: Callable[[], float] = boottime,
                 now: Callable[[], datetime] | None = None) -> None:
        self.connection = connection
        self.schedule = schedule
        self.make_queue = queue
        self.queues: dict[str, Queue] = {}
        self.cron = cron
        self.host, self.pid = host, pid
        self.target = target
        """Where Redis is: to tell a moved cluster slot from another refusal."""
        self.holder = f"{host}:{pid}"
        self.clock = clock
        self.now: Callable[[], datetime] = RedisTime(connection, clock) if now is None else now
        self.lease = Lease(connection, self.holder, cron.lease_period, clock)
        self.since = self.now().timestamp()
        self.records: dict[str, JobRecord] = {}
        self.published = False
        """Whether this leader wrote every cron job's record since it took over or reloaded (``_publish``)."""
        self.next_at: dict[str, datetime] = {}
        self.failing: dict[str, str] = {}
        """Per cron job, the last error its enqueue met (said once, until it changes or goes)."""

    # -- the lease ---------------------------------------------------------------------------------

    def step(self) -> None:
        """One look: keep or take the lease, enqueue what is due if ours, beat. Redis errors pass through."""
        if isinstance(self.now, RedisTime):
            self.now.refresh()
        if self.lease.held and (self.lease.renewal_due() or not self.lease.acting()):
            token = self.lease.token
            if not self.lease.renew():
                self._lost(token)
        if not self.lease.held:
            acquired = self.lease.acquire(self.now().timestamp())
            if acquired is not None:
                self._took_over(acquired)
        if self.lease.acting():
            if not self.published:
                self._publish()
            self._enqueue_due()
        self._beat()

    def _took_over(self, acquired: Acquired) -> None:
        self.since = self.now().timestamp()
        log.info("Took over the cron lease (token %d) from %s", acquired.token, acquired.previous or "nobody",
                 extra={"RQ_CRON_TOKEN": str(acquired.token)})
        self.published = False  # (written next, before its first enqueue; again after an outage cut it short)

    def _lost(self, token: int | None) -> None:
        self.since = self.now().timestamp()
        self.next_at.clear()
        log.warning("Lost the cron lease (token %s): %s holds it now; enqueueing nothing while standing by",
                    token, self._holder_now() or "nobody")

    def _holder_now(self) -> str | None:
        seen = parse_value(self.connection.get(keys.cron_lease()))
        return seen[1] if seen else None

    def release(self) -> None:
        """At a stop: give the lease up if ours, and leave the schedulers' list."""
        token = self.lease.token
        if self.lease.release():
            log.info("Released the cron lease (token %s): a standby takes over at its next look", token)
        self.connection.hdel(keys.cron_schedulers(), self.holder)

    def _beat(self) -> None:
        """This scheduler's entry in ``keys.cron_schedulers()``; the leader drops those gone silent."""
        now = self.now().timestamp()
        record = scheduler_record(self.host, self.pid, "leader" if self.lease.held else "standby", self.since, now,
                                  self.lease.token, self.schedule.source)
        self.connection.hset(keys.cron_schedulers(), self.holder, record)
        if self.lease.held:
            stale = stale_schedulers(self.connection.hgetall(keys.cron_schedulers()), now, self.cron.lease_period)
            if stale:
                self.connection.hdel(keys.cron_schedulers(), *stale)

    # -- the cron jobs -----------------------------------------------------------------------------

    def reload(self, schedule: Schedule, cron: CronSettings) -> None:
        """Run ``schedule`` from now on (the lease period stays: the others use the same one)."""
        self.schedule = schedule
        self.cron = replace(cron, lease_period=self.cron.lease_period)
        self.next_at.clear()
        self.failing.clear()
        self.published = False

    def _publish(self) -> None:
        """The leader's records of every cron job (the totals a former leader left carried over)."""
        stored = self.connection.hgetall(keys.cron_jobs())
        marks = last_marks(self.connection)
        now = self.now()
        self.records = {}
        for entry in self.schedule.entries:
            record = JobRecord.of(entry, self.holder, stored.get(entry.name.encode()))
            record.next = self._next(entry, marks.get(entry.name), now).timestamp()
            record.updated = now.timestamp()
            self.records[entry.name] = record
        publish_jobs(self.connection, self.records)
        self.published = True

    @staticmethod
    def _next(entry: Entry, last: datetime | None, now: datetime) -> datetime:
        """When ``entry`` is due next: the slot after its last handled one; a never-seen interval job at once,
        a never-seen cron job at its next slot."""
        if last is not None:
            return next_slot(entry, last)
        return now if entry.interval else next_slot(entry, now)

    def _enqueue_due(self) -> None:
        now = self.now()
        marks = last_marks(self.connection)
        for entry in self.schedule.entries:
            if not self.lease.acting():
                return  # our own clock says the lease may be gone: the rest waits for a renewal
            next_at = self.next_at.get(entry.name)
            if next_at is not None and next_at > now:
                continue
            try:
                self._handle(entry, marks.get(entry.name), now)
            except LeaseLost:
                token = self.lease.token
                self.lease.forget()
                self._lost(token)
                return
            except Contended:
                log.warning("%s: its enqueue was interrupted %d times in a row by other writes; trying again at the "
                            "next look", entry.name, MAX_ATTEMPTS, extra=_job(entry))
            except (*REDIS_ERRORS, redis.exceptions.NoPermissionError):
                raise
            except redis.exceptions.ResponseError as exc:
                if self.target is not None and slot_moved(self.target, exc):
                    raise
                self._failed(entry, exc, now)
            except Exception as exc:  # the app's job: arguments that do not serialize, a bad option …
                self._failed(entry, exc, now)

    def _failed(self, entry: Entry, exc: Exception, now: datetime) -> None:
        said = f"{type(exc).__name__}: {exc}"
        if self.failing.get(entry.name) != said:
            log.error("%s: cannot enqueue its job (%s); trying again every %gs while its slots are within "
                      "RQ_CRON_MISFIRE_GRACE", entry.name, said, self.lease.renew_every, extra=_job(entry))
        self.failing[entry.name] = said
        self.next_at[entry.name] = datetime.fromtimestamp(now.timestamp() + self.lease.renew_every, UTC)

    def _handle(self, entry: Entry, last: datetime | None, now: datetime) -> None:
        """Enqueue ``entry``'s due slots, oldest first, then mark the rest handled (skipped, or a fresh cron
        job's start)."""
        plan = due(entry, last, now, self.cron.grace)
        skipped = plan.skipped
        value = self.lease.value
        assert value is not None
        queue = self.queues.get(entry.queue_name) or self.queues.setdefault(entry.queue_name,
                                                                            self.make_queue(entry.queue_name))
        handled = last
        for slot in plan.enqueue:
            if not self.lease.acting():
                return
            record, jid = self._record(entry, slot=slot, skipped=skipped), job_id(entry, slot)

            def after(enqueues: bool, record: JobRecord = record, slot: datetime = slot, jid: str = jid) -> str:
                return self._with_job(record, slot, jid, enqueues).dumps()

            outcome = enqueue_slot(self.connection, queue, entry, slot, value, after)
            handled = slot
            if outcome is Outcome.DONE:
                continue
            self.records[entry.name] = self._with_job(record, slot, jid, outcome is Outcome.ENQUEUED)
            self._said_skipped(entry, skipped)
            skipped = 0
            if outcome is Outcome.ENQUEUED:
                log.info("Enqueued %s for its slot %s: job %s on queue %s", entry.name, _when(slot), jid,
                         entry.queue_name, extra=_job(entry, RQ_CRON_SLOT=slot.isoformat(), RQ_JOB_ID=jid))
            else:
                log.info("%s: the job %s of its slot %s exists already; not enqueued again", entry.name, jid,
                         _when(slot), extra=_job(entry, RQ_CRON_SLOT=slot.isoformat(), RQ_JOB_ID=jid))
        if (handled is None or plan.mark > handled) and self.lease.acting():
            record = self._record(entry, slot=plan.mark, skipped=skipped)
            if mark(self.connection, entry, plan.mark, value, record.dumps()):
                self.records[entry.name] = record
                self._said_skipped(entry, skipped)
        self.failing.pop(entry.name, None)
        self.next_at[entry.name] = next_slot(entry, max(plan.mark, now))

    def _said_skipped(self, entry: Entry, skipped: int) -> None:
        if skipped:
            log.warning("%s: skipped %d missed slot(s) older than RQ_CRON_MISFIRE_GRACE=%ds (catch-up: %s)",
                        entry.name, skipped, self.cron.grace, entry.catch_up, extra=_job(entry))

    def _record(self, entry: Entry, *, slot: datetime, skipped: int) -> JobRecord:
        """``entry``'s record once ``slot`` is handled, ``skipped`` more slots counted (its job: ``_with_job``)."""
        record = self.records.get(entry.name) or JobRecord.of(entry, self.holder)
        return replace(record, next=next_slot(entry, slot).timestamp(), skipped_total=record.skipped_total + skipped,
                       holder=self.holder, updated=self.now().timestamp())

    @staticmethod
    def _with_job(record: JobRecord, slot: datetime, jid: str, enqueued: bool) -> JobRecord:
        """``record`` with ``slot``'s job as the last one (counted when this scheduler enqueued it)."""
        return replace(record, last_slot=slot.timestamp(), last_job_id=jid,
                       enqueued_total=record.enqueued_total + (1 if enqueued else 0))

    # -- what systemd shows ------------------------------------------------------------------------

    def summary(self) -> str:
        """STATUS= for ``systemctl status rq-cron``."""
        if self.lease.held:
            upcoming = sorted((at, name) for name, at in self.next_at.items())
            if not upcoming:
                return f"leader (token {self.lease.token}): {len(self.schedule.entries)} cron job(s)"
            at, name = upcoming[0]
            return f"leader (token {self.lease.token}): next {name} at {_when(at)}"
        return f"standby: lease held by {self.lease.other or 'nobody (expiring)'}"

    def wait_time(self) -> float:
        """Seconds until the next look: the next renewal or slot for the leader, a third of a period for a
        standby (its takeover bound)."""
        if not self.lease.held or self.lease.renewed_at is None:
            return self.lease.renew_every
        until = self.lease.renewed_at + self.lease.renew_every - self.clock()
        if self.next_at:
            until = min(until, (min(self.next_at.values()) - self.now()).total_seconds())
        return max(0.0, until)


class StoppedStarting(Exception):
    """A stop came while the start waited for Redis."""


class Signals:
    """SIGTERM/SIGINT (stop) and SIGHUP (reload): recorded, and the loop's wait woken through a pipe."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass

    def wait(self, seconds: float) -> None:
        if self.stop or self.reload:
            return
        if select.select([self._read], [], [], seconds)[0]:
            try:
                os.read(self._read, 64)
            except BlockingIOError:
                pass


def configure(env_files: Sequence[str]):
    """The workers' configuration and the app's import path, as ``run`` builds them (``service.configure``),
    the RQ_CRON_* settings and the schedule imported; raises ConfigError."""
    from ..service import configure as configure_worker

    prepared = configure_worker({}, env_files)
    cron = cron_settings(environment)
    return prepared, cron, load(cron.config, zone=cron.zone, catch_up=cron.catch_up,
                                secrets=secrets(prepared.settings.redis))


def secrets(target: RedisTarget) -> tuple[str, ...]:
    """The passwords a schedule's failure to import must not quote (its app may have been handed them)."""
    sentinels = target.sentinels
    return tuple(p for p in (target.password, sentinels.password if sentinels else None) if p)


def _reload(scheduler: CronScheduler, env_files: Sequence[str], notifier: Notifier) -> None:
    """SIGHUP: the env files read again and the schedule imported again; a schedule that does not load
    leaves the running one in place (ExecReload= runs ``cron --check`` first, so this is rare)."""
    notifier.reloading("reloading the schedule")
    try:
        refresh_environment(env_files, Path.cwd() / ".env", environment)
        cron = cron_settings(environment)
        schedule = load(cron.config, zone=cron.zone, catch_up=cron.catch_up,
                        secrets=secrets(scheduler.target) if scheduler.target else ())
    except ConfigError as exc:
        log.error("Reload refused, the schedule of %s runs on: configuration error: %s", scheduler.schedule.source,
                  exc)
    else:
        if cron.lease_period != scheduler.cron.lease_period:
            log.warning("RQ_CRON_LEASE_PERIOD=%d takes a restart (every scheduler must use the same one); still %d",
                        cron.lease_period, scheduler.cron.lease_period)
        scheduler.reload(schedule, cron)
        log.info("Reloaded the schedule: %d cron job(s) from %s", len(schedule.entries), schedule.source)
    notifier.ready(scheduler.summary())


def run(env_files: Sequence[str], check_only: bool = False) -> int:
    """Run the scheduler until stopped (or, ``check_only``, validate and import the schedule); the exit
    status follows ``exits`` (78: fix the configuration first; 77: the credentials)."""
    journal.setup_logging("INFO")
    notifier = Notifier()
    try:
        prepared, cron, schedule = configure(env_files)
        keys.check_imported(prepared.settings.key_prefix)
    except ConfigError as exc:
        if check_only:  # the running scheduler is not this process: no STATUS=/ERRNO= on its behalf
            log.error("configuration error: %s", exc)
            return exits.CONFIG
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    settings = prepared.settings
    for warning in settings.warnings:
        log.warning("%s", warning)
    if check_only:
        log.info("Configuration OK: %d cron job(s) from %s (lease %ds, misfire grace %ds) on Redis %s",
                 len(schedule.entries), schedule.source, cron.lease_period, cron.grace, settings.redis.display)
        return exits.OK
    journal.setup_logging(settings.log_level)
    signals = Signals()
    host, pid = socket.gethostname(), os.getpid()
    log.info("Starting the cron scheduler %s:%d: %d cron job(s) from %s (lease %ds, misfire grace %ds) on Redis %s",
             host, pid, len(schedule.entries), schedule.source, cron.lease_period, cron.grace,
             settings.redis.display)

    def pause(seconds: float) -> None:
        """wait_for_redis's wait between two attempts, ended by a stop (which then ends the start)."""
        signals.wait(seconds)
        if signals.stop:
            raise StoppedStarting

    try:
        connection = wait_for_redis(lambda: make_connection(settings.redis, settings.key_prefix,
                                                            f"{host}:{pid}.rq-cron",
                                                            redis_class=prepared.redis_class),
                                    settings.redis, notifier, settings.redis_startup_wait, sleep=pause)
    except StoppedStarting:
        log.info("Stopped while waiting for Redis, holding nothing")
        return exits.OK
    except RedisUnavailable as exc:
        return notifier.fail(str(exc), exits.UNAVAILABLE, errno.ECONNREFUSED)
    except RedisAuthError as exc:
        return notifier.fail(str(exc), exits.NOPERM, errno.EACCES)
    except RedisNoSuchDatabase as exc:
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    classes = prepared.classes
    scheduler = CronScheduler(connection, schedule, lambda name: classes.queue(name, connection), cron, host, pid,
                              target=settings.redis)
    return loop(scheduler, signals, notifier, env_files)


def loop(scheduler: CronScheduler, signals: Signals, notifier: Notifier, env_files: Sequence[str]) -> int:
    """Look, act, say, wait; until a stop. A Redis outage is said once, then waited out."""
    trouble = ""
    ready = False
    watchdog = notifier.watchdog_seconds
    while not signals.stop:
        if signals.reload:
            signals.reload = False
            _reload(scheduler, env_files, notifier)
        try:
            scheduler.step()
            if trouble:
                log.info("Redis answers again")
            trouble = ""
        except REDIS_ERRORS as exc:
            if not trouble:
                log.warning("cannot reach Redis at %s (%s): enqueueing nothing until it answers%s",
                            scheduler.target.display if scheduler.target else "?", exc,
                            "; the lease lapses by our clock meanwhile" if scheduler.lease.held else "")
            trouble = f"holding: Redis does not answer ({exc})"
        except redis.exceptions.NoPermissionError as exc:
            return notifier.fail(f"{denied(exc) or exc}; exiting", exits.NOPERM, errno.EACCES)
        except redis.exceptions.ResponseError as exc:
            if scheduler.target is not None and slot_moved(scheduler.target, exc):
                return notifier.fail(slot_moved_message(keys.imported(), exc), exits.UNAVAILABLE, errno.ECONNRESET)
            if not trouble:  # (a read-only replica, out of memory …): held as an outage, not a crash loop
                log.warning("Redis at %s refused a command (%s): enqueueing nothing until it takes them again",
                            scheduler.target.display if scheduler.target else "?", exc)
            trouble = f"holding: Redis refuses ({exc})"
        if not ready:
            notifier.ready(trouble or scheduler.summary())  # leader or standby: either is a running scheduler
            ready = True
        notifier.watchdog()
        notifier.status(trouble or scheduler.summary())
        pause = scheduler.lease.renew_every if trouble else scheduler.wait_time()
        signals.wait(min(pause, MAX_SLEEP, watchdog / 3 if watchdog else MAX_SLEEP))
    notifier.stopping("stopping: releasing the cron lease")
    try:
        scheduler.release()
    except redis.exceptions.RedisError:
        log.warning("could not release the cron lease (Redis does not answer): it lapses within %ds",
                    scheduler.cron.lease_period)
    log.info("Stopped")
    return exits.OK
