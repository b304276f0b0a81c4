"""What passes ``run --check`` starts; what ``run`` refuses, the check refused first (issue 26).

Each bad value here passed the check, then crashed ``run`` with a traceback and exit 1 (a restart
every 5 s for ever under Restart=on-failure); the values at the new bounds run jobs as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from badinput import SECRET, environments, loopback
from helpers import RedisServer, free_port, wait_until
from hypothesis import HealthCheck, assume, given, settings
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import failing_job, quick_job

from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.variables import MAX_SECONDS


def check(env: dict[str, str], tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``run --check`` (or ``run`` with ``args``) as a process, in an environment of ``env`` only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_", "CREDENTIALS_"))}
    return subprocess.run([sys.executable, "-m", "rq_worker_service", "run", *(args or ["--check"])],
                          env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, errors="replace",
                          timeout=60)


@pytest.mark.parametrize("env, fragment", [
    ({"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{{port}}/0?socket_timeout=abc"}, "socket_timeout="),
    ({"REDIS_URL": "unix:///run/redis/redis.sock?db=abc"}, "db="),
    ({"RQ_QUEUES": "default,caf\udcc3"}, "RQ_QUEUES="),  # the bytes 'caf\xc3': not UTF-8
    ({"RQ_RESULT_TTL": "99999999999999999"}, "RQ_RESULT_TTL="),
])
def test_the_check_and_the_start_both_refuse_in_one_line_with_78(start_worker, notify, env, fragment, tmp_path):
    env = {key: value.replace("{port}", str(free_port())) for key, value in env.items()}
    checked = check(env, tmp_path)
    assert checked.returncode == 78, checked.stderr
    worker = start_worker("1", notify=notify, env=env)
    assert worker.wait(15) == 78
    for out in (checked.stderr, worker.output()):
        assert fragment in out and "Traceback" not in out and SECRET not in out, out
        assert len(out.strip().splitlines()) == 1, out
    assert notify.wait_for("ERRNO=22")


def test_ttls_and_timeouts_at_their_bound_run_jobs_as_before(start_worker, notify, rconn):
    """The bound is within what rq and Redis take: a job that succeeds is FINISHED with its result kept
    (with RQ_RESULT_TTL above Redis's EXPIRE limit it was recorded FAILED), a failure is FAILED."""
    bound = str(MAX_SECONDS)
    worker = start_worker("1", notify=notify, env={"RQ_RESULT_TTL": bound, "RQ_FAILURE_TTL": bound,
                                                   "RQ_JOB_TIMEOUT": bound, "RQ_JOB_RETRY_DELAY": bound,
                                                   "RQ_SHUTDOWN_TIMEOUT": bound})
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    done, failed = queue.enqueue(quick_job, 21), queue.enqueue(failing_job, 1)
    wait_until(lambda: Job.fetch(done.id, connection=rconn).get_status() == JobStatus.FINISHED, 15, what="the job")
    wait_until(lambda: Job.fetch(failed.id, connection=rconn).get_status() == JobStatus.FAILED, 15, what="the failure")
    assert Job.fetch(done.id, connection=rconn).return_value() == 42
    assert rconn.ttl(done.key) > MAX_SECONDS - 60
    worker.signal(signal.SIGTERM)  # a stop with RQ_SHUTDOWN_TIMEOUT at the bound (EXTEND_TIMEOUT_USEC …)
    assert worker.wait(15) == 0
    assert worker.output().count("Traceback") == 1  # the failing job's own, logged by rq


def test_a_worker_on_a_unix_socket_runs_jobs(start_worker, notify, tmp_path):
    """redis-py's Unix socket connection takes no TCP keepalive options: every unix:// REDIS_URL
    passed the check, then failed the start with a TypeError."""
    server = RedisServer()
    socket_path = f"{server.dir}/redis.sock"
    server.extra_args = ["--unixsocket", socket_path, "--unixsocketperm", "700"]
    server.start()
    try:
        client = server.client()
        worker = start_worker("1", notify=notify, url=f"unix://{socket_path}?db=0")
        notify.wait_for("READY=1")
        job = Queue(connection=client).enqueue(quick_job, 2)
        wait_until(lambda: Job.fetch(job.id, connection=client).get_status() == JobStatus.FINISHED, 15, what="job")
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0
        assert "Traceback" not in worker.output()
    finally:
        server.cleanup()


def test_a_database_the_server_does_not_have_exits_78_in_one_line(start_worker, notify, redis_server, tmp_path):
    """redis://…/99 on a server with 16 databases: only the server can tell, at the connect; the
    SELECT's ResponseError was a traceback and exit 1, a restart every 5 s for ever."""
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    worker = start_worker("1", notify=notify, url=url)
    assert worker.wait(15) == 78
    out = worker.output()
    assert "configuration error: Redis at" in out and "REDIS_URL" in out and "Traceback" not in out, out
    assert notify.wait_for("ERRNO=22")
    (tmp_path / "worker.env").write_text("")
    status = subprocess.run([sys.executable, "-m", "rq_worker_service", "status", "--url", url, "--env-file",
                             str(tmp_path / "worker.env")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert status.returncode == 78 and status.stderr.count("\n") == 1, status.stderr


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.filter_too_much])
@given(env=environments(max_variables=3))
def test_the_corpus_as_processes_check_and_run_agree_on_exit_status(env, tmp_path):
    """The unit corpus (tests/unit/test_bad_input_corpus.py) in process proves the rule; these few
    real processes prove the exit statuses: 78 from both with the same one line, or a check that
    passes and a start that fails only as an outage does (69: nothing listens; 77: TLS)."""
    assume(all("\x00" not in value for value in env.values()))  # an environment cannot carry one
    try:
        assume(loopback(load_settings(env).redis))
    except ConfigError:
        pass
    env = {**env, "RQ_REDIS_STARTUP_WAIT": "0.2"}
    checked, ran = check(env, tmp_path, "--check", "--instance", "1"), check(env, tmp_path, "--instance", "1")
    for out in (checked.stderr, ran.stderr):
        assert "Traceback" not in out and SECRET not in out, out
    if checked.returncode == 78:
        assert ran.returncode == 78, ran.stderr
        line = checked.stderr.strip().split(": configuration error: ", 1)[1]
        assert len(ran.stderr.strip().splitlines()) == 1 and line in ran.stderr, (checked.stderr, ran.stderr)
    else:
        assert checked.returncode == 0, checked.stderr
        assert ran.returncode in (69, 77), ran.stderr
