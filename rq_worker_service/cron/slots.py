"""Slots: the instants an ``Entry`` is due at, the same on every host, and which of them are due now.

Every host must compute the same slots, or the deterministic job ids (one job per slot, whoever
enqueues it) would differ. So nothing here reads the host's clock or zone: the caller passes ``now``,
cron strings are read in the entry's zone (never the process's, unlike rq), and interval slots lie on
the epoch grid (k * interval seconds since 1970-01-01 UTC; rq anchors them at its own start).

DST: a cron string is matched against the zone's wall clock and each match converted with fold=0, so
a wall time the spring change skips fires once, at the instant fold=0 gives (02:30 in a 02:00→03:00
gap fires at 03:30), and one the autumn change repeats fires once, at its first occurrence. That
conversion is monotonic except near a change, so each look-up scans the wall clock with a margin of
the zone's offsets around the instant, never the host's.

A scheduler down for a month must not walk 40 000 slots: ``due`` looks backwards from ``now`` and
counts the missed slots arithmetically (intervals) or a day at a time (cron).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from .schedule import Entry

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NEVER = datetime.max.replace(tzinfo=UTC)
"""``next_slot`` of a cron string whose last match is past (croniter's seventh field, the year, can end
one): a time that never comes, so a loop sleeping until the next slot needs no special case."""
_MICRO = timedelta(microseconds=1)
_AROUND = tuple(timedelta(hours=6 * k) for k in range(-12, 13))
"""Where a zone's offsets are sampled around an instant (three days either way): wider than any
change of offset (at most a day, Samoa 2011), so every wall time that can map near the instant is seen."""
_ITERATE_BELOW = timedelta(days=3)
"""Missed cron slots over a shorter span are counted one by one; longer spans a day at a time (three days:
the local dates at its ends then differ, whatever the zone's offsets do)."""


@dataclass(frozen=True)
class Due:
    """What to do for an entry now: ``enqueue`` (oldest first), ``skipped`` missed slots dropped, and
    ``mark``, the entry's last handled slot to store in the same transaction as the enqueue."""

    enqueue: tuple[datetime, ...]
    skipped: int
    mark: datetime


def job_id(entry: Entry, slot: datetime) -> str:
    """The slot's job id: the same on every host, so two schedulers enqueueing one slot make one job.
    The name is hashed because rq's job ids allow only letters, digits, _ and -."""
    digest = hashlib.sha256(entry.name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"cron-{digest}-{slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def next_slot(entry: Entry, after: datetime) -> datetime:
    """The entry's first slot strictly after ``after`` (aware); ``NEVER`` when none is left."""
    if entry.interval is not None:
        return _grid_floor(entry.interval, after) + timedelta(seconds=entry.interval)
    return _cron_next(_cron(entry), ZoneInfo(entry.zone), after)


def latest_slot(entry: Entry, at: datetime) -> datetime:
    """The entry's last slot at or before ``at`` (aware); ``EPOCH`` when none was yet (a year to come)."""
    if entry.interval is not None:
        return _grid_floor(entry.interval, at)
    return _cron_latest(_cron(entry), ZoneInfo(entry.zone), at)


def due(entry: Entry, last: datetime | None, now: datetime, grace: float) -> Due:
    """The slots in (last, now] to enqueue now, per the misfire grace and the entry's catch-up policy.

    Slots later than ``now - grace`` are all enqueued (a takeover or a restart loses none). Older ones
    were missed while no scheduler ran: ``skip`` drops them (counted), ``once`` enqueues the latest of
    them unless a slot within the grace is enqueued anyway. An entry never handled (``last`` None):
    an interval job is due at once (its latest slot, as rq runs one at its start), a cron job at its
    next slot (as rq), so its mark is ``now``. No slot since ``last`` (or a clock behind it): nothing to
    enqueue and ``mark`` is ``last``.
    """
    if last is None:
        if entry.interval is None:
            return Due((), 0, now)
        slot = latest_slot(entry, now)
        return Due((slot,), 0, slot)
    latest = latest_slot(entry, now)
    if latest <= last:
        return Due((), 0, last)
    cut = now - timedelta(seconds=grace)
    recent = _slots_between(entry, max(last, cut), now)
    skipped = count(entry, last, cut) if cut > last else 0
    if skipped and entry.catch_up == "once" and not recent:
        return Due((latest_slot(entry, cut),), skipped - 1, latest)
    return Due(tuple(recent), skipped, latest)


def count(entry: Entry, start: datetime, end: datetime) -> int:
    """How many slots lie in (start, end], without visiting each of them."""
    if end <= start:
        return 0
    if entry.interval is not None:
        step = entry.interval * 1_000_000
        return _micros(end) // step - _micros(start) // step
    cron, zone = _cron(entry), ZoneInfo(entry.zone)
    if end - start <= _ITERATE_BELOW:
        return len(_between(cron, zone, start, end))
    first = start.astimezone(zone).date() + timedelta(days=1)
    stop = end.astimezone(zone).date()
    head_end, tail_start = _midnight(first, zone), _midnight(stop, zone)
    return (len(_between(cron, zone, start, head_end - _MICRO)) + _count_days(cron, zone, first, stop)
            + len(_between(cron, zone, tail_start - _MICRO, end)))


def _slots_between(entry: Entry, start: datetime, end: datetime) -> list[datetime]:
    """The slots in (start, end], oldest first; a short span (the grace) in practice."""
    if entry.interval is not None:
        step, slots, slot = timedelta(seconds=entry.interval), [], next_slot(entry, start)
        while slot <= end:
            slots.append(slot)
            slot += step
        return slots
    return _between(_cron(entry), ZoneInfo(entry.zone), start, end)


def _cron(entry: Entry) -> str:
    if entry.cron is None:
        raise ValueError(f"cron job {entry.name!r} has neither interval nor cron")  # load() refuses it first
    return entry.cron


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // _MICRO


def _grid_floor(interval: int, moment: datetime) -> datetime:
    """The last epoch-grid slot at or before ``moment``: integer microseconds, no float rounding."""
    step = interval * 1_000_000
    return EPOCH + _MICRO * (_micros(moment) // step * step)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time of ``zone`` as the UTC instant fold=0 gives (the rule for DST above)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall(moment: datetime) -> datetime:
    """``moment``'s fields as a naive wall time (the caller has added the zone's offset)."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _offsets(zone: ZoneInfo, moment: datetime) -> tuple[timedelta, timedelta]:
    """The smallest and largest UTC offset ``zone`` has within three days of ``moment``."""
    found = [(moment + shift).astimezone(zone).utcoffset() or timedelta(0) for shift in _AROUND]
    return min(found), max(found)


def _matches(cron: str, start_wall: datetime) -> croniter:
    """croniter over wall times. The start is handed over labelled UTC: croniter then does plain
    calendar arithmetic, whatever zone the process runs in (TZ), and no DST rule of its own."""
    return croniter(cron, start_wall.replace(tzinfo=UTC))


def _cron_next(cron: str, zone: ZoneInfo, after: datetime) -> datetime:
    """First instant after ``after``. A wall time w maps to w - offset(w) > after only if w > after +
    the smallest nearby offset: start there; stop once no later wall time can map below the best."""
    low, _ = _offsets(zone, after)
    matches = _matches(cron, _wall(after + low))
    best: datetime | None = None
    while True:
        try:
            wall = matches.get_next(datetime).replace(tzinfo=None)
        except CroniterBadDateError:
            return best or NEVER
        moment = _instant(wall, zone)
        if moment > after and (best is None or moment < best):
            best = moment
        if best is not None and wall.replace(tzinfo=UTC) - _offsets(zone, moment)[1] >= best:
            return best


def _cron_latest(cron: str, zone: ZoneInfo, at: datetime) -> datetime:
    """Last instant at or before ``at``: the mirror of ``_cron_next``."""
    _, high = _offsets(zone, at)
    matches = _matches(cron, _wall(at + high + timedelta(seconds=1)))
    best: datetime | None = None
    while True:
        try:
            wall = matches.get_prev(datetime).replace(tzinfo=None)
        except CroniterBadDateError:
            return best or EPOCH
        moment = _instant(wall, zone)
        if moment <= at and (best is None or moment > best):
            best = moment
        if best is not None and wall.replace(tzinfo=UTC) - _offsets(zone, moment)[0] <= best:
            return best


def _between(cron: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants in (start, end], oldest first, from one pass over the wall clock (a set: two wall
    times can map to one instant across a spring change, and arrive out of order)."""
    low, _ = _offsets(zone, start)
    _, high = _offsets(zone, end)
    matches = _matches(cron, _wall(start + low))
    found: set[datetime] = set()
    while True:
        try:
            wall = matches.get_next(datetime).replace(tzinfo=None)
        except CroniterBadDateError:
            return sorted(found)
        if wall.replace(tzinfo=UTC) - high > end:
            return sorted(found)
        moment = _instant(wall, zone)
        if start < moment <= end:
            found.add(moment)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return _instant(datetime.combine(day, time()), zone)


def _count_days(cron: str, zone: ZoneInfo, first: date, stop: date) -> int:
    """Slots from ``first``'s midnight to before ``stop``'s: croniter finds each day that has a match;
    a day without an offset change has the expression's slots per day, one with a change is counted
    one by one (its skipped and repeated wall times)."""
    per_day = _slots_per_day(cron)
    found, day = 0, first
    while day < stop:
        try:
            wall = _matches(cron, datetime.combine(day, time()) - _MICRO).get_next(datetime).replace(tzinfo=None)
        except CroniterBadDateError:
            break
        day = wall.date()
        if day >= stop:
            break
        begin, end = _midnight(day, zone), _midnight(day + timedelta(days=1), zone)
        if _offsets_equal(zone, begin - timedelta(hours=2), end + timedelta(hours=2)):
            found += per_day
        else:
            found += len(_between(cron, zone, begin - _MICRO, end - _MICRO))
        day += timedelta(days=1)
    return found


def _offsets_equal(zone: ZoneInfo, first: datetime, second: datetime) -> bool:
    return first.astimezone(zone).utcoffset() == second.astimezone(zone).utcoffset()


def _slots_per_day(cron: str) -> int:
    """Matches on a day that matches: minutes x hours (x seconds, croniter's sixth field)."""
    fields = croniter.expand(cron)[0]
    sizes = [60, 24] + ([60] if len(fields) > 5 else [])
    per_day = 1
    for values, size in zip((fields[0], fields[1], *fields[5:6]), sizes, strict=True):
        per_day *= size if values == ["*"] else len(values)
    return per_day
