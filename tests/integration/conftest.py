from __future__ import annotations

import shutil

import pytest
from helpers import ACL_PASSWORD, NotifySocket, RedisServer, WorkerProcess

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
