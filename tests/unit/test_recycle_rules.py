"""RQ_MAX_JOBS, RQ_MAX_MEMORY, RQ_MAX_IDLE_TIME, RQ_WORKER_TTL, RQ_MAINTENANCE_INTERVAL and
RQ_JOB_MONITORING_INTERVAL: their parsing and bounds, and the recycle's rules over a fake clock."""

from __future__ import annotations

import functools
import logging
import os

import fakeredis
import pytest
from helpers import FakeClock

from rq_worker_service import cli
from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.lifecycle import Lifecycle, Phase
from rq_worker_service.notify import Notifier
from rq_worker_service.parts.recycling import Recycler, peak_resident_bytes, size_text
from rq_worker_service.variables import Invalid, memory_size
from rq_worker_service.worker_classes import ServiceWorker

MIB = 2**20


@pytest.mark.parametrize("raw, size", [
    ("512M", 512 * MIB), ("2G", 2 * 2**30), ("2g", 2 * 2**30), ("1536MiB", 1536 * MIB), ("512MB", 512 * MIB),
    ("1048576", MIB), (" 1M ", MIB), ("1024K", MIB), ("1024T", 2**50), ("3 G", 3 * 2**30),
])
def test_memory_sizes_in_powers_of_1024_as_memorymax(raw, size):
    assert memory_size(raw) == size


@pytest.mark.parametrize("raw", ["", "M", "12X", "1.5G", "-1G", "0", "0M", "1023K", "1048575", "1025T", "2  G",
                                 "9" * 30 + "T", "9" * 5000 + "M", "5e9", "½G", "١G"])
def test_memory_sizes_refused_say_what_is_expected(raw):
    with pytest.raises(Invalid) as info:
        memory_size(raw)
    assert "512M or 2G" in str(info.value)


@pytest.mark.parametrize("env, named", [
    ({"RQ_MAX_MEMORY": "12X"}, "RQ_MAX_MEMORY='12X' is invalid: expected a size such as 512M or 2G"),
    ({"RQ_MAX_JOBS": "0"}, "RQ_MAX_JOBS='0' is invalid: expected a number of jobs, 1 or more"),
    ({"RQ_MAX_IDLE_TIME": "0"}, "RQ_MAX_IDLE_TIME='0' is invalid"),
    ({"RQ_WORKER_TTL": "29"}, "at least 30 (the registration must outlive the fencing period"),
    ({"RQ_JOB_MONITORING_INTERVAL": "31"}, "from 1 to 30 (a tick: the watchdog and the fencing beat"),
    ({"RQ_JOB_MONITORING_INTERVAL": "0"}, "from 1 to 30"),
    ({"RQ_MAINTENANCE_INTERVAL": "0"}, "RQ_MAINTENANCE_INTERVAL='0' is invalid"),
])
def test_out_of_bound_values_are_one_line_naming_the_bound(env, named):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert named in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_the_bounds_themselves_are_taken():
    settings = load_settings({"RQ_WORKER_TTL": "30", "RQ_JOB_MONITORING_INTERVAL": "30", "RQ_MAX_JOBS": "1",
                              "RQ_MAX_IDLE_TIME": "1", "RQ_MAINTENANCE_INTERVAL": "1", "RQ_MAX_MEMORY": "1M"})
    assert (settings.worker_ttl, settings.job_monitoring_interval, settings.max_jobs, settings.max_idle_time,
            settings.maintenance_interval, settings.max_memory) == (30, 30, 1, 1, 1, MIB)
    defaults = load_settings({})
    assert (defaults.worker_ttl, defaults.maintenance_interval, defaults.max_jobs, defaults.max_memory,
            defaults.max_idle_time, defaults.job_monitoring_interval) == (420, 60, None, None, None, None)


@pytest.mark.parametrize("variable, value", [("RQ_MAX_MEMORY", "12X"), ("RQ_WORKER_TTL", "29"),
                                             ("RQ_JOB_MONITORING_INTERVAL", "31")])
def test_run_check_refuses_them_with_78(variable, value, monkeypatch, capfd, tmp_path):
    for name in [k for k in os.environ if k.startswith(("RQ_", "REDIS_", "NOTIFY_SOCKET", "CREDENTIALS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    monkeypatch.chdir(tmp_path)  # (its .env is read)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)  # run --check installs its handler on the root logger
    try:
        assert cli.main(["run", "--check", "--instance", "1"]) == 78
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"configuration error: {variable}={value!r}" in lines[0], lines


def worker_with(env: dict[str, str], watchdog_usec: int | None) -> ServiceWorker:
    notifier = Notifier()
    notifier.watchdog_usec = watchdog_usec
    return ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings(env), notifier=notifier)


def test_the_monitoring_interval_is_at_most_the_unit_s_tick(caplog):
    """WatchdogSec=30 makes a tick of 10 s: a longer interval would let the watchdog abort the worker,
    or the fencing take it for lost, while a job runs; it is shortened, with a warning that says the fix."""
    assert worker_with({}, 30_000_000).job_monitoring_interval == 10  # unset: a tick, as before
    assert worker_with({"RQ_JOB_MONITORING_INTERVAL": "5"}, 30_000_000).job_monitoring_interval == 5
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert worker_with({"RQ_JOB_MONITORING_INTERVAL": "20"}, 30_000_000).job_monitoring_interval == 10
    assert "RQ_JOB_MONITORING_INTERVAL=20 is longer than this unit's tick of 10s" in caplog.text
    assert worker_with({"RQ_JOB_MONITORING_INTERVAL": "20"}, None).job_monitoring_interval == 20  # no watchdog


def test_worker_ttl_and_maintenance_interval_reach_rq():
    worker = worker_with({"RQ_WORKER_TTL": "45", "RQ_MAINTENANCE_INTERVAL": "40"}, 30_000_000)
    assert (worker.worker_ttl, worker.maintenance_interval) == (45, 40)
    assert worker.dequeue_timeout == 10, "the pop still comes back every tick"
    assert worker_with({"RQ_WORKER_TTL": "30"}, None).dequeue_timeout == 15, "rq's worker_ttl - 15"


class Loop:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def recycler(max_jobs=None, max_memory=None, resident=lambda: 50 * MIB):
    lifecycle = Lifecycle(10, FakeClock(1000.0))
    loop = Loop()
    return Recycler(lifecycle, max_jobs, max_memory, loop.stop, resident), lifecycle, loop


def run_job(part: Recycler, lifecycle: Lifecycle, horse_kib: int | None = None) -> None:
    lifecycle.start_job("j (f)")
    part.job_started()
    if horse_kib is not None:
        part.horse_ended(horse_kib)
    lifecycle.end_job()
    part.job_ended()


def test_max_jobs_recycles_after_the_nth_job_as_a_reload():
    part, lifecycle, loop = recycler(max_jobs=3)
    run_job(part, lifecycle)
    run_job(part, lifecycle)
    assert lifecycle.phase is Phase.RUNNING and loop.stops == 0
    run_job(part, lifecycle)
    assert lifecycle.phase is Phase.RELOADING and loop.stops == 1
    assert lifecycle.recycle_reason == "3 jobs done, RQ_MAX_JOBS=3"
    assert lifecycle.status("Idle") == "Recycling (3 jobs done, RQ_MAX_JOBS=3)"
    assert lifecycle.take_announcement() is Phase.RELOADING


def test_a_stop_wins_over_a_recycle():
    part, lifecycle, loop = recycler(max_jobs=1)
    lifecycle.request_stop("SIGTERM")
    run_job(part, lifecycle)
    assert lifecycle.phase is Phase.STOPPING and lifecycle.recycle_reason is None and loop.stops == 0


def test_a_reload_is_not_turned_into_a_recycle():
    part, lifecycle, loop = recycler(max_jobs=1)
    assert lifecycle.request_reload()
    run_job(part, lifecycle)
    assert lifecycle.status("Idle") == "Reloading" and loop.stops == 0


def test_max_memory_counts_the_horse_s_peak_or_the_worker_s_whichever_is_larger():
    part, lifecycle, loop = recycler(max_memory=300 * MIB)
    run_job(part, lifecycle, horse_kib=200 * 1024)
    assert loop.stops == 0
    run_job(part, lifecycle, horse_kib=400 * 1024)
    assert loop.stops == 1
    assert lifecycle.recycle_reason == "the job's work horse at its peak took 400M, RQ_MAX_MEMORY=300M"

    grown = [50 * MIB]
    part, lifecycle, loop = recycler(max_memory=300 * MIB, resident=lambda: grown[0])
    run_job(part, lifecycle)  # a simple worker: no horse
    assert loop.stops == 0
    grown[0] = 301 * MIB
    run_job(part, lifecycle)
    assert lifecycle.recycle_reason == "the worker at its peak took 301M, RQ_MAX_MEMORY=300M"


def test_a_horse_peak_is_the_last_job_s_only():
    part, lifecycle, loop = recycler(max_memory=300 * MIB, max_jobs=None)
    part.horse_ended(400 * 1024)  # a job before: counted then, not again
    run_job(part, lifecycle, horse_kib=10 * 1024)
    assert loop.stops == 0


def test_the_process_peak_is_read_from_proc(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nVmPeak:\t  900000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t   10000 kB\n")
    assert peak_resident_bytes(status) == 12345 * 1024
    assert peak_resident_bytes(tmp_path / "absent") is None
    assert (peak_resident_bytes() or 0) > MIB  # this very process, on Linux
    assert [size_text(n) for n in (MIB, 1536 * MIB, 3 * 2**40, 2048)] == ["1M", "1.5G", "3T", "2K"]


def test_an_idle_exit_is_a_warm_stop_that_says_why():
    lifecycle = Lifecycle(10, FakeClock(1000.0))
    lifecycle.request_exit("idle for 60s (RQ_MAX_IDLE_TIME), exiting with status 0")
    assert lifecycle.phase is Phase.STOPPING
    assert lifecycle.status("Idle") == "Stopping: idle for 60s (RQ_MAX_IDLE_TIME), exiting with status 0"
    reloading = Lifecycle(10, FakeClock(1000.0))
    assert reloading.request_reload()
    reloading.request_exit("idle")  # (a pop cannot end idle during a reload: it ends at once; and if it did)
    assert reloading.phase is Phase.RELOADING and reloading.status("Idle") == "Reloading"


def test_rq_s_own_arguments_win_over_the_variables():
    """rq's API, as rq's own tests call it: worker_ttl=, or the deprecated default_worker_ttl=, given to
    the class is what it gets (RQ_WORKER_TTL is the service's default, not an override)."""
    settings = load_settings({"RQ_WORKER_TTL": "45", "RQ_MAINTENANCE_INTERVAL": "40"})
    make = ServiceWorker
    with pytest.warns(DeprecationWarning):
        assert make([], connection=fakeredis.FakeRedis(), settings=settings, notifier=Notifier(),
                    default_worker_ttl=10).worker_ttl == 10
    worker = make([], connection=fakeredis.FakeRedis(), settings=settings, notifier=Notifier(), worker_ttl=20,
                  maintenance_interval=7)
    assert (worker.worker_ttl, worker.maintenance_interval) == (20, 7)


def test_no_recycle_into_a_configuration_that_would_fail_the_start(caplog):
    """An env file edited into an invalid state without a reload: the recycle would re-read it and end
    in exit 78. The worker goes on, says so once, and recycles after the first job once it is fixed."""
    part, lifecycle, loop = recycler(max_jobs=1)
    problems = ["configuration error: RQ_WORKER_TTL='5' is invalid: expected …"]
    part.check = lambda: problems[0]
    with caplog.at_level(logging.ERROR, logger="rq_worker_service.worker"):
        run_job(part, lifecycle)
        run_job(part, lifecycle)
    assert lifecycle.phase is Phase.RUNNING and loop.stops == 0
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Not recycling (1 job done, RQ_MAX_JOBS=1): a start now would fail: configuration "
                                  "error: RQ_WORKER_TTL='5'"), messages
    problems[0] = None
    run_job(part, lifecycle)
    assert lifecycle.phase is Phase.RELOADING and loop.stops == 1


def test_the_check_s_wait_ticks_unless_the_simple_worker_s_watch_still_does():
    """The recycle's check runs at the end of the job (``job_ended``): the simple worker's watch thread
    still ticks for that job until ``execute_job`` ends, and the two must never tick at once."""
    from rq_worker_service.worker_classes import ServiceSimpleWorker

    for make in (ServiceWorker, ServiceSimpleWorker):
        parts = make(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}),
                     notifier=Notifier()).parts
        ticks: list[int] = []
        parts.between_jobs = functools.partial(ticks.append, 1)  # type: ignore[method-assign]
        parts.tick_while_waiting()
        assert ticks == [1], make
    assert parts.watch is not None
    parts.watch.watched = (0.0, None)  # (as ``watch`` sets it, without starting its thread)
    parts.tick_while_waiting()
    assert ticks == [1]
