"""Recycling an instance in place: after RQ_MAX_JOBS jobs (rq's --max-jobs), or after a job that took
more resident memory than RQ_MAX_MEMORY (Celery's max-memory-per-child).

Where rq's worker exits (and systemd would count a restart, or leave the instance dead), the worker
asks itself for a reload (``Lifecycle.request_recycle``) once the job is over: rq's loop ends before
its next pop, and ``run`` re-executes the process in place, as after SIGHUP: same PID (systemd's
MAINPID), RELOADING=1 then READY=1, no failure and no restart counted. As a reload runs ``run
--check`` first, a recycle first runs it too, in a fresh process (``check``: ``startcheck``): an env
file edited into an invalid state without a reload, or an app deploy that broke what the worker
imports from it, would fail the new process (exit 78, which systemd does not restart); the worker
goes on in this process instead, says why once, and asks again after each job.

Memory: the larger of the worker process's peak resident size (VmHWM; a re-exec starts it afresh)
and, in fork and spawn mode, the peak of the job's work horse (``ru_maxrss`` from the ``wait4`` rq
reaps it with). Peaks, not sizes after the job: a job's large buffers go back to the system when it
frees them, and a size read afterwards misses the job that nearly reached MemoryMax=. A simple
worker runs its jobs in its own process, where what they leave behind stays; a horse ends with its
job, but it starts as a copy of the worker (fork), and is where a job's memory shows: one rule for
the three classes, in the terms of the unit's MemoryMax=, which counts them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..lifecycle import Lifecycle
from . import Part, log

STATUS_FILE = Path("/proc/self/status")


def peak_resident_bytes(status: Path = STATUS_FILE) -> int | None:
    """This process's peak resident size (VmHWM), or None where /proc does not say."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def size_text(size: int) -> str:
    """``512M``, ``1.5G``: sizes as RQ_MAX_MEMORY is written."""
    for unit, factor in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return str(size)


class Recycler(Part):
    """Counts the jobs this process took and measures its memory after each; once RQ_MAX_JOBS is
    reached or RQ_MAX_MEMORY passed, asks for the recycle (``stop_loop``: rq's loop takes no other job)."""

    def __init__(self, lifecycle: Lifecycle, max_jobs: int | None, max_memory: int | None,
                 stop_loop: Callable[[], None], resident: Callable[[], int | None] = peak_resident_bytes) -> None:
        self.lifecycle = lifecycle
        self.max_jobs = max_jobs
        self.max_memory = max_memory
        self.stop_loop = stop_loop
        self.resident = resident
        self.jobs = 0
        """Jobs taken by this process (rq's ``completed_jobs``); a recycle starts again from 0."""
        self.horse_peak: int | None = None
        """The last job's horse at its peak, in bytes (fork and spawn mode)."""
        self.check: Callable[[], str | None] = lambda: None
        """Why a start now would fail, one line (``startcheck.start_problem``): then no recycle, until it passes."""
        self.refused: str | None = None
        """The problem last told, so that it is told once, not after every job."""

    def horse_ended(self, max_rss_kib: int) -> None:
        """rq reaped the job's horse; ``max_rss_kib`` is its ``ru_maxrss`` (KiB on Linux)."""
        self.horse_peak = max(self.horse_peak or 0, max_rss_kib * 1024)

    def job_started(self) -> None:
        self.horse_peak = None

    def job_ended(self) -> None:
        self.jobs += 1
        reason = self.reason()
        if reason is None or self.lifecycle.stopping:
            return
        problem = self.check()
        if problem is not None:
            if problem != self.refused:
                log.error("Not recycling (%s): a start now would fail: %s; fix it (a reload would refuse it too); "
                          "the worker goes on and tries again after each job", reason, problem)
            self.refused = problem
            return
        if self.lifecycle.request_recycle(reason):
            log.info("Recycling this worker after its job: %s", reason)
            self.stop_loop()

    def reason(self) -> str | None:
        if self.max_jobs is not None and self.jobs >= self.max_jobs:
            return f"{self.jobs} job{'s' if self.jobs > 1 else ''} done, RQ_MAX_JOBS={self.max_jobs}"
        if self.max_memory is None:
            return None
        sizes = {"the worker at its peak": self.resident(), "the job's work horse at its peak": self.horse_peak}
        who, size = max(((who, size) for who, size in sizes.items() if size is not None),
                        key=lambda item: item[1], default=(None, None))
        if size is not None and size > self.max_memory:
            return f"{who} took {size_text(size)}, RQ_MAX_MEMORY={size_text(self.max_memory)}"
        return None
