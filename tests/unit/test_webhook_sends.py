"""The package's own webhook sends (``webhooks``) and the masking of webhook URLs in the log
(``config.mask_webhook_url``, ``journal.WebhookUrlFilter``)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error

import pytest
from rq import Webhook

from rq_worker_service import journal, webhooks
from rq_worker_service.config import mask_webhook_url


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/services/T0/B0/XYZ", "https://hooks.example.com/***"),
    ("https://h.example/hook?token=abc", "https://h.example/***"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://user:pass@h.example/x", "https://***@h.example/***"),
    ("http://h.example/#frag", "http://h.example/***"),
    ("http://[::1]:99/a?b=c", "http://[::1]:99/***"),
    ("http://h:99999/x", "***"),
    ("no url at all", "***"),
])
def test_a_webhook_url_shows_its_scheme_and_host_only(url, shown):
    assert mask_webhook_url(url) == shown


def record(msg: str, args: tuple, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("rq.webhook", logging.WARNING, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize("exc", [urllib.error.URLError("timed out"), ValueError("bad /hook/s3cr3t in it")])
def test_rqs_failed_send_line_is_masked_and_its_traceback_one_line(exc):
    url = "https://h.example/hook/s3cr3t?token=s3cr3t"
    line = record("Failed to send webhook to %s for job %s", (url, "j1"), exc)
    assert journal.WebhookUrlFilter().filter(line)
    text = logging.Formatter().format(line)
    assert "s3cr3t" not in text, text
    assert text.startswith(f"Failed to send webhook to https://h.example/*** for job j1: {type(exc).__name__}")
    assert "Traceback" not in text


def test_rqs_debug_line_before_a_send_is_masked_and_other_lines_untouched():
    line = record("Job %s: sending %s webhook to %s", ("j1", "failed", "http://h/s3cr3t"))
    journal.WebhookUrlFilter().filter(line)
    assert line.getMessage() == "Job j1: sending failed webhook to http://h/***"
    other = record("Job %s: %s", ("j1", "http://h/s3cr3t"))
    journal.WebhookUrlFilter().filter(other)
    assert other.getMessage() == "Job j1: http://h/s3cr3t"


class FakeJob:
    id = "j1"

    def __init__(self, hooks: list[Webhook], delay: float = 0.0) -> None:
        self.webhooks = hooks
        self.delay = delay
        self.calls: list[tuple[str, str | None]] = []

    def send_webhooks(self, status: str, *, exc_string: str | None = None) -> None:
        time.sleep(self.delay)
        self.calls.append((getattr(status, "value", status), exc_string))


def test_send_failed_does_not_wait_and_drain_waits_up_to_the_timeouts():
    job = FakeJob([Webhook("http://h/a", "failed", timeout=1), Webhook("http://h/b", "finished")], delay=0.3)
    start = time.monotonic()
    thread = webhooks.send_failed(job, "AbandonedJobError: gone")  # type: ignore[arg-type]
    assert isinstance(thread, threading.Thread) and time.monotonic() - start < 0.1
    assert webhooks.drain() == 0
    assert job.calls == [("failed", "AbandonedJobError: gone")]
    assert webhooks.send_failed(FakeJob([Webhook("http://h/b", "finished")]), "x") is None  # type: ignore[arg-type]


def test_drain_gives_up_on_a_send_past_its_timeout(monkeypatch, caplog):
    monkeypatch.setattr(webhooks, "MARGIN", 0.0)
    job = FakeJob([Webhook("http://h/a", "failed", timeout=1)], delay=3)
    webhooks.send_failed(job, "x")  # type: ignore[arg-type]
    start = time.monotonic()
    assert webhooks.drain() == 1
    assert 0.8 < time.monotonic() - start < 1.5
    assert "Left 1 job webhook send(s) unfinished" in caplog.text
