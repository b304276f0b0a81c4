"""RQ_SERIALIZER, RQ_JOB_CLASS, RQ_QUEUE_CLASS, RQ_CONNECTION_CLASS and a dotted RQ_WORKER_CLASS: their
form, their import from the app, the worker built with them, and the readers of jobs that use them."""

from __future__ import annotations

import ast
import base64
import inspect
import logging
import pickle
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import fakeredis
import pytest
import redis
from rq import Queue, SimpleWorker, SpawnWorker, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from testjobs import quick_job

from rq_worker_service.classes import RQ_DEFAULTS, app_classes
from rq_worker_service.client import enqueue
from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.jobs import describe
from rq_worker_service.notify import Notifier
from rq_worker_service.prepare import prepare
from rq_worker_service.recovery import rescue_executions
from rq_worker_service.service import build_worker
from rq_worker_service.status.collect import collect
from rq_worker_service.worker import ServiceWorkerMixin
from rq_worker_service.worker_classes import REPLACED, ServiceSimpleWorker, ServiceSpawnWorker, ServiceWorker

APP = textwrap.dedent('''
    import abc

    import redis
    from rq import SimpleWorker, SpawnWorker, Worker
    from rq.job import Job
    from rq.queue import Queue


    class AppJob(Job):
        pass


    class AppQueue(Queue):
        pass


    class AppRedis(redis.Redis):
        pass


    class AppWorker(Worker):
        def execute_job(self, job, queue):
            return super().execute_job(job, queue)


    class AppSpawnWorker(SpawnWorker):
        pass


    class AppSimpleWorker(SimpleWorker, metaclass=abc.ABCMeta):
        pass


    class Codec:
        dumps = None


    class OwnPopWorker(Worker):
        def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


    class OwnSpawnWorker(SpawnWorker):
        def fork_work_horse(self, job, queue):
            return super().fork_work_horse(job, queue)
''')


@pytest.fixture
def app(tmp_path: Path):
    """A module of the app's classes in its own directory, given as RQ_APP_PATH; forgotten after."""
    module = f"appclasses_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(APP)
    yield module, {"RQ_APP_PATH": str(tmp_path)}
    sys.modules.pop(module, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def prepared_with(env: dict[str, str]):
    return prepare(load_settings(env))


def test_the_forms_each_variable_takes():
    settings = load_settings({"RQ_SERIALIZER": "JSON", "RQ_WORKER_CLASS": "Spawn", "RQ_JOB_CLASS": "a.b.C"})
    assert (settings.serializer, settings.worker_class, settings.job_class) == ("json", "spawn", "a.b.C")
    assert load_settings({}).serializer == "pickle" and load_settings({}).queue_class is None
    for variable, value in [("RQ_SERIALIZER", "yaml"), ("RQ_JOB_CLASS", "MyJob"), ("RQ_QUEUE_CLASS", "a..b"),
                            ("RQ_CONNECTION_CLASS", "a.b-c"), ("RQ_WORKER_CLASS", "thread"), ("RQ_JOB_CLASS", "1a.b")]:
        with pytest.raises(ConfigError, match=f"^{variable}="):
            load_settings({variable: value})


def test_the_apps_classes_are_imported_from_its_path_and_the_worker_is_built_with_them(app):
    module, env = app
    prepared = prepared_with({**env, "RQ_SERIALIZER": "json", "RQ_JOB_CLASS": f"{module}.AppJob",
                              "RQ_QUEUE_CLASS": f"{module}.AppQueue", "RQ_CONNECTION_CLASS": f"{module}.AppRedis"})
    classes = prepared.classes
    assert classes.serializer is JSONSerializer and classes.serializer_name == "json"
    assert (classes.job_class.__name__, classes.queue_class.__name__) == ("AppJob", "AppQueue")
    assert prepared.redis_class.__name__ == "AppRedis"
    worker = build_worker(prepared, fakeredis.FakeRedis(), Notifier())
    assert worker.job_class is classes.job_class and worker.queue_class is classes.queue_class
    assert worker.serializer is JSONSerializer and worker._serializer_arg == "json"  # what a spawn horse gets
    assert all(type(queue) is classes.queue_class and queue.serializer is JSONSerializer for queue in worker.queues)


@pytest.mark.parametrize(("name", "ours", "rq_class"), [("AppWorker", ServiceWorker, Worker),
                                                        ("AppSpawnWorker", ServiceSpawnWorker, SpawnWorker),
                                                        ("AppSimpleWorker", ServiceSimpleWorker, SimpleWorker)])
def test_a_dotted_worker_class_gets_the_matching_service_class_in_front(app, name, ours, rq_class):
    module, env = app
    worker_class = prepared_with({**env, "RQ_WORKER_CLASS": f"{module}.{name}"}).worker_class
    mro = [c.__name__ for c in worker_class.__mro__]
    assert mro[1:4] == [ours.__name__, "ServiceWorkerMixin", name] and issubclass(worker_class, rq_class)
    assert pickle.loads(pickle.dumps(worker_class)) is worker_class  # how the spawn horse gets it


_BRANCHING = (ast.If, ast.IfExp, ast.While, ast.For, ast.AsyncFor, ast.BoolOp, ast.Match, ast.comprehension,
              ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ExceptHandler)


def always_calls_its_super(function) -> bool:
    """Whether ``function`` calls ``super().<its own name>`` (or hands it on to be called) on every path that
    returns normally: the reference sits under no branch (if, loop, ``and``/``or``, except, else of a try,
    nested function). A super() call under a condition does not count: ``check_for_suspension`` called
    rq's in burst mode only, which a service never runs, and an app's override was silently never called."""
    function = function.fget if isinstance(function, property) else function
    definition = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]

    def unconditional(node: ast.AST) -> bool:
        for field, value in ast.iter_fields(node):
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST) or isinstance(child, _BRANCHING) or (
                        isinstance(node, ast.Try) and field == "orelse"):
                    continue
                if (isinstance(child, ast.Attribute) and child.attr == function.__name__
                        and isinstance(child.value, ast.Call) and getattr(child.value.func, "id", None) == "super"):
                    return True
                if unconditional(child):
                    return True
        return False

    return unconditional(definition)


EXTENDED_ON_A_CONDITION = {
    "heartbeat": "rq's beat goes out at most once a second between jobs (BEAT_INTERVAL) and at every beat inside a "
                 "job's own pipeline: an app's override runs with each of rq's beats that is sent",
    "wait_for_horse": "a spare horse's \"done\" stands for its exit (RQ_PREFORK), but only in our own fork class: "
                      "under an app's worker class every horse is forked and awaited by rq's, through the app's "
                      "override",
}
"""Methods of ours that call rq's only on a condition and still extend it: the app's override runs whenever
rq's would in a service. Any other method whose super() call is conditional must be in REPLACED."""

EXTENDED_ON_A_CONDITION_IN = {
    ServiceWorker: {
        "fork_work_horse": "a job handed to a spare horse is not forked (RQ_PREFORK), but only in our own fork "
                           "class: under an app's worker class every job's horse is forked by rq's, through the "
                           "app's override",
    },
}
"""The same, for one of our classes only."""


def our_methods(ours, rq_class) -> list[tuple[str, object]]:
    """Every definition of a method of rq's in our classes (a name defined at two levels: both, since the
    outer one's super() call reaches the inner one, which must reach rq's too)."""
    return [(name, value) for cls in ours.__mro__ if cls.__module__.startswith("rq_worker_service")
            for name, value in vars(cls).items()
            if not name.startswith("__") and hasattr(rq_class, name)
            and callable(value.fget if isinstance(value, property) else value)]


@pytest.mark.parametrize(("ours", "rq_class"), [(ServiceWorker, Worker), (ServiceSpawnWorker, SpawnWorker),
                                                (ServiceSimpleWorker, SimpleWorker)])
def test_replaced_lists_every_rq_method_our_classes_do_not_extend(ours, rq_class):
    """An app class overriding one of these is refused (its override would never run behind ours): the list
    must name every method of rq's that our classes define without always calling rq's, but for those
    listed in EXTENDED_ON_A_CONDITION with the reason the app's override still runs."""
    replacing = {name for name, value in our_methods(ours, rq_class) if not always_calls_its_super(value)}
    conditional = EXTENDED_ON_A_CONDITION | EXTENDED_ON_A_CONDITION_IN.get(ours, {})
    assert conditional.keys() <= replacing, "listed as conditional, but rq's is always called now"
    assert replacing - conditional.keys() == REPLACED[ours]


def test_a_super_call_under_a_condition_does_not_count_as_extending():
    """The check above can fail: a method that calls rq's only in one branch is not extending it."""

    class Probe:
        def check_for_suspension(self, burst):
            if burst:
                super().check_for_suspension(burst)  # type: ignore[misc]

        def heartbeat(self, timeout=None):
            try:
                self.parts.guard.call(super().heartbeat, timeout)  # type: ignore[attr-defined,misc]
            finally:
                pass

        def run_maintenance_tasks(self):
            return self.ok() and super().run_maintenance_tasks()  # type: ignore[attr-defined,misc]

    assert not always_calls_its_super(Probe.check_for_suspension)
    assert always_calls_its_super(Probe.heartbeat)
    assert not always_calls_its_super(Probe.run_maintenance_tasks)


def test_a_composed_spawn_workers_config_unpickles_to_its_class(app):
    """rq's ``_dump_worker_config`` pickles ``type(self)``: a class made at run time has no importable name,
    so ours pickles as ``compose(app_class)`` (horse.py then builds the same class)."""
    module, env = app
    prepared = prepared_with({**env, "RQ_WORKER_CLASS": f"{module}.AppSpawnWorker", "RQ_JOB_CLASS": f"{module}.AppJob"})
    worker = build_worker(prepared, fakeredis.FakeRedis(), Notifier())
    worker_class, attributes = pickle.loads(base64.b64decode(base64.b64encode(worker._dump_worker_config())))
    assert worker_class is type(worker) and issubclass(worker_class, ServiceWorkerMixin)
    assert attributes["job_class"] is prepared.classes.job_class


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("RQ_JOB_CLASS", "{m}.AppQueue", "a subclass of rq.job.Job"),
    ("RQ_QUEUE_CLASS", "{m}.AppJob", "a subclass of rq.queue.Queue"),
    ("RQ_CONNECTION_CLASS", "{m}.AppQueue", "a subclass of redis.Redis"),
    ("RQ_WORKER_CLASS", "{m}.AppJob", "a subclass of rq's Worker, SpawnWorker or SimpleWorker"),
    ("RQ_WORKER_CLASS", "rq.worker.BaseWorker", "a subclass of rq's Worker"),
    ("RQ_SERIALIZER", "{m}.Codec", "with dumps and loads"),
    ("RQ_WORKER_CLASS", "{m}.OwnPopWorker", "does not override dequeue_job_and_maintain_ttl"),
    ("RQ_WORKER_CLASS", "{m}.OwnSpawnWorker", "does not override fork_work_horse"),
    ("RQ_JOB_CLASS", "{m}.Absent", "module {m} has no Absent"),
    ("RQ_QUEUE_CLASS", "nomodule_here.Queue", "there is no module nomodule_here"),
])
def test_a_wrong_class_is_one_line_naming_the_variable(app, variable, value, said):
    module, env = app
    with pytest.raises(ConfigError) as caught:
        prepared_with({**env, variable: value.format(m=module)})
    message = str(caught.value)
    assert message.startswith(f"{variable}=") and said.format(m=module) in message and "\n" not in message


def test_without_the_app_path_the_apps_class_does_not_import(app):
    module, _ = app
    with pytest.raises(ConfigError, match="importable from the app"):
        prepared_with({"RQ_JOB_CLASS": f"{module}.AppJob"})


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def started_json_job(conn, job_id: str, owner: str) -> Job:
    """A JSON job its worker ``owner`` registered and started (then died)."""
    queue = Queue("default", connection=conn, serializer=JSONSerializer)
    job = queue.enqueue(quick_job, 21, job_id=job_id)
    queue.remove(job)
    with conn.pipeline() as pipe:
        Execution.create(job, 60, pipeline=pipe, worker_name=owner)
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.execute()
    return job


def test_a_rescue_reads_the_abandoned_job_with_the_apps_serializer(conn, caplog):
    """Read with pickle its function is unknown ("?" in the journal and RQ_JOB_FUNC)."""
    started_json_job(conn, "json-1", "dead-worker")
    settings = load_settings({"RQ_SERIALIZER": "json", "RQ_JOB_RETRY_MAX": "1", "RQ_JOB_RETRY_DELAY": "0"})
    with caplog.at_level(logging.WARNING, logger="rq_worker_service.recovery"):
        recovered = rescue_executions(conn, "dead-worker", ["default"], settings, "it died", at_once=True)
    assert [r.job_id for r in recovered] == ["json-1"]
    assert "Rescued job json-1 (testjobs.quick_job)" in caplog.text
    assert Queue("default", connection=conn).job_ids == ["json-1"]


def test_status_and_job_read_jobs_with_the_apps_serializer(conn):
    started_json_job(conn, "json-2", "gone")
    json_classes = app_classes(load_settings({"RQ_SERIALIZER": "json"}))
    assert describe(conn, "json-2", classes=json_classes)["call"] == "testjobs.quick_job(21)"
    assert describe(conn, "json-2", classes=RQ_DEFAULTS)["call"].startswith("<cannot decode")
    (abandoned,) = collect(conn, "r", ["default"], classes=json_classes).abandoned
    assert abandoned.func == "testjobs.quick_job"


def test_the_enqueue_helper_writes_with_the_apps_serializer(conn):
    job = enqueue(quick_job, 4, connection=conn, env={"RQ_SERIALIZER": "json"})
    assert Job.fetch(job.id, connection=conn, serializer=JSONSerializer).args == [4]  # (JSON has no tuples)
    with pytest.raises(Exception):  # noqa: B017 - pickle cannot read it: whatever it raises
        Job.fetch(job.id, connection=conn).args  # noqa: B018


def test_the_connection_class_makes_every_kind_of_client(app):
    module, env = app
    from rq_worker_service.connection import make_connection

    for extra in ({}, {"REDIS_SENTINELS": "127.0.0.1:1", "REDIS_SENTINEL_MASTER": "m"}):
        prepared = prepared_with({**env, **extra, "RQ_CONNECTION_CLASS": f"{module}.AppRedis"})
        settings = prepared.settings
        client = make_connection(settings.redis, settings.key_prefix, offline=True, redis_class=prepared.redis_class)
        assert type(client).__name__ == "AppRedis" and isinstance(client, redis.Redis)


class PrefixedJob(Job):
    redis_job_namespace_prefix = "app:job:"


def test_recovery_and_status_read_a_job_at_its_apps_job_class_key(conn):
    """Review 27: ``recovery.execution_owner`` (once the execution's hash expired) and ``status``'s oldest job's
    age read the job's hash at rq's ``rq:job:<id>``: for an app job class of its own prefix the entry had no
    owner (no rescue claims it as the dead worker's) and the queue's head no age. Fails when either reads rq's key."""
    from rq.executions import Execution
    from rq.serializers import resolve_serializer

    from rq_worker_service.classes import AppClasses
    from rq_worker_service.recovery import started_executions
    from rq_worker_service.status.collect import oldest_age

    classes = AppClasses("pickle", resolve_serializer("pickle"), PrefixedJob, Queue)
    queue = classes.queue("default", conn)
    waiting = queue.enqueue(quick_job, 1)
    assert conn.exists(f"app:job:{waiting.id}") and not conn.exists(f"rq:job:{waiting.id}")
    age = oldest_age(conn, queue, datetime.now().astimezone())
    assert age is not None and age < 60
    started = queue.enqueue(quick_job, 2)
    queue.remove(started)
    with conn.pipeline() as pipe:
        execution = Execution.create(started, 60, pipeline=pipe, worker_name="dead-worker")
        started.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.hset(started.key, "worker_name", "dead-worker")  # (rq's prepare_for_execution writes it too)
        pipe.execute()
    conn.delete(execution.key)  # the execution's hash expired: the job's hash says whose it was
    assert started_executions(conn, queue) == [(started.id, execution.composite_key, "dead-worker")]
