"""Fault review of issue 25's fixes: interleavings that lost a job or ran one twice.

Faults go in at named points (``faults.reached``) through test_pop's ``sitecustomize``.
"""

from __future__ import annotations

import signal
import time

import pytest
from rq import Queue
from test_pop import QUEUES, executions, fault, status
from testjobs import quick_job


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
