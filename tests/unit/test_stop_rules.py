"""The stop/reload/cut rules over a fake clock: no processes, signals or Redis."""

from __future__ import annotations

import math

import pytest
from helpers import FakeClock

from rq_worker_service.lifecycle import Lifecycle, Phase


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def life(clock) -> Lifecycle:
    return Lifecycle(shutdown_timeout=600, clock=clock)


def test_idle_stop_is_announced_once_and_cuts_nothing(life):
    life.request_stop("SIGTERM")
    assert life.stopping and life.phase is Phase.STOPPING
    assert life.deadline is None
    assert life.take_announcement() is Phase.STOPPING
    assert life.take_announcement() is None
    assert life.take_cut() is None
    assert life.status("Idle") == "Stopping"


def test_warm_stop_waits_for_the_job_until_the_deadline_then_cuts_once(life, clock):
    life.start_job("j1 (app.f)")
    clock.now += 5
    life.request_stop("SIGTERM")
    assert life.deadline == clock.now + 600
    clock.now += 599.5
    assert life.take_cut() is None
    assert life.status("Idle") == "Stopping: waiting for job j1 (app.f), running 604s, cut in 0s"
    clock.now += 0.5
    reason = life.take_cut()
    assert reason == "interrupted by shutdown: still running RQ_SHUTDOWN_TIMEOUT=600s after the stop request"
    assert life.take_cut() is None  # acted on once
    assert life.end_job() == reason  # and reported as the job's failure
    assert life.deadline is None and life.job is None


def test_job_that_finishes_in_time_is_not_cut(life, clock):
    life.start_job("j1 (app.f)")
    life.request_stop("SIGTERM")
    clock.now += 10
    assert life.end_job() is None
    assert life.take_cut() is None


def test_second_stop_within_a_second_is_the_same_request(life, clock):
    life.start_job("j1 (app.f)")
    life.request_stop("SIGTERM")
    clock.now += 0.5
    life.request_stop("SIGTERM")
    assert life.take_cut() is None
    clock.now += 0.6
    life.request_stop("SIGINT")
    assert life.take_cut() == "interrupted by shutdown: a second stop signal (SIGINT) arrived while it ran"


def test_second_stop_while_idle_cuts_nothing(life, clock):
    life.request_stop("SIGTERM")
    clock.now += 2
    life.request_stop("SIGTERM")
    assert life.cut_reason is None and life.take_cut() is None


def test_reload_then_stop_stop_wins_and_reload_during_stop_is_ignored(life, clock):
    life.start_job("j1 (app.f)")
    assert life.request_reload() is True
    assert life.request_reload() is False  # already reloading
    assert life.take_announcement() is Phase.RELOADING
    assert life.deadline is None  # a reload waits for the job without a limit
    assert life.status("Idle").startswith("Reloading: waiting for job j1 (app.f)")
    life.request_stop("SIGTERM")
    assert life.phase is Phase.STOPPING and life.deadline == clock.now + 600
    assert life.take_announcement() is Phase.STOPPING
    assert life.request_reload() is False


def test_monitor_interval_lands_on_the_deadline(life, clock):
    assert life.wait_interval(10) == 10
    life.start_job("j1 (app.f)")
    life.request_stop("SIGTERM")
    assert life.wait_interval(10) == 10
    clock.now += 596.2
    assert life.wait_interval(10) == 4
    clock.now += 10
    assert life.wait_interval(10) == 1  # never 0 or negative: rq's alarm needs a positive time


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_shutdown_timeout_must_be_finite_and_positive(bad):
    """An infinite timeout once made math.ceil raise in the monitor tick and left the job STARTED."""
    with pytest.raises(ValueError):
        Lifecycle(shutdown_timeout=bad)


def test_job_started_during_a_stop_gets_its_own_deadline(life, clock):
    life.request_stop("SIGTERM")
    clock.now += 3
    life.start_job("j2 (app.g)")
    assert life.deadline == clock.now + 600


def test_a_requested_cut_without_a_job_is_dropped(life):
    life.request_cut("operator")
    assert life.cut_reason is None
    life.start_job("j1 (app.f)")
    life.request_cut("operator")
    life.request_cut("later")
    assert life.take_cut() == "operator"
