"""Cron slots (``cron.slots``): which instants an entry is due at, on a fixed clock, whatever the host.

Expected instants are worked out by hand from the zone's rules (Europe/Berlin: CET +1, CEST +2, changes
2026-03-29 02:00→03:00 and 2026-10-25 03:00→02:00; America/New_York: EST -5, EDT -4, changes
2026-03-08 02:00→03:00 and 2026-11-01 02:00→01:00), never from the code under test.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rq_worker_service.cron import slots
from rq_worker_service.cron.schedule import Entry
from rq_worker_service.cron.slots import Due, due, job_id, latest_slot, next_slot


def entry(*, cron: str | None = None, interval: int | None = None, zone: str = "UTC", catch_up: str = "skip",
          name: str = "report") -> Entry:
    return Entry(name=name, func=print, func_name="builtins.print", queue_name="default", args=(), kwargs={},
                 interval=interval, cron=cron, zone=zone, catch_up=catch_up, job_options={})


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def walk(e: Entry, start: datetime, n: int) -> list[datetime]:
    found, slot = [], start
    for _ in range(n):
        slot = next_slot(e, slot)
        found.append(slot)
    return found


DST = [
    # zone, daily at, the day before the change (00:00 UTC), the next three slots
    ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 28), [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30),
                                                        utc(2026, 3, 30, 0, 30)]),  # skipped: fires 03:30 CEST
    ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 24), [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30),
                                                         utc(2026, 10, 26, 1, 30)]),  # repeated: the CEST one
    ("Europe/Berlin", "30 1 * * *", utc(2026, 3, 28), [utc(2026, 3, 28, 0, 30), utc(2026, 3, 29, 0, 30),
                                                        utc(2026, 3, 29, 23, 30)]),
    ("Europe/Berlin", "30 1 * * *", utc(2026, 10, 23), [utc(2026, 10, 23, 23, 30), utc(2026, 10, 24, 23, 30),
                                                         utc(2026, 10, 26, 0, 30)]),
    ("America/New_York", "30 2 * * *", utc(2026, 3, 7), [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30),
                                                          utc(2026, 3, 9, 6, 30)]),  # skipped: fires 03:30 EDT
    ("America/New_York", "30 2 * * *", utc(2026, 10, 31), [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30),
                                                            utc(2026, 11, 2, 7, 30)]),
    ("America/New_York", "30 1 * * *", utc(2026, 3, 7), [utc(2026, 3, 7, 6, 30), utc(2026, 3, 8, 6, 30),
                                                          utc(2026, 3, 9, 5, 30)]),
    ("America/New_York", "30 1 * * *", utc(2026, 10, 31), [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30),
                                                            utc(2026, 11, 2, 6, 30)]),  # repeated: the EDT one
]


@pytest.mark.parametrize(("zone", "cron", "start", "expected"), DST, ids=[f"{z}-{c[:4]}-{s:%m}" for z, c, s, _ in DST])
def test_a_daily_job_fires_once_a_day_through_a_dst_change(zone, cron, start, expected):
    e = entry(cron=cron, zone=zone)
    assert walk(e, start, 3) == expected
    assert [latest_slot(e, slot) for slot in expected] == expected
    assert latest_slot(e, expected[2] - timedelta(seconds=1)) == expected[1]
    # a scheduler running through the change with a wide grace enqueues each day's slot once
    assert due(e, expected[0], expected[2], grace=3 * 86400) == Due(tuple(expected[1:]), 0, expected[2])


def test_a_skipped_half_hour_collapses_onto_the_real_one_and_nothing_is_doubled():
    """*/30 through Berlin's spring change: wall 02:00 and 02:30 do not exist; fold=0 puts them at the
    instants of 03:00 and 03:30 CEST, which are slots anyway: each instant once, in order."""
    e = entry(cron="*/30 * * * *", zone="Europe/Berlin")
    got = walk(e, utc(2026, 3, 29, 0, 0), 4)
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 0)]


ZONES = ["UTC", "America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Berlin"]


@pytest.fixture
def process_zone(monkeypatch):
    """Sets the process's own zone (TZ + tzset), as a host in another zone runs; restored after."""
    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_the_slots_do_not_depend_on_the_zone_the_process_runs_in(process_zone):
    entries = [entry(cron="30 2 * * *", zone="Europe/Berlin"), entry(cron="0 9 * * 1-5"),
               entry(cron="*/30 * * * *", zone="America/New_York"), entry(interval=3600)]
    start = utc(2026, 3, 27, 22, 0)
    seen, offsets = {}, set()
    for host_zone in ZONES:
        process_zone(host_zone)
        offsets.add(time.localtime(start.timestamp()).tm_gmtoff)
        seen[host_zone] = [walk(e, start, 6) for e in entries]
    assert len(offsets) == len(ZONES)  # each zone took effect in the process (tzset)
    assert all(got == seen["UTC"] for got in seen.values()), seen
    assert seen["UTC"][1][0] == utc(2026, 3, 30, 9, 0)  # 09:00 UTC, never 09:00 of the host's zone


def test_interval_slots_lie_on_the_epoch_grid():
    seven = entry(interval=7)
    after = utc(2026, 11, 30, 22, 41, 3) + timedelta(microseconds=5)
    first = next_slot(seven, after)
    assert (first - slots.EPOCH).total_seconds() % 7 == 0
    assert after < first <= after + timedelta(seconds=7)
    assert next_slot(seven, first) == first + timedelta(seconds=7)  # strictly after a slot
    assert next_slot(entry(interval=3600), after) == utc(2026, 11, 30, 23, 0)
    assert latest_slot(entry(interval=86400), after) == utc(2026, 11, 30)


def test_a_never_seen_interval_entry_is_due_at_once_and_a_cron_entry_at_its_next_slot():
    now = utc(2026, 11, 30, 22, 41, 3)
    assert due(entry(interval=600), None, now, 60) == Due((utc(2026, 11, 30, 22, 40),), 0, utc(2026, 11, 30, 22, 40))
    assert due(entry(cron="*/5 * * * *"), None, now, 60) == Due((), 0, now)


def test_slots_within_the_grace_are_all_enqueued_older_ones_skipped_and_counted():
    e = entry(interval=10)
    now = utc(2026, 11, 30, 12, 0, 5)
    got = due(e, now - timedelta(seconds=305), now, grace=60)  # last = 11:55:00, a slot
    assert got.enqueue == tuple(utc(2026, 11, 30, 11, 59, s) for s in range(10, 60, 10)) + (utc(2026, 11, 30, 12),)
    assert got.skipped == 24  # 11:55:10 … 11:59:00
    assert got.mark == utc(2026, 11, 30, 12)


def test_catch_up_once_enqueues_the_latest_missed_slot_when_none_is_within_the_grace():
    now = utc(2026, 11, 30, 12, 2)
    last = utc(2026, 11, 30, 11, 0)
    for e in (entry(interval=600, catch_up="once"), entry(cron="*/10 * * * *", catch_up="once")):
        assert due(e, last, now, grace=60) == Due((utc(2026, 11, 30, 12),), 5, utc(2026, 11, 30, 12))
        skip = due(Entry(**{**e.__dict__, "catch_up": "skip"}), last, now, grace=60)
        assert skip == Due((), 6, utc(2026, 11, 30, 12))
    # a slot within the grace is enqueued anyway: once adds nothing to it
    assert due(entry(interval=600, catch_up="once"), last, utc(2026, 11, 30, 12, 0, 30), 60) == Due(
        (utc(2026, 11, 30, 12),), 5, utc(2026, 11, 30, 12))


def test_nothing_new_keeps_the_mark_and_a_clock_behind_the_mark_enqueues_nothing():
    e = entry(cron="0 * * * *")
    mark = utc(2026, 11, 30, 12, 0, 30)  # a fresh entry's mark: a moment, not a slot
    assert due(e, mark, utc(2026, 11, 30, 12, 59), 60) == Due((), 0, mark)
    assert due(e, mark, utc(2026, 11, 30, 11), 60) == Due((), 0, mark)
    assert due(e, mark, utc(2026, 11, 30, 13), 60) == Due((utc(2026, 11, 30, 13),), 0, utc(2026, 11, 30, 13))


def test_a_cron_string_limited_to_a_year_has_no_slot_before_it_and_none_after():
    """croniter's seventh field, the year: no slot to come is NEVER, none yet is EPOCH; due() enqueues
    nothing either side and the month's count stops where the matches do."""
    e = entry(cron="0 0 1 1 * 0 2030")
    assert next_slot(e, utc(2026, 5, 1)) == utc(2030, 1, 1)
    assert next_slot(e, utc(2030, 1, 1)) == slots.NEVER
    assert latest_slot(e, utc(2026, 5, 1)) == slots.EPOCH
    assert due(e, utc(2026, 5, 1), utc(2026, 6, 1), 60) == Due((), 0, utc(2026, 5, 1))
    assert due(e, utc(2029, 12, 1), utc(2030, 2, 1), 60) == Due((), 1, utc(2030, 1, 1))
    assert due(e, utc(2030, 1, 2), utc(2031, 6, 1), 60) == Due((), 0, utc(2030, 1, 2))


@pytest.mark.parametrize(("cron", "zone", "expected"), [
    ("* * * * *", "UTC", 31 * 1440 - 60),
    ("* * * * *", "Europe/Berlin", 31 * 1440 - 60),  # every UTC minute is a wall minute (the gap collapses)
    ("30 2 * * *", "Europe/Berlin", 31),  # the 29th's 02:30 fires once (03:30 CEST)
    ("*/30 1-3 * * *", "Europe/Berlin", 31 * 6 - 2),  # the 29th: 02:00, 02:30 collapse onto 03:00, 03:30
    ("0 0 L * *", "America/New_York", 1),
])
def test_a_month_down_is_counted_without_visiting_each_slot(monkeypatch, cron, zone, expected):
    conversions = 0
    instant = slots._instant

    def counting(wall, tz):
        nonlocal conversions
        conversions += 1
        return instant(wall, tz)

    monkeypatch.setattr(slots, "_instant", counting)
    last, now = utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)  # Berlin's March: 00:00 CET to 00:00 CEST
    got = due(entry(cron=cron, zone=zone), last, now, grace=60)
    assert got.skipped + len(got.enqueue) == expected
    assert conversions < 10_000  # both ends and the change day one by one (≈3 days), not all 44 580 minutes


# ---- properties --------------------------------------------------------------------------------------

CRONS = ["*/20 * * * *", "30 2 * * *", "30 1 * * *", "15 1-3 * * 0", "0 */3 * * *", "0 0 1 * *", "5 4 * * 1-5",
         "*/7 2 * * *", "0 12 L * *"]
TZS = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Sao_Paulo"]

entries = st.one_of(
    st.builds(lambda c, z, cu: entry(cron=c, zone=z, catch_up=cu), st.sampled_from(CRONS), st.sampled_from(TZS),
              st.sampled_from(["skip", "once"])),
    st.builds(lambda i, cu: entry(interval=i, catch_up=cu), st.integers(1, 200_000), st.sampled_from(["skip", "once"])),
)
instants = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2031, 1, 1), timezones=st.just(UTC))


def brute(e: Entry, start: datetime, end: datetime) -> list[datetime]:
    """The slots in (start, end] by walking next_slot: the slow path the arithmetic must agree with."""
    found, slot = [], start
    while (slot := next_slot(e, slot)) <= end:
        found.append(slot)
    return found


@settings(max_examples=150, deadline=None)
@given(entries, instants)
def test_slots_strictly_increase_and_agree_with_latest_slot(e, start):
    got = walk(e, start, 12)
    assert all(a < b for a, b in zip(got, got[1:], strict=False))
    assert got[0] > start
    for slot in got:
        assert latest_slot(e, slot) == slot
        assert latest_slot(e, slot - timedelta(microseconds=1)) < slot
        assert next_slot(e, slot - timedelta(microseconds=1)) == slot


@settings(max_examples=100, deadline=None)
@given(entries, instants, st.integers(0, 6 * 86400), st.integers(1, 4 * 3600))
def test_due_enqueues_only_slots_after_the_mark_up_to_now_and_accounts_for_every_one(e, last, span, grace):
    now = last + timedelta(seconds=span)
    got = due(e, last, now, grace)
    assert all(last < slot <= now for slot in got.enqueue)
    assert list(got.enqueue) == sorted(set(got.enqueue))
    assert last <= got.mark <= now or got.mark == last
    every = brute(e, last, now) if span <= 2 * 86400 or e.interval and e.interval >= 600 else None
    if every is not None:
        assert got.skipped + len(got.enqueue) == len(every)
        assert got.mark == (every[-1] if every else last)
        within = [slot for slot in every if slot > now - timedelta(seconds=grace)]
        assert set(within) <= set(got.enqueue)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["0 */3 * * *", "30 2 * * *", "*/45 1-3 * * *", "0 0 L * *", "10 1 * * 0"]),
       st.sampled_from(TZS), instants, st.integers(3 * 86400, 45 * 86400))
def test_counting_a_day_at_a_time_agrees_with_walking_every_slot(cron, zone, start, span):
    e = entry(cron=cron, zone=zone)
    end = start + timedelta(seconds=span)
    assert slots.count(e, start, end) == len(brute(e, start, end))


@settings(max_examples=80, deadline=None)
@given(entries, instants, st.lists(st.integers(0, 7200), min_size=1, max_size=8), st.integers(1, 600))
def test_feeding_the_mark_back_never_enqueues_a_slot_twice(e, start, steps, grace):
    last: datetime | None = None
    now, seen = start, []
    for step in steps:
        now += timedelta(seconds=step)
        got = due(e, last, now, grace)
        assert last is None or all(slot > last for slot in got.enqueue)
        seen.extend(got.enqueue)
        last = got.mark
    assert len(seen) == len(set(seen))


def test_job_ids_are_deterministic_and_use_only_the_characters_rq_allows():
    e, slot = entry(cron="0 3 * * *", name="nightly report/ü"), utc(2026, 3, 29, 1, 30)
    digest = hashlib.sha256("nightly report/ü".encode()).hexdigest()[:12]
    assert job_id(e, slot) == f"cron-{digest}-20260329T013000Z"
    berlin = slot.astimezone(slots.ZoneInfo("Europe/Berlin"))
    assert job_id(e, berlin) == job_id(e, slot)  # the same instant, whatever zone it is written in
    assert job_id(entry(cron="0 3 * * *", name="other"), slot) != job_id(e, slot)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", job_id(e, slot))


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40), instants)
def test_any_name_gives_a_valid_deterministic_job_id(name, slot):
    slot = slot.replace(microsecond=0)
    first = job_id(entry(interval=60, name=name), slot)
    assert first == job_id(entry(cron="* * * * *", name=name), slot)  # the name and the slot decide it
    assert re.fullmatch(r"cron-[0-9a-f]{12}-\d{8}T\d{6}Z", first)
