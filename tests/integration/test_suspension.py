"""``rq suspend`` / ``rq resume``, RQ_DEQUEUE_STRATEGY and ``rq info``, with stock rq 3 as the oracle in the
same test: the same commands against stock ``rq worker`` and against ours, and their outcomes compared.

Where ours differs on purpose (a worker blocked in its pop when ``rq suspend`` runs does not take a job
enqueued during the suspension; stock rq's does), the test shows the stock behaviour next to ours.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from helpers import RQ_CLI, wait_until
from rq import Queue, Worker
from rq.job import JobStatus
from testjobs import logged_job, sleep_job

from rq_worker_service.keys import held as held_key

WATCHDOG = 3.0
"""The WatchdogSec given to our worker (WATCHDOG_USEC): a tick a second; a suspension outlasts it."""



def rq(redis_server, *args: str) -> str:
    """rq's own CLI (``rq suspend``, ``rq resume``, ``rq info``) against the test's Redis."""
    return subprocess.run([RQ_CLI, *args, "--url", redis_server.url], check=True, capture_output=True,
                          text=True, timeout=30).stdout


def info_states(redis_server) -> dict[str, str]:
    """Each worker's state as ``rq info --raw`` shows it (rq-dashboard reads the same key), by name."""
    lines = [line for line in rq(redis_server, "info", "--raw", "--only-workers").splitlines()
             if line.startswith("worker ")]
    return {line.split()[1]: line.split(") ", 1)[1].split()[0] for line in lines}


def info_state(redis_server, name: str) -> str:
    return info_states(redis_server).get(name, "absent")


def our_name(instance: str) -> str:
    import socket
    return f"{socket.gethostname()}.rq-worker@{instance}"


def test_rq_info_shows_our_worker_in_each_state_as_stock_rqs(redis_server, rconn, start_worker, stock_rq, tmp_path):
    """idle, busy, suspended and back: ``rq info`` shows the same state for ours as for stock ``rq worker``."""
    stock_rq("stock-i", "info-stock")
    start_worker("i", env={"RQ_QUEUES": "info-ours", "RQ_WITH_SCHEDULER": "no", "WATCHDOG_USEC": "3000000"})
    names = {"stock": "stock-i", "ours": our_name("i")}
    queues = {"stock": Queue("info-stock", connection=rconn), "ours": Queue("info-ours", connection=rconn)}

    def states() -> dict[str, str]:
        shown = info_states(redis_server)
        return {kind: shown.get(name, "absent") for kind, name in names.items()}

    wait_until(lambda: states() == {"stock": "idle", "ours": "idle"}, 20, what="both workers idle in rq info")
    jobs = {kind: q.enqueue(sleep_job, 1.5) for kind, q in queues.items()}
    wait_until(lambda: states() == {"stock": "busy", "ours": "busy"}, 10, what="both workers busy in rq info")
    current = {kind: Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=rconn)
               .get_current_job_id() for kind, name in names.items()}
    assert current == {kind: job.id for kind, job in jobs.items()}, "the job rq-dashboard shows"
    rq(redis_server, "suspend")
    wait_until(lambda: states() == {"stock": "suspended", "ours": "suspended"}, 15,
               what=f"both workers suspended in rq info (after their jobs), seen {states()}")
    assert all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs.values())
    rq(redis_server, "resume")
    wait_until(lambda: states() == {"stock": "idle", "ours": "idle"}, 10, what="both workers idle again")


def test_a_suspended_worker_keeps_its_watchdog_and_resumes_without_a_restart(redis_server, rconn, start_worker,
                                                                              notify, tmp_path):
    """Pings through a suspension longer than WatchdogSec, STATUS=Suspended, no job taken; resumed by
    ``rq resume`` and by the end of ``rq suspend --duration``; a warm stop while suspended exits at once.
    (Stock rq's suspension loop sleeps without any ping: systemd's watchdog restarts it, e2e.)"""
    worker = start_worker("s", notify=notify, env={"RQ_QUEUES": "susp", "RQ_WITH_SCHEDULER": "no",
                                                   "WATCHDOG_USEC": str(int(WATCHDOG * 1e6))})
    notify.wait_for("READY=1")
    queue = Queue("susp", connection=rconn)
    rq(redis_server, "suspend")
    notify.wait_for("STATUS=", contains="Suspended (rq suspend)", timeout=2 * WATCHDOG)
    suspended_at = time.monotonic()
    job = queue.enqueue(logged_job, str(tmp_path / "ran"), "during")
    time.sleep(WATCHDOG + 1)  # longer than WatchdogSec
    pings = [t for t, line in notify.drain() if line == "WATCHDOG=1" and t >= suspended_at]
    assert pings, "no WATCHDOG=1 while suspended"
    gaps = [b - a for a, b in zip([suspended_at, *pings], pings, strict=False)] + [time.monotonic() - pings[-1]]
    assert len(pings) >= 3 and max(gaps) < WATCHDOG / 2, f"pings while suspended at {pings}, gaps {gaps}"
    assert job.get_status(refresh=True) == JobStatus.QUEUED and queue.job_ids == [job.id]
    assert info_state(redis_server, our_name("s")) == "suspended"
    rq(redis_server, "resume")
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, what="the job after rq resume")
    notify.wait_for("STATUS=", contains="Idle", after=len(notify.lines("STATUS=")) - 1)

    rq(redis_server, "suspend", "--duration", "2")  # (a second outlived a loaded CI's pop and first look)
    seen = len(notify.lines("STATUS="))
    notify.wait_for("STATUS=", contains="Suspended (rq suspend)", after=seen, timeout=2 * WATCHDOG)
    later = queue.enqueue(logged_job, str(tmp_path / "ran"), "after-duration")
    wait_until(lambda: later.get_status(refresh=True) == JobStatus.FINISHED, 10,
               what="the job once the suspension's --duration ended")
    assert (tmp_path / "ran").read_text().split()[::2] == ["during", "after-duration"]

    rq(redis_server, "suspend")
    notify.wait_for("STATUS=", contains="Suspended (rq suspend)", after=len(notify.lines("STATUS=")),
                    timeout=2 * WATCHDOG)
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - asked < 2, "a warm stop while suspended exits at once"
    assert worker.proc.pid == worker.pid and "Traceback" not in worker.output()


def test_a_job_enqueued_during_a_suspension_waits_for_resume_unlike_under_stock_rq(redis_server, rconn, start_worker,
                                                                                   stock_rq, tmp_path):
    """Both workers blocked in their pop when ``rq suspend`` runs. Stock rq's pop (BLPOP for 405 s) takes
    the next job and runs it while suspended (its look comes between pops); ours puts it back at the head
    of its queue in the step that takes it from its held list, and runs it after ``rq resume``."""
    ran = tmp_path / "ran"
    stock_rq("stock-p", "pop-stock")
    # WatchdogSec 30 s: a tick, and a blocking pop, of 10 s, so the job arrives during the pop
    worker = start_worker("p", env={"RQ_QUEUES": "pop-ours", "RQ_WITH_SCHEDULER": "no", "WATCHDOG_USEC": "30000000"})
    wait_until(lambda: [info_states(redis_server).get(n) for n in ("stock-p", our_name("p"))] == ["idle", "idle"], 20,
               what="both workers idle (blocked in their pop)")
    time.sleep(0.5)
    rq(redis_server, "suspend")
    stock_job = Queue("pop-stock", connection=rconn).enqueue(logged_job, str(ran), "stock")
    ours = Queue("pop-ours", connection=rconn)
    our_job = ours.enqueue(logged_job, str(ran), "ours")
    wait_until(lambda: stock_job.get_status(refresh=True) == JobStatus.FINISHED, 10,
               what="stock rq to run the job enqueued during the suspension (the documented difference)")
    wait_until(lambda: "put back at the head of queue pop-ours" in worker.output(), 12,
               what="our blocked pop to put the job back")
    assert our_job.get_status(refresh=True) == JobStatus.QUEUED and ours.job_ids == [our_job.id]
    assert rconn.llen(held_key(our_name("p"))) == 0
    wait_until(lambda: info_state(redis_server, our_name("p")) == "suspended", 10, what="ours suspended")
    assert our_job.get_status(refresh=True) == JobStatus.QUEUED
    rq(redis_server, "resume")
    wait_until(lambda: our_job.get_status(refresh=True) == JobStatus.FINISHED, 10, what="our job after rq resume")
    assert [line.split()[0] for line in ran.read_text().splitlines()] == ["stock", "ours"], "each job once"


JOBS_PER_QUEUE = 4
STRATEGIES = ("default", "round_robin", "random")


def start_strategy(kind: str, strategy: str, rconn, start_worker, stock_rq, tmp_path) -> Path:
    """3 queues of JOBS_PER_QUEUE jobs each, and one worker with ``strategy`` on them; the log of the order."""
    names = [f"{kind}-{strategy}-{q}" for q in ("a", "b", "c")]
    log = tmp_path / f"order-{kind}-{strategy}"
    for name in names:
        queue = Queue(name, connection=rconn)
        for i in range(JOBS_PER_QUEUE):
            queue.enqueue(logged_job, str(log), f"{name[-1]}{i}")
    if kind == "stock":
        stock_rq(f"stock-{strategy}", "--burst", "--dequeue-strategy", strategy, *names)
    else:
        start_worker(f"ds-{strategy.replace('_', '-')}", env={"RQ_QUEUES": ",".join(names), "RQ_WITH_SCHEDULER": "no",
                                                             "RQ_DEQUEUE_STRATEGY": strategy})
    return log


def test_dequeue_strategies_order_the_jobs_as_stock_rqs(redis_server, rconn, start_worker, stock_rq, tmp_path):
    """3 queues of 4 jobs each, enqueued before the worker starts: default drains a, then b, then c;
    round_robin takes a, b, c, a, …; random mixes them: the same under ours as under stock."""
    logs = {(kind, strategy): start_strategy(kind, strategy, rconn, start_worker, stock_rq, tmp_path)
            for strategy in STRATEGIES for kind in ("stock", "ours")}
    total = 3 * JOBS_PER_QUEUE
    wait_until(lambda: all(log.exists() and len(log.read_text().splitlines()) == total for log in logs.values()),
               30, what=f"{total} jobs under each worker")
    order = {key: [line.split()[0] for line in log.read_text().splitlines()] for key, log in logs.items()}
    drained = [f"{q}{i}" for q in "abc" for i in range(JOBS_PER_QUEUE)]
    assert order["stock", "default"] == drained, "the oracle itself"
    assert order["ours", "default"] == order["stock", "default"]
    assert order["stock", "round_robin"] == [f"{q}{i}" for i in range(JOBS_PER_QUEUE) for q in "abc"]
    assert order["ours", "round_robin"] == order["stock", "round_robin"]
    for kind in ("stock", "ours"):  # (each queue's own jobs in order; the queues interleaved: 1 in 1296 not)
        shuffled = order[kind, "random"]
        assert sorted(shuffled) == drained and shuffled != drained, f"{kind} random: {shuffled}"
        assert all([j for j in shuffled if j[0] == q] == [f"{q}{i}" for i in range(JOBS_PER_QUEUE)] for q in "abc")
