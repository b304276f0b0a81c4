"""The three worker classes an operator picks with RQ_WORKER_CLASS: rq's own, with our mixin in front."""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from rq import SimpleWorker, SpawnWorker, Worker
from rq.job import Job
from rq.queue import Queue

from .handoff import Handoff
from .worker import ServiceWorkerMixin

HORSE_CONFIG_VAR = "RQ_WORKER_SERVICE_HORSE_CONFIG"
"""Environment variable with the worker's pickled configuration for the spawn horse (rq's
``SpawnWorker._dump_worker_config``), read and removed by ``rq_worker_service.horse``."""


class JobInterrupted(BaseException):
    """Raised inside a SimpleWorker job to cut it; BaseException so the job's ``except Exception``
    cannot swallow it (rq's perform_job catches everything and records the failure)."""


class ServiceWorker(ServiceWorkerMixin, Worker):
    """``RQ_WORKER_CLASS=fork`` (default): each job in a forked work horse, which uses a Redis
    connection this process opened for it beforehand (``handoff``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handoff = Handoff(self.connection)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self.handoff.prepare()  # opened while the previous horse ran; the first job's, now
        super().fork_work_horse(job, queue)  # (the horse never returns from here)
        self.handoff.forked(self._horse_pid)
        self.handoff.prepare()  # the next horse's, while this one runs

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        self.handoff.adopt()
        super().main_work_horse(job, queue)


class ServiceSpawnWorker(ServiceWorkerMixin, SpawnWorker):
    """``RQ_WORKER_CLASS=spawn``: each job in a freshly spawned interpreter (``rq_worker_service.horse``)."""

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        """Spawn our horse entry, in its own process group from the start (as rq 3 does).

        The worker's configuration that rq 3 hands its horse (worker, job and queue classes, death
        penalty, exception handlers, result TTL: ``_dump_worker_config``) travels in the horse's
        environment rather than in a ``-c`` source on its command line, which ``ps`` shows to anyone.
        """
        env = dict(os.environ, REDIS_URL=self.settings.redis.url, RQ_APP_PATH=":".join(self.settings.app_path),
                   RQ_LOG_LEVEL=self.settings.log_level, RQ_WORKER_ID=self.name, RQ_JOB_ID=job.id)
        for name in ("REDIS_PASSWORD", "REDIS_PASSWORD_FILE", "REDIS_HOST", "REDIS_PORT", "REDIS_DB"):
            env.pop(name, None)  # the URL above already says it all, including flags' overrides
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)  # only the worker talks to systemd
        env[HORSE_CONFIG_VAR] = base64.b64encode(self._dump_worker_config()).decode()
        execution = self.execution
        assert execution is not None
        argv = [sys.executable, "-m", "rq_worker_service.horse", self.key, job.id, queue.name, execution.id,
                str(os.getpid()), self._serializer_arg or ""]
        self._horse_pid = os.posix_spawn(sys.executable, argv, env, setpgroup=0)
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
        if self.lifecycle.job is not None and self.lifecycle.cut_reason is not None:
            raise JobInterrupted(self.lifecycle.cut_reason)

    def _stop_job(self) -> None:
        """The job runs in the main thread: interrupt it there (SIGUSR1 raises JobInterrupted)."""
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # type: ignore[arg-type]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._watched: tuple[float, float | None] | None = None  # (start, limit) of the job in hand
        self._watch: threading.Thread | None = None
        self._watch_lock, self._watch_wake = threading.Lock(), threading.Event()
        super().__init__(*args, **kwargs)

    def _wake_tick(self) -> None:
        super()._wake_tick()
        self._watch_wake.set()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job in this thread while the watch thread ticks. The thread lives as long as the
        worker (one per job cost a thread start and join on every job) and ticks only while a job
        is in hand; between jobs the main loop ticks, so the two never tick at once."""
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_jobs, name="job-watch", daemon=True)
            self._watch.start()
        self._watched = (time.monotonic(), None if job.timeout in (None, -1) else float(job.timeout) + 60)
        try:
            super().execute_job(job, queue)
        finally:
            with self._watch_lock:  # a tick in progress ends before the main loop goes on
                self._watched = None

    def _watch_jobs(self) -> None:
        while True:
            self._watch_wake.wait(self._tick)
            self._watch_wake.clear()
            with self._watch_lock:
                if self._watched is None:
                    continue
                started, limit = self._watched
                in_time = limit is None or time.monotonic() - started < limit
                self._service_tick(watchdog=in_time, in_main_loop=False)


WORKER_CLASSES: dict[str, type[ServiceWorkerMixin]] = {
    "fork": ServiceWorker,
    "spawn": ServiceSpawnWorker,
    "simple": ServiceSimpleWorker,
}
