"""When to start or stop rq-worker@ instances: the autoscaler's rules, from figures alone.

Nothing here talks to Redis or systemd: ``autoscaler`` observes both, asks ``Scaler.decide`` and
carries the decision out. Keeping the rules apart lets them be read in one place and tested with
a fake clock.

The rules, in order:

1. Fewer instances running than RQ_AUTOSCALE_MIN: start the missing ones (no cool-down).
2. A backlog (the oldest queued job waited RQ_AUTOSCALE_MAX_WAIT, or more than
   RQ_AUTOSCALE_JOBS_PER_INSTANCE jobs are queued per running instance): start enough instances
   for queued ÷ JOBS_PER_INSTANCE (at least one), up to RQ_AUTOSCALE_MAX, once per up cool-down.
   Workers of other hosts on the same queues count as instances here: they share the backlog.
3. A surplus (more idle instances than queued jobs, no backlog, above MIN) that has lasted the
   down cool-down: warm-stop the highest-numbered idle instance the autoscaler started (or any
   idle one with RQ_AUTOSCALE_STOP_OTHERS). One per down cool-down, never one that runs a job.

Starts never go past the memory the machine has left: (available − reserve) ÷ the largest memory
an instance was seen to use. Numbers are the lowest free ones, so instances stay 1…N.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MIB = 1024 * 1024
RUNNING_STATES = frozenset({"active", "activating", "reloading"})
"""systemd ActiveStates of an instance that counts as running (it is, or is about to be, working)."""


@dataclass(frozen=True)
class Limits:
    """The RQ_AUTOSCALE_* settings (``variables`` has their meaning and defaults)."""

    minimum: int = 1
    maximum: int = 8
    max_wait: float = 30.0
    jobs_per_instance: int = 10
    up_cooldown: float = 15.0
    down_cooldown: float = 120.0
    stop_others: bool = False
    memory_reserve: int = 256 * MIB


@dataclass(frozen=True)
class Instance:
    """One rq-worker@<number>.service as systemd and rq see it."""

    number: int
    state: str
    """systemd's ActiveState: active, activating, reloading, deactivating, inactive or failed."""
    busy: bool = True
    """rq's worker state is busy, or unknown (not registered yet): never a candidate to stop."""
    ours: bool = False
    """Started by the autoscaler (not by hand, not at boot)."""
    memory: int | None = None
    """MemoryCurrent in bytes (worker and work horse), when systemd accounts it."""

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES


def unit_name(number: int) -> str:
    return f"rq-worker@{number}.service"


@dataclass(frozen=True)
class Observation:
    """What the autoscaler saw in one look."""

    queued: int
    oldest: float | None
    """Seconds the oldest queued job has waited (None: nothing queued)."""
    instances: tuple[Instance, ...]
    available: int | None = None
    """Bytes of memory the machine can still give; None: unknown (not limited)."""
    elsewhere: int = 0
    """Live workers on other hosts that take from the watched queues: they share the backlog."""


@dataclass(frozen=True)
class Decision:
    """What to do now, and why, in words for the journal."""

    figures: str
    reason: str
    start: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    step: bool = False
    """The starts are a step up for a backlog (one host at a time steps, see ``autoscaler``), not
    the minimum."""

    @property
    def acts(self) -> bool:
        return bool(self.start or self.stop)

    def __str__(self) -> str:
        if not self.acts:
            return f"{self.figures} → hold: {self.reason}"
        verb, numbers = ("start", self.start) if self.start else ("stop", self.stop)
        names = ", ".join(unit_name(n).removesuffix(".service") for n in numbers)
        return f"{self.figures} → {verb} {names}: {self.reason}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def mib(value: int | None) -> str:
    """Bytes as whole MiB, for the journal and ``status`` ('?' when unknown)."""
    return "?" if value is None else f"{value / MIB:.0f}MiB"


class Scaler:
    """The rules above, with the memory of past steps they need (cool-downs, the largest instance)."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.last_start = -math.inf
        self.surplus_since: float | None = None
        self.instance_memory = 0
        """The most memory one instance was seen to use (bytes): what one more may need."""

    def decide(self, seen: Observation) -> Decision:
        now = self.clock()
        running = [i for i in seen.instances if i.running]
        busy = sum(1 for i in running if i.busy)
        self.instance_memory = max([self.instance_memory, *(i.memory or 0 for i in running)])
        figures = f"queued={seen.queued} oldest={_seconds(seen.oldest)} busy={busy}/{len(running)}"
        if seen.elsewhere:
            figures += f" elsewhere={seen.elsewhere}"
        backlog = self._backlog(seen, len(running))

        wanted, why = self._wanted(seen, len(running), backlog, now)
        if wanted:
            self.surplus_since = None
            numbers = self._free_numbers(seen.instances, wanted)
            fit = self._fit(seen.available, len(numbers))
            if fit < len(numbers):
                why += (f"; memory holds {fit} more of {len(numbers)} (available={mib(seen.available)}, "
                        f"reserve={mib(self.limits.memory_reserve)}, instance={mib(self.instance_memory)})")
            if not fit:
                return Decision(figures, why)
            step = len(running) >= self.limits.minimum
            if step:  # the cool-down paces steps for a backlog; reaching the minimum is not one
                self.last_start = now
            return Decision(figures, why, start=numbers[:fit], step=step)
        if why:
            return Decision(figures, why)
        return self._surplus(seen, running, backlog, figures, now)

    def _backlog(self, seen: Observation, running: int) -> str:
        """Why the queues need more instances ('' when they do not)."""
        if not seen.queued:
            return ""
        if seen.oldest is not None and seen.oldest >= self.limits.max_wait:
            return f"oldest waited ≥ {self.limits.max_wait:g}s"
        if seen.queued > self.limits.jobs_per_instance * (running + seen.elsewhere):
            return f"more than {self.limits.jobs_per_instance} queued per instance"
        return ""

    def _wanted(self, seen: Observation, running: int, backlog: str, now: float) -> tuple[int, str]:
        """How many to start, and why; (0, why) is a hold worth saying; (0, '') nothing to start."""
        limits = self.limits
        if running < limits.minimum:
            return limits.minimum - running, f"below RQ_AUTOSCALE_MIN={limits.minimum}"
        if not backlog:
            return 0, ""
        if running >= limits.maximum:
            return 0, f"{backlog}, but at RQ_AUTOSCALE_MAX={limits.maximum}"
        if now - self.last_start < limits.up_cooldown:
            return 0, f"{backlog}, in the up cool-down ({limits.up_cooldown:g}s)"
        step = max(1, math.ceil(seen.queued / limits.jobs_per_instance) - running - seen.elsewhere)
        return min(step, limits.maximum - running), backlog

    def _free_numbers(self, instances: tuple[Instance, ...], count: int) -> tuple[int, ...]:
        """The lowest instance numbers not running, stopping, or failed (an operator's to look at)."""
        taken = {i.number for i in instances if i.state != "inactive"}
        free: list[int] = []
        number = 1
        while len(free) < count:
            if number not in taken:
                free.append(number)
            number += 1
        return tuple(free)

    def _fit(self, available: int | None, wanted: int) -> int:
        """How many of ``wanted`` more instances the memory left can hold."""
        if available is None or not self.instance_memory:
            return wanted
        room = available - self.limits.memory_reserve
        return max(0, min(wanted, room // self.instance_memory))

    def _surplus(self, seen: Observation, running: list[Instance], backlog: str, figures: str,
                 now: float) -> Decision:
        limits = self.limits
        idle = [i for i in running if i.state == "active" and not i.busy]
        over = len(running) > limits.maximum
        if not over and (backlog or len(running) <= limits.minimum or len(idle) <= seen.queued):
            self.surplus_since = None
            return Decision(figures, "")
        why = (f"above RQ_AUTOSCALE_MAX={limits.maximum}" if over
               else f"more idle instances than queued jobs for {limits.down_cooldown:g}s")
        candidates = [i for i in idle if i.ours or limits.stop_others]
        if not candidates:
            self.surplus_since = None
            return Decision(figures, f"{why}, but no idle instance it started (RQ_AUTOSCALE_STOP_OTHERS=no)"
                            if idle else "")
        if self.surplus_since is None:
            self.surplus_since = now
        if not over and now - self.surplus_since < limits.down_cooldown:
            return Decision(figures, f"more idle instances than queued jobs, in the down cool-down "
                            f"({limits.down_cooldown:g}s)")
        self.surplus_since = now  # the next stop waits a whole cool-down again
        return Decision(figures, why, stop=(max(i.number for i in candidates),))
