from __future__ import annotations

import fakeredis
import pytest
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.results import Result
from testjobs import failing_job, quick_job

from rq_worker_service.client import enqueue
from rq_worker_service.config import ConfigError
from rq_worker_service.jobs import JobsError, cleanup, describe, render_job, requeue


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def failed(conn, job_id, queue="default"):
    q = Queue(queue, connection=conn)
    job = q.enqueue(failing_job, 1, job_id=job_id)
    q.remove(job)
    job.set_status(JobStatus.FAILED)
    q.failed_job_registry.add(job, ttl=100, exc_string="Traceback …\nRuntimeError: planned failure")
    return job


def test_describe_shows_call_status_and_failure(conn):
    failed(conn, "f1")
    info = describe(conn, "f1")
    assert info["status"] == "failed" and info["queue"] == "default"
    assert info["call"] == "testjobs.failing_job(1)"
    text = render_job(info)
    assert "status       failed" in text


def test_describe_truncates_long_arguments(conn):
    Queue(connection=conn).enqueue(quick_job, "x" * 500, job_id="long")
    assert len(describe(conn, "long")["call"]) < 120


def test_describe_unknown_id(conn):
    with pytest.raises(JobsError, match="no job with id 'nope'"):
        describe(conn, "nope")


def test_requeue_by_id_and_by_queue_with_dry_run(conn):
    failed(conn, "a")
    failed(conn, "b")
    failed(conn, "c", queue="other")
    assert [r.job_id for r in requeue(conn, [], "default", dry_run=True)] == ["a", "b"]
    assert Job.fetch("a", connection=conn).get_status() == JobStatus.FAILED
    assert [r.job_id for r in requeue(conn, ["c"], None, dry_run=False)] == ["c"]
    assert Job.fetch("c", connection=conn).get_status() == JobStatus.QUEUED
    assert len(requeue(conn, [], "default", dry_run=False)) == 2
    assert Queue("default", connection=conn).job_ids == ["a", "b"]


def test_requeue_refuses_what_is_not_failed(conn):
    Queue(connection=conn).enqueue(quick_job, 1, job_id="q1")
    with pytest.raises(JobsError, match="is queued, not failed"):
        requeue(conn, ["q1"], None, dry_run=False)
    with pytest.raises(JobsError, match="no job with id"):
        requeue(conn, ["ghost"], None, dry_run=False)
    with pytest.raises(JobsError, match="no queue named"):
        requeue(conn, [], "ghost-queue", dry_run=False)


def test_cleanup_reports_per_queue(conn):
    Queue("default", connection=conn).enqueue(quick_job, 1)
    assert cleanup(conn) == {"default": {"started_before": 0, "started_after": 0,
                                         "failed_before": 0, "failed_after": 0}}


def test_enqueue_applies_the_default_retry_and_timeout(conn):
    job = enqueue(quick_job, 1, connection=conn, env={"RQ_JOB_RETRY_MAX": "4", "RQ_JOB_RETRY_DELAY": "7",
                                                      "RQ_JOB_TIMEOUT": "99"})
    assert (job.retries_left, job.retry_intervals, job.timeout) == (4, [7], 99)
    assert enqueue(quick_job, 1, connection=conn, env={}, retry=None).retries_left is None
    assert enqueue(quick_job, 1, connection=conn, env={"RQ_JOB_RETRY_MAX": "0"}).retries_left is None
    own = enqueue(quick_job, 1, connection=conn, env={}, retry=Retry(max=1, interval=2), job_timeout=5)
    assert (own.retries_left, own.timeout) == (1, 5)


def test_enqueue_with_pending_id_returns_the_existing_job(conn):
    first = enqueue(quick_job, 1, job_id="report_analysis_7", queue="report_analysis", connection=conn, env={})
    again = enqueue(quick_job, 2, job_id="report_analysis_7", queue="report_analysis", connection=conn, env={})
    assert again.id == first.id and again.args == (1,)
    assert Queue("report_analysis", connection=conn).count == 1
    job = Job.fetch("report_analysis_7", connection=conn)
    job.set_status(JobStatus.FINISHED)
    Queue("report_analysis", connection=conn).remove(job)
    fresh = enqueue(quick_job, 3, job_id="report_analysis_7", queue="report_analysis", connection=conn, env={})
    assert fresh.args == (3,) and fresh.get_status() == JobStatus.QUEUED


def test_enqueue_refuses_a_key_prefix_rq_was_not_imported_with(conn):
    """rq reads RQ_KEY_PREFIX once, at import: a prefix set later would enqueue where no worker looks."""
    with pytest.raises(ConfigError, match="before the app imports rq"):
        enqueue(quick_job, 1, connection=conn, env={"RQ_KEY_PREFIX": "{reports}"})


def test_a_job_waiting_for_its_retry_shows_its_last_failure_from_the_journal(conn):
    """rq keeps no failure for a job it retries: the journal (RQ_JOB_ID=) has the traceback."""
    job = Queue(connection=conn).enqueue(failing_job, 1, job_id="retrying", retry=Retry(max=2, interval=60))
    asked = []

    def journal(job_id):
        asked.append(job_id)
        return "Traceback …\nRuntimeError: planned failure 1 of 1"

    info = describe(conn, job.id, journal_lookup=journal)
    assert asked == ["retrying"] and info["traceback_from"] == "journal"
    assert "from the journal" in render_job(info) and "planned failure 1 of 1" in render_job(info)
    Result.create_failure(failed(conn, "f2"), 100, exc_string="RuntimeError: kept by rq")
    assert describe(conn, "f2", journal_lookup=journal)["traceback"] == "RuntimeError: kept by rq"
    assert describe(conn, "retrying", journal_lookup=lambda _: None)["traceback"] is None

