"""The fault matrix's check can fail: each kind of loss it looks for, made by hand in a real Redis."""

from __future__ import annotations

import json

import pytest
from faults.driver import JobSpec, check, enqueue


def finish(rconn, spec: JobSpec, status: str = "finished") -> None:
    """What a worker leaves behind when the job ended: out of its queue, its status, in its registry."""
    rconn.lrem(f"rq:queue:{spec.queue}", 0, spec.id)
    rconn.hset(f"rq:job:{spec.id}", "status", status)
    rconn.zadd(f"rq:{status}:{spec.queue}", {spec.id: 1})


def runs(tmp_path, *intervals: tuple[float, float | None], overlap: bool = False) -> None:
    with open(tmp_path / "runs.jsonl", "a") as out:
        for pid, (start, end) in enumerate(intervals, 100):
            out.write(json.dumps({"job": "j", "event": "start", "t": start, "pid": pid, "overlap": overlap}) + "\n")
            if end is not None:
                out.write(json.dumps({"job": "j", "event": "end", "t": end, "pid": pid, "failed": False}) + "\n")


@pytest.fixture
def job(rconn):
    spec = JobSpec("j", "q1", 0.1, fail=False, retries=None, callback=False)
    enqueue(rconn, [spec])
    return spec


def test_a_finished_job_run_once_passes(rconn, job, tmp_path):
    finish(rconn, job)
    runs(tmp_path, (1.0, 2.0))
    assert check(rconn, [job], tmp_path, None, None) == []


def test_a_job_in_no_list_is_lost(rconn, job, tmp_path):
    rconn.lrem("rq:queue:q1", 0, "j")  # popped and dropped: status still queued
    (problem,) = check(rconn, [job], tmp_path, None, None)
    assert problem.startswith("LOST") and "no list" in problem


def test_a_finished_job_left_in_another_list_is_misplaced(rconn, job, tmp_path):
    finish(rconn, job)
    rconn.zadd("rq:wip:q1", {"j": 1})
    runs(tmp_path, (1.0, 2.0))
    (problem,) = check(rconn, [job], tmp_path, None, None)
    assert problem.startswith("MISPLACED") and "rq:wip:q1" in problem


def test_two_runs_at_once_are_caught_by_times_or_by_the_lock(rconn, job, tmp_path):
    finish(rconn, job)
    runs(tmp_path, (1.0, 3.0), (2.0, 4.0))
    assert any(p.startswith("CONCURRENT") for p in check(rconn, [job], tmp_path, {"t": 1.5}, None))
    (tmp_path / "runs.jsonl").unlink()
    runs(tmp_path, (1.0, None), (2.0, 4.0), overlap=True)  # the first was killed: only its lock tells
    assert any(p.startswith("CONCURRENT") for p in check(rconn, [job], tmp_path, {"t": 1.5}, None))


def test_a_second_run_needs_a_fault_that_hit_the_job_while_started(rconn, job, tmp_path):
    finish(rconn, job)
    runs(tmp_path, (1.0, None), (5.0, 6.0))
    (problem,) = check(rconn, [job], tmp_path, None, None)
    assert problem.startswith("UNEXPLAINED RUN")
    assert check(rconn, [job], tmp_path, {"t": 0.5}, None) != []  # a fault before the job started explains nothing
    assert check(rconn, [job], tmp_path, {"t": 1.5}, None) == []


def test_a_failing_job_must_use_its_retries(rconn, tmp_path):
    spec = JobSpec("j", "q1", 0.1, fail=True, retries=2, callback=False)
    enqueue(rconn, [spec])
    finish(rconn, spec, "failed")
    runs(tmp_path, (1.0, 2.0))
    (problem,) = check(rconn, [spec], tmp_path, None, None)
    assert problem.startswith("RETRIES SKIPPED")
    runs(tmp_path, (3.0, 4.0), (5.0, 6.0))
    assert check(rconn, [spec], tmp_path, None, None) == []
