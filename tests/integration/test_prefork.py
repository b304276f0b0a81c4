"""RQ_PREFORK: the fork worker forks the next horse while a job runs and hands it its job (``prefork``)."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from helpers import JOBS_DIR, app_package, app_package_env, children_of, job_ended, spare_of, wait_until
from rq import Queue
from rq.command import send_kill_horse_command
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from testjobs import environ_job, quick_job, sleep_job

PREFORK = {"RQ_PREFORK": "yes", "RQ_WITH_SCHEDULER": "no"}  # (no scheduler: the worker's only child is a horse)

APP = textwrap.dedent('''
    """An app job class that carries something no pickle takes (a lock), and a job that says its process."""
    import os
    import threading
    import time

    from rq.job import Job

    IMPORTED_AT = time.time()


    class LockedJob(Job):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._lock = threading.Lock()


    def explode():
        raise RuntimeError("this cannot be loaded here")


    class Bomb:
        """Pickles, and cannot be unpickled."""
        def __reduce__(self):
            return explode, ()


    class BombJob(Job):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bomb = Bomb()


    SEEN = []


    def whoami(tag):
        """This process's pid, its parent's, the tags of the jobs this module saw in this process before,
        and when this module was imported."""
        before = list(SEEN)
        SEEN.append(tag)
        return [os.getpid(), os.getppid(), before, IMPORTED_AT]
''')


def exists(pid: int) -> bool:
    """Alive or a zombie: a spare killed but never reaped still shows here."""
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def app_dir(tmp_path):
    path = tmp_path / "pfapp"
    path.mkdir()
    (path / "pfapp.py").write_text(APP)
    return path


def start(start_worker, notify, app_dir, **env: str):
    worker = start_worker("1", notify=notify, env={**PREFORK, "RQ_APP_PATH": f"{app_dir}:{JOBS_DIR}", **env})
    notify.wait_for("READY=1")
    return worker


def test_each_job_runs_in_a_horse_forked_before_it_was_taken_and_used_once(start_worker, notify, rconn, app_dir):
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    assert job_ended(rconn, queue.enqueue(quick_job, 1).id).return_value() == 2
    seen = []
    for i in range(3):
        spare = spare_of(worker.pid)
        pid, parent, before, _ = job_ended(rconn, queue.enqueue("pfapp.whoami", i).id).return_value()
        assert (pid, parent) == (spare, worker.pid)  # the spare that waited took the job
        assert before == []  # a process of its own: no earlier job's state in its module
        seen.append(pid)
    assert len(set(seen)) == 3
    assert "Traceback" not in worker.output()


def test_the_job_module_is_not_imported_before_the_job(start_worker, notify, rconn, app_dir):
    """The spare is a copy of the worker, which imports no job code: only the job imports its module."""
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue("pfapp.whoami", "first").id)
    spare_of(worker.pid)
    time.sleep(0.5)
    enqueued = time.time()
    pid, _, before, imported_at = job_ended(rconn, queue.enqueue("pfapp.whoami", "second").id).return_value()
    assert before == []
    assert imported_at >= enqueued  # imported by the job, in its horse: not in the spare as it waited


def test_the_horse_has_its_job_id_in_its_environment(start_worker, notify, rconn, app_dir):
    start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    job = job_ended(rconn, queue.enqueue(environ_job).id)
    assert f"RQ_JOB_ID={job.id}" in job.return_value()


def test_a_job_of_another_serializer_is_deserialized_in_its_horse(start_worker, notify, rconn, app_dir):
    start(start_worker, notify, app_dir, RQ_SERIALIZER="json")
    queue = Queue(connection=rconn, serializer=JSONSerializer)
    for i in range(3):
        job_id = job_ended(rconn, queue.enqueue(quick_job, i).id).id
        assert Job.fetch(job_id, connection=rconn, serializer=JSONSerializer).return_value() == 2 * i


def test_a_killed_spare_is_not_used_and_the_job_runs_in_a_horse_forked_for_it(start_worker, notify, rconn, app_dir):
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare = spare_of(worker.pid)
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: spare not in children_of(worker.pid), 5, what="the spare to die")
    job = job_ended(rconn, queue.enqueue("pfapp.whoami", "after").id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value()[0] != spare
    assert not exists(spare)  # reaped, not left a zombie
    assert job_ended(rconn, queue.enqueue(quick_job, 3).id).get_status() == JobStatus.FINISHED


def test_a_job_that_cannot_be_pickled_gets_a_horse_forked_for_it(start_worker, notify, rconn, app_dir):
    worker = start(start_worker, notify, app_dir, RQ_JOB_CLASS="pfapp.LockedJob")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    for i in range(2):
        spare = spare_of(worker.pid)
        job = job_ended(rconn, queue.enqueue("pfapp.whoami", i).id)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value()[0] != spare
        assert not exists(spare)


def test_a_job_the_spare_cannot_rebuild_gets_a_horse_forked_for_it_and_no_retry_spent(start_worker, notify, rconn,
                                                                                      app_dir):
    """The spare answers that it could not rebuild the job (its unpickling failed): the worker kills it and
    forks the job's horse, which runs it once; no horse died under the job, so no retry is taken."""
    worker = start(start_worker, notify, app_dir, RQ_JOB_CLASS="pfapp.BombJob")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare = spare_of(worker.pid)
    job = job_ended(rconn, queue.enqueue("pfapp.whoami", "bomb").id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value()[0] != spare and not exists(spare)
    assert job.retries_left is None and "this cannot be loaded here" in worker.output()


def test_a_timeout_and_a_kill_of_a_handed_horse_are_recorded_as_under_a_fork(start_worker, notify, rconn, app_dir):
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    timed_out = job_ended(rconn, queue.enqueue(sleep_job, 30, job_timeout=1).id)
    assert timed_out.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in (timed_out.latest_result().exc_string or "")
    spare = spare_of(worker.pid)
    job = queue.enqueue(sleep_job, 30)
    wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.STARTED, 10, what="the start")
    send_kill_horse_command(rconn, Job.fetch(job.id, connection=rconn).worker_name)
    killed = job_ended(rconn, job.id)
    assert killed.get_status() == JobStatus.FAILED
    assert not exists(spare)
    assert job_ended(rconn, queue.enqueue(quick_job, 4).id).return_value() == 8


@pytest.mark.parametrize("how", ["stop", "reload"])
def test_a_stop_or_a_reload_leaves_no_spare_behind(start_worker, notify, rconn, app_dir, how):
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare = spare_of(worker.pid)
    if how == "stop":
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    else:
        readies = len(notify.lines("READY=1"))
        worker.signal(signal.SIGHUP)
        notify.wait_for("READY=1", after=readies)
        assert job_ended(rconn, queue.enqueue("pfapp.whoami", "after").id).return_value()[1] == worker.pid
    assert not exists(spare)


AFTER_DONE = textwrap.dedent('''
    import os

    if os.environ.get("PF_ACTION"):
        # In the horse that reaches "horse.released" once the test made the file PF_ARMED (taken: once): act,
        # then linger PF_LINGER seconds before rq's os._exit(0), as a slow exit of a large process would.
        import signal
        import time
        from pathlib import Path

        from rq_worker_service import faults

        _reached = faults.reached

        def reached(point):
            _reached(point)
            if point != "horse.released":
                return
            try:
                Path(os.environ["PF_ARMED"]).unlink()
            except FileNotFoundError:
                return
            action = os.environ["PF_ACTION"]
            worker = os.getppid()
            if action in ("term", "hup", "int"):
                os.kill(worker, {"term": signal.SIGTERM, "hup": signal.SIGHUP, "int": signal.SIGINT}[action])
            elif action == "freeze":
                Path(os.environ["PF_ARMED"] + ".pid").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGSTOP)
            elif action in ("stop-job", "kill-horse"):
                import redis
                from rq.command import send_kill_horse_command, send_stop_job_command
                from rq.worker import Worker

                connection = redis.Redis.from_url(os.environ["REDIS_URL"])
                name = os.environ["RQ_WORKER_ID"]
                if action == "stop-job":
                    send_stop_job_command(connection, os.environ["RQ_JOB_ID"])
                else:
                    send_kill_horse_command(connection, name)
            time.sleep(float(os.environ.get("PF_LINGER", "0.5")))

        faults.reached = reached
''')


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("then", ["cont", "stop"])
def test_the_next_job_goes_as_a_horse_says_done_and_that_horse_is_reaped(start_worker, notify, rconn, tmp_path,
                                                                         then):
    """A spare's horse says "done" once its job's end is written, before it exits: the worker takes the next
    job without waiting for the exit. Here that horse is stopped right after its "done" (it never exits until
    continued): the next jobs run meanwhile; continued, it is reaped; or the worker is stopped while it is
    still stopped, and leaves at once, that horse gone with it. Without the "done" the worker waited for
    that horse's exit, as rq's ``wait4`` does, and ran nothing."""
    app_dir = app_package(tmp_path, "pfdone", "", AFTER_DONE)
    armed, stopped = tmp_path / "armed", tmp_path / "armed.pid"
    worker = start_worker("1", notify=notify, env=app_package_env(
        app_dir, RQ_PREFORK="yes", PF_ACTION="freeze", PF_ARMED=str(armed), PF_LINGER="0"))
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    armed.touch()
    assert job_ended(rconn, queue.enqueue(quick_job, 2).id).return_value() == 4
    wait_until(stopped.exists, 10, what="the horse to stop after its done")
    horse = int(stopped.read_text())
    wait_until(lambda: state_of(horse) == "T", 10, what="the horse to be stopped")
    for i in range(3):
        assert job_ended(rconn, queue.enqueue(quick_job, i).id, timeout=10).return_value() == 2 * i
    assert state_of(horse) == "T" and horse in children_of(worker.pid)  # still there, still the worker's
    if then == "cont":
        os.kill(horse, signal.SIGCONT)
        assert job_ended(rconn, queue.enqueue(quick_job, 5).id).return_value() == 10
        wait_until(lambda: not exists(horse), 10, what="the horse to be reaped")
    else:
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        assert time.monotonic() - started < 5
        wait_until(lambda: not exists(horse), 5, what="the stopped horse to die with its worker")
    assert "Traceback" not in worker.output()
    assert queue.failed_job_registry.count == 0


def test_an_idle_worker_keeps_no_finished_horse(start_worker, notify, rconn, app_dir):
    """The horses that said "done" are reaped once the queues are empty (``Prefork.settle``), not at the
    next job: an idle worker's children are its spare alone, no zombie among them."""
    worker = start(start_worker, notify, app_dir)
    queue = Queue(connection=rconn)
    jobs = [queue.enqueue(quick_job, i) for i in range(5)]
    for job in jobs:
        job_ended(rconn, job.id)
    spare = spare_of(worker.pid)
    wait_until(lambda: children_of(worker.pid, zombies=True) == [spare], 2, what="only the spare as the worker's child")


def test_a_horse_that_ends_without_done_is_recorded_as_rq_does(start_worker, notify, rconn, app_dir):
    """A horse that dies under its job says no "done": its pipe ends, and the worker reads how from ``wait4``
    (here: a job that kills its own process; no retry for a cut job)."""
    worker = start(start_worker, notify, app_dir, RQ_JOB_RETRY_MAX="0")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    job = job_ended(rconn, queue.enqueue(os.kill, 0, signal.SIGKILL).id)
    assert job.get_status() == JobStatus.FAILED
    assert "Work-horse terminated unexpectedly" in (job.latest_result().exc_string or "")
    assert job_ended(rconn, queue.enqueue(quick_job, 6).id).return_value() == 12
