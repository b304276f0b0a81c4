"""status / job / failed / requeue / cleanup as an operator runs them, and the enqueue helper's race."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys

from helpers import JOBS_DIR, wait_until
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import failing_job, quick_job, sleep_job

from rq_worker_service.client import enqueue


def cli(redis_url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_"))}
    full.update(env or {})
    full["PYTHONPATH"] = str(JOBS_DIR)
    return subprocess.run([sys.executable, "-m", "rq_worker_service", *args, "--url", redis_url],
                          capture_output=True, text=True, env=full, timeout=60)


def test_status_shows_live_busy_worker_then_stale_worker_and_abandoned_job(start_worker, notify, redis_server,
                                                                             rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    ok = cli(redis_server.url, "status", "--check")
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("OK: 1 workers (0 busy)")
    assert "rq-worker@1.service" in ok.stdout

    Queue(connection=rconn).enqueue(sleep_job, 30, job_id="long")
    notify.wait_for("STATUS=", contains="Running job long")
    data = json.loads(cli(redis_server.url, "status", "--json").stdout)
    [w] = data["workers"]
    assert (w["state"], w["job_id"], w["job_func"], w["unit"], w["stale"]) == (
        "busy", "long", "testjobs.sleep_job", "rq-worker@1.service", False)

    worker.signal(signal.SIGKILL)  # nobody restarts it: the job is abandoned
    worker.wait(5)

    def stale():
        out = cli(redis_server.url, "status", "--check")
        return out if out.returncode == 1 else None

    out = wait_until(stale, 15, what="the dead worker to show stale")
    assert out.stdout.startswith("WARNING: ")
    assert "abandoned" in out.stdout and "long" in out.stdout
    crit = cli(redis_server.url, "status", "--check", "--min-workers", "1,1")
    assert crit.returncode == 2 and crit.stdout.startswith("CRITICAL: 0 live workers")


def test_status_prometheus_to_file_atomically(redis_server, rconn, tmp_path):
    Queue("reports", connection=rconn).enqueue(quick_job, 1)
    target = tmp_path / "rq.prom"
    out = cli(redis_server.url, "status", "--prometheus", "--output", str(target))
    assert out.returncode == 0 and out.stdout == ""
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    assert families["rq_up"].samples[0].value == 1
    assert [s.value for s in families["rq_queue_jobs"].samples if s.labels == {"queue": "reports",
                                                                             "state": "queued"}] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["rq.prom"]  # no temporary file left

    down = cli("redis://127.0.0.1:1/0", "status", "--prometheus", "--output", str(target))
    assert down.returncode == 0
    assert "rq_up 0" in target.read_text()
    assert "cannot reach Redis" in down.stderr


def test_unreachable_redis_exit_codes():
    plain = cli("redis://127.0.0.1:1/0", "status")
    assert plain.returncode == 69 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    check = cli("redis://127.0.0.1:1/0", "status", "--check")
    assert check.returncode == 3 and check.stdout.startswith("UNKNOWN: cannot reach Redis")


def test_a_configuration_error_is_unknown_to_a_check_and_rq_up_0_to_prometheus(redis_server, tmp_path):
    """As an unreachable Redis: the monitoring contract holds whatever went wrong before asking Redis."""
    bad = {"RQ_WORKER_CLASS": "threads"}
    plain = cli(redis_server.url, "status", env=bad)
    assert plain.returncode == 78 and "RQ_WORKER_CLASS='threads' is invalid" in plain.stderr
    check = cli(redis_server.url, "status", "--check", env=bad)
    assert check.returncode == 3 and check.stdout.startswith("UNKNOWN: configuration error: RQ_WORKER_CLASS")
    target = tmp_path / "rq.prom"
    prom = cli(redis_server.url, "status", "--prometheus", "--output", str(target), env=bad)
    assert prom.returncode == 0 and "rq_up 0" in target.read_text()


def test_job_requeue_cleanup_commands(redis_server, rconn, start_worker, notify):
    start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(failing_job, 99, job_id="broken")
    wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FAILED, 10, what="failure")

    shown = cli(redis_server.url, "job", "broken")
    assert shown.returncode == 0
    assert "status       failed" in shown.stdout and "RuntimeError: planned failure 1 of 99" in shown.stdout
    assert json.loads(cli(redis_server.url, "job", "broken", "--json").stdout)["call"] == "testjobs.failing_job(99)"

    [row] = json.loads(cli(redis_server.url, "failed", "--json").stdout)
    assert (row["job_id"], row["queue"], row["func"], row["exc_last_line"], row["worker"]) == (
        "broken", "default", "testjobs.failing_job", "RuntimeError: planned failure 1 of 99",
        Job.fetch("broken", connection=rconn).worker_name)
    assert cli(redis_server.url, "failed").stdout.split("  ")[1:3] == ["default", "broken"]

    dry = cli(redis_server.url, "requeue", "--queue", "default", "--dry-run")
    assert "would requeue broken on default" in dry.stdout
    assert Job.fetch("broken", connection=rconn).get_status() == JobStatus.FAILED
    done = cli(redis_server.url, "requeue", "broken")
    assert done.returncode == 0 and "requeued broken" in done.stdout
    wait_until(lambda: int(rconn.get("executions:broken") or 0) == 2, 10, what="the requeued job to run")

    assert cli(redis_server.url, "cleanup").stdout.startswith("default: started")
    wait_until(lambda: Job.fetch("broken", connection=rconn).get_status() == JobStatus.FAILED, 10, what="failure")
    [row] = json.loads(cli(redis_server.url, "failed", "--json").stdout)
    assert row["exc_last_line"] == "RuntimeError: planned failure 2 of 99"  # the latest failure's
    for args, fragment in [(("job", "ghost"), "no job with id 'ghost'"),
                           (("failed", "--queue", "ghost"), "no queue named 'ghost'"),
                           (("requeue",), "give either job ids or --queue"),
                           (("requeue", "ghost"), "no job with id 'ghost'")]:
        out = cli(redis_server.url, *args)
        assert out.returncode != 0 and fragment in out.stderr and "Traceback" not in out.stderr


def _race(url: str, barrier, results) -> None:
    os.environ["REDIS_URL"] = url
    barrier.wait()
    job = enqueue("testjobs.quick_job", 1, job_id="same-id", queue="race")
    results.put(job.id)


def test_concurrent_enqueue_of_one_id_makes_one_job(redis_server, rconn):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(redis_server.url, barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 8
    assert {results.get(timeout=5) for _ in procs} == {"same-id"}
    assert rconn.llen("rq:queue:race") == 1
