"""rq's scheduler, run under the worker's stable name and taken over quickly after a crash.

rq names each scheduler with a random id, so a restarted instance must wait for its predecessor's
lock to expire, and a worker without the lock tries again only at maintenance (10 minutes). Ours
runs under the worker's name: rq's lock script refreshes a lock whose owner token matches, so the
restarted instance takes it back at once; and an instance without the lock tries every
``RETRY_INTERVAL`` seconds from its tick.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

from rq.scheduler import RQScheduler

from .connection import CLUSTER_MOVED_ERRORS, REDIS_ERRORS
from .process import die_with_parent

RETRY_INTERVAL = 15.0
"""Seconds between attempts to take over scheduling (rq itself retries only every 10 minutes)."""


class ServiceScheduler(RQScheduler):
    """rq's scheduler process, named after its worker and tied to its life."""

    def start(self) -> Any:
        self._parent_pid = os.getpid()
        return super().start()

    def work(self) -> None:
        """rq's loop (``RQScheduler.work``), with a pause that a stop ends at once: rq sleeps its
        interval (1 s) out first, and the worker's teardown waits for the scheduler to exit, so
        every idle ``systemctl stop`` took about a second."""
        die_with_parent(self._parent_pid)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._install_signal_handlers()
        try:
            self.register_birth()
            while not self._stop_requested:
                if self.should_reacquire_locks:
                    self.acquire_locks()
                self.heartbeat()
                self.enqueue_scheduled_jobs()
                select.select([self._wake_r], [], [], self.interval)  # (retried after a handler: PEP 475)
        except CLUSTER_MOVED_ERRORS as exc:
            # The worker leaves with the one line (exit 69) on its next command; rq's would add a traceback.
            self.log.warning("Scheduler: the cluster node no longer serves these queues (%s %s); stopping",
                             exc.status_code, exc)
            return  # its locks expire; the restarted worker's scheduler takes them on the new owner
        self.stop()

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        super().request_stop(signum, frame)
        os.write(self._wake_w, b".")  # ends the pause: the loop then stops


def start_scheduler(worker: Any, logging_level: str | None, date_format: str, log_format: str) -> ServiceScheduler:
    """What rq's ``_start_scheduler`` does outside burst mode, with a ``ServiceScheduler``."""
    scheduler = ServiceScheduler(worker.queues, connection=worker.connection, logging_level=logging_level or "INFO",
                                 date_format=date_format, log_format=log_format, serializer=worker.serializer,
                                 name=worker.name)
    scheduler.acquire_locks()
    if scheduler.acquired_locks:
        scheduler.start()
    return scheduler


class Takeover:
    """Retry taking the scheduler locks every ``RETRY_INTERVAL`` while our scheduler is not running."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last = clock()

    def tick(self, scheduler: RQScheduler | None) -> None:
        if scheduler is None or self.clock() - self._last < RETRY_INTERVAL:
            return
        self._last = self.clock()
        process = scheduler._process
        if process is None or not process.is_alive():
            try:
                scheduler.acquire_locks(auto_start=True)
            except REDIS_ERRORS:
                pass  # the next tick tries again
