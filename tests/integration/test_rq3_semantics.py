"""rq 3's data-model features under our worker, with stock rq 3 as the oracle in the same test.

Rate limits (``enqueue(..., rate_limit=RateLimit(...))``) are enforced by workers, and dependents
pass through READY_TO_ENQUEUE / ReadyJobRegistry: a worker on the wrong rq, or an override that
skipped rq 3's bookkeeping, shows here as a different outcome from ``rq worker`` on the same jobs.
"""

from __future__ import annotations

import contextlib
import signal

import psutil
import pytest
from helpers import wait_until
from rq import Queue
from rq.job import Dependency, Job, JobStatus
from rq.rate_limit import RateLimit, RateLimitRegistry
from testjobs import failing_job, quick_job, timed_job


@pytest.fixture
def stock_worker(stock_rq):
    """``stock_worker(queue, name)``: stock ``rq worker`` on one queue."""
    return lambda queue, name: stock_rq(name, queue)


def start_workers(kind: str, queue: str, count: int, start_worker, stock_worker) -> list:
    if kind == "stock":
        return [stock_worker(queue, f"stock-{i}") for i in range(count)]
    return [start_worker(str(i), env={"RQ_QUEUES": queue, "RQ_WITH_SCHEDULER": "no"}) for i in range(count)]


def max_overlap(rconn, queue: str) -> int:
    """The most executions of the queue that ran at the same moment."""
    events = []
    for entry in rconn.lrange(f"ran:{queue}", 0, -1):
        start, end, _ = entry.decode().split()
        events += [(float(start), 1), (float(end), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def run_rate_limited(kind: str, rconn, start_worker, stock_worker) -> dict:
    queue_name = f"limited-{kind}"
    queue = Queue(queue_name, connection=rconn)
    limit = RateLimit(f"pdf-{kind}", concurrency=2)
    jobs = [queue.enqueue(timed_job, 0.4, rate_limit=limit) for _ in range(8)]
    statuses_at_enqueue = [job.get_status() for job in jobs]
    start_workers(kind, queue_name, 4, start_worker, stock_worker)
    wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 60,
               what=f"8 rate-limited jobs to finish under {kind} workers")
    registry = RateLimitRegistry(limit.key, rconn)
    # rq releases a slot right after the transaction that records the job's end: a held slot is read
    # after waiting for its release, so a slot never released still shows as held here
    with contextlib.suppress(AssertionError):  # (then the comparison below names what differs)
        wait_until(lambda: registry.get_allowed_job_count() == 0, 5, what=f"{kind} workers to release every slot")
    return {"at enqueue": statuses_at_enqueue, "most at once": max_overlap(rconn, queue_name),
            "runs": rconn.llen(f"ran:{queue_name}"), "slots held after": registry.get_allowed_job_count(),
            "waiting after": registry.get_rate_limited_job_count()}


def test_rate_limits_hold_under_our_workers_as_under_stock_rq(rconn, start_worker, stock_worker):
    """4 workers, 8 jobs, concurrency 2: never more than 2 at once, every job once, all slots freed."""
    stock = run_rate_limited("stock", rconn, start_worker, stock_worker)
    ours = run_rate_limited("ours", rconn, start_worker, stock_worker)
    assert stock["most at once"] == 2 and stock["runs"] == 8, f"the oracle itself: {stock}"
    assert ours == stock


def run_dependents(kind: str, rconn, start_worker, stock_worker) -> dict:
    queue = Queue(f"deps-{kind}", connection=rconn)
    a = queue.enqueue(quick_job, 1)
    b = queue.enqueue(quick_job, 2, depends_on=a)
    c = queue.enqueue(quick_job, 3, depends_on=[a, b])
    f = queue.enqueue(failing_job, 9)
    g = queue.enqueue(quick_job, 4, depends_on=f)
    h = queue.enqueue(quick_job, 5, depends_on=Dependency(jobs=[f], allow_failure=True))
    roles = {"a": a, "b": b, "c": c, "f": f, "g": g, "h": h}
    deferred_at_enqueue = sorted(r for r, j in roles.items() if j.get_status() == JobStatus.DEFERRED)
    start_workers(kind, queue.name, 1, start_worker, stock_worker)
    settled = {"a": JobStatus.FINISHED, "b": JobStatus.FINISHED, "c": JobStatus.FINISHED, "f": JobStatus.FAILED,
               "h": JobStatus.FINISHED}
    wait_until(lambda: all(roles[r].get_status(refresh=True) == s for r, s in settled.items()), 30,
               what=f"the dependency graph to settle under {kind} workers")
    for job in roles.values():
        job.refresh()
    order = sorted((r for r in settled if r != "f"), key=lambda r: roles[r].ended_at)
    return {"deferred at enqueue": deferred_at_enqueue,
            "status": {r: j.get_status(refresh=True) for r, j in roles.items()},
            "runs": {r: int(rconn.get(f"executions:{j.id}") or 0) for r, j in roles.items()},
            "b before c": order.index("b") < order.index("c"), "a before b": order.index("a") < order.index("b"),
            "ready registry left": queue.ready_job_registry.count,
            "deferred left": sorted(queue.deferred_job_registry.get_job_ids())}


def test_dependents_settle_under_our_worker_as_under_stock_rq(rconn, start_worker, stock_worker):
    stock = run_dependents("stock", rconn, start_worker, stock_worker)
    ours = run_dependents("ours", rconn, start_worker, stock_worker)
    assert stock["status"]["g"] == JobStatus.DEFERRED and stock["runs"]["h"] == 1, f"the oracle itself: {stock}"
    ours["deferred left"] = [j.replace("ours", "stock") for j in ours["deferred left"]]
    stock["deferred left"] = [j.replace("ours", "stock") for j in stock["deferred left"]]
    assert len(ours["deferred left"]) == len(stock["deferred left"]) == 1
    ours.pop("deferred left"), stock.pop("deferred left")
    assert ours == stock


def test_a_crashed_rate_limited_job_frees_its_slot_at_recovery(rconn, start_worker):
    """kill -9 of the worker under a rate-limited job: the restarted instance recovers the job at once
    and its slot goes to the job waiting for it (not after rq's maintenance, minutes later)."""
    queue = Queue("limited-crash", connection=rconn)
    limit = RateLimit("crash", concurrency=1)
    first = queue.enqueue(timed_job, 30, rate_limit=limit)
    waiting = queue.enqueue(quick_job, 7, rate_limit=limit)
    assert waiting.get_status() == JobStatus.RATE_LIMITED
    env = {"RQ_QUEUES": queue.name, "RQ_WITH_SCHEDULER": "no", "RQ_JOB_RETRY_MAX": "0"}
    worker = start_worker("1", env=env)
    wait_until(lambda: rconn.get(f"executions:{first.id}") == b"1", 20, what="the first job to start")
    psutil.Process(worker.pid).send_signal(signal.SIGKILL)
    worker.wait(10)
    start_worker("1", env=env)  # as systemd's Restart= would
    wait_until(lambda: waiting.get_status(refresh=True) == JobStatus.FINISHED, 20,
               what="the waiting job to get the crashed job's slot")
    assert first.get_status(refresh=True) == JobStatus.FAILED
    # rq releases a slot right after the transaction that records the job's end: wait for it
    wait_until(lambda: RateLimitRegistry(limit.key, rconn).get_allowed_job_count() == 0, 5,
               what="the finished job's slot to be released")
    assert Job.fetch(first.id, connection=rconn).id == first.id
