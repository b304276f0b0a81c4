from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import ACL_PASSWORD, JOBS_DIR, RQ_CLI, NotifySocket, RedisServer, WorkerProcess

from rq_worker_service.acl import rule

if not shutil.which("redis-server"):
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def rconn(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


@pytest.fixture
def start_worker(redis_server, rconn, tmp_path):
    """Start worker processes; all are killed (SIGCONT first, for stopped ones) at teardown."""
    started: list[WorkerProcess] = []

    def start(instance: str = "1", notify: NotifySocket | None = None, url: str | None = None, **kwargs):
        worker = WorkerProcess(url or redis_server.url, instance, tmp_path, notify=notify, **kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def stock_rq(redis_server, tmp_path):
    """Start stock ``rq worker --name <name> <args…>`` (rq's documented command, with the test jobs on its
    path), the oracle the same test compares our worker with; killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"stock-{name}.log", "ab")
        proc = subprocess.Popen([RQ_CLI, "worker", "--url", redis_server.url, "--path", str(JOBS_DIR), "--name", name,
                                 *args], stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def acl_user(redis_server, rconn):
    """Make users with the rule ``rq-worker-service acl`` prints (plus the test jobs' keys and ``extra``);
    their URLs; removed after."""
    made: list[str] = []
    rconn.acl_log_reset()

    def make(name: str, *extra: str, allow_client_kill: bool = False) -> str:
        rconn.execute_command("ACL", "SETUSER", name, "reset", "on", f">{ACL_PASSWORD}",
                              *rule(allow_client_kill=allow_client_kill).split(), "~executions:*", *extra)
        made.append(name)
        return f"redis://{name}:{ACL_PASSWORD}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        rconn.execute_command("ACL", "DELUSER", name)
