"""Sentry, the way the README shows it: sentry-sdk in the app's virtualenv, ``sentry_sdk.init()`` with its
RQ integration in the app's settings module (RQ_SETTINGS_MODULE, rq's ``-c``), the DSN pointing at a
local HTTP endpoint that stands in for Sentry.

A failing job's exception must arrive from every worker class: fork (the module is imported in the
worker, the horse is its copy), spawn (a fresh interpreter, which imports the module itself) and
simple; stock ``rq worker -c settings`` on the same kind of job is the oracle.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import ROOT, RQ_CLI, wait_until
from rq import Queue

SENTRY_SDK = "sentry-sdk==2.75.0"
"""Pinned: the test shows the README's way works; a new release's change shows as a deliberate bump."""
CACHE = Path(os.environ.get("RQWS_SENTRY_CACHE", "/var/cache/rq-worker-service-sentry" if os.geteuid() == 0
                            else ROOT / ".cache" / "sentry"))
"""Where the app virtualenv with sentry-sdk is kept between runs (a pip install is ≈5 s)."""
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="session")
def sentry_venv() -> Path:
    """A virtualenv directory holding only sentry-sdk (RQ_APP_VIRTUALENV needs its site-packages)."""
    venv = CACHE / f"{SENTRY_SDK}-{PYTHON}"
    if not (venv / "lib" / PYTHON / "site-packages" / "sentry_sdk").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = CACHE / f"partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                 "--target", str(partial / "lib" / PYTHON / "site-packages"), SENTRY_SDK],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"pip install {SENTRY_SDK} failed (PyPI reachable?): {result.stderr}"
        shutil.rmtree(venv, ignore_errors=True)
        partial.rename(venv)
    return venv


class Envelopes(BaseHTTPRequestHandler):
    """Sentry's envelope endpoint, as far as a client sees it: takes each POST, answers 200."""

    received: list[bytes]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sentry() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Envelopes)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sentry_app(tmp_path, sentry) -> Path:
    """The app: a job that raises, and the settings module Sentry's RQ integration documents."""
    root = tmp_path / "app"
    (root / "sentryapp").mkdir(parents=True)
    (root / "sentryapp" / "__init__.py").write_text("")
    (root / "sentryapp" / "jobs.py").write_text(textwrap.dedent("""
        def boom(tag):
            raise RuntimeError(f"sentry-boom-{tag}")
    """))
    (root / "sentryapp" / "rq_settings.py").write_text(textwrap.dedent(f"""
        import sentry_sdk
        from sentry_sdk.integrations.rq import RqIntegration

        sentry_sdk.init(dsn="http://key@127.0.0.1:{sentry.server_address[1]}/1", integrations=[RqIntegration()])
    """))
    return root


def test_a_failing_jobs_exception_reaches_sentry_from_every_worker_class(
        rconn, redis_server, start_worker, sentry_venv, sentry_app, sentry, tmp_path):
    site = sentry_venv / "lib" / PYTHON / "site-packages"
    tags = {"stock": None, "fork": "fork", "spawn": "spawn", "simple": "simple"}
    for tag in tags:
        Queue(f"sentry-{tag}", connection=rconn).enqueue("sentryapp.jobs.boom", tag)
    started = time.monotonic()
    with open(tmp_path / "stock.log", "ab") as log:
        stock = subprocess.Popen([RQ_CLI, "worker", "--url", redis_server.url, "--path", str(sentry_app), "--path",
                                  str(site), "-c", "sentryapp.rq_settings", "--burst", "--name", "stock",
                                  "sentry-stock"], cwd=sentry_app, stdout=log, stderr=subprocess.STDOUT)
    for tag, worker_class in tags.items():
        if worker_class is not None:
            start_worker(tag, env={"RQ_QUEUES": f"sentry-{tag}", "RQ_WORKER_CLASS": worker_class,
                                   "RQ_WITH_SCHEDULER": "no", "RQ_APP_DIR": str(sentry_app),
                                   "RQ_APP_PATH": str(sentry_app), "RQ_APP_VIRTUALENV": str(sentry_venv),
                                   "RQ_SETTINGS_MODULE": "sentryapp.rq_settings"})

    def arrived() -> set[str]:
        return {tag for tag in tags if any(f"sentry-boom-{tag}".encode() in body for body in sentry.received)}

    with contextlib.suppress(AssertionError):  # (the assertion below names those that did not arrive)
        wait_until(lambda: arrived() == set(tags), 45, what="each worker's exception to reach the Sentry endpoint")
    assert arrived() == set(tags)
    assert stock.wait(30) == 0, (tmp_path / "stock.log").read_text()
    print(f"every exception arrived {time.monotonic() - started:.1f} s after the workers were started")
