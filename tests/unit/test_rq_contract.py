"""What our code assumes about rq, checked against the installed rq.

Each failure names what in rq changed and which of our lines depend on it, so that raising rq's
version pin breaks here, at once and legibly, rather than in a worker under systemd. The list of
assumptions is the table "The main loop and systemd" in docs/operations.md.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import fakeredis
import pytest
import rq
from rq import Queue
from rq.command import handle_command
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker, SimpleWorker, SpawnWorker, Worker
from rq.worker_registration import register

from rq_worker_service import journal, rqcompat
from rq_worker_service.scheduling import ServiceScheduler
from rq_worker_service.worker import ServiceWorkerMixin
from rq_worker_service.worker_classes import ServiceSimpleWorker, ServiceSpawnWorker, ServiceWorker

OURS = (ServiceWorkerMixin, ServiceWorker, ServiceSimpleWorker, ServiceSpawnWorker)
RQ_BASES = {ServiceWorker: Worker, ServiceSimpleWorker: SimpleWorker, ServiceSpawnWorker: SpawnWorker,
            ServiceScheduler: RQScheduler}

OVERRIDES = {
    # rq class: methods of it our classes override (where in our code)
    BaseWorker: {
        "heartbeat": "worker.py: the tick around every pop",
        "maintain_heartbeats": "worker.py: the tick while the horse runs",
        "dequeue_job_and_maintain_ttl": "worker.py: marks the blocking pop",
        "reorder_queues": "worker.py: a popped job is in hand from here",
        "bootstrap": "worker.py: signal handlers, READY=1",
        "teardown": "worker.py: announce a stop that ended the pop",
        "_start_scheduler": "worker.py/scheduling.py: the named scheduler",
        "main_work_horse": "worker.py: the horse dies with the worker",
        "handle_job_failure": "worker.py: interrupted jobs get the default retry",
        "_install_signal_handlers": "worker.py: SIGHUP; SIGUSR1 in simple mode",
        "request_stop": "worker.py: record the stop in the Lifecycle",
        "request_force_stop": "worker.py: a second stop cuts, records, retries",
        "_shutdown": "worker.py: only the pop may be interrupted",
        "execute_job": "worker.py / worker_classes.py: job defaults, journal, status",
        "dequeue_timeout": "worker.py: a third of WatchdogSec",
        "check_for_suspension": "worker.py: a failed GET waits for Redis instead of ending the worker",
        "run_maintenance_tasks": "worker.py: likewise; tried again on the next pass",
    },
    Worker: {
        "wait_for_horse": "worker.py: a stop wakes the monitor at once",
        "kill_horse": "worker.py: a deliberate kill is not a crash",
        "fork_work_horse": "worker_classes.py: the horse's Redis connection, opened beforehand (handoff.py)",
    },
    SpawnWorker: {"fork_work_horse": "worker_classes.py: our spawn horse entry"},
    RQScheduler: {"start": "scheduling.py: remember the parent pid",
                  "work": "scheduling.py: die with the worker; rq's loop with a pause a stop ends",
                  "request_stop": "scheduling.py: a stop ends the pause"},
}


def _params(func) -> list[tuple[str, object]]:
    func = func.fget if isinstance(func, property) else func
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize("rq_class, name", [(c, n) for c, names in OVERRIDES.items() for n in names])
def test_each_overridden_method_still_exists_in_rq_with_the_same_parameters(rq_class, name):
    where = OVERRIDES[rq_class][name]
    assert hasattr(rq_class, name), (
        f"rq {rq.__version__} no longer has {rq_class.__name__}.{name}: our override ({where}) would never run")
    ours = next(getattr(c, name) for c in (*OURS, ServiceScheduler) if name in vars(c))
    theirs = inspect.getattr_static(rq_class, name)
    ours_static = next(vars(c)[name] for c in (*OURS, ServiceScheduler) if name in vars(c))
    assert isinstance(ours_static, property) == isinstance(theirs, property), f"{name}: property vs method"
    if not isinstance(theirs, property):
        assert _params(ours) == _params(theirs), (
            f"rq {rq.__version__} has {rq_class.__name__}.{name}{inspect.signature(theirs)}, "
            f"but ours is {name}{inspect.signature(ours)} ({where}): port the override")


def test_we_override_nothing_unlisted():
    """A new override must be added to OVERRIDES (and to docs/operations.md) to be checked."""
    listed = {name for names in OVERRIDES.values() for name in names}
    for cls, base in RQ_BASES.items():
        for klass in cls.__mro__:
            if klass.__module__.startswith("rq_worker_service"):
                for name in vars(klass):
                    if hasattr(base, name) and not name.startswith("__"):
                        assert name in listed, f"{klass.__name__}.{name} overrides rq's but is not in OVERRIDES"


@pytest.fixture
def connection():
    return fakeredis.FakeRedis()


def test_private_attributes_we_use_exist(connection):
    worker = Worker(["q"], connection=connection, serializer="rq.serializers.JSONSerializer")
    for attr in ("_stop_requested", "_shutdown_requested_date", "_horse_pid", "_is_horse", "_serializer_arg",
                 "scheduler", "_stopped_job_id"):
        assert hasattr(worker, attr), f"rq {rq.__version__} Worker has no {attr} (worker.py, worker_classes.py)"
    assert worker._serializer_arg == "rq.serializers.JSONSerializer", "the spawn horse passes it on"
    for attr in ("job_monitoring_interval", "worker_ttl"):
        assert attr in vars(worker), f"rq no longer sets Worker.{attr} in __init__ (worker.py's timing)"
    assert "self.max_connection_wait_time" in inspect.getsource(BaseWorker.dequeue_job_and_maintain_ttl), (
        "rq no longer caps its Redis back-off with max_connection_wait_time (worker.py sets it to one tick)")
    scheduler = RQScheduler(["q"], connection=connection, name="w1")
    assert hasattr(scheduler, "_process") and scheduler.name == "w1", "scheduling.py: Takeover, the stable name"


def test_failure_texts_we_recognise_are_the_ones_rq_writes():
    monitor = inspect.getsource(Worker.monitor_work_horse)
    assert f"'{rqcompat.HORSE_DIED}" in monitor, (
        "rq changed the failure text of a horse that died (rqcompat.HORSE_DIED, worker.handle_job_failure)")
    cleanup = inspect.getsource(IntermediateQueue.cleanup)
    assert f"'{rqcompat.STUCK_IN_INTERMEDIATE}" in cleanup, (
        "rq changed the failure text of a job stuck in the intermediate queue (rqcompat.STUCK_IN_INTERMEDIATE)")


def test_the_picked_up_line_is_logged_as_journal_expects():
    source = inspect.getsource(BaseWorker.dequeue_job_and_maintain_ttl)
    for template in journal.PICKED_UP:
        assert f"'{template}'" in source, f"rq no longer logs {template!r} on a pop (journal.PICKED_UP)"


def test_hooks_are_called_where_the_pop_marking_assumes():
    """heartbeat() before the pop, reorder_queues() right after a pop returned a job."""
    source = inspect.getsource(BaseWorker.dequeue_job_and_maintain_ttl)
    heartbeat, pop, reorder = (source.index(s) for s in ("self.heartbeat()", "dequeue_any(", "self.reorder_queues("))
    assert heartbeat < pop < reorder, "rq reordered its dequeue loop: worker.py's pop marking depends on it"
    assert "if self._stop_requested:" in inspect.getsource(BaseWorker.work), "rq's loop no longer checks the stop"
    assert "kill_horse()" in inspect.getsource(handle_command.__globals__["handle_kill_worker_command"])


def test_key_layout_comes_from_rq(connection):
    worker = Worker(["reports"], connection=connection, name="host.rq-worker@1")
    assert rqcompat.worker_key(worker.name) == worker.key
    register(worker)
    assert connection.sismember(rqcompat.REDIS_WORKER_KEYS, worker.key)
    assert connection.sismember(rqcompat.WORKERS_BY_QUEUE_KEY % "reports", worker.key)
    job = Queue("reports", connection=connection).enqueue("os.getpid")
    with connection.pipeline() as pipe:
        execution = Execution.create(job, ttl=60, pipeline=pipe, worker_name=worker.name)
        pipe.execute()
    assert rqcompat.execution_key(execution.composite_key) == execution.key
    assert connection.hget(execution.key, "worker_name") == worker.name.encode(), "recovery.started_executions"
    job.worker_name = worker.name
    assert "worker_name" in job.to_dict(), "recovery falls back to the job's worker_name"


def test_the_intermediate_list_and_started_registration_are_where_orphans_looks(connection):
    """orphans.py: a single-queue pop moves the job into the intermediate list; the main process
    registers the execution (started registry, composite key) before the horse exists."""
    queue = Queue("solo", connection=connection)
    job = queue.enqueue("os.getpid")
    assert "blmove(queue_key, intermediate_queue.key" in inspect.getsource(Queue.lmove)
    Queue.lmove(connection, queue.key, None)  # what dequeue_any does for one queue on Redis ≥ 6.2
    assert connection.lrange(rqcompat.intermediate_key(queue), 0, -1) == [job.id.encode()]
    assert rqcompat.first_seen_key(queue, job.id).startswith(rqcompat.intermediate_key(queue))
    worker = Worker([queue], connection=connection)
    worker.prepare_execution(job)
    assert any(e.decode().startswith(f"{job.id}:") for e in connection.zrange(queue.started_job_registry.key, 0, -1))
    assert "self.prepare_execution(job)" in inspect.getsource(Worker.execute_job).split("fork_work_horse")[0]


def test_requeue_now_is_a_retry_without_its_interval(connection):
    queue = Queue("default", connection=connection)
    job = queue.enqueue("os.getpid", retry=rq.Retry(max=2, interval=600))
    queue.enqueue("os.getpid")
    queue.remove(job)
    with connection.pipeline() as pipe:
        rqcompat.requeue_now(job, queue, pipe)
        pipe.execute()
    assert queue.job_ids[0] == job.id and job.get_status(refresh=True).value == "queued"
    assert Job.fetch(job.id, connection=connection).retries_left == 1


def test_job_func_never_raises():
    assert rqcompat.job_func(None) == "?"
    job = Job.create("os.getpid", connection=fakeredis.FakeRedis())
    assert rqcompat.job_func(job) == "os.getpid"
    job._func_name = None
    job._data = b"not a pickle"
    assert rqcompat.job_func(job) == "?"


def test_rq_version_is_within_the_pin():
    major = int(rq.__version__.split(".")[0])
    assert major == rqcompat.RQ_MAJOR, (
        f"rq {rq.__version__}: this code is written against rq {rqcompat.RQ_MAJOR}.x (rqcompat.RQ_MAJOR)")
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"rq>={rqcompat.RQ_MAJOR}.' in pyproject and f',<{rqcompat.RQ_MAJOR + 1}"' in pyproject, (
        "pyproject.toml's rq pin and rqcompat.RQ_MAJOR disagree")
    bundled = (Path(__file__).parents[2] / "packaging" / "requirements.txt").read_text()
    assert f"\nrq=={rqcompat.RQ_MAJOR}." in bundled, "packaging/requirements.txt bundles another rq major"


def test_the_scheduler_loop_we_repeat_is_still_rqs():
    """scheduling.py repeats RQScheduler.work's steps around an interruptible pause."""
    source = inspect.getsource(RQScheduler.work)
    steps = ("self._install_signal_handlers()", "self.register_birth()", "if self._stop_requested:", "self.stop()",
             "if self.should_reacquire_locks:", "self.acquire_locks()", "self.heartbeat()",
             "self.enqueue_scheduled_jobs()", "time.sleep(self.interval)")
    positions = [source.find(step) for step in steps]
    assert -1 not in positions, f"rq {rq.__version__} changed RQScheduler.work: port scheduling.ServiceScheduler.work"
    assert len(source.splitlines()) <= 16, f"rq {rq.__version__}'s RQScheduler.work grew: port scheduling.py"
