"""Fault review of issue 25's fixes: interleavings that lost a job or ran one twice.

Faults go in at named points (``faults.reached``) through test_pop's ``sitecustomize``.
"""

from __future__ import annotations

import signal
import time

import pytest
from helpers import wait_until
from rq import Queue
from test_pop import QUEUES, executions, fault, name, status
from testjobs import quick_job, timed_job


def where(rconn, job_id: str) -> list[str]:
    """Every list and registry that holds ``job_id``."""
    found = []
    for key in rconn.scan_iter("rq:*"):
        k = key.decode()
        kind = rconn.type(key).decode()
        if kind == "list" and job_id.encode() in rconn.lrange(key, 0, -1):
            found.append(k)
        elif kind == "zset" and any(m.decode().split(":")[0] == job_id for m in rconn.zrange(key, 0, -1)):
            found.append(k)
    return found


@pytest.mark.parametrize("queues", ["one", "three"])
def test_kill_9_after_the_registration_before_the_horse_starts_loses_nothing(queues, start_worker, rconn, tmp_path):
    env = QUEUES if queues == "three" else {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    worker = start_worker("1", env={**env, **fault(tmp_path, "job.registered:SIGKILL")})
    Queue("q1" if queues == "three" else "default", connection=rconn).enqueue(quick_job, 1, job_id="registered")
    assert worker.wait(20) == -signal.SIGKILL
    start_worker("1", env=env)  # the restarted instance rescues what its predecessor had started
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and status(rconn, "registered") != "finished":
        time.sleep(0.2)
    assert status(rconn, "registered") == "finished", (status(rconn, "registered"), where(rconn, "registered"))
    assert executions(rconn, "registered") == 1


def overlaps(rconn, queue: str) -> list[tuple[float, float]]:
    """(start, end) of each execution ``timed_job`` recorded on ``queue``, and whether any two overlap."""
    spans = sorted(tuple(map(float, e.decode().split()[:2])) for e in rconn.lrange(f"ran:{queue}", 0, -1))
    return [(a, b) for (a, b), (c, _) in zip(spans, spans[1:], strict=False) if c < b]


def test_a_worker_frozen_with_a_job_in_hand_does_not_run_it_after_its_fencer_put_it_back(start_worker, rconn,
                                                                                           tmp_path):
    """Frozen between the pop and the registration (a VM pause, SIGSTOP) past its fencing deadline: its
    fencer puts the held job back and another worker runs it; the frozen one, resumed with the id in
    hand, must not start it as well (two executions at once)."""
    fast = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    frozen = start_worker("1", env={**fast, **fault(tmp_path, "pop.fetched:SIGSTOP")})
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    Queue(connection=rconn).enqueue(timed_job, 6, job_id="in-hand")
    wait_until(lambda: (tmp_path / "fault-1.done").exists(), 10, what="worker 1 to stop itself with the job in hand")
    start_worker("2", env=fast)
    wait_until(lambda: executions(rconn, "in-hand") >= 1, 20, what="worker 2 to run the job put back by its fencing")
    frozen.signal(signal.SIGCONT)
    wait_until(lambda: status(rconn, "in-hand") == "finished", 20, what="the job to finish")
    time.sleep(2)  # worker 1 has had time to register what it held and start it
    assert executions(rconn, "in-hand") == 1 and overlaps(rconn, "default") == [], rconn.lrange("ran:default", 0, -1)


def test_a_worker_frozen_after_the_registration_does_not_start_the_job_its_fencer_requeued(start_worker, rconn,
                                                                                          tmp_path):
    fast = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    frozen = start_worker("1", env={**fast, **fault(tmp_path, "job.registered:SIGSTOP")})
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    Queue(connection=rconn).enqueue(timed_job, 6, job_id="registered-frozen")
    wait_until(lambda: (tmp_path / "fault-1.done").exists(), 10, what="worker 1 to stop itself after registering")
    start_worker("2", env=fast)
    wait_until(lambda: executions(rconn, "registered-frozen") >= 1, 20, what="worker 2 to run the rescued job")
    frozen.signal(signal.SIGCONT)
    wait_until(lambda: status(rconn, "registered-frozen") == "finished", 20, what="the job to finish")
    time.sleep(2)
    assert executions(rconn, "registered-frozen") == 1, rconn.lrange("ran:default", 0, -1)


DROP_REGISTRATION_REPLY = '''
import os
import redis
_run = redis.Redis.execute_command

def _dropped(self, *args, **options):
    reply = _run(self, *args, **options)
    # The registration's script: EVALSHA with the held list among its keys and rq's writes, its LREM of
    # the held id among them, in its arguments (held.Held.register), the words as rq passed them (queued.flatten).
    registration = args and args[0] == "EVALSHA" and "ZADD" in args and any(":service:held:" in str(a) for a in args)
    mark = os.environ["DROP_MARK"]
    if registration and not os.path.exists(mark):  # applied by Redis; its reply never read
        open(mark, "w").close()
        raise redis.exceptions.ConnectionError("Connection closed by server (reply dropped by the test)")
    return reply

redis.Redis.execute_command = _dropped
'''


@pytest.mark.parametrize("queues", ["one", "three"])
def test_a_registration_whose_reply_is_lost_runs_the_job_once(queues, start_worker, rconn, tmp_path):
    """The registration's script is applied and its reply lost with the link: the job runs, once."""
    site = tmp_path / "dropsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DROP_REGISTRATION_REPLY)
    env = QUEUES if queues == "three" else {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    start_worker("1", env={**env, "PYTHONPATH": str(site), "DROP_MARK": str(tmp_path / "dropped")})
    Queue("q1" if queues == "three" else "default", connection=rconn).enqueue(quick_job, 1, job_id="exec-lost")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and status(rconn, "exec-lost") != "finished":
        time.sleep(0.2)
    assert (tmp_path / "dropped").exists()
    assert status(rconn, "exec-lost") == "finished", (status(rconn, "exec-lost"), where(rconn, "exec-lost"))
    assert executions(rconn, "exec-lost") == 1


def test_a_slow_fencer_does_not_rescue_the_job_of_the_lost_workers_restarted_instance(start_worker, rconn,
                                                                                     tmp_path):
    """Worker 1 goes silent; worker 2 claims it as lost, then stalls (a pause, a slow CLIENT LIST) before
    fencing. Meanwhile worker 1 is restarted (same name), joins anew and starts a job. Worker 2 then
    fences by name: it closes the new instance's connections, deletes its rq key and re-queues its
    running job, and the new instance, no longer marked fenced (its join cleared the mark), runs it on."""
    fast = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    site = tmp_path / "fencesite"
    site.mkdir()
    fast["PYTHONPATH"] = str(site)
    (site / "sitecustomize.py").write_text(FENCE_PAUSE)
    silent = start_worker("1", env=fast)
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 10, what="worker 1 to register")
    start_worker("2", env={**fast, "RV_FENCE_PAUSE": "6", "RV_FENCE_MARK": str(tmp_path / "fencing")})
    time.sleep(3.5)  # worker 2 beats on time for a period: it may fence
    silent.signal(signal.SIGSTOP)
    wait_until(lambda: (tmp_path / "fencing").exists(), 15, what="worker 2 to claim worker 1 and stall")
    silent.signal(signal.SIGKILL)
    silent.wait(10)
    start_worker("1", env=fast)  # systemd restarts it: it joins anew
    Queue(connection=rconn).enqueue(timed_job, 8, job_id="new-instance")
    wait_until(lambda: executions(rconn, "new-instance") >= 1, 10, what="worker 1's new instance to start the job")
    wait_until(lambda: status(rconn, "new-instance") == "finished", 30, what="the job to finish")
    time.sleep(2)
    assert executions(rconn, "new-instance") == 1 and overlaps(rconn, "default") == [], \
        rconn.lrange("ran:default", 0, -1)


FENCE_PAUSE = '''
import os, signal, subprocess
if os.environ.get("RV_FENCE_PAUSE"):
    from rq_worker_service.parts import liveness
    fence, paused = liveness.Fencer.fence, []

    def slow_fence(self, lost):
        if not paused:
            paused.append(1)
            open(os.environ["RV_FENCE_MARK"], "w").close()
            subprocess.Popen(["sh", "-c", f"sleep {os.environ['RV_FENCE_PAUSE']}; kill -CONT {os.getpid()}"])
            os.kill(os.getpid(), signal.SIGSTOP)
        return fence(self, lost)

    liveness.Fencer.fence = slow_fence
'''


def test_a_registered_job_whose_worker_stays_down_is_not_dropped_by_rqs_cleanup(start_worker, rconn, tmp_path):
    """Worker 1 dies between the registration and STARTED and is not restarted (its host stays down);
    once the entry expires, the next maintenance (here worker 2's, at its start) must put it back:
    rq's StartedJobRegistry.cleanup handles only STARTED jobs and drops the entry (the job is lost)."""
    fast = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
    worker = start_worker("1", env={**fast, **fault(tmp_path, "job.registered:SIGKILL")})
    Queue(connection=rconn).enqueue(quick_job, 1, job_id="left-registered")
    assert worker.wait(20) == -signal.SIGKILL
    (entry,) = rconn.zrange("rq:wip:default", 0, -1)
    rconn.zadd("rq:wip:default", {entry: time.time() - 1}, xx=True)  # 61 s later: expired
    start_worker("2", env=fast)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and status(rconn, "left-registered") != "finished":
        time.sleep(0.2)
    assert status(rconn, "left-registered") == "finished", where(rconn, "left-registered")
    assert executions(rconn, "left-registered") == 1


CUT_AT_STARTED = '''
import os
import redis
from redis.commands.core import Script
_call = Script.__call__

def _cut(self, keys=[], args=[], client=None):
    starting = any(arg in (b"started", "started") for arg in args)  # the STARTED mark's script
    mark = os.environ["CUT_MARK"]
    if starting and not os.path.exists(mark):  # the link drops as the job is about to be marked STARTED
        open(mark, "w").close()
        (client or self.registered_client).connection_pool.disconnect()
        raise redis.exceptions.ConnectionError("Connection closed by server (cut by the test)")
    return _call(self, keys=keys, args=args, client=client)

Script.__call__ = _cut
'''


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_a_link_drop_as_the_job_is_marked_started_does_not_fail_it(kind, start_worker, rconn, tmp_path):
    """rq's perform_job catches everything from its own prepare_job_execution as the job's failure."""
    site = tmp_path / "cutsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CUT_AT_STARTED)
    start_worker("1", env={"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no", "RQ_WORKER_CLASS": kind,
                           "PYTHONPATH": str(site), "CUT_MARK": str(tmp_path / "cut")})
    Queue(connection=rconn).enqueue(quick_job, 1, job_id="cut-at-started")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and status(rconn, "cut-at-started") not in ("finished", "failed"):
        time.sleep(0.2)
    assert (tmp_path / "cut").exists()
    assert status(rconn, "cut-at-started") == "finished" and executions(rconn, "cut-at-started") == 1


CUT_AT_THE_END = '''
import os
import redis
from redis.client import Pipeline
_watch = Pipeline.watch
_execute = redis.Redis.execute_command

def _first_time():
    mark = os.environ["END_MARK"]
    if os.path.exists(mark):
        return False
    open(mark, "w").close()
    return True

def _cut(self, *names):
    if any(str(n).endswith(":dependents") for n in names) and _first_time():  # rq's end of a job
        self.reset()
        raise redis.exceptions.ConnectionError("Connection closed by server (cut by the test)")
    return _watch(self, *names)

def _cut_script(self, *args, **options):
    # our end of a job without dependents: one script whose first key is the dependents key
    if args[0] == "EVALSHA" and str(args[3]).endswith(":dependents") and _first_time():
        raise redis.exceptions.ConnectionError("Connection closed by server (cut by the test)")
    return _execute(self, *args, **options)

Pipeline.watch = _cut
redis.Redis.execute_command = _cut_script
'''


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_a_link_drop_as_a_returned_jobs_end_is_written_is_not_its_failure(kind, start_worker, rconn, tmp_path):
    """rq's perform_job took a Redis error in the end of a job that returned for the job's own: the
    traceback logged as the job's, its failure callback and exception handlers run with the Redis error.
    Here one warning, and the job goes where a job lost with its worker goes: re-queued by the rescue
    (simple; rq's abandoned-job callback), or retried as interrupted (fork: its horse exits 1)."""
    from testjobs import note_failure

    site = tmp_path / "endsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CUT_AT_THE_END)
    worker = start_worker("1", env={"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no", "RQ_WORKER_CLASS": kind,
                                    "PYTHONPATH": str(site), "END_MARK": str(tmp_path / "cut")})
    Queue(connection=rconn).enqueue(quick_job, 1, job_id="cut-at-end", on_failure=note_failure)
    wanted = "finished" if kind == "simple" else "scheduled"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and status(rconn, "cut-at-end") != wanted:
        time.sleep(0.2)
    output = worker.output()
    assert status(rconn, "cut-at-end") == wanted, (where(rconn, "cut-at-end"), output[-4000:])
    assert (tmp_path / "cut").exists()
    assert "Lost Redis while recording the end of job cut-at-end" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert rconn.get("failure-callback:cut-at-end") in (None, b"AbandonedJobError"), \
        "the failure callback ran with the Redis error as the job's"
