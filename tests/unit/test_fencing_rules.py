"""Membership, deadlines and claims (``fencing``) and the intermediate-list watch (``orphans``), on fakeredis
with Lua: a fake clock for the members, Redis server time moved by rewriting the deadlines."""

from __future__ import annotations

import json

import fakeredis
import pytest
import redis
from helpers import FakeClock
from rq import Queue
from testjobs import quick_job

from rq_worker_service.fencing import BEATS_KEY, FENCED_KEY, HISTORY_KEY, Membership, recent_fencings
from rq_worker_service.levels import WARNING
from rq_worker_service.orphans import SETTLE, IntermediateWatch
from rq_worker_service.recovery import predecessor_hung
from rq_worker_service.status.collect import collect
from rq_worker_service.status.judge import evaluate
from rq_worker_service.status.render import render_prometheus, render_text


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def conn(server):
    return fakeredis.FakeRedis(server=server)


def member(conn, name: str, clock: FakeClock, period: float = 3) -> Membership:
    m = Membership(conn, name, period=period, clock=clock)
    m.join("host-" + name, 4242, ["default"])
    return m


def beat_for(clock: FakeClock, seconds: int, *members: Membership) -> None:
    """Let time pass with every member beating each second, as their ticks would."""
    for _ in range(seconds):
        clock.now += 1
        for m in members:
            assert m.beat()


def expire(conn, name: str) -> None:
    """Move ``name``'s deadline into the past, as if it had been silent for a while."""
    conn.zadd(BEATS_KEY, {name: 1})


def test_a_silent_member_is_claimed_once_and_fenced_until_it_rejoins(conn):
    clock = FakeClock(1000.0)
    a, b, c = member(conn, "a", clock), member(conn, "b", clock), member(conn, "c", clock)
    beat_for(clock, 3, a, b, c)
    expire(conn, "b")
    claimed = a.claim_lost()
    assert [(lost.name, lost.host, lost.queues) for lost in claimed] == [("b", "host-b", ["default"])]
    assert c.claim_lost() == []  # claimed once: the second fencer finds nothing
    assert b.beat() is False  # b wakes up: fenced, and its beat writes nothing
    assert conn.zscore(BEATS_KEY, "b") is None
    assert json.loads(conn.hget(FENCED_KEY, "b"))["by"] == "a"
    b.join("host-b", 4343, ["default"])  # restarted by its systemd
    assert conn.hget(FENCED_KEY, "b") is None and b.beat() is True


def test_rejoining_reports_who_fenced_it(conn):
    clock = FakeClock(1000.0)
    a, b = member(conn, "a", clock), member(conn, "b", clock)
    beat_for(clock, 3, a)
    expire(conn, "b")
    a.claim_lost()
    assert b.join("host-b", 1, ["default"])["by"] == "a"


def test_no_fencing_until_the_fencer_has_beaten_on_time_for_a_whole_period(conn):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "b", clock)
    expire(conn, "b")
    assert a.claim_lost() == []  # joined just now
    clock.now += 1
    a.beat()
    clock.now += 1
    a.beat()
    clock.now += 1.6  # a late beat of its own (Redis or this process stalled): the count starts again
    a.beat()
    clock.now += 1
    a.beat()
    assert a.claim_lost() == []
    clock.now += 1.4
    a.beat()
    clock.now += 0.6
    a.beat()
    assert [lost.name for lost in a.claim_lost()] == ["b"]


def test_a_failed_beat_is_a_break(conn, server):
    clock = FakeClock(1000.0)
    a = member(conn, "a", clock)
    beat_for(clock, 3, a)
    assert a.may_fence
    server.connected = False
    with pytest.raises(redis.exceptions.ConnectionError):
        a.beat()
    server.connected = True
    a.beat()
    assert not a.may_fence


def test_leaving_cleanly_is_never_fenced_and_a_member_never_fences_itself(conn):
    clock = FakeClock(1000.0)
    a, b = member(conn, "a", clock), member(conn, "b", clock)
    beat_for(clock, 3, a)
    b.leave()
    expire(conn, "a")
    assert a.claim_lost() == []
    assert conn.zcard(BEATS_KEY) == 1


def test_fencing_history_is_listed_and_warned_about_in_status(conn):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "host-b.rq-worker@1", clock)
    beat_for(clock, 3, a)
    expire(conn, "host-b.rq-worker@1")
    [lost] = a.claim_lost()
    a.record(lost, ["job-1", "job-2"])
    assert [f.worker for f in recent_fencings(conn)] == ["host-b.rq-worker@1"]
    report = evaluate(collect(conn, "redis://x"))
    assert report.level == WARNING
    assert any("host-b.rq-worker@1 on host host-host-b.rq-worker@1 was fenced by a" in p for p in report.problems)
    text = render_text(report)
    assert "Fenced workers" in text and "job-1 job-2" in text
    assert 'rq_fenced_workers{host="host-host-b.rq-worker@1"} 1' in render_prometheus(report)
    assert recent_fencings(conn, keep=-1) == []  # older than the window: not listed
    conn.lpush(HISTORY_KEY, "not json")
    assert len(recent_fencings(conn)) == 1


def test_intermediate_watch_requeues_an_unstarted_job_at_the_second_sighting(conn):
    clock = FakeClock(1000.0)
    q = Queue("default", connection=conn)
    first, second = q.enqueue(quick_job, 1), q.enqueue(quick_job, 2)
    conn.lmove(q.key, f"{q.key}:intermediate")  # popped by a worker that never started it
    watch = IntermediateWatch(conn, [q], clock=clock)
    assert watch.sweep() == []
    clock.now += SETTLE - 0.5
    assert watch.sweep() == []
    clock.now += 0.5
    assert watch.sweep() == [first.id]
    assert q.job_ids == [first.id, second.id]  # back at the front, still queued, no attempt taken
    assert conn.llen(f"{q.key}:intermediate") == 0 and first.get_status(refresh=True).value == "queued"


def test_intermediate_watch_leaves_started_and_cancelled_jobs_alone(conn):
    clock = FakeClock(1000.0)
    q = Queue("default", connection=conn)
    started, cancelled, deleted = q.enqueue(quick_job, 1), q.enqueue(quick_job, 2), q.enqueue(quick_job, 3)
    for _ in range(3):
        conn.lmove(q.key, f"{q.key}:intermediate")
    conn.zadd(q.started_job_registry.key, {f"{started.id}:exec1": 9e9})
    cancelled.set_status("canceled")
    deleted.delete(remove_from_queue=False)
    watch = IntermediateWatch(conn, [q], clock=clock)
    watch.sweep()
    clock.now += SETTLE
    assert watch.sweep() == []
    assert [j.decode() for j in conn.lrange(f"{q.key}:intermediate", 0, -1)] == [started.id, cancelled.id]


def test_predecessor_hung_reads_what_the_units_exec_stop_post_wrote(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path)}
    assert not predecessor_hung("1", env) and not predecessor_hung("1", {})
    (tmp_path / "last-result-1").write_text("watchdog\n")
    (tmp_path / "last-result-2").write_text("signal\n")
    assert predecessor_hung("1", env) and not predecessor_hung("2", env)
