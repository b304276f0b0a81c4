"""rq's worker, hooked into systemd: readiness, status, watchdog, warm/cold shutdown and reload.

We subclass rq's own Worker classes and use the hooks its loop already has, instead of writing a
loop of our own, so job semantics stay rq's (the differences are listed, with reasons, in
tests/rq_suite/expected.txt). The pieces:

* ``heartbeat()`` runs around every blocking pop, ``maintain_heartbeats()`` on every monitor tick
  while the horse runs: both drive the tick of the service's parts (watchdog, fencing, Sentinel,
  stop/reload announcements and cuts, counters, STATUS=, scheduler take-over, sweeps), at a third
  of WatchdogSec, so a hung main loop is what stops the pings; between jobs only when due. The
  mixin only adapts rq's hooks to the parts, held in one attribute (``self.parts``) so that none
  of their state lands in rq's namespace.
* Signal handlers only record the request in the ``Lifecycle`` and make the next tick come now,
  except a stop while blocked in the pop with nothing in hand: it raises rq's StopRequested.
* SIGHUP finishes the running job, then the runner re-executes the process in place.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
from rq import Worker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.worker import SHUTDOWN_SIGNAL

from . import journal, startup
from .config import Settings
from .connection import REDIS_ERRORS
from .notify import Notifier
from .parts import log
from .parts.assembly import ServiceParts
from .process import die_with_parent
from .recovery import apply_job_defaults, record_interruption
from .rqcompat import HORSE_DIED, STUCK_IN_INTERMEDIATE, job_func
from .scheduling import start_scheduler

MAINTENANCE_INTERVAL = 60
"""Seconds between rq's registry maintenance (rq: 600). It is what rescues a job whose worker died
between popping it and registering it as started (rq's intermediate queue, two sightings a minute
apart) and the jobs of dead workers on other hosts; each queue's pass is done by one worker under
rq's maintenance lock, so a shorter interval costs little."""

if TYPE_CHECKING:
    _Base = Worker  # what the mixin is mixed into, for the type checker
else:
    _Base = object


class ServiceWorkerMixin(_Base):
    """Everything systemd-specific; mixed in front of one of rq's worker classes."""

    def __init__(self, *args: Any, settings: Settings, notifier: Notifier, **kwargs: Any) -> None:
        self.settings = settings
        self.parts = ServiceParts(settings, notifier)  # first: rq's __init__ sets job_monitoring_interval
        kwargs.setdefault("job_monitoring_interval", int(self.parts.interval))
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        super().__init__(*args, **kwargs)
        self.max_connection_wait_time = self.parts.retry_every
        self.parts.attach(self)

    # -- timing -------------------------------------------------------------------------------

    @property
    def dequeue_timeout(self) -> int:
        """rq blocks up to worker_ttl-15 s (405 s) in BLPOP; we come back every tick instead (under
        Sentinel every FAILOVER_RETRY seconds, to look for a new primary)."""
        return max(1, min(self.worker_ttl - 15, int(self.parts.retry_every)))

    @property
    def job_monitoring_interval(self) -> int:
        """Monitor tick while a job runs; shortened to land on the shutdown deadline when stopping."""
        return self.parts.lifecycle.wait_interval(self.parts.monitoring_interval)

    @job_monitoring_interval.setter
    def job_monitoring_interval(self, value: int) -> None:
        self.parts.monitoring_interval = int(value)

    def _stop_job(self) -> None:
        """Cut the running job (fork and spawn: kill the horse; the failure is then recorded)."""
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)

    # -- rq's hooks ---------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or self.is_horse:
            super().heartbeat(timeout, pipeline)
            return
        if self.parts.popping and self._stop_requested:
            raise StopRequested()  # the stop came just before the pop: nothing is in hand yet
        self.parts.between_jobs()
        if self.parts.rq_beat_due(timeout):
            self.parts.guard.call(super().heartbeat, timeout)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        self.parts.tick()
        self.parts.guard.call(super().maintain_heartbeats, job, execution)  # the job goes on meanwhile

    def check_for_suspension(self, burst: bool) -> None:
        """rq ends the worker when this GET fails; the pop that follows waits for Redis instead."""
        self.parts.guard.call(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self.parts.guard.call(super().run_maintenance_tasks)  # tried again on the next pass of the loop

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:
        """While in here with nothing in hand, a stop may interrupt the pop (``_shutdown``)."""
        self.parts.popping = True
        try:
            while True:
                try:
                    return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                except REDIS_ERRORS as exc:  # rq waits out a failing pop, not the state write before it
                    self.parts.outage.failed(exc)
                    self.heartbeat()  # the tick (watchdog, STATUS=); a stop that came meanwhile ends here
                    time.sleep(self.max_connection_wait_time)
        except redis.exceptions.ResponseError as exc:
            self.parts.guard.exit_if_fatal(exc)  # a refusal, a moved cluster slot: one line, and out
            raise
        except StopRequested:  # carried out now: the flag (its backup) is left unset, as rq leaves it when idle
            self._stop_requested = False
            raise
        finally:
            self.parts.popping = False

    def reorder_queues(self, reference_queue: Queue) -> None:
        self.parts.popping = False  # rq calls this right after a pop returned a job: it is in hand now
        super().reorder_queues(reference_queue)

    def wait_for_horse(self) -> Any:
        self.parts.in_horse_wait = True
        try:
            return super().wait_for_horse()
        finally:
            self.parts.in_horse_wait = False

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        """Any kill of the horse from this side (an operator's kill-horse or stop-job command, rq's
        hard timeout, our cut) is deliberate: its death is not a crash, so no default retry."""
        self.parts.horse_killed = True
        super().kill_horse(sig)

    def bootstrap(self, logging_level: str | None = "INFO", date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                  log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        journal.set_worker(self.name)
        self._install_signal_handlers()  # early: a stop during start-up is graceful too
        startup.early.hand_over()  # what came before these handlers existed, carried out now
        super().bootstrap(logging_level, date_format, log_format)
        self.parts.started()

    def teardown(self) -> None:
        if not self.is_horse:
            self.parts.teardown()
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
        self.parts.job_started(job.id, func, queue.name)
        try:
            super().execute_job(job, queue)
        except redis.exceptions.ResponseError as exc:
            self.parts.guard.exit_if_fatal(exc)  # a refusal, a moved cluster slot: one line, and out
            raise
        except REDIS_ERRORS as exc:
            # Only before the horse starts or after it ended: while it runs every Redis call of
            # ours goes through the guard. rq would end the worker for this; we go on.
            self.parts.job_lost(job.id, func, exc)
        finally:
            self.parts.job_ended()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent(self.parts.main_pid)
        # The horse opens its own connections (redis-py's pool notices the fork) and lives for one
        # job: a health-check PING before its first command would be one more round trip per job.
        self.connection.connection_pool.connection_kwargs["health_check_interval"] = 0
        super().main_work_horse(job, queue)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "", execution: Execution | None = None) -> None:
        """Record a job cut off under its worker as interrupted, with the default retry if it has none."""
        reason = None
        if not self.is_horse:
            reason = self.parts.lifecycle.cut_reason
            if reason is None and exc_string.startswith(HORSE_DIED) and not self.parts.horse_killed:
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
        self.parts.handlers_pid = os.getpid()
        super()._install_signal_handlers()
        signal.signal(signal.SIGHUP, self.request_reload)

    def _handled_here(self, signum: int) -> bool:
        """False in a process forked from the worker before it set handlers of its own (the
        scheduler just after its fork, a worker pool's new worker): there the signal takes its
        default action, as it would without us. rq's handlers raise StopRequested in any process,
        which ends such a child by accident; ours only record, so they must not act for another."""
        if self.parts.handlers_pid in (None, os.getpid()):  # None: called directly, not as a handler
            return True
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum):
            self.parts.lifecycle.request_stop(signal.Signals(signum).name)
            self._shutdown()

    request_force_stop = request_stop  # rq's cold stop: our rules for a second signal apply (cut, record, retry)

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum) and self.parts.lifecycle.request_reload():
            self._shutdown()

    def _shutdown(self) -> None:
        """Take no new job. Only while blocked in the pop with nothing in hand, return from it at once.

        rq raises StopRequested whenever the worker is not BUSY, which includes the moment between
        popping a job and starting it: the popped job was then lost.
        """
        self._stop_requested = True  # even when raising: an `except Exception` in rq's maintenance may swallow it
        if self.parts.popping:
            raise StopRequested()
        self.parts.wake()
