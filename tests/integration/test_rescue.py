"""Rescues against a real redis-server, with the package's ``run`` as plain processes killed mid-way."""

from __future__ import annotations

import signal

from helpers import wait_until
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from testjobs import sleep_job, slow_failure_callback


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def test_a_restart_killed_in_the_rescues_callback_loses_nothing(start_worker, notify, rconn):
    """Issue 25, item 1: kill -9 mid-job; the restarted instance rescues the job and runs its slow
    failure callback; kill -9 it there; the next start must still run the job, once more, as its
    Retry says (before the fix the entry was claimed, the re-queue not yet written: lost)."""
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 2, job_id="rescued-job", retry=Retry(max=2),
                                          on_failure=Callback(slow_failure_callback, timeout=60))
    wait_until(lambda: executions(rconn, job.id) == 1, 10, what="the job to start")
    worker.signal(signal.SIGKILL)
    worker.wait(5)

    rescuer = start_worker("1")  # Restart=: its start-up recovery runs the callback (20 s)
    wait_until(lambda: rconn.get(f"failure-callbacks:{job.id}"), 10, what="the rescue's failure callback")
    rescuer.signal(signal.SIGKILL)
    rescuer.wait(5)

    start_worker("1")
    wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED, 20,
               what="the rescued job to run again and finish")
    job = Job.fetch(job.id, connection=rconn)
    assert (executions(rconn, job.id), job.retries_left) == (2, 1), "one retry taken, one more run"
    assert [r.type.name for r in reversed(job.results())] == ["FAILED", "SUCCESSFUL"]
    assert Queue(connection=rconn).started_job_registry.get_job_ids(cleanup=False) == []
    assert rconn.get(f"failure-callbacks:{job.id}") == b"1", "the callback runs at most once (after the commit)"


def test_two_rescuers_interleaved_on_a_real_redis_requeue_once(rconn, monkeypatch):
    """The claim's WATCH on a real server: a second rescuer commits while the first one is between
    its reads and its EXEC; the first one's EXEC fails, it reads again and leaves the job alone."""
    from rq import Worker

    from rq_worker_service import recovery
    from rq_worker_service.config import load_settings

    settings = load_settings({"RQ_WORKER_INSTANCE": "1"})
    queue = Queue(connection=rconn)
    job = queue.enqueue(sleep_job, 1, retry=Retry(max=3))
    dead = Worker([queue], name=settings.name, connection=rconn)
    dead.register_birth()
    queue.remove(job)
    dead.prepare_execution(job)
    dead.prepare_job_execution(job)
    fetch, second = recovery.registered_job, []

    def second_rescuer_meanwhile(connection, job_id):
        if not second:
            second.append([])  # (the second rescuer's own fetch is not interleaved)
            second[0] = recovery.rescue_executions(rconn, settings.name, ["default"], settings, "2nd", at_once=True)
        return fetch(connection, job_id)

    monkeypatch.setattr(recovery, "registered_job", second_rescuer_meanwhile)
    first = recovery.rescue_executions(rconn, settings.name, ["default"], settings, "1st", at_once=True)
    assert (first, [r.job_id for r in second[0]]) == ([], [job.id])
    assert queue.job_ids == [job.id]
    assert Job.fetch(job.id, connection=rconn).retries_left == 2


def test_a_worker_records_its_machine_and_boot_and_refuses_a_namesake_on_another_machine(start_worker, notify, rconn):
    """Issue 25, item 4: the worker's hash and its fencing member record carry this machine's and
    boot's ids; a start that finds its name registered by the same host name on another machine
    exits 75 with one line and leaves that worker's job alone (before: its pid, not running here,
    made it look dead, and its live job was run a second time)."""
    import json
    import socket

    from rq import Worker

    from rq_worker_service import host, keys
    from rq_worker_service.config import load_settings

    here = host.identity().fields()
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    name = load_settings({"RQ_WORKER_INSTANCE": "1"}).name
    record = {k.decode(): v.decode() for k, v in rconn.hgetall(f"rq:worker:{name}").items()}
    member = json.loads(rconn.hget(keys.fencing_members(), name))
    assert here and {k: record.get(k) for k in here} == here == {k: member.get(k) for k in here}
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0

    queue = Queue(connection=rconn)  # now the same name, registered from a clone of this host
    job = queue.enqueue(sleep_job, 1, job_id="clones-job")
    clone = Worker([queue], name=name, connection=rconn)
    clone.register_birth()
    queue.remove(job)
    clone.prepare_execution(job)
    clone.prepare_job_execution(job)
    rconn.hset(clone.key, mapping={"pid": 4_000_000, "hostname": socket.gethostname(), "machine_id": "0" * 32})
    refused = start_worker("1")
    assert refused.wait(15) == 75
    assert f"(machine id {'0' * 32}) and this host {socket.gethostname()} is another machine" in refused.output()
    assert Job.fetch(job.id, connection=rconn).get_status() == JobStatus.STARTED
    assert Queue(connection=rconn).started_job_registry.get_job_ids(cleanup=False) == [job.id]
