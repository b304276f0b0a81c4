"""Third review of issue 31: the Redis errors rq swallows in its retry step, and a pop put back for
``rq suspend`` with the worker's own look not yet due.

``persisted.watching`` wrapped rq's ``handle_job_failure`` only. rq's ``handle_job_retry`` (a job that
*returns* ``Retry`` and has used up its ``max``) writes the job's FAILED end in its own transaction inside
``try: … except Exception: log.exception("failed to persist failure of job …")`` and goes on: with nothing
raising the error again, and the IDLE write that used to meet the outage waiting for an empty pop, the job
was left STARTED in its StartedJobRegistry, no result, in no queue, until rq's abandoned-job cleanup. Our
``handle_job_retry`` now runs rq's step under ``persisted.watching`` too.
"""

from __future__ import annotations

import textwrap
import time

import pytest
from helpers import app_package, wait_until
from rq import Queue
from rq.registry import StartedJobRegistry
from test_review31 import SITECUSTOMIZE, env_for, state
from testjobs import quick_job

APP = textwrap.dedent('''
    from rq import Retry


    def returns_retry():
        return Retry(max=1)
''')


@pytest.mark.parametrize("cls", ["fork", "simple"])
def test_a_retry_steps_failure_that_could_not_be_recorded_is_not_left_started(cls, start_worker, rconn, tmp_path):
    """A job returns ``Retry(max=1)``: its first run is re-queued, its second ends FAILED by rq's
    ``handle_job_retry``. That FAILED transaction meets a dropped link once (``R31_CUT_FAILURE``). As for
    ``handle_job_failure`` (test_review31), the job must not be left STARTED: it ends failed (or is
    retried as interrupted and then fails), its registry entry gone, within seconds."""
    app_dir = app_package(tmp_path, "r31app", APP, SITECUSTOMIZE)
    queue = Queue(f"retrycut-{cls}", connection=rconn)
    arm = tmp_path / f"retrycut-{cls}"
    worker = start_worker("rc", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls,
                                            R31_CUT_FAILURE=str(arm)))
    warm = queue.enqueue(quick_job, 0)
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the worker up")
    arm.touch()
    job = queue.enqueue("r31app.returns_retry")
    wait_until(lambda: not arm.exists(), 20, what="the fault fired")
    after = queue.enqueue(quick_job, 0)  # the worker goes on taking jobs
    wait_until(lambda: rconn.hget(after.key, "status") == b"finished", 20, what="the next job run")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and rconn.hget(job.key, "status") != b"failed":
        time.sleep(0.2)
    output = worker.output()
    started = StartedJobRegistry(queue.name, connection=rconn).get_job_ids()
    assert rconn.hget(job.key, "status") == b"failed", (rconn.hget(job.key, "status"), started, output[-3000:])
    assert started == [], output[-3000:]
    assert "Lost Redis while recording the failure of job" in output, output[-3000:]
    assert "failed to persist" not in output, output[-3000:]
    assert worker.proc.poll() is None


LOST_REPLY = textwrap.dedent('''
    import os

    if os.environ.get("R31C_LOSE_FAILURE"):
        import redis
        from redis.client import Pipeline

        _execute = Pipeline.execute

        def _lose(self, *args, **kwargs):
            path = os.environ["R31C_LOSE_FAILURE"]
            failing = any(a[:1] == ("ZREM",) for a, _ in self.command_stack) and any(
                a[:1] == ("HSET",) for a, _ in self.command_stack) and os.path.exists(path) and any(
                "Boom" in str(x) or "queued" in str(x) or "failed" in str(x) or "scheduled" in str(x)
                for a, _ in self.command_stack for x in a)
            if failing:
                os.remove(path)
                _execute(self, *args, **kwargs)  # Redis applied it ...
                raise redis.exceptions.ConnectionError("r31c: the reply lost with the link")  # ... no reply
            return _execute(self, *args, **kwargs)

        Pipeline.execute = _lose
''')

COUNTING = textwrap.dedent('''
    import os


    def boom(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("Boom")
''')


@pytest.mark.parametrize("retry", ["own-retry", "no-retry"])
@pytest.mark.parametrize("cls", ["fork", "simple"])
def test_a_failure_recorded_whose_reply_is_lost_is_not_recorded_again(cls, retry, start_worker, rconn, tmp_path):
    """The failure's transaction is applied but its reply lost: ``persisted`` raises it again; the
    rescue that follows (simple) or the worker's look at its dead horse (fork) must not retry or fail
    the job a second time: the job runs once per retry and ends failed with one failure result each."""
    from rq import Retry

    app_dir = app_package(tmp_path, "r31capp", COUNTING, LOST_REPLY)
    queue = Queue(f"lostfail-{cls}-{retry}", connection=rconn)
    arm = tmp_path / "arm"
    runs = tmp_path / "runs"
    worker = start_worker("lf", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls,
                                            RQ_JOB_RETRY_MAX="0", R31C_LOSE_FAILURE=str(arm)))
    warm = queue.enqueue(quick_job, 0)
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the worker up")
    arm.touch()
    kwargs = {"retry": Retry(max=1)} if retry == "own-retry" else {}
    job = queue.enqueue("r31capp.boom", str(runs), **kwargs)
    wait_until(lambda: rconn.hget(job.key, "status") == b"failed", 30, what="the job failed")
    time.sleep(3)  # any second recording or run after it
    output = worker.output()
    assert not arm.exists(), "the fault did not fire"
    assert "Lost Redis while recording the failure of job" in output, output[-3000:]
    expected = 2 if retry == "own-retry" else 1
    assert runs.read_text() == "x" * expected, output[-3000:]
    assert rconn.hget(job.key, "status") == b"failed"
    assert StartedJobRegistry(queue.name, connection=rconn).get_job_ids() == []
    assert job.id.encode() not in rconn.lrange(queue.key, 0, -1)
    assert len(job.results()) == 1, [r.type for r in job.results()]  # (a retry writes no result)
    assert worker.proc.poll() is None


@pytest.mark.parametrize("queues", ["one", "two"])
def test_a_job_the_pop_put_back_for_a_suspension_is_not_taken_at_the_next_pop(queues, start_worker, rconn, tmp_path):
    """A worker blocked in its pop right after its look at ``rq suspend``'s flag (less than
    SUSPENSION_POLL before). ``rq suspend``, then a job: the pop's own look (``_UNLESS_SUSPENDED``, the
    take script) puts it back and says so (``held.suspended``); the worker's next look, not due yet, is
    made at once for that (``_suspended``): without it the one-queue LMOVE that followed, which does not
    look, took the job and ran it while the workers were suspended (two queues: the take script refused,
    and the worker looped on it without a wait until the look was due)."""
    from rq.suspension import resume, suspend

    app_dir = app_package(tmp_path, "r31capp", "", "")
    queue = Queue(f"susp-{queues}", connection=rconn)
    names = queue.name if queues == "one" else f"{queue.name},susp-other"
    worker = start_worker("sp", env=env_for(app_dir, RQ_QUEUES=names, RQ_WORKER_CLASS="simple"))
    try:
        for attempt in range(2):
            warm = queue.enqueue(quick_job, 0)
            wait_until(lambda key=warm.key: rconn.hget(key, "status") == b"finished", 20, what="the worker up")
            wait_until(lambda: state(rconn, "sp") == b"idle", 10, what="the worker idle in its pop")
            suspend(rconn)
            job = queue.enqueue(quick_job, 0)
            time.sleep(2.5)
            status = rconn.hget(job.key, "status")
            assert status == b"queued", (attempt, status, worker.output()[-3000:])
            resume(rconn)
            wait_until(lambda key=job.key: rconn.hget(key, "status") == b"finished", 20, what="run after rq resume")
    finally:
        resume(rconn)
    assert worker.proc.poll() is None
