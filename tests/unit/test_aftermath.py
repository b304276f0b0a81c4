"""A rescued job's aftermath (``aftermath``): its failure callback, the app's exception handlers and its failed
webhooks, on a thread of their own in rq's order, and the bounded, pinging wait for them as the process leaves."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
from rq import Callback, Queue, Webhook
from rq.timeouts import JobTimeoutException

from rq_worker_service import aftermath, webhooks

calls: list[str] = []
pings: list[float] = []
release = threading.Event()


def callback(job, connection, exc_type, exc_value, tb):
    calls.append(f"callback:{exc_type.__name__}")


def slow_callback(job, connection, exc_type, exc_value, tb):
    calls.append("slow callback started")
    for _ in range(50):  # (the timer's exception lands between two Python steps, not inside one sleep)
        time.sleep(0.1)
    calls.append("slow callback ended")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    calls.clear()
    pings.clear()
    release.clear()
    monkeypatch.setattr(Webhook, "send", lambda self, job, exc_string=None: calls.append(f"webhook:{self.url}"))
    aftermath.configure(lambda: pings.append(time.monotonic()), 10.0)
    before = set(threading.enumerate())
    yield
    release.set()
    aftermath.drain()
    # A thread that a test's drain gave up on (its limit) runs on once released: it is joined here, or it
    # appended its steps to the next tests' ``calls`` (seen in CI, two tests later, under load).
    for thread in set(threading.enumerate()) - before:
        thread.join(15)
    aftermath.configure(lambda: None, aftermath.DEFAULT_LIMIT)


def job_with(**kwargs):
    return Queue("q", connection=fakeredis.FakeRedis()).enqueue("os.getpid", **kwargs)


def handler(name: str, *, raises: bool = False, waits: bool = False):
    def handle(job, exc_type, exc_value, tb):
        if waits:
            release.wait(10)
        calls.append(f"{name}:{exc_type.__name__}")
        if raises:
            raise RuntimeError(name)
    return handle


def test_the_rescuer_does_not_wait_and_the_steps_run_in_rqs_order():
    """Without the thread, ``follow`` would return only once the handler that waits for ``release`` ended."""
    job = job_with(on_failure=Callback(callback), webhooks=[Webhook("http://h/f", "failed"),
                                                             Webhook("http://h/ok", "finished")])
    start = time.monotonic()
    thread = aftermath.follow(job, [handler("slow", waits=True)], "AbandonedJobError: gone")
    assert time.monotonic() - start < 3.0 and thread.is_alive()  # (the handler waits 10 s for release)
    release.set()
    assert aftermath.drain() == 0
    assert calls == ["callback:AbandonedJobError", "slow:AbandonedJobError", "webhook:http://h/f"], calls


def test_a_handler_that_raises_is_logged_and_the_rest_goes_on(caplog):
    job = job_with(webhooks=[Webhook("http://h/f", "failed")])
    aftermath.follow(job, [handler("bad", raises=True)], "AbandonedJobError: gone")
    other = job_with()
    aftermath.follow(other, [handler("good")], "AbandonedJobError: gone")
    assert aftermath.drain() == 0
    assert sorted(calls) == ["bad:AbandonedJobError", "good:AbandonedJobError", "webhook:http://h/f"]
    assert f"an exception handler raised for job {job.id} during recovery" in caplog.text


def test_a_requeued_job_runs_its_callback_and_handlers_and_sends_no_webhook():
    job = job_with(on_failure=Callback(callback), webhooks=[Webhook("http://h/f", "failed")])
    aftermath.follow(job, [handler("h")], None)
    aftermath.drain()
    assert calls == ["callback:AbandonedJobError", "h:AbandonedJobError"]


def test_drain_pings_while_it_waits_and_gives_up_at_its_limit_naming_each_unsent_webhook(caplog):
    """Without the keep-alive a reload's wait left systemd's watchdog unpinged; without the limit, a handler
    that never returns kept the process from leaving."""
    aftermath.configure(lambda: pings.append(time.monotonic()), 1.6)
    url = "https://h.example/hook/s3cr3t?token=s3cr3t"
    job = job_with(webhooks=[Webhook(url, "failed"), Webhook("http://h/second", "failed")])
    aftermath.follow(job, [handler("stuck", waits=True)], "AbandonedJobError: gone")
    start = time.monotonic()
    assert aftermath.drain() == 1
    assert 1.4 < time.monotonic() - start < 5.0  # (the limit 1.6 s; the stuck handler waits 10 s)
    gaps = [b - a for a, b in zip([start, *pings], [*pings, time.monotonic()], strict=False)]
    assert len(pings) >= 2 and max(gaps) < 2.5, gaps
    lines = [r.getMessage() for r in caplog.records if "was not sent" in r.getMessage()]
    assert lines == [f"Job {job.id}: its failed webhook to https://h.example/*** was not sent: this process left "
                     "before it (past the webhooks' timeouts or RQ_SHUTDOWN_TIMEOUT)",
                     f"Job {job.id}: its failed webhook to http://h/*** was not sent: this process left before it "
                     "(past the webhooks' timeouts or RQ_SHUTDOWN_TIMEOUT)"], lines
    assert "s3cr3t" not in caplog.text


def test_drain_gives_up_on_webhooks_past_their_own_timeouts(monkeypatch):
    """An endpoint that trickles its reply: the wait ends at the sends' timeouts, not at the (long) limit."""
    monkeypatch.setattr(webhooks, "MARGIN", 0.0)
    monkeypatch.setattr(Webhook, "send", lambda self, job, exc_string=None: release.wait(10))
    aftermath.configure(lambda: None, 30.0)
    aftermath.follow(job_with(webhooks=[Webhook("http://h/f", "failed", timeout=1)]), [], "x")
    start = time.monotonic()
    assert aftermath.drain() == 1
    assert 0.8 < time.monotonic() - start < 6.0  # (the timeout 1 s; the limit 30 s, the send 10 s)


def test_the_callback_keeps_its_time_limit_off_the_main_thread():
    """rq's SIGALRM limit cannot be set off the main thread (signal.signal raises there): the callback would
    raise ValueError at once, or, without any limit, run its 5 s."""
    job = job_with(on_failure=Callback(slow_callback, timeout=1))
    start = time.monotonic()
    aftermath.follow(job, [], "x")
    assert aftermath.drain() == 0
    assert time.monotonic() - start < 4.0 and calls == ["slow callback started"], calls  # (5 s unlimited)


def test_the_thread_limit_leaves_rqs_job_timeout_message_alone():
    """rq's TimerDeathPenalty sets the message of the class it is given, process-wide: given JobTimeoutException
    itself, a later job timeout of the main thread's SIGALRM limit would show the callback's limit instead."""
    with pytest.raises(JobTimeoutException, match=r"\(1 seconds\)"), aftermath.ThreadDeathPenalty(1):
        for _ in range(30):
            time.sleep(0.1)
    assert str(JobTimeoutException("Task exceeded maximum timeout value (7 seconds)")).endswith("(7 seconds)")


def test_settle_waits_for_the_callbacks_and_handlers_pinging_and_not_for_the_webhooks(monkeypatch):
    """The start-up's wait: the instance takes no job while the app's code handles a rescued one (without
    ``settle`` the handler has not run yet when it returns); a slow endpoint does not hold the start."""
    monkeypatch.setattr(Webhook, "send", lambda self, job, exc_string=None: release.wait(10))

    def late_handler(job, exc_type, exc_value, tb):
        time.sleep(1.2)
        calls.append("handled")

    aftermath.follow(job_with(webhooks=[Webhook("http://h/f", "failed")]), [late_handler], "x")
    start = time.monotonic()
    aftermath.settle()
    assert calls == ["handled"] and time.monotonic() - start < 6.0 and len(pings) >= 2  # (the send waits 10 s)
