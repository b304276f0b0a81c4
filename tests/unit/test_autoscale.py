"""The autoscaler's rules (``autoscale.Scaler``) over a fake clock, and its loop (``autoscaler``)
over fakeredis and a fake systemd: what it starts, what it stops, what it says."""

from __future__ import annotations

import json

import fakeredis
import pytest
from helpers import FakeClock
from rq import Queue, Worker
from testjobs import quick_job

from rq_worker_service.autoscale import MIB, Instance, Limits, Observation, Scaler
from rq_worker_service.autoscale_report import AutoscalerReport, ReportedInstance
from rq_worker_service.autoscaler import Autoscaler, limits_from, memory_available
from rq_worker_service.config import ConfigError
from rq_worker_service.status.collect import collect
from rq_worker_service.status.judge import evaluate
from rq_worker_service.status.render import render_json, render_prometheus, render_text
from rq_worker_service.status.report import report_from_dict
from rq_worker_service.systemd_units import UnitsError, UnitState

LIMITS = Limits(minimum=1, maximum=4, max_wait=30, jobs_per_instance=10, up_cooldown=15, down_cooldown=60)


def seen(queued: int = 0, oldest: float | None = None, *instances: Instance, available: int | None = None):
    return Observation(queued=queued, oldest=oldest, instances=tuple(instances), available=available)


def up(number: int, busy: bool = False, ours: bool = True, memory: int | None = None, state: str = "active"):
    return Instance(number, state, busy=busy, ours=ours, memory=memory)


@pytest.fixture
def clock():
    return FakeClock(1000.0)


def test_starts_up_to_the_minimum_at_once_and_counts_instances_it_did_not_start(clock):
    scaler = Scaler(Limits(minimum=3, maximum=5), clock)
    decision = scaler.decide(seen(0, None, up(1, ours=False)))
    assert decision.start == (2, 3)
    assert "below RQ_AUTOSCALE_MIN=3" in str(decision)
    assert scaler.decide(seen(0, None, up(1, ours=False), up(2), up(3))).acts is False
    assert scaler.decide(seen(50, 1.0, up(1), up(2), up(3))).start == (4, 5)  # no up cool-down after MIN


def test_a_backlog_starts_queued_over_jobs_per_instance_capped_at_max(clock):
    scaler = Scaler(LIMITS, clock)
    decision = scaler.decide(seen(340, 75.0, up(1, busy=True)))
    assert decision.start == (2, 3, 4)
    assert str(decision) == ("queued=340 oldest=75s busy=1/1 → start rq-worker@2, rq-worker@3, rq-worker@4: "
                             "oldest waited ≥ 30s")


def test_a_small_backlog_that_waited_too_long_still_adds_one(clock):
    scaler = Scaler(LIMITS, clock)
    assert scaler.decide(seen(3, 31.0, up(1, busy=True))).start == (2,)
    assert scaler.decide(seen(3, 5.0, up(1, busy=True), up(2, busy=True))).acts is False  # 3 ≤ 10 × 2, young


def test_steps_up_wait_out_the_up_cooldown(clock):
    scaler = Scaler(LIMITS, clock)
    assert scaler.decide(seen(25, 1.0, up(1, busy=True))).start == (2, 3)
    clock.now += 14
    held = scaler.decide(seen(45, 20.0, up(1, busy=True), up(2, busy=True), up(3, busy=True)))
    assert not held.acts and "up cool-down (15s)" in held.reason
    clock.now += 1
    assert scaler.decide(seen(45, 20.0, up(1, busy=True), up(2, busy=True), up(3, busy=True))).start == (4,)


def test_at_max_it_holds_and_says_so(clock):
    scaler = Scaler(LIMITS, clock)
    held = scaler.decide(seen(500, 90.0, *(up(n, busy=True) for n in range(1, 5))))
    assert not held.acts and held.reason == "oldest waited ≥ 30s, but at RQ_AUTOSCALE_MAX=4"
    assert str(held) == "queued=500 oldest=90s busy=4/4 → hold: oldest waited ≥ 30s, but at RQ_AUTOSCALE_MAX=4"


def test_new_numbers_skip_running_stopping_and_failed_instances(clock):
    scaler = Scaler(Limits(minimum=1, maximum=8), clock)
    instances = (up(1, busy=True), up(2, state="deactivating"), up(3, state="failed"), up(5, state="inactive"))
    assert scaler.decide(seen(30, 40.0, *instances)).start == (4, 5)


def test_memory_caps_starts_and_the_reason_says_what_it_measured(clock):
    scaler = Scaler(Limits(minimum=1, maximum=8, memory_reserve=100 * MIB), clock)
    one = up(1, busy=True, memory=200 * MIB)
    decision = scaler.decide(seen(80, 40.0, one, available=550 * MIB))
    assert decision.start == (2, 3)  # (550 − 100) // 200
    assert "memory holds 2 more of 7 (available=550MiB, reserve=100MiB, instance=200MiB)" in decision.reason
    clock.now += 100
    held = scaler.decide(seen(80, 40.0, one, up(2, busy=True), up(3, busy=True), available=250 * MIB))
    assert not held.acts and "memory holds 0 more of 5" in held.reason


def test_the_largest_instance_ever_seen_is_what_one_more_may_need(clock):
    scaler = Scaler(Limits(minimum=1, maximum=8, memory_reserve=0), clock)
    scaler.decide(seen(0, None, up(1, memory=300 * MIB)))
    assert scaler.decide(seen(50, 40.0, up(1, memory=50 * MIB), available=700 * MIB)).start == (2, 3)


def test_a_surplus_stops_the_highest_idle_instance_it_started_after_the_down_cooldown(clock):
    scaler = Scaler(LIMITS, clock)
    instances = (up(1, ours=False), up(2), up(3, busy=True), up(4, ours=False))
    first = scaler.decide(seen(0, None, *instances))
    assert not first.acts and "down cool-down (60s)" in first.reason
    clock.now += 59
    assert not scaler.decide(seen(0, None, *instances)).acts
    clock.now += 1
    decision = scaler.decide(seen(0, None, *instances))
    assert decision.stop == (2,)  # 4 and 1 were not started by it, 3 runs a job
    assert str(decision) == ("queued=0 oldest=- busy=1/4 → stop rq-worker@2: more idle instances than queued jobs "
                             "for 60s")
    clock.now += 30
    assert not scaler.decide(seen(0, None, *instances[:1], *instances[2:])).acts  # the next waits a whole cool-down


def test_others_are_stopped_only_when_configured_and_never_below_min(clock):
    instances = (up(1, ours=False), up(2, ours=False))
    mine = Scaler(LIMITS, clock)
    held = mine.decide(seen(0, None, *instances))
    assert not held.acts and "RQ_AUTOSCALE_STOP_OTHERS=no" in held.reason
    everyone = Scaler(Limits(minimum=1, maximum=4, down_cooldown=60, stop_others=True), clock)
    everyone.decide(seen(0, None, *instances))
    clock.now += 60
    assert everyone.decide(seen(0, None, *instances)).stop == (2,)
    clock.now += 600
    assert not everyone.decide(seen(0, None, instances[0])).acts


def test_no_stop_while_the_queue_keeps_the_idle_instances_busy_or_a_backlog_grows(clock):
    scaler = Scaler(LIMITS, clock)
    two_idle = (up(1), up(2), up(3, busy=True))
    scaler.decide(seen(2, 1.0, *two_idle))
    clock.now += 600
    assert not scaler.decide(seen(2, 1.0, *two_idle)).acts  # idle=2 ≤ queued=2: they are about to take them


def test_a_start_resets_the_surplus_clock(clock):
    scaler = Scaler(LIMITS, clock)
    scaler.decide(seen(0, None, up(1), up(2)))
    clock.now += 50
    assert scaler.decide(seen(60, 40.0, up(1, busy=True), up(2, busy=True))).start
    clock.now += 20
    assert not scaler.decide(seen(0, None, up(1), up(2), up(3), up(4))).acts


def test_above_max_an_idle_instance_it_started_is_stopped_without_waiting(clock):
    scaler = Scaler(Limits(minimum=1, maximum=2, down_cooldown=60), clock)
    assert scaler.decide(seen(5, 1.0, up(1, busy=True), up(2, busy=True), up(3))).stop == (3,)


def test_limits_come_from_the_variables_and_max_below_min_is_one_line():
    limits = limits_from({"RQ_AUTOSCALE_MIN": "2", "RQ_AUTOSCALE_MAX": "6", "RQ_AUTOSCALE_MEMORY_RESERVE": "64"})
    assert (limits.minimum, limits.maximum, limits.memory_reserve, limits.down_cooldown) == (2, 6, 64 * MIB, 120.0)
    with pytest.raises(ConfigError, match=r"RQ_AUTOSCALE_MAX='1' is invalid: expected .* at least RQ_AUTOSCALE_MIN=2"):
        limits_from({"RQ_AUTOSCALE_MIN": "2", "RQ_AUTOSCALE_MAX": "1"})
    with pytest.raises(ConfigError, match="RQ_AUTOSCALE_UP_COOLDOWN='soon' is invalid"):
        limits_from({"RQ_AUTOSCALE_UP_COOLDOWN": "soon"})


def test_memory_available_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683520 kB\nMemFree:  1 kB\nMemAvailable:   1024 kB\n")
    assert memory_available(meminfo) == 1024 * 1024
    assert memory_available(tmp_path / "missing") is None


# -- the loop, over fakeredis and a fake systemd -------------------------------------------------


class FakeUnits:
    """systemd as the autoscaler sees it: loaded instances, and the starts and stops asked of it."""

    def __init__(self, *states: tuple[int, str]) -> None:
        self.states = dict(states)
        self.calls: list[str] = []
        self.refuse = False
        self.restarting: set[int] = set()

    def instances(self):
        return [UnitState(n, s, f"/unit/{n}", 40 * MIB, n in self.restarting) for n, s in sorted(self.states.items())]

    def slice_memory_available(self, number):
        return None

    def start(self, number):
        if self.refuse:
            raise UnitsError("StartUnit: org.freedesktop.DBus.Error.InteractiveAuthorizationRequired: denied")
        self.calls.append(f"start {number}")
        self.states[number] = "activating"

    def stop(self, number):
        self.calls.append(f"stop {number}")
        self.states[number] = "deactivating"


def register(conn, host: str, number: int, state: str) -> None:
    worker = Worker(["default"], name=f"{host}.rq-worker@{number}", connection=conn)
    worker.register_birth()
    worker.set_state(state)


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def make(conn, units, tmp_path, clock, limits=LIMITS):
    return Autoscaler(conn, units, limits, ["default"], "web1", tmp_path, clock=clock, memory=lambda: 8192 * MIB)


def test_loop_starts_for_a_backlog_remembers_its_instances_and_reports_them(conn, tmp_path, clock, caplog):
    caplog.set_level("INFO")
    register(conn, "web1", 1, "busy")
    q = Queue("default", connection=conn)
    for _ in range(25):
        q.enqueue(quick_job)
    units = FakeUnits((1, "active"))
    scaler = make(conn, units, tmp_path, clock)
    scaler.step()
    assert units.calls == ["start 2", "start 3"]
    assert (tmp_path / "started").read_text() == "2\n3\n"
    assert "queued=25 oldest=0s busy=1/1 → start rq-worker@2, rq-worker@3" in caplog.text
    report = evaluate(collect(conn, "redis://fake"))
    (auto,) = report.autoscalers
    assert (auto.host, auto.running, auto.minimum, auto.maximum, auto.stale) == ("web1", 1, 1, 4, False)
    text = render_text(report)
    assert "Autoscaler on web1: running; 1 instances running (1 busy), min 1, max 4" in text
    assert "last decision, 0s ago: queued=25" in text
    assert report_from_dict(json.loads(render_json(report))).autoscalers == report.autoscalers
    assert 'rq_autoscaler_instances{host="web1"} 1' in render_prometheus(report)

    again = make(conn, units, tmp_path, clock)  # a restarted autoscaler still knows which are its own
    assert again.ours == {2, 3}


def test_loop_never_stops_an_instance_that_took_a_job_since_it_decided(conn, tmp_path, clock, caplog):
    caplog.set_level("INFO")
    for n in (1, 2):
        register(conn, "web1", n, "idle")
    (tmp_path / "started").write_text("2\n")
    units = FakeUnits((1, "active"), (2, "active"))
    scaler = make(conn, units, tmp_path, clock)
    scaler.step()
    clock.now += 60
    original = scaler._busy
    scaler._busy = lambda numbers: {n: True for n in numbers} if len(numbers) == 1 else original(numbers)
    scaler.step()
    assert units.calls == [] and "rq-worker@2 took a job since; not stopping it" in caplog.text
    scaler._busy = original
    clock.now += 60
    scaler.step()
    assert units.calls == ["stop 2"]


def test_loop_forgets_instances_stopped_by_hand_and_says_why_systemd_refused(conn, tmp_path, clock, caplog):
    (tmp_path / "started").write_text("2\n3\n")
    units = FakeUnits((1, "active"), (2, "active"))
    scaler = make(conn, units, tmp_path, clock, Limits(minimum=4, maximum=4))
    units.refuse = True
    scaler.step()
    assert scaler.ours == {2}
    assert "cannot start rq-worker@3.service" in caplog.text and "polkit rule" in caplog.text


def test_a_hold_is_said_once_until_its_reason_changes(conn, tmp_path, clock, caplog):
    caplog.set_level("INFO")
    for n in range(1, 5):
        register(conn, "web1", n, "busy")
    q = Queue("default", connection=conn)
    for _ in range(60):
        q.enqueue(quick_job)
    units = FakeUnits(*((n, "active") for n in range(1, 5)))
    scaler = make(conn, units, tmp_path, clock)
    for _ in range(3):
        scaler.step()
    assert caplog.text.count("but at RQ_AUTOSCALE_MAX=4") == 1


def test_a_report_gone_quiet_is_stale_and_warns(conn, tmp_path, clock):
    scaler = make(conn, FakeUnits((1, "active")), tmp_path, clock)
    scaler.step()
    state = json.loads(conn.hget("rq:service:autoscalers", "web1"))
    state["at"] -= 300
    conn.hset("rq:service:autoscalers", "web1", json.dumps(state))
    report = evaluate(collect(conn, "redis://fake"))
    assert "the autoscaler on web1 has not reported for 300s" in report.verdict
    scaler.withdraw()
    assert collect(conn, "redis://fake").autoscalers == []


REPORT_JSON = {
    "host": "web1", "at": 1764480000.5,
    "limits": {"min": 2, "max": 6, "max_wait": 45.0, "jobs_per_instance": 7, "up_cooldown": 20.0,
               "down_cooldown": 90.0, "stop_others": True, "memory_reserve": 300 * MIB},
    "queues": ["high", "default"],
    "instances": [{"number": 1, "state": "active", "busy": False, "ours": False},
                  {"number": 3, "state": "activating", "busy": True, "ours": True}],
    "running": 2, "busy": 1, "queued": 12, "oldest": 31.5, "available": 2048 * MIB, "instance_memory": 120 * MIB,
    "last_decision": "queued=12 … → start rq-worker@3: oldest waited ≥ 30s", "last_decision_at": 1764479990.0,
    "now": "oldest waited ≥ 30s, in the up cool-down (20s)",
}
"""A report as the autoscaler has always written it (the names in Redis): every field set."""


def test_the_autoscaler_report_round_trips_through_its_json_and_keeps_its_names_in_redis():
    """One class on both sides: a field the writer adds but the reader drops (or reads back as something
    else) breaks the round trip; a renamed key breaks the comparison with the stored names."""
    report = AutoscalerReport.from_json(json.dumps(REPORT_JSON))
    assert report == AutoscalerReport(
        host="web1", at=1764480000.5,
        limits=Limits(minimum=2, maximum=6, max_wait=45.0, jobs_per_instance=7, up_cooldown=20.0,
                      down_cooldown=90.0, stop_others=True, memory_reserve=300 * MIB),
        queues=("high", "default"),
        instances=(ReportedInstance(1, "active", False, False), ReportedInstance(3, "activating", True, True)),
        running=2, busy=1, queued=12, oldest=31.5, available=2048 * MIB, instance_memory=120 * MIB,
        last_decision=REPORT_JSON["last_decision"], last_decision_at=1764479990.0, holding=REPORT_JSON["now"])
    assert json.loads(report.to_json()) == REPORT_JSON
    assert AutoscalerReport.from_json(report.to_json()) == report
    assert AutoscalerReport.from_json(json.dumps({**REPORT_JSON, "added_later": 1})) == report  # a newer writer
    with pytest.raises(KeyError):
        AutoscalerReport.from_json(json.dumps({k: v for k, v in REPORT_JSON.items() if k != "now"}))


def test_what_the_autoscaler_publishes_is_what_status_reads(conn, tmp_path, clock):
    register(conn, "web1", 1, "busy")
    Queue("default", connection=conn).enqueue(quick_job)
    scaler = make(conn, FakeUnits((1, "active")), tmp_path, clock)
    scaler.step()
    stored = AutoscalerReport.from_json(conn.hget("rq:service:autoscalers", "web1"))
    assert stored.limits == LIMITS and stored.queues == ("default",) and stored.queued == 1
    assert stored.instances == (ReportedInstance(1, "active", busy=True, ours=False),)
    assert (stored.running, stored.busy, stored.instance_memory) == (1, 1, 40 * MIB)  # FakeUnits' MemoryCurrent


def test_an_instance_being_restarted_still_counts(conn, tmp_path, clock):
    units = FakeUnits((1, "deactivating"))
    units.restarting = {1}
    make(conn, units, tmp_path, clock).step()
    assert units.calls == []  # `systemctl restart rq-worker@1`: not a reason to start rq-worker@2
    units.restarting = set()
    make(conn, units, tmp_path, clock).step()
    assert units.calls == ["start 2"]  # a plain stop: below the minimum


def test_autoscale_command_refuses_bad_settings_in_one_line_and_exit_78(tmp_path, capsys, monkeypatch):
    import logging

    from rq_worker_service.cli import main

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # the command installs its own handler

    env = tmp_path / "worker.env"
    env.write_text("RQ_AUTOSCALE_MIN=3\nRQ_AUTOSCALE_MAX=2\n")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert main(["autoscale", "--env-file", str(env)]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RQ_AUTOSCALE_MAX='2' is invalid" in err[0] and "RQ_AUTOSCALE_MIN=3" in err[0]


def test_an_unwritable_state_directory_is_one_error_line_not_a_crash(conn, tmp_path, clock, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    units = FakeUnits()
    Autoscaler(conn, units, LIMITS, ["default"], "web1", blocked, clock=clock, memory=lambda: None).step()
    assert units.calls == ["start 1"]
    assert "cannot record the instances it started" in caplog.text


def test_workers_of_other_hosts_share_the_backlog(clock):
    scaler = Scaler(LIMITS, clock)
    quiet = Observation(queued=25, oldest=3.0, instances=(up(1, busy=True),), elsewhere=2)
    assert not scaler.decide(quiet).acts  # 25 ≤ 10 × (1 + 2)
    decision = scaler.decide(Observation(queued=60, oldest=3.0, instances=(up(1, busy=True),), elsewhere=2))
    assert decision.start == (2, 3, 4) and decision.step and "elsewhere=2" in decision.figures


def test_two_hosts_on_one_backlog_step_up_one_at_a_time(conn, tmp_path, clock, caplog):
    caplog.set_level("INFO")
    for host in ("web1", "web2"):
        register(conn, host, 1, "busy")
    q = Queue("default", connection=conn)
    for _ in range(80):
        q.enqueue(quick_job)
    web1_units, web2_units = FakeUnits((1, "active")), FakeUnits((1, "active"))
    web1 = make(conn, web1_units, tmp_path / "1", clock)
    web2 = Autoscaler(conn, web2_units, LIMITS, ["default"], "web2", tmp_path / "2", clock=clock,
                      memory=lambda: None)
    web1.step()
    web2.step()
    assert web1_units.calls == ["start 2", "start 3", "start 4"]  # 80 ÷ 10 − 1 − web2's 1: 6, up to MAX=4
    assert web2_units.calls == []
    assert "but web1 stepped up in this cool-down" in caplog.text
    assert "elsewhere=1" in caplog.text
