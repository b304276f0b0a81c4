"""``rq-worker-service cron [--check]``: the schedule validated and imported as the scheduler would, one line and exit
78 for each mistake (never a traceback or a secret), and the loop's reload and stop (``cron.scheduler.loop``)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import fakeredis
import pytest
from helpers import JOBS_DIR
from test_cli_arguments import Outcome, invoke, isolated, refused

from rq_worker_service import cli, exits, keys

SECRET = "Cr0n-s3cret"


@pytest.fixture
def shell(tmp_path):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cron_config.py").write_text("from rq import cron\nfrom testjobs import quick_job\n\n"
                                            "cron.register(quick_job, 'default', args=(1,), interval=60)\n"
                                            "cron.register(quick_job, 'default', args=(2,), cron='0 3 * * *', "
                                            "name='nightly')\n")
    (tmp_path / "worker.env").write_text(f"REDIS_URL=redis://:{SECRET}@127.0.0.1:1/0\nRQ_APP_PATH={JOBS_DIR}\n"
                                         f"RQ_CRON_CONFIG={tmp_path / 'cron_config.py'}\n")
    return tmp_path


def cron(shell: Path, *args: str) -> Outcome:
    """``cron --check`` through the corpus's ``invoke``; plain ``cron`` (the start) in this process too, which
    must end before it connects (``wait_for_redis`` fails the test if reached)."""
    argv = ["cron", "--env-file", str(shell / "worker.env"), *args]
    if "--check" in args:
        return invoke(argv, shell / "cwd", fake=False)
    from rq_worker_service.cron import scheduler

    def connect(*args, **kwargs):
        raise AssertionError("a start with a bad configuration went on to connect")

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "wait_for_redis", connect)
        with isolated({}, shell / "cwd"), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
    return Outcome(status, out.getvalue(), err.getvalue())


def test_check_imports_the_schedule_and_says_so_in_one_line(shell):
    outcome = cron(shell, "--check")
    assert outcome.status == exits.OK, outcome
    [line] = outcome.lines
    assert f"Configuration OK: 2 cron job(s) from {shell / 'cron_config.py'} (lease 10s, misfire grace 60s)" in line
    assert SECRET not in outcome.stderr


@pytest.mark.parametrize("env, fragment", [
    ({"RQ_CRON_CONFIG": ""}, "RQ_CRON_CONFIG: not set: name the schedule"),
    ({"RQ_CRON_LEASE_PERIOD": "40"}, "RQ_CRON_MISFIRE_GRACE='60' is invalid: expected at least two lease periods "
                                     "(80 s with RQ_CRON_LEASE_PERIOD=40)"),
    ({"RQ_CRON_LEASE_PERIOD": "2"}, "RQ_CRON_LEASE_PERIOD='2' is invalid"),
    ({"RQ_CRON_TIMEZONE": "Mars/Olympus"}, "RQ_CRON_TIMEZONE='Mars/Olympus' is invalid"),
    ({"RQ_KEY_PREFIX": "a b"}, "RQ_KEY_PREFIX='a b' is invalid"),
])
@pytest.mark.parametrize("check", [True, False])
def test_a_bad_setting_is_one_line_and_78_for_the_check_and_the_start(shell, env, fragment, check):
    with open(shell / "worker.env", "a") as f:
        f.writelines(f"{key}={value}\n" for key, value in env.items())
    outcome = cron(shell, *(["--check"] if check else []))
    refused(outcome, exits.CONFIG, "configuration error: ", fragment)
    assert SECRET not in outcome.stderr


def test_a_schedule_that_does_not_import_is_one_line_and_78(shell):
    (shell / "cron_config.py").write_text("import no_such_module_here\n")
    refused(cron(shell, "--check"), exits.CONFIG, "RQ_CRON_CONFIG=", "no_such_module_here")


def test_an_env_file_that_is_a_directory_is_one_line(shell):
    refused(invoke(["cron", "--check", "--env-file", str(shell)], shell / "cwd"), exits.CONFIG,
            f"{shell}: a directory, not an environment file")


# -- the loop: signals recorded, acted on by the loop --------------------------------------------------------------


class Signals:
    """The loop's signals, raised by the test between two looks: a reload, then a stop."""

    def __init__(self, then) -> None:
        self.stop = self.reload = False
        self.waits: list[float] = []
        self.then = then

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.then(self, len(self.waits))


class Notes:
    watchdog_seconds = 9.0

    def __init__(self) -> None:
        self.said: list[str] = []

    def __getattr__(self, name):
        return lambda *args: self.said.append(f"{name}:{args[0] if args else ''}")


def test_the_loop_reloads_on_sighup_keeps_the_old_schedule_on_a_bad_one_and_releases_at_the_stop(shell, monkeypatch,
                                                                                                 caplog):
    from rq import Queue

    from rq_worker_service.cron.schedule import load
    from rq_worker_service.cron.scheduler import CronScheduler, loop
    from rq_worker_service.cron.settings import cron_settings

    conn = fakeredis.FakeRedis()
    monkeypatch.chdir(shell / "cwd")
    monkeypatch.syspath_prepend(str(JOBS_DIR))
    env = {"RQ_CRON_CONFIG": str(shell / "cron_config.py")}
    settings = cron_settings(env)
    schedule = load(settings.config, zone="UTC", catch_up="skip")
    scheduler = CronScheduler(conn, schedule, lambda name: Queue(name, connection=conn), settings, "h", 1)
    config = shell / "cron_config.py"

    def then(signals: Signals, look: int) -> None:
        if look == 1:
            config.write_text("from rq import cron\nfrom testjobs import quick_job\n\n"
                              "cron.register(quick_job, 'other', args=(3,), interval=3600, name='hourly')\n")
            signals.reload = True
        elif look == 2:
            assert [e.name for e in scheduler.schedule.entries] == ["hourly"]
            assert sorted(conn.hkeys(keys.cron_jobs())) == [b"hourly"], "the leader drops the jobs it no longer has"
            config.write_text("this is not python(\n")
            signals.reload = True
        else:
            assert [e.name for e in scheduler.schedule.entries] == ["hourly"], "a bad schedule changes nothing"
            signals.stop = True

    monkeypatch.setattr("rq_worker_service.cron.scheduler.environment", env)
    monkeypatch.setattr("rq_worker_service.cron.scheduler.refresh_environment", lambda *a: None)
    notes, signals = Notes(), Signals(then)
    assert loop(scheduler, signals, notes, []) == exits.OK  # type: ignore[arg-type]
    assert conn.get(keys.cron_lease()) is None and conn.hlen(keys.cron_schedulers()) == 0
    assert Queue("other", connection=conn).count == 1
    assert notes.said[0].startswith("ready:leader (token 1)")
    assert [n.split(":")[0] for n in notes.said if n.split(":")[0] in ("reloading", "ready", "stopping")] == [
        "ready", "reloading", "ready", "reloading", "ready", "stopping"]
    assert all(wait <= 3 for wait in signals.waits), "the watchdog (9 s) is pinged at least every third of it"
    assert any("Reload refused, the schedule of" in r.getMessage() for r in caplog.records)
    assert json.loads(conn.lindex(keys.cron_handovers(), 0))["token"] == 1


def test_a_redis_outage_is_said_once_waited_out_and_the_leader_goes_on(caplog):
    caplog.set_level("INFO", "rq_worker_service.cron")
    from rq import Queue
    from testjobs import quick_job

    from rq_worker_service.cron.schedule import Entry, Schedule
    from rq_worker_service.cron.scheduler import CronScheduler, loop
    from rq_worker_service.cron.settings import CronSettings

    server = fakeredis.FakeServer()
    conn = fakeredis.FakeRedis(server=server)
    entry = Entry(name="tick", func=quick_job, func_name="testjobs.quick_job", queue_name="default", args=(1,),
                  kwargs={}, interval=3600, cron=None, zone="UTC", catch_up="skip", job_options={})
    settings = CronSettings(config="c.py", zone="UTC", catch_up="skip", lease_period=3, grace=6)
    scheduler = CronScheduler(conn, Schedule(source="c.py", entries=(entry,)),
                              lambda name: Queue(name, connection=conn), settings, "h", 1)

    def then(signals: Signals, look: int) -> None:
        server.connected = look not in (1, 2, 3)  # down for three looks
        signals.stop = look == 5

    notes = Notes()
    assert loop(scheduler, Signals(then), notes, []) == exits.OK  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if r.name == "rq_worker_service.cron"]
    assert sum("cannot reach Redis" in line for line in said) == 1, said
    assert sum(line == "Redis answers again" for line in said) == 1, said
    statuses = [n for n in notes.said if n.startswith("status:")]
    assert any(n.startswith("status:holding: Redis does not answer") for n in statuses), statuses
    assert statuses[-1].startswith("status:leader (token 1): next tick at "), "the same lease, renewed after it"
    assert scheduler.lease.held is False and conn.get(keys.cron_lease()) is None
    assert Queue("default", connection=conn).count == 1


def test_a_schedule_that_fails_quoting_the_redis_password_does_not_show_it(shell):
    (shell / "cron_config.py").write_text(f"raise RuntimeError('cannot connect with {SECRET}')\n")
    outcome = cron(shell, "--check")
    refused(outcome, exits.CONFIG, "RuntimeError: cannot connect with ***")
    assert SECRET not in outcome.stderr
