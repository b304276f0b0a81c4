"""One slot enqueued at most once (``cron.enqueue``) and the scheduler's loop step (``cron.scheduler``), against
fakeredis (which runs WATCH/MULTI/EXEC and the lease's Lua): stock rq's own records of the job are there,
another's lease, a handled slot or an existing job id stop it, a write between WATCH and EXEC re-checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from rq import Queue, cron_job_registry
from rq.cron import get_cron_job_ids
from rq.job import Job

from rq_worker_service import keys
from rq_worker_service.cron.enqueue import LeaseLost, Outcome, enqueue_slot, last_marks, mark
from rq_worker_service.cron.lease import Lease
from rq_worker_service.cron.schedule import Entry, Schedule
from rq_worker_service.cron.scheduler import CronScheduler
from rq_worker_service.cron.settings import CronSettings
from rq_worker_service.cron.slots import job_id

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def report(value: int) -> int:
    return value


def entry(name: str = "report", interval: int = 60, catch_up: str = "skip", **job_options) -> Entry:
    return Entry(name=name, func=report, func_name=f"{__name__}.report", queue_name="default", args=(1,), kwargs={},
                 interval=interval, cron=None, zone="UTC", catch_up=catch_up, job_options=job_options)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def conn(server):
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def lease(conn):
    held = Lease(conn, "a:1", 10)
    held.acquire()
    return held


def test_a_slot_is_rq_s_ordinary_job_with_rq_s_cron_records_and_its_mark(conn, lease):
    e = entry(result_ttl=77, meta={"k": "v"})
    queue = Queue("default", connection=conn)
    outcome = enqueue_slot(conn, queue, e, T0, lease.value, lambda enq: json.dumps({"e": enq}))
    assert outcome is Outcome.ENQUEUED
    jid = job_id(e, T0)
    job = Job.fetch(jid, connection=conn)
    assert (job.func_name, job.args, job.result_ttl, job.meta) == (f"{__name__}.report", (1,), 77, {"k": "v"})
    assert Queue("default", connection=conn).job_ids == [jid]
    assert get_cron_job_ids("report", conn) == [jid]  # rq's job history, as CronJob.enqueue keeps it
    assert cron_job_registry.get_names(conn) == ["report"]
    assert last_marks(conn) == {"report": T0}
    assert json.loads(conn.hget(keys.cron_jobs(), "report")) == {"e": True}


def test_a_handled_slot_is_not_enqueued_again(conn, lease):
    e, queue = entry(), Queue("default", connection=conn)
    assert enqueue_slot(conn, queue, e, T0, lease.value, lambda enq: "{}") is Outcome.ENQUEUED
    assert enqueue_slot(conn, queue, e, T0, lease.value, lambda enq: "{}") is Outcome.DONE
    assert enqueue_slot(conn, queue, e, T0 - timedelta(minutes=1), lease.value, lambda enq: "{}") is Outcome.DONE
    assert queue.count == 1


def test_an_existing_job_id_is_marked_but_not_enqueued_again(conn, lease):
    e, queue = entry(), Queue("default", connection=conn)
    queue.enqueue(report, 5, job_id=job_id(e, T0))
    assert enqueue_slot(conn, queue, e, T0, lease.value, lambda enq: json.dumps(enq)) is Outcome.EXISTED
    assert queue.count == 1 and Job.fetch(job_id(e, T0), connection=conn).args == (5,)
    assert last_marks(conn) == {"report": T0}
    assert conn.hget(keys.cron_jobs(), "report") == b"false"


def test_without_the_lease_nothing_is_written(conn, lease):
    e, queue = entry(), Queue("default", connection=conn)
    with pytest.raises(LeaseLost):
        enqueue_slot(conn, queue, e, T0, "1 someone:else", lambda enq: "{}")
    with pytest.raises(LeaseLost):
        mark(conn, e, T0, "1 someone:else", "{}")
    assert queue.count == 0 and last_marks(conn) == {} and conn.hlen(keys.cron_jobs()) == 0


def test_a_lease_taken_between_watch_and_exec_aborts_the_slot(server, conn, lease):
    """The paused ex-leader: it checked the lease, froze, and the lease went to another before its EXEC."""
    e, queue = entry(), Queue("default", connection=conn)
    other = fakeredis.FakeRedis(server=server)
    calls = []

    def record(enqueues: bool) -> str:  # runs after the checks, before EXEC
        calls.append(enqueues)
        if len(calls) == 1:
            other.set(keys.cron_lease(), "2 b:2")
        return "{}"

    with pytest.raises(LeaseLost):
        enqueue_slot(conn, queue, e, T0, lease.value, record)
    assert calls == [True]
    assert queue.count == 0 and not conn.exists(Job.key_for(job_id(e, T0))) and last_marks(conn) == {}


def test_a_slot_another_leader_handled_meanwhile_is_left_to_it(server, conn, lease):
    e, queue = entry(), Queue("default", connection=conn)
    other = fakeredis.FakeRedis(server=server)

    def record(enqueues: bool) -> str:
        other.hset(keys.cron_last(), e.name, repr(T0.timestamp()))
        return "{}"

    assert enqueue_slot(conn, queue, e, T0, lease.value, record) is Outcome.DONE
    assert queue.count == 0


def test_a_mark_never_moves_back(conn, lease):
    e = entry()
    assert mark(conn, e, T0, lease.value, "{}")
    assert not mark(conn, e, T0 - timedelta(seconds=1), lease.value, "{}")
    assert last_marks(conn) == {"report": T0}


# -- the scheduler's step ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0 + timedelta(seconds=5)

    def __call__(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


CRON = CronSettings(config="cron_config.py", zone="UTC", catch_up="skip", lease_period=12, grace=60)


def scheduler(conn, clock: Clock, pid: int, *entries: Entry) -> CronScheduler:
    return CronScheduler(conn, Schedule(source="cron_config.py", entries=entries or (entry(),)),
                         lambda name: Queue(name, connection=conn), CRON, "host", pid, clock=clock, now=clock.now)


def test_of_two_schedulers_one_enqueues_each_slot_once(conn, caplog):
    caplog.set_level("INFO", "rq_worker_service.cron")
    clock = Clock()
    a, b = scheduler(conn, clock, 1), scheduler(conn, clock, 2)
    for _ in range(10):
        a.step()
        b.step()
        clock.advance(30)
    queue = Queue("default", connection=conn)
    slots = [T0 + timedelta(minutes=m) for m in range(5)]  # 12:00 (at once, as rq), then each minute to 12:04:35
    assert sorted(queue.job_ids) == sorted(job_id(entry(), s) for s in slots)
    record = json.loads(conn.hget(keys.cron_jobs(), "report"))
    assert (record["enqueued_total"], record["last_job_id"], record["holder"]) == (5, job_id(entry(), slots[-1]),
                                                                                   "host:1")
    roles = {h.decode(): json.loads(r)["role"] for h, r in conn.hgetall(keys.cron_schedulers()).items()}
    assert roles == {"host:1": "leader", "host:2": "standby"}
    assert b.summary() == "standby: lease held by host:1"
    assert a.summary().startswith("leader (token 1): next report at 2026-11-30 12:05:00 UTC")
    lines = [r for r in caplog.records if r.getMessage().startswith("Enqueued report")]
    assert [(r.RQ_CRON_JOB, r.RQ_CRON_SLOT, r.RQ_JOB_ID) for r in lines] == [  # type: ignore[attr-defined]
        ("report", s.isoformat(), job_id(entry(), s)) for s in slots]
    took = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Took over")]
    assert took == ["Took over the cron lease (token 1) from nobody"]


def test_a_restart_does_not_fire_an_interval_job_again(conn):
    """rq's own scheduler runs an interval job at each start; the mark in Redis says it ran."""
    clock = Clock()
    a = scheduler(conn, clock, 1)
    a.step()
    a.release()
    clock.advance(10)  # 12:00:15: the same slot
    b = scheduler(conn, clock, 2)
    b.step()
    assert b.lease.held
    assert Queue("default", connection=conn).count == 1
    assert json.loads(conn.lindex(keys.cron_handovers(), 0))["previous"] == "host:1"


def test_missed_slots_beyond_the_grace_are_skipped_and_counted_within_it_enqueued(conn):
    clock = Clock()
    a = scheduler(conn, clock, 1)
    a.step()
    a.release()
    clock.advance(10 * 60)  # ten slots missed; 12:10:05 now; the grace (60 s) keeps 12:10 and 12:09:30… only 12:10
    b = scheduler(conn, clock, 2)
    b.step()
    queue = Queue("default", connection=conn)
    assert sorted(queue.job_ids) == sorted(job_id(entry(), T0 + timedelta(minutes=m)) for m in (0, 10))
    record = json.loads(conn.hget(keys.cron_jobs(), "report"))
    assert (record["enqueued_total"], record["skipped_total"]) == (2, 9)


def test_a_leader_past_its_own_lease_enqueues_nothing_and_finds_it_lost(conn):
    clock = Clock()
    a, b = scheduler(conn, clock, 1), scheduler(conn, clock, 2)
    a.step()
    conn.delete(keys.cron_lease())  # (expired while a was frozen)
    b.step()
    clock.advance(60)  # a wakes: its slot 12:01 is due, but its lease is gone
    a.next_at.clear()
    a.lease.renewed_at = clock.mono  # even believing itself renewed, the transaction's check stops it
    a._enqueue_due()
    assert not a.lease.held
    assert Queue("default", connection=conn).count == 1
    b.step()
    assert Queue("default", connection=conn).count == 2


def test_the_leader_drops_what_the_schedule_no_longer_has_and_schedulers_gone_silent(conn):
    clock = Clock()
    conn.hset(keys.cron_jobs(), "gone", "{}")
    conn.hset(keys.cron_schedulers(), "dead:9", json.dumps({"beat": clock.wall.timestamp() - 37}))
    conn.hset(keys.cron_schedulers(), "slow:8", json.dumps({"beat": clock.wall.timestamp() - 35}))
    a = scheduler(conn, clock, 1, entry("one"), entry("two", interval=3600))
    a.step()
    assert sorted(conn.hkeys(keys.cron_jobs())) == [b"one", b"two"]
    assert sorted(conn.hkeys(keys.cron_schedulers())) == [b"host:1", b"slow:8"]
    a.release()
    assert sorted(conn.hkeys(keys.cron_schedulers())) == [b"slow:8"]
    assert conn.get(keys.cron_lease()) is None


def test_slots_are_judged_by_the_redis_servers_clock_not_the_hosts(server, conn, monkeypatch):
    """Two hosts whose clocks disagree by five minutes compute the same slots: both read Redis's TIME. With
    the host's wall clock a host ahead taking over skipped the slots still to come as missed and left a mark
    in the future that held the others back (the review's finding)."""
    redis_now = [T0.timestamp() + 5]
    monkeypatch.setattr(type(conn), "time", lambda self: (int(redis_now[0]), int(redis_now[0] % 1 * 1e6)),
                        raising=False)
    boot = [1000.0]
    s = CronScheduler(conn, Schedule(source="cron_config.py", entries=(entry(),)),
                      lambda name: Queue(name, connection=conn), CRON, "host", 1, clock=lambda: boot[0])
    s.step()
    assert Queue("default", connection=conn).job_ids == [job_id(entry(), T0)]
    assert last_marks(conn) == {"report": T0}
    redis_now[0] += 60
    boot[0] += 60
    s.step()
    slots = [T0, T0 + timedelta(minutes=1)]
    assert Queue("default", connection=conn).job_ids == [job_id(entry(), slot) for slot in slots]
    assert s.now() == datetime.fromtimestamp(redis_now[0], UTC)  # carried on by the boot clock between looks
