"""The fork worker hands each work horse a connection it opened beforehand (``handoff``)."""

from __future__ import annotations

from helpers import wait_until
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import client_id_job, quick_job


def finished(rconn, job_id: str) -> Job:
    wait_until(lambda: Job.fetch(job_id, connection=rconn).get_status() == JobStatus.FINISHED, 20,
               what=f"job {job_id} to finish")
    return Job.fetch(job_id, connection=rconn)


def worker_clients(rconn, name: str) -> set[int]:
    return {int(c["id"]) for c in rconn.client_list() if c.get("name") == name}


def test_each_horse_runs_on_a_connection_opened_before_its_job(start_worker, notify, rconn):
    start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    name = finished(rconn, queue.enqueue(quick_job, 1).id).worker_name
    counts = []
    for i in range(3):
        opened_before = worker_clients(rconn, name)  # the worker's own, the next horse's, its scheduler's
        job = finished(rconn, queue.enqueue(client_id_job, job_id=f"handoff-{i}").id)
        used = job.return_value()
        assert used in opened_before, (used, opened_before)
        # the horse's connection closed with it: no connection is left behind per job
        wait_until(lambda used=used: used not in worker_clients(rconn, name), 5, what="the horse's connection to close")
        counts.append(len(worker_clients(rconn, name)))
    assert len(set(counts)) == 1, counts


def test_a_spare_connection_that_died_meanwhile_is_replaced_in_the_horse(start_worker, notify, rconn):
    start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    name = finished(rconn, queue.enqueue(quick_job, 1).id).worker_name
    for client in worker_clients(rconn, name):  # as a Redis restart would: every connection of the worker
        rconn.client_kill_filter(_id=client)
    for i in range(3):
        assert finished(rconn, queue.enqueue(quick_job, i, job_id=f"after-kill-{i}").id).return_value() == 2 * i


def test_the_horses_connection_sends_no_handshake_redis_refuses(start_worker, notify, rconn):
    """redis-py 7+ sends CLIENT MAINT_NOTIFICATIONS ON on each new RESP3 connection, which Redis other than
    Enterprise or Cloud answers with an error: one wasted round trip per job on the horse's connection."""
    start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    finished(rconn, queue.enqueue(quick_job, 1).id)
    errors_before = sum(e["count"] for e in rconn.info("errorstats").values())
    for i in range(5):
        finished(rconn, queue.enqueue(quick_job, i, job_id=f"no-handshake-{i}").id)
    assert sum(e["count"] for e in rconn.info("errorstats").values()) - errors_before < 5
