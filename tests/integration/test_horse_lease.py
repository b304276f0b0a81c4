"""The horse lease against a real redis-server: a horse whose worker's main loop is frozen ends its
job before another worker may fence that worker and re-run the job, so two runs never overlap.

WATCHDOG_USEC=6 s gives a tick of 2 s, a fencing period of 6 s and a lease of 5 s (the period less
half a tick). Each run of ``alive_job`` writes its pid and the time every 0.1 s: a run's span, even
of a run killed mid-way.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from helpers import horse_of, notify_socket, wait_until
from rq import Queue
from rq.job import Job
from testjobs import alive_job

from rq_worker_service import exits

HOST = socket.gethostname()
LEASE = {"WATCHDOG_USEC": "6000000", "RQ_WITH_SCHEDULER": "no", "RQ_QUEUES": "lease"}
SILENT = "main loop has been silent"


def running(pid: int) -> bool:
    """Alive and not a zombie (a horse whose frozen parent cannot reap it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def spans(path: Path) -> dict[int, tuple[float, float, bool]]:
    """Each run's first and last record, and whether it reached its end."""
    runs: dict[int, tuple[float, float, bool]] = {}
    for line in path.read_text().splitlines():
        pid, at, *end = line.split()
        first = runs.get(int(pid), (float(at), 0.0, False))[0]
        runs[int(pid)] = (first, float(at), bool(end))
    return runs


@pytest.mark.parametrize("worker_class", ["fork", "spawn"])
def test_horse_of_a_frozen_main_process_ends_before_its_job_runs_again(start_worker, rconn, tmp_path, worker_class):
    env = {**LEASE, "RQ_WORKER_CLASS": worker_class}
    sockets = {i: notify_socket(tmp_path, i) for i in "12"}
    workers = {i: start_worker(i, notify=sockets[i], env=env) for i in "12"}
    for sock in sockets.values():
        sock.wait_for("READY=1")
    record = tmp_path / "runs.txt"
    job = Queue("lease", connection=rconn).enqueue(alive_job, str(record), 10, job_id="frozen-main")
    wait_until(lambda: record.exists(), 10, what="the job to start")
    owner = Job.fetch(job.id, connection=rconn).worker_name
    busy = next(w for i, w in workers.items() if owner == f"{HOST}.rq-worker@{i}")
    horse = horse_of(busy.pid)

    busy.signal(signal.SIGSTOP)  # the main process only: its horse runs on
    stopped_at = time.monotonic()
    wait_until(lambda: not running(horse), 8, what="the horse to end itself")
    # At most the lease (5 s) after the last tick, which came at most a tick (2 s) before the stop.
    assert time.monotonic() - stopped_at < 5 + 0.5 + 0.5
    wait_until(lambda: len(spans(record)) == 2, 10, what="another worker to fence the frozen one and re-run the job")
    time.sleep(max(0.0, 9 - (time.monotonic() - stopped_at)))
    busy.signal(signal.SIGCONT)
    assert busy.wait(15) == exits.TEMPFAIL

    wait_until(lambda: job.get_status(refresh=True) == "finished", 15, what="the re-run to finish")
    (first, last, ended), (again, _, reran) = sorted(spans(record).values())
    assert last < again, f"the frozen worker's run went on {last - again:.1f}s into the re-run"
    assert not ended and reran
    assert "was fenced" in busy.output() and SILENT in busy.output()
    assert int(rconn.get(f"executions:{job.id}")) == 2
    result = Job.fetch(job.id, connection=rconn).latest_result()
    assert result is not None and result.type.name == "SUCCESSFUL"
    for sock in sockets.values():
        sock.close()


def test_a_pause_of_the_main_process_shorter_than_the_lease_does_not_cut_the_job(start_worker, rconn, tmp_path):
    sock = notify_socket(tmp_path, "one")
    worker = start_worker("1", notify=sock, env=LEASE)
    sock.wait_for("READY=1")
    record = tmp_path / "runs.txt"
    job = Queue("lease", connection=rconn).enqueue(alive_job, str(record), 6, job_id="paused-main")
    wait_until(lambda: record.exists(), 10, what="the job to start")
    sock.wait_for("WATCHDOG=1", after=len(sock.lines("WATCHDOG=1")))  # right after a tick: 3 s of the lease's 5 s
    worker.signal(signal.SIGSTOP)
    time.sleep(3)
    worker.signal(signal.SIGCONT)
    wait_until(lambda: job.get_status(refresh=True) == "finished", 10, what="the job to finish")
    assert [ended for _, _, ended in spans(record).values()] == [True]
    assert int(rconn.get(f"executions:{job.id}")) == 1
    assert SILENT not in worker.output()
    sock.close()
