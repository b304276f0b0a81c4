"""STAND-IN for helper sched's rq_worker_service/cron/schedule.py and slots.py (the CONTRACT's names), interval
entries only, so that lease's tests run before sched's files are merged. Deleted at that merge."""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def install() -> None:
    try:
        import rq_worker_service.cron.schedule  # noqa: F401
        import rq_worker_service.cron.slots  # noqa: F401
        return
    except ImportError:
        pass

    @dataclass(frozen=True)
    class Entry:
        name: str
        func: Callable
        func_name: str
        queue_name: str
        args: tuple = ()
        kwargs: dict = field(default_factory=dict)
        interval: int | None = None
        cron: str | None = None
        zone: str = "UTC"
        catch_up: str = "skip"
        job_options: dict[str, Any] = field(default_factory=dict)

    @dataclass(frozen=True)
    class Schedule:
        source: str
        entries: tuple

    @dataclass(frozen=True)
    class Due:
        enqueue: tuple
        skipped: int
        mark: datetime

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    def job_id(entry, slot):
        return f"cron-{hashlib.sha256(entry.name.encode()).hexdigest()[:12]}-{slot:%Y%m%dT%H%M%SZ}"

    def next_slot(entry, after):
        return at((int(after.timestamp()) // entry.interval + 1) * entry.interval)

    def due(entry, last, now, grace):
        latest = int(now.timestamp()) // entry.interval * entry.interval
        if last is None:
            return Due((at(latest),), 0, at(latest))
        slots = range(int(last.timestamp()) // entry.interval * entry.interval + entry.interval, latest + 1,
                      entry.interval)
        recent = [at(s) for s in slots if s > now.timestamp() - grace]
        old = len(slots) - len(recent)
        if old and entry.catch_up == "once" and not recent:
            return Due((at(latest),), old - 1, at(latest))
        return Due(tuple(recent), old, at(latest) if slots else last)

    def load(config, *, zone, catch_up):
        raise NotImplementedError("the stand-in loads no files")

    schedule = types.ModuleType("rq_worker_service.cron.schedule")
    schedule.Entry, schedule.Schedule, schedule.load = Entry, Schedule, load  # type: ignore[attr-defined]
    slots = types.ModuleType("rq_worker_service.cron.slots")
    slots.Due, slots.job_id, slots.next_slot, slots.due = Due, job_id, next_slot, due  # type: ignore[attr-defined]
    sys.modules["rq_worker_service.cron.schedule"] = schedule
    sys.modules["rq_worker_service.cron.slots"] = slots
