"""The daemon against a real redis-server: readiness, status, watchdog, stop, reload, crash recovery."""

from __future__ import annotations

import os
import signal
import socket
import time

from helpers import RedisServer, wait_until
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from testjobs import marked_failure_callback, quick_job, sleep_job

HOST = socket.gethostname()


def name(instance: str) -> str:
    return f"{HOST}.rq-worker@{instance}"


def job_status(rconn, job_id: str) -> str:
    return Job.fetch(job_id, connection=rconn).get_status()


def executions(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def started_ids(rconn, queue: str = "default") -> list[str]:
    return Queue(queue, connection=rconn).started_job_registry.get_job_ids(cleanup=False)


def test_ready_only_after_registration_and_status_says_queues(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"RQ_QUEUES": "high,default"})
    notify.wait_for("READY=1")
    # READY is sent only after register_birth: the worker record exists the moment READY arrives.
    assert rconn.sismember("rq:workers", f"rq:worker:{name('1')}")
    assert rconn.hget(f"rq:worker:{name('1')}", "pid") == str(worker.pid).encode()
    status = notify.wait_for("STATUS=", contains="Idle")
    assert "high, default" in status
    assert any(line == f"MAINPID={worker.pid}" for line in notify.lines("MAINPID="))


def test_status_names_running_job_then_counts_it(start_worker, notify, rconn):
    start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 2.5, job_id="status-job")
    line = notify.wait_for("STATUS=", contains="Running job status-job (testjobs.sleep_job)")
    assert "for " in line
    notify.wait_for("STATUS=", contains="Idle", after=len(notify.lines("STATUS=")))
    assert "1 done, 0 failed" in notify.lines("STATUS=")[-1]
    assert job_status(rconn, job.id) == JobStatus.FINISHED


def test_watchdog_pings_during_job_and_stop_when_main_loop_frozen(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})  # WatchdogSec=3 → tick 1 s
    notify.wait_for("READY=1")
    Queue(connection=rconn).enqueue(sleep_job, 8, job_id="wd-job")
    notify.wait_for("STATUS=", contains="Running job wd-job")
    before = len(notify.lines("WATCHDOG=1"))
    wait_until(lambda: len(notify.lines("WATCHDOG=1")) - before >= 2, 3.2,
               what="at least 2 pings per WatchdogSec (3 s) while a job runs")

    worker.signal(signal.SIGSTOP)  # a hung main loop: the horse goes on, the pings must stop
    try:
        time.sleep(0.3)
        frozen = len(notify.lines("WATCHDOG=1"))
        time.sleep(3.5)
        assert len(notify.lines("WATCHDOG=1")) == frozen, "watchdog pings continued while the main loop was frozen"
    finally:
        worker.signal(signal.SIGCONT)
    wait_until(lambda: len(notify.lines("WATCHDOG=1")) > frozen, 5, what="pings to resume")


def test_sigterm_lets_running_job_finish_then_exits_0(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 4, job_id="warm-job")
    notify.wait_for("STATUS=", contains="Running job warm-job")
    worker.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert notify.wait_for("EXTEND_TIMEOUT_USEC=")
    assert worker.wait(20) == 0
    assert job_status(rconn, job.id) == JobStatus.FINISHED
    assert executions(rconn, job.id) == 1
    assert started_ids(rconn) == []


def test_idle_worker_stops_within_a_second(start_worker, notify):
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - t0 < 2.0


def test_second_sigterm_cuts_job_records_interruption_and_retries(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 30, job_id="cold-job", retry=Retry(max=2))
    notify.wait_for("STATUS=", contains="Running job cold-job")
    worker.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    time.sleep(1.2)  # rq treats a second signal within 1 s as a duplicate
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - t0 < 5
    job = Job.fetch(job.id, connection=rconn)
    assert job.get_status() == JobStatus.QUEUED
    assert job.retries_left == 1
    assert "second stop signal" in job.latest_result().exc_string
    assert started_ids(rconn) == []

    rconn.set("executions:cold-job", 1)
    start_worker("2", notify=None)  # another instance picks the retry up
    wait_until(lambda: executions(rconn, job.id) >= 2, 10, what="the retried job to start")


def test_job_outliving_shutdown_timeout_is_cut_and_gets_default_retry(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"RQ_SHUTDOWN_TIMEOUT": "2", "RQ_JOB_RETRY_DELAY": "0",
                                                   "WATCHDOG_USEC": "30000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 60, job_id="long-job")  # no Retry of its own
    notify.wait_for("STATUS=", contains="Running job long-job")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 6, f"cut after {elapsed:.1f}s, RQ_SHUTDOWN_TIMEOUT=2"
    job = Job.fetch(job.id, connection=rconn)
    assert job.get_status() == JobStatus.QUEUED  # default policy: RQ_JOB_RETRY_MAX=3, delay 0
    assert job.retries_left == 2
    assert "RQ_SHUTDOWN_TIMEOUT=2s" in job.latest_result().exc_string
    assert "interrupted by shutdown" in worker.output()


def test_kill_9_mid_job_then_restart_retries_within_seconds(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 4, job_id="crash-job", retry=Retry(max=3, interval=1))
    notify.wait_for("STATUS=", contains="Running job crash-job")
    wait_until(lambda: executions(rconn, job.id) == 1, 10, what="the job function to start")
    worker.signal(signal.SIGKILL)
    worker.wait(5)
    # The horse dies with its parent (PR_SET_PDEATHSIG): the job does not finish as an orphan.
    time.sleep(4.5)
    assert job_status(rconn, job.id) == JobStatus.STARTED
    assert executions(rconn, job.id) == 1

    t0 = time.monotonic()
    start_worker("1", notify=None)  # systemd's Restart= of the same instance
    wait_until(lambda: job_status(rconn, job.id) == JobStatus.FINISHED, 20, what="the recovered job to finish")
    took = time.monotonic() - t0
    assert took < 10, f"job re-ran and finished {took:.1f}s after the restart"
    assert executions(rconn, job.id) == 2
    assert started_ids(rconn) == []
    assert "died while running" in Job.fetch(job.id, connection=rconn).results()[-1].exc_string


def test_second_worker_with_same_name_refuses_to_start(start_worker, notify):
    start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    twin = start_worker("1")
    assert twin.wait(15) == 75
    assert "already running as pid" in twin.output()


def test_sighup_reloads_in_place_with_new_config_after_job(start_worker, notify, rconn, tmp_path):
    env_file = tmp_path / "worker.env"
    env_file.write_text("RQ_QUEUES=default\n")
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"},
                          args=["--env-file", str(env_file)])
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 3, job_id="reload-job")
    notify.wait_for("STATUS=", contains="Running job reload-job")
    env_file.write_text("RQ_QUEUES=default,extra\n")
    worker.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    ready_before = len(notify.lines("READY=1"))
    notify.wait_for("READY=1", after=ready_before, timeout=20)
    key = f"rq:worker:{name('1')}"
    assert rconn.hget(key, "successful_job_count") == b"1", "the counters carry across the reload"
    assert job_status(rconn, job.id) == JobStatus.FINISHED
    assert executions(rconn, job.id) == 1
    assert worker.proc.poll() is None
    assert rconn.hget(f"rq:worker:{name('1')}", "pid") == str(worker.pid).encode()  # same pid
    extra = Queue("extra", connection=rconn).enqueue(quick_job, 21)
    wait_until(lambda: job_status(rconn, extra.id) == JobStatus.FINISHED, 10, what="a job on the new queue")


def test_redis_outage_keeps_pinging_and_recovers(start_worker, notify, redis_server, rconn):
    worker = start_worker("1", notify=notify, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    redis_server.stop()
    try:
        notify.wait_for("STATUS=", contains="Redis unreachable", timeout=10)
        before = len(notify.lines("WATCHDOG=1"))
        wait_until(lambda: len(notify.lines("WATCHDOG=1")) - before >= 2, 3.5, what="pings during the outage")
        assert worker.proc.poll() is None
    finally:
        redis_server.start()
    after = len(notify.lines("STATUS="))
    notify.wait_for("STATUS=", contains="Idle", after=after, timeout=20)
    job = Queue(connection=redis_server.client()).enqueue(quick_job, 1)
    wait_until(lambda: job_status(redis_server.client(), job.id) == JobStatus.FINISHED, 15,
               what="a job after the outage")


def test_a_stop_during_a_redis_outage_is_a_clean_stop(start_worker, notify):
    """systemctl stop while Redis is down: rq's teardown (its death record) met the outage and the worker
    exited 69 "so that systemd restarts it", which left a stopped unit failed. A stop exits 0, saying what
    it left in Redis."""
    server = RedisServer().start()
    try:
        worker = start_worker("1", notify=notify, url=server.url)
        notify.wait_for("READY=1")
        server.stop()
        notify.wait_for("STATUS=", contains="Redis unreachable", timeout=10)
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        out = worker.output()
        assert "Stopped with Redis at" in out and "so that systemd restarts" not in out, out[-3000:]
    finally:
        server.cleanup()


def test_unreachable_redis_at_start_waits_then_exits_69(start_worker, notify):
    port_url = "redis://127.0.0.1:1/0"
    worker = start_worker("1", notify=notify, url=port_url, env={"RQ_REDIS_STARTUP_WAIT": "2"})
    assert notify.wait_for("STATUS=", contains="waiting for Redis at redis://127.0.0.1:1/0")
    assert notify.wait_for("EXTEND_TIMEOUT_USEC=")
    assert worker.wait(15) == 69
    assert "Traceback" not in worker.output()
    assert notify.wait_for("ERRNO=")


def test_sigint_is_warm_too(start_worker, notify, rconn):
    """SIGINT (Ctrl-C in a terminal) stops like SIGTERM (test_sigterm_lets_running_job_finish_then_exits_0)."""
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 2, job_id="warm-sigint")
    notify.wait_for("STATUS=", contains="Running job")
    os.kill(worker.pid, signal.SIGINT)
    assert worker.wait(15) == 0
    assert job_status(rconn, job.id) == JobStatus.FINISHED


def test_a_stop_ends_the_schedulers_pause_at_once(rconn):
    """rq's scheduler sleeps its interval out before it sees a stop, and the worker waits for it:
    ours is woken by the signal. With a 30 s interval, rq's would take up to 30 s here."""
    from rq_worker_service.scheduling import ServiceScheduler

    scheduler = ServiceScheduler([Queue(connection=rconn)], connection=rconn, name="pause-test", interval=30)
    scheduler.acquire_locks()
    scheduler.start()
    try:
        wait_until(lambda: rconn.exists(scheduler.key), 10, what="the scheduler to register")
        time.sleep(0.5)  # inside its pause now
        started = time.monotonic()
        os.kill(scheduler._process.pid, signal.SIGTERM)
        scheduler._process.join(10)
        assert scheduler._process.exitcode == 0
        assert time.monotonic() - started < 5
        assert not rconn.exists(scheduler.get_locking_key("default"))  # rq's stop(): locks released
    finally:
        if scheduler._process.is_alive():
            scheduler._process.kill()


def test_a_stop_during_start_up_is_a_clean_stop(start_worker, notify):
    """SIGTERM while the worker still waits for Redis, before its own handlers exist: it used to die
    of the signal mid-way (systemd counts that as clean: no restart, no log line). Now: exit 0 at
    once, saying so."""
    worker = start_worker("1", notify=notify, url="redis://127.0.0.1:1/0")
    notify.wait_for("STATUS=", contains="waiting for Redis")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - t0 < 3  # not after the wait's next attempt
    assert "Stopped during start-up (SIGTERM), before taking any job" in worker.output()


def test_a_reload_during_start_up_is_carried_out_once_the_worker_is_up(start_worker, notify, tmp_path):
    """SIGHUP while the worker still waits for Redis used to kill it (SIGHUP's default action). Now
    the worker comes up, then reloads as on any SIGHUP: re-executed in place with the new file."""
    late = RedisServer()  # its port answers only once started, after the signal
    try:
        env_file = tmp_path / "worker.env"
        env_file.write_text("RQ_QUEUES=default\n")
        worker = start_worker("1", notify=notify, url=late.url, args=["--env-file", str(env_file)])
        notify.wait_for("STATUS=", contains="waiting for Redis")
        env_file.write_text("RQ_QUEUES=default,extra\n")
        worker.signal(signal.SIGHUP)
        late.start()
        wait_until(lambda: worker.proc.poll() is not None or len(notify.lines("READY=1")) >= 2, 20,
                   what="READY=1 again, after the reload")
        assert worker.proc.poll() is None, worker.output()
        notify.wait_for("STATUS=", contains="extra")
        assert worker.proc.poll() is None
        assert "Reloaded worker" in worker.output()
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        late.cleanup()


def test_a_stop_during_the_predecessors_recovery_comes_after_it_and_takes_no_job(start_worker, notify, rconn):
    """SIGTERM while a restarted instance re-queues its dead predecessor's job (here: inside the
    job's 3 s failure callback): the rescue completes, the job is back in its queue, and the worker
    stops with exit 0 before taking it. It used to die of the signal with the job claimed from the
    started registry and in no queue."""
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 30, job_id="rescued", on_failure=Callback(marked_failure_callback))
    wait_until(lambda: executions(rconn, job.id) == 1, 10, what="the job function to start")
    worker.signal(signal.SIGKILL)
    worker.wait(5)
    restarted = start_worker("1", env={"RQ_JOB_RETRY_DELAY": "0"})
    wait_until(lambda: rconn.get(f"failure-callback-started:{job.id}"), 15, what="the rescue's failure callback")
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(15) == 0
    assert "Stopped during start-up (SIGTERM), before taking any job" in restarted.output()
    assert rconn.get(f"failure-callback:{job.id}") == b"AbandonedJobError"
    assert job_status(rconn, job.id) == JobStatus.QUEUED
    assert Queue(connection=rconn).job_ids == [job.id]
    assert executions(rconn, job.id) == 1
