"""The pop (``held``): a job taken from one of several queues survives a stop, a reload, a cut link or
kill -9 right after the reply; no other worker takes a job a live worker holds; a job rq cannot load
is failed with one line and the queue goes on.

A fault is put at a named point (``faults.reached``) by a ``sitecustomize`` on the worker's
PYTHONPATH, as the fault suite does: it acts once (a marker file), at the point the test names.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import time
import zlib
from pathlib import Path

import pytest
from helpers import wait_until
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from testjobs import logged_job, quick_job, sleep_job

HOST = socket.gethostname()
QUEUES = {"RQ_QUEUES": "q1,q2,q3", "WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}

SITECUSTOMIZE = '''
import os, signal, time
spec = os.environ.get("POP_FAULT")
if spec:
    from rq_worker_service import faults
    point, action, *arg = spec.split(":")
    mark = os.environ["POP_FAULT_MARK"]

    def reached(name):
        if name != point or os.path.exists(mark):
            return
        open(mark, "w").close()
        if action == "sleep":
            time.sleep(float(arg[0]))
        else:
            os.kill(os.getpid(), getattr(signal, action))

    faults.reached = reached

if os.environ.get("POP_DROP_REPLY"):  # the link drops while a pop's reply is on the way: Redis popped, we never hear
    import redis
    execute = redis.Redis.execute_command

    def dropped(self, *args, **options):
        reply = execute(self, *args, **options)
        script = args[0] == "EVALSHA" and isinstance(reply, list) and len(reply) == 2
        popped = args[0] in ("BLPOP", "BLMOVE") or script
        if reply and popped and not os.path.exists(os.environ["POP_FAULT_MARK"]):
            open(os.environ["POP_FAULT_MARK"], "w").close()
            self.connection_pool.disconnect()
            raise redis.exceptions.ConnectionError("Connection closed by server (reply dropped by the test)")
        return reply

    redis.Redis.execute_command = dropped
'''


def name(instance: str) -> str:
    return f"{HOST}.rq-worker@{instance}"


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def status(rconn, job_id: str) -> str | None:
    raw = rconn.hget(f"rq:job:{job_id}", "status")
    return raw.decode() if raw else None


def fault(tmp_path: Path, spec: str, instance: str = "1") -> dict[str, str]:
    """The environment that puts ``spec`` (point:action[:arg]) into worker ``instance``, once."""
    site = tmp_path / "faultsite"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "POP_FAULT": spec, "POP_FAULT_MARK": str(tmp_path / f"fault-{instance}.done"),
            "POP_FAULT_NAME": name(instance)}


@pytest.mark.parametrize("kind", ["fork", "spawn", "simple"])
def test_a_stop_right_after_the_pop_from_several_queues_runs_the_job_then_exits_0(kind, start_worker, rconn,
                                                                                   tmp_path):
    worker = start_worker("1", env={**QUEUES, **fault(tmp_path, "pop.reply:SIGTERM"), "RQ_WORKER_CLASS": kind})
    Queue("q2", connection=rconn).enqueue(quick_job, 1, job_id="stopped-after-pop")
    assert worker.wait(20) == 0
    assert status(rconn, "stopped-after-pop") == "finished" and executions(rconn, "stopped-after-pop") == 1
    assert not rconn.exists(f"rq:service:held:{name('1')}")


def test_a_reload_right_after_the_pop_runs_the_job_once(start_worker, rconn, tmp_path):
    start_worker("1", env={**QUEUES, **fault(tmp_path, "pop.reply:SIGHUP")})
    Queue("q3", connection=rconn).enqueue(quick_job, 1, job_id="reloaded-after-pop")
    wait_until(lambda: status(rconn, "reloaded-after-pop") == "finished", 20, what="the job to finish")
    time.sleep(1.5)  # the reloaded process is up and has looked at its held list
    assert executions(rconn, "reloaded-after-pop") == 1


def test_kill_9_right_after_the_pop_loses_nothing_and_keeps_the_queue_order(start_worker, rconn, tmp_path):
    log = tmp_path / "ran.log"
    for queue, tag in (("q3", "c"), ("q2", "b"), ("q1", "a")):
        Queue(queue, connection=rconn).enqueue(logged_job, str(log), tag, job_id=f"order-{tag}")
    worker = start_worker("1", env={**QUEUES, **fault(tmp_path, "pop.reply:SIGKILL")})
    assert worker.wait(20) == -signal.SIGKILL
    assert Queue("q1", connection=rconn).job_ids == []  # q1's job was taken, then the worker died
    start_worker("1", env=QUEUES)  # its restarted instance puts it back first
    wait_until(lambda: log.exists() and len(log.read_text().split("\n")) > 3, 20, what="all three jobs to run")
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["a", "b", "c"]


def test_a_pop_reply_lost_with_the_link_loses_nothing(start_worker, rconn, tmp_path):
    start_worker("1", env={**QUEUES, **fault(tmp_path, "none:none"), "POP_DROP_REPLY": "1"})
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    Queue("q2", connection=rconn).enqueue(quick_job, 1, job_id="cut-after-pop")
    wait_until(lambda: status(rconn, "cut-after-pop") == "finished", 20, what="the job to run after the cut")
    assert executions(rconn, "cut-after-pop") == 1


def test_a_starting_instance_never_takes_a_job_a_live_worker_holds(start_worker, rconn, tmp_path):
    """Issue 25 item 7: a worker slow between its pop and the registration (a long tick, a pause)."""
    start_worker("1", env={"WATCHDOG_USEC": "30000000", **fault(tmp_path, "pop.reply:sleep:6")})
    queue = Queue(connection=rconn)
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    queue.enqueue(quick_job, 1, job_id="held-by-a-slow-worker")
    wait_until(lambda: queue.count == 0, 5, what="worker 1 to pop the job")
    popped = time.monotonic()
    start_worker("2", env={"WATCHDOG_USEC": "30000000"})  # its start-up and its ticks look for orphaned pops
    wait_until(lambda: status(rconn, "held-by-a-slow-worker") == "finished", 20, what="the job to finish")
    time.sleep(max(0.0, popped + 7.5 - time.monotonic()))  # worker 1 has woken and run what it holds
    assert executions(rconn, "held-by-a-slow-worker") == 1


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_a_job_rq_cannot_load_is_failed_with_one_line_and_the_queue_goes_on(kind, start_worker, rconn, tmp_path):
    """Issue 25 item 5: a status from a newer rq, a payload that does not unpickle; good jobs behind."""
    q1, q2 = Queue("q1", connection=rconn), Queue("q2", connection=rconn)
    q1.enqueue(quick_job, 1, job_id="from-the-future")
    rconn.hset("rq:job:from-the-future", "status", "hibernating")
    q1.enqueue(quick_job, 1, job_id="garbled")
    rconn.hset("rq:job:garbled", "data", zlib.compress(b"not a pickle"))
    good = [q1.enqueue(quick_job, i, job_id=f"good-{i}").id for i in range(3)]
    good.append(q2.enqueue(quick_job, 9, job_id="good-q2").id)
    worker = start_worker("1", env={**QUEUES, "RQ_WORKER_CLASS": kind})
    wait_until(lambda: all(status(rconn, j) == "finished" for j in good), 20, what="the good jobs to finish")
    assert worker.proc.poll() is None, "the worker ended"
    failed = FailedJobRegistry("q1", connection=rconn)
    wait_until(lambda: set(failed.get_job_ids()) == {"from-the-future", "garbled"}, 5,
               what="both bad jobs in q1's failed registry")
    assert status(rconn, "from-the-future") == "failed" and status(rconn, "garbled") == "failed"
    lines = [line for line in worker.output().splitlines() if "from-the-future" in line and "ERROR" in line]
    assert len(lines) == 1 and "cannot be loaded" in lines[0] and "hibernating" in lines[0], worker.output()
    assert "Unpickl" in Job.fetch("garbled", connection=rconn).latest_result().exc_string
    assert executions(rconn, "from-the-future") == 0


def test_an_idle_worker_of_several_queues_takes_a_job_on_its_last_queue_at_once(start_worker, rconn, tmp_path):
    """The multi-queue pop takes a job from a lower queue while the first is empty, within POLL."""
    start_worker("1", env=QUEUES)
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    time.sleep(0.5)
    start = time.monotonic()
    Queue("q3", connection=rconn).enqueue(sleep_job, 0, job_id="lower-queue")
    wait_until(lambda: status(rconn, "lower-queue") == "finished", 5, what="the q3 job to run", interval=0.02)
    assert time.monotonic() - start < 1.0
