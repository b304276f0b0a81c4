"""Third review of RQ_PREFORK: the spare's horse says "done" and its worker goes on before it exits (0d10195).

The reproducers of its six findings fail on 0d10195 and pass on its parent (f12404f), where the worker waited
for its horse's exit, and since 3677d98; the checks that held up (``HELD_UP``) run with RQWS_FAULTS_FULL=1.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from helpers import app_package, app_package_env, children_of, job_ended, runs, spare_of, wait_until
from rq import Queue
from rq.job import Job, JobStatus
from test_prefork import AFTER_DONE
from testjobs import quick_job

HELD_UP = ("a check of the review that held up (no finding), ≈20 s in all: RQWS_FAULTS_FULL=1 runs it; CI runs "
           "the reproducers")

APP = textwrap.dedent('''
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path


    def forks_and_the_child_returns(marker, seconds):
        """A job whose forked child returns from the job function (no os._exit: a common mistake) while the
        horse goes on with the job for ``seconds``, and writes ``marker`` at its end."""
        if os.fork() == 0:
            return "child"
        time.sleep(seconds)
        Path(marker).write_text(str(time.time()))
        return "parent"


    KEPT = []


    def closes_inherited_fds_then_logs(directory):
        """A job that closes the descriptors it inherited (python-daemon's way, a C library's) and then opens
        its log files, kept open at module level as logging handlers are (``KEPT``)."""
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        for i in range(30):
            log = open(os.path.join(directory, f"log{i}"), "ab", buffering=0)
            log.write(b"line\\n")
            KEPT.append(log)
        return "logged"


    def kill_self():
        os.kill(os.getpid(), signal.SIGKILL)


    def peak_in_a_subprocess(mib):
        """A job whose work is a subprocess that peaks at ``mib`` MiB (an image tool, ffmpeg): MemoryMax=
        counts it, and so did rq's wait4 of the horse (its ru_maxrss covers its waited-for children)."""
        subprocess.run([sys.executable, "-c", f"b = b'x' * ({mib} << 20); import time; time.sleep(0.2)"],
                       check=True)
        return mib
''')


def _start(start_worker, notify, tmp_path, **env):
    app_dir = app_package(tmp_path, "pf3app", APP, "")
    worker = start_worker("1", notify=notify, env=app_package_env(app_dir, RQ_PREFORK="yes", **env))
    notify.wait_for("READY=1")
    return worker


def test_a_horse_killed_under_its_job_while_its_child_lives_is_recorded_at_once(start_worker, notify, rconn,
                                                                                   tmp_path):
    """The horse dies without "done" (SIGKILL) while a child the job forked lives on for 25 s. rq's wait4 (and
    this worker before 0d10195) reads the death at once and fails the job; now the worker waits in
    ``Prefork.wait``'s select for the end of a pipe that the child still holds open, and the job stays
    STARTED until the child exits (or the monitor's timeout+60 s kill of the horse's group)."""
    worker = _start(start_worker, notify, tmp_path, RQ_JOB_RETRY_MAX="0")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    pidfile = tmp_path / "child"
    job = queue.enqueue("testjobs.killed_leaving_a_child", 25, str(pidfile))
    started = time.monotonic()
    try:
        job = job_ended(rconn, job.id, timeout=15)
        assert time.monotonic() - started < 10
        assert job.get_status() == JobStatus.FAILED
        assert job_ended(rconn, queue.enqueue(quick_job, 3).id, timeout=10).return_value() == 6
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_only_the_horse_itself_says_done(start_worker, notify, rconn, tmp_path):
    """A process the job forked that returns into rq's code (rq's perform_job ends it, then main_work_horse's
    os._exit) reaches ``ServiceWorker.perform_job`` too and writes "done" on the inherited pipe: the worker
    takes the horse for ended and runs its next job while the horse still runs the first one (two jobs at
    once in a one-job worker, the first one's horse no longer watched: no monitor, a stop kills it
    mid-job). Before 0d10195 the worker waited for the horse's own exit."""
    worker = _start(start_worker, notify, tmp_path)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    marker = tmp_path / "parent-done"
    first = queue.enqueue("pf3app.forks_and_the_child_returns", str(marker), 4)
    second = queue.enqueue(quick_job, 7)
    job_ended(rconn, second.id, timeout=20)
    assert marker.exists(), "the second job ran while the first one's horse was still running it"
    job_ended(rconn, first.id, timeout=10)


def test_max_memory_counts_the_horse_s_children_as_wait4_did(start_worker, notify, rconn, tmp_path):
    """RQ_MAX_MEMORY: a job whose subprocess peaked at 300 MiB against a 200M limit. rq's wait4 gave the
    horse's ru_maxrss with its waited-for children's (as MemoryMax= counts them): the worker recycled.
    The "done" carries ``getrusage(RUSAGE_SELF)`` alone: no recycle."""
    worker = _start(start_worker, notify, tmp_path, RQ_MAX_MEMORY="200M")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    job = job_ended(rconn, queue.enqueue("pf3app.peak_in_a_subprocess", 300).id)
    assert job.get_status() == JobStatus.FINISHED
    job_ended(rconn, queue.enqueue(quick_job, 2).id)
    wait_until(lambda: "Recycling this worker" in worker.output(), 10, what="the recycle after the big job")


def _start_acting(start_worker, notify, tmp_path, action, linger="0.5", **env):
    from rq_worker_service import faults

    if "horse.released" not in faults.POINTS:
        pytest.skip("no horse.released fault point on this branch")
    app_dir = app_package(tmp_path, "pf3app", APP, AFTER_DONE)
    armed = tmp_path / "armed"
    worker = start_worker("1", notify=notify, env=app_package_env(
        app_dir, RQ_PREFORK="yes", PF_ACTION=action, PF_ARMED=str(armed), PF_LINGER=linger, **env))
    notify.wait_for("READY=1")
    return worker, armed


@pytest.mark.full_matrix
@pytest.mark.skipif(os.environ.get("RQWS_FAULTS_FULL") != "1", reason=HELD_UP)
@pytest.mark.parametrize("action", ["stop-job", "kill-horse"])
def test_an_operator_s_command_right_after_done_leaves_the_job_finished(start_worker, notify, rconn, tmp_path,
                                                                         action):
    worker, armed = _start_acting(start_worker, notify, tmp_path, action, RQ_JOB_RETRY_MAX="0")
    queue = Queue(connection=rconn)
    for i in range(3):
        job_ended(rconn, queue.enqueue(quick_job, i).id)
        spare_of(worker.pid)
        armed.touch()
        job = job_ended(rconn, queue.enqueue(quick_job, 10 + i).id)
        wait_until(lambda: not armed.exists(), 5, what="the action")
        time.sleep(1)
        job = Job.fetch(job.id, connection=rconn)
        assert job.get_status() == JobStatus.FINISHED, (i, job.get_status(), job.latest_result())
        assert job_ended(rconn, queue.enqueue(quick_job, 20 + i).id, timeout=10).return_value() == 2 * (20 + i)
    assert "Traceback" not in worker.output()
    assert worker.proc.poll() is None


@pytest.mark.parametrize("action", ["term", "int", "hup"])
def test_a_stop_or_reload_right_after_done(start_worker, notify, rconn, tmp_path, action):
    worker, armed = _start_acting(start_worker, notify, tmp_path, action, linger="2")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare = spare_of(worker.pid)
    armed.touch()
    job = job_ended(rconn, queue.enqueue(quick_job, 2).id)
    assert job.get_status() == JobStatus.FINISHED
    if action == "hup":
        wait_until(lambda: len(notify.lines("READY=1")) >= 2, 15, what="the reload")
        assert job_ended(rconn, queue.enqueue(quick_job, 3).id, timeout=15).return_value() == 6
        _one_child_left(worker.pid)
    else:
        assert worker.wait(15) == 0
        wait_until(lambda: not Path(f"/proc/{spare}").exists(), 5, what="the spare gone")
    assert "Traceback" not in worker.output()
    assert queue.failed_job_registry.count == 0 and queue.count == 0


def test_recycle_right_after_done(start_worker, notify, rconn, tmp_path):
    worker, armed = _start_acting(start_worker, notify, tmp_path, "none", linger="1", RQ_MAX_JOBS="2")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    armed.touch()
    jobs = [queue.enqueue(quick_job, i) for i in range(6)]
    for job in jobs:
        assert job_ended(rconn, job.id, timeout=20).get_status() == JobStatus.FINISHED
    assert "Traceback" not in worker.output()
    assert worker.proc.poll() is None
    _one_child_left(worker.pid)


def _states(pid):
    return {child: Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            for child in children_of(pid, zombies=True)}


def _one_child_left(pid):
    try:
        wait_until(lambda: len(children_of(pid, zombies=True)) <= 1, 10, what="one child left")
    except AssertionError:
        raise AssertionError(f"children of the worker (pid: state) 10 s on: {_states(pid)}") from None


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.full_matrix
@pytest.mark.skipif(os.environ.get("RQWS_FAULTS_FULL") != "1", reason=HELD_UP)
def test_no_leak_over_many_jobs(start_worker, notify, rconn, tmp_path):
    worker = _start(start_worker, notify, tmp_path)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    before = _fds(worker.pid)
    jobs = [queue.enqueue(quick_job, i) for i in range(200)]
    job_ended(rconn, jobs[-1].id, timeout=60)
    assert all(Job.fetch(j.id, connection=rconn).get_status() == JobStatus.FINISHED for j in jobs)
    time.sleep(0.5)
    job_ended(rconn, queue.enqueue(quick_job, 2).id)
    wait_until(lambda: len(children_of(worker.pid, zombies=True)) <= 2, 5, what="at most the spare and one")
    time.sleep(0.5)
    assert _fds(worker.pid) <= before + 1, (before, _fds(worker.pid))
    assert len(children_of(worker.pid, zombies=True)) <= 2


def test_the_done_goes_to_the_pipe_only(start_worker, notify, rconn, tmp_path):
    """``Prefork.done`` writes its 9 bytes to the descriptor number it was given at "go": a job that closed
    its inherited descriptors and opened files since has one of its own files under that number, and the
    "done" lands in the app's file (here a log file; it could be a socket). Nothing of ours may be written
    there. (The pipe ended with the close, so the worker falls back to wait4: the job itself is recorded.)"""
    worker = _start(start_worker, notify, tmp_path)
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    logs = tmp_path / "logs"
    logs.mkdir()
    job = job_ended(rconn, queue.enqueue("pf3app.closes_inherited_fds_then_logs", str(logs)).id)
    assert job.get_status() == JobStatus.FINISHED
    bad = {log.name: log.read_bytes() for log in logs.iterdir() if log.read_bytes() != b"line\n"}
    assert not bad, f"written into the job's own files: {bad}"


def test_the_next_horse_killed_while_the_released_one_is_frozen(start_worker, notify, rconn, tmp_path):
    """The horse that said "done" frozen (SIGSTOP) before its exit; the next job's horse dies under its job:
    that job is recorded as rq does; the frozen one, thawed, is reaped."""
    worker, armed = _start_acting(start_worker, notify, tmp_path, "freeze", RQ_JOB_RETRY_MAX="0")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    spare_of(worker.pid)
    armed.touch()
    assert job_ended(rconn, queue.enqueue(quick_job, 2).id).get_status() == JobStatus.FINISHED
    pidfile = Path(str(armed) + ".pid")
    wait_until(pidfile.exists, 5, what="the frozen horse")
    frozen = int(pidfile.read_text())
    job = job_ended(rconn, queue.enqueue("pf3app.kill_self").id, timeout=15)
    assert job.get_status() == JobStatus.FAILED
    assert "Work-horse terminated unexpectedly" in (job.latest_result().exc_string or "")
    assert job_ended(rconn, queue.enqueue(quick_job, 3).id).return_value() == 6
    os.kill(frozen, signal.SIGCONT)
    time.sleep(1.5)  # (its linger: then a zombie, reaped around the next pop)
    assert job_ended(rconn, queue.enqueue(quick_job, 4).id).return_value() == 8
    wait_until(lambda: not Path(f"/proc/{frozen}").exists(), 10, what="the thawed horse reaped")


@pytest.mark.full_matrix
@pytest.mark.skipif(os.environ.get("RQWS_FAULTS_FULL") != "1", reason=HELD_UP)
def test_monitor_alarms_around_done(start_worker, notify, rconn, tmp_path):
    """RQ_JOB_MONITORING_INTERVAL=1 and jobs of 0.9–1.1 s: rq's SIGALRM lands in ``Prefork.wait`` (its select,
    around its read) again and again. Every job FINISHED once, no fd or child left over. (The review ran 21
    jobs each with RQ_PREFORK=yes and auto; CI runs 8 with yes.)"""
    prefork = "yes"
    from testjobs import sleep_job

    app_dir = app_package(tmp_path, "pf3app", APP, "")
    worker = start_worker("1", notify=notify, env=app_package_env(app_dir, RQ_PREFORK=prefork,
                                                                  RQ_JOB_MONITORING_INTERVAL="1"))
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    job_ended(rconn, queue.enqueue(quick_job, 1).id)
    time.sleep(0.5)
    before = _fds(worker.pid)
    jobs = [queue.enqueue(sleep_job, 0.9 + 0.03 * i) for i in range(8)]
    job_ended(rconn, jobs[-1].id, timeout=60)
    assert [Job.fetch(j.id, connection=rconn).get_status() for j in jobs] == [JobStatus.FINISHED] * len(jobs)
    assert [runs(rconn, j.id) for j in jobs] == [1] * len(jobs)
    job_ended(rconn, queue.enqueue(quick_job, 2).id)
    time.sleep(0.5)
    assert _fds(worker.pid) <= before + 1, (before, _fds(worker.pid))
    assert len(children_of(worker.pid, zombies=True)) <= 2, _states(worker.pid)
    assert "Traceback" not in worker.output()
