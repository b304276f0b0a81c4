"""``held``: the list a worker pops into, and who may put what it holds back (fakeredis, with Lua)."""

from __future__ import annotations

import fakeredis
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import resolve_serializer
from testjobs import quick_job

from rq_worker_service import held as held_module
from rq_worker_service.classes import RQ_DEFAULTS, AppClasses
from rq_worker_service.fencing import BEATS_KEY, FENCED_KEY
from rq_worker_service.held import Held, put_back, put_back_dead
from rq_worker_service.parts.housekeeping import HeldJobs


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def queues(conn, *names: str) -> list[Queue]:
    return [Queue(n, connection=conn) for n in names]


def test_several_queues_are_popped_in_the_order_given_into_the_held_list(conn):
    q1, q2, q3 = queues(conn, "q1", "q2", "q3")
    low, high = q3.enqueue(quick_job, 1), q2.enqueue(quick_job, 2)
    held = Held(conn, "w1", RQ_DEFAULTS)
    keys = [q.key for q in (q1, q2, q3)]
    assert held.pop(keys, None) == (q2.key, high.id)
    assert held.ids() == [high.id] and q2.count == 0
    conn.delete(held.key)  # (registered)
    assert held.pop(list(reversed(keys)), None) == (q3.key, low.id)
    conn.delete(held.key)
    assert held.pop(keys, None) is None


def test_after_a_redis_error_an_id_still_held_is_the_next_pop_s_reply(conn):
    """After a Redis error an id in the list is a pop whose reply (or registration) was lost."""
    q1, q2 = queues(conn, "q1", "q2")
    lost, waiting = q2.enqueue(quick_job, 1), q1.enqueue(quick_job, 2)
    held = Held(conn, "w1", RQ_DEFAULTS)
    conn.lmove(q2.key, held.key)
    held.retake = True
    assert held.pop([q1.key, q2.key], None) == (None, lost.id)
    assert not held.retake, "once: the next pop takes from the queues"
    held.retake = True
    assert held.pop([q1.key], 5) == (None, lost.id), "one queue: the held id before any BLMOVE"
    assert q1.job_ids == [waiting.id] and held.ids() == [lost.id]


def test_without_an_error_a_held_id_is_not_served_again(conn):
    """An id that stays held without an error (an execute_job that returned without starting it)
    would be served again and again: rq's test_cleanup_intermediate_queue looped for ever so."""
    q1, q2 = queues(conn, "q1", "q2")
    stuck, waiting = q2.enqueue(quick_job, 1), q1.enqueue(quick_job, 2)
    held = Held(conn, "w1", RQ_DEFAULTS)
    conn.lmove(q2.key, held.key)
    assert held.pop([q1.key, q2.key], None) == (q1.key, waiting.id)
    assert held.pop([q1.key, q2.key], None) is None
    assert held.ids() == [stuck.id, waiting.id]


def test_an_empty_wait_ends_after_its_timeout(conn, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(held_module.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    held = Held(conn, "w1", RQ_DEFAULTS)
    monkeypatch.setattr(held, "_blmove", lambda key, timeout: now.__setitem__(0, now[0] + timeout))
    assert held.pop([q.key for q in queues(conn, "q1", "q2")], 1, clock=lambda: now[0]) is None
    assert now[0] == pytest.approx(1.0)
    assert held.pop([q.key for q in queues(conn, "q1")], 1, clock=lambda: now[0]) is None
    assert now[0] == pytest.approx(2.0), "one queue: one BLMOVE for the whole timeout"


def test_put_back_goes_to_the_front_in_the_order_taken_and_drops_what_is_no_longer_queued(conn):
    (q1,) = queues(conn, "q1")
    a, b, cancelled, later = (q1.enqueue(quick_job, i) for i in range(4))
    held = Held(conn, "w1", RQ_DEFAULTS)
    for _ in range(3):
        conn.lmove(q1.key, held.key)
    cancelled.set_status("canceled")
    assert held.put_back() == [b.id, a.id]
    assert q1.job_ids == [a.id, b.id, later.id] and held.ids() == []
    assert a.get_status(refresh=True).value == "queued"


def test_a_live_owner_s_list_is_its_own_and_a_dead_one_s_is_put_back(conn):
    (q1,) = queues(conn, "q1")
    job = q1.enqueue(quick_job, 1)
    owner = Held(conn, "w1", RQ_DEFAULTS)
    owner.join()
    owner.pop([q1.key], None)
    conn.hset("rq:worker:w1", "pid", 1)  # alive: its rq worker key exists
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [] and put_back(conn, "w1", RQ_DEFAULTS, owner_gone=True) == []
    assert owner.ids() == [job.id]
    conn.delete("rq:worker:w1")
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [job.id]
    assert q1.job_ids == [job.id] and not conn.sismember("rq:service:holders", "w1")


def test_a_holder_is_forgotten_only_once_neither_a_member_nor_fenced(conn):
    """Review 26: a fenced worker frozen before its pop may still send it once woken; had the sweep
    forgotten its name (key gone, list empty), a job that pop moved sat where no sweep looks."""
    (q1,) = queues(conn, "q1")
    owner = Held(conn, "w1", RQ_DEFAULTS)
    owner.join()
    conn.zadd(BEATS_KEY, {"w1": 1})  # a member: in the roster (its rq worker key is gone, its list empty)
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [] and conn.sismember("rq:service:holders", "w1")
    conn.zrem(BEATS_KEY, "w1")
    conn.hset(FENCED_KEY, "w1", "{}")  # claimed: out of the roster, marked fenced
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [] and conn.sismember("rq:service:holders", "w1")
    job = q1.enqueue(quick_job, 1)
    conn.lmove(q1.key, owner.key)  # woken, its blocking pop (a plain BLMOVE) lands: the sweep still finds the list
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [job.id] and q1.job_ids == [job.id]
    assert conn.sismember("rq:service:holders", "w1")
    conn.hdel(FENCED_KEY, "w1")  # neither (a clean leave, or never joined): forgotten
    assert put_back_dead(conn, "w2", RQ_DEFAULTS) == [] and not conn.sismember("rq:service:holders", "w1")


def test_leaving_puts_back_and_forgets_the_holder(conn):
    (q1,) = queues(conn, "q1")
    job = q1.enqueue(quick_job, 1)
    held = Held(conn, "w1", RQ_DEFAULTS)
    held.join()
    held.pop([q1.key], None)
    held.leave()
    assert q1.job_ids == [job.id] and not conn.sismember("rq:service:holders", "w1")


def test_quarantine_fails_the_job_in_one_step_with_the_reason(conn):
    (q1,) = queues(conn, "q1")
    job = q1.enqueue(quick_job, 1)
    conn.hset(job.key, "status", "hibernating")
    held = Held(conn, "w1", RQ_DEFAULTS)
    held.pop([q1.key], None)
    assert held.quarantine(job.id, q1, "ValueError: 'hibernating' is not a valid JobStatus")
    assert held.ids() == [] and FailedJobRegistry("q1", connection=conn).get_job_ids() == [job.id]
    assert conn.hget(job.key, "status") == b"failed" and b"hibernating" in conn.hget(job.key, "exc_info")
    assert not held.quarantine(job.id, q1, "again"), "only what is held"


def test_a_failed_put_back_at_teardown_is_a_warning_not_an_exception(caplog):
    """A worker leaving on a cluster MOVED or an outage must still unregister (rq's teardown follows)."""

    class Unreachable:
        def leave(self):
            raise redis.exceptions.ResponseError("MOVED 1234 10.0.0.9:6379")

    HeldJobs(Unreachable()).teardown()  # type: ignore[arg-type]
    assert "its next start will" in caplog.text


def test_a_fenced_worker_s_pop_moves_nothing_and_says_so(conn):
    """Once a fencer marked this worker (its membership revoked while it was silent), its take script
    moves nothing, retake or not, from one queue or several: the worker woke after its fencing."""
    from rq_worker_service.fencing import FENCED_KEY, Fenced

    q1, q2 = queues(conn, "q1", "q2")
    waiting = q2.enqueue(quick_job, 1)
    held, other = Held(conn, "w1", RQ_DEFAULTS), Held(conn, "w2", RQ_DEFAULTS)
    conn.hset(FENCED_KEY, "w1", '{"by": "w2"}')
    for retake, keys in ((False, [q1.key, q2.key]), (True, [q2.key]), (False, [q2.key])):
        held.retake = retake
        with pytest.raises(Fenced):
            held.pop(keys, None)
        assert q2.job_ids == [waiting.id] and held.ids() == []
    assert other.pop([q1.key, q2.key], None) == (q2.key, waiting.id), "only the marked worker is refused"


@pytest.mark.parametrize("cluster", [False, True], ids=["removal-as-look", "cluster-read-first"])
def test_the_registration_runs_only_while_the_id_is_held_and_never_once_fenced(conn, cluster):
    """``register`` (the registration's script) writes its commands only while the id is held, in one
    step with that look; it refuses once the worker is marked fenced, though the id is in its list (a
    blocking pop served after the fencing), writing nothing."""
    from rq_worker_service import queued
    from rq_worker_service.fencing import FENCED_KEY, Fenced

    (q1,) = queues(conn, "q1")
    job = q1.enqueue(quick_job, 1)
    held = Held(conn, "w1", RQ_DEFAULTS, cluster=cluster)
    conn.lmove(q1.key, held.key)

    def writes(mark: str) -> list:
        with conn.pipeline(transaction=False) as pipe:
            pipe.hset("registered", mark, 1)
            pipe.expire("registered", 60)
            return queued.flatten(pipe)

    assert not held.register("other", writes("other")) and not conn.exists("registered")
    conn.hset(FENCED_KEY, "w1", '{"by": "w2"}')
    with pytest.raises(Fenced):
        held.register(job.id, writes("fenced"))
    assert held.ids() == [job.id] and not conn.exists("registered"), "left held: the worker puts it back as it exits"
    conn.hdel(FENCED_KEY, "w1")
    assert held.register(job.id, writes("held"))
    assert conn.hgetall("registered") == {b"held": b"1"} and 0 < conn.ttl("registered") <= 60
    assert held.ids() == [], "the registration takes the id out of the held list in the same step"
    assert not held.register(job.id, writes("again")), "registered once: a resend finds it no longer held"
    assert conn.hgetall("registered") == {b"held": b"1"}


def test_while_suspended_the_take_script_moves_nothing_but_a_held_id_is_still_served(conn):
    """``rq suspend``: the several-queue pop (the take script) takes nothing, at once; an id held
    already (a lost reply) was taken before and is served, not left held until the worker's exit."""
    from rq.suspension import resume, suspend

    q1, q2 = queues(conn, "q1", "q2")
    job = q2.enqueue(quick_job, 1)
    held = Held(conn, "w1", RQ_DEFAULTS)
    suspend(conn)
    assert held.pop([q1.key, q2.key], 5) is None and held.suspended, "at once, not after the 5 s"
    assert q2.job_ids == [job.id] and held.ids() == []
    conn.lmove(q2.key, held.key)
    held.retake = True
    assert held.pop([q1.key, q2.key], None) == (None, job.id)
    conn.delete(held.key)
    q2.enqueue_job(job)
    resume(conn)
    assert held.pop([q1.key, q2.key], None) == (q2.key, job.id) and not held.suspended


def test_a_blocking_pop_that_returns_during_a_suspension_puts_the_job_back_at_the_head(conn):
    """A worker blocked in BLMOVE when ``rq suspend`` ran: the job it receives goes back to the head of
    its queue in the same step that takes it from the held list (stock rq's worker would run it)."""
    from rq.suspension import resume, suspend

    (q1,) = queues(conn, "q1")
    first, second = q1.enqueue(quick_job, 1), q1.enqueue(quick_job, 2)
    held = Held(conn, "w1", RQ_DEFAULTS)
    suspend(conn)
    assert held._blmove(q1.key, 0.1) is None and held.suspended
    assert q1.job_ids == [first.id, second.id] and held.ids() == []
    conn.hset(first.key, "status", "canceled")  # (as if cancelled between the BLMOVE and the look)
    assert held._blmove(q1.key, 0.1) is None, "a job cancelled meanwhile: dropped from the held list, not queued"
    assert q1.job_ids == [second.id] and held.ids() == []
    resume(conn)
    assert held._blmove(q1.key, 0.1) == (q1.key, second.id) and held.ids() == [second.id]


class PrefixedJob(Job):
    redis_job_namespace_prefix = "app:job:"


class PrefixedQueue(Queue):
    redis_queue_namespace_prefix = "app:queue:"


PREFIXED = AppClasses("pickle", resolve_serializer("pickle"), PrefixedJob, PrefixedQueue)
"""An app's RQ_JOB_CLASS and RQ_QUEUE_CLASS with key prefixes of their own (rq lets a subclass choose them)."""


def test_the_put_backs_read_and_write_the_keys_of_the_apps_classes(conn):
    """Review 27: the put-backs read the job's hash at rq's ``rq:job:`` and rebuilt its queue with rq's Queue:
    an app job was read as deleted and dropped, or pushed onto ``rq:queue:<name>``, which no worker of the app
    pops. Fails when any of the three put-backs (suspension, own, dead owner's) uses rq's classes."""
    from rq.suspension import resume, suspend

    q1 = PREFIXED.queue("q1", conn)
    first, second, third = (q1.enqueue(quick_job, i) for i in range(3))
    assert q1.key == "app:queue:q1" and conn.exists(f"app:job:{first.id}")
    held = Held(conn, "w1", PREFIXED)
    suspend(conn)
    assert held._blmove(q1.key, 0.1) is None and held.suspended
    assert q1.job_ids == [first.id, second.id, third.id] and held.ids() == []
    resume(conn)
    conn.lmove(q1.key, held.key)
    assert held.put_back() == [first.id] and q1.job_ids == [first.id, second.id, third.id]
    dead = Held(conn, "w2", PREFIXED)
    dead.join()
    conn.lmove(q1.key, dead.key)
    assert put_back_dead(conn, "w1", PREFIXED) == [first.id] and q1.job_ids == [first.id, second.id, third.id]
    assert not conn.exists("rq:queue:q1") and conn.hget(first.key, "status") == b"queued"
