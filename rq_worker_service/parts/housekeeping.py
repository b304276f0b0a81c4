"""The parts that look after more than this worker between its jobs: rq's scheduler, and jobs
other workers popped but never started."""

from __future__ import annotations

from collections.abc import Callable

from rq.scheduler import RQScheduler

from ..lifecycle import Lifecycle
from ..orphans import IntermediateWatch
from ..scheduling import Takeover
from . import Part


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
