"""``status``'s periodic-job section and ``cron list``, over fakeredis holding what the scheduler writes (the
CONTRACT's ``keys.cron_*``): the lease holder, the cron jobs and their last job's outcome, the live
schedulers, the hand-overs; the WARNING when cron jobs are registered and no scheduler held the lease for
longer than two lease periods; the Prometheus figures."""

from __future__ import annotations

import json
import re
import time

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from testjobs import quick_job

from rq_worker_service import cli, keys
from rq_worker_service.levels import OK, WARNING
from rq_worker_service.status.collect import collect
from rq_worker_service.status.cron import collect_cron, lease_period
from rq_worker_service.status.judge import evaluate
from rq_worker_service.status.render import render_json, render_prometheus, render_text
from rq_worker_service.status.report import report_from_dict

PERIOD = 3
NOW = time.time()
"""The clock the entries are written by; ``collect`` reads its own (within a second of it)."""


@pytest.fixture
def conn():
    global NOW
    NOW = time.time()
    return fakeredis.FakeRedis()


def cron_job(conn, name: str, *, cron: str | None = None, interval: int | None = None, last_job_id: str | None = None,
             updated: float = NOW, enqueued: int = 0, skipped: int = 0) -> None:
    conn.hset(keys.cron_jobs(), name, json.dumps({
        "func_name": "app.tasks.report", "queue": "cron-q", "cron": cron, "interval": interval,
        "zone": "Europe/Berlin" if cron else "UTC", "catch_up": "once" if cron else "skip", "next": NOW + 40,
        "last_slot": NOW - 20 if last_job_id else None, "last_job_id": last_job_id, "enqueued_total": enqueued,
        "skipped_total": skipped, "holder": "a:10", "updated": updated}))


def scheduler(conn, holder: str, role: str, beat: float, token: int | None = None) -> None:
    host, pid = holder.split(":")
    conn.hset(keys.cron_schedulers(), holder, json.dumps({
        "host": host, "pid": int(pid), "role": role, "since": NOW - 600, "beat": beat, "token": token,
        "config": "/srv/app/cron_config.py"}))


def handover(conn, holder: str, token: int, previous: str | None, at: float) -> None:
    conn.lpush(keys.cron_handovers(), json.dumps({"at": at, "holder": holder, "token": token, "previous": previous}))


def leader(conn, holder: str = "b:20", token: int = 7) -> None:
    conn.set(keys.cron_lease(), f"{token} {holder}", px=PERIOD * 1000)


def test_nothing_of_a_scheduler_in_redis_is_no_section(conn):
    report = evaluate(collect(conn, "r", cron_lease_period=PERIOD))
    assert report.cron is None and report.level == OK
    assert "Periodic jobs" not in render_text(report)
    assert "rq_cron" not in render_prometheus(report)


def test_the_lease_holder_jobs_outcomes_schedulers_and_handovers_are_read(conn):
    q = Queue("cron-q", connection=conn)
    q.enqueue(quick_job, 1, job_id="cron-aaaaaaaaaaaa-20261130T220000Z")
    leader(conn)
    cron_job(conn, "nightly", cron="0 3 * * *", last_job_id="cron-aaaaaaaaaaaa-20261130T220000Z", enqueued=4)
    cron_job(conn, "every10", interval=10, last_job_id="cron-bbbbbbbbbbbb-20261130T215950Z", enqueued=9, skipped=2)
    cron_job(conn, "fresh", interval=60)
    conn.hset(keys.cron_jobs(), "other-version", "{not json")
    scheduler(conn, "b:20", "leader", NOW - 1, token=7)
    scheduler(conn, "a:10", "standby", NOW - 2)
    scheduler(conn, "c:30", "standby", NOW - 3 * PERIOD - 1)  # stopped beating: ignored
    handover(conn, "a:10", 6, None, NOW - 100)
    handover(conn, "b:20", 7, "a:10", NOW - 30)

    cron = collect_cron(conn, NOW, PERIOD)
    assert (cron.holder, cron.token, cron.leaderless_for) == ("b:20", 7, None)
    assert 0 < cron.lease_left <= PERIOD
    by_name = {j.name: j for j in cron.jobs}
    assert sorted(by_name) == ["every10", "fresh", "nightly"]
    assert by_name["nightly"].last_outcome == "queued" and by_name["nightly"].schedule == "cron 0 3 * * *"
    assert by_name["every10"].last_outcome == "gone"  # rq dropped it (its result_ttl passed)
    assert by_name["fresh"].last_outcome is None and by_name["fresh"].last_slot is None
    assert (by_name["every10"].enqueued_total, by_name["every10"].skipped_total) == (9, 2)
    assert [(s.holder, s.role) for s in cron.schedulers] == [("b:20", "leader"), ("a:10", "standby")]
    assert [(h.holder, h.previous, h.token) for h in cron.handovers] == [("b:20", "a:10", 7), ("a:10", None, 6)]
    assert not cron.leaderless


def test_text_json_and_prometheus_carry_the_section(conn):
    leader(conn)
    cron_job(conn, "every10", interval=10, last_job_id="cron-bbbbbbbbbbbb-20261130T215950Z", enqueued=9, skipped=2)
    scheduler(conn, "b:20", "leader", NOW - 1, token=7)
    scheduler(conn, "a:10", "standby", NOW - 2)
    handover(conn, "b:20", 7, "a:10", NOW - 30)
    report = evaluate(collect(conn, "r", cron_lease_period=PERIOD))
    text = render_text(report)
    assert "Periodic jobs (rq-cron): lease held by b:20 (token 7, " in text
    row = next(line for line in text.splitlines() if line.startswith("every10"))
    assert row.split()[:6] == ["every10", "cron-q", "every", "10s", "UTC", "skip"]
    assert "cron-bbbbbbbbbbbb-20261130T215950Z (gone)" in row and row.split()[-2:] == ["9", "2"]
    assert "schedulers: b:20 leader (token 7), a:10 standby" in text
    assert "b:20 took the lease (token 7) from a:10" in text
    back = report_from_dict(json.loads(render_json(report)))
    assert back.cron == report.cron
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(report))}
    assert families["rq_cron_leader"].samples[0].value == 1
    assert families["rq_cron_lease_token"].samples[0].value == 7
    assert {s.labels["role"]: s.value for s in families["rq_cron_schedulers"].samples} == {"leader": 1, "standby": 1}
    [enqueued] = families["rq_cron_job_enqueued"].samples
    assert enqueued.labels == {"cron_job": "every10", "queue": "cron-q"} and enqueued.value == 9
    assert families["rq_cron_job_skipped"].samples[0].value == 2
    assert families["rq_cron_job_next_run_timestamp_seconds"].samples[0].value == pytest.approx(NOW + 40, abs=0.01)
    assert families["rq_cron_job_last_slot_timestamp_seconds"].samples[0].value == pytest.approx(NOW - 20, abs=0.01)
    assert families["rq_cron_job_last_outcome"].samples[0].labels["outcome"] == "gone"


@pytest.mark.parametrize("seen_ago, warns", [(2 * PERIOD + 2, True), (2 * PERIOD - 1, False)])
def test_cron_jobs_and_no_lease_holder_past_two_periods_is_a_warning(conn, seen_ago, warns):
    """The leader's last sign (its beat, an enqueue, a takeover) is ``seen_ago``: past the takeover bound
    (two lease periods) without a holder, the verdict is WARNING; within it, a takeover may be under way."""
    cron_job(conn, "every10", interval=10, updated=NOW - 100)
    scheduler(conn, "b:20", "leader", NOW - seen_ago, token=7)
    report = evaluate(collect(conn, "r", cron_lease_period=PERIOD))
    assert report.cron.holder is None
    assert report.cron.leaderless_for == pytest.approx(seen_ago, abs=1)
    assert (report.level == WARNING) == warns
    if warns:
        assert "1 cron jobs registered and no scheduler has held the lease for " in report.verdict
        assert "NO scheduler holds the lease" in render_text(report)
        families = {f.name: f for f in text_string_to_metric_families(render_prometheus(report))}
        assert families["rq_cron_leader"].samples[0].value == 0
        assert families["rq_cron_leaderless_seconds"].samples[0].value >= 2 * PERIOD


def test_a_lease_holder_or_no_cron_job_is_no_warning(conn):
    scheduler(conn, "b:20", "leader", NOW - 100, token=7)  # a leader long gone, but no cron job registered
    assert evaluate(collect(conn, "r", cron_lease_period=PERIOD)).level == OK
    cron_job(conn, "every10", interval=10, updated=NOW - 100)
    leader(conn, "a:10", 8)  # a frozen leader's entry went stale, but another holds the lease
    assert evaluate(collect(conn, "r", cron_lease_period=PERIOD)).level == OK


def test_the_lease_period_is_read_as_rq_cron_reads_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RQ_CRON_LEASE_PERIOD", raising=False)
    worker_env = tmp_path / "worker.env"
    assert lease_period(worker_env, {}) == 10  # the default
    assert lease_period(worker_env, {"RQ_CRON_LEASE_PERIOD": "4"}) == 4  # worker.env's (read into env)
    (tmp_path / "cron.env").write_text("RQ_CRON_LEASE_PERIOD=5\n")
    assert lease_period(worker_env, {"RQ_CRON_LEASE_PERIOD": "4"}) == 5  # cron.env wins over worker.env
    monkeypatch.setenv("RQ_CRON_LEASE_PERIOD", "6")
    assert lease_period(worker_env, {"RQ_CRON_LEASE_PERIOD": "6"}) == 6  # the environment wins over both


def run_cron_list(tmp_path, monkeypatch, capsys, conn, *argv: str) -> tuple[int, str]:
    env_file = tmp_path / "worker.env"
    env_file.write_text("REDIS_URL=redis://:s3cret-pw@redis.example:6379/0\n")
    (tmp_path / "cron.env").write_text(f"RQ_CRON_LEASE_PERIOD={PERIOD}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("RQ_CRON_LEASE_PERIOD", raising=False)
    monkeypatch.setattr(cli, "_connect", lambda args, settings=None: (conn, cli._settings(args)))
    status = cli.main(["cron", "list", f"--env-file={env_file}", *argv])
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err
    return status, out.out


def test_cron_list_prints_each_cron_job_and_the_lease_holder(tmp_path, monkeypatch, capsys, conn):
    leader(conn)
    cron_job(conn, "nightly", cron="0 3 * * *", enqueued=4)
    status, out = run_cron_list(tmp_path, monkeypatch, capsys, conn)
    assert status == 0
    assert re.fullmatch(rf"Periodic jobs \(rq-cron\): lease held by b:20 \(token 7, [0-9.]+s left\); lease period "
                        rf"{PERIOD}s", out.splitlines()[0])
    assert out.splitlines()[2].split()[:7] == ["nightly", "cron-q", "cron", "0", "3", "*", "*"]
    status, out = run_cron_list(tmp_path, monkeypatch, capsys, conn, "--json")
    data = json.loads(out)
    assert (data["holder"], data["token"], data["lease_period"]) == ("b:20", 7, PERIOD)
    assert [(j["name"], j["zone"], j["catch_up"], j["enqueued_total"]) for j in data["jobs"]] == [
        ("nightly", "Europe/Berlin", "once", 4)]


def test_cron_list_with_nothing_in_redis_says_so(tmp_path, monkeypatch, capsys, conn):
    status, out = run_cron_list(tmp_path, monkeypatch, capsys, conn)
    assert status == 0 and "no cron jobs registered" in out and "NO scheduler holds the lease" in out
    assert json.loads(run_cron_list(tmp_path, monkeypatch, capsys, conn, "--json")[1])["jobs"] == []
