"""Fencing judges silence by each fencer's own clock: what must not fence a healthy worker (a step
of Redis's clock, saturated cores, a pause shorter than the period) and what must still fence a lost
one (a worker frozen past its period while every live worker is busy with a long job).

Redis's clock is stepped by a small library preloaded into redis-server (``helpers.ClockShift``;
libfaketime cannot start under jemalloc, which Debian's redis-server uses). WATCHDOG_USEC sets the
period (a watchdog period: three ticks).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from helpers import ClockShift, NotifySocket, RedisServer, wait_until
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


def horse_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def ready(tmp_path: Path, label: str) -> NotifySocket:
    directory = tmp_path / label
    directory.mkdir()
    return NotifySocket(directory)


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
    one, two = ready(tmp_path, "one"), ready(tmp_path, "two")
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
