"""``rq-worker-service failed``: the failed registries, newest first, what the web console lists."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from rq import Queue
from rq.job import JobStatus
from rq.results import Result
from testjobs import failing_job

from rq_worker_service import cli, connection
from rq_worker_service.jobs import JobsError, failed_jobs, last_line, render_failed

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def failed(conn, job_id, queue="default", minutes=0, exc="Traceback …\nRuntimeError: planned failure\n",
           worker="host1.rq-worker@1"):
    """A job failed ``minutes`` after T0, as a worker leaves it: out of its queue, in the failed registry."""
    q = Queue(queue, connection=conn)
    job = q.enqueue(failing_job, 1, job_id=job_id)
    q.remove(job)
    job.ended_at = T0 + timedelta(minutes=minutes)
    job.worker_name = worker
    job.save()
    job.set_status(JobStatus.FAILED)
    Result.create_failure(job, ttl=1000, exc_string=exc, worker_name=worker)  # as the worker records it
    q.failed_job_registry.add(job, ttl=1000, exc_string=exc)  # (all in one second: equal scores)
    return job


@pytest.mark.parametrize("text, line", [
    ("Traceback (most recent call last):\n  File \"x\"\nValueError: bad\n", "ValueError: bad"),
    ("Traceback …\nKeyError: 'k'\n\n   \n\t\n", "KeyError: 'k'"),
    ("  RuntimeError: indented  ", "RuntimeError: indented"),
    ("", None), ("\n\n", None), (None, None)])
def test_last_line_is_the_last_non_empty_one(text, line):
    assert last_line(text) == line


def test_each_failed_job_with_its_queue_function_time_error_and_worker(conn):
    failed(conn, "a", exc="Traceback …\nValueError: first line\nsecond line of the message\n\n\n")
    [row] = failed_jobs(conn, None, 100)
    assert row == {"job_id": "a", "queue": "default", "func": "testjobs.failing_job",
                   "ended_at": "2026-03-01T12:00:00+00:00", "exc_last_line": "second line of the message",
                   "worker": "host1.rq-worker@1"}


def test_newest_first_across_queues_and_cut_at_the_limit(conn):
    failed(conn, "old", minutes=1)
    failed(conn, "new", minutes=30)
    failed(conn, "mid", queue="other", minutes=10)
    failed(conn, "mid2", queue="other", minutes=20)
    assert [r["job_id"] for r in failed_jobs(conn, None, 100)] == ["new", "mid2", "mid", "old"]
    assert [r["job_id"] for r in failed_jobs(conn, None, 2)] == ["new", "mid2"]
    assert [r["job_id"] for r in failed_jobs(conn, None, 1)] == ["new"]


def test_only_the_queues_asked_for(conn):
    failed(conn, "a")
    failed(conn, "b", queue="other")
    failed(conn, "c", queue="third", minutes=5)
    assert [r["job_id"] for r in failed_jobs(conn, ["other"], 100)] == ["b"]
    assert [r["job_id"] for r in failed_jobs(conn, ["default", "third"], 100)] == ["c", "a"]
    with pytest.raises(JobsError, match="no queue named 'ghost'"):
        failed_jobs(conn, ["ghost"], 100)


def test_no_failed_job_is_an_empty_list(conn):
    assert failed_jobs(conn, None, 100) == []
    Queue("default", connection=conn).enqueue(failing_job, 1)
    assert failed_jobs(conn, None, 100) == []
    assert render_failed([]) == ""


def test_a_job_whose_hash_expired_is_left_out(conn):
    failed(conn, "gone")
    failed(conn, "kept", minutes=1)
    conn.delete("rq:job:gone")
    assert [r["job_id"] for r in failed_jobs(conn, None, 100)] == ["kept"]


def test_the_text_is_one_line_per_job(conn):
    failed(conn, "a", exc="Traceback …\nValueError: bad\n\n")
    failed(conn, "b", minutes=2, exc="")
    assert render_failed(failed_jobs(conn, None, 100)).splitlines() == [
        "2026-03-01T12:02:00+00:00  default  b  testjobs.failing_job  -",
        "2026-03-01T12:00:00+00:00  default  a  testjobs.failing_job  ValueError: bad"]


@pytest.fixture
def command(tmp_path, monkeypatch, capsys):
    """``rq-worker-service failed ARGS`` on a fakeredis server: (status, stdout, stderr)."""
    server = fakeredis.FakeServer()
    monkeypatch.setattr(connection, "make_connection", lambda *a, **k: fakeredis.FakeRedis(server=server))
    for key in [k for k in os.environ if k.startswith(("RQ_", "REDIS_"))]:
        monkeypatch.delenv(key)
    (tmp_path / "worker.env").write_text("")
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        try:
            status = cli.main(["failed", f"--env-file={tmp_path / 'worker.env'}", *args])
        except SystemExit as exc:
            status = exc.code
        out = capsys.readouterr()
        return status, out.out, out.err

    run.conn = fakeredis.FakeRedis(server=server)  # type: ignore[attr-defined]
    return run


def test_the_command_prints_json_text_and_one_line_errors(command):
    failed(command.conn, "a", minutes=1)
    failed(command.conn, "b", queue="other", minutes=2)
    status, out, _ = command("--json")
    assert status == 0 and [r["job_id"] for r in json.loads(out)] == ["b", "a"]
    status, out, _ = command("--json", "-q", "default")
    assert [r["job_id"] for r in json.loads(out)] == ["a"]
    status, out, _ = command("--limit=1")
    assert status == 0 and out.splitlines() == ["2026-03-01T12:02:00+00:00  other  b  testjobs.failing_job  "
                                                "RuntimeError: planned failure"]
    status, out, err = command("--queue=ghost")
    assert status == 1 and err == "rq-worker-service: no queue named 'ghost' in this Redis\n"
    for bad in ("0", "-3", "x", ""):
        status, _, err = command(f"--limit={bad}")
        assert status == 2 and len(err.splitlines()) == 1 and "expected a whole number of 1 or more" in err


def test_the_help_names_the_default_limit():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "(default: 100)" in sub.choices["failed"].format_help()
