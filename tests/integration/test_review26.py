"""Adversarial review (issue 26): ways a job still runs twice under fencing without CLIENT KILL.

Each test fails while the double run it shows is possible."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers import notify_socket, wait_until
from rq import Queue
from rq.job import Job
from test_fencing import FAST, executions, status, stopped

JOBS = '''
import os, time
from rq import get_current_job


def _note(path, what):
    with open(path, "a") as f:
        f.write(f"{what} {os.getpid()} {time.time():.3f}\\n")


def overlap_probe(path, seconds):
    """Counts its runs; the first sleeps ``seconds``; the second notes whether the first's process still lives."""
    job = get_current_job()
    n = job.connection.incr(f"executions:{job.id}")
    if n == 1:
        _note(path, "start1")
        time.sleep(seconds)
        return n
    with open(path) as f:
        first = int(f.readline().split()[1])
    try:
        with open(f"/proc/{first}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    _note(path, f"start{n}-first-is-{state}")
    return n


def first_waits(path):
    """Counts its runs; the first returns only once ``path`` exists, the others at once."""
    job = get_current_job()
    n = job.connection.incr(f"executions:{job.id}")
    while n == 1 and not os.path.exists(path):
        time.sleep(0.05)
    return n
'''


def jobs_env(tmp_path: Path, extra: str = "") -> dict[str, str]:
    site = tmp_path / "r26jobs"
    site.mkdir(exist_ok=True)
    (site / "r26jobs.py").write_text(JOBS)
    path = os.pathsep.join(filter(None, [str(site), extra, os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def notes(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    return [(w, int(p), float(t)) for w, p, t in (line.split() for line in path.read_text().splitlines())]


PAUSE_BEFORE_END = '''
import os, signal
arm = os.environ.get("R26_ARM")
if arm:
    from rq.worker import base

    original = base.BaseWorker.handle_job_success

    def paused_first(self, *args, **kwargs):
        if os.path.exists(arm):  # once: a pause (SIGSTOP, a paused VM, swap) right before rq writes the end
            os.remove(arm)
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self, *args, **kwargs)

    base.BaseWorker.handle_job_success = paused_first

    from rq_worker_service import ending  # a job without dependents ends by our script, rq's step unused

    scripted = ending.write_success

    def scripted_paused_first(worker, *args, **kwargs):
        if os.path.exists(arm):
            os.remove(arm)
            os.kill(os.getpid(), signal.SIGSTOP)
        return scripted(worker, *args, **kwargs)

    ending.write_success = scripted_paused_first
'''


def test_a_simple_worker_paused_after_its_end_check_writes_a_second_result(start_worker, rconn, tmp_path):
    """The simple worker beats before rq writes a job's end only when its last beat is older than half
    a period; a pause right after that check (before rq's ``handle_job_success``) longer than the period
    lets the fencer re-run the job, and the woken worker then writes its end over the re-run's."""
    site = tmp_path / "pausesite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PAUSE_BEFORE_END)
    arm = tmp_path / "arm"
    arm.touch()
    env = {**FAST, "RQ_WORKER_CLASS": "simple", "PYTHONPATH": str(site), "R26_ARM": str(arm)}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    frozen = start_worker("1", notify=one, env=env)
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue("testjobs.sleep_job", 0.2, job_id="end-after-check")
    wait_until(lambda: not arm.exists() and stopped(frozen.pid), 10, what="worker 1 to pause before the end")
    start_worker("2", notify=two, env=FAST)
    wait_until(lambda: status(rconn, job.id) == "finished" and executions(rconn, job.id) == 2, 20,
               what="the fencer to re-run the job")
    before = [r.type.name for r in Job.fetch(job.id, connection=rconn).results()]
    frozen.signal(signal.SIGCONT)
    code = frozen.wait(15)
    after = [r.type.name for r in Job.fetch(job.id, connection=rconn).results()]
    assert after == before, (code, before, after, frozen.output()[-3000:])
    one.close()
    two.close()


FREEZE_IN_BEAT = '''
import os, signal, time
arm = os.environ.get("R26_BEAT_ARM")
if arm:
    from rq_worker_service import fencing

    init = fencing.Membership.__init__

    def with_frozen_reply(self, *args, **kwargs):
        init(self, *args, **kwargs)
        script = self._beat

        def beat(*a, **k):
            reply = script(*a, **k)
            if os.path.exists(arm):  # once: Redis counted the beat; the process freezes before reading its reply
                os.remove(arm)
                os.kill(os.getpid(), signal.SIGSTOP)
                time.sleep(0.1)  # (the stop lands here at the latest: it is asynchronous)
            return reply

        self._beat = beat

    fencing.Membership.__init__ = with_frozen_reply
'''


def test_a_beat_whose_reply_is_read_after_a_freeze_is_not_taken_for_a_fresh_one(acl_user, start_worker, rconn,
                                                                                  tmp_path):
    """A simple worker frozen while its watch thread's beat is in flight (Redis counted it, the reply not
    yet read) past its fencing: woken, ``Membership.beat`` stamps ``_last_beat`` with the time the reply was
    read, so the job that returns right after finds ``may_be_fenced()`` false, does not beat, and rq
    writes its end over the fencer's re-run: a second SUCCESSFUL result."""
    site = tmp_path / "beatsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FREEZE_IN_BEAT)
    arm, release = tmp_path / "arm", tmp_path / "release"
    env = {**FAST, "RQ_WORKER_CLASS": "simple", "R26_BEAT_ARM": str(arm),
           **jobs_env(tmp_path, extra=str(site))}
    url = acl_user("rqworker")  # the default rule: no CLIENT KILL
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    frozen = start_worker("1", notify=one, url=url, env=env)
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue("r26jobs.first_waits", str(release), job_id="beat-in-flight")
    wait_until(lambda: executions(rconn, job.id) == 1, 10, what="the job to start")
    arm.touch()
    wait_until(lambda: not arm.exists() and stopped(frozen.pid), 5, what="worker 1 to freeze in a beat")
    start_worker("2", notify=two, url=url, env={**FAST, **jobs_env(tmp_path)})
    wait_until(lambda: status(rconn, job.id) == "finished" and executions(rconn, job.id) == 2, 20,
               what="the fencer to re-run the job")
    before = [r.type.name for r in Job.fetch(job.id, connection=rconn).results()]
    frozen.signal(signal.SIGCONT)
    time.sleep(0.3)  # woken: the watch thread reads its beat's reply; the job returns a moment later
    release.touch()
    code = frozen.wait(15)
    after = [r.type.name for r in Job.fetch(job.id, connection=rconn).results()]
    assert after == before, (code, before, after)
    one.close()
    two.close()


FREEZE_AFTER_RENEW = '''
import os, signal, time
arm = os.environ.get("R26_RENEW_ARM")
if arm:
    from rq_worker_service.parts import assembly

    renew = assembly.ServiceParts.renew_lease

    def renewed_then_frozen(self, *args, **kwargs):
        renew(self, *args, **kwargs)
        if os.path.exists(arm):  # once: the lease is renewed, the fencing beat not yet sent
            os.remove(arm)
            os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(0.1)

    assembly.ServiceParts.renew_lease = renewed_then_frozen
'''


def test_a_worker_frozen_between_renewing_its_lease_and_beating_has_its_horse_outlive_the_fencing(
        acl_user, start_worker, rconn, tmp_path):
    """The tick renews the horse's lease *before* the fencing beat. A main process frozen between the two
    gave its horse a lease of a period (less half a tick) from now, while its last beat in Redis is a tick
    older: the fencer may fence it up to half a tick plus its jitter before the horse ends itself, and
    the re-run starts while the first horse still runs."""
    site = tmp_path / "renewsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FREEZE_AFTER_RENEW)
    arm, log = tmp_path / "arm", tmp_path / "runs.log"
    url = acl_user("rqworker")
    env = {**FAST, "RQ_QUEUES": "renew", "R26_RENEW_ARM": str(arm), **jobs_env(tmp_path, extra=str(site))}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    frozen = start_worker("1", notify=one, url=url, env=env)
    one.wait_for("READY=1")
    job = Queue("renew", connection=rconn).enqueue("r26jobs.overlap_probe", str(log), 15, job_id="renewed-lease")
    wait_until(lambda: notes(log), 10, what="the first run to start")
    start_worker("2", notify=two, url=url, env={**FAST, "RQ_QUEUES": "renew", **jobs_env(tmp_path)})
    two.wait_for("READY=1")
    time.sleep(1.5)  # worker 2 beats on time for a while: it may fence from now on
    arm.touch()
    wait_until(lambda: not arm.exists() and stopped(frozen.pid), 5, what="worker 1 to freeze after renewing")
    try:
        wait_until(lambda: executions(rconn, job.id) == 2, 15, what="the re-run")
        wait_until(lambda: len(notes(log)) == 2, 5, what="the re-run's note")
        assert notes(log)[1][0] != "start2-first-is-S", notes(log)  # S: the first horse still running
    finally:
        frozen.signal(signal.SIGCONT)
    one.close()
    two.close()
