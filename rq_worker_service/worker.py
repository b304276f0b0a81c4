"""rq's worker, hooked into systemd: readiness, status, watchdog, warm/cold shutdown and reload.

We subclass rq's own Worker classes and use the hooks its loop already has, instead of writing a
loop of our own, so job semantics stay rq's (the differences are listed, with reasons, in
tests/rq_suite/expected.txt). The pieces:

* ``heartbeat()`` runs around every blocking pop (three times per job), and ``maintain_heartbeats()``
  on every monitor tick while the work horse runs: both drive ``_service_tick()``, which pings the
  watchdog, acts on what the ``Lifecycle`` says is due (announce a stop or reload, cut the job),
  extends systemd's stop timeout and updates STATUS=. The ticks come at a third of WatchdogSec, so a
  hung main loop is what stops the pings; between jobs a tick runs only when one is due (or a
  signal asked for it), so that a stream of short jobs does not pay for a tick each.
* Signal handlers only record the request in the ``Lifecycle`` and make the next tick come now;
  the one exception is a stop while blocked in the pop with nothing in hand, which raises rq's
  StopRequested to return from the pop at once.
* SIGHUP finishes the running job, then the runner re-executes the process in place.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from rq import Worker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import SHUTDOWN_SIGNAL

from . import exits, journal
from .acl import denied
from .config import Settings
from .connection import REDIS_ERRORS, Outage, primary_address, refresh_primary
from .fencing import Lost, Membership
from .lifecycle import Lifecycle, Phase
from .notify import Notifier
from .orphans import IntermediateWatch
from .process import die_with_parent
from .recovery import apply_job_defaults, forget_worker, record_interruption, rescue_executions
from .rqcompat import HORSE_DIED, STUCK_IN_INTERMEDIATE, job_func
from .scheduling import Takeover, start_scheduler

log = logging.getLogger("rq_worker_service.worker")

MAINTENANCE_INTERVAL = 60
"""Seconds between rq's registry maintenance (rq: 600). It is what rescues a job whose worker died
between popping it and registering it as started (rq's intermediate queue, two sightings a minute
apart) and the jobs of dead workers on other hosts; each queue's pass is done by one worker under
rq's maintenance lock, so a shorter interval costs little."""
BEAT_INTERVAL = 1.0
"""Seconds between two of rq's worker heartbeats outside a job. rq beats before each pop, after it
and after each job, three separate commands each (HSET last_heartbeat, EXPIRE ×2): nine round trips
per job, a fifth of a simple worker's time on a no-op job. Once a second keeps ``last_heartbeat``
as fresh as anyone reads it, and the key's TTL (worker_ttl + 60 s) far ahead; the beats rq sends
inside a job's own pipelines are untouched."""
COUNTS_VAR = "RQ_WORKER_SERVICE_COUNTS"
"""Environment variable carrying "done,failed" across a reload's re-exec."""
STOP_GRACE = 15.0
"""Seconds of stop timeout we ask systemd for beyond the next tick: room for a cold shutdown."""
FAILOVER_RETRY = 2
"""Under Redis Sentinel: the longest blocking pop, and the longest wait between reconnection
attempts (rq's pop backs off 1, 2, 2 … seconds). A primary the sentinels replaced keeps serving
its old clients until they convert it to a replica, ≈10 s later (a manual failover) or until it
comes back (a crash): the tick that follows each pop asks the sentinels, so a worker moves to the
new primary within this many seconds, where a tick (10 s by default) would be the bound."""

if TYPE_CHECKING:
    _Base = Worker  # what the mixin is mixed into, for the type checker
else:
    _Base = object


class ServiceWorkerMixin(_Base):
    """Everything systemd-specific; mixed in front of one of rq's worker classes."""

    def __init__(self, *args: Any, settings: Settings, notifier: Notifier, **kwargs: Any) -> None:
        self.settings = settings
        self.notifier = notifier
        watchdog = notifier.watchdog_seconds
        self._tick = max(1.0, min(30.0, watchdog / 3)) if watchdog else 30.0
        self.lifecycle = Lifecycle(settings.shutdown_timeout)
        self._takeover = Takeover()
        self._wake = threading.Event()
        self._popping = False
        self._in_horse_wait = False
        self._horse_killed = False
        self._handlers_pid: int | None = None
        self._main_pid = os.getpid()
        self._done = self._failed = 0
        self._sentinel = settings.redis.sentinels is not None
        # time.monotonic() at which each is due: a tick, a look for the primary, rq's heartbeat, a count
        self._next_tick = self._next_look = self._next_beat = self._next_count = 0.0
        kwargs.setdefault("job_monitoring_interval", int(self._tick))
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        super().__init__(*args, **kwargs)
        self.max_connection_wait_time = min(self._tick, FAILOVER_RETRY) if self._sentinel else self._tick
        self.outage = Outage(settings.redis, self.max_connection_wait_time)
        self._primary = primary_address(self.connection)
        self._lost_in_job: str | None = None
        self.membership = Membership(self.connection, self.name, period=3 * self._tick)
        self.orphans = IntermediateWatch(self.connection, self.queues)

    # -- timing -------------------------------------------------------------------------------

    @property
    def dequeue_timeout(self) -> int:
        """rq blocks up to worker_ttl-15 s (405 s) in BLPOP; we come back every tick instead (under
        Sentinel every FAILOVER_RETRY seconds, to look for a new primary)."""
        longest = min(self._tick, FAILOVER_RETRY) if self._sentinel else self._tick
        return max(1, min(self.worker_ttl - 15, int(longest)))

    @property
    def job_monitoring_interval(self) -> int:
        """Monitor tick while a job runs; shortened to land on the shutdown deadline when stopping."""
        return self.lifecycle.wait_interval(self._monitoring_interval)

    @job_monitoring_interval.setter
    def job_monitoring_interval(self, value: int) -> None:
        self._monitoring_interval = int(value)

    # -- status -------------------------------------------------------------------------------

    def status_text(self) -> str:
        counts = f"{self._done} done, {self._failed} failed"
        idle = "Idle, listening on " + ", ".join(self.queue_names())
        primary = f" · primary {self._primary}" if self._primary else ""
        return f"{self.outage.status() or self.lifecycle.status(idle)}{primary} · {counts}"

    def _follow_primary(self) -> None:
        """Move to the primary the sentinels name now (``refresh_primary``), and say so when it changed."""
        current = refresh_primary(self.connection)
        previous = self._primary
        if current and current != previous:
            self._primary = current
            if previous is None:
                return
            log.warning("Following the new Redis primary %s of %s (was %s): the sentinels failed over", current,
                        self.settings.redis.sentinels and self.settings.redis.sentinels.master, previous)
            # A job in hand, or one that ended since the last look, may have its end recorded on the
            # old primary only: the new one still shows it started, by us. Re-queue it between jobs.
            self._lost_in_job = f"the Redis primary changed from {previous} to {current} around it"

    def _refresh_counts(self) -> None:
        """Read the job counters from the worker's Redis hash: in fork mode the horse updates them."""
        try:
            done, failed = self.connection.hmget(self.key, ["successful_job_count", "failed_job_count"])
        except REDIS_ERRORS:
            return
        self._done, self._failed = int(done or 0), int(failed or 0)

    @property
    def job_counts(self) -> tuple[int, int]:
        """(done, failed) so far; a reload hands them to the re-executed process (COUNTS_VAR)."""
        self._refresh_counts()  # (STATUS= reads them at most once per second)
        return self._done, self._failed

    def _carry_counts(self) -> None:
        """Continue the counters of the process this one re-executed from: rq's registration starts
        the worker's hash afresh, and ``systemctl status`` would show "0 done" after every reload."""
        carried = os.environ.pop(COUNTS_VAR, "")
        if carried.count(",") == 1:
            done, failed = carried.split(",")
            self._redis_call(lambda: self.connection.hset(
                self.key, mapping={"successful_job_count": done, "failed_job_count": failed}))

    def _redis_call(self, call: Any, *args: Any) -> Any:
        """A Redis call of the main loop that may fail while Redis is down: noted, not fatal (None is
        returned); the next tick tries again (rq's dequeue loop meets the same error and backs off)."""
        try:
            result = call(*args)
        except REDIS_ERRORS as exc:
            self.outage.failed(exc)
            self.notifier.status(self.status_text())
            return None
        except redis.exceptions.NoPermissionError as exc:
            self._exit_denied(exc)
        self.outage.ok()
        return result

    # -- the tick: where recorded requests are acted on ---------------------------------------

    def _tick_due(self) -> bool:
        """Between jobs: a tick is due once a tick interval has passed, when a signal asked for one
        (``_wake_tick``) or while a job's end may be lost (``_rescue_own`` waits for a tick)."""
        return time.monotonic() >= self._next_tick or self._wake.is_set() or self._lost_in_job is not None

    def _look_for_primary(self) -> None:
        """Under Sentinel, every FAILOVER_RETRY seconds at most (each look asks a sentinel)."""
        if self._sentinel and time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + FAILOVER_RETRY
            self._redis_call(self._follow_primary)  # a call that did not touch Redis must not count as Redis answering

    def _service_tick(self, *, watchdog: bool = True, in_main_loop: bool = True) -> None:
        self._next_tick = time.monotonic() + self._tick
        if in_main_loop:
            self._wake.clear()  # (the simple worker's watch thread waits on an event of its own)
        if watchdog:
            self.notifier.watchdog()
            self._look_for_primary()
            if self._redis_call(self.membership.beat) is False:
                self._exit_fenced()
        self._announce()
        reason = self.lifecycle.take_cut()
        if reason is not None:
            log.warning("Cold shutdown: job %s %s; stopping it", self.lifecycle.job and self.lifecycle.job.label,
                        reason)
            self._stop_job()
        if self.lifecycle.deadline is not None:
            self.notifier.extend_timeout(self._tick + STOP_GRACE)
        if watchdog and in_main_loop:
            self._refresh_counts()  # (after a burst of jobs the last update may have skipped it)
        self.notifier.status(self.status_text())
        if in_main_loop and not self.lifecycle.stopping:
            self._takeover.tick(self.scheduler)
            self._redis_call(self._watch_others)

    # -- fencing: other members that went silent, and this one if it was fenced ----------------

    def _watch_others(self) -> None:
        if self._lost_in_job is not None and self.lifecycle.job is None:
            self._rescue_own()
        for lost in self.membership.claim_lost():
            self._fence(lost)
        self.orphans.sweep()

    def _rescue_own(self) -> None:
        """Re-queue, now that Redis answers, what this worker was running when Redis went away
        (a failover): between jobs, any StartedJobRegistry entry of ours is one whose end was lost."""
        reason = f"its worker {self.name} could not record its end: {self._lost_in_job}"
        rescue_executions(self.connection, self.name, self.queue_names(), self.settings, reason, at_once=True)
        self._lost_in_job = None

    def _fence(self, lost: Lost) -> None:
        """Shut a lost worker out and re-run what it was running, now (see ``fencing``)."""
        queues = lost.queues or self.queue_names()
        killed = self.membership.kill_connections(lost)
        forget_worker(self.connection, lost.name, queues)
        reason = (f"worker {lost.name} on host {lost.host} stopped beating (frozen, cut off or its host lost) and "
                  f"was fenced by {self.name}")
        rescued = rescue_executions(self.connection, lost.name, queues, self.settings, reason, at_once=True)
        self.membership.record(lost, [r.job_id for r in rescued])
        log.warning("Fenced worker %s on host %s (pid %s): silent %.0fs past its deadline; closed %d of its Redis "
                    "connections, rescued %d job(s)%s", lost.name, lost.host, lost.pid or "?", lost.overdue, killed,
                    len(rescued), "".join(f" {r.job_id}" for r in rescued))

    def _exit_fenced(self) -> None:
        """Another worker fenced this one while it was silent and took over its jobs: take no other
        job, stop the one in hand (it was requeued), and exit so that systemd restarts us cleanly."""
        self._exit_now(f"worker {self.name} was fenced: it was silent for over {self.membership.period:.0f}s and "
                       "another worker re-queued its jobs; exiting without taking another job so that systemd "
                       "restarts it", exits.TEMPFAIL, errno.ESTALE)

    def _exit_denied(self, exc: Exception) -> NoReturn:
        """Our ACL user may not run something the worker needs: no retry cures that, the operator
        must (exit 77, not restarted). A job in hand stays in the started registry: the next start
        re-runs it."""
        self._exit_now(f"{denied(exc) or exc}; exiting", exits.NOPERM, errno.EACCES)

    def _exit_now(self, message: str, status: int, error: int) -> NoReturn:
        """Leave from wherever rq's loop is: it would catch an exception and carry on, or quit with
        a traceback."""
        self._stop_job()
        self.notifier.fail(message, status, error)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)

    def _announce(self) -> None:
        """Tell systemd and the log, once, that a stop or a reload began."""
        phase = self.lifecycle.take_announcement()
        job = self.lifecycle.job.label if self.lifecycle.job else None
        if phase is Phase.STOPPING:
            if job is None:
                log.info("Warm shutdown: idle, exiting")
            else:
                log.info("Warm shutdown: taking no new job; waiting up to %gs (RQ_SHUTDOWN_TIMEOUT) for job %s",
                         self.settings.shutdown_timeout, job)
                self._shutdown_requested_date = now()
                try:
                    self.set_shutdown_requested_date()
                except REDIS_ERRORS:
                    pass  # the stop timeout is extended by the tick that follows, which sees the deadline
            self.notifier.stopping(self.status_text())
            if self.scheduler:
                self.stop_scheduler()  # as rq does: another instance may take scheduling over
        elif phase is Phase.RELOADING:
            log.info("Reload requested: %s", f"finishing job {job} first" if job else "now")
            self.notifier.reloading(self.status_text())

    def _stop_job(self) -> None:
        """Cut the running job (fork and spawn: kill the horse; the failure is then recorded)."""
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)

    def _wake_tick(self) -> None:
        """Make the next tick come now rather than up to a tick later. While the horse is awaited
        we are inside rq's SIGALRM-based monitor timeout, whose handler turns an early alarm into
        an ordinary monitor tick."""
        self._wake.set()
        if self._in_horse_wait:
            signal.setitimer(signal.ITIMER_REAL, 0.01)

    # -- rq's hooks ---------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or self.is_horse:
            super().heartbeat(timeout, pipeline)
            return
        if self._popping and self._stop_requested:
            raise StopRequested()  # the stop came just before the pop: nothing is in hand yet
        self._look_for_primary()
        if self._tick_due():
            self._service_tick()
        if timeout is not None or time.monotonic() >= self._next_beat:
            self._next_beat = time.monotonic() + BEAT_INTERVAL
            self._redis_call(super().heartbeat, timeout)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        self._service_tick()
        self._redis_call(super().maintain_heartbeats, job, execution)  # the job goes on meanwhile

    def check_for_suspension(self, burst: bool) -> None:
        """rq ends the worker when this GET fails; the pop that follows waits for Redis instead."""
        self._redis_call(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._redis_call(super().run_maintenance_tasks)  # tried again on the next pass of the loop

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:
        """While in here with nothing in hand, a stop may interrupt the pop (``_shutdown``)."""
        self._popping = True
        try:
            while True:
                try:
                    return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                except REDIS_ERRORS as exc:  # rq waits out a failing pop, not the state write before it
                    self.outage.failed(exc)
                    self.heartbeat()  # the tick (watchdog, STATUS=); a stop that came meanwhile ends here
                    time.sleep(self.max_connection_wait_time)
        except redis.exceptions.NoPermissionError as exc:
            self._exit_denied(exc)
        finally:
            self._popping = False

    def reorder_queues(self, reference_queue: Queue) -> None:
        self._popping = False  # rq calls this right after a pop returned a job: it is in hand now
        super().reorder_queues(reference_queue)

    def wait_for_horse(self) -> Any:
        self._in_horse_wait = True
        try:
            return super().wait_for_horse()
        finally:
            self._in_horse_wait = False

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        """Any kill of the horse from this side (an operator's kill-horse or stop-job command, rq's
        hard timeout, our cut) is deliberate: its death is not a crash, so no default retry."""
        self._horse_killed = True
        super().kill_horse(sig)

    def bootstrap(self, logging_level: str | None = "INFO", date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                  log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        journal.set_worker(self.name)
        self._install_signal_handlers()  # early: a stop during start-up is graceful too
        super().bootstrap(logging_level, date_format, log_format)
        previous = self.membership.join(self.hostname or "?", os.getpid(), self.queue_names())
        if previous:
            log.warning("Rejoining: this worker had been fenced by %s", previous.get("by", "?"))
        self._carry_counts()
        self._refresh_counts()
        self.notifier.ready(self.status_text())
        log.info("Ready: worker %s listening on %s", self.name, ", ".join(self.queue_names()))

    def teardown(self) -> None:
        if not self.is_horse:
            self._announce()  # a stop that ended the pop had no tick after it
            self._redis_call(self.membership.leave)
        super().teardown()

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT, log_format: str = DEFAULT_LOGGING_FORMAT
                         ) -> None:
        if burst:  # enqueue what is due, then leave: rq's own way, nothing to take over later
            super()._start_scheduler(burst, logging_level, date_format, log_format)
            return
        self.scheduler = start_scheduler(self, logging_level, date_format, log_format)

    def execute_job(self, job: Job, queue: Queue) -> None:
        apply_job_defaults(job, self.settings)
        func = job_func(job)
        journal.set_job(job.id, func, queue.name)
        self.lifecycle.start_job(f"{job.id} ({func})")
        self._horse_killed = False
        self._main_pid = os.getpid()
        self.notifier.status_soon(self.status_text)
        try:
            super().execute_job(job, queue)
        except redis.exceptions.NoPermissionError as exc:
            self._exit_denied(exc)
        except REDIS_ERRORS as exc:
            # Only before the horse starts or after it ended: while it runs every Redis call of
            # ours goes through _redis_call. rq would end the worker for this; we go on.
            self._lost_in_job = str(exc)
            self.outage.failed(exc)
            log.warning("Lost Redis around job %s (%s): %s; it is re-queued once Redis answers, unless its end was "
                        "recorded", job.id, func, exc)
        finally:
            self.lifecycle.end_job()
            journal.clear_job()
            if time.monotonic() >= self._next_count:  # one read per status update, not per job
                self._next_count = time.monotonic() + self.notifier.interval
                self._refresh_counts()
            self.notifier.status_soon(self.status_text)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent(self._main_pid)
        # The horse opens its own connections (redis-py's pool notices the fork) and lives for one
        # job: a health-check PING before its first command would be one more round trip per job.
        self.connection.connection_pool.connection_kwargs["health_check_interval"] = 0
        super().main_work_horse(job, queue)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "", execution: Execution | None = None) -> None:
        """Record a job cut off under its worker as interrupted, with the default retry if it has none."""
        reason = None
        if not self.is_horse:
            reason = self.lifecycle.cut_reason
            if reason is None and exc_string.startswith(HORSE_DIED) and not self._horse_killed:
                reason = f"the work horse died under the job ({exc_string.strip().rstrip(';')})"
            elif reason is None and exc_string.startswith(STUCK_IN_INTERMEDIATE):
                reason = "its worker died after taking it from the queue, before starting it"
        if reason is not None:
            exc_string = f"JobInterrupted: {reason}"
            retry = record_interruption(job, exc_string, self.name, self.settings)
            log.warning("Job %s (%s) %s; %s", job.id, job_func(job), reason,
                        "it will be retried" if retry else "no retries left, it is failed")
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                   execution=execution)

    # -- signals: record, then let the tick act -------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._handlers_pid = os.getpid()
        super()._install_signal_handlers()
        signal.signal(signal.SIGHUP, self.request_reload)

    def _handled_here(self, signum: int) -> bool:
        """False in a process forked from the worker before it set handlers of its own (the
        scheduler just after its fork, a worker pool's new worker): there the signal takes its
        default action, as it would without us. rq's handlers raise StopRequested in any process,
        which ends such a child by accident; ours only record, so they must not act for another."""
        if self._handlers_pid in (None, os.getpid()):  # None: called directly, not as a handler
            return True
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum):
            self.lifecycle.request_stop(signal.Signals(signum).name)
            self._shutdown()

    request_force_stop = request_stop  # rq's cold stop: our rules for a second signal apply (cut, record, retry)

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum) and self.lifecycle.request_reload():
            self._shutdown()

    def _shutdown(self) -> None:
        """Take no new job. Only while blocked in the pop with nothing in hand, return from it at once.

        rq raises StopRequested whenever the worker is not BUSY, which includes the moment between
        popping a job and starting it: the popped job was then lost.
        """
        self._stop_requested = True
        if self._popping:
            raise StopRequested()
        self._wake_tick()
