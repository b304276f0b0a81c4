"""TLS against a real redis-server with ``tls-port`` and client certificates, made by the test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from helpers import NotifySocket, wait_until
from redisha import TLSRedis, make_certificates
from rq.job import Job
from testjobs import quick_job

from rq_worker_service import exits

if not shutil.which("openssl"):
    pytest.skip("openssl is not installed (apt-get install openssl)", allow_module_level=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs):
    server = TLSRedis(certs).start()
    yield server
    server.cleanup()


def tls_env(certs, ca: str = "ca") -> dict[str, str]:
    return {"REDIS_SSL_CA_CERTS": str(certs[ca]), "REDIS_SSL_CERTFILE": str(certs["client"]),
            "REDIS_SSL_KEYFILE": str(certs["client_key"])}


def cli(args: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    """A command as an operator runs it, with this environment only (an empty env file)."""
    env_file = tmp_path / "worker.env"
    env_file.touch()
    if args[0] != "run":
        args = [*args, "--env-file", str(env_file)]
    return subprocess.run([sys.executable, "-m", "rq_worker_service", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


def test_worker_commands_and_enqueue_helper_over_tls(tls_redis, certs, start_worker, tmp_path, monkeypatch):
    conn = tls_redis.client()
    conn.flushall()
    notify = NotifySocket(tmp_path)
    worker = start_worker("tls", notify=notify, url=tls_redis.url, env=tls_env(certs))
    notify.wait_for("READY=1")
    for name, value in {"REDIS_URL": tls_redis.url, **tls_env(certs)}.items():
        monkeypatch.setenv(name, value)
    from rq_worker_service.client import enqueue

    job = enqueue(quick_job, 21, job_id="over-tls")
    wait_until(lambda: Job.fetch(job.id, connection=conn).get_status() == "finished", 15, what="the job over TLS")
    assert Job.fetch(job.id, connection=conn).return_value() == 42

    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": tls_redis.url, **tls_env(certs)}
    out = cli(["status", "--json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rq-worker@tls" in out.stdout
    worker.signal(15)
    assert worker.wait(20) == 0


def test_a_wrong_ca_is_one_line_and_exit_77_at_once(tls_redis, certs, start_worker, tmp_path):
    notify = NotifySocket(tmp_path)
    started = time.monotonic()
    worker = start_worker("wrong-ca", notify=notify, url=tls_redis.url, env=tls_env(certs, "other_ca"))
    assert worker.wait(20) == exits.NOPERM
    assert time.monotonic() - started < 10  # not RQ_REDIS_STARTUP_WAIT (30 s) of retries
    errors = [line for line in worker.output().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "TLS with Redis at rediss://127.0.0.1" in errors[0], worker.output()
    assert "REDIS_SSL_CA_CERTS" in errors[0] and "Traceback" not in worker.output()
    assert any("certificate verify failed" in line or "self-signed" in line or "unable to get local issuer" in line
               for line in errors), errors

    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": tls_redis.url, **tls_env(certs, "other_ca")}
    out = cli(["status"], env, tmp_path)
    assert out.returncode == exits.NOPERM
    assert out.stderr.count("\n") == 1 and "REDIS_SSL_CA_CERTS" in out.stderr, out.stderr


def test_tls_settings_without_tls_are_refused(tmp_path, certs):
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_SSL_CA_CERTS": str(certs["ca"])}
    out = cli(["run", "--check"], env, tmp_path)
    assert out.returncode == exits.CONFIG
    assert "REDIS_SSL_CA_CERTS: set, but the connection is not TLS: use a rediss:// REDIS_URL" in out.stderr
