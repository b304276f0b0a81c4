"""Where rq's semantics hold under our worker: each test fails on a departure that was fixed.

Commands an operator sends with rq's own API keep rq's outcome (a deliberate kill is not a crash),
an app's custom classes and serializer stay in force, and burst mode still runs due scheduled jobs.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from helpers import JOBS_DIR, horse_of, wait_until
from rq import Queue
from rq.command import send_kill_horse_command, send_stop_job_command
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from testjobs import quick_job, sleep_job

from rq_worker_service.config import load_settings
from rq_worker_service.notify import Notifier
from rq_worker_service.worker_classes import ServiceSpawnWorker, ServiceWorker


def started_worker(start_worker, notify, rconn, job_id):
    # no scheduler process: the worker's only child is then the horse
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 30, job_id=job_id)
    wait_until(lambda: rconn.get(f"executions:{job_id}") == b"1", 10, what="the job to start")
    return worker, job


def test_kill_horse_command_fails_the_job_as_rq_does(start_worker, notify, rconn):
    """rq's documented cancel is not a crash: FAILED, not the default retry."""
    worker, job = started_worker(start_worker, notify, rconn, "cancelled")
    send_kill_horse_command(rconn, Job.fetch(job.id, connection=rconn).worker_name)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 15, what="the job to be FAILED")
    job.refresh()
    assert job.retries_left is None
    assert job.id in Queue(connection=rconn).failed_job_registry
    assert worker.proc.poll() is None


def test_stop_job_command_leaves_the_job_stopped(start_worker, notify, rconn):
    worker, job = started_worker(start_worker, notify, rconn, "stopped")
    send_stop_job_command(rconn, job.id)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STOPPED, 15, what="the job to be STOPPED")
    job.refresh()
    assert job.retries_left is None


def test_horse_killed_from_outside_is_a_crash_and_gets_the_default_retry(start_worker, notify, rconn):
    """The documented difference (OOM killer, kill -9 of the horse): retried, with the execution recorded."""
    worker, job = started_worker(start_worker, notify, rconn, "oom")
    os.kill(horse_of(worker.pid), signal.SIGKILL)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.SCHEDULED, 15, what="the retry to be scheduled")
    job.refresh()
    assert job.retries_left == 2  # RQ_JOB_RETRY_MAX=3, one used
    assert "the work horse died under the job" in job.latest_result().exc_string


@pytest.fixture
def in_process(redis_server, rconn):
    """Settings for a worker run inside the test process; rq's signal handlers are undone afterwards."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield load_settings({"REDIS_URL": redis_server.url, "RQ_APP_PATH": str(JOBS_DIR)})
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_spawn_horse_uses_the_workers_serializer(in_process, rconn):
    queue = Queue("json", connection=rconn, serializer=JSONSerializer)
    job = queue.enqueue(quick_job, 21)
    worker = ServiceSpawnWorker([queue], connection=rconn, serializer=JSONSerializer, settings=in_process,
                                notifier=Notifier())
    worker.work(burst=True)
    job = Job.fetch(job.id, connection=rconn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string if job.latest_result() else ""
    assert job.return_value() == 42


def test_burst_with_scheduler_runs_due_scheduled_jobs(in_process, rconn):
    queue = Queue(connection=rconn)
    job = queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=5), quick_job, 1)
    assert job.get_status() == JobStatus.SCHEDULED
    ServiceWorker([queue], connection=rconn, settings=in_process, notifier=Notifier()).work(
        burst=True, with_scheduler=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_custom_queue_and_job_classes_stay_the_apps(in_process, rconn):
    class AppQueue(Queue):
        pass

    class AppJob(Job):
        pass

    worker = ServiceWorker(["default"], connection=rconn, queue_class=AppQueue, job_class=AppJob,
                           settings=in_process, notifier=Notifier())
    assert worker.queue_class is AppQueue and worker.job_class is AppJob
    assert all(type(q) is AppQueue for q in worker.queues)
    job = AppQueue(connection=rconn).enqueue(quick_job, 3)
    worker.work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
