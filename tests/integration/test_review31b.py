"""Second review of issue 31: a fenced horse thawed as its STARTED mark goes out.

A horse's STARTED mark reads its worker's fencing mark in the same script that writes it. One cut of
issue 31 took that read out of a horse's mark ("its lease ends it first"); the review showed why it stays.
The lease is a thread of the horse; when the whole worker (main process and horse) is frozen and a fencer
claims it, nothing orders the horse's main thread after the lease thread on resume: a horse resumed just
before its STARTED script goes out sends it, and Redis runs it unless the script reads the mark (the
execution hash is still there until the fencer's rescue).
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from helpers import app_package, app_package_env, wait_until
from rq import Queue
from test_pop import fault, name
from testjobs import quick_job

SITECUSTOMIZE = textwrap.dedent('''
    import os

    if os.environ.get("R31B_HORSE_FREEZE"):
        import hashlib
        import signal

        from redis.connection import Connection

        from rq_worker_service import worker as worker_module

        _SHA = hashlib.sha1(worker_module._IF_EXISTS.encode()).hexdigest().encode()
        _MAIN = int(os.environ.setdefault("R31B_MAIN", str(os.getpid())))  # (a spawn horse inherits it)
        original = Connection.send_packed_command

        def patched(self, command, check_health=True):
            arm = os.environ["R31B_HORSE_FREEZE"]
            items = [command] if isinstance(command, (bytes, str)) else list(command)
            if os.getpid() != _MAIN and os.path.exists(arm) and any(_SHA in bytes(i) for i in items):
                os.remove(arm)
                with open(arm + ".pids", "w") as f:
                    f.write(f"{_MAIN} {os.getpid()}")
                os.kill(_MAIN, signal.SIGSTOP)  # the whole worker frozen (a VM pause, a cgroup freeze) ...
                os.kill(os.getpid(), signal.SIGSTOP)  # ... as the horse's STARTED mark goes out
            return original(self, command, check_health)

        Connection.send_packed_command = patched
''')

FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("cls", ["fork", "spawn"])
@pytest.mark.parametrize("retry_max", ["default", "0"], ids=["default-retry", "no-retry"])
def test_a_fenced_horse_resumed_before_its_started_mark_does_not_mark_the_job_started(cls, retry_max, start_worker,
                                                                                      rconn, tmp_path):
    """Worker 1 (fork or spawn) freezes whole (worker and horse) as its horse's STARTED mark goes out. Worker 2
    fences it and is stopped right after its claim (``fence.claimed``), before its rescue. Worker 1's horse
    resumes alone; its lease thread ends it, but the main thread's EVALSHA is already on its way.

    The script reads the fencing mark and writes nothing ("put back ... between registering it and starting
    it: not running it here"); the rescue finds the job QUEUED (registered, never started), puts it back,
    and it runs once: finished, one result. Without that read the script ran (the execution hash is still
    there until the rescue) and wrote status STARTED for a job that never ran; the rescue took it for an
    interrupted run: an AbandonedJobError result and a retry spent (default policy), or, with no retry left
    (RQ_JOB_RETRY_MAX=0), the job FAILED without ever having run."""
    app_dir = app_package(tmp_path, "r31bapp", "", SITECUSTOMIZE)
    arm = tmp_path / "horse-freeze"
    queue = Queue(f"fenced-horse-{cls}-{retry_max}", connection=rconn)
    retry = {} if retry_max == "default" else {"RQ_JOB_RETRY_MAX": retry_max}
    first = start_worker("1", env={**app_package_env(app_dir, R31B_HORSE_FREEZE=str(arm)), **FAST, **retry,
                                   "RQ_QUEUES": queue.name, "RQ_WORKER_CLASS": cls})
    wait_until(lambda: rconn.exists(f"rq:worker:{name('1')}"), 20, what="worker 1 up")
    warm = queue.enqueue(quick_job, 0)  # the STARTED script in Redis's script cache: one EVALSHA, no NOSCRIPT
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the warm-up job")
    arm.touch()
    job = queue.enqueue(quick_job, 1, job_id=f"fenced-horse-job-{cls}-{retry_max}")
    pids = Path(str(arm) + ".pids")
    wait_until(pids.exists, 20, what="worker 1's horse about to send its STARTED mark")
    main_pid, horse_pid = map(int, pids.read_text().split())
    assert main_pid == first.pid
    wait_until(lambda: _stopped(main_pid) and _stopped(horse_pid), 10, what="worker 1 and its horse frozen")
    assert rconn.hget(job.key, "status") == b"queued"
    second = start_worker("2", env={**FAST, **retry, "RQ_QUEUES": queue.name,
                                    **fault(tmp_path, "fence.claimed:SIGSTOP", "2")})
    wait_until(lambda: (tmp_path / "fault-2.done").exists(), 30, what="worker 2 to fence worker 1 (claimed)")
    wait_until(lambda: _stopped(second.pid), 10, what="worker 2 stopped after its claim, before its rescue")
    assert rconn.hexists("rq:service:fenced", name("1")), rconn.hkeys("rq:service:fenced")
    os.kill(horse_pid, signal.SIGCONT)  # the horse alone (its worker still frozen): its lease thread ends it
    wait_until(lambda: not Path(f"/proc/{horse_pid}").exists() or not _stopped(horse_pid), 5)
    time.sleep(1.5)
    marked = rconn.hget(job.key, "status")
    second.signal(signal.SIGCONT)  # the fencer's rescue, then its run of the job
    first.signal(signal.SIGCONT)  # worker 1 finds itself fenced and exits
    wait_until(lambda: rconn.hget(job.key, "status") in (b"finished", b"failed"), 30, what="the job's end")
    time.sleep(1)
    final, runs = rconn.hget(job.key, "status"), int(rconn.get(f"executions:{job.id}") or 0)
    results = rconn.xlen(f"rq:results:{job.id}")
    assert (marked, final, runs, results) == (b"queued", b"finished", 1, 1), (
        f"the fenced worker's horse wrote its STARTED mark after its fencing (status then {marked!r}); in the "
        f"end: {final!r}, {runs} run(s), {results} result(s) (expected finished, 1 run, 1 result). The horse's "
        "STARTED script must read the fencing mark: its lease thread does not stop an EVALSHA that the main "
        "thread sends as the frozen horse resumes")
