"""The parts that tell systemd how the worker is doing: its job counters and its status line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from redis import Redis

from ..connection import REDIS_ERRORS, Outage
from ..lifecycle import Lifecycle
from ..notify import Notifier
from . import Part, log
from .guard import RedisGuard
from .liveness import PrimaryFollower

COUNTS_VAR = "RQ_WORKER_SERVICE_COUNTS"
"""Environment variable carrying "done,failed" across a reload's re-exec."""


class Counters(Part):
    """The done/failed counts, read from the worker's Redis hash: in fork mode the horse updates them."""

    def __init__(self, connection: Redis, key: Callable[[], str], guard: RedisGuard, every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection
        self.key = key
        """The worker's hash (rq's ``worker.key``)."""
        self.guard = guard
        self.every = every
        """Seconds between two reads after jobs: one per status update (``Notifier.interval``), not per job."""
        self.clock = clock
        self.done = self.failed = 0
        self.next_read = 0.0

    def started(self) -> None:
        self.guard.call(self.carry)
        self.refresh()

    def tick(self, main_loop: bool) -> None:
        if main_loop:
            self.refresh()  # (after a burst of jobs the last update may have skipped it)

    def job_ended(self) -> None:
        if self.clock() >= self.next_read:
            self.next_read = self.clock() + self.every
            self.refresh()

    def refresh(self) -> None:
        try:
            done, failed = self.connection.hmget(self.key(), ["successful_job_count", "failed_job_count"])
        except REDIS_ERRORS:
            return
        self.done, self.failed = int(done or 0), int(failed or 0)

    @property
    def job_counts(self) -> tuple[int, int]:
        """(done, failed) so far; a reload hands them to the re-executed process (COUNTS_VAR)."""
        self.refresh()  # (STATUS= reads them at most once per second)
        return self.done, self.failed

    def carry(self) -> None:
        """Continue the counters of the process this one re-executed from: rq's registration starts
        the worker's hash afresh, and ``systemctl status`` would show "0 done" after every reload."""
        carried = os.environ.pop(COUNTS_VAR, "").split(",")
        if len(carried) == 2 and all(n.isdigit() for n in carried):  # another version's form: start at 0
            done, failed = carried
            self.connection.hset(self.key(), mapping={"successful_job_count": done, "failed_job_count": failed})


SUSPENDED = "Suspended (rq suspend)"
"""STATUS= while the workers are suspended: ``rq resume`` (or the end of ``rq suspend --duration``) resumes them."""


class StatusReporter(Part):
    """STATUS= (what ``systemctl status`` shows): after each tick, and soon after each job's start and end."""

    def __init__(self, notifier: Notifier, lifecycle: Lifecycle, outage: Outage, counters: Counters,
                 follower: PrimaryFollower, name: str, queue_names: Callable[[], list[str]],
                 suspended: Callable[[], bool] = lambda: False) -> None:
        self.notifier = notifier
        self.lifecycle = lifecycle
        self.outage = outage
        self.counters = counters
        self.follower = follower
        self.name = name
        self.queue_names = queue_names
        self.suspended = suspended
        """Whether the worker waits while ``rq suspend`` holds."""

    def text(self) -> str:
        counts = f"{self.counters.done} done, {self.counters.failed} failed"
        idle = SUSPENDED if self.suspended() else "Idle, listening on " + ", ".join(self.queue_names())
        primary = f" · primary {self.follower.primary}" if self.follower.primary else ""
        return f"{self.outage.status() or self.lifecycle.status(idle)}{primary} · {counts}"

    def send(self) -> None:
        self.notifier.status(self.text())

    def started(self) -> None:
        self.notifier.ready(self.text())
        log.info("Ready: worker %s listening on %s", self.name, ", ".join(self.queue_names()))

    def tick(self, main_loop: bool) -> None:
        self.send()

    def job_started(self) -> None:
        self.notifier.status_soon(self.text)

    def job_ended(self) -> None:
        self.notifier.status_soon(self.text)
