"""The three worker classes an operator picks with RQ_WORKER_CLASS: rq's own, with our mixin in front;
and the app's own subclass of one of rq's three, with the matching one of ours in front (``service_class``)."""

from __future__ import annotations

import base64
import copyreg
import functools
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from rq import SimpleWorker, SpawnWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

from . import faults
from .classes import imported
from .config import ConfigError
from .handoff import Handoff
from .lease import LEASE_VAR
from .parts.jobwatch import JobWatch
from .prefork import Prefork
from .secret_env import SecretEnvironment, handover
from .worker import ServiceWorkerMixin

HORSE_CONFIG_VAR = "RQ_WORKER_SERVICE_HORSE_CONFIG"
"""Environment variable with the worker's pickled configuration for the spawn horse (rq's
``SpawnWorker._dump_worker_config``), read and removed by ``rq_worker_service.horse``."""


class JobInterrupted(BaseException):
    """Raised inside a SimpleWorker job to cut it; BaseException so the job's ``except Exception``
    cannot swallow it (rq's perform_job catches everything and records the failure)."""


class ServiceWorker(ServiceWorkerMixin, Worker):
    """``RQ_WORKER_CLASS=fork`` (default): each job in a forked work horse, which uses a Redis
    connection this process opened for it beforehand (``handoff``); with RQ_PREFORK, a horse forked
    while the previous job ran and handed its job over a pipe (``prefork``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parts.handoff = Handoff(self.connection)
        # Only our own class: an app's subclass may keep state between its pop and its fork that a
        # spare forked a job earlier would not have (``prefork``).
        if self.settings.prefork is not False and type(self) is ServiceWorker:
            self.parts.prefork = Prefork(self, auto=self.settings.prefork is None)

    @property
    def _handoff(self) -> Handoff:
        assert self.parts.handoff is not None  # (set in __init__)
        return self.parts.handoff

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self.parts.horse_starting()  # a fresh lease for the horse (``ServiceParts.horse_starting``)
        prefork = self.parts.prefork
        pid = prefork.take(job, queue) if prefork is not None else None
        if pid is not None:  # rq's parent side of its fork, for a horse that was forked already
            os.environ["RQ_WORKER_ID"] = self.name
            os.environ["RQ_JOB_ID"] = job.id
            self._horse_pid = pid
            self.procline(f"Handed to {pid} at {time.time()}")
        else:
            if prefork is not None:
                self.parts.horse_starting()  # a spare given up on held the loop: the lease, renewed when due
            self._handoff.prepare()  # opened while the previous horse ran; the first job's, now
            super().fork_work_horse(job, queue)  # (the horse never returns from here)
            self._handoff.forked(self._horse_pid)
        faults.reached("horse.started")
        self._handoff.prepare()  # the next horse's, while this one runs
        if prefork is not None:
            spare = prefork.prepare()  # (the spare never returns from here)
            if spare is not None:
                self._handoff.forked(spare)  # the connection is the spare's now

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        performed = super().perform_job(job, queue, execution)
        if self.parts.prefork is not None:  # in a spare's horse: its worker may take the next job now
            self.parts.prefork.done()
        return performed

    def teardown(self) -> None:
        if self.parts.prefork is not None and not self.is_horse:
            self.parts.prefork.retire()
        super().teardown()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        self._handoff.adopt()
        super().main_work_horse(job, queue)


class ServiceSpawnWorker(ServiceWorkerMixin, SpawnWorker):
    """``RQ_WORKER_CLASS=spawn``: each job in a freshly spawned interpreter (``rq_worker_service.horse``)."""

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        """Spawn our horse entry, in its own process group from the start (as rq 3 does).

        The worker's configuration that rq 3 hands its horse (worker, job and queue classes, death
        penalty, exception handlers, result TTL: ``_dump_worker_config``) travels in the horse's
        environment rather than in a ``-c`` source on its command line, which ``ps`` shows to anyone.
        """
        self.parts.horse_starting()  # a fresh lease for the horse (``ServiceParts.horse_starting``)
        env = dict(os.environ, RQ_APP_PATH=":".join(self.settings.app_path), RQ_LOG_LEVEL=self.settings.log_level,
                   RQ_WORKER_ID=self.name, RQ_JOB_ID=job.id)
        for name in ("REDIS_PASSWORD", "REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE", "REDIS_HOST",
                     "REDIS_PORT", "REDIS_DB"):
            env.pop(name, None)  # the URL below already says it all, including flags' overrides
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)  # only the worker talks to systemd
        # The secrets go in a descriptor the horse inherits, never in its environment (secret_env).
        horse_env = SecretEnvironment(env)
        horse_env["REDIS_URL"] = self.settings.redis.url
        sentinels = self.settings.redis.sentinels
        if sentinels and sentinels.password:
            horse_env["REDIS_SENTINEL_PASSWORD"] = sentinels.password
        env[HORSE_CONFIG_VAR] = base64.b64encode(self._dump_worker_config()).decode()
        if self.parts.lease is not None:
            env[LEASE_VAR] = self.parts.lease.path
        execution = self.execution
        assert execution is not None
        argv = [sys.executable, "-m", "rq_worker_service.horse", self.key, job.id, queue.name, execution.id,
                str(os.getpid()), self._serializer_arg or ""]
        secrets = handover(horse_env.private, env)
        try:
            self._horse_pid = os.posix_spawn(sys.executable, argv, env, setpgroup=0)
        finally:
            if secrets is not None:
                os.close(secrets)
        faults.reached("horse.started")
        self.procline(f"Spawned {self._horse_pid} at {time.time()}")


class ServiceSimpleWorker(ServiceWorkerMixin, SimpleWorker):
    """``RQ_WORKER_CLASS=simple``: jobs run in the main process, watched by a thread (``parts.jobwatch``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parts.watch = JobWatch(self._watch_tick, self.parts.interval)
        self.parts.add(self.parts.watch)  # a signal's wake reaches its thread too

    def _watch_tick(self, alive: bool) -> None:
        """The watch thread's tick, and while the job is alive rq's heartbeats of it, as the fork
        worker's monitor sends them (``maintain_heartbeats``: the started registry's score, the
        execution, the worker key's TTL). Without them a job without a timeout outlived its entry
        (420 s) and another worker's maintenance re-queued it while it ran. Once a job overran its
        limit they stop with the watchdog's pings: a worker hung there looks dead to everyone.

        They go out on this thread's own pooled connection (redis-py's pool is thread-safe), never
        on one the job in the main thread is using."""
        self.parts.tick(alive=alive, main_loop=False)
        assert self.parts.watch is not None  # (it calls this)
        job, executions = self.parts.watch.job, list(self.executions.values())  # list(): one step under the GIL
        if alive and job is not None and executions:  # none: not registered yet, or its end is being written
            self.parts.guard.call(SimpleWorker.maintain_heartbeats, self, job, executions[0])

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(signal.SIGUSR1, self._raise_interrupt)

    def _raise_interrupt(self, signum: int, frame: FrameType | None) -> None:
        lifecycle = self.parts.lifecycle
        if lifecycle.job is not None and lifecycle.cut_reason is not None:
            raise JobInterrupted(lifecycle.cut_reason)

    def _stop_job(self) -> None:
        """The job runs in the main thread: interrupt it there (SIGUSR1 raises JobInterrupted)."""
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # type: ignore[arg-type]

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        faults.reached("horse.started")  # the job runs in this process, from here
        return super().perform_job(job, queue, execution)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job in this thread while the watch thread ticks."""
        watch = self.parts.watch
        assert watch is not None  # (set in __init__)
        watch.watch(job.timeout, job)
        try:
            super().execute_job(job, queue)
        finally:
            watch.unwatch()
            # Nothing runs here any more. A job whose end could not be written (Redis lost as it ended:
            # ``parts.job_lost``) left its execution in ``executions``; rq's ``worker.execution`` is the
            # first of them, so the next run of that job (re-queued by the rescue) was marked STARTED
            # against the deleted one, refused as taken back, and the job left queued in no list.
            self.executions.clear()


WORKER_CLASSES: dict[str, type[ServiceWorkerMixin]] = {
    "fork": ServiceWorker,
    "spawn": ServiceSpawnWorker,
    "simple": ServiceSimpleWorker,
}


class ComposedType(type):
    """The metaclass of a class made by ``compose``. pickle names a class by its module and name, and a
    class made at run time has neither: the spawn horse gets the worker's class pickled (rq's
    ``_dump_worker_config``), so a class of this kind pickles as ``compose(app_class)`` instead
    (``copyreg``: looked up by the exact metaclass, before pickle's by-name rule for classes)."""

    app_class: type


def _reduce(cls: ComposedType) -> tuple[Any, tuple[type]]:
    return compose, (cls.app_class,)


copyreg.pickle(ComposedType, _reduce)

_MIXIN_REPLACES = frozenset({"dequeue_timeout", "dequeue_job_and_maintain_ttl", "prepare_job_execution",
                             "prepare_execution", "check_for_suspension", "_start_scheduler",
                             "request_stop", "request_force_stop", "_shutdown"})
REPLACED: dict[type[ServiceWorkerMixin], frozenset[str]] = {
    ServiceWorker: _MIXIN_REPLACES,
    ServiceSpawnWorker: _MIXIN_REPLACES | {"fork_work_horse"},
    ServiceSimpleWorker: _MIXIN_REPLACES,
}
"""rq's methods each of our classes replaces rather than extends (ours never calls rq's, or only in a case a
service never meets): the pop, the registration of a popped job (``prepare_execution``: rq's only for a job
the worker did not pop), the STARTED mark, the wait while suspended and the scheduler's start (rq's only in
burst mode), the stop handlers, our spawn horse. An app's override of one would never run behind ours, so
``service_class`` refuses such a class (tests/unit/test_app_class_rules.py keeps this list complete)."""

_OURS: tuple[tuple[type, type[ServiceWorkerMixin]], ...] = (
    (SpawnWorker, ServiceSpawnWorker),  # (before Worker: a SpawnWorker is a Worker)
    (SimpleWorker, ServiceSimpleWorker),
    (Worker, ServiceWorker),
)


def _ours(app_class: type) -> type[ServiceWorkerMixin]:
    return next(service for rq_class, service in _OURS if issubclass(app_class, rq_class))


@functools.cache
def compose(app_class: type) -> type[ServiceWorkerMixin]:
    """The app's worker class with ours in front: ``ServiceSpawnWorker``, ``ServiceSimpleWorker`` or
    ``ServiceWorker`` by the rq class it derives from. Our overrides then call the app's, which call
    rq's: the app's hooks run, and every guarantee of the service holds around them. The same class
    object for the same app class, in the worker and (unpickled) in its spawned horse."""
    ours = _ours(app_class)
    meta: type = ComposedType
    if type(app_class) is not type:  # the app's class has a metaclass of its own (abc.ABCMeta, say)
        meta = type(f"Composed{type(app_class).__name__}", (ComposedType, type(app_class)), {})
        copyreg.pickle(meta, _reduce)
    return meta(f"Service{app_class.__name__}", (ours, app_class),
                {"app_class": app_class, "__module__": app_class.__module__, "__doc__": app_class.__doc__})


def service_class(setting: str) -> type[ServiceWorkerMixin]:
    """The class RQ_WORKER_CLASS names: fork, simple, spawn, or the app's own class composed with ours
    (imported from the app: ``prepare`` put its directories on the import path); raises ConfigError."""
    if setting in WORKER_CLASSES:
        return WORKER_CLASSES[setting]
    kind = "a subclass of rq's Worker, SpawnWorker or SimpleWorker"
    app_class = imported("RQ_WORKER_CLASS", setting, kind)
    if not (isinstance(app_class, type) and issubclass(app_class, (Worker, SimpleWorker))):
        raise ConfigError("RQ_WORKER_CLASS", setting, f"fork, simple, spawn, or a dotted path to {kind} importable "
                          f"from the app; it names {app_class!r}")
    if issubclass(app_class, ServiceWorkerMixin):
        return app_class  # ours already
    ours = _ours(app_class)
    apps = {name for cls in app_class.__mro__ if cls.__module__.partition(".")[0] != "rq" for name in vars(cls)}
    overridden = sorted(REPLACED[ours] & apps)
    if overridden:
        raise ConfigError("RQ_WORKER_CLASS", setting, f"{kind} that does not override {', '.join(overridden)}: the "
                          "service replaces these with its own (its pop, registration, wait while suspended, "
                          "scheduler start, stop handlers, spawn horse), so the app's "
                          "would never run; move that code to a method the service extends (execute_job, "
                          "perform_job, handle_job_success, …)")
    try:
        return compose(app_class)  # type: ignore[arg-type]  # (a class is hashable)
    except TypeError as exc:  # its bases cannot be put behind ours (no consistent method order)
        raise ConfigError("RQ_WORKER_CLASS", setting, f"{kind} that the service's class can be put in front of "
                          f"({exc})") from None
