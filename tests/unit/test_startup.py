"""Signals during start-up, before the worker's own handlers exist: recorded, then acted on (``startup``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rq_worker_service.startup import SIGNALS, EarlySignals, StartupStopped


@pytest.fixture
def early():
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    signals = EarlySignals()
    signals.install()
    yield signals
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signals_are_only_recorded_outside_a_wait(early):
    os.kill(os.getpid(), signal.SIGHUP)
    assert not early.stop_requested
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGHUP)
    assert early.stop_requested and early.names() == "SIGHUP, SIGTERM"


def test_a_stop_ends_a_wait_at_once_and_a_reload_does_not(early):
    with early.wait():
        os.kill(os.getpid(), signal.SIGHUP)
    with pytest.raises(StartupStopped), early.wait():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the wait went on after the stop")
    with pytest.raises(StartupStopped), early.wait():  # a stop that came before the wait
        pytest.fail("the wait began after a stop")
    os.kill(os.getpid(), signal.SIGINT)  # outside a wait again: recorded only
    assert early.names() == "SIGHUP, SIGTERM, SIGINT"


def test_a_stop_swallowed_inside_a_wait_still_ends_its_next_pause(early, monkeypatch):
    """The wait for Redis logs a line and sends STATUS= before each pause; a stop landing in either (logging's
    emit, sdnotify's send: both catch every Exception) lost its StartupStopped, and the worker waited out
    RQ_REDIS_STARTUP_WAIT, then exited 69 instead of 0. The pause looks at what was recorded."""
    import time

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with pytest.raises(StartupStopped), early.wait():
        early.sleep(1.0)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except StartupStopped:
            pass  # what sdnotify and logging do with it
        early.sleep(2.0)
        pytest.fail("the wait went on after the stop")
    assert slept == [1.0]


def test_hand_over_gives_each_signal_to_the_handler_installed_since_in_order_once(early):
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)
    got: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: got.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    early.hand_over()
    early.hand_over()
    assert got == [signal.SIGHUP, signal.SIGTERM]


def test_a_signal_during_a_re_execution_waits_for_the_new_process():
    """``block`` before execve: a SIGHUP that comes then reaches the new process's ``early``
    instead of killing it before it could install it."""
    new = "from rq_worker_service.startup import early; early.install(); print(early.names())"
    old = ("import os, signal, sys; from rq_worker_service import startup; startup.block(); "
           f"os.kill(os.getpid(), signal.SIGHUP); os.execv(sys.executable, [sys.executable, '-c', {new!r}])")
    out = subprocess.run([sys.executable, "-c", old], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "SIGHUP"), out
