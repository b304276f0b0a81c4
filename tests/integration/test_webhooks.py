"""rq's job webhooks (rq 2.10+) for every end: the ones rq's worker path writes (success, a cold stop's
cut), and the ones the package decides itself (its recovery after kill -9, fencing, retries
exhausted there), which send as rq's abandoned-job cleanup does (stock rq as the oracle).

A local HTTP endpoint records what arrives. Webhook URLs carry a token in the path and the query:
the worker's log shows them masked (``config.mask_webhook_url``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import children_of, free_port, notify_socket, wait_until
from rq import Callback, Queue, Retry, Webhook
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from test_rq3_semantics import stock_worker  # noqa: F401 (the fixture)
from testjobs import note_failure, quick_job, sleep_job

SECRET = "s3cr3t-t0ken"
FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}
PAYLOAD_KEYS = {"job_id", "func_name", "status", "enqueued_at", "ended_at", "exc_info"}


class Endpoint:
    """An HTTP server on 127.0.0.1 that records each request: (path, method, JSON body or None).
    A path starting with /slow/ answers only after ``slow`` seconds."""

    def __init__(self, slow: float = 5.0) -> None:
        self.received: list[tuple[str, str, dict | None]] = []
        self.slow = slow
        received, delay = self.received, slow

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if self.path.startswith("/slow/"):
                    time.sleep(delay)
                received.append((self.path.split("?")[0], self.command, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}/{SECRET}?token={SECRET}"

    def posts(self, path: str) -> list[dict]:
        return [body for p, method, body in self.received if p == f"/{path}/{SECRET}" and method == "POST"
                and body is not None]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


def failed_hook(endpoint: Endpoint, path: str, **kwargs) -> Webhook:
    return Webhook(endpoint.url(path), "failed", method="POST", **kwargs)


def kill_with_horse(pid: int) -> None:
    """kill -9 a worker and its horse (in its own process group: a killed worker's horse lives on)."""
    for target in [pid, *children_of(pid, zombies=True)]:
        os.kill(target, signal.SIGKILL)


def status(rconn, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=rconn).get_status()


def runs(rconn, job_id: str) -> int:
    return int(rconn.get(f"executions:{job_id}") or 0)


def assert_masked(output: str) -> None:
    assert SECRET not in output, "a webhook URL was logged unmasked"


def test_a_job_whose_worker_is_killed_sends_its_failed_webhook_as_rqs_cleanup_does(
        start_worker, stock_worker, rconn, endpoint, tmp_path):  # noqa: F811 (the fixture)
    """kill -9 mid-job, then the end is decided outside the worker: by rq's abandoned-job cleanup
    under stock rq, by our restarted instance's recovery under ours. Each sends one failed webhook,
    of the same shape. Ours with Retry(max=1): the first recovery re-queues it (no webhook: not an
    end), the second finds no retry left and fails it (retries exhausted: one webhook)."""
    stock_queue = Queue("stock-hooks", connection=rconn)
    stock_job = stock_queue.enqueue(sleep_job, 60, job_id="stock-killed", webhooks=[failed_hook(endpoint, "stock")])
    stock = stock_worker("stock-hooks", "stock-hooks")
    wait_until(lambda: runs(rconn, stock_job.id) == 1, 15, what="the stock worker to start the job")
    kill_with_horse(stock.pid)
    stock.wait(5)
    StartedJobRegistry("stock-hooks", connection=rconn).cleanup(timestamp=time.time() + 3600)  # rq's maintenance
    assert status(rconn, stock_job.id) == JobStatus.FAILED
    (stock_payload,) = endpoint.posts("stock")

    env = {"RQ_QUEUES": "ours-hooks", "RQ_WITH_SCHEDULER": "no"}
    job = Queue("ours-hooks", connection=rconn).enqueue(sleep_job, 60, job_id="ours-killed",
                                                         retry=Retry(max=1), webhooks=[failed_hook(endpoint, "ours")])
    for attempt in (1, 2):  # the second start's recovery re-queues the job, which it then runs
        worker = start_worker("1", env=env)
        wait_until(lambda n=attempt: runs(rconn, job.id) == n, 20, what=f"execution {attempt} of the job")
        kill_with_horse(worker.pid)
        worker.wait(5)
        assert_masked(worker.output())
    assert endpoint.posts("ours") == [], "a job re-queued by the recovery has not ended: no webhook"
    restarted = start_worker("1", env=env)
    wait_until(lambda: status(rconn, job.id) == JobStatus.FAILED, 20, what="the recovery to fail the job")
    wait_until(lambda: endpoint.posts("ours"), 10, what="the failed webhook of our recovery")
    time.sleep(0.5)
    (payload,) = endpoint.posts("ours")
    assert "failed, no retries left" in restarted.output()
    assert_masked(restarted.output())

    assert set(payload) == set(stock_payload) == PAYLOAD_KEYS
    assert (payload["status"], payload["func_name"]) == (stock_payload["status"], stock_payload["func_name"]) \
        == ("failed", "testjobs.sleep_job")
    assert payload["job_id"] == job.id and stock_payload["job_id"] == stock_job.id
    assert payload["enqueued_at"] and payload["ended_at"] == stock_payload["ended_at"]
    assert "AbandonedJobError" in stock_payload["exc_info"] and "AbandonedJobError" in payload["exc_info"]
    assert payload["exc_info"] == Job.fetch(job.id, connection=rconn).latest_result().exc_string


def test_a_job_failed_by_fencing_sends_its_failed_webhook(start_worker, rconn, endpoint, tmp_path):
    """A worker killed with its horse and never restarted: another worker fences it and, with the
    default retry off, fails its job: one failed webhook, sent by the fencer."""
    env = {**FAST, "RQ_JOB_RETRY_MAX": "0"}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    dead = start_worker("1", notify=one, env=env)
    one.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 60, job_id="fenced-hook", webhooks=[failed_hook(endpoint, "f")])
    one.wait_for("STATUS=", contains="Running job fenced-hook")
    fencer = start_worker("2", notify=two, env=env)
    two.wait_for("READY=1")
    kill_with_horse(dead.pid)
    wait_until(lambda: endpoint.posts("f"), 20, what="the fencer's failed webhook")
    assert status(rconn, job.id) == JobStatus.FAILED
    (payload,) = endpoint.posts("f")
    assert payload["job_id"] == job.id and "was fenced by" in payload["exc_info"]
    assert "Fenced worker" in fencer.output()
    assert_masked(fencer.output())
    time.sleep(1)
    assert len(endpoint.posts("f")) == 1, "sent once"
    one.close()
    two.close()


@pytest.mark.parametrize("worker_class", ["fork", "spawn", "simple"])
def test_a_finished_job_and_a_cold_stops_cut_send_theirs(start_worker, notify, rconn, endpoint, worker_class):
    """Under each worker class: a job that returns sends its finished webhook (rq's own path, in the
    horse or the simple worker's process); a job cut by a cold stop (its RQ_SHUTDOWN_TIMEOUT passed)
    with no retry left is failed, runs its failure callback and sends its failed webhook, once,
    before the worker exits."""
    worker = start_worker("1", notify=notify, env={**FAST, "RQ_WORKER_CLASS": worker_class, "RQ_SHUTDOWN_TIMEOUT": "1",
                                                   "RQ_JOB_RETRY_MAX": "0"})
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    done = queue.enqueue(quick_job, 2, job_id=f"{worker_class}-ok",
                         webhooks=[Webhook(endpoint.url("ok"), "finished", method="POST"), failed_hook(endpoint, "ok")])
    wait_until(lambda: endpoint.posts("ok"), 15, what="the finished webhook")
    (finished,) = endpoint.posts("ok")
    assert finished == {"job_id": done.id, "func_name": "testjobs.quick_job", "status": "finished",
                        "enqueued_at": finished["enqueued_at"], "ended_at": finished["ended_at"]}
    assert finished["ended_at"] is not None
    cut = queue.enqueue(sleep_job, 60, job_id=f"{worker_class}-cut", webhooks=[failed_hook(endpoint, "cut")],
                        on_failure=Callback(note_failure))
    notify.wait_for("STATUS=", contains=f"Running job {cut.id}")
    wait_until(lambda: runs(rconn, cut.id) == 1, 10, what="the job function to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert status(rconn, cut.id) == JobStatus.FAILED
    (payload,) = endpoint.posts("cut")
    assert payload["job_id"] == cut.id and "RQ_SHUTDOWN_TIMEOUT" in payload["exc_info"]
    # its failure callback ran, as rq runs it for a job its cold stop abandoned (its cleanup's
    # AbandonedJobError), or with the JobInterrupted raised in a simple worker's job
    assert rconn.get(f"failure-callback:{cut.id}") == (b"JobInterrupted" if worker_class == "simple"
                                                       else b"AbandonedJobError")
    assert len(endpoint.posts("ok")) == 1
    assert_masked(worker.output())


def test_an_endpoint_down_or_slow_neither_delays_nor_changes_a_recovered_jobs_end(start_worker, rconn, endpoint,
                                                                                   tmp_path):
    """The restarted instance fails its predecessor's job and goes on to the next job while the job's
    webhooks go out, in turn as rq sends them: one to a closed port (refused), one to an endpoint
    slower than the webhook's timeout (3 s), then one that answers. The next job is done before the
    last webhook could be sent; each failure is logged with the URL masked; the job stays failed."""
    closed = free_port()
    env = {"RQ_WITH_SCHEDULER": "no", "RQ_JOB_RETRY_MAX": "0"}
    hooks = [Webhook(f"http://127.0.0.1:{closed}/down/{SECRET}?token={SECRET}", "failed", method="POST"),
             failed_hook(endpoint, "slow", timeout=3), failed_hook(endpoint, "last")]
    job = Queue(connection=rconn).enqueue(sleep_job, 60, job_id="slow-hooks", webhooks=hooks)
    worker = start_worker("1", env=env)
    wait_until(lambda: runs(rconn, job.id) == 1, 15, what="the job to start")
    kill_with_horse(worker.pid)
    worker.wait(5)
    notify = notify_socket(tmp_path, "restarted")
    restarted = start_worker("1", notify=notify, env=env)
    notify.wait_for("READY=1")
    assert status(rconn, job.id) == JobStatus.FAILED, "failed before the worker was ready"
    after = Queue(connection=rconn).enqueue(quick_job, 1, job_id="after-slow-hooks")
    wait_until(lambda: status(rconn, after.id) == JobStatus.FINISHED, 10, what="the next job")
    assert endpoint.posts("last") == [], "the webhooks held the worker up (or the slow one did not wait)"
    wait_until(lambda: endpoint.posts("last"), 10, what="the webhook after the slow one")
    output = restarted.output()
    assert_masked(output)
    assert f"Failed to send webhook to http://127.0.0.1:{closed}/*** for job {job.id}: URLError" in output
    assert f"Failed to send webhook to http://127.0.0.1:{endpoint.port}/*** for job {job.id}: " in output
    assert status(rconn, job.id) == JobStatus.FAILED
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(10) == 0
    notify.close()
