"""Each part of the service's tick on its own (``rq_worker_service.parts``), over the shared FakeClock,
fakeredis and a notifier that records what systemd would be told; then the order ``ServiceParts`` runs
them in, and which hooks each kind of tick runs."""

from __future__ import annotations

import json
import logging
import os
import threading

import fakeredis
import pytest
import redis
from helpers import FakeClock
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.utils import now

from rq_worker_service import exits, journal
from rq_worker_service.config import RedisTarget, Sentinels, load_settings
from rq_worker_service.connection import Outage
from rq_worker_service.fencing import BEATS_KEY, FENCED_KEY, HISTORY_KEY, Membership
from rq_worker_service.lifecycle import Lifecycle
from rq_worker_service.notify import Notifier
from rq_worker_service.parts import Part
from rq_worker_service.parts.assembly import BEAT_INTERVAL, ServiceParts
from rq_worker_service.parts.guard import RedisGuard
from rq_worker_service.parts.housekeeping import HeldJobs, OrphanSweep, SchedulerTakeover
from rq_worker_service.parts.jobwatch import JobWatch
from rq_worker_service.parts.liveness import FAILOVER_RETRY, Fencer, HostRecord, OwnRescue, PrimaryFollower, Watchdog
from rq_worker_service.parts.recycling import Recycler
from rq_worker_service.parts.reporting import COUNTS_VAR, Counters, StatusReporter
from rq_worker_service.parts.stops import STOP_GRACE, Cutter, StopAnnouncer
from rq_worker_service.rqcompat import HORSE_DIED
from rq_worker_service.worker_classes import ServiceSimpleWorker, ServiceWorker

TARGET = RedisTarget(url="redis://127.0.0.1:6379/0")
SENTINEL_TARGET = RedisTarget(url="redis://127.0.0.1/0",
                              sentinels=Sentinels(addresses=(("10.0.0.9", 26379),), master="mymaster"))


class Recorder(Notifier):
    """What the worker would tell systemd, in order, as text (no socket); the watchdog is armed."""

    def __init__(self) -> None:
        super().__init__()
        self.watchdog_usec = 30_000_000
        self.sent: list[str] = []

    def send(self, *fields: str, status: str | None = None) -> None:
        if status is not None:
            self._last_status = status
            fields += (f"STATUS={status}",)
        self.sent.append(" ".join(fields))

    def status_soon(self, render) -> None:
        self.sent.append(f"soon STATUS={render()}")


class Exited(Exception):
    pass


class Guard(RedisGuard):
    """The real guard, except that leaving the process raises instead."""

    def exit_now(self, message, status, error):
        raise Exited(message, status)


@pytest.fixture(autouse=True)
def no_job_context_left():
    """The journal's job context is the process's: a test that starts a job must not make later
    tests' records carry it (the contract test reads rq's picked-up line through the same filter)."""
    yield
    journal.clear_job()


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def notifier():
    return Recorder()


@pytest.fixture
def lifecycle(clock):
    return Lifecycle(10, clock)


@pytest.fixture
def reports():
    return []


@pytest.fixture
def guard(clock, notifier, reports):
    return Guard(Outage(TARGET, 10, clock), notifier, lambda: reports.append("status"), lambda: None)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def conn(server):
    return fakeredis.FakeRedis(server=server)


# -- the guard ------------------------------------------------------------------------------------


def test_guard_notes_an_outage_reports_it_and_goes_on(guard, reports, caplog):
    caplog.set_level(logging.INFO)
    def down():
        raise redis.exceptions.ConnectionError("Connection refused")

    assert guard.call(down) is None and guard.call(down) is None
    assert guard.outage.since == 1000.0 and reports == ["status", "status"]
    assert caplog.text.count("is unreachable: Connection refused") == 1  # each change logged once
    assert guard.call(lambda x: x + 1, 1) == 2
    assert guard.outage.since is None and "is reachable again" in caplog.text


def test_guard_ends_the_worker_when_the_acl_refuses(guard):
    def refused():
        raise redis.exceptions.NoPermissionError("this user has no permissions to run the 'zadd' command")

    with pytest.raises(Exited) as exited:
        guard.call(refused)
    assert exited.value.args[1] == exits.NOPERM and "zadd" in exited.value.args[0]


# -- liveness -------------------------------------------------------------------------------------


def test_watchdog_pings_on_each_beat(notifier):
    Watchdog(notifier).beat()
    assert notifier.sent == ["WATCHDOG=1"]


def test_a_lost_jobs_rescue_waits_until_no_job_is_in_hand(lifecycle):
    rescued: list[str] = []
    rescue = OwnRescue("w1", lifecycle, rescued.append)
    rescue.sweep()
    assert rescued == []
    lifecycle.start_job("j1 (f)")
    rescue.mark("Connection reset by peer")
    rescue.sweep()
    assert rescued == []  # its end may still come: the job runs
    lifecycle.end_job()
    rescue.sweep()
    rescue.sweep()
    assert rescued == ["its worker w1 could not record its end: Connection reset by peer"]
    assert rescue.lost is None


def test_the_primary_is_asked_for_at_most_every_failover_retry_and_a_change_marks_the_jobs(
        clock, guard, lifecycle, caplog):
    answers = iter(["10.0.0.1:6379", "10.0.0.1:6379", "10.0.0.2:6379"])
    asked: list[float] = []

    def refresh():
        asked.append(clock.now)
        return next(answers)

    rescue = OwnRescue("w1", lifecycle, lambda reason: None)
    follower = PrimaryFollower(SENTINEL_TARGET, None, refresh, guard, rescue, clock)
    follower.look()
    follower.beat()  # within FAILOVER_RETRY of the last look: no sentinel asked
    assert asked == [1000.0] and follower.primary == "10.0.0.1:6379"
    assert rescue.lost is None  # the first answer is no change
    clock.now += FAILOVER_RETRY
    follower.beat()
    clock.now += FAILOVER_RETRY
    follower.look()
    assert asked == [1000.0, 1002.0, 1004.0] and follower.primary == "10.0.0.2:6379"
    assert ("Following the new Redis primary 10.0.0.2:6379 of mymaster (was 10.0.0.1:6379): the sentinels failed "
            "over") in caplog.text
    assert rescue.lost == "the Redis primary changed from 10.0.0.1:6379 to 10.0.0.2:6379 around it"


def test_without_sentinels_no_primary_is_looked_for(clock, guard, lifecycle):
    follower = PrimaryFollower(TARGET, None, lambda: pytest.fail("asked a sentinel"), guard,
                               OwnRescue("w1", lifecycle, lambda reason: None), clock)
    follower.beat()
    follower.look()
    assert follower.primary is None


def test_a_sentinel_that_does_not_answer_is_an_outage(clock, guard, lifecycle, reports):
    def refresh():
        raise redis.exceptions.ConnectionError("no sentinel answered")

    PrimaryFollower(SENTINEL_TARGET, None, refresh, guard, OwnRescue("w1", lifecycle, print), clock).look()
    assert guard.outage.since == 1000.0 and reports == ["status"]


def fencer(conn, name: str, clock: FakeClock, guard: RedisGuard) -> Fencer:
    settings = load_settings({"RQ_WORKER_INSTANCE": name})
    return Fencer(Membership(conn, name, period=3, clock=clock), guard, lambda: ["default"], settings,
                  lambda: "host-" + name)


def test_fencer_joins_beats_and_leaves(conn, clock, guard, caplog):
    a = fencer(conn, "a", clock, guard)
    a.started()
    assert conn.zscore(BEATS_KEY, "a") is not None and "Rejoining" not in caplog.text
    a.beat()
    a.teardown()
    assert conn.zscore(BEATS_KEY, "a") is None


def test_a_fenced_worker_exits_at_its_next_beat_and_logs_who_fenced_it_when_it_rejoins(conn, clock, guard, caplog):
    a = fencer(conn, "a", clock, guard)
    a.started()
    conn.hset(FENCED_KEY, "a", json.dumps({"by": "b", "at": 1}))
    with pytest.raises(Exited) as exited:
        a.beat()
    assert exited.value.args[1] == exits.TEMPFAIL and "worker a was fenced" in exited.value.args[0]
    a.started()
    assert "Rejoining: this worker had been fenced by b" in caplog.text


def test_a_worker_fenced_while_its_horse_died_leaves_the_job_to_the_fencer(worker, monkeypatch):
    """A horse that ended itself for its lease: the job was re-queued by the fencer and may run
    elsewhere; recording the death (and its default retry) would run it once more."""
    def leave(message, status, error):
        raise Exited(message, status)
    monkeypatch.setattr(worker.parts.guard, "exit_now", leave)
    worker.parts.fencer.started()
    queue = Queue("default", connection=worker.connection)
    job = queue.enqueue("os.getpid")
    worker.connection.hset(FENCED_KEY, worker.name, json.dumps({"by": "b", "at": 1}))
    with pytest.raises(Exited) as exited:
        worker.handle_job_failure(job, queue, exc_string=f"{HORSE_DIED}; waitpid returned 9 (signal 9); ")
    assert exited.value.args[1] == exits.TEMPFAIL
    assert job.get_status(refresh=True) == "queued" and worker.connection.zcard("rq:failed:default") == 0


def _popped(worker):
    """A job popped by ``worker`` (in its held list, in hand), and its queue."""
    queue = Queue("default", connection=worker.connection)
    queue.enqueue("os.getpid")
    queue_key, job_id = worker._pop(None)
    return worker._fetch_popped(queue_key, job_id)


def _exits_raise(worker, monkeypatch):
    def leave(message, status, error):
        raise Exited(message, status)
    monkeypatch.setattr(worker.parts.guard, "exit_now", leave)


def test_a_worker_fenced_with_a_pop_in_hand_does_not_start_it_and_puts_it_back_as_it_exits(worker, monkeypatch):
    """A blocking pop served after the fencing (or sent after it): the registration reads the mark
    under its watch and refuses; the worker puts what it holds back and exits 75."""
    _exits_raise(worker, monkeypatch)
    worker.parts.fencer.started()
    job, queue = _popped(worker)
    worker.connection.hset(FENCED_KEY, worker.name, json.dumps({"by": "b", "at": 1}))
    with pytest.raises(Exited) as exited:
        worker.execute_job(job, queue)
    assert exited.value.args[1] == exits.TEMPFAIL
    assert queue.job_ids == [job.id] and worker.parts.held.ids() == []
    assert job.get_status(refresh=True) == "queued" and queue.started_job_registry.count == 0


def test_a_worker_fenced_between_its_registration_and_its_started_mark_writes_nothing(worker):
    """Claimed by a fencer that has not yet rescued the job: the STARTED mark reads the mark in its
    script and writes nothing (``TakenBack``): the fencer's rescue re-queues the job."""
    from rq_worker_service.worker import TakenBack

    worker.parts.fencer.started()
    job, queue = _popped(worker)
    worker.execution = worker.prepare_execution(job)
    worker.connection.hset(FENCED_KEY, worker.name, json.dumps({"by": "b", "at": 1}))
    with pytest.raises(TakenBack):
        worker.prepare_job_execution(job)
    assert job.get_status(refresh=True) == "queued" and not worker.connection.hget(job.key, "started_at")
    worker.connection.hdel(FENCED_KEY, worker.name)  # (rejoined: its own again)
    worker.prepare_job_execution(job)
    assert job.get_status(refresh=True) == "started"


def test_a_worker_fenced_before_its_pop_takes_nothing_and_exits(worker, monkeypatch):
    _exits_raise(worker, monkeypatch)
    worker.parts.fencer.started()
    queue = Queue("default", connection=worker.connection)
    job = queue.enqueue("os.getpid")
    worker.connection.hset(FENCED_KEY, worker.name, json.dumps({"by": "b", "at": 1}))
    monkeypatch.setattr(worker, "heartbeat", lambda *a, **k: None)  # (woken past its beat: the pop is next)
    with pytest.raises(Exited) as exited:
        worker.dequeue_job_and_maintain_ttl(1)
    assert exited.value.args[1] == exits.TEMPFAIL and queue.job_ids == [job.id]


def test_a_simple_worker_woken_past_its_fencing_mid_job_does_not_write_the_job_s_end(conn, monkeypatch):
    """Its job ran in its main process through the freeze; the fencer re-queued it. When the job returns,
    a last beat older than half a period means a fencer may have claimed it: it beats, and exits there
    if fenced, before rq writes the end. A recent beat adds no Redis call (no fencer can have claimed)."""
    worker = ServiceSimpleWorker(["default"], connection=conn, settings=load_settings({}), notifier=Recorder())
    _exits_raise(worker, monkeypatch)
    membership, now = worker.parts.fencer.membership, [100.0]
    membership.clock = lambda: now[0]
    worker.parts.fencer.started()
    queue = Queue("default", connection=conn)
    job = queue.enqueue("os.getpid")
    conn.hset(FENCED_KEY, worker.name, json.dumps({"by": "b", "at": 1}))
    calls: list[str] = []
    monkeypatch.setattr(conn, "evalsha", lambda *a, **k: calls.append("evalsha") or 1)
    now[0] += membership.period / 2  # (a tick of the watch thread beat this long ago: no one may fence yet)
    worker.handle_execution_ended(job, queue, 60)
    assert calls == []
    monkeypatch.undo()
    _exits_raise(worker, monkeypatch)
    now[0] += 0.1
    with pytest.raises(Exited) as exited:
        worker.handle_execution_ended(job, queue, 60)
    assert exited.value.args[1] == exits.TEMPFAIL


def _ended_job(worker, conn):
    queue = Queue("default", connection=conn)
    job = queue.enqueue("os.getpid")
    with conn.pipeline() as pipe:
        execution = Execution.create(job, 60, pipe, worker_name=worker.name)
        pipe.execute()
    job.started_at = job.ended_at = now()
    return job, queue, execution


@pytest.mark.parametrize("fenced_after_the_read", [False, True])
def test_a_simple_worker_marked_fenced_writes_no_end_whenever_the_mark_lands(conn, monkeypatch,
                                                                            fenced_after_the_read):
    """The look in ``handle_execution_ended`` can be passed right before a pause past the period; rq's
    end transaction is then written by a fenced worker over the re-run's. The worker reads its mark on
    rq's watched pipeline (before its MULTI): marked before (a pause before the end), it exits there;
    marked after the read, the watched mark fails rq's EXEC and rq's retry reads it."""
    worker = ServiceSimpleWorker(["default"], connection=conn, settings=load_settings({}), notifier=Recorder())
    _exits_raise(worker, monkeypatch)
    worker.parts.fencer.started()
    job, queue, execution = _ended_job(worker, conn)
    mark = json.dumps({"by": "b", "at": 1})
    if fenced_after_the_read:
        move = Queue.move_dependents_to_ready

        def fenced_meanwhile(self, *args, **kwargs):
            conn.hset(FENCED_KEY, worker.name, mark)  # (another connection than rq's pipeline)
            return move(self, *args, **kwargs)

        monkeypatch.setattr(Queue, "move_dependents_to_ready", fenced_meanwhile)
    else:
        conn.hset(FENCED_KEY, worker.name, mark)
    with pytest.raises(Exited) as exited:
        worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    assert exited.value.args[1] == exits.TEMPFAIL
    assert Job.fetch(job.id, connection=conn).get_status() != "finished" and not Job.fetch(
        job.id, connection=conn).results()
    assert "move_dependents_to_ready" not in vars(queue)


def test_a_simple_worker_not_fenced_writes_its_end(conn, monkeypatch):
    worker = ServiceSimpleWorker(["default"], connection=conn, settings=load_settings({}), notifier=Recorder())
    worker.parts.fencer.started()
    job, queue, execution = _ended_job(worker, conn)
    job._result = 42
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    assert Job.fetch(job.id, connection=conn).get_status() == "finished"
    assert "move_dependents_to_ready" not in vars(queue)

def test_the_sweep_fences_a_silent_member_and_records_it(conn, clock, guard, caplog):
    a, b = fencer(conn, "a", clock, guard), fencer(conn, "b", clock, guard)
    a.started()
    b.started()
    for _ in range(3):  # b is silent: a sees its beat count stand still for a period
        clock.now += 1
        a.beat()
        a.sweep()
    assert not conn.hexists(FENCED_KEY, "b")
    clock.now += 1
    a.beat()
    a.sweep()
    assert json.loads(conn.hget(FENCED_KEY, "b"))["by"] == "a"
    assert json.loads(conn.lindex(HISTORY_KEY, 0))["worker"] == "b"
    assert "Fenced worker b on host host-b" in caplog.text and "rescued 0 job(s)" in caplog.text
    a.sweep()
    assert caplog.text.count("Fenced worker b") == 1  # claimed once


# -- stops ----------------------------------------------------------------------------------------


class RqWorker:
    """What of rq's worker the announcer touches."""

    def __init__(self, redis_down: bool = False) -> None:
        self.scheduler: object | None = None
        self._shutdown_requested_date = None
        self.redis_down = redis_down
        self.calls: list[str] = []

    def set_shutdown_requested_date(self) -> None:
        self.calls.append("shutdown date")
        if self.redis_down:
            raise redis.exceptions.ConnectionError("down")

    def stop_scheduler(self) -> None:
        self.calls.append("stop scheduler")


def test_an_idle_stop_is_announced_once(lifecycle, notifier, caplog):
    caplog.set_level(logging.INFO)
    worker = RqWorker()
    announcer = StopAnnouncer(lifecycle, notifier, lambda: "Stopping", worker)
    announcer.tick(True)
    assert notifier.sent == []
    lifecycle.request_stop("SIGTERM")
    announcer.tick(False)
    announcer.teardown()
    assert notifier.sent == ["STOPPING=1 STATUS=Stopping"]
    assert caplog.text.count("Warm shutdown: idle, exiting") == 1 and worker.calls == []


@pytest.mark.parametrize("redis_down", [False, True])
def test_a_stop_with_a_job_in_hand_is_written_to_rqs_hash_and_stops_the_scheduler(lifecycle, notifier, caplog,
                                                                                   redis_down):
    caplog.set_level(logging.INFO)
    worker = RqWorker(redis_down)
    worker.scheduler = object()
    lifecycle.start_job("j1 (f)")
    lifecycle.request_stop("SIGTERM")
    StopAnnouncer(lifecycle, notifier, lambda: "Stopping: waiting", worker).teardown()
    assert "Warm shutdown: taking no new job; waiting up to 10s (RQ_SHUTDOWN_TIMEOUT) for job j1 (f)" in caplog.text
    assert worker._shutdown_requested_date is not None
    assert worker.calls == ["shutdown date", "stop scheduler"]  # a Redis error there does not stop the stop
    assert notifier.sent == ["STOPPING=1 STATUS=Stopping: waiting"]


def test_a_reload_is_announced_with_the_job_it_waits_for(lifecycle, notifier, caplog):
    caplog.set_level(logging.INFO)
    lifecycle.start_job("j1 (f)")
    lifecycle.request_reload()
    StopAnnouncer(lifecycle, notifier, lambda: "Reloading", RqWorker()).tick(True)
    assert "Reload requested: finishing job j1 (f) first" in caplog.text
    assert [m.split(" ")[0] for m in notifier.sent] == ["RELOADING=1"] and notifier.sent[0].endswith("STATUS=Reloading")


def test_the_cut_comes_once_at_the_deadline_and_the_stop_timeout_stays_ahead(clock, lifecycle, notifier, caplog):
    cuts: list[int] = []
    cutter = Cutter(lifecycle, notifier, lambda: cuts.append(1), interval=5)
    lifecycle.start_job("j1 (f)")
    cutter.tick(True)
    assert notifier.sent == [] and cuts == []  # no stop asked: nothing to extend or cut
    lifecycle.request_stop("SIGTERM")
    clock.now += 9
    cutter.tick(True)
    assert cuts == [] and notifier.sent == [f"EXTEND_TIMEOUT_USEC={int((5 + STOP_GRACE) * 1e6)}"]
    clock.now += 1
    cutter.tick(False)
    cutter.tick(False)
    assert cuts == [1]
    assert ("Cold shutdown: job j1 (f) interrupted by shutdown: still running RQ_SHUTDOWN_TIMEOUT=10s after the stop "
            "request; stopping it") in caplog.text


# -- reporting ------------------------------------------------------------------------------------

KEY = "rq:worker:w1"


def test_counters_carry_across_a_reload(conn, clock, guard, monkeypatch):
    monkeypatch.setenv(COUNTS_VAR, "40,2")
    counters = Counters(conn, lambda: KEY, guard, every=1.0, clock=clock)
    counters.started()
    assert (counters.done, counters.failed) == (40, 2)
    assert conn.hmget(KEY, ["successful_job_count", "failed_job_count"]) == [b"40", b"2"]
    assert COUNTS_VAR not in os.environ


@pytest.mark.parametrize("handed", ["40,2,7", "40;2", "forty,2", ""])
def test_counters_start_at_zero_from_a_hand_over_they_do_not_know(conn, clock, guard, monkeypatch, handed):
    """A re-exec across versions: a form other than "done,failed" of digits is dropped, not written."""
    monkeypatch.setenv(COUNTS_VAR, handed)
    counters = Counters(conn, lambda: KEY, guard, every=1.0, clock=clock)
    counters.started()
    assert (counters.done, counters.failed) == (0, 0)
    assert COUNTS_VAR not in os.environ


def test_counters_are_read_once_per_status_interval_after_jobs_and_on_main_loop_ticks(conn, clock, guard):
    counters = Counters(conn, lambda: KEY, guard, every=1.0, clock=clock)
    conn.hset(KEY, mapping={"successful_job_count": 1, "failed_job_count": 0})
    counters.job_ended()
    assert counters.done == 1
    conn.hset(KEY, "successful_job_count", 2)
    clock.now += 0.5
    counters.job_ended()
    counters.tick(False)  # the simple worker's watch thread does not read them
    assert counters.done == 1
    counters.tick(True)
    assert counters.done == 2
    conn.hset(KEY, "successful_job_count", 3)
    clock.now += 0.5
    counters.job_ended()
    assert counters.job_counts == (3, 0)


def test_counters_keep_the_last_counts_while_redis_is_down(conn, server, clock, guard):
    counters = Counters(conn, lambda: KEY, guard, every=1.0, clock=clock)
    conn.hset(KEY, mapping={"successful_job_count": 7, "failed_job_count": 1})
    counters.refresh()
    server.connected = False
    assert counters.job_counts == (7, 1)


def test_the_status_line(clock, lifecycle, notifier, guard, conn, caplog):
    caplog.set_level(logging.INFO)
    counters = Counters(conn, lambda: KEY, guard, every=1.0, clock=clock)
    follower = PrimaryFollower(TARGET, None, lambda: None, guard, OwnRescue("w1", lifecycle, print), clock)
    status = StatusReporter(notifier, lifecycle, guard.outage, counters, follower, "w1", lambda: ["high", "low"])
    status.started()
    assert notifier.sent == [f"READY=1 MAINPID={os.getpid()} STATUS=Idle, listening on high, low · 0 done, 0 failed"]
    assert "Ready: worker w1 listening on high, low" in caplog.text
    counters.done, follower.primary = 3, "10.0.0.2:6379"
    lifecycle.start_job("j1 (f)")
    status.job_started()
    assert notifier.sent[-1] == "soon STATUS=Running job j1 (f) for 0s · primary 10.0.0.2:6379 · 3 done, 0 failed"
    guard.outage.failed(redis.exceptions.ConnectionError("refused"))
    clock.now += 5
    status.tick(False)
    assert notifier.sent[-1] == ("STATUS=Redis unreachable at redis://127.0.0.1:6379/0 for 5s, retrying · primary "
                                 "10.0.0.2:6379 · 3 done, 0 failed")


# -- housekeeping ---------------------------------------------------------------------------------


class Takeover:
    def __init__(self) -> None:
        self.ticks: list[object] = []

    def tick(self, scheduler) -> None:
        self.ticks.append(scheduler)


def test_scheduling_is_taken_over_from_the_main_loop_only_and_not_while_stopping(lifecycle):
    takeover, scheduler = Takeover(), object()
    part = SchedulerTakeover(takeover, lifecycle, lambda: scheduler)  # type: ignore[arg-type]
    part.tick(False)
    part.tick(True)
    assert takeover.ticks == [scheduler]
    lifecycle.request_reload()
    part.tick(True)
    assert takeover.ticks == [scheduler]


def test_the_orphan_sweep_is_the_intermediate_watch(conn):
    swept: list[int] = []

    class Watch:
        def sweep(self) -> list[str]:
            swept.append(1)
            return []

    OrphanSweep(Watch()).sweep()  # type: ignore[arg-type]
    assert swept == [1]


# -- the simple worker's watch thread -------------------------------------------------------------


def test_the_watch_ticks_alive_until_the_jobs_timeout_and_grace_have_passed(clock):
    ticks: list[bool] = []
    watch = JobWatch(ticks.append, interval=3600, clock=clock)
    watch.tick_once()
    assert ticks == []  # no job in hand: the main loop ticks
    watch.watch(30)
    watch.tick_once()
    clock.now += 89
    watch.tick_once()
    clock.now += 1
    watch.tick_once()
    assert ticks == [True, True, False]  # 30 s + rq's 60 s: no more watchdog pings
    job = object()
    watch.watch(-1, job)
    assert watch.job is job  # the worker's tick keeps it alive (rq's heartbeats) while it ticks alive
    clock.now += 10_000
    watch.tick_once()
    watch.unwatch()
    assert watch.job is None
    watch.tick_once()
    assert ticks == [True, True, False, True]


def test_a_wake_reaches_the_watch_thread_at_once():
    ticked = threading.Event()
    watch = JobWatch(lambda alive: ticked.set(), interval=3600)
    watch.watch(None)
    watch.woken()
    assert ticked.wait(5)


# -- the parts together ---------------------------------------------------------------------------


class Hooks(Part):
    """Records each hook it gets, by name."""

    def __init__(self, name: str, calls: list[str], fail_sweep: bool = False) -> None:
        self.name, self.calls, self.fail_sweep = name, calls, fail_sweep

    def beat(self) -> None:
        self.calls.append(f"{self.name}.beat")

    def tick(self, main_loop: bool) -> None:
        self.calls.append(f"{self.name}.tick({main_loop})")

    def sweep(self) -> None:
        self.calls.append(f"{self.name}.sweep")
        if self.fail_sweep:
            raise redis.exceptions.ConnectionError("down")

    def job_started(self) -> None:
        self.calls.append(f"{self.name}.job_started")

    def job_ended(self) -> None:
        self.calls.append(f"{self.name}.job_ended")

    def teardown(self) -> None:
        self.calls.append(f"{self.name}.teardown")


@pytest.fixture
def worker(conn):
    return ServiceWorker(["default"], connection=conn, settings=load_settings({}), notifier=Recorder())


@pytest.fixture
def parts(worker, clock, notifier):
    p = ServiceParts(load_settings({}), notifier, clock)
    p.attach(worker)
    return p


def test_the_parts_run_in_the_order_the_tick_has_always_had(parts, worker):
    assert [type(p) for p in parts.order] == [HostRecord, Watchdog, PrimaryFollower, OwnRescue, Fencer, StopAnnouncer,
                                              Cutter, Counters, StatusReporter, SchedulerTakeover, HeldJobs,
                                              OrphanSweep, Recycler]
    simple = ServiceSimpleWorker(["default"], connection=worker.connection, settings=load_settings({}),
                                 notifier=Recorder())
    assert type(simple.parts.order[-1]) is JobWatch and simple.parts.order[-1] is simple.parts.watch


def test_which_hooks_each_tick_runs(parts):
    calls: list[str] = []
    parts.order = [Hooks("a", calls), Hooks("b", calls)]
    parts.tick()
    assert calls == ["a.beat", "b.beat", "a.tick(True)", "b.tick(True)", "a.sweep", "b.sweep"]
    calls.clear()
    parts.tick(alive=False, main_loop=False)  # the simple worker's watch thread, past the job's limit
    assert calls == ["a.tick(False)", "b.tick(False)"]
    calls.clear()
    parts.tick(main_loop=False)
    assert calls == ["a.beat", "b.beat", "a.tick(False)", "b.tick(False)"]
    calls.clear()
    parts.lifecycle.request_stop("SIGTERM")
    parts.tick()
    assert calls == ["a.beat", "b.beat", "a.tick(True)", "b.tick(True)"]  # no sweeping while stopping


def test_a_redis_error_ends_the_sweep_for_this_tick(parts, notifier):
    calls: list[str] = []
    parts.order = [Hooks("a", calls, fail_sweep=True), Hooks("b", calls)]
    parts.tick()
    assert calls[-1] == "a.sweep" and parts.outage.since is not None
    assert notifier.sent[-1].startswith("STATUS=Redis unreachable")


def test_around_a_job_and_at_the_end(parts):
    calls: list[str] = []
    parts.order = [Hooks("a", calls), Hooks("b", calls)]
    parts.job_started("j1", "f", "default")
    assert parts.lifecycle.job is not None and parts.lifecycle.job.label == "j1 (f)"
    parts.job_ended()
    assert parts.lifecycle.job is None
    parts.teardown()
    assert calls == ["a.job_started", "b.job_started", "a.job_ended", "b.job_ended", "b.teardown", "a.teardown"]


def test_between_jobs_a_tick_runs_only_when_due(parts, clock):
    calls: list[str] = []
    parts.order = [Hooks("a", calls)]
    parts.between_jobs()
    assert calls.count("a.beat") == 1
    clock.now += parts.interval - 0.1
    parts.between_jobs()
    assert calls.count("a.beat") == 1
    parts.wake()
    parts.between_jobs()
    assert calls.count("a.beat") == 2
    parts.rescue.mark("lost")  # a job's end may be lost: tick (and sweep) at once
    parts.between_jobs()
    assert calls.count("a.beat") == 3
    parts.rescue.lost = None
    clock.now += parts.interval
    parts.between_jobs()
    assert calls.count("a.beat") == 4


def test_a_horse_starts_after_a_tick_when_one_is_due(parts, clock):
    """Nothing ticks between the pop and the horse: a main loop silent in between (paused, a slow
    Redis) handed the horse a lease already past its limit, and the horse ended a job that never ran."""
    calls: list[str] = []
    parts.order = [Hooks("a", calls)]
    parts.between_jobs()
    parts.horse_starting()
    assert calls.count("a.beat") == 1  # the pop's tick is recent: none more
    clock.now += parts.interval  # silent for a tick between the pop and the horse
    parts.horse_starting()
    assert calls.count("a.beat") == 2 and calls[-1] == "a.sweep"


def test_sweeps_a_watch_thread_tick_skipped_are_done_before_the_next_pop(parts, clock):
    """The simple worker's watch thread ticks through a long job without sweeping; each of its
    ticks pushes the main loop's next one a tick away, so with back-to-back long jobs the main loop
    would never sweep (fence, rescue, re-queue orphans). The sweeps it owes are done at once."""
    calls: list[str] = []
    parts.order = [Hooks("a", calls)]
    parts.between_jobs()
    clock.now += parts.interval
    parts.tick(main_loop=False)  # the job ran a tick long; it ends now
    parts.between_jobs()
    assert calls[-2:] == ["a.tick(True)", "a.sweep"]
    calls.clear()
    parts.between_jobs()  # owed once
    assert calls == []
    parts.lifecycle.request_stop("SIGTERM")
    parts.tick(main_loop=False)
    parts.between_jobs()
    assert calls == ["a.beat", "a.tick(False)"]  # nothing owed while stopping: no sweeping then


def test_rqs_heartbeat_goes_out_once_per_beat_interval_unless_rq_gives_a_timeout(parts, clock):
    assert parts.rq_beat_due(None)
    assert not parts.rq_beat_due(None)
    assert parts.rq_beat_due(90)  # rq's own beat with a timeout (after a job) always goes out
    clock.now += BEAT_INTERVAL
    assert parts.rq_beat_due(None)


def test_a_real_tick_tells_systemd_in_order(parts, notifier, worker):
    """Watchdog first, then the stop, the extended timeout, and no STATUS= repeated."""
    parts.started()
    notifier.sent.clear()
    parts.job_started("j1", "f", "default")
    parts.lifecycle.request_stop("SIGTERM")
    parts.tick()
    kinds = [m.split("=")[0] for m in notifier.sent]
    assert kinds == ["soon STATUS", "WATCHDOG", "STOPPING", "EXTEND_TIMEOUT_USEC"], notifier.sent
    assert worker.connection.zscore(BEATS_KEY, worker.name) is not None
