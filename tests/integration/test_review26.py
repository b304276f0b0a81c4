"""Adversarial review (issue 26): ways a job still runs twice under fencing without CLIENT KILL.

Each test fails while the double run it shows is possible."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers import wait_until
from rq import Queue
from rq.job import Job
from test_fencing import FAST, executions, ready, status, stopped

JOBS = '''
import os, time
from rq import get_current_job


def _note(path, what):
    with open(path, "a") as f:
        f.write(f"{what} {os.getpid()} {time.time():.3f}\\n")


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
    one, two = ready(tmp_path, "one"), ready(tmp_path, "two")
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
