"""Fencing against a real redis-server: frozen and dead workers lose their jobs to live ones, fast.

WATCHDOG_USEC=3 s gives a tick of 1 s and a fencing period of 3 s (a member is lost 4 s after its
last beat), so each scenario takes seconds; the e2e layer measures the shipped 30 s defaults.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import RedisServer, children_of, notify_socket, wait_until
from rq import Queue
from rq.job import Job, JobStatus
from test_pop import fault
from testjobs import quick_job, sleep_job

from rq_worker_service import exits
from rq_worker_service.fencing import BEATS_KEY, FENCED_KEY, HISTORY_KEY

HOST = socket.gethostname()
FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}


def name(instance: str) -> str:
    return f"{HOST}.rq-worker@{instance}"


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def status(rconn, job_id: str) -> str:
    return Job.fetch(job_id, connection=rconn).get_status().value


def blocked_in_pop(rconn, worker: str) -> bool:
    return any(c.get("name") == worker and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
               for c in rconn.client_list())


def test_job_handed_to_a_frozen_pop_runs_elsewhere_and_the_frozen_worker_exits(start_worker, rconn, tmp_path):
    one = notify_socket(tmp_path, "one")
    frozen = start_worker("1", notify=one, env=FAST)
    one.wait_for("READY=1")
    wait_until(lambda: blocked_in_pop(rconn, name("1")), 5, what="worker 1 to block in its pop")
    frozen.signal(signal.SIGSTOP)
    assert blocked_in_pop(rconn, name("1"))  # the server still holds the frozen process's pop
    job = Queue(connection=rconn).enqueue(quick_job, 21, job_id="handed-to-frozen")
    wait_until(lambda: rconn.lrange(f"rq:service:held:{name('1')}", 0, -1) == [b"handed-to-frozen"], 5,
               what="the job to be handed to the frozen pop (its held list)")
    frozen_at = time.monotonic()

    two = notify_socket(tmp_path, "two")
    start_worker("2", notify=two, env=FAST)
    wait_until(lambda: status(rconn, job.id) == "finished", 20, what="the job to run on worker 2")
    # Put back by worker 2 when it fences worker 1: start-up (≈2 s) + a period on time before it may fence
    # (3 s) + worker 1's deadline, not rq's minute; no worker guesses at a live worker's held list.
    assert time.monotonic() - frozen_at < 12
    assert executions(rconn, job.id) == 1

    wait_until(lambda: rconn.hexists(FENCED_KEY, name("1")), 15, what="worker 2 to fence worker 1")
    # The history entry is written after the rescue it lists, so it can trail the fence by a moment.
    wait_until(lambda: rconn.llen(HISTORY_KEY) > 0, 5, what="worker 2 to record the fencing")
    history = [json.loads(e) for e in rconn.lrange(HISTORY_KEY, 0, -1)]
    assert history[0]["worker"] == name("1") and history[0]["host"] == HOST and history[0]["by"] == name("2")
    assert not rconn.exists(f"rq:worker:{name('1')}")  # gone from rq's worker list

    other = Queue(connection=rconn).enqueue(quick_job, 1, job_id="after-fence")
    wait_until(lambda: status(rconn, other.id) == "finished", 10, what="worker 2 to run the next job")
    frozen.signal(signal.SIGCONT)
    assert frozen.wait(15) == exits.TEMPFAIL
    assert "was fenced" in frozen.output()
    assert executions(rconn, other.id) == 1
    one.close()
    two.close()


def test_frozen_busy_worker_loses_its_job_to_a_live_one_at_once(start_worker, rconn, tmp_path):
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    busy = start_worker("1", notify=one, env={**FAST, "RQ_QUEUES": "solo"})
    one.wait_for("READY=1")
    job = Queue("solo", connection=rconn).enqueue(sleep_job, 5, job_id="frozen-mid-job")
    one.wait_for("STATUS=", contains="Running job frozen-mid-job")
    start_worker("2", notify=two, env={**FAST, "RQ_QUEUES": "solo"})
    two.wait_for("READY=1")
    frozen = [busy.pid, *children_of(busy.pid, zombies=True)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_until(lambda: executions(rconn, job.id) == 2, 15, what="the job to run again on worker 2")
    rerun_after = time.monotonic() - frozen_at
    assert rerun_after < 4 + 1 + 3  # lost 4 s after its last beat, seen at the next tick, +slack
    wait_until(lambda: status(rconn, job.id) == "finished", 15, what="the re-run to finish")
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    assert busy.wait(15) == exits.TEMPFAIL
    assert executions(rconn, job.id) <= 2  # the frozen horse was killed, or finished: at least once
    result = Job.fetch(job.id, connection=rconn).latest_result()
    assert result is not None and result.type.name == "SUCCESSFUL"
    one.close()
    two.close()


def test_killed_worker_that_never_restarts_is_fenced_and_its_job_requeued_at_once(start_worker, rconn, tmp_path):
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    dead = start_worker("1", notify=one, env=FAST)
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 3, job_id="orphaned-by-kill")
    one.wait_for("STATUS=", contains="Running job orphaned-by-kill")
    start_worker("2", notify=two, env=FAST)
    two.wait_for("READY=1")
    for pid in [dead.pid, *children_of(dead.pid, zombies=True)]:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: status(rconn, job.id) == "finished" and executions(rconn, job.id) == 2, 20,
               what="the job to be re-run by worker 2")
    assert time.monotonic() - killed_at < 4 + 1 + 3 + 3  # the default 60 s retry interval did not apply
    entry = json.loads(rconn.lindex(HISTORY_KEY, 0))
    assert entry["jobs"] == [job.id] and entry["by"] == name("2")
    one.close()
    two.close()


def test_a_redis_stall_longer_than_the_period_fences_no_one(tmp_path):
    """Redis frozen (SIGSTOP: its data and the deadlines survive) for longer than the period: every
    deadline has passed when it resumes, yet no live worker may fence another."""
    server = RedisServer().start()
    procs = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_", "WATCHDOG_"))}
        env.update({**FAST, "REDIS_URL": server.url, "PYTHONUNBUFFERED": "1",
                    "RQ_APP_PATH": str(Path(__file__).resolve().parents[1] / "jobs")})
        for instance in ("1", "2"):
            procs.append(subprocess.Popen([sys.executable, "-m", "rq_worker_service", "run", "--instance", instance],
                                          env=env, cwd=tmp_path, stdout=open(tmp_path / f"w{instance}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        client = server.client()
        wait_until(lambda: client.zcard(BEATS_KEY) == 2, 15, what="both workers to join")
        time.sleep(4)  # both may fence by now
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(8)  # every deadline passes while Redis is stalled
        server.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: client.zcard(BEATS_KEY) == 2, 20, what="both workers to beat again")
        time.sleep(6)  # longer than the period: a fencing would have happened by now
        assert client.llen(HISTORY_KEY) == 0 and client.hlen(FENCED_KEY) == 0
        assert all(p.poll() is None for p in procs), [(tmp_path / f"w{i}.log").read_text() for i in "12"]
        job = Queue(connection=client).enqueue(quick_job, 2)
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, what="the job after the outage")
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        server.cleanup()


FREEZE = '''
import os, signal
arm = os.environ.get("FREEZE_ARM")
if arm:
    from rq_worker_service import held
    step = "pop" if os.environ["FREEZE_AT"] == "take" else "_blmove"
    original = getattr(held.Held, step)

    def frozen_first(self, *args, **kwargs):
        if os.path.exists(arm):  # armed by the test: stop here, once, as a SIGSTOP or a paused VM would
            os.remove(arm)
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self, *args, **kwargs)

    setattr(held.Held, step, frozen_first)
'''


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_worker_woken_after_its_fencing_moves_no_job_without_client_kill(acl_user, start_worker, rconn, tmp_path):
    """Workers of the default ACL rule (no CLIENT LIST/KILL: the fencer cannot end their pops) are
    frozen where a woken worker would next move a job: before its pop's take script ("take"), and
    before its blocking pop goes out ("blocking", which then hands it a job after its fencing). A
    live worker fences them; they are woken with a job waiting on each one's own queue. Each stops
    itself (exit 75) having run nothing, its job back in its queue; restarted, it runs it once."""
    site = tmp_path / "freezesite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FREEZE)
    url = acl_user("rqworker")
    cases = {"f1": ("fork", "take"), "f2": ("fork", "blocking"), "s1": ("simple", "take"),
             "s2": ("simple", "blocking"), "p2": ("spawn", "blocking")}
    # (the take script, which reads the marks, is the pop of several queues: one queue's is an LMOVE)
    queues = {instance: f"q-{instance}" + (f",q-{instance}-other" if at == "take" else "")
              for instance, (_, at) in cases.items()}
    env = {instance: {**FAST, "RQ_QUEUES": queues[instance], "RQ_WORKER_CLASS": kind, "PYTHONPATH": str(site),
                      "FREEZE_ARM": str(tmp_path / f"arm-{instance}"), "FREEZE_AT": at}
           for instance, (kind, at) in cases.items()}
    notes = {instance: notify_socket(tmp_path, instance) for instance in [*cases, "fencer"]}
    workers = {instance: start_worker(instance, notify=notes[instance], url=url, env=env[instance])
               for instance in cases}
    start_worker("fencer", notify=notes["fencer"], url=url, env={**FAST, "RQ_QUEUES": "q-fencer"})
    for note in notes.values():
        note.wait_for("READY=1")
    for instance in cases:
        (tmp_path / f"arm-{instance}").touch()
    wait_until(lambda: all(stopped(w.pid) for w in workers.values()), 5, what="every armed worker to freeze at its pop")
    wait_until(lambda: all(rconn.hexists(FENCED_KEY, name(i)) for i in cases), 20,
               what="the fencer to fence every frozen worker")
    jobs = {i: Queue(f"q-{i}", connection=rconn).enqueue(sleep_job, 1.5, job_id=f"woken-{i}") for i in cases}
    for worker in workers.values():
        worker.signal(signal.SIGCONT)
    outcome = {}  # each case's: exit, runs of its job, the job back in its queue, anything left held
    for instance, worker in workers.items():
        worker.wait(15)
        outcome[instance] = (worker.proc.returncode, executions(rconn, jobs[instance].id),
                             Queue(f"q-{instance}", connection=rconn).job_ids == [jobs[instance].id],
                             rconn.llen(f"rq:service:held:{name(instance)}"))
    assert outcome == dict.fromkeys(cases, (exits.TEMPFAIL, 0, True, 0)), outcome
    assert all("was fenced" in worker.output() for worker in workers.values())
    put_back = {i for i, w in workers.items() if f"which did not start it ({name(i)} was fenced)" in w.output()}
    assert put_back == {i for i, (_, at) in cases.items() if at == "blocking"}  # the pop's job, held, put back
    assert {e["object"] for e in rconn.acl_log()} <= {"config|get", "client|list"}  # (refused, and skipped)

    for instance in cases:  # systemd restarts them: each runs its job, once
        start_worker(instance, url=url, env=env[instance])
    wait_until(lambda: all(status(rconn, j.id) == "finished" for j in jobs.values()), 20,
               what="the restarted workers to run the jobs")
    assert {i: executions(rconn, j.id) for i, j in jobs.items()} == dict.fromkeys(cases, 1)
    for note in notes.values():
        note.close()


def test_a_simple_worker_woken_past_its_fencing_as_its_job_returns_does_not_record_its_end(
        acl_user, start_worker, rconn, tmp_path):
    """A simple worker runs its job in its main process: stopped (SIGSTOP) just as the job's function
    returned, before rq writes its end, it is fenced and the job runs again on the fencer. Woken, it
    exits 75 without writing that end: the job has the re-run's result only."""
    url = acl_user("rqworker")
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    frozen = start_worker("1", notify=one, url=url,
                          env={**FAST, "RQ_WORKER_CLASS": "simple", **fault(tmp_path, "job.performed:SIGSTOP")})
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 0.2, job_id="ended-while-frozen")
    wait_until(lambda: (tmp_path / "fault-1.done").exists() and stopped(frozen.pid), 10,
               what="worker 1 to stop as the job returns")
    start_worker("2", notify=two, url=url, env=FAST)  # (only now: the job is worker 1's)
    wait_until(lambda: status(rconn, job.id) == "finished" and executions(rconn, job.id) == 2, 20,
               what="the fencer to re-run the job")
    frozen.signal(signal.SIGCONT)
    assert frozen.wait(15) == exits.TEMPFAIL, frozen.output()
    results = Job.fetch(job.id, connection=rconn).results()
    assert [r.type.name for r in results] == ["SUCCESSFUL", "FAILED"], results  # the re-run's; the rescue's
    one.close()
    two.close()
