"""Membership, beats and claims (``fencing``) and the intermediate-list watch (``orphans``), on fakeredis
with Lua: a fake monotonic clock for the members; a step of Redis's clock is the deadlines rewritten."""

from __future__ import annotations

import json

import fakeredis
import pytest
import redis
from helpers import FakeClock
from rq import Queue
from testjobs import quick_job

from rq_worker_service import fencing
from rq_worker_service.fencing import BEATS_KEY, COUNTS_KEY, FENCED_KEY, HISTORY_KEY, MEMBERS_KEY, Membership
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


def run(clock: FakeClock, seconds: int, beating: list[Membership], fencers: list[Membership]
        ) -> list[tuple[float, fencing.Lost]]:
    """Let time pass a second at a time: each member in ``beating`` beats and each fencer sweeps, as
    their ticks would; returns (time, claimed) of each claim."""
    claims = []
    for _ in range(seconds):
        clock.now += 1
        for m in beating:
            assert m.beat()
        for f in fencers:
            claims += [(clock.now, lost) for lost in f.claim_lost()]
    return claims


def step_redis_clock(conn, seconds: float) -> None:
    """What a step of Redis's clock does to the deadlines older versions judge by."""
    for name, deadline in conn.zrange(BEATS_KEY, 0, -1, withscores=True):
        conn.zadd(BEATS_KEY, {name: deadline - seconds})


def test_a_silent_member_is_claimed_once_after_its_period_and_fenced_until_it_rejoins(conn):
    clock = FakeClock(1000.0)
    a, b, c = member(conn, "a", clock), member(conn, "b", clock), member(conn, "c", clock)
    run(clock, 2, [a, b, c], [a, c])
    silent_from = clock.now
    claims = run(clock, 8, [a, c], [a, c])
    assert [(lost.name, lost.host, lost.queues) for _, lost in claims] == [("b", "host-b", ["default"])]  # once
    at, lost = claims[0]
    assert at - silent_from == 3  # its last beat seen at once, lost a period later by a's clock
    assert lost.silent == 3 and lost.period == 3
    assert b.beat() is False  # b wakes up: fenced, and its beat writes nothing
    assert conn.zscore(BEATS_KEY, "b") is None and not conn.hexists(COUNTS_KEY, "b")
    assert json.loads(conn.hget(FENCED_KEY, "b"))["by"] == "a"
    b.join("host-b", 4343, ["default"])  # restarted by its systemd
    assert conn.hget(FENCED_KEY, "b") is None and b.beat() is True


def test_the_third_sweep_finds_a_member_silent_for_three_ticks_even_if_a_little_early(conn):
    """Sweeps land a little earlier or later in their ticks; a period of three ticks must not wait
    for a fourth sweep because the third came a few milliseconds short."""
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "b", clock)
    claims = []
    for _ in range(4):
        clock.now += 0.95
        a.beat()
        claims.append([lost.name for lost in a.claim_lost()])
    assert claims == [[], [], [], ["b"]]  # seen at the first sweep, lost at the fourth: three ticks later


def test_a_step_of_redis_clock_fences_no_one(conn):
    """Deadlines in Redis time all pass at once when Redis's clock steps forward: the old rule fenced
    every member at the first sweep. Silence on the fencer's clock is what counts."""
    clock = FakeClock(1000.0)
    a, b = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 3, [a, b], [a, b])
    for step in (60, -60, 3600):
        step_redis_clock(conn, step)
        assert run(clock, 1, [], [a, b]) == []  # no one beat in between: every deadline past, no claim
        assert run(clock, 6, [a, b], [a, b]) == []


def test_a_member_that_beats_between_the_look_and_the_claim_is_not_claimed(conn):
    clock = FakeClock(1000.0)
    a, b = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 3, [a], [a])  # b silent for 2 s by a's clock: one more second and it is lost
    claim = a._claim

    def b_beats_first(**kwargs):
        assert b.beat()
        return claim(**kwargs)

    a._claim = b_beats_first
    assert run(clock, 1, [a], [a]) == []
    a._claim = claim
    assert conn.zscore(BEATS_KEY, "b") is not None and not conn.hexists(FENCED_KEY, "b")
    assert run(clock, 3, [a], [a]) == []  # its beat counts from when a saw it: a full period again
    assert [lost.name for _, lost in run(clock, 1, [a], [a])] == ["b"]


def test_a_break_in_the_fencers_own_beats_forgets_what_it_saw(conn):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 3, [a], [a])
    clock.now += 2  # a late beat of its own (Redis or this process stalled): b may not have been able to beat
    a.beat()
    assert list(a.claim_lost()) == []
    assert run(clock, 2, [a], [a]) == []  # seen again at the late beat's sweep: a period from there
    assert [lost.name for _, lost in run(clock, 1, [a], [a])] == ["b"]


def test_a_sweep_long_after_the_fencers_last_beat_vouches_for_no_one(conn):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 3, [a], [a])
    clock.now += 10  # frozen between its beat and its sweep: Redis may have been away meanwhile
    assert list(a.claim_lost()) == []
    assert run(clock, 3, [a], [a]) == []  # its next beat is late too: b is seen anew from there
    assert [lost.name for _, lost in run(clock, 1, [a], [a])] == ["b"]


def test_a_failed_beat_is_a_break(conn, server):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 2, [a], [a])
    server.connected = False
    with pytest.raises(redis.exceptions.ConnectionError):
        a.beat()
    server.connected = True
    assert run(clock, 3, [a], [a]) == []
    assert [lost.name for _, lost in run(clock, 1, [a], [a])] == ["b"]


def test_a_member_is_judged_by_the_longer_of_its_period_and_the_fencers(conn):
    """A fencer's own beats vouch for Redis only at their grain: a member with a shorter period
    waits for the fencer's."""
    clock = FakeClock(1000.0)
    fast, _, _ = member(conn, "fast", clock, period=3), member(conn, "quick", clock), member(conn, "slow", clock, 9)
    claims = run(clock, 12, [fast], [fast])
    assert [(at - 1000, lost.name, lost.period) for at, lost in claims] == [(4, "quick", 3), (10, "slow", 9)]
    slow, _ = member(conn, "slow", clock, period=9), member(conn, "quick", clock)
    claims = run(clock, 12, [slow, fast], [slow])
    assert [(at - 1012, lost.name, lost.period) for at, lost in claims] == [(10, "quick", 9)]


def test_an_older_versions_member_is_judged_by_its_moving_deadline_and_the_longest_period(conn):
    """A worker of an older version beats only its deadline and records no period: it is lost after
    the longest period a member can have, and a deadline moving with Redis's clock is a beat."""
    clock = FakeClock(1000.0)
    a = member(conn, "a", clock)
    conn.hset(MEMBERS_KEY, "old", json.dumps({"host": "h", "pid": 1, "queues": ["default"]}))
    conn.hset(COUNTS_KEY, "old", 7)  # left by a newer version of it: stays put now
    deadline = 2000
    for _ in range(int(fencing.LEGACY_PERIOD) * 2):
        deadline += 1
        conn.zadd(BEATS_KEY, {"old": deadline})
        assert run(clock, 1, [a], [a]) == []
    claims = run(clock, int(fencing.LEGACY_PERIOD), [a], [a])
    legacy = fencing.LEGACY_PERIOD
    assert [(lost.name, lost.silent, lost.period) for _, lost in claims] == [("old", legacy, legacy)]


def test_leaving_cleanly_is_never_fenced_and_a_member_never_fences_itself(conn):
    clock = FakeClock(1000.0)
    a, b = member(conn, "a", clock), member(conn, "b", clock)
    run(clock, 2, [a], [a])
    b.leave()
    assert run(clock, 8, [], [a]) == []  # a stops beating too: late, so it judges no one, itself least
    assert conn.zcard(BEATS_KEY) == 1 and not conn.hexists(COUNTS_KEY, "b")


def test_fencing_history_is_listed_and_warned_about_in_status(conn):
    clock = FakeClock(1000.0)
    a, _ = member(conn, "a", clock), member(conn, "host-b.rq-worker@1", clock)
    [(_, lost)] = run(clock, 6, [a], [a])
    a.record(lost, ["job-1", "job-2"])
    assert [f.worker for f in fencing.recent_fencings(conn)] == ["host-b.rq-worker@1"]
    report = evaluate(collect(conn, "redis://x"))
    assert report.level == WARNING
    assert any("host-b.rq-worker@1 on host host-host-b.rq-worker@1 was fenced by a" in p for p in report.problems)
    text = render_text(report)
    assert "Fenced workers" in text and "job-1 job-2" in text
    assert 'rq_fenced_workers{host="host-host-b.rq-worker@1"} 1' in render_prometheus(report)
    assert fencing.recent_fencings(conn, keep=-1) == []  # older than the window: not listed
    conn.lpush(HISTORY_KEY, "not json")
    assert len(fencing.recent_fencings(conn)) == 1


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


def test_a_beat_is_dated_before_it_was_sent_and_a_fenced_answer_dates_nothing(conn):
    """A beat whose reply is read long after Redis counted it (the process frozen in between) is no
    fresh beat: dated by the reply, ``may_be_fenced`` said no to a worker fenced meanwhile, and a simple
    worker wrote its job's end over the fencer's re-run (``test_review26``)."""
    clock = FakeClock(1000.0)
    a = member(conn, "a", clock)
    script = a._beat

    def frozen_before_the_reply(*args, **kwargs):
        reply = script(*args, **kwargs)
        clock.now += 10  # frozen past the period with the beat counted, its reply unread
        return reply

    a._beat = frozen_before_the_reply
    assert a.beat() is True
    assert a.may_be_fenced()  # the beat counted 10 s ago: a fencer may have claimed a since
    a._beat = script
    conn.hset(FENCED_KEY, "a", json.dumps({"by": "b"}))
    assert a.beat() is False
    assert a.may_be_fenced()  # fenced: nothing fresh recorded
