"""Fencing against a real redis-server: frozen and dead workers lose their jobs to live ones, fast.

WATCHDOG_USEC=3 s gives a tick of 1 s and a fencing period of 3 s (a member is lost 4 s after its
last beat), so each scenario takes seconds; the e2e layer measures the shipped 30 s defaults.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import NotifySocket, RedisServer, wait_until
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import quick_job, sleep_job

from rq_worker_service import exits
from rq_worker_service.fencing import BEATS_KEY, FENCED_KEY, HISTORY_KEY

HOST = socket.gethostname()
FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}


def name(instance: str) -> str:
    return f"{HOST}.rq-worker@{instance}"


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def status(rconn, job_id: str) -> str:
    return Job.fetch(job_id, connection=rconn).get_status().value


def blocked_in_pop(rconn, worker: str) -> bool:
    return any(c.get("name") == worker and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
               for c in rconn.client_list())


def horse_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def ready(tmp_path: Path, label: str) -> NotifySocket:
    directory = tmp_path / label
    directory.mkdir()
    return NotifySocket(directory)


def test_job_handed_to_a_frozen_pop_runs_elsewhere_and_the_frozen_worker_exits(start_worker, rconn, tmp_path):
    one = ready(tmp_path, "one")
    frozen = start_worker("1", notify=one, env=FAST)
    one.wait_for("READY=1")
    wait_until(lambda: blocked_in_pop(rconn, name("1")), 5, what="worker 1 to block in its pop")
    frozen.signal(signal.SIGSTOP)
    assert blocked_in_pop(rconn, name("1"))  # the server still holds the frozen process's pop
    job = Queue(connection=rconn).enqueue(quick_job, 21, job_id="handed-to-frozen")
    wait_until(lambda: rconn.lrange(f"rq:service:held:{name('1')}", 0, -1) == [b"handed-to-frozen"], 5,
               what="the job to be handed to the frozen pop (its held list)")
    frozen_at = time.monotonic()

    two = ready(tmp_path, "two")
    start_worker("2", notify=two, env=FAST)
    wait_until(lambda: status(rconn, job.id) == "finished", 20, what="the job to run on worker 2")
    # Put back by worker 2 when it fences worker 1: start-up (≈2 s) + a period on time before it may fence
    # (3 s) + worker 1's deadline, not rq's minute; no worker guesses at a live worker's held list.
    assert time.monotonic() - frozen_at < 12
    assert executions(rconn, job.id) == 1

    wait_until(lambda: rconn.hexists(FENCED_KEY, name("1")), 15, what="worker 2 to fence worker 1")
    # The history entry is written after the rescue it lists, so it can trail the fence by a moment.
    wait_until(lambda: rconn.llen(HISTORY_KEY) > 0, 5, what="worker 2 to record the fencing")
    history = [json.loads(e) for e in rconn.lrange(HISTORY_KEY, 0, -1)]
    assert history[0]["worker"] == name("1") and history[0]["host"] == HOST and history[0]["by"] == name("2")
    assert not rconn.exists(f"rq:worker:{name('1')}")  # gone from rq's worker list

    other = Queue(connection=rconn).enqueue(quick_job, 1, job_id="after-fence")
    wait_until(lambda: status(rconn, other.id) == "finished", 10, what="worker 2 to run the next job")
    frozen.signal(signal.SIGCONT)
    assert frozen.wait(15) == exits.TEMPFAIL
    assert "was fenced" in frozen.output()
    assert executions(rconn, other.id) == 1
    one.close()
    two.close()


def test_frozen_busy_worker_loses_its_job_to_a_live_one_at_once(start_worker, rconn, tmp_path):
    one, two = ready(tmp_path, "one"), ready(tmp_path, "two")
    busy = start_worker("1", notify=one, env={**FAST, "RQ_QUEUES": "solo"})
    one.wait_for("READY=1")
    job = Queue("solo", connection=rconn).enqueue(sleep_job, 5, job_id="frozen-mid-job")
    one.wait_for("STATUS=", contains="Running job frozen-mid-job")
    start_worker("2", notify=two, env={**FAST, "RQ_QUEUES": "solo"})
    two.wait_for("READY=1")
    frozen = [busy.pid, *horse_pids(busy.pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_until(lambda: executions(rconn, job.id) == 2, 15, what="the job to run again on worker 2")
    rerun_after = time.monotonic() - frozen_at
    assert rerun_after < 4 + 1 + 3  # lost 4 s after its last beat, seen at the next tick, +slack
    wait_until(lambda: status(rconn, job.id) == "finished", 15, what="the re-run to finish")
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    assert busy.wait(15) == exits.TEMPFAIL
    assert executions(rconn, job.id) <= 2  # the frozen horse was killed, or finished: at least once
    result = Job.fetch(job.id, connection=rconn).latest_result()
    assert result is not None and result.type.name == "SUCCESSFUL"
    one.close()
    two.close()


def test_killed_worker_that_never_restarts_is_fenced_and_its_job_requeued_at_once(start_worker, rconn, tmp_path):
    one, two = ready(tmp_path, "one"), ready(tmp_path, "two")
    dead = start_worker("1", notify=one, env=FAST)
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 3, job_id="orphaned-by-kill")
    one.wait_for("STATUS=", contains="Running job orphaned-by-kill")
    start_worker("2", notify=two, env=FAST)
    two.wait_for("READY=1")
    for pid in [dead.pid, *horse_pids(dead.pid)]:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: status(rconn, job.id) == "finished" and executions(rconn, job.id) == 2, 20,
               what="the job to be re-run by worker 2")
    assert time.monotonic() - killed_at < 4 + 1 + 3 + 3  # the default 60 s retry interval did not apply
    entry = json.loads(rconn.lindex(HISTORY_KEY, 0))
    assert entry["jobs"] == [job.id] and entry["by"] == name("2")
    one.close()
    two.close()


def test_a_redis_stall_longer_than_the_period_fences_no_one(tmp_path):
    """Redis frozen (SIGSTOP: its data and the deadlines survive) for longer than the period: every
    deadline has passed when it resumes, yet no live worker may fence another."""
    server = RedisServer().start()
    procs = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_", "WATCHDOG_"))}
        env.update({**FAST, "REDIS_URL": server.url, "PYTHONUNBUFFERED": "1",
                    "RQ_APP_PATH": str(Path(__file__).resolve().parents[1] / "jobs")})
        for instance in ("1", "2"):
            procs.append(subprocess.Popen([sys.executable, "-m", "rq_worker_service", "run", "--instance", instance],
                                          env=env, cwd=tmp_path, stdout=open(tmp_path / f"w{instance}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        client = server.client()
        wait_until(lambda: client.zcard(BEATS_KEY) == 2, 15, what="both workers to join")
        time.sleep(4)  # both may fence by now
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(8)  # every deadline passes while Redis is stalled
        server.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: client.zcard(BEATS_KEY) == 2, 20, what="both workers to beat again")
        time.sleep(6)  # longer than the period: a fencing would have happened by now
        assert client.llen(HISTORY_KEY) == 0 and client.hlen(FENCED_KEY) == 0
        assert all(p.poll() is None for p in procs), [(tmp_path / f"w{i}.log").read_text() for i in "12"]
        job = Queue(connection=client).enqueue(quick_job, 2)
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, what="the job after the outage")
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        server.cleanup()
