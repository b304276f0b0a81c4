"""Fencing judges silence by each fencer's own clock: what must not fence a healthy worker (a step
of Redis's clock, saturated cores, a pause shorter than the period) and what must still fence a lost
one (a worker frozen past its period while every live worker is busy with a long job).

Redis's clock is stepped by a small library preloaded into redis-server (``helpers.ClockShift``;
libfaketime cannot start under jemalloc, which Debian's redis-server uses). WATCHDOG_USEC sets the
period (a watchdog period: three ticks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ClockShift, RedisServer, children_of, notify_socket, wait_until
from rq import Queue
from rq.job import Job
from testjobs import sleep_job

from rq_worker_service import keys
from rq_worker_service.fencing import FENCED_KEY, HISTORY_KEY

HOST = socket.gethostname()
FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
"""A tick of 1 s and a period of 3 s: a member is lost after 4 s without a beat."""


def name(instance: str) -> str:
    return f"{HOST}.rq-worker@{instance}"


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def status(rconn, job_id: str) -> str:
    return Job.fetch(job_id, connection=rconn).get_status().value


def beats(rconn, instance: str) -> int:
    return int(rconn.hget(keys.fencing_beats(), name(instance)) or 0)


def no_fencing(rconn) -> bool:
    return rconn.llen(HISTORY_KEY) == 0 and rconn.hlen(FENCED_KEY) == 0


@pytest.fixture
def stepped_redis(tmp_path):
    """A redis-server whose wall clock the test steps: ``clock.step_to(seconds)`` off the real one."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed (apt-get install gcc): it builds the clock shifter")
    clock = ClockShift(tmp_path)
    server = RedisServer()
    server.env = clock.env()
    server.start()
    server.clock = clock  # type: ignore[attr-defined]
    yield server
    server.cleanup()


def test_a_step_of_redis_clock_fences_no_healthy_busy_worker(stepped_redis, start_worker, tmp_path):
    """Redis's clock steps +60 s, back, and -60 s while two workers run jobs: with deadlines in Redis
    time the first step made both overdue at once and each fenced the other (kills its horse, runs
    its job again)."""
    client = stepped_redis.client()
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    start_worker("1", notify=one, url=stepped_redis.url, env=FAST)
    start_worker("2", notify=two, url=stepped_redis.url, env=FAST)
    one.wait_for("READY=1")
    two.wait_for("READY=1")
    jobs = [Queue(connection=client).enqueue(sleep_job, 14, job_id="busy-1")]
    wait_until(lambda: status(client, "busy-1") == "started", 5, what="the first job to start")
    time.sleep(0.5)  # half a tick apart: neither beats between the other's step-time beat and sweep
    jobs.append(Queue(connection=client).enqueue(sleep_job, 14, job_id="busy-2"))
    one.wait_for("STATUS=", contains="Running job busy-")
    two.wait_for("STATUS=", contains="Running job busy-")
    time.sleep(4)  # both have beaten on time for over a period: each may fence the other
    previous = 0
    for offset in (60, 0, -60):
        before = client.time()[0]
        stepped_redis.clock.step_to(offset)
        assert abs(client.time()[0] - before - (offset - previous)) <= 1  # Redis's clock stepped
        previous = offset
        time.sleep(3)  # over a period: a fencing would have happened by now
        assert no_fencing(client), client.lrange(HISTORY_KEY, 0, -1)
    for job in jobs:
        wait_until(lambda job=job: status(client, job.id) == "finished", 15, what=f"{job.id} to finish")
        assert executions(client, job.id) == 1
    assert no_fencing(client)
    one.close()
    two.close()


def freeze(pid: int) -> list[int]:
    """SIGSTOP a worker and its horse, as a frozen VM or process would be; returns what was stopped."""
    frozen = [pid, *children_of(pid, zombies=True)]
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    return frozen


def thaw(frozen: list[int]) -> None:
    for p in frozen:
        os.kill(p, signal.SIGCONT)


@pytest.mark.parametrize("worker_class", ["fork", "simple"])
def test_a_lost_worker_is_fenced_while_every_live_worker_is_busy(start_worker, rconn, tmp_path, worker_class):
    """Worker 1 freezes mid-job while worker 2 runs 12 s jobs back to back. Fork: worker 2 fences it
    from the ticks it runs while its horse works, within the bound. Simple: its job holds the main
    thread (where a rescue's callbacks must run), so it fences at the end of the job in hand, before
    taking the next; the watch thread's ticks used to keep the main loop's from ever being due."""
    env = {**FAST, "RQ_WORKER_CLASS": worker_class}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    lost = start_worker("1", notify=one, env={**env, "RQ_QUEUES": "victim"})
    one.wait_for("READY=1")
    victim = Queue("victim", connection=rconn).enqueue(sleep_job, 60, job_id="on-the-lost-worker")
    one.wait_for("STATUS=", contains="Running job on-the-lost-worker")
    start_worker("2", notify=two, env={**env, "RQ_QUEUES": "busy,victim"})
    two.wait_for("READY=1")
    busy = Queue("busy", connection=rconn)
    first, second = (busy.enqueue(sleep_job, 12, job_id=f"long-{i}") for i in (1, 2))
    two.wait_for("STATUS=", contains="Running job long-1")
    frozen_at = time.monotonic()
    frozen = freeze(lost.pid)
    try:
        wait_until(lambda: rconn.hexists(FENCED_KEY, name("1")), 30, what="worker 2 to fence worker 1")
        fenced_after = time.monotonic() - frozen_at
        if worker_class == "fork":
            assert fenced_after < 4 + 1 + 3  # lost 4 s after its last beat, seen within a tick, + slack
            assert status(rconn, first.id) == "started"  # while worker 2's own job runs
        else:
            assert status(rconn, first.id) == "finished" and status(rconn, second.id) != "finished"
            ended = Job.fetch(first.id, connection=rconn).ended_at
            fenced = json.loads(rconn.hget(FENCED_KEY, name("1")))["at"]
            assert ended is not None and fenced - ended.timestamp() < 2  # at the job's end, not the next's
        wait_until(lambda: status(rconn, victim.id) in ("queued", "started"), 5, what="the victim's job re-queued")
        assert executions(rconn, victim.id) == 1
    finally:
        thaw(frozen)
    one.close()
    two.close()


def test_a_pause_shorter_than_the_period_fences_no_one(start_worker, rconn, tmp_path):
    """Period 30 s (the shipped WatchdogSec): worker 2 and its horse stop for 20 s mid-job, then go
    on; worker 1, busy too, must not fence it, and each job runs once."""
    env = {"WATCHDOG_USEC": "30000000", "RQ_WITH_SCHEDULER": "no"}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    start_worker("1", notify=one, env=env)
    paused = start_worker("2", notify=two, env=env)
    one.wait_for("READY=1")
    two.wait_for("READY=1")
    jobs = [Queue(connection=rconn).enqueue(sleep_job, 24, job_id=f"steady-{i}") for i in (1, 2)]
    one.wait_for("STATUS=", contains="Running job steady-")
    two.wait_for("STATUS=", contains="Running job steady-")
    # Right after one of its beats: the silence is the pause (the case). Paused just before a
    # beat instead, it would be a whole period (20 s + a 10 s tick), which its systemd's watchdog
    # also ends; the fencers count the same (docs/operations.md, Fencing).
    count = beats(rconn, "2")
    count = wait_until(lambda: beats(rconn, "2") if beats(rconn, "2") > count else 0, 12, interval=0.02,
                       what="a beat of worker 2")
    frozen = freeze(paused.pid)
    time.sleep(20)
    assert no_fencing(rconn)
    thaw(frozen)
    wait_until(lambda: beats(rconn, "2") > count, 15, what="worker 2 to beat again")
    for job in jobs:
        wait_until(lambda job=job: status(rconn, job.id) == "finished", 15, what=f"{job.id} to finish")
        assert executions(rconn, job.id) == 1
    assert no_fencing(rconn) and paused.proc is not None and paused.proc.poll() is None
    one.close()
    two.close()


@pytest.mark.full_matrix
@pytest.mark.skipif(not os.environ.get("RQWS_FAULTS_FULL") == "1", reason="60 s under load: RQWS_FAULTS_FULL=1 runs it")
def test_saturated_cores_for_a_minute_fence_no_one(start_worker, rconn, tmp_path):
    """A busy loop on every core for 60 s while two workers run 5 s jobs back to back (period 3 s)."""
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    workers = [start_worker("1", notify=one, env=FAST), start_worker("2", notify=two, env=FAST)]
    one.wait_for("READY=1")
    two.wait_for("READY=1")
    jobs = [Queue(connection=rconn).enqueue(sleep_job, 5, job_id=f"loaded-{i}") for i in range(24)]
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert no_fencing(rconn), rconn.lrange(HISTORY_KEY, 0, -1)
            time.sleep(1)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait(10)
    for job in jobs:
        wait_until(lambda job=job: status(rconn, job.id) == "finished", 30, what=f"{job.id} to finish")
        assert executions(rconn, job.id) == 1
    assert no_fencing(rconn) and all(w.proc is not None and w.proc.poll() is None for w in workers)
    one.close()
    two.close()
