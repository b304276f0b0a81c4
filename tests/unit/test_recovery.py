from __future__ import annotations

import socket

import fakeredis
import pytest
from rq import Callback, Queue, Retry, Worker
from rq.job import Job, JobStatus
from testjobs import note_failure, note_status_on_failure, quick_job

from rq_worker_service import aftermath, host, recovery
from rq_worker_service.config import load_settings
from rq_worker_service.host import HostIdentity
from rq_worker_service.recovery import WorkerNameInUse, apply_default_retry, recover_predecessor, rescue_executions

HOST = socket.gethostname()
DEAD_PID = 4_000_000  # above pid_max: never a live process


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def settings(**env):
    return load_settings({"RQ_WORKER_INSTANCE": "1", "RQ_JOB_RETRY_DELAY": "0", **env})


def predecessor_running(conn, job_kwargs, pid=DEAD_PID, host=HOST, name=None, **fields):
    """Leave the record a worker killed mid-job leaves: registered, no death, job STARTED."""
    s = settings()
    queue = Queue("default", connection=conn)
    job = queue.enqueue(quick_job, 1, **job_kwargs)
    worker = Worker([queue], name=name or s.name, connection=conn)
    worker.register_birth()
    queue.remove(job)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    conn.hset(worker.key, mapping={"pid": pid, "hostname": host, **fields})
    assert job.get_status() == JobStatus.STARTED
    return job, worker


def test_dead_predecessor_job_is_retried_per_its_retry(conn):
    job, worker = predecessor_running(conn, {"retry": Retry(max=2)})
    recovered = recover_predecessor(conn, settings(), HOST)
    assert [(r.job_id, r.retried) for r in recovered] == [(job.id, True)]
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.QUEUED
    assert job.retries_left == 1
    assert "died while running" in job.latest_result().exc_string
    assert Queue("default", connection=conn).started_job_registry.get_job_ids(cleanup=False) == []
    assert not conn.exists(worker.key)
    assert not conn.sismember("rq:workers", worker.key)


def test_job_without_retry_gets_the_default_policy(conn):
    job, _ = predecessor_running(conn, {})
    recover_predecessor(conn, settings(RQ_JOB_RETRY_MAX="3"), HOST)
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.QUEUED
    assert job.retries_left == 2


def test_recovery_runs_the_jobs_failure_callback_as_rq_does_for_abandoned_jobs(conn):
    job, _ = predecessor_running(conn, {"on_failure": Callback(note_failure)})
    recover_predecessor(conn, settings(RQ_JOB_RETRY_MAX="0"), HOST)
    assert aftermath.drain() == 0  # (on a thread of its own: ``aftermath``)
    assert conn.get(f"failure-callback:{job.id}") == b"AbandonedJobError"


def test_the_callback_runs_after_the_job_is_requeued(conn):
    """The claim and the re-queue commit first: a rescuer killed in a slow callback loses nothing."""
    job, _ = predecessor_running(conn, {"retry": Retry(max=1), "on_failure": Callback(note_status_on_failure)})
    recover_predecessor(conn, settings(), HOST)
    aftermath.drain()
    assert conn.get(f"status-at-callback:{job.id}") == b"queued"


def test_two_rescuers_at_once_requeue_the_job_once(conn, monkeypatch):
    """A second rescuer commits between the first one's reads and its commit (here: while the first
    fetches the job): the first one's transaction fails, it reads again, finds the entry gone."""
    job, _ = predecessor_running(conn, {"retry": Retry(max=3)})
    s = settings()
    fetch, inner = recovery.registered_job, []

    def second_rescuer_meanwhile(connection, job_id):
        if not inner:
            inner.append([])  # (the second rescuer's own fetch is not interleaved)
            inner[0] = rescue_executions(conn, s.name, ["default"], s, "second", at_once=True)
        return fetch(connection, job_id)

    monkeypatch.setattr(recovery, "registered_job", second_rescuer_meanwhile)
    first = rescue_executions(conn, s.name, ["default"], s, "first", at_once=True)
    assert (first, [r.job_id for r in inner[0]]) == ([], [job.id])
    queue = Queue("default", connection=conn)
    assert queue.job_ids.count(job.id) == 1
    assert Job.fetch(job.id, connection=conn).retries_left == 2, "one attempt taken, not two"
    assert len(Job.fetch(job.id, connection=conn).results()) == 1


@pytest.mark.parametrize("dies_in", ["rq.results.Result.create_failure",  # writing the retry: before the commit
                                     "rq_worker_service.recovery.release_slot",  # after it
                                     "rq_worker_service.aftermath.follow"])  # handing over the callback
def test_a_rescuer_that_dies_anywhere_leaves_the_job_to_the_next(conn, monkeypatch, dies_in):
    """Killed before its commit, a rescue changed nothing and the next one does it; killed after,
    the job is already back in its queue. Either way one attempt is taken, and the job is not lost."""
    job, _ = predecessor_running(conn, {"retry": Retry(max=2)})

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dies_in, dies)
    with pytest.raises(KeyboardInterrupt):
        recover_predecessor(conn, settings(), HOST)
    monkeypatch.undo()
    recover_predecessor(conn, settings(), HOST)  # the restarted instance's
    assert Queue("default", connection=conn).job_ids == [job.id]
    assert Job.fetch(job.id, connection=conn).retries_left == 1


def test_default_policy_off_fails_the_job_with_a_reason(conn):
    job, _ = predecessor_running(conn, {})
    recovered = recover_predecessor(conn, settings(RQ_JOB_RETRY_MAX="0"), HOST)
    assert recovered[0].retried is False
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.FAILED
    assert job in Queue("default", connection=conn).failed_job_registry
    assert "died while running" in job.latest_result().exc_string


def test_retry_with_interval_is_scheduled(conn):
    job, _ = predecessor_running(conn, {"retry": Retry(max=3, interval=5)})
    recover_predecessor(conn, settings(), HOST)
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.SCHEDULED
    assert job.id in Queue("default", connection=conn).scheduled_job_registry


def test_live_predecessor_is_not_touched(conn, monkeypatch):
    job, _ = predecessor_running(conn, {"retry": Retry(max=2)}, pid=12345)
    monkeypatch.setattr("rq_worker_service.recovery.process_is_worker", lambda pid: pid == 12345)
    with pytest.raises(WorkerNameInUse, match="already running as pid 12345"):
        recover_predecessor(conn, settings(), HOST)
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.STARTED


def test_record_from_another_host_is_refused(conn):
    job, _ = predecessor_running(conn, {}, host="otherhost")
    with pytest.raises(WorkerNameInUse, match="otherhost"):
        recover_predecessor(conn, settings(), HOST)
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.STARTED


@pytest.fixture
def here(monkeypatch):
    """This process runs on machine "m-here", in boot "b-here"; the pid 12345 is a live worker."""
    monkeypatch.setattr(host, "identity", lambda: HostIdentity(machine_id="m-here", boot_id="b-here"))
    monkeypatch.setattr("rq_worker_service.recovery.process_is_worker", lambda pid: pid == 12345)


def test_same_hostname_on_another_machine_is_refused_and_its_jobs_left_alone(conn, here):
    """Cloned VMs and containers share host names: a pid that is not running here says nothing about
    a worker on another machine, which must not have its live jobs rescued."""
    job, _ = predecessor_running(conn, {"retry": Retry(max=2)}, machine_id="m-there", boot_id="b-there")
    with pytest.raises(WorkerNameInUse, match=f"registered by host {HOST} \\(machine id m-there\\) and this host "
                                              f"{HOST} is another machine \\(machine id m-here\\): give the hosts "
                                              "distinct hostnames, or this worker another --name or --instance"):
        recover_predecessor(conn, settings(), HOST)
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.STARTED


def test_a_record_from_an_earlier_boot_is_dead_whatever_its_pid(conn, here):
    job, _ = predecessor_running(conn, {"retry": Retry(max=2)}, pid=12345, machine_id="m-here", boot_id="b-before")
    assert [r.job_id for r in recover_predecessor(conn, settings(), HOST)] == [job.id]
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.QUEUED


@pytest.mark.parametrize("fields", [{"machine_id": "m-here", "boot_id": "b-here"}, {}],
                         ids=["same boot", "older record"])
def test_same_boot_or_a_record_without_ids_is_judged_by_its_pid(conn, here, fields):
    live, _ = predecessor_running(conn, {}, pid=12345, **fields)
    with pytest.raises(WorkerNameInUse, match="already running as pid 12345"):
        recover_predecessor(conn, settings(), HOST)
    assert Job.fetch(live.id, connection=conn).get_status() == JobStatus.STARTED
    conn.hset(f"rq:worker:{settings().name}", "pid", DEAD_PID)
    assert [r.job_id for r in recover_predecessor(conn, settings(), HOST)] == [live.id]


def test_host_identity_reads_systemds_machine_id_then_dbuss_and_the_boot_id(tmp_path, monkeypatch):
    etc, dbus, boot = tmp_path / "machine-id", tmp_path / "dbus-machine-id", tmp_path / "boot_id"
    monkeypatch.setattr(host, "MACHINE_ID_FILES", (etc, dbus))
    monkeypatch.setattr(host, "BOOT_ID_FILE", boot)
    assert host.identity() == HostIdentity("", "") and host.identity().fields() == {}
    dbus.write_text("d-bus\n")
    boot.write_text("b-1\n")
    etc.write_text("uninitialized\n")  # systemd's first boot: not an id yet
    assert host.identity().fields() == {"machine_id": "d-bus", "boot_id": "b-1"}
    etc.write_text("m-1\n")
    assert host.identity() == HostIdentity("m-1", "b-1")


def test_other_workers_jobs_are_left_to_rq(conn):
    job, _ = predecessor_running(conn, {"retry": Retry(max=2)}, name="otherhost.rq-worker@1")
    assert recover_predecessor(conn, settings(), HOST) == []
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.STARTED


def test_clean_previous_shutdown_needs_no_recovery(conn):
    s = settings()
    worker = Worker([Queue(connection=conn)], name=s.name, connection=conn)
    worker.register_birth()
    worker.register_death()
    assert recover_predecessor(conn, s, HOST) == []
    assert not conn.exists(worker.key)


def test_apply_default_retry_leaves_jobs_with_their_own_retry_alone(conn):
    job = Queue(connection=conn).enqueue(quick_job, 1, retry=Retry(max=1, interval=9))
    assert apply_default_retry(job, settings()) is False
    assert (job.retries_left, job.retry_intervals) == (1, [9])
    job = Queue(connection=conn).enqueue(quick_job, 1)
    assert apply_default_retry(job, settings(RQ_JOB_RETRY_MAX="4", RQ_JOB_RETRY_DELAY="7")) is True
    assert (job.retries_left, job.retry_intervals) == (4, [7])


def test_a_job_registered_but_never_started_goes_back_to_the_front_untouched(conn):
    """Killed between the registration and the horse's STARTED: the entry's job is still queued,
    in no list; the rescue puts it back first in line, no attempt taken, no callback, no result."""
    s = settings()
    queue = Queue("default", connection=conn)
    job = queue.enqueue(quick_job, 1, retry=Retry(max=2), on_failure=Callback(note_failure))
    waiting = queue.enqueue(quick_job, 2)
    worker = Worker([queue], name=s.name, connection=conn)
    worker.register_birth()
    queue.remove(job)
    worker.prepare_execution(job)  # the horse never ran prepare_job_execution
    conn.hset(worker.key, mapping={"pid": DEAD_PID, "hostname": HOST})
    recovered = recover_predecessor(conn, s, HOST)
    assert [(r.job_id, r.retried) for r in recovered] == [(job.id, True)]
    assert queue.job_ids == [job.id, waiting.id]
    job = Job.fetch(job.id, connection=conn)
    assert (job.get_status(), job.retries_left, job.latest_result()) == (JobStatus.QUEUED, 2, None)
    aftermath.drain()
    assert not conn.exists(f"failure-callback:{job.id}")
    assert queue.started_job_registry.get_job_ids(cleanup=False) == []
    assert rescue_executions(conn, s.name, ["default"], s, "again", at_once=True) == []


def test_a_rescue_that_fails_the_job_sends_its_failed_webhooks_once_and_one_that_requeues_none(conn, monkeypatch):
    """As rq's abandoned-job cleanup: the failed webhooks of a job the rescue fails, with the failure it
    recorded; none for a job it re-queues (not an end), nor for a finished webhook."""
    from rq import Webhook

    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(Webhook, "send", lambda self, job, exc_string=None: sent.append((self.url, exc_string)))
    hooks = [Webhook("http://h/failed", "failed"), Webhook("http://h/finished", "finished")]
    requeued, _ = predecessor_running(conn, {"retry": Retry(max=1), "webhooks": hooks})
    recover_predecessor(conn, settings(), HOST)
    aftermath.drain()
    assert sent == [] and Job.fetch(requeued.id, connection=conn).get_status() == JobStatus.QUEUED
    failed, _ = predecessor_running(conn, {"webhooks": hooks})
    recover_predecessor(conn, settings(RQ_JOB_RETRY_MAX="0"), HOST)
    assert aftermath.drain() == 0
    failed = Job.fetch(failed.id, connection=conn)
    assert failed.get_status() == JobStatus.FAILED
    assert sent == [("http://h/failed", failed.latest_result().exc_string)]
    assert sent[0][1].startswith("AbandonedJobError: ")
