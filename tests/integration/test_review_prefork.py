"""Review of RQ_PREFORK (the pre-forked spare horse): faults around the spare that must cost no job.

Each test runs with RQ_PREFORK=yes (the finding) and RQ_PREFORK=no (the oracle: the same scenario with a
horse forked for each job). A test fails on yes only where the spare changes the outcome.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from helpers import app_package, app_package_env, children_of, job_ended, runs, spare_of
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import quick_job, sleep_job

SITECUSTOMIZE = textwrap.dedent('''
    import os

    if os.environ.get("PFR_FAIL_SPARE_FORK"):
        # The spare's fork() meets EAGAIN once the flag file exists (the unit's TasksMax= reached, a pids
        # cgroup limit, RLIMIT_NPROC): only the fork that makes the spare, never a horse's own fork.
        import errno
        import sys

        _fork = os.fork

        def _fork_or_eagain():
            frame = sys._getframe(1)
            if frame.f_code.co_filename.endswith("prefork.py") and os.path.exists(os.environ["PFR_FAIL_SPARE_FORK"]):
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return _fork()

        os.fork = _fork_or_eagain
''')

APP = textwrap.dedent('''
    """Jobs of the review."""
''')


def our_name(instance: str) -> str:
    return f"{socket.gethostname()}.rq-worker@{instance}"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return app_package(tmp_path, "pfrapp", APP, SITECUSTOMIZE)


@pytest.fixture(params=["yes", "no"], ids=["prefork", "oracle-no-prefork"])
def prefork(request) -> str:
    return request.param


def env_for(app_dir: Path, prefork: str, **env: str) -> dict[str, str]:
    return app_package_env(app_dir, **{"RQ_PREFORK": prefork, "RQ_JOB_RETRY_DELAY": "0", **env})


# -- 1: the spare's fork fails ----------------------------------------------------------------------------------------

def test_a_failed_fork_of_the_spare_costs_the_running_job_nothing(app_dir, prefork, start_worker, notify, rconn,
                                                                   tmp_path):
    """The spare is an optimisation: its fork failing (EAGAIN at TasksMax=, ENOMEM) must leave the job whose horse
    was just forked (or handed) running, once, and the worker taking jobs. On the current code the OSError from
    ``Prefork.prepare`` escapes ``fork_work_horse`` after the horse started: rq's loop logs "found an unhandled
    exception, quitting", the worker leaves, the kernel kills the horse with it (PDEATHSIG) and the job is cut."""
    flag = tmp_path / "no-more-tasks"
    worker = start_worker("1", notify=notify, env=env_for(app_dir, prefork, PFR_FAIL_SPARE_FORK=str(flag)))
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    assert job_ended(rconn, queue.enqueue(quick_job, 1).id).get_status() == JobStatus.FINISHED
    flag.touch()
    job = queue.enqueue(sleep_job, 2)
    try:
        done = job_ended(rconn, job.id, timeout=20)
    except AssertionError:
        raise AssertionError(f"job {job.id} {Job.fetch(job.id, connection=rconn).get_status()} with the worker "
                             f"{'running' if worker.proc.poll() is None else f'gone (exit {worker.proc.poll()})'}:"
                             f"\n{worker.output()[-3000:]}") from None
    assert done.get_status() == JobStatus.FINISHED, worker.output()[-3000:]
    assert runs(rconn, job.id) == 1
    assert worker.proc.poll() is None, "the worker left: " + worker.output()[-3000:]
    assert job_ended(rconn, queue.enqueue(quick_job, 2).id).get_status() == JobStatus.FINISHED


# -- 2: a frozen spare ---------------------------------------------------------------------------------------------

def test_a_frozen_spare_does_not_hold_the_next_job(app_dir, start_worker, notify, rconn, tmp_path):
    """A spare stopped while it waits (SIGSTOP, a debugger, a cgroup freeze of that process) took a small job's
    message into its pipe's buffer all the same: the worker took the frozen spare for the job's horse, and the
    job sat registered, never STARTED, until rq's monitor killed the "horse" at its timeout + 60 s, then failed
    it without a retry (a horse killed from this side). A forked horse cannot be frozen before it exists. Now
    the spare must answer "ready" within HANDOVER_WITHIN (1 s), else it is killed and the job's horse forked."""
    worker = start_worker("1", notify=notify, env=env_for(app_dir, "yes"))
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    assert job_ended(rconn, queue.enqueue(quick_job, 1).id).get_status() == JobStatus.FINISHED
    spare = spare_of(worker.pid)
    os.kill(spare, signal.SIGSTOP)
    try:
        job = queue.enqueue(quick_job, 2)
        assert job_ended(rconn, job.id, timeout=10).get_status() == JobStatus.FINISHED
        assert runs(rconn, job.id) == 1
        assert spare not in children_of(worker.pid, zombies=True), "the frozen spare was not reaped"
    finally:
        try:
            os.kill(spare, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert job_ended(rconn, queue.enqueue(quick_job, 3).id).get_status() == JobStatus.FINISHED
