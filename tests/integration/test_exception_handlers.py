"""RQ_EXCEPTION_HANDLERS and RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER against stock ``rq worker
--exception-handler … [-d]`` as the oracle, in the same test, for each worker class.

Two failing jobs per worker: on one the first handler returns False, which ends rq's chain; the
handlers write what they were called with to Redis. Every outcome (which handlers ran, in which
order, with what; the job's status; whether rq's default handler put it in the FailedJobRegistry)
must be stock rq's.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import RQ_CLI, WorkerProcess, wait_until
from rq import Queue
from rq.job import Job, JobStatus

STOCK_CLASSES = {"fork": "rq.worker.Worker", "spawn": "rq.worker.SpawnWorker", "simple": "rq.worker.SimpleWorker"}

APP = {
    "handlersapp/__init__.py": "",
    "handlersapp/jobs.py": """
        import time

        def fail(mode):
            raise ValueError(f"failed on purpose ({mode})")

        def hang(mode):
            time.sleep(60)
    """,
    "handlersapp/handlers.py": """
        import os

        def first(job, exc_type, exc_value, traceback):
            job.connection.rpush(f"handled:{job.id}", f"first {exc_type.__name__} {exc_value} {job.get_status(False)}")
            return False if job.args[0] == "stop" else None

        def second(job, exc_type, exc_value, traceback):
            job.connection.rpush(f"handled:{job.id}", f"second {exc_type.__name__}")
    """,
}
HANDLERS = ("handlersapp.handlers.first", "handlersapp.handlers.second")


@pytest.fixture
def app_dir(tmp_path) -> Path:
    root = tmp_path / "app"
    for name, text in APP.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def stock(redis_url: str, app_dir: Path, queue: str, worker_class: str, disable: bool, log: Path) -> subprocess.Popen:
    args = [RQ_CLI, "worker", "--url", redis_url, "--path", str(app_dir), "--name", f"stock-{queue}", "--burst",
            "-w", STOCK_CLASSES[worker_class]]
    for handler in HANDLERS:
        args += ["--exception-handler", handler]
    if disable:
        args.append("-d")
    with open(log, "ab") as out:
        return subprocess.Popen([*args, queue], cwd=app_dir, stdout=out, stderr=subprocess.STDOUT)


def outcome(rconn, jobs: dict[str, Job]) -> dict:
    found = {}
    for role, job in jobs.items():
        queue = Queue(job.origin, connection=rconn)
        found[role] = {"handled": [entry.decode() for entry in rconn.lrange(f"handled:{job.id}", 0, -1)],
                       "status": job.get_status(refresh=True),
                       "in FailedJobRegistry": job.id in queue.failed_job_registry.get_job_ids(),
                       "results": [result.type.name for result in job.results()]}
    return found


@pytest.mark.parametrize("disable", [False, True], ids=["default-handler", "disabled-d"])
def test_handlers_run_as_under_rq_worker_exception_handler(rconn, redis_server, start_worker, app_dir, tmp_path,
                                                           disable):
    kinds = [(origin, worker_class) for worker_class in STOCK_CLASSES for origin in ("stock", "ours")]
    jobs: dict[tuple[str, str], dict[str, Job]] = {}
    for origin, worker_class in kinds:
        queue = Queue(f"{origin}-{worker_class}", connection=rconn)
        jobs[origin, worker_class] = {mode: queue.enqueue("handlersapp.jobs.fail", mode) for mode in ("go", "stop")}
    stocks = []
    for origin, worker_class in kinds:
        queue = f"{origin}-{worker_class}"
        if origin == "stock":
            stocks.append(stock(redis_server.url, app_dir, queue, worker_class, disable, tmp_path / f"{queue}.log"))
            continue
        start_worker(queue, env={"RQ_QUEUES": queue, "RQ_WORKER_CLASS": worker_class, "RQ_WITH_SCHEDULER": "no",
                                 "RQ_APP_PATH": str(app_dir), "RQ_EXCEPTION_HANDLERS": ",".join(HANDLERS),
                                 "RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER": "yes" if disable else "no"})
    every_job = [job for pair in jobs.values() for job in pair.values()]
    wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.FAILED for job in every_job), 60,
               what="every job to fail under stock rq and ours")
    for proc in stocks:
        proc.wait(30)
    found = {kind: outcome(rconn, pair) for kind, pair in jobs.items()}
    for worker_class in STOCK_CLASSES:
        oracle = found["stock", worker_class]
        # the oracle itself: the chain and -d as rq documents them
        assert [h.split()[0] for h in oracle["go"]["handled"]] == ["first", "second"], oracle
        assert [h.split()[0] for h in oracle["stop"]["handled"]] == ["first"], oracle
        assert oracle["go"]["in FailedJobRegistry"] is not disable, oracle
        assert found["ours", worker_class] == oracle, worker_class


def test_a_job_rescued_from_a_killed_worker_goes_through_the_handlers_as_rqs_cleanup_sends_it(
        rconn, start_worker, app_dir):
    """kill -9 of the worker under a job: the restarted instance's rescue calls the handlers with
    AbandonedJobError, as rq's cleanup of an abandoned job calls its worker's (stock rq takes minutes
    to get there: its entry must expire first, so no oracle here; rq's call is pinned by
    test_rq_contract_worker.py)."""
    job = Queue("rescued", connection=rconn).enqueue("handlersapp.jobs.hang", "go")
    env = {"RQ_QUEUES": "rescued", "RQ_WITH_SCHEDULER": "no", "RQ_APP_PATH": str(app_dir), "RQ_JOB_RETRY_MAX": "0",
           "RQ_EXCEPTION_HANDLERS": ",".join(HANDLERS)}
    worker = start_worker("1", env=env)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 20, what="the job to start")
    psutil.Process(worker.pid).send_signal(signal.SIGKILL)
    worker.wait(10)
    start_worker("1", env=env)  # as systemd's Restart= would
    wait_until(lambda: rconn.llen(f"handled:{job.id}") == 2, 20, what="the handlers to be called for the rescued job")
    assert [entry.decode().split()[:2] for entry in rconn.lrange(f"handled:{job.id}", 0, -1)] == [
        ["first", "AbandonedJobError"], ["second", "AbandonedJobError"]]
    assert job.get_status(refresh=True) == JobStatus.FAILED


@pytest.mark.parametrize("variable, value, expected", [
    ("RQ_EXCEPTION_HANDLERS", "handlersapp.handlers.frist", "handlersapp.handlers has no frist"),
    ("RQ_SETTINGS_MODULE", "handlersapp.rq_settings", "a module the app has"),
])
def test_a_bad_handler_or_settings_module_ends_run_and_run_check_in_one_line_exit_78(
        redis_server, app_dir, tmp_path, variable, value, expected):
    for args in (["--check"], []):
        env = {"RQ_APP_PATH": str(app_dir), variable: value}
        worker = WorkerProcess(redis_server.url, f"bad{len(args)}", tmp_path, env=env, args=args).start()
        assert worker.wait(20) == 78, worker.output()
        errors = [line for line in worker.output().splitlines() if "configuration error" in line]
        assert len(errors) == 1 and f"{variable}={value!r} is invalid" in errors[0] and expected in errors[0], (
            worker.output())
        assert "Traceback" not in worker.output()
        worker.kill()
