"""rq's --max-jobs, --max-idle-time, --worker-ttl, --maintenance-interval and --job-monitoring-interval
under our worker (RQ_MAX_JOBS, …), with stock ``rq worker`` and the same option as the oracle in the
same test; and RQ_MAX_MEMORY, which rq does not have.

Where rq exits after its max jobs, ours recycles in place: the same process (pid) re-executes itself,
registers anew (rq's ``birth``, which each job notes) and takes the next job; no job is lost or run
twice.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest
from helpers import JOBS_DIR, wait_until
from rq import Queue
from rq.group import Group
from rq.job import Job, JobStatus
from rq.worker import Worker
from testjobs import birth_job, sleep_job

HOST = socket.gethostname()



def statuses(rconn, jobs: list[Job]) -> list[str]:
    return [Job.fetch(job.id, connection=rconn).get_status() for job in jobs]


def executions(rconn, job: Job) -> int:
    return int(rconn.get(f"executions:{job.id}") or 0)


def births(rconn, queue: str) -> list[bytes]:
    """The registration of the worker process that ran each job, in the order they ran."""
    return rconn.lrange(f"births:{queue}", 0, -1)


def test_max_jobs_recycles_in_place_where_rq_exits(start_worker, stock_rq, notify, rconn):
    """N=3, 7 jobs. Stock rq: 3 done, then it exits (4 left queued). Ours: all 7, by one process (same
    pid) re-executed twice: jobs 1-3, 4-6 and 7 noted three registrations; each job ran once."""
    stock_queue = Queue("stock-max", connection=rconn)
    stock_jobs = [stock_queue.enqueue(birth_job) for _ in range(7)]
    stock = stock_rq("stock-stock-max", "--max-jobs", "3", "stock-max")
    assert stock.wait(30) == 0
    assert statuses(rconn, stock_jobs) == [JobStatus.FINISHED] * 3 + [JobStatus.QUEUED] * 4

    queue = Queue("ours-max", connection=rconn)
    jobs = [queue.enqueue(birth_job) for _ in range(7)]
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "ours-max", "RQ_MAX_JOBS": "3",
                                                   "WATCHDOG_USEC": "3000000"})
    wait_until(lambda: statuses(rconn, jobs) == [JobStatus.FINISHED] * 7, 60, what="all 7 jobs finished")
    assert [executions(rconn, job) for job in jobs] == [1] * 7
    seen = births(rconn, "ours-max")
    assert len(seen) == 7 and len(set(seen)) == 3, seen
    assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4] == seen[5] != seen[6], seen
    assert worker.proc.poll() is None, "recycled, not exited"
    key = f"{Worker.redis_worker_namespace_prefix}{HOST}.rq-worker@1"
    wait_until(lambda: rconn.hget(key, "pid") == str(worker.pid).encode(), 10, what="the same pid registered")
    assert len(notify.lines("RELOADING=1")) == 2
    assert notify.lines("MAINPID=") == [f"MAINPID={worker.pid}"] * 3, "READY=1 with MAINPID from each"
    output = worker.output()
    assert output.count("Recycled worker") == 2
    assert output.count("RQ_MAX_JOBS=3") >= 2


def test_max_memory_recycles_after_the_job_that_passed_it(start_worker, notify, rconn):
    """A job whose horse took 400 MiB against RQ_MAX_MEMORY=300M: the worker recycles after it, and the
    next job runs in the new process; small jobs before it do not."""
    queue = Queue("memory", connection=rconn)
    jobs = [queue.enqueue(birth_job, mib) for mib in (0, 0, 400, 0, 0)]
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "memory", "RQ_MAX_MEMORY": "300M"})
    wait_until(lambda: statuses(rconn, jobs) == [JobStatus.FINISHED] * 5, 60, what="all 5 jobs finished")
    seen = births(rconn, "memory")
    assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4], seen
    assert [executions(rconn, job) for job in jobs] == [1] * 5
    assert worker.proc.poll() is None
    assert len(notify.lines("RELOADING=1")) == 1
    assert "the job's work horse at its peak took" in worker.output()
    assert "RQ_MAX_MEMORY=300M" in worker.output()


def test_max_idle_time_exits_0_as_rq_does(start_worker, stock_rq, notify, rconn):
    """After its job, idle for 2 s: stock rq exits 0, and so does ours (which the unit does not restart)."""
    Queue("idle-stock", connection=rconn).enqueue(birth_job)
    started = time.monotonic()
    stock = stock_rq("stock-idle-stock", "--max-idle-time", "2", "idle-stock")
    assert stock.wait(30) == 0
    stock_took = time.monotonic() - started

    job = Queue("idle-ours", connection=rconn).enqueue(birth_job)
    started = time.monotonic()
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "idle-ours", "RQ_MAX_IDLE_TIME": "2"})
    assert worker.wait(30) == 0
    took = time.monotonic() - started
    assert Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED
    assert executions(rconn, job) == 1
    assert 2 <= took < stock_took + 10, (took, stock_took)  # (each includes its interpreter's start)
    assert notify.lines("STOPPING=1")
    assert notify.lines("STATUS=")[-1].startswith("STATUS=Stopping: idle for 2s (RQ_MAX_IDLE_TIME), exiting with "
                                                  "status 0 · 1 done")
    assert "Idle for 2s (RQ_MAX_IDLE_TIME)" in worker.output()


def test_worker_ttl_maintenance_and_monitoring_intervals_as_rq_sets_them(start_worker, stock_rq, rconn):
    """The worker key's TTL between jobs (worker TTL + 60), rq's group maintenance lock (interval - 1) and
    the key's TTL while a job runs (monitoring interval + 60) are the same under ours as under stock rq."""

    def observe(queue_name: str, key: str) -> tuple[int, int, int]:
        wait_until(lambda: rconn.exists(key) and rconn.exists(Group.REDIS_GROUP_CLEANING_KEY), 20,
                   what="the worker registered and its maintenance done")
        time.sleep(1.5)  # a beat or two after the registration
        idle_ttl, lock_ttl = rconn.ttl(key), rconn.ttl(Group.REDIS_GROUP_CLEANING_KEY)
        job = Queue(queue_name, connection=rconn).enqueue(sleep_job, 2)
        wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.STARTED, 10)
        busy_ttl = rconn.ttl(key)
        wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED, 10)
        return idle_ttl, lock_ttl, busy_ttl

    options = {"--worker-ttl": "45", "--maintenance-interval": "40", "--job-monitoring-interval": "5"}
    stock_proc = stock_rq("stock-ttl-stock", *(word for pair in options.items() for word in pair), "ttl-stock")
    stock = observe("ttl-stock", f"{Worker.redis_worker_namespace_prefix}stock-ttl-stock")
    stock_proc.kill()
    rconn.delete(Group.REDIS_GROUP_CLEANING_KEY)

    start_worker("1", env={"RQ_QUEUES": "ttl-ours", "RQ_WORKER_TTL": "45", "RQ_MAINTENANCE_INTERVAL": "40",
                           "RQ_JOB_MONITORING_INTERVAL": "5"})
    ours = observe("ttl-ours", f"{Worker.redis_worker_namespace_prefix}{HOST}.rq-worker@1")

    assert 100 <= stock[0] <= 105 and 100 <= ours[0] <= 105, (stock, ours)  # 45 + 60
    assert 36 <= stock[1] <= 39 and 36 <= ours[1] <= 39, (stock, ours)  # 40 - 1
    assert 60 <= stock[2] <= 65 and 60 <= ours[2] <= 65, (stock, ours)  # 5 + 60


@pytest.mark.parametrize("worker_class", ["simple", "spawn"])
def test_simple_and_spawn_workers_recycle_too(worker_class, start_worker, notify, rconn):
    """RQ_MAX_JOBS=3 over 5 jobs, the fourth taking 400 MiB against RQ_MAX_MEMORY=300M: a simple worker's
    own peak (its jobs run in it) and a spawned horse's are measured as a forked one's. Two recycles,
    each after its job (jobs 1-3 for the count, 4 for the memory, then 5), no job twice."""
    queue = Queue(f"classes-{worker_class}", connection=rconn)
    jobs = [queue.enqueue(birth_job, mib) for mib in (0, 0, 0, 400, 0)]
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": queue.name, "RQ_WORKER_CLASS": worker_class,
                                                   "RQ_MAX_JOBS": "3", "RQ_MAX_MEMORY": "300M"})
    wait_until(lambda: statuses(rconn, jobs) == [JobStatus.FINISHED] * 5, 60, what="all 5 jobs finished")
    seen = births(rconn, queue.name)
    assert seen[0] == seen[1] == seen[2] != seen[3] != seen[4], seen
    assert [executions(rconn, job) for job in jobs] == [1] * 5
    assert worker.proc.poll() is None and len(notify.lines("RELOADING=1")) == 2
    output = worker.output()
    assert "RQ_MAX_JOBS=3" in output and "RQ_MAX_MEMORY=300M" in output


def test_no_recycle_into_an_env_file_that_would_fail_the_start(start_worker, notify, rconn, tmp_path):
    """RQ_MAX_JOBS=1, and the env file edited into an invalid state without a reload: the worker does
    not re-execute into exit 78 (an instance left failed); it goes on in the same process, and
    recycles after the next job once the file is fixed."""
    env_file = tmp_path / "worker.env"
    env_file.write_text("RQ_QUEUES=checked\nRQ_MAX_JOBS=1\n")
    worker = start_worker("1", notify=notify, args=["--env-file", str(env_file)])
    notify.wait_for("READY=1")
    env_file.write_text("RQ_QUEUES=checked\nRQ_MAX_JOBS=1\nRQ_WORKER_TTL=5\n")
    queue = Queue("checked", connection=rconn)
    jobs = [queue.enqueue(birth_job) for _ in range(2)]
    wait_until(lambda: statuses(rconn, jobs) == [JobStatus.FINISHED] * 2, 30, what="both jobs finished")
    time.sleep(0.5)  # the check after the second job follows its FINISHED by milliseconds
    env_file.write_text("RQ_QUEUES=checked\nRQ_MAX_JOBS=1\n")
    jobs.append(queue.enqueue(birth_job))
    wait_until(lambda: statuses(rconn, jobs) == [JobStatus.FINISHED] * 3, 30)
    wait_until(lambda: "Recycled worker" in worker.output(), 30, what="the recycle once the file is fixed")
    seen = births(rconn, "checked")
    assert seen[0] == seen[1], seen  # (the third ran there too, unless the fix came before the second's check)
    assert worker.proc.poll() is None
    wait_until(lambda: len(notify.lines("MAINPID=")) >= 2, 10, what="READY=1 from the recycled process")
    assert set(notify.lines("MAINPID=")) == {f"MAINPID={worker.pid}"}
    assert worker.output().count("Not recycling (1 job done, RQ_MAX_JOBS=1): a start now would fail: configuration "
                                 "error: RQ_WORKER_TTL='5' is invalid") == 1, worker.output()


def test_a_stop_during_the_job_that_reaches_max_jobs_wins(start_worker, notify, rconn):
    """SIGTERM while the job that reaches RQ_MAX_JOBS runs: a warm stop, as without the limit (the job
    finishes, the worker exits 0); the recycle that job would have asked for does not happen."""
    job = Queue("stopped", connection=rconn).enqueue(sleep_job, 2)
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "stopped", "RQ_MAX_JOBS": "1"})
    wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.STARTED, 15)
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED
    assert executions(rconn, job) == 1
    assert not notify.lines("RELOADING=1") and "Recycl" not in worker.output()


APP_WORKER = '''
from rq import Worker


class CountingWorker(Worker):
    """The app's own worker class: counts the jobs its execute_job ran, from the worker process."""

    def execute_job(self, job, queue):
        self.connection.incr("app-worker:jobs")
        return super().execute_job(job, queue)
'''


def test_an_app_s_own_worker_class_and_serializer_recycle_too(start_worker, notify, rconn, tmp_path):
    """RQ_MAX_JOBS=2 over 5 jobs of a JSON app with its own worker class (the e2e test's case, without
    systemd): its override runs for every job, across two recycles of the same process."""
    from rq.serializers import JSONSerializer

    app = tmp_path / "app"
    app.mkdir()
    (app / "recycleapp.py").write_text(APP_WORKER)
    queue = Queue("app-json", connection=rconn, serializer=JSONSerializer)
    jobs = [queue.enqueue(birth_job) for _ in range(5)]
    worker = start_worker("1", notify=notify, env={
        "RQ_QUEUES": "app-json", "RQ_MAX_JOBS": "2", "RQ_SERIALIZER": "json",
        "RQ_WORKER_CLASS": "recycleapp.CountingWorker", "RQ_APP_PATH": f"{JOBS_DIR}:{app}"})
    done = lambda: [Job.fetch(j.id, connection=rconn, serializer=JSONSerializer).get_status() for j in jobs]  # noqa: E731
    wait_until(lambda: done() == [JobStatus.FINISHED] * 5, 60, what="the JSON jobs finished")
    assert int(rconn.get("app-worker:jobs")) == 5
    seen = births(rconn, "app-json")
    assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4], seen
    assert worker.proc.poll() is None and len(notify.lines("RELOADING=1")) == 2
    assert worker.output().count("Recycling in place") == 2


FAILING_EXECV = '''
import errno
import os


def execv(path, argv):
    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)


os.execv = execv  # the interpreter gone by the time the worker re-executes (an upgrade removed it)
'''


def test_a_recycle_whose_re_execution_fails_exits_1_for_systemd_to_restart(start_worker, notify, rconn, tmp_path):
    """os.execv failing (its interpreter removed or replaced under it): one line and exit 1, which
    Restart=on-failure restarts, never 78 (left dead) nor a traceback. The job before it finished."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAILING_EXECV)
    job = Queue("no-exec", connection=rconn).enqueue(birth_job)
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "no-exec", "RQ_MAX_JOBS": "1",
                                                   "PYTHONPATH": str(site)})
    assert worker.wait(30) == 1
    assert Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED
    output = worker.output()
    assert "cannot re-execute in place (" in output and "No such file or directory); exiting so that systemd " \
        "starts this instance again" in output, output
    assert "Traceback" not in output, output
    assert any(line.startswith("ERRNO=2") for line in notify.lines("ERRNO=")), notify.lines("ERRNO=")
