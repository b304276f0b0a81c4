"""The simple worker's watch thread: rq's loop has no hook while a job runs in the main thread.

It ticks while a job is in hand, alive (watchdog pings, fencing beats, rq's heartbeats of the job)
only until the job's own timeout (plus rq's 60 s grace) has passed: a job stuck beyond the limit
that rq's SIGALRM could not end (e.g. hung in C code) stops the pings, and systemd restarts the
instance. Jobs without a timeout (-1) cannot be watched that way: they stay alive. The thread
lives as long as the worker (one per job cost a thread start and join on every job) and ticks only
while a job is in hand; between jobs the main loop ticks, so the two never tick at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from . import Part


class JobWatch(Part):
    """Ticks (``tick(alive)``, never as the main loop) every ``interval`` seconds while a job is watched."""

    def __init__(self, tick: Callable[[bool], None], interval: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.service_tick = tick
        self.interval = interval
        self.clock = clock
        self.watched: tuple[float, float | None] | None = None
        """(start, limit) of the job in hand."""
        self.job: Any = None
        """The job in hand (rq's Job), for the worker's tick to keep it alive."""
        self.thread: threading.Thread | None = None
        self.lock, self.wake = threading.Lock(), threading.Event()

    def watch(self, timeout: float | None, job: Any = None) -> None:
        """A job with this timeout (None or -1: none) starts now."""
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="job-watch", daemon=True)
            self.thread.start()
        self.job = job
        self.watched = (self.clock(), None if timeout in (None, -1) else float(timeout) + 60)

    def unwatch(self) -> None:
        with self.lock:  # a tick in progress ends before the main loop goes on
            self.watched = self.job = None

    def woken(self) -> None:
        self.wake.set()

    def run(self) -> None:
        while True:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.tick_once()

    def tick_once(self) -> None:
        with self.lock:
            if self.watched is None:
                return
            started, limit = self.watched
            self.service_tick(limit is None or self.clock() - started < limit)
