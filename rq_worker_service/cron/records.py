"""What the cron schedulers tell everyone else through Redis: each cron job's record, each scheduler's.

``status``, ``cron list`` and the Prometheus figures read these (on any host, through ``keys``); the
leader writes them. Their JSON shapes are stored data, as fixed as the key names:

* ``keys.cron_jobs()``: per cron job name, its schedule and what became of it (``JobRecord``), written
  by the leader at its takeover, on a reload and in the very transaction of each enqueue or skip; the
  totals carry over from one leader to the next.
* ``keys.cron_schedulers()``: per holder (``<host>:<pid>``), its role and last beat (``scheduler_record``),
  refreshed by each running scheduler at every look, removed at a clean stop; readers ignore one whose
  beat is older than ``STALE_PERIODS`` lease periods, and the leader removes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .. import keys
from .schedule import Entry

STALE_PERIODS = 3
"""A scheduler's entry whose beat is older than this many lease periods is gone (killed, host lost)."""


@dataclass
class JobRecord:
    """One cron job's entry in ``keys.cron_jobs()``."""

    func_name: str
    queue: str
    cron: str | None
    interval: int | None
    zone: str
    catch_up: str
    next: float | None
    last_slot: float | None
    last_job_id: str | None
    enqueued_total: int
    skipped_total: int
    holder: str
    updated: float

    @classmethod
    def of(cls, entry: Entry, holder: str, previous: bytes | str | None = None) -> JobRecord:
        """A fresh record for ``entry``, with the last slot, job and totals of ``previous`` (the record a
        former leader left, as stored; anything unreadable counts as none)."""
        old = _loads(previous)
        return cls(func_name=entry.func_name, queue=entry.queue_name, cron=entry.cron, interval=entry.interval,
                   zone=entry.zone, catch_up=entry.catch_up, next=None, last_slot=_number(old.get("last_slot")),
                   last_job_id=old.get("last_job_id") if isinstance(old.get("last_job_id"), str) else None,
                   enqueued_total=_count(old.get("enqueued_total")), skipped_total=_count(old.get("skipped_total")),
                   holder=holder, updated=0.0)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def scheduler_record(host: str, pid: int, role: str, since: float, beat: float, token: int | None,
                     config: str) -> str:
    """One scheduler's entry in ``keys.cron_schedulers()``."""
    return json.dumps({"host": host, "pid": pid, "role": role, "since": since, "beat": beat, "token": token,
                       "config": config}, sort_keys=True)


def stale_schedulers(records: dict[Any, Any], now: float, period: float) -> list[Any]:
    """The fields of ``records`` (``keys.cron_schedulers()`` as HGETALL returns it) whose beat is older
    than ``STALE_PERIODS`` periods, or unreadable."""
    stale = []
    for field, raw in records.items():
        beat = _number(_loads(raw).get("beat"))
        if beat is None or now - beat > STALE_PERIODS * period:
            stale.append(field)
    return stale


def publish_jobs(connection, records: dict[str, JobRecord]) -> None:
    """Write every record and drop the names the schedule no longer has (the leader's, at takeover and reload)."""
    stored = {name.decode() if isinstance(name, bytes) else name for name in connection.hkeys(keys.cron_jobs())}
    with connection.pipeline() as pipe:
        gone = stored - set(records)
        if gone:
            pipe.hdel(keys.cron_jobs(), *sorted(gone))
        if records:
            pipe.hset(keys.cron_jobs(), mapping={name: record.dumps() for name, record in records.items()})
        pipe.execute()


def _loads(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
