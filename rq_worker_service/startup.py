"""Signals that come while the worker starts, before its own handlers exist.

``run`` installs these first. Without them SIGHUP and SIGTERM took their default action during
start-up (reading the configuration, waiting for Redis, re-queuing the predecessor's jobs): the
process died wherever it was, and systemd counts a death by either signal as a clean exit, so
nothing restarted it. Like the worker's own handlers (gunicorn's arbiter), these only record, and
``run`` acts on what they recorded:

* A stop (SIGTERM, SIGINT) ends the start-up with exit 0 and no job taken: at once while waiting
  for Redis (nothing is held there), otherwise at the next safe point, so a rescue of the
  predecessor's jobs is never left half-done.
* A reload (SIGHUP), and a stop that came after the last safe point, go to the worker's own
  handlers as soon as they are installed (``hand_over``, first thing in ``bootstrap``): the worker
  comes up and then reloads, re-reading its files, as on any SIGHUP (or stops before its first pop).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOPS = (signal.SIGTERM, signal.SIGINT)
SIGNALS = (*STOPS, signal.SIGHUP)


class StartupStopped(Exception):
    """A stop came while the start-up was waiting (for Redis)."""


class EarlySignals:
    """Records the start-up's signals; ``run`` asks ``stop_requested`` at its safe points."""

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        """What came, in order, each signal once."""
        self.waiting = False

    def install(self) -> None:
        """Record from now on; what came while a reload's re-execution blocked them (``block``) is
        delivered here, to ``record``."""
        for sig in SIGNALS:
            signal.signal(sig, self.record)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def record(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig not in self.received:
            self.received.append(sig)
        if self.waiting and sig in STOPS:
            raise StartupStopped(sig.name)

    @property
    def stop_requested(self) -> bool:
        return any(sig in STOPS for sig in self.received)

    def names(self) -> str:
        return ", ".join(sig.name for sig in self.received)

    @contextmanager
    def wait(self) -> Iterator[None]:
        """A wait that a stop ends at once (``StartupStopped``): nothing may be held in it."""
        self._raise_if_stopped()
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False

    def sleep(self, seconds: float) -> None:
        """A pause of a wait (``wait``): ended at once by a stop, also one whose StartupStopped a library
        swallowed (sdnotify's send, logging's emit: the wait's status and log line come just before)."""
        self._raise_if_stopped()
        time.sleep(seconds)

    def _raise_if_stopped(self) -> None:
        if self.stop_requested:
            raise StartupStopped(self.names())

    def hand_over(self) -> None:
        """The worker's own handlers are installed: each signal that came meanwhile goes to its
        handler now, in the order they came, once."""
        received, self.received = self.received, []
        for sig in received:
            handler = signal.getsignal(sig)
            if callable(handler) and handler != self.record:
                handler(sig, None)


def block() -> None:
    """Hold these signals pending across a re-execution in place (the mask survives execve): the
    new process would otherwise take their default action until it installs ``early``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


early = EarlySignals()
"""The process's one instance: ``run`` installs it, the worker's ``bootstrap`` hands over from it."""
