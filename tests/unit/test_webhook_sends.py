"""The masking of webhook URLs in the log (``config.mask_webhook_url``, ``journal.WebhookUrlFilter``); the
package's own sends: ``test_aftermath``."""

from __future__ import annotations

import logging
import urllib.error

import pytest

from rq_worker_service import journal
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
