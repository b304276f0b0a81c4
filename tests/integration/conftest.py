from __future__ import annotations

import shutil

import pytest
from helpers import NotifySocket, RedisServer, WorkerProcess

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
