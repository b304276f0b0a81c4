"""rq's worker, hooked into systemd: readiness, status, watchdog, warm/cold shutdown and reload.

We subclass rq's own Worker classes and use the hooks its loop already has, instead of writing a
loop of our own, so job semantics stay exactly rq's. The pieces:

* ``heartbeat()`` runs around every blocking pop, and ``maintain_heartbeats()`` on every monitor
  tick while the work horse runs: both drive ``_service_tick()``, which pings the watchdog, updates
  STATUS=, extends systemd's stop timeout and enforces the shutdown limit. The ticks are kept at a
  third of WatchdogSec, so a hung main loop is what stops the pings.
* SIGTERM/SIGINT is rq's warm shutdown; past ``RQ_SHUTDOWN_TIMEOUT`` or on a second signal the job
  is cut (cold shutdown), recorded as interrupted and retried, and the process still exits 0.
* SIGHUP finishes the running job, then the runner re-executes the process in place.
* The horse and the scheduler die with the main process (PR_SET_PDEATHSIG), so a job never runs on
  as an orphan while recovery hands it to another worker.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from types import FrameType

import redis
from rq import SimpleWorker, SpawnWorker, Worker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import now

from . import journal
from .config import Settings
from .notify import Notifier
from .recovery import record_interruption

log = logging.getLogger("rq_worker_service.worker")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
HORSE_DIED = "Work-horse terminated unexpectedly"
STUCK_IN_INTERMEDIATE = "Job was stuck in intermediate queue"
MAINTENANCE_INTERVAL = 60
"""Seconds between rq's registry maintenance (rq: 600). It is what rescues a job whose worker died
between popping it and registering it as started (rq's intermediate queue, two sightings a minute
apart) and the jobs of dead workers on other hosts; each queue's pass is done by one worker under
rq's maintenance lock, so a shorter interval costs little."""
STOP_GRACE = 15.0
"""Seconds of stop timeout we ask systemd for beyond the next tick: room for a cold shutdown."""
SCHEDULER_RETRY = 15.0
"""Seconds between attempts to take over scheduling (rq itself retries only every 10 minutes)."""
_PR_SET_PDEATHSIG = 1


class JobInterrupted(BaseException):
    """Raised inside a SimpleWorker job to cut it; BaseException so the job's ``except Exception``
    cannot swallow it (rq's perform_job catches everything and records the failure)."""


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def job_func(job: Job) -> str:
    try:
        return job.func_name
    except Exception:  # an undeserializable job must not break our bookkeeping
        return "?"


class ServiceScheduler(RQScheduler):
    """rq's scheduler process, named after its worker and tied to its life.

    The stable name is what lets a restarted instance take its predecessor's scheduler lock at once
    (rq's lock script refreshes a lock whose owner token matches) instead of waiting for it to expire.
    """

    def start(self):  # type: ignore[override]
        self._parent_pid = os.getpid()
        return super().start()

    def work(self) -> None:
        die_with_parent(self._parent_pid)
        super().work()


class ServiceWorkerMixin:
    """Everything systemd-specific; mixed in front of one of rq's worker classes."""

    def __init__(self, *args, settings: Settings, notifier: Notifier, **kwargs) -> None:
        self.settings = settings
        self.notifier = notifier
        watchdog = notifier.watchdog_seconds
        self._tick = max(1.0, min(30.0, watchdog / 3)) if watchdog else 30.0
        self.reload_requested = False
        self.stop_signalled = False
        self._stop_deadline: float | None = None
        self._interrupt_reason: str | None = None
        self._job_label: str | None = None
        self._job_started = 0.0
        self._in_horse_wait = False
        self._popping = False
        self._redis_down_since: float | None = None
        self._last_scheduler_attempt = time.monotonic()
        self._main_pid = os.getpid()
        self._done = 0
        self._failed = 0
        kwargs.setdefault("job_monitoring_interval", int(self._tick))
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        super().__init__(*args, **kwargs)
        self.max_connection_wait_time = self._tick
        self.queue_class = _popping_queue_class(self, self.queue_class)

    # -- timing -------------------------------------------------------------------------------

    @property
    def dequeue_timeout(self) -> int:
        """rq blocks up to worker_ttl-15 s (405 s) in BLPOP; we come back every tick instead."""
        return max(1, min(self.worker_ttl - 15, int(self._tick)))

    @property
    def job_monitoring_interval(self) -> int:
        """Monitor tick while a job runs; shortened to land on the shutdown deadline when stopping."""
        base = self._monitoring_interval
        if self._stop_deadline is not None:
            return max(1, min(base, math.ceil(self._stop_deadline - time.monotonic())))
        return base

    @job_monitoring_interval.setter
    def job_monitoring_interval(self, value: int) -> None:
        self._monitoring_interval = int(value)

    # -- status -------------------------------------------------------------------------------

    def status_text(self) -> str:
        counts = f"{self._done} done, {self._failed} failed"
        if self._redis_down_since is not None:
            down = int(time.monotonic() - self._redis_down_since)
            return f"Redis unreachable at {self.settings.redis.display} for {down}s, retrying · {counts}"
        if self._job_label is not None:
            running = int(time.monotonic() - self._job_started)
            if self._stop_deadline is not None:
                left = max(0, int(self._stop_deadline - time.monotonic()))
                return f"Stopping: waiting for job {self._job_label}, running {running}s, cut in {left}s · {counts}"
            if self.reload_requested:
                return f"Reloading: waiting for job {self._job_label}, running {running}s · {counts}"
            return f"Running job {self._job_label} for {running}s · {counts}"
        if self.reload_requested:
            return f"Reloading · {counts}"
        if self.stop_signalled:
            return f"Stopping · {counts}"
        return f"Idle, listening on {', '.join(self.queue_names())} · {counts}"

    def _refresh_counts(self) -> None:
        """Read the job counters from the worker's Redis hash: in fork mode the horse updates them."""
        try:
            done, failed = self.connection.hmget(self.key, "successful_job_count", "failed_job_count")
        except REDIS_ERRORS:
            return
        self._done, self._failed = int(done or 0), int(failed or 0)

    def _redis_ok(self) -> None:
        if self._redis_down_since is not None:
            log.info("Redis at %s is reachable again", self.settings.redis.display)
            self._redis_down_since = None

    def _redis_trouble(self, exc: Exception) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            log.error("Redis at %s is unreachable: %s; retrying every %ds", self.settings.redis.display, exc,
                      int(self._tick))
        self.notifier.status(self.status_text())

    # -- the tick -----------------------------------------------------------------------------

    def _service_tick(self, *, watchdog: bool = True, in_main_loop: bool = True) -> None:
        if watchdog:
            self.notifier.watchdog()
        if self._stop_deadline is not None and self._job_label is not None:
            if time.monotonic() >= self._stop_deadline and self._interrupt_reason is None:
                limit = f"{self.settings.shutdown_timeout:g}"
                self._interrupt_job(f"interrupted by shutdown: still running RQ_SHUTDOWN_TIMEOUT={limit}s "
                                    "after the stop request")
            self.notifier.extend_timeout(self._tick + STOP_GRACE)
        self.notifier.status(self.status_text())
        if in_main_loop:
            self._retry_scheduler()

    def _retry_scheduler(self) -> None:
        """Take over scheduling soon after another scheduler's lock is gone (rq waits ~10 min)."""
        if self.scheduler is None or self._stop_requested:
            return
        if time.monotonic() - self._last_scheduler_attempt < SCHEDULER_RETRY:
            return
        self._last_scheduler_attempt = time.monotonic()
        process = self.scheduler._process
        if process is None or not process.is_alive():
            try:
                self.scheduler.acquire_locks(auto_start=True)
            except REDIS_ERRORS:
                pass

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        if pipeline is not None or self.is_horse:
            super().heartbeat(timeout, pipeline)
            return
        self._service_tick()
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_ERRORS as exc:
            # rq's dequeue loop meets the same error next and backs off (capped at one tick).
            self._redis_trouble(exc)
        else:
            self._redis_ok()

    def maintain_heartbeats(self, job: Job) -> None:
        self._service_tick()
        try:
            super().maintain_heartbeats(job)
        except REDIS_ERRORS as exc:
            self._redis_trouble(exc)  # the job goes on; the next tick tries again
        else:
            self._redis_ok()

    def set_current_job_working_time(self, current_job_working_time: float, pipeline=None) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline)
        except REDIS_ERRORS as exc:
            if pipeline is not None:
                raise
            self._redis_trouble(exc)

    def wait_for_horse(self):
        self._in_horse_wait = True
        try:
            return super().wait_for_horse()
        finally:
            self._in_horse_wait = False

    # -- lifecycle ----------------------------------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        journal.set_worker(self.name)
        self._install_signal_handlers()  # early: a stop during start-up is graceful too
        super().bootstrap(*args, **kwargs)
        self._refresh_counts()
        self.notifier.ready(self.status_text())
        log.info("Ready: worker %s listening on %s", self.name, ", ".join(self.queue_names()))

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = "%H:%M:%S", log_format: str = "%(message)s") -> None:
        self.scheduler = ServiceScheduler(self.queues, connection=self.connection,
                                          logging_level=logging_level or "INFO", date_format=date_format,
                                          log_format=log_format, serializer=self.serializer, name=self.name)
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            self.scheduler.start()

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._apply_job_defaults(job)
        func = job_func(job)
        journal.set_job(job.id, func, queue.name)
        self._job_label = f"{job.id} ({func})"
        self._job_started = time.monotonic()
        self._main_pid = os.getpid()
        self.notifier.status(self.status_text())
        try:
            super().execute_job(job, queue)
        finally:
            self._job_label = None
            journal.clear_job()
            self._refresh_counts()
            self.notifier.status(self.status_text())

    def _apply_job_defaults(self, job: Job) -> None:
        """Fill in RQ_JOB_TIMEOUT / RQ_FAILURE_TTL where the job has none (saved, so any horse sees them)."""
        fields = {}
        if job.timeout is None and self.settings.job_timeout is not None:
            job.timeout = self.settings.job_timeout
            fields["timeout"] = job.timeout
        if job.failure_ttl is None and self.settings.failure_ttl is not None:
            job.failure_ttl = self.settings.failure_ttl
            fields["failure_ttl"] = job.failure_ttl
        if fields:
            self.connection.hset(job.key, mapping=fields)

    def main_work_horse(self, job: Job, queue: Queue):
        die_with_parent(self._main_pid)
        return super().main_work_horse(job, queue)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string: str = "") -> None:
        """Record a cut-off job as interrupted, giving it the default retry policy if it has none."""
        reason = None
        if not self.is_horse:
            reason, self._interrupt_reason = self._interrupt_reason, None
            if reason is None and exc_string.startswith(HORSE_DIED):
                reason = f"the work horse died under the job ({exc_string.strip().rstrip(';')})"
            elif reason is None and exc_string.startswith(STUCK_IN_INTERMEDIATE):
                reason = "its worker died after taking it from the queue, before starting it"
        if reason is not None:
            exc_string = f"JobInterrupted: {reason}"
            retry = record_interruption(job, exc_string, self.name, self.settings)
            log.warning("Job %s (%s) %s; %s", job.id, job_func(job), reason,
                        "it will be retried" if retry else "no retries left, it is failed")
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string)

    # -- signals ------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(signal.SIGHUP, self.request_reload)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signalled = True
        self.reload_requested = False  # a stop during a reload wins
        super().request_stop(signum, frame)

    def handle_warm_shutdown_request(self) -> None:
        if self._job_label is not None:
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout
            log.info("Warm shutdown: taking no new job; waiting up to %gs (RQ_SHUTDOWN_TIMEOUT) for job %s",
                     self.settings.shutdown_timeout, self._job_label)
            self.notifier.stopping(self.status_text())
            self.notifier.extend_timeout(self._tick + STOP_GRACE)
            self._nudge_monitor()
        else:
            log.info("Warm shutdown: idle, exiting")
            self.notifier.stopping(self.status_text())

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """Second stop signal: cut the job now, but let it be recorded and retried, then exit 0."""
        if self._shutdown_requested_date and now() - self._shutdown_requested_date < timedelta(seconds=1):
            return  # rq's rule: a duplicate delivered within a second is the same request
        if self._job_label is None:
            log.info("Second stop signal: already stopping")
            return
        self._interrupt_job(f"interrupted by shutdown: a second stop signal ({signal.Signals(signum).name}) "
                            "arrived while it ran")

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: finish the running job, then the runner re-executes us with new config and code."""
        if self._stop_requested or self.reload_requested or self.stop_signalled:
            return
        self.reload_requested = True
        self._shutdown_requested_date = now()
        log.info("Reload requested: %s", f"finishing job {self._job_label} first" if self._job_label else "now")
        self.notifier.reloading(self.status_text())
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop at once only while blocked in the pop with nothing in hand; otherwise after the job.

        rq raises StopRequested from the signal handler whenever the worker is not BUSY, which
        includes the moment between popping a job and starting it: the popped job was then lost.
        """
        if self._popping:
            super()._shutdown()
            return
        self._stop_requested = True
        if self._job_label is not None:
            try:
                self.set_shutdown_requested_date()
            except REDIS_ERRORS:
                pass
        if self.scheduler:
            self.stop_scheduler()

    def _interrupt_job(self, reason: str) -> None:
        self._interrupt_reason = reason
        log.warning("Cold shutdown: job %s %s; stopping it", self._job_label, reason)
        self.notifier.status(self.status_text())
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)
        elif threading.current_thread() is threading.main_thread():
            raise JobInterrupted(reason)
        else:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # type: ignore[arg-type]

    def _nudge_monitor(self) -> None:
        """Make the monitor loop tick now, not up to a tick later, so STOPPING is acted on at once.

        Only while the horse is awaited: that is inside rq's SIGALRM-based monitor timeout, whose
        handler turns the early alarm into an ordinary monitor tick.
        """
        if self._in_horse_wait:
            signal.setitimer(signal.ITIMER_REAL, 0.01)


def _popping_queue_class(worker: ServiceWorkerMixin, base: type[Queue]) -> type[Queue]:
    """A Queue class whose blocking pop tells ``worker`` when a stop may interrupt it safely."""

    class PoppingQueue(base):  # type: ignore[valid-type, misc]
        @classmethod
        def dequeue_any(cls, *args, **kwargs):
            if worker._stop_requested:
                raise StopRequested()
            worker._popping = True
            result = None
            try:
                result = super().dequeue_any(*args, **kwargs)
            except StopRequested:
                if result is None:
                    raise
                worker._stop_requested = True  # the signal landed just after the pop: run this job first
            finally:
                worker._popping = False
            return result

    PoppingQueue.__name__ = base.__name__
    return PoppingQueue


class ServiceWorker(ServiceWorkerMixin, Worker):
    """``RQ_WORKER_CLASS=fork`` (default): each job in a forked work horse."""


class ServiceSpawnWorker(ServiceWorkerMixin, SpawnWorker):
    """``RQ_WORKER_CLASS=spawn``: each job in a freshly spawned interpreter (``rq_worker_service.horse``)."""

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        env = dict(os.environ, REDIS_URL=self.settings.redis.url, RQ_APP_PATH=":".join(self.settings.app_path),
                   RQ_LOG_LEVEL=self.settings.log_level, RQ_WORKER_ID=self.name)
        for name in ("REDIS_PASSWORD", "REDIS_PASSWORD_FILE", "REDIS_HOST", "REDIS_PORT", "REDIS_DB"):
            env.pop(name, None)  # the URL above already says it all, including flags' overrides
        assert self.execution is not None
        argv = [sys.executable, "-m", "rq_worker_service.horse", self.key, job.id, queue.name, self.execution.id,
                str(os.getpid())]
        self._horse_pid = os.spawnve(os.P_NOWAIT, sys.executable, argv, env)
        self.procline(f"Spawned {self._horse_pid} at {time.time()}")


class ServiceSimpleWorker(ServiceWorkerMixin, SimpleWorker):
    """``RQ_WORKER_CLASS=simple``: jobs run in the main process.

    rq's loop has no hook while such a job runs, so a watch thread ticks instead — but it pings the
    watchdog only until the job's own timeout (plus rq's 60 s grace) has passed: a job stuck beyond
    the limit that rq's SIGALRM could not end (e.g. hung in C code) stops the pings, and systemd
    restarts the instance. Jobs without a timeout (-1) cannot be watched that way.
    """

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(signal.SIGUSR1, self._raise_interrupt)

    def _raise_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self._job_label is not None and self._interrupt_reason is not None:
            raise JobInterrupted(self._interrupt_reason)

    def execute_job(self, job: Job, queue: Queue) -> None:
        done = threading.Event()
        limit = None if job.timeout in (None, -1) else float(job.timeout) + 60  # type: ignore[arg-type]
        started = time.monotonic()

        def watch() -> None:
            while not done.wait(self._tick):
                in_time = limit is None or time.monotonic() - started < limit
                self._service_tick(watchdog=in_time, in_main_loop=False)

        thread = threading.Thread(target=watch, name="job-watch", daemon=True)
        thread.start()
        try:
            super().execute_job(job, queue)
        finally:
            done.set()
            thread.join()


WORKER_CLASSES: dict[str, type[ServiceWorkerMixin]] = {
    "fork": ServiceWorker,
    "spawn": ServiceSpawnWorker,
    "simple": ServiceSimpleWorker,
}
