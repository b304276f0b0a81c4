"""The parts that act on a stop or reload the signal handlers recorded in the ``Lifecycle``:
announce it (systemd, the log, rq's worker hash) and cut the job once it is due."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from rq.utils import now

from ..connection import REDIS_ERRORS
from ..lifecycle import Lifecycle, Phase
from ..notify import Notifier
from . import Part, log

STOP_GRACE = 15.0
"""Seconds of stop timeout we ask systemd for beyond the next tick: room for a cold shutdown."""


class RqStop(Protocol):
    """What of rq's worker a warm stop touches, as rq's own stop would."""

    scheduler: Any
    _shutdown_requested_date: datetime | None

    def set_shutdown_requested_date(self) -> None: ...

    def stop_scheduler(self) -> None: ...


class StopAnnouncer(Part):
    """Tells systemd and the log, once, that a stop or a reload began; a warm stop with a job in
    hand is written to rq's worker hash, and rq's scheduler stops (another instance may take over)."""

    def __init__(self, lifecycle: Lifecycle, notifier: Notifier, status: Callable[[], str], worker: RqStop) -> None:
        self.lifecycle = lifecycle
        self.notifier = notifier
        self.status = status
        self.worker = worker

    def tick(self, main_loop: bool) -> None:
        self.announce()

    def teardown(self) -> None:
        self.announce()  # a stop that ended the pop had no tick after it

    def announce(self) -> None:
        phase = self.lifecycle.take_announcement()
        job = self.lifecycle.job.label if self.lifecycle.job else None
        if phase is Phase.STOPPING:
            if job is None:
                log.info("Warm shutdown: idle, exiting")
            else:
                log.info("Warm shutdown: taking no new job; waiting up to %gs (RQ_SHUTDOWN_TIMEOUT) for job %s",
                         self.lifecycle.shutdown_timeout, job)
                self.worker._shutdown_requested_date = now()
                try:
                    self.worker.set_shutdown_requested_date()
                except REDIS_ERRORS:
                    pass  # the stop timeout is extended by the tick that follows, which sees the deadline
            self.notifier.stopping(self.status())
            if self.worker.scheduler:
                self.worker.stop_scheduler()  # as rq does: another instance may take scheduling over
        elif phase is Phase.RELOADING and self.lifecycle.recycle_reason:
            log.info("Recycling in place (%s)", self.lifecycle.recycle_reason)
            self.notifier.reloading(self.status())
        elif phase is Phase.RELOADING:
            log.info("Reload requested: %s", f"finishing job {job} first" if job else "now")
            self.notifier.reloading(self.status())


class Cutter(Part):
    """Cuts the job in hand once the ``Lifecycle`` says so (its stop deadline passed, or a second
    stop came), and keeps systemd's stop timeout ahead of the deadline meanwhile."""

    def __init__(self, lifecycle: Lifecycle, notifier: Notifier, stop_job: Callable[[], None], interval: float) -> None:
        self.lifecycle = lifecycle
        self.notifier = notifier
        self.stop_job = stop_job
        self.interval = interval
        """Seconds to the next tick, which extends the timeout again."""

    def tick(self, main_loop: bool) -> None:
        reason = self.lifecycle.take_cut()
        if reason is not None:
            log.warning("Cold shutdown: job %s %s; stopping it", self.lifecycle.job and self.lifecycle.job.label,
                        reason)
            self.stop_job()
        if self.lifecycle.deadline is not None:
            self.notifier.extend_timeout(self.interval + STOP_GRACE)
