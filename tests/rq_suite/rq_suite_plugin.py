"""A pytest plugin that runs rq's own test suite with our worker classes in place of rq's.

Loaded with ``-p rq_suite_plugin`` before rq's test modules are imported, it replaces ``Worker``,
``SimpleWorker`` and ``SpawnWorker`` in ``rq`` and ``rq.worker`` (where the tests and rq's CLI
import them from) with thin subclasses of ours that only supply what rq's constructor does not:
default settings, a notifier that is a no-op outside systemd, and the Redis URL of the worker's
own connection (which the spawn horse connects to; ``rediss://`` for rq's TLS tests). Nothing else
is changed, so each difference rq's suite finds is a real difference of our classes;
``expected.txt`` lists the ones we chose.

With ``RQ_SUITE_STOCK=1`` the plugin changes nothing: the same run with rq's own classes, the
oracle ``run_suite.py`` uses to tell our differences from tests that fail here anyway.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import rq
import rq.worker
from redis.connection import SSLConnection

from rq_worker_service.config import load_settings
from rq_worker_service.notify import Notifier
from rq_worker_service.worker_classes import ServiceSimpleWorker, ServiceSpawnWorker, ServiceWorker

DEFAULTS = load_settings({"RQ_WORKER_INSTANCE": "rq-suite"})


class _Adapter:
    def __init__(self, *args: Any, settings: Any = None, notifier: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, settings=settings or DEFAULTS, notifier=notifier or Notifier(), **kwargs)
        pool = self.connection.connection_pool
        where = f"{pool.connection_kwargs.get('host', 'localhost')}:{pool.connection_kwargs.get('port', 6379)}"
        url = f"redis://{where}/{pool.connection_kwargs.get('db', 0)}"
        os.environ.pop("REDIS_SSL_CERT_REQS", None)
        if issubclass(pool.connection_class, SSLConnection):  # rq's TLS tests: a certificate nobody checks
            url = f"rediss://{where}/{pool.connection_kwargs.get('db', 0)}"
            os.environ["REDIS_SSL_CERT_REQS"] = "none"  # for the spawn horse's settings (REDIS_URL takes no ssl_*)
        self.settings = dataclasses.replace(self.settings, redis=dataclasses.replace(self.settings.redis, url=url))


class Worker(_Adapter, ServiceWorker):  # type: ignore[misc]
    pass


class SimpleWorker(_Adapter, ServiceSimpleWorker):  # type: ignore[misc]
    pass


class SpawnWorker(_Adapter, ServiceSpawnWorker):  # type: ignore[misc]
    pass


if not os.environ.get("RQ_SUITE_STOCK"):
    for module in (rq, rq.worker):
        module.Worker = Worker  # type: ignore[misc]
        module.SimpleWorker = SimpleWorker  # type: ignore[misc]
        module.SpawnWorker = SpawnWorker  # type: ignore[misc]


def pytest_runtest_logreport(report: Any) -> None:
    """Record each test's outcome for ``run_suite.py`` (``RQ_SUITE_REPORT``: a JSON-lines file), with
    rq's markers of the tests it skips unless asked (``slow``, ``ssl_test``) and a skip's reason."""
    path = os.environ.get("RQ_SUITE_REPORT")
    failed_setup = report.when == "setup" and report.outcome != "passed"
    if path and (report.when == "call" or failed_setup or (report.when == "teardown" and report.failed)):
        import json

        entry = {"test": report.nodeid, "outcome": report.outcome, "when": report.when,
                 "duration": round(report.duration, 3),
                 "markers": [m for m in ("slow", "ssl_test") if m in report.keywords]}
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["reason"] = report.longrepr[2]
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_deselected(items: list[Any]) -> None:
    """Record what the ``--deselect`` options left to the other parts (``<RQ_SUITE_REPORT>.collected``),
    so that ``run_suite.py`` sees a test that no part ran."""
    _record_collected(items)


def pytest_collection_finish(session: Any) -> None:
    """Record every test this part runs (``<RQ_SUITE_REPORT>.collected``), beside those it deselected."""
    _record_collected(session.items)


def _record_collected(items: list[Any]) -> None:
    path = os.environ.get("RQ_SUITE_REPORT")
    if path:
        with open(f"{path}.collected", "a") as f:
            f.writelines(f"{item.nodeid}\n" for item in items)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """End the processes a failed test left behind (a worker pool's workers, a worker blocked in its
    pop for minutes): Python's exit joins every multiprocessing child, so the run would wait for them."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
