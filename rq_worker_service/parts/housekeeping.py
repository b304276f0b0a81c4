"""The parts that look after more than this worker between its jobs: rq's scheduler, and jobs
workers popped but never started (this worker's own held list, dead workers' held lists, and the
intermediate lists of stock rq workers sharing the queues)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from rq.scheduler import RQScheduler

from ..held import Held, put_back_dead
from ..lifecycle import Lifecycle
from ..orphans import IntermediateWatch
from ..scheduling import Takeover
from . import Part, log


class SchedulerTakeover(Part):
    """Takes scheduling over (``scheduling.Takeover``) from the main loop's ticks, unless stopping."""

    def __init__(self, takeover: Takeover, lifecycle: Lifecycle, scheduler: Callable[[], RQScheduler | None]) -> None:
        self.takeover = takeover
        self.lifecycle = lifecycle
        self.scheduler = scheduler
        """The worker's scheduler (rq's ``worker.scheduler``), None without one."""

    def tick(self, main_loop: bool) -> None:
        if main_loop and not self.lifecycle.stopping:
            self.takeover.tick(self.scheduler())


class OrphanSweep(Part):
    """Puts jobs back that a worker popped and never started (``orphans``)."""

    def __init__(self, watch: IntermediateWatch) -> None:
        self.watch = watch

    def sweep(self) -> None:
        self.watch.sweep()


class HeldJobs(Part):
    """This worker's held list (``held``): what its previous run held goes back to the front of its
    queues at start-up, and what it holds when it leaves likewise; between jobs it puts back the
    held lists of workers that are gone."""

    def __init__(self, held: Held) -> None:
        self.held = held

    def started(self) -> None:
        self.held.join()
        if self.held.put_back():
            log.warning("Put back the job(s) this worker's previous run had popped and not started")

    def sweep(self) -> None:
        put_back_dead(self.held.connection, self.held.name, self.held.classes)

    def teardown(self) -> None:
        try:
            self.held.leave()
        except redis.exceptions.RedisError as exc:  # down, or MOVED: left for the next start or another's sweep
            log.warning("Could not put back the job this worker had popped (%s): its next start will, or another "
                        "worker once this one is gone", exc)
