"""The horse lease (``lease``): the main loop's ticks renew it; the horse ends once it is too old."""

from __future__ import annotations

import logging
import time

import fakeredis

from rq_worker_service.config import load_settings
from rq_worker_service.lease import HorseLease
from rq_worker_service.notify import Notifier
from rq_worker_service.parts import Part
from rq_worker_service.worker_classes import ServiceWorker


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def watchdog(usec: int) -> Notifier:
    notifier = Notifier()
    notifier.watchdog_usec = usec
    return notifier


def test_each_tick_of_the_main_loop_renews_the_lease_and_the_watch_thread_does_not():
    parts = ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}),
                          notifier=watchdog(6_000_000)).parts
    parts.order = []  # the parts' hooks are theirs to test
    assert parts.lease is None  # no horse before the first tick, and none needs it
    parts.tick()
    assert parts.lease is not None
    first, limit = parts.lease.read()
    assert limit == 5.0  # the fencing period (3 ticks of 2 s) less half a tick
    parts.tick(main_loop=False)  # the simple worker's watch thread: its ticks say nothing of the main loop
    assert parts.lease.read()[0] == first
    parts.tick()
    assert parts.lease.read()[0] > first


def test_a_horse_sees_its_workers_ticks_through_the_path_it_is_given():
    lease = HorseLease.create(limit=5.0)
    horse = HorseLease.open(lease.path)
    lease.renew(1234.5)
    assert horse.read() == (1234.5, 5.0)
    assert horse.silent_for(1239.5) is None and horse.silent_for(1239.6) == 1239.6 - 1234.5


def test_the_horse_ends_itself_once_the_main_loop_is_silent_past_the_limit(caplog):
    lease = HorseLease.create(limit=5.0)
    lease.renew(100.0)
    clock, ended = Clock(104.0), []
    thread = lease.guard_horse(clock, end=lambda: ended.append(clock.now))
    thread.join(0.7)  # several looks at 104 s: not yet
    assert thread.is_alive() and not ended
    clock.now = 105.5
    with caplog.at_level(logging.ERROR):
        thread.join(2)
    assert ended == [105.5] and not thread.is_alive()
    assert "main loop has been silent for 6s (frozen or hung): this horse ends its job now" in caplog.text


def test_a_horse_whose_job_is_written_is_ended_without_reporting_a_cut(caplog):
    """A spare's horse that said "done" (``prefork``) and is still there when the main loop goes silent is
    ended all the same, without the ERROR that it cuts its job (the fourth review found that line, with the
    finished job's id, in the journal)."""
    lease = HorseLease.create(limit=5.0)
    lease.renew(100.0)
    lease.job_written = True
    clock, ended = Clock(106.0), []
    with caplog.at_level(logging.ERROR):
        lease.guard_horse(clock, end=lambda: ended.append(clock.now)).join(2)
    assert ended == [106.0]
    assert "this horse ends its job now" not in caplog.text


def test_a_spare_horses_guard_waits_for_its_job_and_then_looks_as_any_horse_s():
    """A spare horse starts its guard's thread before its job (``prefork``): it does not look while it waits,
    silent as the main loop may be, and ``guard_horse`` (the job's start) lets it look, the same thread."""
    lease = HorseLease.create(limit=5.0)
    lease.renew(100.0)
    clock, ended = Clock(200.0), []
    waiting = lease.start_guard(clock, end=lambda: ended.append(clock.now))
    waiting.join(0.3)
    assert waiting.is_alive() and not ended
    assert lease.guard_horse(clock, end=lambda: ended.append("a second guard")) is waiting
    waiting.join(2)
    assert ended == [200.0] and not waiting.is_alive()


def test_the_lease_is_renewed_after_the_fencing_beat_dated_before_it():
    """Renewed before the beat, a main process frozen between the two gave its horse a lease no beat
    backed: a fencer could claim the worker before the horse ended (``test_review26``)."""
    parts = ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}),
                          notifier=watchdog(6_000_000)).parts
    seen: list[float | None] = []

    class Beat(Part):
        def beat(self) -> None:
            seen.append(parts.lease.read()[0] if parts.lease else None)
            time.sleep(0.05)  # the beat's round trip

    parts.order = [Beat()]
    before = time.monotonic()
    parts.tick()
    assert seen == [None]  # no lease yet while the first beat was under way
    assert parts.lease is not None
    first = parts.lease.read()[0]
    assert before <= first < before + 0.05  # dated before the beat, not after its reply
    parts.tick()
    assert seen[1] == first  # the second beat went out under the first tick's lease
    assert parts.lease.read()[0] > first
