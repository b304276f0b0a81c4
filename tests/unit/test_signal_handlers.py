"""Our signal handlers act only in the worker's own process; a forked child gets the default action."""

from __future__ import annotations

import os
import signal
import time

import fakeredis
import pytest
from rq import Queue

from rq_worker_service.config import load_settings
from rq_worker_service.lifecycle import Phase
from rq_worker_service.notify import Notifier
from rq_worker_service.worker_classes import ServiceSimpleWorker, ServiceWorker


@pytest.fixture
def worker():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    w = ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}), notifier=Notifier())
    w._install_signal_handlers()
    yield w
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_forked_child_that_inherited_our_handlers_dies_of_the_signal(worker, sig):
    """Like the scheduler process just after its fork, or a worker pool's new worker: rq's handlers end
    such a child (they raise); ours only record, so without the fallback the child ran on forever."""
    pid = os.fork()
    if pid == 0:  # the child: no handlers of its own yet
        os.kill(os.getpid(), sig)
        time.sleep(5)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig, f"child exited with status {status}"


def test_in_the_workers_own_process_a_signal_is_recorded(worker):
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.parts.lifecycle.phase is Phase.STOPPING
    assert worker._stop_requested


def test_a_direct_call_is_handled_too(worker):
    """rq's tests (and rq's pool) call request_stop/request_force_stop directly, not as a handler."""
    fresh = ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}),
                          notifier=Notifier())
    fresh.request_stop(signal.SIGINT, None)
    assert fresh.parts.lifecycle.phase is Phase.STOPPING


def test_the_rule_survives_running_jobs():
    """Running a job must not reset whose handlers they are (an earlier version did, in execute_job)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        connection = fakeredis.FakeRedis()
        Queue(connection=connection).enqueue("os.getpid")
        w = ServiceSimpleWorker(["default"], connection=connection, settings=load_settings({}), notifier=Notifier())
        assert w.work(burst=True)
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, f"child exited with status {status}"
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
