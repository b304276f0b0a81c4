"""What the worker has been asked to do, and when: run, reload, stop, cut the running job.

This is the worker's stop/reload/cut logic as a small, pure state object, so that it can be tested
over a fake clock without processes, signals or Redis. The signal handlers only *record* requests
here (as gunicorn's arbiter does); the worker's tick asks what is due and acts on it: it announces a
new phase to systemd once (``take_announcement``), cuts the job once its deadline has passed or a
second stop signal came (``take_cut``), and reports the cut as the job's failure reason afterwards
(``end_job``).

Rules, which are also the operator's contract (README, "How the guarantees work"):

* The first stop request (SIGTERM/SIGINT) is a warm stop: no new job; the running one may finish
  within ``shutdown_timeout`` seconds of the request.
* A second stop request more than ``DUPLICATE_WINDOW`` after the first cuts the running job at
  once; one within the window is the same request delivered twice (rq's rule, for worker pools).
* A reload (SIGHUP) is a warm stop that re-executes afterwards; a stop during a reload wins, and a
  reload during a stop is ignored.
* A recycle (RQ_MAX_JOBS, RQ_MAX_MEMORY) is a reload the worker asks of itself after a job, with
  its reason; it follows the reload's rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Job:
    """The job in hand: its label for people (``id (func)``) and when it started (monotonic)."""

    label: str
    started: float


DUPLICATE_WINDOW = 1.0


class Lifecycle:
    """Phase, deadline and cut reason of one worker process."""

    def __init__(self, shutdown_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (shutdown_timeout > 0 and math.isfinite(shutdown_timeout)):
            raise ValueError(f"shutdown_timeout must be a finite number above 0, not {shutdown_timeout!r}")
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        self.phase = Phase.RUNNING
        self.job: Job | None = None
        self.deadline: float | None = None
        """When the running job is cut, once a stop was requested while it ran."""
        self.cut_reason: str | None = None
        self.recycle_reason: str | None = None
        """Why the worker recycles itself (a reload it asked for), if it does."""
        self.exit_reason: str | None = None
        """Why the worker stops by itself (a stop it asked for), if it does."""
        self._stop_requested_at: float | None = None
        self._cut_taken = False
        self._announced = Phase.RUNNING

    # -- requests (called from signal handlers: record only) ---------------------------------

    def request_stop(self, signal_name: str) -> None:
        now = self.clock()
        if self.phase is not Phase.STOPPING:
            self.phase = Phase.STOPPING
            self._stop_requested_at = now
            if self.job is not None:
                self.deadline = now + self.shutdown_timeout
            return
        assert self._stop_requested_at is not None
        if now - self._stop_requested_at < DUPLICATE_WINDOW:
            return
        self.request_cut(f"interrupted by shutdown: a second stop signal ({signal_name}) arrived while it ran")

    def request_reload(self) -> bool:
        """True if the reload was taken (not during a stop or another reload)."""
        if self.phase is not Phase.RUNNING:
            return False
        self.phase = Phase.RELOADING
        return True

    def request_exit(self, reason: str) -> None:
        """A warm stop the worker asks of itself with nothing in hand (RQ_MAX_IDLE_TIME), for ``reason``."""
        if self.phase is Phase.RUNNING:
            self.request_stop("-")
            self.exit_reason = reason

    def request_recycle(self, reason: str) -> bool:
        """A reload the worker asks of itself, for ``reason``; True if taken (as ``request_reload``)."""
        if not self.request_reload():
            return False
        self.recycle_reason = reason
        return True

    def request_cut(self, reason: str) -> None:
        """Cut the running job now, for ``reason`` (which becomes its recorded failure)."""
        if self.job is not None and self.cut_reason is None:
            self.cut_reason = reason

    # -- the running job ----------------------------------------------------------------------

    def start_job(self, label: str) -> None:
        now = self.clock()
        self.job = Job(label, now)
        self.cut_reason = None
        self._cut_taken = False
        self.deadline = now + self.shutdown_timeout if self.phase is Phase.STOPPING else None

    def end_job(self) -> str | None:
        """The job is over; returns why it was cut, if it was (its failure reason)."""
        reason = self.cut_reason
        self.job = None
        self.deadline = None
        self.cut_reason = None
        self._cut_taken = False
        return reason

    # -- what the tick acts on ----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """No new job may start: a stop or a reload was requested."""
        return self.phase is not Phase.RUNNING

    def take_announcement(self) -> Phase | None:
        """The phase to announce to systemd (STOPPING=1 / RELOADING=1), once per phase change."""
        if self.phase is self._announced:
            return None
        self._announced = self.phase
        return self.phase

    def take_cut(self) -> str | None:
        """The reason to cut the running job now, once: a second signal, or the deadline passed."""
        if self.job is None or self._cut_taken:
            return None
        if self.cut_reason is None and self.deadline is not None and self.clock() >= self.deadline:
            self.cut_reason = (f"interrupted by shutdown: still running RQ_SHUTDOWN_TIMEOUT="
                               f"{self.shutdown_timeout:g}s after the stop request")
        if self.cut_reason is None:
            return None
        self._cut_taken = True
        return self.cut_reason

    def wait_interval(self, base: int) -> int:
        """Seconds until the next monitor tick: ``base``, or less so as to land on the deadline."""
        if self.deadline is None:
            return base
        return max(1, min(base, math.ceil(self.deadline - self.clock())))

    def running_for(self) -> int:
        return int(self.clock() - self.job.started) if self.job else 0

    def status(self, idle: str) -> str:
        """What ``systemctl status`` shows (without counters): ``idle`` when nothing else applies."""
        if self.job is not None:
            running = self.running_for()
            if self.phase is Phase.STOPPING and self.deadline is not None:
                left = max(0, int(self.deadline - self.clock()))
                return f"Stopping: waiting for job {self.job.label}, running {running}s, cut in {left}s"
            if self.phase is Phase.RELOADING:
                return f"{self._reloading}: waiting for job {self.job.label}, running {running}s"
            return f"Running job {self.job.label} for {running}s"
        if self.phase is Phase.RELOADING:
            return self._reloading
        if self.phase is Phase.STOPPING:
            return f"Stopping: {self.exit_reason}" if self.exit_reason else "Stopping"
        return idle

    @property
    def _reloading(self) -> str:
        return f"Recycling ({self.recycle_reason})" if self.recycle_reason else "Reloading"
