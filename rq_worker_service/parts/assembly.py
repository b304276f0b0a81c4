"""The one object a worker holds for the service (``worker.parts``): its parts, in order, and where rq's loop is.

The parts run in a fixed order, the one the tick has always had: watchdog ping, a look for the
Sentinel primary, the fencing beat (these three only while the worker is alive; the main loop then
renews its horse's lease, dated before them), the announcement
of a stop, the cut and EXTEND_TIMEOUT, the counters, STATUS=, the scheduler take-over, then the
sweeps: the worker's own lost jobs, lost members, orphaned pops. The flags here are set by rq's
hooks and the signal handlers (which only record, as gunicorn's arbiter does); the loop acts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import journal
from ..classes import app_classes
from ..config import Settings
from ..connection import Outage, primary_address, refresh_primary
from ..fencing import Membership
from ..handoff import Handoff
from ..held import Held
from ..lease import HorseLease
from ..lifecycle import Lifecycle
from ..notify import Notifier
from ..orphans import IntermediateWatch
from ..recovery import rescue_executions
from ..scheduling import Takeover
from ..variables import LONGEST_TICK
from . import Part, log
from .guard import RedisGuard
from .housekeeping import HeldJobs, OrphanSweep, SchedulerTakeover
from .jobwatch import JobWatch
from .liveness import FAILOVER_RETRY, Fencer, HostRecord, OwnRescue, PrimaryFollower, Watchdog
from .recycling import Recycler
from .reporting import Counters, StatusReporter
from .stops import Cutter, StopAnnouncer

if TYPE_CHECKING:
    from ..prefork import Prefork
    from ..worker import ServiceWorkerMixin

BEAT_INTERVAL = 1.0
"""Seconds between two of rq's worker heartbeats outside a job. rq beats before each pop, after it
and after each job, three separate commands each (HSET last_heartbeat, EXPIRE ×2): nine round trips
per job, a fifth of a simple worker's time on a no-op job. Once a second keeps ``last_heartbeat``
as fresh as anyone reads it, and the key's TTL (worker_ttl + 60 s) far ahead; the beats rq sends
inside a job's own pipelines are untouched."""


class ServiceParts:
    """Everything the service adds to one rq worker. Built in two steps: what rq's ``__init__``
    needs first (the timing, the ``Lifecycle``), then ``attach`` the parts that use its connection."""

    def __init__(self, settings: Settings, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.notifier = notifier
        self.clock = clock
        watchdog = notifier.watchdog_seconds
        self.interval = max(1.0, min(float(LONGEST_TICK), watchdog / 3)) if watchdog else float(LONGEST_TICK)
        """Seconds between ticks: a third of WatchdogSec, so that a hung main loop is what stops the pings."""
        self.retry_every = min(self.interval, FAILOVER_RETRY) if settings.redis.sentinels is not None else self.interval
        """The longest blocking pop and the longest wait for Redis (rq's max_connection_wait_time)."""
        self.lifecycle = Lifecycle(settings.shutdown_timeout, clock)
        self.outage = Outage(settings.redis, self.retry_every)
        self.takeover = Takeover(clock)
        self.monitoring_interval = 0
        """rq's job_monitoring_interval as set (the worker's property shortens it to land on a deadline)."""
        self.woken = threading.Event()
        """A signal asked for a tick now."""
        self.sweeps_owed = False
        """A tick off the main loop skipped the sweeps: the main loop owes them before its next pop."""
        self.next_tick = self.next_beat = self.next_suspension_look = 0.0
        """time.monotonic() at which the next tick, the next of rq's heartbeats and the next look at
        ``rq suspend``'s flag between jobs are due."""
        self.suspended = False
        """Waiting while ``rq suspend`` holds (``worker._wait_while_suspended``): STATUS= says so."""
        self.popping = False
        """In rq's blocking pop with nothing in hand: only there may a stop interrupt the loop."""
        self.last_pop_took = False
        """The last pop took a job: the next look at ``rq suspend``'s flag may wait (``worker._suspended``)."""
        self.state_written: str | None = None
        """The worker state (rq's ``set_state``) Redis acknowledged last; None once one is queued on a
        pipeline or failed, as it is then not known (``worker.set_state``)."""
        self.in_horse_wait = False
        """In rq's wait for the horse, inside its SIGALRM-based monitor timeout."""
        self.horse_killed = False
        """The worker killed the job's horse itself: its death is not a crash."""
        self.handlers_pid: int | None = None
        """The process that installed our signal handlers (None: not installed, a direct call)."""
        self.main_pid = os.getpid()
        """The worker's process, which its horse dies with."""
        self.handoff: Handoff | None = None
        """The fork worker's: the next horse's Redis connection."""
        self.prefork: Prefork | None = None
        """The fork worker's spare horse (``prefork``), with RQ_PREFORK."""
        self.watch: JobWatch | None = None
        """The simple worker's: the thread that ticks while a job runs."""
        self.lease: HorseLease | None = None
        """The main loop's last tick, shared with the horse (``lease``): made at the first tick, before
        any horse; a spawn horse's is its worker's."""
        self.order: list[Part] = []

    def attach(self, worker: ServiceWorkerMixin) -> None:
        """The parts that use the worker's connection, name and queues, once rq's ``__init__`` set them."""
        connection, name, settings = worker.connection, worker.name, self.settings
        self.guard = RedisGuard(self.outage, self.notifier, lambda: self.status.send(), worker._stop_job,
                                settings.key_prefix)
        self.rescue = OwnRescue(name, self.lifecycle, lambda reason: rescue_executions(
            connection, name, worker.queue_names(), settings, reason, at_once=True))
        self.follower = PrimaryFollower(settings.redis, primary_address(connection),
                                        lambda: refresh_primary(connection), self.guard, self.rescue, self.clock)
        self.fencer = Fencer(Membership(connection, name, period=3 * self.interval), self.guard, worker.queue_names,
                             settings, lambda: worker.hostname or "?")
        self.orphans = IntermediateWatch(connection, worker.queues)
        self.held = Held(connection, name, app_classes(settings),  # (imported at the start: ``prepare``)
                         cluster=settings.redis.cluster)
        self.counters = Counters(connection, lambda: worker.key, self.guard, self.notifier.interval, self.clock)
        self.recycler = Recycler(self.lifecycle, settings.max_jobs, settings.max_memory, worker.stop_loop)
        self.status = StatusReporter(self.notifier, self.lifecycle, self.outage, self.counters, self.follower, name,
                                     worker.queue_names, lambda: self.suspended)
        self.order = [HostRecord(connection, lambda: worker.key),  # first: right after rq's registration
                      Watchdog(self.notifier), self.follower, self.rescue, self.fencer,
                      StopAnnouncer(self.lifecycle, self.notifier, self.status.text, worker),
                      Cutter(self.lifecycle, self.notifier, worker._stop_job, self.interval), self.counters,
                      self.status, SchedulerTakeover(self.takeover, self.lifecycle, lambda: worker.scheduler),
                      HeldJobs(self.held), OrphanSweep(self.orphans), self.recycler]

    def add(self, part: Part) -> None:
        """A worker class's own part, after the others."""
        self.order.append(part)

    # -- the tick -----------------------------------------------------------------------------

    @property
    def tick_due(self) -> bool:
        """Between jobs: a tick is due once a tick interval has passed, when a signal asked for one
        (``wake``), while a job's end may be lost (the rescue waits for a tick) or when the sweeps
        are owed (the job just ended was ticked off the main loop)."""
        return (self.clock() >= self.next_tick or self.woken.is_set() or self.rescue.lost is not None
                or self.sweeps_owed)

    def tick(self, *, alive: bool = True, main_loop: bool = True) -> None:
        """Every part's hooks, in order. ``alive``: ping the watchdog and beat (every tick of the main
        loop is alive; only the simple worker's watch thread ticks without, once its job overran);
        ``main_loop``: False on that thread, which waits on an event of its own.

        The sweeps (fencing lost members, rescues, orphans) run from the main loop only: in the fork
        and spawn workers that includes the ticks while the horse runs (rq's ``maintain_heartbeats``);
        the simple worker's job holds the main loop, and the sweeps stay on it (they once ran a
        rescue's failure callback under rq's SIGALRM limit, which only the main thread can set; the
        callbacks now run on threads of their own, ``aftermath``), so its watch thread leaves them
        owed, and the main loop does them as soon as the job ends, before its next pop: otherwise,
        with back-to-back jobs longer than a tick, the watch thread's ticks keep the main loop's
        from ever being due."""
        self.next_tick = self.clock() + self.interval
        if main_loop:
            self.woken.clear()
            self.sweeps_owed = False
        before_beat = time.monotonic()
        if alive:
            for part in self.order:
                part.beat()  # the fencing beat among them: answered "fenced", the worker exits here
        if main_loop:
            self.renew_lease(before_beat)
        for part in self.order:
            part.tick(main_loop)
        if not self.lifecycle.stopping:
            if main_loop:
                self.guard.call(self._sweep)
            else:
                self.sweeps_owed = True

    def renew_lease(self, before_beat: float) -> None:
        """After the fencing beat, dated by the clock read before it (``time.monotonic``): the horse
        ends its job once this is older than the fencing period less half a tick, before anyone may
        fence this worker (``lease``). Renewed before the beat, a main process frozen between the two
        gave its horse a lease that no beat backed: its last beat in Redis a tick older, a fencer
        could claim it before the horse ended. A beat answered "fenced" renews nothing (the worker
        exits); a failed one (Redis unreachable) still renews, as the tick always did: an outage cuts
        no job (``lease``)."""
        if self.lease is None:
            self.lease = HorseLease.create(limit=self.fencer.membership.period - self.interval / 2)
        self.lease.renew(before_beat)

    def horse_starting(self) -> None:
        """Just before a horse starts (fork or spawn): the tick, when due.

        Nothing ticks between the pop and here (``dequeue_job_and_maintain_ttl``), and the horse ends
        its job as soon as the lease is older than its limit (``lease``): a main loop that was silent
        in between (a SIGSTOP, a VM pause, a slow Redis) started a horse that ended itself at once,
        before the job ran, and the worker recorded a horse that died under its job: a retry attempt
        used by a run that never happened, or the job failed when it had none left. The tick renews
        the lease and beats; a worker fenced while it was silent exits here, before starting the job
        (its fencer put it back, or its restart does)."""
        if self.tick_due:
            self.tick()

    def _sweep(self) -> None:
        for part in self.order:
            part.sweep()

    def between_jobs(self) -> None:
        """Around each pop: the primary (under Sentinel, after every pop), the horses that said "done"
        reaped (``prefork``), and the tick when due."""
        self.follower.look()
        if self.prefork is not None:
            self.prefork.reap()
        if self.tick_due:
            self.tick()

    def tick_while_waiting(self) -> None:
        """A wait of the main loop right after a job (a recycle's ``startcheck``): the tick when due, unless
        the simple worker's watch thread still ticks for that job (it stops at the end of ``execute_job``):
        the two never tick at once."""
        if self.watch is None or self.watch.watched is None:
            self.between_jobs()

    def rq_beat_due(self, timeout: int | None) -> bool:
        """Whether rq's heartbeat goes out now: always with a timeout of its own, else once per BEAT_INTERVAL."""
        if timeout is None and self.clock() < self.next_beat:
            return False
        self.next_beat = self.clock() + BEAT_INTERVAL
        return True

    def wake(self) -> None:
        """Make the next tick come now rather than up to a tick later. While the horse is awaited
        we are inside rq's SIGALRM-based monitor timeout, whose handler turns an early alarm into
        an ordinary monitor tick."""
        self.woken.set()
        if self.in_horse_wait:
            signal.setitimer(signal.ITIMER_REAL, 0.01)
        for part in self.order:
            part.woken()

    # -- the worker's life --------------------------------------------------------------------

    def started(self) -> None:
        for part in self.order:
            part.started()

    def idle_out(self, seconds: int) -> None:
        """RQ_MAX_IDLE_TIME passed without a job: a warm stop of its own, which ``run`` ends with status 0
        (rq's --max-idle-time exits; Restart=on-failure leaves an instance that exited 0 inactive)."""
        log.info("Idle for %ds (RQ_MAX_IDLE_TIME): exiting with status 0, which systemd does not restart "
                 "(Restart=on-failure)", seconds)
        self.lifecycle.request_exit(f"idle for {seconds}s (RQ_MAX_IDLE_TIME), exiting with status 0")

    def job_started(self, job_id: str, func: str, queue_name: str) -> None:
        journal.set_job(job_id, func, queue_name)
        self.lifecycle.start_job(f"{job_id} ({func})")
        self.horse_killed = False
        self.main_pid = os.getpid()
        for part in self.order:
            part.job_started()

    def job_lost(self, job_id: str, func: str, exc: Exception) -> None:
        """Redis failed before the horse started or after it ended (rq would end the worker): go on,
        and re-queue the job once Redis answers unless its end was recorded."""
        self.rescue.mark(str(exc))
        self.held.retake = True  # a registration that did not happen left the id held
        self.outage.failed(exc)
        log.warning("Lost Redis around job %s (%s): %s; it is re-queued once Redis answers, unless its end was "
                    "recorded", job_id, func, exc)

    def job_ended(self) -> None:
        self.lifecycle.end_job()
        journal.clear_job()
        for part in self.order:
            part.job_ended()

    def teardown(self) -> None:
        for part in reversed(self.order):
            part.teardown()
