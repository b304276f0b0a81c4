"""Adversarial review (issue 27): suspension, recovery with the app's classes and handlers, webhooks, the app's
worker class composed onto ours. Each test fails while the fault it names is there.

The app lives in a tmp directory (``r27app``) imported from RQ_APP_PATH; a ``sitecustomize`` next to it arms
a kill -9 of the worker right after a blocking pop's reply (``R27_KILL_AFTER_BLMOVE``: the file it removes
as it fires), the one window of the new put-back that no fault point of ``faults`` reaches.
"""

from __future__ import annotations

import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest
from helpers import JOBS_DIR, wait_until
from rq import Queue
from rq.job import Job
from rq.suspension import resume, suspend
from testjobs import quick_job

from rq_worker_service.keys import held as held_key

APP = textwrap.dedent('''
    """An app that keeps its jobs and queues under key prefixes of its own, as rq lets a Job or Queue
    subclass do (rq refuses only rate limits with them: ``Queue._check_rate_limit_namespace``)."""
    from rq.job import Job
    from rq.queue import Queue


    class PrefixedJob(Job):
        redis_job_namespace_prefix = "app:job:"


    class PrefixedQueue(Queue):
        redis_queue_namespace_prefix = "app:queue:"
''')

SITECUSTOMIZE = textwrap.dedent('''
    import os

    arm = os.environ.get("R27_KILL_AFTER_BLMOVE")
    if arm:
        import signal

        from redis.commands.core import BasicKeyCommands as ListCommands

        original = ListCommands.blmove

        def blmove(self, *args, **kwargs):
            reply = original(self, *args, **kwargs)
            if reply is not None and os.path.exists(arm):  # once: the id is in the held list, in no other step yet
                os.remove(arm)
                os.kill(os.getpid(), signal.SIGKILL)
            return reply

        ListCommands.blmove = blmove
''')

CLASSES = {"rq": {}, "job-prefix": {"RQ_JOB_CLASS": "r27app.PrefixedJob"},
           "queue-prefix": {"RQ_QUEUE_CLASS": "r27app.PrefixedQueue"}}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "r27app.py").write_text(APP)
    (app / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return app


def app_env(app_dir: Path, **env: str) -> dict[str, str]:
    # WatchdogSec 30 s: a tick, and a blocking pop (BLMOVE), of 10 s, so that jobs arrive during the pop
    return {"RQ_APP_PATH": f"{app_dir}:{JOBS_DIR}", "PYTHONPATH": str(app_dir), "RQ_WITH_SCHEDULER": "no",
            "WATCHDOG_USEC": "30000000", **env}


def app_queue(module, rconn, name: str, kind: str) -> Queue:
    """The queue as the app enqueues on it (its own Job/Queue classes)."""
    job_class = module.PrefixedJob if kind == "job-prefix" else Job
    queue_class = module.PrefixedQueue if kind == "queue-prefix" else Queue
    return queue_class(name, connection=rconn, job_class=job_class)


@pytest.fixture
def app_module(app_dir, monkeypatch):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(app_dir))
    sys.modules.pop("r27app", None)
    yield importlib.import_module("r27app")
    sys.modules.pop("r27app", None)


def our_name(instance: str) -> str:
    return f"{socket.gethostname()}.rq-worker@{instance}"


def idle(rconn, instance: str) -> bool:
    return rconn.hget(f"rq:worker:{our_name(instance)}", "state") == b"idle"


def where(rconn, queue: Queue, job: Job, instance: str) -> dict[str, object]:
    """Where the job is: its queue, the worker's held list, its status."""
    return {"queued": job.id in queue.get_job_ids(), "held": job.id.encode() in rconn.lrange(held_key(our_name(
        instance)), 0, -1), "status": rconn.hget(job.key, "status")}


def lists_holding(rconn, job_id: str) -> list[str]:
    return [key.decode() for key in rconn.scan_iter(_type="list") if job_id.encode() in rconn.lrange(key, 0, -1)]


@pytest.mark.parametrize("kind", ["rq", "job-prefix"])
def test_a_job_a_blocked_pop_takes_during_rq_suspend_goes_back_to_its_queue(kind, app_dir, app_module, start_worker,
                                                                             rconn):
    """rq suspend while the worker blocks in its BLMOVE; a job enqueued then goes back to the head of its queue
    (``held._UNLESS_SUSPENDED``). Its look at the job's status reads ``Job.key_for`` (rq's ``rq:job:`` prefix),
    not the app's job class: a job of a PrefixedJob app (which the same worker runs fine unsuspended) is read
    as deleted and dropped: in no queue, no list, no registry, its status still queued. It vanishes."""
    classes = CLASSES[kind]
    queue = app_queue(app_module, rconn, f"susp-{kind}", kind)
    start_worker("s", env=app_env(app_dir, RQ_QUEUES=queue.name, **classes))
    before = queue.enqueue(quick_job, 1)
    wait_until(lambda: rconn.hget(before.key, "status") == b"finished", 20, what="the app's class to run unsuspended")
    wait_until(lambda: idle(rconn, "s"), 10, what="the worker idle in its pop")
    time.sleep(0.5)
    suspend(rconn)
    try:
        job = queue.enqueue(quick_job, 2)
        wait_until(lambda: rconn.hget(f"rq:worker:{our_name('s')}", "state") == b"suspended", 15,
                   what="the pop to come back, and the worker to wait while suspended")
        assert where(rconn, queue, job, "s") == {"queued": True, "held": False, "status": b"queued"}, \
            "the job taken during the suspension is neither in its queue nor held: lost"
    finally:
        resume(rconn)
    wait_until(lambda: rconn.hget(job.key, "status") == b"finished", 15, what="the job after rq resume")


@pytest.mark.parametrize("kind", ["rq", "job-prefix", "queue-prefix"])
def test_kill_9_right_after_the_blocking_pops_reply_during_suspension(kind, app_dir, app_module, start_worker, rconn,
                                                                      tmp_path):
    """kill -9 of the worker between BLMOVE's reply and the suspension's put-back: the id is in its held list
    only. The restarted instance puts it back as it starts (``held.put_back``), and runs it once, after
    ``rq resume``. ``put_back`` reads the job's origin at ``Job.key_for`` and rebuilds its queue with rq's
    ``Queue``: with the app's PrefixedJob it finds no origin and drops the job (status queued, in no list);
    with its PrefixedQueue it pushes it onto ``rq:queue:<name>``, which no worker of the app's queue pops."""
    classes = CLASSES[kind]
    queue = app_queue(app_module, rconn, f"kill-{kind}", kind)
    arm = tmp_path / "arm"
    env = app_env(app_dir, RQ_QUEUES=queue.name, R27_KILL_AFTER_BLMOVE=str(arm), **classes)
    worker = start_worker("k", env=env)
    wait_until(lambda: idle(rconn, "k"), 20, what="the worker idle in its pop")
    time.sleep(0.5)
    suspend(rconn)
    try:
        arm.touch()
        job = queue.enqueue(quick_job, 3)
        assert worker.wait(15) == -signal.SIGKILL, "the kill after BLMOVE's reply did not fire"
        assert where(rconn, queue, job, "k")["held"], "the id is in the held list only"
        start_worker("k", env=env)  # systemd's Restart=
        wait_until(lambda: rconn.hget(f"rq:worker:{our_name('k')}", "state") == b"suspended", 20,
                   what="the restarted instance suspended")
        assert where(rconn, queue, job, "k") == {"queued": True, "held": False, "status": b"queued"}, \
            f"after the restart the job is not back in its queue; lists holding it: {lists_holding(rconn, job.id)}"
    finally:
        resume(rconn)
    wait_until(lambda: rconn.hget(job.key, "status") == b"finished", 15, what="the job after rq resume")
    assert rconn.get(f"executions:{job.id}") == b"1"
