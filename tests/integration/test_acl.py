"""ACL users: the rule ``rq-worker-service acl`` prints is enough for a worker, every operator
command and the enqueue helper, and a missing permission is one clear line, not a traceback.

The test jobs count their runs in ``executions:*`` keys of their own: an app whose jobs use the
worker's connection grants its own key pattern beside the rule, as here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from helpers import JOBS_DIR, wait_until
from rq.job import Job
from testjobs import failing_job, quick_job

from rq_worker_service import exits
from rq_worker_service.acl import rule
from rq_worker_service.client import enqueue
from rq_worker_service.fencing import Lost, Membership

PASSWORD = "acl-test-pw"


@pytest.fixture
def acl_user(redis_server, rconn):
    """Make users with the rule (plus the test jobs' keys and ``extra``); their URLs; removed after."""
    made: list[str] = []
    rconn.acl_log_reset()

    def make(name: str, *extra: str) -> str:
        rconn.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule().split(),
                              "~executions:*", *extra)
        made.append(name)
        return f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        rconn.execute_command("ACL", "DELUSER", name)


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_"))}
    env.update(PYTHONPATH=str(JOBS_DIR), REDIS_URL=url)
    return subprocess.run([sys.executable, "-m", "rq_worker_service", *args, "--env-file", os.devnull],
                          capture_output=True, text=True, env=env, timeout=60)


def status(rconn, job_id: str) -> str:
    return Job.fetch(job_id, connection=rconn).get_status().value


def test_the_printed_rule_is_enough_for_workers_commands_and_the_helper(acl_user, start_worker, notify, rconn,
                                                                        monkeypatch):
    url = acl_user("rqworker")
    start_worker("acl", notify=notify, url=url, env={"WATCHDOG_USEC": "3000000"})
    notify.wait_for("READY=1")
    monkeypatch.setenv("REDIS_URL", url)
    done = enqueue(quick_job, 4, job_id="acl-ok")
    enqueue(quick_job, 4, job_id="acl-ok")  # the duplicate check (WATCH/HGET) too
    failed = enqueue(failing_job, 1, job_id="acl-failed", retry=None)
    wait_until(lambda: status(rconn, done.id) == "finished" and status(rconn, failed.id) == "failed", 15,
               what="the jobs to run under the ACL user")

    for args in (["status", "--check"], ["status", "--prometheus"], ["job", "acl-failed"], ["cleanup"],
                 ["requeue", "--queue", "default"]):
        out = cli(url, *args)
        assert out.returncode == 0, (args, out.stderr)
    wait_until(lambda: status(rconn, failed.id) == "finished", 15, what="the requeued job to run again")

    user = redis.Redis.from_url(url)  # fencing: a worker finds and closes a lost one's connections
    lost = redis.Redis.from_url(url, client_name="lost-worker")
    lost.ping()
    membership = Membership(user, "fencer", period=3)
    assert membership.kill_connections(Lost("lost-worker", "host", None, ["default"], 5.0, 3.0)) == 1
    denied = [entry for entry in rconn.acl_log() if entry.get("username") == "rqworker"]
    assert denied == [], denied  # nothing was refused to the user along the way


def test_a_missing_permission_is_one_line_and_exit_77(acl_user, start_worker, notify, monkeypatch):
    url = acl_user("noscripts", "-evalsha", "-eval")
    worker = start_worker("noperm", notify=notify, url=url)
    assert worker.wait(20) == exits.NOPERM
    errors = [line for line in worker.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in worker.output(), worker.output()
    assert "no permissions to run the 'evalsha' command" in errors[0] and "rq-worker-service acl" in errors[0]
    assert "ERRNO=13" in notify.lines("ERRNO=")  # EACCES, for systemctl status

    url = acl_user("noreads", "-@read")
    for args in (["status"], ["job", "x"], ["requeue", "x"], ["cleanup"]):
        out = cli(url, *args)
        assert out.returncode == exits.NOPERM, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and "rq-worker-service acl" in out.stderr, (args, out.stderr)
        assert "no permissions to run" in out.stderr and PASSWORD not in out.stderr
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run the"):
        enqueue(quick_job, 1, job_id="denied")
