"""``prefork.pack`` / ``restore``: the job a spare horse is handed is the job the worker had."""

from __future__ import annotations

import pickle

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import DefaultSerializer, JSONSerializer

from rq_worker_service import prefork

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=8)


def handed(job: Job, execution: Execution, connection) -> tuple[Job, Execution]:
    """Through the pipe: a pickle of ``pack`` and back, on the horse's connection."""
    return prefork.restore(pickle.loads(pickle.dumps(prefork.pack(job, execution))), connection)


@settings(max_examples=60, deadline=None)
@given(args=st.lists(VALUES, max_size=3), kwargs=st.dictionaries(st.text(min_size=1, max_size=5), VALUES, max_size=3),
       meta=st.dictionaries(st.text(min_size=1, max_size=5), VALUES, max_size=3),
       serializer=st.sampled_from([DefaultSerializer, JSONSerializer]), looked=st.booleans(),
       timeout=st.one_of(st.none(), st.integers(1, 10_000)))
def test_the_handed_job_is_the_fetched_job(args, kwargs, meta, serializer, looked, timeout):
    connection = fakeredis.FakeRedis()
    queue = Queue("q", connection=connection, serializer=serializer)
    enqueued = queue.enqueue("testjobs.quick_job", *args, meta=meta, job_timeout=timeout, result_ttl=77, **kwargs)
    job = Job.fetch(enqueued.id, connection=connection, serializer=serializer)
    if looked:  # the worker logged the job's call: its arguments are deserialized in the worker
        assert job.func_name == "testjobs.quick_job"
    job.timeout = timeout or 180  # (``apply_job_defaults``: changed in the worker, after the fetch)
    execution = Execution.create(job, 60, pipeline=connection.pipeline())
    horse_connection = fakeredis.FakeRedis()
    got, got_execution = handed(job, execution, horse_connection)
    assert type(got) is Job and got.connection is horse_connection and got_execution.connection is horse_connection
    assert (got.id, got.func_name, got.args, got.kwargs, got.meta) == (job.id, job.func_name, job.args, job.kwargs,
                                                                      job.meta)
    assert (got.timeout, got.result_ttl, got.origin, got.serializer) == (job.timeout, 77, "q", job.serializer)
    assert got.to_dict() == job.to_dict()
    assert (got_execution.id, got_execution.job_id, got_execution.created_at, got_execution.composite_key) == (
        execution.id, job.id, execution.created_at, execution.composite_key)
    assert got_execution.job is got


def test_a_job_holding_what_no_pickle_takes_is_not_handed():
    """The worker forks the job's horse instead (``Prefork.take``)."""
    import threading

    connection = fakeredis.FakeRedis()
    job = Job.fetch(Queue("q", connection=connection).enqueue("testjobs.quick_job", 1).id, connection=connection)
    job.lock = threading.Lock()  # as an app's job class might hold
    with pytest.raises(TypeError):
        pickle.dumps(prefork.pack(job, Execution.create(job, 60, pipeline=connection.pipeline())))


def test_auto_is_busy_below_a_fifth_of_its_cpus_idle_and_free_again_above_two_fifths(tmp_path, monkeypatch):
    """``Contention``: idle time of the CPUs this process may use (/proc/stat) over each window of a
    second or more; busy below BUSY_BELOW (0.2 of a CPU), free above FREE_ABOVE (0.4), and in between
    the last answer stands; other CPUs do not count."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(prefork.Contention, "PATH", str(stat))
    now = [100.0]
    contention = prefork.Contention(clock=lambda: now[0], cpus=lambda: {0, 2})
    hz = contention.ticks
    idle = [10.0, 10.0]

    def after(seconds: float, idle0: float, idle2: float, elsewhere: float = 0.0) -> bool:
        now[0] += seconds
        idle[0] += idle0
        idle[1] += idle2
        stat.write_text(f"cpu  1 2 3 {int((sum(idle) + elsewhere) * hz)} 0 0 0\n"
                        f"cpu0 10 0 10 {int(idle[0] * hz)} 0 0 0 0 0 0\n"
                        f"cpu1 10 0 10 {int(elsewhere * hz)} 0 0 0 0 0 0\n"
                        f"cpu2 10 0 10 0 {int(idle[1] * hz)} 0 0 0 0 0\n"  # (I/O wait counts as idle)
                        "intr 12345\n")
        return contention.busy()

    assert after(0, 0, 0) is False  # nothing measured yet: a spare
    assert after(0.5, 0, 0) is False  # half a window: not looked at
    assert after(0.5, 0, 0.1, elsewhere=50) is True  # 0.1 of a CPU idle in 1 s (another CPU's idle: not ours)
    assert after(1.0, 0.15, 0.15) is True  # 0.3: between the two, busy stands
    assert after(1.0, 0.25, 0.25) is False  # 0.5
    assert after(2.0, 0.3, 0.3) is False  # 0.3 a second: free stands
    assert after(1.0, 0.05, 0.1) is True  # 0.15
    assert after(1.0, 0.3, 0.2) is False  # 0.5
    stat.unlink()
    now[0] += 0.5
    assert contention.busy() is False  # half a window: the last answer stands, unread
    now[0] += 1.0
    assert contention.busy() is True  # no /proc/stat: rq's way
