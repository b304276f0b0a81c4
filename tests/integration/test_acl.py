"""ACL users: the rule ``rq-worker-service acl`` prints is enough for a worker, every operator
command and the enqueue helper, and a missing permission is one clear line, not a traceback.

The test jobs count their runs in ``executions:*`` keys of their own: an app whose jobs use the
worker's connection grants its own key pattern beside the rule, as here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import redis
from helpers import ACL_PASSWORD as PASSWORD
from helpers import JOBS_DIR, wait_until
from rq.job import Job
from testjobs import failing_job, quick_job

from rq_worker_service import exits
from rq_worker_service.client import enqueue
from rq_worker_service.fencing import Lost, Membership


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

    for args in (["status", "--check"], ["status", "--prometheus"], ["job", "acl-failed"], ["failed", "--json"],
                 ["cleanup"], ["requeue", "--queue", "default"]):
        out = cli(url, *args)
        assert out.returncode == 0, (args, out.stderr)
    wait_until(lambda: status(rconn, failed.id) == "finished", 15, what="the requeued job to run again")

    denied = [entry for entry in rconn.acl_log() if entry.get("username") == "rqworker"]
    # Nothing was refused to the user along the way but the start-up's look at persistence (CONFIG GET
    # reads the whole server's configuration: not granted; the worker skips that warning).
    assert [entry["object"] for entry in denied] == ["config|get"], denied


SERVER_WIDE = [
    "CLIENT LIST", "CLIENT KILL ID 1", "CLIENT KILL 127.0.0.1:1", "CLIENT PAUSE 10", "CLIENT UNPAUSE",
    "CLIENT UNBLOCK 1", "CLIENT NO-EVICT on", "FLUSHALL", "FLUSHDB", "SWAPDB 0 1", "CONFIG GET requirepass",
    "CONFIG SET maxmemory 1", "CONFIG REWRITE", "CONFIG RESETSTAT", "DEBUG SLEEP 0", "SHUTDOWN", "MONITOR",
    "ACL WHOAMI", "ACL LIST", "ACL SETUSER x", "ACL DELUSER x", "ACL LOG", "SAVE", "BGSAVE", "BGREWRITEAOF",
    "LASTSAVE", "REPLICAOF no one", "SLAVEOF no one", "FAILOVER", "ROLE", "SYNC", "PSYNC ? -1", "SCRIPT FLUSH",
    "SCRIPT KILL", "FUNCTION FLUSH", "FUNCTION DELETE lib", "FUNCTION LOAD x", "FUNCTION RESTORE x",
    "FUNCTION KILL", "FCALL f 0", "KEYS *", "SCAN 0", "RANDOMKEY", "MIGRATE h 1 rq:x 0 0", "CLUSTER INFO",
    "MODULE LIST", "LATENCY RESET", "SLOWLOG GET", "SLOWLOG RESET", "MEMORY PURGE", "MEMORY STATS",
    "PUBSUB CHANNELS", "PSUBSCRIBE *", "SUBSCRIBE other", "PUBLISH other 1", "SORT rq:x", "OBJECT HELP",
]
"""Commands that act on, or read, the whole server or other clients (or keys and channels outside the
prefix), asked of Redis itself (ACL DRYRUN): a grant of the rule is every job's, on a shared Redis."""


def dry_run(rconn, user: str, command: str) -> str:
    try:
        reply = rconn.execute_command("ACL", "DRYRUN", user, *command.split())
        return reply.decode() if isinstance(reply, bytes) else str(reply)
    except redis.exceptions.ResponseError as exc:
        return str(exc)


def test_the_default_rule_grants_nothing_server_wide_and_the_opt_in_only_client_list_and_kill(acl_user, rconn):
    if rconn.info("server")["redis_version"] < "7":
        pytest.skip("ACL DRYRUN needs Redis 7")
    acl_user("plain")
    granted = {c: dry_run(rconn, "plain", c) for c in SERVER_WIDE}
    assert {c: r for c, r in granted.items() if "no permissions" not in r} == {}
    for command in ("BLMOVE rq:queue:a rq:service:held:w LEFT RIGHT 1", "EVALSHA 0 1 rq:x", "SCRIPT LOAD x",
                    "CLIENT SETNAME w", "HELLO", "INFO server", "TIME", "PUBLISH rq:pubsub:w x"):
        assert dry_run(rconn, "plain", command) == "OK", command  # what the service needs stays granted

    acl_user("killer", allow_client_kill=True)
    granted = {c for c in SERVER_WIDE if "no permissions" not in dry_run(rconn, "killer", c)}
    assert granted == {"CLIENT LIST", "CLIENT KILL ID 1", "CLIENT KILL 127.0.0.1:1"}


def test_with_the_opt_in_a_fencer_closes_a_lost_workers_connections_and_without_it_says_so_once(
        acl_user, caplog):
    """``acl --allow-client-kill``: the fencer finds and closes a lost worker's connections. The default
    rule refuses CLIENT LIST: the fencer says so once (info, not a warning: nothing is at risk) and
    does not try again."""
    lost_name = "lost-worker"
    for user, allow, closed in (("killer", True, 1), ("plain", False, 0)):
        url = acl_user(user, allow_client_kill=allow)
        lost = redis.Redis.from_url(url, client_name=lost_name)
        lost.ping()
        membership = Membership(redis.Redis.from_url(url), "fencer", period=3)
        victim = Lost(lost_name, "host", None, ["default"], 5.0, 3.0)
        with caplog.at_level(logging.INFO, logger="rq_worker_service.fencing"):
            assert membership.kill_connections(victim) == closed
            assert membership.kill_connections(victim) == 0  # (the first closed it; or: refused, not tried again)
        assert lost.ping()  # a closed connection reconnects: CLIENT KILL never stopped a woken worker's writes
        lost.close()
    refusals = [r for r in caplog.records if "Not closing fenced workers' Redis connections" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.INFO]


def test_a_missing_permission_is_one_line_and_exit_77(acl_user, start_worker, notify, monkeypatch):
    url = acl_user("noscripts", "-evalsha", "-eval")
    worker = start_worker("noperm", notify=notify, url=url)
    assert worker.wait(20) == exits.NOPERM
    errors = [line for line in worker.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in worker.output(), worker.output()
    assert "no permissions to run the 'evalsha' command" in errors[0] and "rq-worker-service acl" in errors[0]
    assert "ERRNO=13" in notify.lines("ERRNO=")  # EACCES, for systemctl status

    url = acl_user("noreads", "-@read")
    for args in (["status"], ["job", "x"], ["failed"], ["requeue", "x"], ["cleanup"]):
        out = cli(url, *args)
        assert out.returncode == exits.NOPERM, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and "rq-worker-service acl" in out.stderr, (args, out.stderr)
        assert "no permissions to run" in out.stderr and PASSWORD not in out.stderr
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run the"):
        enqueue(quick_job, 1, job_id="denied")
