"""RQ_SERIALIZER, RQ_JOB_CLASS, RQ_QUEUE_CLASS, RQ_CONNECTION_CLASS and a dotted RQ_WORKER_CLASS, with
stock ``rq worker -S -j --queue-class --connection-class -w`` as the oracle in the same test.

The app's classes live in a module of a tmp app directory (``rqapp``), imported from RQ_APP_PATH as an
operator's app would be, and each leaves a trace in Redis that the test reads: the job class
(``perform``), the queue class (``move_dependents_to_ready``, which rq's worker calls on every success),
the worker class (``execute_job``) and the connection class (each client made, in a file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from helpers import JOBS_DIR, RQ_CLI, wait_until
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from testjobs import quick_job, sleep_job

RQ_CLASSES = {"fork": "rq.worker.Worker", "spawn": "rq.worker.SpawnWorker", "simple": "rq.worker.SimpleWorker"}
APP_WORKERS = {"fork": "rqapp.RecordingWorker", "spawn": "rqapp.RecordingSpawnWorker",
               "simple": "rqapp.RecordingSimpleWorker"}

APP = textwrap.dedent('''
    """The app's own rq classes, each leaving a trace in Redis (or, for the client class, in a file)."""
    import os

    import redis
    from rq import SimpleWorker, SpawnWorker, Worker
    from rq.job import Job
    from rq.queue import Queue


    class RecordingJob(Job):
        def perform(self):
            self.connection.rpush("recorded:job", self.id)
            return super().perform()


    class RecordingQueue(Queue):
        def move_dependents_to_ready(self, job, *args, **kwargs):
            self.connection.rpush("recorded:queue", job.id)
            return super().move_dependents_to_ready(job, *args, **kwargs)


    class Recording:
        def execute_job(self, job, queue):
            self.connection.rpush("recorded:worker", f"{type(job).__name__} {type(queue).__name__} {job.id}")
            return super().execute_job(job, queue)


    class RecordingWorker(Recording, Worker):
        pass


    class RecordingSpawnWorker(Recording, SpawnWorker):
        pass


    class RecordingSimpleWorker(Recording, SimpleWorker):
        pass


    class MarkingRedis(redis.Redis):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with open(os.environ["REDIS_CLASS_MARKS"], "a") as marks:
                marks.write(f"{os.getpid()}\\n")
''')


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "rqapp.py").write_text(APP)
    return app


def app_env(app_dir: Path, **env: str) -> dict[str, str]:
    return {"RQ_APP_PATH": f"{app_dir}:{JOBS_DIR}", "RQ_WITH_SCHEDULER": "no", **env}


def stock_burst(redis_url: str, app_dir: Path, queue: str, *options: str, env: dict[str, str] | None = None) -> str:
    """``rq worker --burst`` with ``options``: runs what is queued, then exits; its output."""
    done = subprocess.run([RQ_CLI, "worker", "--burst", "--url", redis_url, "--path", str(app_dir), "--path",
                           str(JOBS_DIR), "--name", f"stock-{queue}", *options, queue], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def fetch(rconn, job_id: str) -> Job:
    return Job.fetch(job_id, connection=rconn, serializer=JSONSerializer)


def finished(rconn, job_id: str) -> bool:
    return fetch(rconn, job_id).get_status() == JobStatus.FINISHED


@pytest.mark.parametrize("kind", ["fork", "spawn", "simple"])
def test_json_jobs_run_as_under_rq_worker_serializer_json(kind, start_worker, rconn, redis_server, app_dir):
    """Without RQ_SERIALIZER the worker reads the job with pickle and fails it (the issue's measurement)."""
    queue = Queue(f"json-{kind}", connection=rconn, serializer=JSONSerializer)
    stock = queue.enqueue(quick_job, 21, job_id=f"stock-json-{kind}")
    stock_burst(redis_server.url, app_dir, queue.name, "--serializer", "json", "-w", RQ_CLASSES[kind])
    assert fetch(rconn, stock.id).get_status() == JobStatus.FINISHED
    assert fetch(rconn, stock.id).return_value() == 42

    ours = queue.enqueue(quick_job, 21, job_id=f"ours-json-{kind}")
    start_worker("1", env=app_env(app_dir, RQ_QUEUES=queue.name, RQ_SERIALIZER="json", RQ_WORKER_CLASS=kind))
    wait_until(lambda: fetch(rconn, ours.id).get_status() in (JobStatus.FINISHED, JobStatus.FAILED), 20,
               what="our worker to end the job")
    assert fetch(rconn, ours.id).get_status() == JobStatus.FINISHED
    assert fetch(rconn, ours.id).return_value() == 42


@pytest.mark.parametrize("kind", ["fork", "spawn", "simple"])
def test_the_apps_worker_job_queue_and_connection_classes_run_as_under_stock_rq(kind, start_worker, rconn,
                                                                                 redis_server, app_dir, tmp_path):
    """Each class leaves its trace under stock rq and under ours alike; the spawn horse gets the job and
    queue classes through its configuration, the client class through the environment."""
    queue = Queue(f"classes-{kind}", connection=rconn, serializer=JSONSerializer)
    marks = {"stock": tmp_path / "stock-marks", "ours": tmp_path / "ours-marks"}
    stock = queue.enqueue(quick_job, 1, job_id=f"stock-classes-{kind}")
    stock_burst(redis_server.url, app_dir, queue.name, "-S", "json", "-w", APP_WORKERS[kind], "-j",
                "rqapp.RecordingJob", "--queue-class", "rqapp.RecordingQueue", "--connection-class",
                "rqapp.MarkingRedis", env={**os.environ, "REDIS_CLASS_MARKS": str(marks["stock"])})
    ours = queue.enqueue(quick_job, 1, job_id=f"ours-classes-{kind}")
    start_worker("1", env=app_env(app_dir, RQ_QUEUES=queue.name, RQ_SERIALIZER="json",
                                  RQ_WORKER_CLASS=APP_WORKERS[kind], RQ_JOB_CLASS="rqapp.RecordingJob",
                                  RQ_QUEUE_CLASS="rqapp.RecordingQueue", RQ_CONNECTION_CLASS="rqapp.MarkingRedis",
                                  REDIS_CLASS_MARKS=str(marks["ours"])))
    wait_until(lambda: finished(rconn, ours.id), 20, what="our worker to finish the job")

    recorded = {key: [v.decode() for v in rconn.lrange(f"recorded:{key}", 0, -1)] for key in ("job", "queue", "worker")}
    for job in (stock, ours):
        assert job.id in recorded["job"], recorded
        assert job.id in recorded["queue"], recorded
        assert f"RecordingJob RecordingQueue {job.id}" in recorded["worker"], recorded
    assert marks["stock"].read_text() and marks["ours"].read_text(), "no client of RQ_CONNECTION_CLASS was made"


def test_the_apps_worker_class_keeps_the_warm_stop(start_worker, notify, rconn, app_dir):
    """A dotted RQ_WORKER_CLASS is ours in front of the app's: a stop waits for the running job."""
    worker = start_worker("1", notify=notify, env=app_env(app_dir, RQ_WORKER_CLASS="rqapp.RecordingWorker",
                                                          WATCHDOG_USEC="3000000"))
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 2, job_id="app-class-warm")
    wait_until(lambda: rconn.get(f"executions:{job.id}") == b"1", 10, what="the job function to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED
    assert [v.decode() for v in rconn.lrange("recorded:worker", 0, -1)] == [f"Job Queue {job.id}"]


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_a_job_cut_by_kill_9_is_recovered_whatever_its_serializer(serializer, start_worker, notify, rconn, app_dir):
    """The restarted instance's recovery reads the abandoned job with the app's serializer and job class,
    and the job is re-run as with pickle. (rq 3 keeps what it cannot decode, so a JSON job read with
    pickle was still re-queued; what its rescue said of it was "?" for its function.)"""
    env = app_env(app_dir, RQ_SERIALIZER=serializer, RQ_WORKER_CLASS="rqapp.RecordingWorker",
                  RQ_JOB_CLASS="rqapp.RecordingJob", RQ_WITH_SCHEDULER="yes", WATCHDOG_USEC="3000000")
    worker = start_worker("1", notify=notify, env=env)
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn, serializer=JSONSerializer if serializer == "json" else None)
    job = queue.enqueue(sleep_job, 2, job_id=f"crash-{serializer}", retry=Retry(max=2, interval=1))
    wait_until(lambda: rconn.get(f"executions:{job.id}") == b"1", 10, what="the job function to start")
    worker.signal(signal.SIGKILL)
    worker.wait(5)

    t0 = time.monotonic()
    restarted = start_worker("1", env=env)  # systemd's Restart= of the same instance
    job = Job.fetch(job.id, connection=rconn, serializer=queue.serializer)
    wait_until(lambda: job.get_status() == JobStatus.FINISHED, 20, what="the recovered job to finish")
    assert time.monotonic() - t0 < 15
    assert rconn.get(f"executions:{job.id}") == b"2"
    assert "died while running" in job.results()[-1].exc_string
    assert f"Rescued job {job.id} (testjobs.sleep_job)" in restarted.output()  # read with pickle: "(?)"


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("RQ_JOB_CLASS", "rqapp.RecordingQueue", "a subclass of rq.job.Job"),
    ("RQ_QUEUE_CLASS", "rqapp.Absent", "module rqapp has no Absent"),
    ("RQ_WORKER_CLASS", "rqapp.RecordingJob", "a subclass of rq's Worker, SpawnWorker or SimpleWorker"),
    ("RQ_SERIALIZER", "rqapp.os", "with dumps and loads"),
    ("RQ_CONNECTION_CLASS", "notamodule.Redis", "there is no module notamodule"),
])
def test_a_wrong_class_is_one_line_and_exit_78_from_run_and_its_check(variable, value, said, start_worker, app_dir):
    for args in (["--check"], []):
        worker = start_worker("1", env=app_env(app_dir, **{variable: value}), args=args)
        assert worker.wait(20) == 78
        errors = [line for line in worker.output().splitlines() if "configuration error" in line]
        assert len(errors) == 1 and variable in errors[0] and said in errors[0], worker.output()
        assert "Traceback" not in worker.output()
        worker.log_path.unlink()
