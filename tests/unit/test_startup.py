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
