"""RQ_WORKER_CLASS=simple and spawn keep the same stop/retry guarantees as fork."""

from __future__ import annotations

import signal
import time

import pytest
from helpers import wait_until
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from testjobs import exiting_job, sleep_job


def status(rconn, job_id):
    return Job.fetch(job_id, connection=rconn).get_status()


@pytest.mark.parametrize("worker_class", ["simple", "spawn"])
def test_warm_stop_finishes_job(start_worker, notify, rconn, worker_class):
    worker = start_worker("1", notify=notify, env={"RQ_WORKER_CLASS": worker_class, "WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 3, job_id=f"{worker_class}-warm")
    notify.wait_for("STATUS=", contains=f"Running job {worker_class}-warm")
    wait_until(lambda: rconn.get(f"executions:{job.id}") == b"1", 10, what="the job function to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert status(rconn, job.id) == JobStatus.FINISHED


@pytest.mark.parametrize("worker_class", ["simple", "spawn"])
def test_shutdown_limit_cuts_and_retries(start_worker, notify, rconn, worker_class):
    worker = start_worker("1", notify=notify, env={"RQ_WORKER_CLASS": worker_class, "RQ_SHUTDOWN_TIMEOUT": "2",
                                                   "WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 60, job_id=f"{worker_class}-cut", retry=Retry(max=1))
    notify.wait_for("STATUS=", contains=f"Running job {worker_class}-cut")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert time.monotonic() - t0 < 6
    job = Job.fetch(job.id, connection=rconn)
    assert job.get_status() == JobStatus.QUEUED
    assert "RQ_SHUTDOWN_TIMEOUT" in job.latest_result().exc_string


def test_simple_worker_pings_watchdog_during_job_only_within_its_timeout(start_worker, notify, rconn):
    start_worker("1", notify=notify, env={"RQ_WORKER_CLASS": "simple", "WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    Queue(connection=rconn).enqueue(sleep_job, 4, job_id="simple-wd")
    notify.wait_for("STATUS=", contains="Running job simple-wd")
    before = len(notify.lines("WATCHDOG=1"))
    # WatchdogSec=3: at least two pings within it while the job runs in the main process
    wait_until(lambda: len(notify.lines("WATCHDOG=1")) - before >= 2, 3.2, what="two watchdog pings")
    wait_until(lambda: status(rconn, "simple-wd") == JobStatus.FINISHED, 10, what="job")


def test_simple_worker_keeps_a_job_without_timeout_alive(start_worker, notify, rconn):
    """rq's SimpleWorker registers a job_timeout=-1 job for 420 s and the worker key for as long,
    once: another worker's maintenance re-queued a longer one while it ran. The watch thread now
    moves both forward on every tick (WatchdogSec=3: a tick a second), as the fork worker does."""
    start_worker("1", notify=notify, env={"RQ_WORKER_CLASS": "simple", "WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 5, job_id="simple-forever", job_timeout=-1)
    wait_until(lambda: rconn.get(f"executions:{job.id}") == b"1", 10, what="the job function to start")
    (worker_key,) = rconn.keys("rq:worker:*.rq-worker@1")

    def expiries() -> tuple[float, float]:
        """When the job's started entry and the worker key expire (Unix time)."""
        ((_, score),) = rconn.zrange(StartedJobRegistry("default", connection=rconn).key, 0, -1, withscores=True)
        return score, time.time() + rconn.pttl(worker_key) / 1000

    time.sleep(1.5)  # past the first tick: rq's own registration set 420 s, the ticks' beats 61 s (a tick + 60)
    entry, key = expiries()
    time.sleep(2.5)
    later_entry, later_key = expiries()
    assert later_entry - entry >= 2, "the started registry's score stood still"
    assert later_key - key >= 2, "the worker key's TTL counted down"
    wait_until(lambda: status(rconn, job.id) == JobStatus.FINISHED, 10, what="the job to finish")
    assert rconn.get(f"executions:{job.id}") == b"1"


def test_a_simple_workers_job_that_ends_the_process_leaves_it_to_the_next_start(start_worker, rconn, tmp_path):
    """A job calling os._exit(0) ends a simple worker with status 0, which systemd counts as a
    success: the worker does not mark that it left (the unit's ExecStopPost= then fails the run,
    tests/unit/test_unit_file.py, and Restart=on-failure restarts it), and the next start re-queues
    the job it left started. A stop does mark it."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "left").touch()  # a previous run's, in a RuntimeDirectory kept across runs: forgotten at start
    env = {"RQ_WORKER_CLASS": "simple", "RUNTIME_DIRECTORY": str(runtime), "RQ_JOB_RETRY_DELAY": "0"}
    worker = start_worker("1", env=env)
    job = Queue(connection=rconn).enqueue(exiting_job, job_id="exits")
    assert worker.wait(20) == 0
    assert not (runtime / "left").exists()
    assert status(rconn, job.id) == JobStatus.STARTED
    worker = start_worker("1", env=env)  # as systemd's Restart= does once ExecStopPost= failed the run
    wait_until(lambda: status(rconn, job.id) == JobStatus.FINISHED, 15, what="the job to run again")
    assert rconn.get(f"executions:{job.id}") == b"2"
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert (runtime / "left").exists()
