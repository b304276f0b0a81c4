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
from helpers import JOBS_DIR, app_package, app_package_env, notify_socket, wait_until
from rq import Queue
from rq.job import Job
from rq.suspension import resume, suspend
from testjobs import quick_job

from rq_worker_service.keys import held as held_key

APP = textwrap.dedent('''
    """An app that keeps its jobs and queues under key prefixes of its own, as rq lets a Job or Queue
    subclass do (rq refuses only rate limits with them: ``Queue._check_rate_limit_namespace``)."""
    import time

    from rq import Worker
    from rq.job import Job
    from rq.queue import Queue


    class PrefixedJob(Job):
        redis_job_namespace_prefix = "app:job:"


    class PrefixedQueue(Queue):
        redis_queue_namespace_prefix = "app:queue:"


    def slow_handler(job, exc_type, exc_value, traceback):
        """An exception handler with a slow call in it (an error tracker's flush over a slow network)."""
        job.connection.set(f"r27:handler-started:{job.id}", exc_type.__name__)
        time.sleep(8)
        job.connection.set(f"r27:handler-ended:{job.id}", 1)


    class RecycledWorker(Worker):
        """The app's worker class, which a deploy renames (``test_a_recycle_into_app_code_…``)."""


    class SuspensionAwareWorker(Worker):
        """Overrides a method of rq's that rq's loop calls before each pop (an app that reports its pause)."""

        def check_for_suspension(self, burst):
            self.connection.incr("r27:check_for_suspension")
            return super().check_for_suspension(burst)
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
    return app_package(tmp_path, "r27app", APP, SITECUSTOMIZE)


def app_env(app_dir: Path, **env: str) -> dict[str, str]:
    # WatchdogSec 30 s: a tick, and a blocking pop (BLMOVE), of 10 s, so that jobs arrive during the pop
    return app_package_env(app_dir, **{"WATCHDOG_USEC": "30000000", **env})


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


def test_a_slow_exception_handler_in_a_fencers_rescue_stops_the_fencers_watchdog_pings(app_dir, start_worker, rconn,
                                                                                       tmp_path):
    """Hang class. A worker killed -9 with its horse is fenced by another, which fails its job (no retry) and
    calls the app's RQ_EXCEPTION_HANDLERS (``recovery.after_claim``) inline, in its own main loop's tick
    (``Fencer.fence`` from ``ServiceParts._sweep``). A handler that takes 8 s stops the fencer's WATCHDOG=1
    pings for 8 s (WatchdogSec 3 s here; 30 s in the unit): systemd aborts the healthy fencer, and cuts the job
    its own horse runs, for another job's handler. The failed webhooks of the same rescue go out on a thread
    for exactly this reason (``webhooks``); the handlers do not."""
    from test_webhooks import kill_with_horse

    env = app_env(app_dir, WATCHDOG_USEC="3000000", RQ_JOB_RETRY_MAX="0",
                  RQ_EXCEPTION_HANDLERS="r27app.slow_handler")
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    try:
        victim = start_worker("1", notify=one, env=env)
        one.wait_for("READY=1")
        job = Queue(connection=rconn).enqueue("testjobs.sleep_job", 60, job_id="r27-fenced")
        one.wait_for("STATUS=", contains="Running job r27-fenced")
        start_worker("2", notify=two, env=env)
        two.wait_for("READY=1")
        kill_with_horse(victim.pid)
        wait_until(lambda: rconn.exists(f"r27:handler-started:{job.id}"), 30, what="the fencer's rescue to call "
                   "the handler")
        started = time.monotonic()
        wait_until(lambda: rconn.exists(f"r27:handler-ended:{job.id}"), 20, what="the handler to end")
        ended = time.monotonic()
        time.sleep(1)
        pings = [t for t, line in two.drain() if line == "WATCHDOG=1" and started - 3 <= t <= ended + 1]
        points = sorted([*pings, ended])  # (pings from 3 s before the handler: the last before it counts)
        gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
        assert max(gaps) < 3.0, (f"the fencer sent no WATCHDOG=1 for {max(gaps):.1f}s (WatchdogSec 3s) while the "
                                 "app's exception handler ran in its rescue")
    finally:
        one.close()
        two.close()


def test_an_app_worker_class_overriding_check_for_suspension_is_refused_or_run(app_dir, start_worker, rconn):
    """Guard class. ``worker_classes.service_class`` refuses an app class that overrides a method ours replaces
    (its override would never run) and lists those in ``REPLACED``; the unit test keeping that list complete
    counts a method as extended when its source calls ``super()`` anywhere. Ours calls rq's
    ``check_for_suspension`` in burst mode only, which a service never runs: an app's override is accepted
    and silently never called (the same holds for ``prepare_execution``, which calls rq's only for a job it
    did not pop)."""
    worker = start_worker("c", env=app_env(app_dir, RQ_WORKER_CLASS="r27app.SuspensionAwareWorker"))
    wait_until(lambda: worker.proc.poll() is not None or idle(rconn, "c"), 20, what="the worker to start or refuse")
    if worker.proc.poll() is not None:
        assert worker.wait(1) == 78 and "check_for_suspension" in worker.output()
        return
    job = Queue(connection=rconn).enqueue(quick_job, 1)
    wait_until(lambda: rconn.hget(job.key, "status") == b"finished", 15, what="the job")
    assert int(rconn.get("r27:check_for_suspension") or 0) > 0, \
        "the app's check_for_suspension was accepted and never called"


def test_the_enqueue_helpers_job_id_keeps_one_pending_job_of_the_apps_job_class(app_dir, app_module, redis_server,
                                                                                  rconn):
    """Run-twice class. ``client.enqueue(..., job_id=)`` promises no second job while one with that id is pending:
    its WATCH/HGET reads the status at ``Job.key_for`` (``rq:job:<id>``), while the job is written with the app's
    RQ_JOB_CLASS (``app:job:<id>``). With a PrefixedJob app the pending job is never seen: the second call
    enqueues the id again, the queue holds it twice, and a worker runs it twice."""
    from rq_worker_service.client import enqueue

    env = {"REDIS_URL": redis_server.url, "RQ_APP_PATH": f"{app_dir}:{JOBS_DIR}", "RQ_JOB_CLASS": "r27app.PrefixedJob"}
    first = enqueue(quick_job, 1, queue="once", job_id="r27-once", retry=None, env=env)
    assert type(first).__name__ == "PrefixedJob" and rconn.hget("app:job:r27-once", "status") == b"queued"
    enqueue(quick_job, 1, queue="once", job_id="r27-once", retry=None, env=env)
    ids = [i.decode() for i in rconn.lrange("rq:queue:once", 0, -1)]
    assert ids == ["r27-once"], f"queue 'once' holds {ids}: the pending job was enqueued a second time"


def test_a_recycle_after_a_deploy_that_broke_the_apps_classes_does_not_end_the_instance(app_dir, start_worker, rconn):
    """Wrong-state class. A recycle first asks whether a start now would fail, so that it never turns into exit
    78, which the unit's RestartPreventExitStatus=78 leaves dead. The check ran ``prepare`` in the running process
    (``service.config_problem``, since replaced by ``startcheck``), where the app's modules are imported already:
    an app deploy that renamed RQ_WORKER_CLASS's class (or broke the module) passed it, the re-executed process
    exited 78 at its start, and the instance was down for good with jobs queued. (``systemctl reload`` runs ``run
    --check`` in a fresh process, which sees the new code.) Once the app is fixed, the next job's end recycles."""
    worker = start_worker("r", env=app_env(app_dir, RQ_QUEUES="recycle", RQ_MAX_JOBS="1",
                                           RQ_WORKER_CLASS="r27app.RecycledWorker", WATCHDOG_USEC="3000000"))
    wait_until(lambda: idle(rconn, "r"), 20, what="the worker idle")
    module = app_dir / "r27app.py"
    module.write_text(module.read_text().replace("class RecycledWorker(", "class RenamedWorker("))  # the deploy
    queue = Queue("recycle", connection=rconn)
    first = queue.enqueue(quick_job, 1)
    wait_until(lambda: rconn.hget(first.key, "status") == b"finished", 15, what="the first job")
    second = queue.enqueue(quick_job, 2)
    wait_until(lambda: worker.proc.poll() is not None or rconn.hget(second.key, "status") == b"finished", 20,
               what="the second job, or the worker's exit")
    assert worker.proc.poll() is None, (f"the recycle re-executed into exit {worker.proc.returncode} (systemd does "
                                        "not restart 78): the instance is down with the second job queued")
    assert worker.output().count("Not recycling (1 job done, RQ_MAX_JOBS=1): a start now would fail: configuration "
                                 "error: RQ_WORKER_CLASS='r27app.RecycledWorker'") == 1, worker.output()
    module.write_text(module.read_text().replace("class RenamedWorker(", "class RecycledWorker("))  # fixed
    third = queue.enqueue(quick_job, 3)
    wait_until(lambda: "Recycled worker" in worker.output(), 20, what="the recycle once the app is fixed")
    wait_until(lambda: rconn.hget(third.key, "status") == b"finished", 15, what="the third job")
    assert worker.proc.poll() is None


def test_a_reload_waits_for_slow_webhooks_without_pinging_the_watchdog(app_dir, start_worker, rconn, tmp_path):
    """Hang class. The restarted instance fails its killed predecessor's job (no retry) and sends its failed
    webhook on a thread (``webhooks.send_failed``), to an endpoint that does not answer within the webhook's
    timeout (8 s). A reload right after: ``service.reexec`` first waits for that thread (``webhooks.drain``, up
    to the sum of the job's webhook timeouts + 1 s, with no limit on that sum), after the loop has ended and
    before the new process exists: no WATCHDOG=1 for all that time (WatchdogSec 3 s here). systemd's watchdog
    stays armed during a reload: a job with a few slow webhooks of rq's default 10 s timeout outlasts the
    unit's 30 s and gets the reloading instance aborted."""
    from rq import Webhook
    from test_webhooks import Endpoint, kill_with_horse

    endpoint = Endpoint(slow=20)
    env = app_env(app_dir, WATCHDOG_USEC="3000000", RQ_JOB_RETRY_MAX="0")
    notify = notify_socket(tmp_path, "restarted")
    try:
        dead = start_worker("w", env=env)
        job = Queue(connection=rconn).enqueue("testjobs.sleep_job", 60, job_id="r27-hook",
                                              webhooks=[Webhook(endpoint.url("slow/f"), "failed", method="POST",
                                                                timeout=8)])
        wait_until(lambda: rconn.get(f"executions:{job.id}") == b"1", 15, what="the job to start")
        kill_with_horse(dead.pid)
        dead.wait(5)
        worker = start_worker("w", notify=notify, env=env)
        notify.wait_for("READY=1")
        assert rconn.hget(job.key, "status") == b"failed"
        asked = time.monotonic()
        worker.signal(signal.SIGHUP)
        notify.wait_for("READY=1", after=1, timeout=20)
        ready_again = next(t for t, line in notify.drain() if line == "READY=1" and t > asked)
        pings = [t for t, line in notify.drain() if line == "WATCHDOG=1" and asked - 3 <= t <= ready_again]
        points = sorted([*pings, ready_again])
        gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
        assert worker.proc.poll() is None and "Reloaded" in worker.output()
        assert max(gaps) < 3.0, (f"no WATCHDOG=1 for {max(gaps):.1f}s (WatchdogSec 3s) during the reload, waiting "
                                 "for the webhook thread")
    finally:
        notify.close()
        endpoint.close()
