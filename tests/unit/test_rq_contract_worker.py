"""rq's behaviour that our worker classes, the spawn horse, recovery and status rely on, checked
by running rq's own code on fakeredis.

Each test drives the rq internal our code touches and checks the effect our code depends on, so
that an rq release that changes it fails here, with a message naming our side. The list of
internals, with the test that pins each, is ``INTERNALS`` in ``test_rq_contract.py``.
"""

from __future__ import annotations

import base64
import inspect
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import fakeredis
import pytest
import redis
import rq
from rq import Queue
from rq.command import handle_command
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import as_text, current_timestamp, get_version, now, parse_composite_key, utcformat, utcparse
from rq.worker import SHUTDOWN_SIGNAL, SpawnWorker, Worker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY, get_keys, register

from rq_worker_service import journal, rqcompat

HEARTBEAT_SLACK = 60
"""status.py's HEARTBEAT_SLACK: what rq adds to a heartbeat's interval for the worker key's TTL."""


@pytest.fixture
def connection():
    return fakeredis.FakeRedis()


@pytest.fixture
def popping_moves(monkeypatch):
    """Make rq see Redis ≥ 6.2 on fakeredis (which answers no INFO): a single-queue pop is then a BLMOVE."""
    monkeypatch.setattr("rq.queue.get_version", lambda connection: (7, 2, 0))


def _fields(connection, key: str) -> dict[str, str]:
    return {as_text(k): v.decode(errors="replace") for k, v in connection.hgetall(key).items()}


# -- records: the worker and job hash fields we read ourselves ----------------------------------


def test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read(connection):
    """recovery.recover_predecessor reads pid, hostname, queues and death; the autoscaler reads
    state ('idle'); worker.py reads and writes the job counters; status reads the key's TTL and
    (rqcompat.mixed_rq_workers) the version."""
    worker = Worker(["reports", "mail"], connection=connection, name="host.rq-worker@1")
    worker.register_birth()
    record = _fields(connection, worker.key)
    assert record["pid"] == str(os.getpid()) and record["hostname"] == socket.gethostname(), "recovery: pid/host"
    assert record["queues"] == "reports,mail", "recovery: the record's queues, comma-separated"
    assert "death" not in record and utcparse(record["last_heartbeat"]) <= now()
    assert record["version"] == rq.__version__, "rqcompat.mixed_rq_workers: the worker's rq version"
    assert connection.ttl(worker.key) == worker.worker_ttl + HEARTBEAT_SLACK, "status: a key lives interval + 60 s"
    worker.heartbeat(45)
    assert 44_000 < connection.pttl(worker.key) <= 45_000, "status: a heartbeat's timeout is the key's TTL"
    worker.set_state(WorkerStatus.IDLE)
    assert _fields(connection, worker.key)["state"] == "idle", "autoscaler: an idle worker's state field"
    worker.increment_successful_job_count()
    worker.increment_failed_job_count()
    done, failed = connection.hmget(worker.key, ["successful_job_count", "failed_job_count"])
    assert (done, failed) == (b"1", b"1"), "parts/reporting.py's Counters.refresh reads these fields"
    connection.hset(worker.key, mapping={"successful_job_count": "40", "failed_job_count": "2"})
    shown = Worker.find_by_key(worker.key, connection=connection)
    assert shown is not None and (shown.successful_job_count, shown.failed_job_count) == (40, 2), (
        "worker.py carries the counts across a reload by writing these fields; status shows rq's reading")
    worker.register_death()
    assert "death" in _fields(connection, worker.key), "recovery: a record with 'death' is not a live predecessor"


def test_the_job_fields_we_read_and_write_directly(connection):
    """status.oldest_age reads enqueued_at; orphans and the enqueue helper read status; recovery
    reads worker_name; recovery.apply_job_defaults writes timeout and failure_ttl."""
    queue = Queue("reports", connection=connection)
    job = queue.enqueue("os.getpid")
    fields = _fields(connection, job.key)
    enqueued = utcparse(fields["enqueued_at"])
    assert abs((enqueued - job.enqueued_at).total_seconds()) < 0.001, "status: enqueued_at, as utcparse reads it"
    assert fields["status"] == JobStatus.QUEUED.value == "queued", "orphans / client: the status field"
    connection.hset(job.key, mapping={"timeout": 77, "failure_ttl": 99})
    fetched = Job.fetch(job.id, connection=connection)
    assert (fetched.timeout, fetched.failure_ttl) == (77, 99), "apply_job_defaults writes these fields"
    worker = Worker([queue], connection=connection, name="host.rq-worker@2")
    with connection.pipeline() as pipe:
        job.prepare_for_execution(worker.name, pipeline=pipe)
        pipe.execute()
    assert _fields(connection, job.key)["worker_name"] == worker.name, "recovery falls back to the job's worker_name"


# -- keys ---------------------------------------------------------------------------------------


def test_worker_keys_and_registrations_are_where_recovery_and_the_autoscaler_look(connection):
    worker = Worker(["reports"], connection=connection, name="host.rq-worker@1")
    assert worker.key == Worker.redis_worker_namespace_prefix + worker.name, "rqcompat.worker_key, the autoscaler"
    register(worker)
    assert connection.sismember(REDIS_WORKER_KEYS, worker.key), "recovery.forget_worker"
    assert connection.sismember(WORKERS_BY_QUEUE_KEY % "reports", worker.key), "recovery.forget_worker"
    assert set(get_keys(Queue("reports", connection=connection))) == {worker.key}, "autoscaler._elsewhere"


def test_executions_are_registered_by_composite_key_before_the_horse(connection, popping_moves):
    """recovery.started_executions and orphans: a single-queue pop moves the job into the
    intermediate list; the main process then registers the execution (started registry entry
    ``<job id>:<execution id>``, an execution hash with worker_name) before it forks."""
    queue = Queue("solo", connection=connection)
    job = queue.enqueue("os.getpid")
    seen = {}

    class Probe(Worker):
        def fork_work_horse(self, job, queue):
            seen["held"] = [as_text(j) for j in connection.lrange(IntermediateQueue.get_intermediate_queue_key(
                queue.key), 0, -1)]
            seen["started"] = [as_text(e) for e in connection.zrange(queue.started_job_registry.key, 0, -1)]

        def monitor_work_horse(self, job, queue, execution):
            seen["execution"] = execution

    worker = Probe([queue], connection=connection, name="host.rq-worker@1")
    popped, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert popped.id == job.id
    worker.execute_job(popped, queue)
    assert seen["held"] == [job.id], "orphans.py: the popped job waits in the intermediate list"
    execution = seen["execution"]
    assert seen["started"] == [execution.composite_key] == [f"{job.id}:{execution.id}"], (
        "rq registers the execution before fork_work_horse, as '<job id>:<execution id>'")
    assert parse_composite_key(execution.composite_key) == (job.id, execution.id)
    assert Execution.from_composite_key(execution.composite_key, connection=None).key == execution.key, (
        "rqcompat.execution_key builds the key without a connection")
    assert connection.hget(execution.key, "worker_name") == worker.name.encode(), "recovery.started_executions"
    marker = IntermediateQueue(queue.key, connection).get_first_seen_key(job.id)
    assert marker.startswith(IntermediateQueue.get_intermediate_queue_key(queue.key)), "orphans: first-seen marker"


def test_a_queue_is_a_list_popped_from_the_left_and_registries_are_sorted_sets(connection):
    """status.oldest_age reads the queue's head with ``LINDEX key 0``; orphans.py puts a job back with
    ``LPUSH`` so that it is popped next; status and ``cleanup`` count registries with ``ZCARD``."""
    queue = Queue("q", connection=connection)
    first = queue.enqueue("os.getpid")
    queue.enqueue("os.getpid")
    assert connection.lindex(queue.key, 0) == first.id.encode(), "the oldest job is at the head"
    again = queue.enqueue("os.getpid")
    connection.lrem(queue.key, 1, again.id)
    connection.lpush(queue.key, again.id)
    popped, _ = Queue.dequeue_any([queue], timeout=None, connection=connection)
    assert popped.id == again.id, "a job pushed on the left is popped next"
    queue.failed_job_registry.add(first, ttl=60)
    for registry in (queue.failed_job_registry, queue.started_job_registry, queue.scheduled_job_registry,
                     queue.deferred_job_registry, queue.finished_job_registry):
        assert connection.type(registry.key) in (b"zset", b"none"), registry
    assert connection.zcard(queue.failed_job_registry.key) == 1


def test_rq_reads_its_key_prefix_from_the_environment_when_imported():
    """The service sets RQ_KEY_PREFIX before it first imports rq (cli.py, service.py, autoscaler.py)."""
    code = ("from rq.worker import Worker; from rq.job import Job; from rq.defaults import RQ_KEY_PREFIX; "
            "from rq.worker_registration import REDIS_WORKER_KEYS; "
            "print(RQ_KEY_PREFIX, Worker.redis_worker_namespace_prefix, Job.key_for('j'), REDIS_WORKER_KEYS)")
    env = dict(os.environ, RQ_KEY_PREFIX="svc")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svc", "svc:worker:", "svc:job:j", "svc:workers"], out


# -- the main loop: hooks, the pop, a stop -------------------------------------------------------


@pytest.mark.parametrize("describe", [True, False])
def test_the_pop_is_between_a_heartbeat_and_reorder_queues_and_logs_the_job(connection, caplog, describe):
    """worker.py marks the blocking pop from heartbeat() to reorder_queues(); journal.ContextFilter
    takes the job from rq's "picked up" line, logged inside the pop."""
    calls = []

    class RecordingQueue(Queue):
        @classmethod
        def dequeue_any(cls, *args, **kwargs):
            calls.append("pop")
            return super().dequeue_any(*args, **kwargs)

    class Probe(Worker):
        queue_class = RecordingQueue

        def heartbeat(self, timeout=None, pipeline=None):
            calls.append("heartbeat")

        def run_maintenance_tasks(self):
            pass

        def reorder_queues(self, reference_queue):
            calls.append("reorder")

    queue = RecordingQueue("reports", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection, log_job_description=describe)
    rq_log = logging.getLogger("rq.worker")
    rq_log.addHandler(caplog.handler)  # (rq may have stopped its logger propagating to the root's)
    try:
        with caplog.at_level(logging.INFO, logger="rq.worker"):
            popped, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    finally:
        rq_log.removeHandler(caplog.handler)
    assert popped.id == job.id
    assert calls[:3] == ["heartbeat", "pop", "reorder"], f"rq reordered its dequeue loop: {calls}"
    picked = list({id(r): r for r in caplog.records if r.msg in journal.PICKED_UP}.values())  # (seen twice if it
    # propagates to the root too)
    assert len(picked) == 1, f"rq no longer logs a popped job as journal.PICKED_UP expects: {caplog.messages}"
    record = picked[0]
    journal.ContextFilter().filter(record)
    assert (record.RQ_JOB_ID, record.RQ_QUEUE) == (job.id, "reports")


def test_a_failing_pop_backs_off_up_to_max_connection_wait_time(connection, monkeypatch):
    """worker.py sets max_connection_wait_time to its tick so that an outage never delays a tick."""
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 4:
            raise StopRequested()

    class DownQueue(Queue):
        @classmethod
        def dequeue_any(cls, *args, **kwargs):
            raise redis.exceptions.ConnectionError("down")

    class Probe(Worker):
        queue_class = DownQueue

        def heartbeat(self, timeout=None, pipeline=None):
            pass

        def run_maintenance_tasks(self):
            pass

    worker = Probe([DownQueue("q", connection=connection)], connection=connection)
    worker.max_connection_wait_time = 1.5
    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(StopRequested):
        worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert slept == [1.0, 1.5, 1.5, 1.5]


def test_rqs_loop_pops_with_dequeue_timeout_and_ends_on_a_stop(connection, monkeypatch):
    """worker.py: ``_shutdown`` sets ``_stop_requested`` (the loop checks it before each pop), and
    a stop during the pop raises StopRequested, which ends rq's loop like a clean stop; rq's loop
    starts the scheduler through ``_start_scheduler`` and then installs the signal handlers."""
    monkeypatch.setattr("rq.worker.base.setup_loghandlers", lambda *a, **k: None)
    events = []

    class Probe(Worker):
        stop_before_pop = False

        @property
        def dequeue_timeout(self):
            return 7

        def subscribe(self):
            pass

        def unsubscribe(self):
            pass

        def _install_signal_handlers(self):
            events.append("handlers")

        def _start_scheduler(self, burst=False, logging_level="INFO", date_format="", log_format=""):
            events.append(("scheduler", burst, logging_level))

        def run_maintenance_tasks(self):
            pass

        def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
            events.append(("pop", timeout))
            self._stop_requested = self.stop_before_pop
            raise StopRequested()

    worker = Probe(["q"], connection=connection)
    assert worker.work(logging_level="WARNING", with_scheduler=True) is False
    assert events == [("scheduler", False, "WARNING"), "handlers", ("pop", 7)], events
    assert "death" in _fields(connection, worker.key), "teardown ran: the loop ended as on a clean stop"
    events.clear()
    worker = Probe(["q"], connection=connection)
    worker.stop_before_pop = True
    worker._stop_requested = True
    worker.work()
    assert ("pop", 7) not in events, "rq's loop no longer checks _stop_requested before the pop"


def test_rqs_signal_handlers_call_request_stop(connection):
    """Our ``_install_signal_handlers`` adds SIGHUP to rq's, whose SIGTERM/SIGINT go to request_stop."""
    worker = Worker(["q"], connection=connection)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker._install_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) == worker.request_stop
        assert signal.getsignal(signal.SIGINT) == worker.request_stop
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_the_shutdown_date_we_set_is_the_one_rq_records(connection):
    """worker.py's announcement sets ``_shutdown_requested_date`` and calls set_shutdown_requested_date()."""
    worker = Worker(["q"], connection=connection)
    worker.register_birth()
    worker._shutdown_requested_date = now() - timedelta(seconds=5)
    worker.set_shutdown_requested_date()
    assert abs((worker.shutdown_requested_date - worker._shutdown_requested_date).total_seconds()) < 0.001


def test_constructor_settings_and_horse_state(connection):
    """worker.py sets job_monitoring_interval (a property of ours that rq assigns in __init__) and
    maintenance_interval by keyword; horse.py sets ``_is_horse`` and ``execution``; worker_classes.py
    sets and reads ``_horse_pid`` and passes ``_serializer_arg`` on."""
    assigned = []

    class Probe(Worker):
        @property
        def job_monitoring_interval(self):
            return 5

        @job_monitoring_interval.setter
        def job_monitoring_interval(self, value):
            assigned.append(value)

    worker = Probe(["q"], connection=connection, job_monitoring_interval=9, maintenance_interval=60,
                   serializer="rq.serializers.JSONSerializer")
    assert assigned == [9], "rq no longer assigns job_monitoring_interval in __init__ (worker.py's setter)"
    assert worker.maintenance_interval == 60 and worker.worker_ttl > 15
    assert worker._serializer_arg == "rq.serializers.JSONSerializer", "the spawn horse passes it on"
    assert worker.is_horse is False and worker.horse_pid == 0
    worker._is_horse = True
    worker._horse_pid = 4321
    assert worker.is_horse is True and worker.horse_pid == 4321, "is_horse / horse_pid read _is_horse / _horse_pid"
    job = Queue("q", connection=connection).enqueue("os.getpid")
    execution = worker.prepare_execution(job)
    worker.executions.clear()
    worker.execution = execution
    assert worker.execution is execution and worker.get_current_job_id() == job.id


# -- the monitor: SIGALRM ticks, the horse's death, deliberate kills ------------------------------


def test_an_early_alarm_in_the_horse_wait_is_a_monitor_tick(connection):
    """``ServiceParts.wake`` (parts/assembly.py) arms ITIMER_REAL while rq waits for the horse: rq's monitor waits
    under a SIGALRM death penalty, so the alarm must turn into a maintain_heartbeats() tick and the
    wait go on; the interval is read anew for each wait (our stop deadline shortens it)."""
    reads = []

    class Probe(Worker):
        waits = ticks = 0

        @property
        def job_monitoring_interval(self):
            reads.append(1)
            return 30

        @job_monitoring_interval.setter
        def job_monitoring_interval(self, value):
            pass

        def wait_for_horse(self):
            self.waits += 1
            if self.waits == 1:
                signal.setitimer(signal.ITIMER_REAL, 0.01)  # what ServiceParts.wake does
                time.sleep(5)
                raise AssertionError("an early SIGALRM no longer interrupts rq's wait for the horse")
            return 1234, 0, None

        def maintain_heartbeats(self, job, execution):
            self.ticks += 1

    assert Worker.death_penalty_class is UnixSignalDeathPenalty, "rq's monitor no longer times out with SIGALRM"
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection)
    execution = worker.prepare_execution(job)

    def unhandled(signum, frame):
        raise AssertionError("rq's monitor no longer handles SIGALRM while it waits for the horse: port "
                             "parts/assembly.py's ServiceParts.wake")

    previous = signal.signal(signal.SIGALRM, unhandled)  # (else the alarm would end the test run)
    started = time.monotonic()
    try:
        worker.monitor_work_horse(job, queue, execution)
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, "rq no longer resets SIGALRM after the wait"
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), (
            "rq no longer cancels its alarm after the wait: a pending one would kill the worker (SIG_DFL)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (worker.waits, worker.ticks) == (2, 1), "the early alarm was not one monitor tick"
    assert time.monotonic() - started < 2 and len(reads) >= 2


def test_a_horse_that_died_is_failed_with_the_text_we_recognise(connection):
    """worker.handle_job_failure recognises rqcompat.HORSE_DIED as a crash of the horse."""
    failures = []

    class Probe(Worker):
        def wait_for_horse(self):
            return 1234, signal.SIGKILL.value, None  # waitpid's status of a horse killed by SIGKILL

        def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
            failures.append(exc_string)

    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection)
    execution = worker.prepare_execution(job)
    job.set_status(JobStatus.STARTED)
    worker.monitor_work_horse(job, queue, execution)
    assert len(failures) == 1 and failures[0].startswith(rqcompat.HORSE_DIED), (
        f"rq changed the failure text of a horse that died (rqcompat.HORSE_DIED): {failures}")


def test_rqs_hard_timeout_kills_the_horse_through_kill_horse(connection, monkeypatch):
    """worker.py's kill_horse: rq's own kill of a horse past its job's timeout (+60 s) is deliberate too."""
    from rq.timeouts import HorseMonitorTimeoutException

    start = now()
    clock = iter([start, start + timedelta(seconds=200)])
    monkeypatch.setattr("rq.worker.worker_classes.now", lambda: next(clock, start + timedelta(seconds=200)))
    killed = []

    class Probe(Worker):
        waits = 0

        def wait_for_horse(self):
            self.waits += 1
            if self.waits == 1:
                raise HorseMonitorTimeoutException()
            return 1234, 0, None

        def kill_horse(self, sig=SHUTDOWN_SIGNAL):
            killed.append(sig)

        def heartbeat(self, timeout=None, pipeline=None):
            pass

    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid", job_timeout=10)
    worker = Probe([queue], connection=connection)
    worker.monitor_work_horse(job, queue, worker.prepare_execution(job))
    assert killed == [SHUTDOWN_SIGNAL], "rq's hard timeout no longer kills the horse through kill_horse()"


def test_a_simple_workers_job_that_raises_a_base_exception_is_failed(connection):
    """worker_classes.ServiceSimpleWorker cuts a job by raising JobInterrupted (a BaseException) in
    it: rq's perform_job must record that as the job's failure, through handle_job_failure."""
    failures = []

    class Probe(rq.SimpleWorker):
        def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
            failures.append(exc_string)

    queue = Queue("q", connection=connection)
    job = queue.enqueue("sys.exit", 3)  # SystemExit: a BaseException, as JobInterrupted is
    worker = Probe([queue], connection=connection)
    worker.execute_job(job, queue)
    assert len(failures) == 1 and "SystemExit" in failures[0], failures


@pytest.mark.parametrize("command", ["kill-horse", "stop-job"])
def test_an_operators_kill_goes_through_kill_horse(connection, command):
    """worker.py's kill_horse marks any kill from the worker's side as deliberate (not a crash)."""
    killed = []

    class Probe(Worker):
        def kill_horse(self, sig=SHUTDOWN_SIGNAL):
            killed.append(sig)

    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection)
    worker.execution = worker.prepare_execution(job)
    worker._horse_pid = 4321
    handle_command(worker, {"command": command, "job_id": job.id})
    assert killed == [SHUTDOWN_SIGNAL], f"rq's {command} command no longer calls kill_horse()"


def test_a_job_stuck_in_the_intermediate_list_is_failed_with_the_text_we_recognise(connection, popping_moves):
    """rq's cleanup fails a job popped by a worker that died; worker.handle_job_failure recognises
    rqcompat.STUCK_IN_INTERMEDIATE; orphans.py deletes the first-seen marker to restart rq's count."""
    failures = []

    class Probe(Worker):
        def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
            failures.append(exc_string)

    queue = Queue("solo", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection)
    worker.dequeue_job_and_maintain_ttl(timeout=1)
    intermediate = IntermediateQueue(queue.key, connection)
    intermediate.cleanup(worker, queue)
    assert connection.exists(intermediate.get_first_seen_key(job.id)) and failures == [], "first sighting"
    connection.set(intermediate.get_first_seen_key(job.id), (now() - timedelta(minutes=2)).timestamp())
    intermediate.cleanup(worker, queue)
    assert len(failures) == 1 and failures[0].startswith(rqcompat.STUCK_IN_INTERMEDIATE), (
        f"rq changed the failure text of a job stuck in the intermediate queue: {failures}")


# -- the spawn horse ----------------------------------------------------------------------------


def test_dump_worker_config_is_what_our_spawn_horse_unpacks(connection):
    """worker_classes.py puts ``_dump_worker_config()`` base64-encoded in the horse's environment;
    horse.py unpickles it, builds the worker as rq's find_by_key does and sets each attribute."""
    handler = os.getpid  # any importable callable: the horse unpickles it
    worker = SpawnWorker(["q"], connection=connection, name="host.rq-worker@1", exception_handlers=[handler],
                         serializer="rq.serializers.JSONSerializer")
    worker.register_birth()
    payload = base64.b64encode(worker._dump_worker_config()).decode()  # worker_classes.ServiceSpawnWorker
    loaded = pickle.loads(base64.b64decode(payload))
    assert isinstance(loaded, tuple) and len(loaded) == 2, (
        f"rq {rq.__version__} changed _dump_worker_config's format: horse.py unpacks (worker class, attributes)")
    worker_class, attributes = loaded  # horse.main
    assert worker_class is SpawnWorker
    assert {"job_class", "queue_class", "death_penalty_class"} <= attributes.keys(), attributes.keys()
    name = worker.key[len(worker_class.redis_worker_namespace_prefix):]
    horse = worker_class([], name, connection=connection, job_class=attributes["job_class"],
                         queue_class=attributes["queue_class"], prepare_for_work=False,
                         serializer=worker._serializer_arg)
    horse.refresh()
    for attribute, value in attributes.items():
        assert hasattr(horse, attribute), f"rq's worker config names {attribute}, which a worker does not have"
        setattr(horse, attribute, value)
    assert horse.name == worker.name and horse.queue_names() == ["q"]
    assert horse._exc_handlers == [handler] and horse.serializer is worker.serializer
    found = SpawnWorker.find_by_key(worker.key, connection=connection)
    assert found is not None and found.queue_names() == horse.queue_names(), "horse.py builds it as find_by_key"


def test_serializer_names_resolve_as_rqs_serializer_option_resolves_them(connection):
    """classes.py resolves RQ_SERIALIZER with rq's ``resolve_serializer`` (as ``rq worker -S`` does) and
    hands the worker the name, which rq keeps as ``_serializer_arg`` for its spawned horse; an object
    without dumps and loads is refused with NotImplementedError, which classes.py turns into our line."""
    from rq.serializers import DefaultSerializer, JSONSerializer, Serializer, resolve_serializer

    assert resolve_serializer("json") is JSONSerializer and resolve_serializer("pickle") is DefaultSerializer
    assert resolve_serializer("rq.serializers.JSONSerializer") is JSONSerializer
    assert isinstance(JSONSerializer, Serializer) and not isinstance(object(), Serializer)
    with pytest.raises(NotImplementedError):
        resolve_serializer("rq.job.JobStatus")
    for name in ("json", "rq.serializers.JSONSerializer"):
        worker = SpawnWorker(["q"], connection=connection, serializer=name)
        assert worker._serializer_arg == name and worker.serializer is JSONSerializer


def test_rqs_spawn_horse_does_what_ours_does(connection, monkeypatch):
    """horse.py repeats the steps of the source rq's SpawnWorker hands its horse (``-c``), which we
    replace: if rq adds a step, or an environment variable for its horse, port it to horse.py.
    (The source is read as rq passes it to posix_spawn: a text check, as there is no other way.)"""
    spawned = {}

    def posix_spawn(path, argv, env, **kwargs):
        spawned.update(argv=argv, env=dict(env), kwargs=kwargs)
        return 4321

    for name in ("RQ_WORKER_ID", "RQ_JOB_ID", "RQ_EXECUTION_ID"):
        monkeypatch.delenv(name, raising=False)
    before = {k for k in os.environ if k.startswith("RQ_")}
    monkeypatch.setattr(os, "posix_spawn", posix_spawn)
    monkeypatch.setattr(SpawnWorker, "procline", lambda self, message: None)
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = SpawnWorker([queue], connection=connection, name="host.rq-worker@1")
    worker.execution = worker.prepare_execution(job)
    worker.fork_work_horse(job, queue)
    assert worker.horse_pid == 4321 and spawned["kwargs"] == {"setpgroup": 0}, "ours: own process group"
    added = {k for k in spawned["env"] if k.startswith("RQ_")} - before
    assert added == {"RQ_WORKER_ID", "RQ_JOB_ID", "RQ_EXECUTION_ID"}, (
        f"rq's spawn horse now gets {added}: give ours the same (worker_classes.py, horse.py)")
    source = spawned["argv"][2]
    steps = ["worker_class, worker_attributes = pickle.loads(", "worker_class.find_by_key(",
             "job_class=worker_attributes['job_class']", "queue_class=worker_attributes['queue_class']",
             "serializer=", "setattr(worker, name, value)", "worker.job_class.fetch(", "serializer=worker.serializer",
             "worker.queue_class(", "death_penalty_class=worker.death_penalty_class", "Execution.fetch(",
             "execution._job = job", "worker.execution = execution", "worker.main_work_horse(job, queue)"]
    positions = [source.find(step) for step in steps]
    missing = [step for step, at in zip(steps, positions, strict=True) if at == -1]
    assert not missing and positions == sorted(positions), f"rq {rq.__version__} changed its spawn horse: {missing}"
    statements = [line for line in source.splitlines() if line.strip() and not line.startswith((" ", ")", "#"))]
    assert len(statements) <= 17, f"rq {rq.__version__}'s spawn horse grew: port horse.py\n{source}"


def test_fork_work_horse_keeps_the_horses_pid(connection, monkeypatch):
    """worker_classes.ServiceWorker hands the spare connection over with ``_horse_pid``, read right
    after rq's fork_work_horse returns in the worker."""
    for name in ("RQ_WORKER_ID", "RQ_JOB_ID"):
        monkeypatch.delenv(name, raising=False)

    class Probe(Worker):
        def main_work_horse(self, job, queue):
            os._exit(7)  # the horse: gone at once

        def procline(self, message):
            pass

    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Probe([queue], connection=connection)
    worker.fork_work_horse(job, queue)
    pid, status = os.waitpid(worker._horse_pid, 0)
    assert pid == worker.horse_pid > 0 and os.waitstatus_to_exitcode(status) == 7, (
        "rq's fork_work_horse no longer keeps the horse's pid in _horse_pid")


def test_an_execution_given_its_job_does_not_fetch_it_again(connection):
    """horse.py sets ``execution._job``, as rq's horse does: the job it fetched with the worker's
    job class and serializer is the one the execution hands on."""
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    worker = Worker([queue], connection=connection)
    created = worker.prepare_execution(job)
    execution = Execution.fetch(created.id, job.id, connection=connection)
    execution._job = job
    connection.delete(job.key)  # a fetch would fail now
    try:
        handed_on = execution.job
    except rq.exceptions.NoSuchJobError:
        handed_on = None
    assert handed_on is job, (
        "Execution.job no longer hands on the job set in _job: horse.py's (fetched with the worker's job class "
        "and serializer) would be fetched again")


def test_a_fetched_jobs_call_waits_in_its_data_until_read(connection):
    """prefork.py hands a spare horse the job's attributes: its call as the serialized ``_data`` and the
    four attributes rq fills from it, left as ``UNEVALUATED`` (read again from ``_data`` in the horse, as
    rq's do from a fetch). If rq kept the call elsewhere, or another marker, the handed job would lose it."""
    queue = Queue("q", connection=connection)
    job = Job.fetch(queue.enqueue("builtins.max", 3, 4, key=None).id, connection=connection)
    deserialized = ("_func_name", "_instance", "_args", "_kwargs")
    assert isinstance(job._data, bytes), "rq's fetched job no longer keeps its serialized call in _data"
    assert all(getattr(job, name) is rq.job.UNEVALUATED for name in deserialized), (
        "rq's fetched job no longer leaves its call's attributes UNEVALUATED until read")
    assert (job.func_name, job.args, job.kwargs) == ("builtins.max", (3, 4), {"key": None})
    assert not any(getattr(job, name) is rq.job.UNEVALUATED for name in deserialized), (
        "rq reads the call into other attributes than _func_name, _instance, _args, _kwargs")
    assert set(vars(job)) >= set(deserialized) | {"_data", "connection"}


# -- failing, retrying and requeueing a job from outside a worker --------------------------------


def test_handle_failure_records_the_failure_as_a_worker_would(connection):
    """recovery.settle_interrupted fails a job with ``Job._handle_failure(reason, pipeline, worker_name=…)``."""
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    with connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure("AbandonedJobError: gone", pipe, worker_name="host.rq-worker@1")
        pipe.execute()
    assert job.id in FailedJobRegistry("q", connection=connection)
    latest = job.latest_result()
    assert latest is not None and latest.type == Result.Type.FAILED
    assert latest.exc_string == "AbandonedJobError: gone" and latest.worker_name == "host.rq-worker@1"


def test_a_failure_result_can_be_recorded_for_a_retried_job(connection):
    """recovery.record_interruption: ``Result.create_failure(job, ttl, exc_string=, worker_name=, pipeline=)``."""
    job = Queue("q", connection=connection).enqueue("os.getpid")
    with connection.pipeline() as pipe:
        Result.create_failure(job, 60, exc_string="JobInterrupted: cut", worker_name="w", pipeline=pipe)
        pipe.execute()
    latest = job.latest_result()
    assert latest is not None and latest.exc_string == "JobInterrupted: cut"


def test_enqueue_job_puts_a_job_back_at_the_front_untouched(connection):
    """rqcompat.requeue_now: ``Queue._enqueue_job(job, pipeline=, at_front=True)`` queues the job
    again in front, without taking a retry or checking dependencies."""
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid", retry=rq.Retry(max=2, interval=600))
    queue.enqueue("os.getpid")
    queue.remove(job)
    job.set_status(JobStatus.STARTED)
    with connection.pipeline() as pipe:
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    assert queue.job_ids[0] == job.id and job.get_status(refresh=True) == JobStatus.QUEUED
    assert Job.fetch(job.id, connection=connection).retries_left == 2


def test_a_retry_is_taken_as_recovery_sets_it_up(connection):
    """recovery.apply_default_retry gives a job without Retry ``retries_left`` and ``retry_intervals``;
    settle_interrupted then retries it as ``job.retry(queue, pipeline)`` would (``should_retry`` says
    whether it will)."""
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    queue.remove(job)
    assert job.retries_left is None and not job.should_retry
    job.retries_left, job.retry_intervals = 3, [600]
    assert job.should_retry
    with connection.pipeline() as pipe:
        job.retry(queue, pipe)
        pipe.execute()
    assert job.id in queue.scheduled_job_registry and job.get_status(refresh=True) == JobStatus.SCHEDULED
    assert Job.fetch(job.id, connection=connection).retries_left == 2
    job.retry_intervals = [0]
    with connection.pipeline() as pipe:
        job.retry(queue, pipe)
        pipe.execute()
    assert job.id in queue.job_ids and job.retries_left == 1, "no interval: queued at once"


def test_retry_in_is_rqs_retry_with_every_write_in_the_pipeline(connection):
    """rqcompat.retry_in repeats ``Job.retry`` (``get_retry_interval``, ``schedule_job`` or
    ``_enqueue_job`` at ``enqueue_at_front_on_retry``) with no write outside the pipeline: a
    transaction watching the job, as a rescue's does, still commits."""
    queue = Queue("q", connection=connection)
    for interval in (0, 600):
        ours, theirs = (queue.enqueue("os.getpid", retry=rq.Retry(max=2, interval=interval)) for _ in range(2))
        for job in (ours, theirs):
            queue.remove(job)
            job.set_status(JobStatus.STARTED)
        with connection.pipeline() as pipe:
            pipe.watch(ours.key)
            pipe.multi()
            rqcompat.retry_in(ours, queue, pipe)
            pipe.execute()  # a WatchError here: a write went out on the job's own connection
        with connection.pipeline() as pipe:
            theirs.retry(queue, pipe)
            pipe.execute()
        for job in (ours, theirs):
            fetched = Job.fetch(job.id, connection=connection)
            seen = (fetched.get_status(), fetched.retries_left, job.id in queue.job_ids,
                    job.id in queue.scheduled_job_registry)
            expected = (JobStatus.SCHEDULED, 1, False, True) if interval else (JobStatus.QUEUED, 1, True, False)
            assert seen == expected, f"interval {interval}: {'rqcompat.retry_in' if job is ours else 'Job.retry'}"


def test_every_end_of_an_execution_writes_what_a_rescue_watches(connection):
    """recovery.claim watches a started entry's job hash and execution hash, not the busy registry:
    the worker's end (success, failure) and rq's cleanup of an abandoned entry each write one of
    them when they remove the entry, so a rescue racing them cannot commit too."""
    queue = Queue("q", connection=connection)
    watching = []

    def watch(job_id: str, composite: str):
        pipe = connection.pipeline()
        pipe.watch(Job.key_for(job_id), rqcompat.execution_key(composite))
        watching.append(pipe)

    class Probe(rq.SimpleWorker):
        def perform_job(self, job, queue, *args, **kwargs):
            watch(job.id, as_text(connection.zrange(queue.started_job_registry.key, 0, -1)[0]))
            return super().perform_job(job, queue, *args, **kwargs)

    queue.enqueue("os.getpid")
    queue.enqueue("testjobs.failing_job", 5)
    Probe([queue], connection=connection, name="host.rq-worker@1").work(burst=True)
    abandoned = queue.enqueue("os.getpid")
    queue.remove(abandoned)
    abandoned.set_status(JobStatus.STARTED)
    connection.zadd(queue.started_job_registry.key, {f"{abandoned.id}:gone": 1})  # expired long ago
    watch(abandoned.id, f"{abandoned.id}:gone")
    queue.started_job_registry.cleanup()
    assert connection.zcard(queue.started_job_registry.key) == 0 and len(watching) == 3
    for pipe, path in zip(watching, ("the worker's success", "the worker's failure", "rq's cleanup"), strict=True):
        pipe.multi()
        pipe.set("probe", 1)
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
            pytest.fail(f"{path} removed a started entry without touching its job or execution hash")


def test_dependents_of_a_job_failed_from_outside_are_enqueued(connection):
    """recovery.after_claim calls ``queue.enqueue_dependents(job)`` after failing a job, as rq's
    worker does: a dependent that allows its dependency's failure then runs."""
    queue = Queue("q", connection=connection)
    parent = queue.enqueue("os.getpid")
    child = queue.enqueue("os.getpid", depends_on=rq.job.Dependency(jobs=[parent], allow_failure=True))
    assert child.get_status() == JobStatus.DEFERRED
    queue.remove(parent)
    with connection.pipeline() as pipe:
        parent.set_status(JobStatus.FAILED, pipeline=pipe)
        parent._handle_failure("AbandonedJobError: gone", pipe, worker_name="w")
        pipe.execute()
    queue.enqueue_dependents(parent)
    assert child.id in queue.job_ids and child.get_status(refresh=True) == JobStatus.QUEUED


def test_the_helpers_recovery_calls_around_a_rescue(connection):
    """recovery.after_claim runs the app's failure callback with
    ``execute_failure_callback(job, death_penalty_class, exc_type, exc, traceback)``, then frees the
    job's rate-limit slot with ``release_slot(job)``."""
    from rq.callbacks import execute_failure_callback
    from rq.exceptions import AbandonedJobError
    from rq.rate_limit import release_slot

    queue = Queue("q", connection=connection)
    job = queue.enqueue("testjobs.quick_job", 1, on_failure=rq.Callback("testjobs.note_failure"))
    execute_failure_callback(job, queue.death_penalty_class, AbandonedJobError, AbandonedJobError(), None)
    assert connection.get(f"failure-callback:{job.id}") == b"AbandonedJobError", "the callback got the exception"
    job.set_status(JobStatus.FAILED)
    assert release_slot(job) == [], "a job without a rate limit frees nothing"


def test_the_timer_death_penalty_raises_in_its_thread_the_class_it_is_given():
    """aftermath.ThreadDeathPenalty runs a rescue's failure callback under rq's ``TimerDeathPenalty(timeout,
    exception)`` off the main thread: a timer raises ``exception`` in the thread that entered it, and rq sets
    that class's message process-wide (hence a class of our own per use, a subclass of JobTimeoutException)."""
    import threading

    from rq.timeouts import JobTimeoutException, TimerDeathPenalty

    class Own(JobTimeoutException):
        pass

    caught: list[BaseException] = []

    def body() -> None:
        try:
            with TimerDeathPenalty(1, Own):
                for _ in range(30):
                    time.sleep(0.1)
        except Own as exc:
            caught.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert [str(exc) for exc in caught] == ["Task exceeded maximum timeout value (1 seconds)"]
    assert str(JobTimeoutException("x")) == "x", "rq's class itself is untouched"


def test_exception_handlers_are_a_chain_a_false_return_ends(connection):
    """recovery.after_claim calls RQ_EXCEPTION_HANDLERS with ``call_exception_handlers(handlers, job,
    *exc_info)``, as rq's worker and its abandoned-job cleanup do: in order, None goes on, a falsy value
    other than None ends the chain."""
    from rq.exceptions import AbandonedJobError
    from rq.job_lifecycle import call_exception_handlers

    job = Queue("q", connection=connection).enqueue("os.getpid")
    called: list[str] = []

    def handler(name: str, returns: object):
        return lambda job, exc_type, exc_value, tb: called.append(f"{name}:{job.id}:{exc_type.__name__}") or returns

    call_exception_handlers([handler("a", None), handler("b", 0), handler("c", None)], job,
                            AbandonedJobError, AbandonedJobError(), None)
    assert called == [f"a:{job.id}:AbandonedJobError", f"b:{job.id}:AbandonedJobError"]


def test_the_cleanup_command_runs_rqs_maintenance_steps(connection):
    """jobs.cleanup: ``clean_registries(queue)`` fails expired started entries and
    ``clean_worker_registry(queue)`` drops the registrations of workers whose record is gone."""
    from rq.registry import clean_registries
    from rq.worker_registration import clean_worker_registry

    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    job.set_status(JobStatus.STARTED)
    connection.zadd(queue.started_job_registry.key, {f"{job.id}:gone": 1})  # expired long ago
    connection.sadd(WORKERS_BY_QUEUE_KEY % "q", Worker.redis_worker_namespace_prefix + "gone")
    clean_registries(queue)
    clean_worker_registry(queue)
    assert connection.zcard(queue.started_job_registry.key) == 0
    assert job.id in FailedJobRegistry("q", connection=connection)
    assert connection.scard(WORKERS_BY_QUEUE_KEY % "q") == 0


# -- the scheduler ------------------------------------------------------------------------------


def test_a_scheduler_under_the_same_name_takes_its_locks_back(connection):
    """scheduling.py names the scheduler after the worker, so a restarted instance takes the locks
    its predecessor left at once; another name waits for them to expire."""
    first = RQScheduler(["q"], connection=connection, name="host.rq-worker@1")
    assert first.acquire_locks() == {"q"}
    assert RQScheduler(["q"], connection=connection, name="host.rq-worker@2").acquire_locks() == set()
    again = RQScheduler(["q"], connection=connection, name="host.rq-worker@1")
    assert again.acquire_locks() == {"q"} and again.name == "host.rq-worker@1"


def test_the_scheduler_process_is_where_takeover_looks(connection, monkeypatch):
    """scheduling.Takeover reads ``scheduler._process`` as rq's own maintenance does, and retries with
    ``acquire_locks(auto_start=True)``; ServiceScheduler's loop uses ``_install_signal_handlers`` and
    ``_stop_requested`` as rq's does."""
    started = []

    class Process:
        def __init__(self, target, args, name):
            self.alive = False

        def start(self):
            started.append(self)

        def is_alive(self):
            return self.alive

    monkeypatch.setattr("rq.scheduler.ForkProcess", Process)
    scheduler = RQScheduler(["q"], connection=connection, name="w")
    assert scheduler._process is None and scheduler._stop_requested is False
    saved = signal.getsignal(signal.SIGTERM)
    try:
        scheduler._install_signal_handlers()  # scheduling.ServiceScheduler.work calls it, as rq's loop does
        assert signal.getsignal(signal.SIGTERM) == scheduler.request_stop
    finally:
        signal.signal(signal.SIGTERM, saved)
    scheduler.request_stop()  # our request_stop calls it, then ends the pause; our loop reads the flag
    assert scheduler._stop_requested is True
    assert scheduler.start() is scheduler._process is started[0], "RQScheduler.start() keeps its process in _process"
    retried = []
    monkeypatch.setattr(scheduler, "acquire_locks", lambda auto_start=False: retried.append(auto_start))

    class Probe(Worker):
        def clean_registries(self):
            pass

        def clean_group_registries(self):
            pass

    worker = Probe(["q"], connection=connection)
    worker.scheduler, worker.last_cleaned_at = scheduler, now()
    worker.run_maintenance_tasks()
    assert retried == [True], "rq's maintenance no longer restarts a dead scheduler process as Takeover does"


def test_get_version_is_a_cached_triple(connection):
    """held.py pops with BLMOVE where rq's own pop would (``get_version(connection) >= (6, 2, 0)``)."""
    version = get_version(connection)
    assert isinstance(version, tuple) and len(version) == 3 and all(isinstance(v, int) for v in version)
    assert get_version(connection) is version, "rq no longer caches the server version on the connection"


def test_a_failed_registry_entry_is_scored_as_quarantine_scores_it(connection):
    """held.py ``quarantine`` writes a failed job as rq's FailedJobRegistry.add does: score now +
    DEFAULT_FAILURE_TTL, ``ended_at`` in rq's format."""
    queue = Queue("q", connection=connection)
    job = queue.enqueue("os.getpid")
    job.ended_at = now()
    before = current_timestamp()
    FailedJobRegistry("q", connection=connection).add(job)
    score = connection.zscore(FailedJobRegistry("q", connection=connection).key, job.id)
    assert before + DEFAULT_FAILURE_TTL <= score <= current_timestamp() + DEFAULT_FAILURE_TTL
    stamp = as_text(connection.hget(job.key, "ended_at"))
    assert utcformat(utcparse(stamp)) == stamp


def test_send_webhooks_sends_the_matching_ones_never_raises_and_logs_the_url_where_we_mask_it(connection, caplog):
    """webhooks.send repeats ``job.send_webhooks(JobStatus.FAILED, exc_string=…)`` one webhook at a time:
    it sends only the webhooks of that status, never raises for one that cannot be sent, and logs
    their URL on the lines (and at the argument) journal.WEBHOOK_LINES masks."""
    from helpers import free_port
    from rq import Webhook

    from rq_worker_service import journal

    url = f"http://127.0.0.1:{free_port()}/hook/secret?token=secret"
    job = Queue("q", connection=connection).enqueue("os.getpid", webhooks=[
        Webhook(url, "failed", method="POST", timeout=1), Webhook("http://127.0.0.1:9/other", "finished")])
    with caplog.at_level(logging.DEBUG):
        job.send_webhooks(JobStatus.FAILED, exc_string="AbandonedJobError: gone")
    lines = [r for r in caplog.records if r.msg in journal.WEBHOOK_LINES]
    assert len(lines) == 2, f"rq no longer logs a webhook send as journal.WEBHOOK_LINES expects: {caplog.messages}"
    for line in lines:
        assert line.args[journal.WEBHOOK_LINES[line.msg]] == url
    assert "/other" not in caplog.text, "a webhook of another status was sent"
    source = inspect.getsource(Job.send_webhooks)
    assert ("for webhook in self.webhooks:" in source and "if webhook.job_status == status:" in source
            and "webhook.send(self, exc_string=exc_string)" in source), "rq's loop changed: webhooks.send repeats it"
