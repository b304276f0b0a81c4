from __future__ import annotations

import json
from datetime import timedelta

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker
from rq.utils import now, utcformat
from testjobs import failing_job, quick_job

from rq_worker_service.levels import CRITICAL, OK, WARNING, Threshold
from rq_worker_service.rqcompat import mixed_rq_workers
from rq_worker_service.status.collect import collect, unit_of
from rq_worker_service.status.judge import evaluate
from rq_worker_service.status.render import (
    render_json,
    render_json_per_prefix,
    render_prometheus,
    render_text,
    render_text_per_prefix,
)
from rq_worker_service.status.report import report_from_dict


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def live_worker(conn, name, queue):
    worker = Worker([queue], name=name, connection=conn)
    worker.register_birth()
    worker.set_state("idle")
    return worker


def started_by(conn, worker, queue, job):
    queue.remove(job)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)


def test_collects_queues_workers_and_abandoned_jobs(conn):
    q = Queue("default", connection=conn)
    for i in range(3):
        q.enqueue(quick_job, i)
    conn.hset(q.job_class.key_for(q.job_ids[0]), "enqueued_at", utcformat(now() - timedelta(seconds=90)))
    failed = q.enqueue(failing_job, 1)
    q.remove(failed)
    q.failed_job_registry.add(failed, ttl=100, exc_string="boom")

    busy = live_worker(conn, "h.rq-worker@1", q)
    running = q.enqueue(quick_job, 9, job_id="running")
    started_by(conn, busy, q, running)

    dead = live_worker(conn, "h.rq-worker@2", q)
    orphan = q.enqueue(quick_job, 8, job_id="orphan")
    started_by(conn, dead, q, orphan)
    old = utcformat(now() - timedelta(seconds=500))
    conn.hset(dead.key, "last_heartbeat", old)  # missed its deadline long ago …
    conn.expire(dead.key, 20)  # … its key is about to expire

    report = collect(conn, "redis://x/0")
    [queue] = report.queues
    assert (queue.name, queue.queued, queue.started, queue.failed) == ("default", 3, 2, 1)
    assert 85 < queue.oldest_age < 120
    workers = {w.name: w for w in report.workers}
    assert workers["h.rq-worker@1"].unit == "rq-worker@1.service"
    assert workers["h.rq-worker@1"].job_id == "running"
    assert workers["h.rq-worker@1"].job_func == "testjobs.quick_job"
    assert not workers["h.rq-worker@1"].stale
    assert workers["h.rq-worker@2"].stale
    assert [(a.job_id, a.worker) for a in report.abandoned] == [("orphan", "h.rq-worker@2")]

    evaluate(report)
    assert report.level == WARNING
    assert report.verdict.startswith("WARNING: ")
    assert "stale" in report.verdict and "1 abandoned" in report.verdict
    text = render_text(report)
    assert text.splitlines()[0] == report.verdict
    assert "running (testjobs.quick_job)" in text and "Abandoned jobs" in text
    assert json.loads(render_json(report))["status"] == "WARNING"


def test_thresholds_and_levels(conn):
    q = Queue("default", connection=conn)
    for i in range(5):
        q.enqueue(quick_job, i)
    live_worker(conn, "h.rq-worker@1", q)
    report = collect(conn, "r")
    assert evaluate(report).level == OK
    assert evaluate(report, max_queued=Threshold(10)).level == OK
    assert evaluate(report, max_queued=Threshold(4)).level == WARNING
    assert evaluate(report, max_queued=Threshold(2, 4)).level == CRITICAL
    assert evaluate(report, min_workers=Threshold(2)).level == WARNING
    assert evaluate(report, min_workers=Threshold(3, 2)).level == CRITICAL
    assert evaluate(report, max_age=Threshold(3600)).level == OK
    assert "5 jobs queued (limit 2)" in evaluate(report, max_queued=Threshold(2, 4)).verdict


def test_jobs_in_a_queue_no_live_worker_listens_to_are_a_warning(conn):
    """RQ_QUEUES=report_analysys while the app enqueues to report_analysis: named, not OK."""
    Queue("report_analysis", connection=conn).enqueue(quick_job, 1)
    live_worker(conn, "h.rq-worker@1", Queue("report_analysys", connection=conn))
    report = evaluate(collect(conn, "r"))
    assert report.level == WARNING
    assert ("1 jobs queued in report_analysis, which no live worker listens to (workers listen to: "
            "report_analysys)") in report.verdict
    assert "report_analysys" in render_text(report).split("WORKER")[1]  # the table's QUEUES column
    assert evaluate(collect(conn, "r"), max_queued=Threshold(100, 1)).level == WARNING  # 1 is not past 1
    Queue("report_analysis", connection=conn).enqueue(quick_job, 2)
    assert evaluate(collect(conn, "r"), max_queued=Threshold(100, 1)).level == CRITICAL  # past --max-queued's C
    live_worker(conn, "h.rq-worker@2", Queue("report_analysis", connection=conn))
    assert evaluate(collect(conn, "r")).level == OK


def test_queued_jobs_without_any_worker_are_critical(conn):
    Queue("default", connection=conn).enqueue(quick_job, 1)
    assert evaluate(collect(conn, "r")).level == CRITICAL


def test_a_live_worker_on_another_rq_major_is_a_warning(conn):
    """A stock rq 2 worker left on the same Redis (a half-done migration) is named, not silent."""
    q = Queue("default", connection=conn)
    live_worker(conn, "h.rq-worker@1", q)
    old = live_worker(conn, "legacy-rq2", q)
    assert evaluate(collect(conn, "r")).level == OK
    conn.hset(old.key, "version", "2.12.0")
    report = evaluate(collect(conn, "r"))
    assert report.level == WARNING
    assert "worker legacy-rq2 runs rq 2.12.0" in report.verdict
    assert {w.name: w.rq_version for w in report.workers}["legacy-rq2"] == "2.12.0"
    assert mixed_rq_workers(conn, ["default"]) == [report.problems[0]]  # what a starting worker logs
    assert mixed_rq_workers(conn, ["other"]) == []


def test_threshold_parse():
    assert Threshold.parse("5") == Threshold(5, None)
    assert Threshold.parse("5,10") == Threshold(5, 10)
    for text in ("5", "5,10", "0.5,2.5"):  # status passes thresholds on to one child per key prefix
        assert str(Threshold.parse(text)) == text
    with pytest.raises(ValueError):
        Threshold.parse("a")
    with pytest.raises(ValueError):
        Threshold.parse("1,2,3")


def test_prometheus_output_parses_and_carries_the_figures(conn):
    q = Queue('we"ird\\queue', connection=conn)
    q.enqueue(quick_job, 1)
    live_worker(conn, "h.rq-worker@1", q)
    report = evaluate(collect(conn, "r"))
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(report))}
    assert families["rq_up"].samples[0].value == 1
    queued = [s for s in families["rq_queue_jobs"].samples if s.labels["state"] == "queued"]
    assert queued[0].labels["queue"] == 'we"ird\\queue' and queued[0].value == 1
    assert families["rq_worker_busy"].samples[0].labels["unit"] == "rq-worker@1.service"
    assert {s.labels["outcome"] for s in families["rq_worker_jobs"].samples} == {"successful", "failed"}
    down = {f.name: f for f in text_string_to_metric_families(render_prometheus(None))}
    assert down["rq_up"].samples[0].value == 0


def test_several_prefixes_are_one_section_each_under_their_verdicts(conn):
    """``status`` with instance files of other prefixes: each prefix's report, read back from its own
    process's JSON; the worst level is the status."""
    Queue("default", connection=conn).enqueue(quick_job, 1)
    quiet = report_from_dict(json.loads(render_json(evaluate(collect(conn, "r")))))
    quiet.key_prefix = "{a}"
    idle = report_from_dict(json.loads(render_json(evaluate(collect(conn, "r"), max_queued=Threshold(5)))))
    idle.key_prefix = "{b}"
    assert (quiet.level, idle.level) == (CRITICAL, CRITICAL)  # queued, and no live worker
    idle.level, idle.problems = OK, []
    text = render_text_per_prefix([quiet, idle])
    assert text.splitlines()[:3] == [f"Key prefix {{a}}: {quiet.verdict}", f"Key prefix {{b}}: {idle.verdict}", ""]
    assert text.endswith(f"\n== Key prefix {{a}} ==\n{render_text(quiet)}\n== Key prefix {{b}} ==\n{render_text(idle)}")
    data = json.loads(render_json_per_prefix([idle, quiet]))
    assert data["status"] == "CRITICAL" and [p["key_prefix"] for p in data["prefixes"]] == ["{b}", "{a}"]
    assert json.loads(render_json_per_prefix([idle]))["status"] == "OK"


def test_unit_of():
    assert unit_of("web1.example.rq-worker@3") == "rq-worker@3.service"
    assert unit_of("some-uuid-worker") is None


def test_a_suspension_is_shown_in_the_text_the_json_and_prometheus(conn):
    """``rq suspend``: SUSPENDED (and until when) in the verdict and the Redis line, the worker's rq state
    shown SUSPENDED, a WARNING; --json carries it, read back; Prometheus has rq_suspended and
    rq_worker_suspended. ``rq resume``: none of it."""
    from rq.suspension import resume, suspend

    worker = live_worker(conn, "h.rq-worker@1", Queue("default", connection=conn))
    suspend(conn, 90)
    worker.set_state("suspended")
    report = evaluate(collect(conn, "r"))
    assert report.level == WARNING and report.verdict.startswith("WARNING: SUSPENDED (rq suspend, ")
    assert 85 <= report.suspension_left <= 90
    text = render_text(report)
    assert "workers SUSPENDED (rq suspend, " in text.splitlines()[1]
    assert text.splitlines()[-1].split()[5] == "SUSPENDED", text
    again = report_from_dict(json.loads(render_json(report)))
    assert again.suspended and again.verdict == report.verdict
    metrics = {f.name: f for f in text_string_to_metric_families(render_prometheus(report))}
    assert metrics["rq_suspended"].samples[0].value == 1 and metrics["rq_worker_suspended"].samples[0].value == 1
    suspend(conn)
    assert "until `rq resume`" in evaluate(collect(conn, "r")).verdict
    resume(conn)
    worker.set_state("idle")
    report = evaluate(collect(conn, "r"))
    assert report.level == OK and not report.suspended and "SUSPENDED" not in render_text(report)
    metrics = {f.name: f for f in text_string_to_metric_families(render_prometheus(report))}
    assert metrics["rq_suspended"].samples[0].value == 0 and metrics["rq_worker_suspended"].samples[0].value == 0
