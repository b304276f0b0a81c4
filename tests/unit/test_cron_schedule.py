"""The schedule (``cron.schedule``): an app's ``rq cron`` config imported into entries, or one line.

Each config is a real file, written here, in rq's format (``from rq import cron; cron.register(...)``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import cron as rq_cron
from rq.cron import CronScheduler

from rq_worker_service.config import ConfigError
from rq_worker_service.cron import register
from rq_worker_service.cron.schedule import Entry, load
from rq_worker_service.cron.slots import next_slot

HEADER = "from rq import cron\nfrom rq_worker_service import cron as ours\nimport testjobs as tasks\n\n"


@pytest.fixture(autouse=True)
def clean_imports(monkeypatch):
    """What a test's config adds to sys.modules and rq's registry goes again (each test imports anew)."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("rq_cron_config_", "cronapp")):
            del sys.modules[name]
    rq_cron._job_data_registry.clear()


def write(path: Path, body: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + textwrap.dedent(body))
    return str(path)


def refusal(config: str, **defaults: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(config, zone=defaults.get("zone", "UTC"), catch_up=defaults.get("catch_up", "skip"))
    message = str(caught.value)
    assert "\n" not in message and message.isprintable(), message
    assert message.startswith("RQ_CRON_CONFIG"), message
    return message


def test_an_rq_cron_file_loads_unchanged_with_the_defaults_and_its_own_overrides(tmp_path):
    config = write(tmp_path / "cron_config.py", """\
        cron.register(tasks.quick_job, 'default', interval=600, job_timeout=30, meta={'k': 1})
        cron.register(tasks.sleep_job, 'high', args=(1, 2), kwargs={'z': 3}, cron='0 3 * * *', name='nightly')
        ours.register(tasks.client_id_job, 'low', cron='30 2 * * *', timezone='Europe/Berlin', catch_up='once')
        """)
    schedule = load(config, zone="America/New_York", catch_up="skip")
    assert schedule.source == config
    hello, nightly, nothing = schedule.entries
    assert hello == Entry(name="testjobs.quick_job", func=hello.func, func_name="testjobs.quick_job",
                          queue_name="default", args=(), kwargs={}, interval=600, cron=None,
                          zone="America/New_York", catch_up="skip",
                          job_options={"job_timeout": 30, "result_ttl": 500, "meta": {"k": 1}})
    assert hello.func.__name__ == "quick_job"
    assert (nightly.name, nightly.args, nightly.kwargs, nightly.cron) == ("nightly", (1, 2), {"z": 3}, "0 3 * * *")
    assert (nothing.zone, nothing.catch_up) == ("Europe/Berlin", "once")
    assert rq_cron._job_data_registry == []  # nothing left for the next load or a stock scheduler


def test_a_relative_file_path_and_a_dotted_module_load_as_rq_cron_finds_them(tmp_path, monkeypatch):
    write(tmp_path / "cronapp" / "schedule.py", "cron.register(tasks.quick_job, 'default', interval=60)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert [e.interval for e in load("cronapp/schedule.py", zone="UTC", catch_up="skip").entries] == [60]
    assert [e.interval for e in load("cronapp.schedule", zone="UTC", catch_up="skip").entries] == [60]


@pytest.mark.parametrize("relative", [False, True])
def test_each_load_runs_the_file_as_it_is_now(tmp_path, monkeypatch, relative):
    """A reload sees the edit, even one within the same second and of the same size: bytecode, which
    Python checks by the source's mtime and size, would be stale (written here, whatever
    PYTHONDONTWRITEBYTECODE says; the edit keeps the mtime)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "cronapp_edit.py"
    write(path, "cron.register(tasks.quick_job, 'default', interval=60)\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    config = "cronapp_edit" if relative else str(path)
    assert load(config, zone="UTC", catch_up="skip").entries[0].interval == 60
    before = path.stat()
    write(path, "cron.register(tasks.quick_job, 'default', interval=90)\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load(config, zone="UTC", catch_up="skip").entries[0].interval == 90


def test_stale_registrations_do_not_leak_into_a_load(tmp_path):
    rq_cron.register(print, "default", interval=5)  # left by someone else (a stock scheduler's config)
    config = write(tmp_path / "one.py", "cron.register(tasks.quick_job, 'default', interval=60)\n")
    assert [e.name for e in load(config, zone="UTC", catch_up="skip").entries] == ["testjobs.quick_job"]
    broken = write(tmp_path / "broken.py", "cron.register(tasks.quick_job, 'default', interval=60)\n1/0\n")
    refusal(broken)
    assert rq_cron._job_data_registry == []


def test_stock_rq_cron_loads_a_file_written_with_our_register_without_the_extras(tmp_path):
    config = write(tmp_path / "plain.py", "ours.register(tasks.quick_job, 'default', interval=60, name='hi')\n")
    scheduler = CronScheduler(connection=None)  # type: ignore[arg-type]  # loading connects to nothing
    scheduler.load_config_from_file(config)
    assert [(job.name, job.interval) for job in scheduler.get_jobs()] == [("hi", 60)]
    zoned = write(tmp_path / "zoned.py", "ours.register(tasks.quick_job, 'default', cron='0 3 * * *', "
                                         "timezone='Europe/Berlin')\n")
    scheduler = CronScheduler(connection=None)  # type: ignore[arg-type]
    scheduler.load_config_from_file(zoned)
    assert scheduler.get_jobs() == []  # refused (rq logs it), never run in the host's zone instead


def test_our_register_returns_rq_s_record_with_the_two_keywords_only_when_given():
    data = register(print, "default", interval=60)
    assert "timezone" not in data and "catch_up" not in data and data["interval"] == 60
    data = register(print, "default", cron="* * * * *", timezone="UTC", catch_up="once")
    assert (data["timezone"], data["catch_up"]) == ("UTC", "once")
    assert rq_cron._job_data_registry[-1] is data


@pytest.mark.parametrize(("body", "expected"), [
    ("import nosuchmodule_xyz\n", "ModuleNotFoundError: No module named 'nosuchmodule_xyz'"),
    ("cron.register(tasks.quick_job, 'default', interval=60\n", "SyntaxError: "),
    ("raise RuntimeError('first line\\nlast line')\n", "RuntimeError: first line\\nlast line"),
    ("raise SystemExit(3)\n", "SystemExit: 3"),
])
def test_a_config_that_does_not_import_is_named_with_the_exception_s_line(tmp_path, body, expected):
    config = write(tmp_path / "bad.py", body)
    message = refusal(config)
    assert config in message and "a schedule that imports" in message
    assert expected in message


def test_a_missing_file_or_module_is_refused_in_one_line(tmp_path):
    assert "FileNotFoundError: Configuration file not found" in refusal(str(tmp_path / "absent.py"))
    assert "IsADirectoryError" in refusal(str(tmp_path))
    assert "No module named 'cronapp_absent'" in refusal("cronapp_absent.schedule")


def test_the_app_s_exception_is_shown_without_the_secrets_given(tmp_path):
    config = write(tmp_path / "leaky.py", "raise ConnectionError('redis://:s3cret@db/0 refused')\n")
    with pytest.raises(ConfigError) as caught:
        load(config, zone="UTC", catch_up="skip", secrets=("s3cret",))
    assert "s3cret" not in str(caught.value) and "redis://:***@db/0" in str(caught.value)


@pytest.mark.parametrize(("register_call", "expected"), [
    ("", "a schedule that registers a job"),
    ("cron.register(tasks.quick_job, 'q', cron='61 * * * *')", "cron='61 * * * *' is invalid (["),
    ("cron.register(tasks.quick_job, 'q', cron='* * *')", "cron='* * *' is invalid (Exactly 5, 6 or 7 columns"),
    ("cron.register(tasks.quick_job, 'q', cron='0 0 30 2 *')", "cron='0 0 30 2 *' never matches a date"),
    ("cron.register(tasks.quick_job, 'q', cron=5)", "cron=5 is invalid: expected a cron string"),
    ("cron.register(tasks.quick_job, 'q', interval=60, cron='* * * * *')", "not both nor neither"),
    ("cron.register(tasks.quick_job, 'q')", "not both nor neither"),
    ("cron.register(tasks.quick_job, 'q', interval=-5)",
     "interval=-5 is invalid: expected a whole number of seconds, 1 or more"),
    ("cron.register(tasks.quick_job, 'q', interval=1.5)", "interval=1.5 is invalid"),
    ("cron.register(tasks.quick_job, 'q', interval=True)", "interval=True is invalid"),
    ("ours.register(tasks.quick_job, 'q', interval=9, timezone='Mars/Olympus')",
     "timezone='Mars/Olympus' is invalid: expected an IANA time zone"),
    ("ours.register(tasks.quick_job, 'q', interval=9, timezone='Europe')", "timezone='Europe' is invalid"),
    ("ours.register(tasks.quick_job, 'q', interval=9, catch_up='twice')",
     "catch_up='twice' is invalid: expected one of skip, once"),
    ("cron.register(tasks.quick_job, 'q', interval=9)\ncron.register(tasks.quick_job, 'r', cron='* * * * *')",
     "registered twice: expected one job per name"),
])
def test_a_bad_registration_is_refused_in_one_line_naming_the_job(tmp_path, register_call, expected):
    config = write(tmp_path / "jobs.py", register_call + "\n")
    message = refusal(config)
    assert expected in message, message
    assert message.startswith(f"RQ_CRON_CONFIG: {config}: job 'testjobs.quick_job': ") or not register_call


@pytest.mark.parametrize(("body", "expected"), [
    ("def local():\n    pass\ncron.register(local, 'q', interval=9)\n", "defined in the schedule itself"),
    ("cron.register(lambda: 1, 'q', interval=9, name='l')\n", "defined in the schedule itself"),
    ("cron.register(tasks.quick_job, '', interval=9)\n", "queue '' is invalid"),
    ("cron.register(tasks.quick_job, 'q', interval=9, name=7)\n", "name= is not a string"),
    ("cron.register(tasks.quick_job, 'q', interval=9, webhooks=['http://x'])\n", "webhooks must be a sequence"),
])
def test_what_would_fail_every_enqueue_is_refused_at_load(tmp_path, body, expected):
    assert expected in refusal(write(tmp_path / "late.py", body))


def test_interval_zero_is_refused_though_rq_reads_it_as_no_interval(tmp_path):
    config = write(tmp_path / "zero.py", "cron.register(tasks.quick_job, 'q', interval=0)\n")
    assert "interval=0 is invalid" in refusal(config)


def test_an_unknown_default_zone_or_catch_up_is_refused_too(tmp_path):
    config = write(tmp_path / "ok.py", "cron.register(tasks.quick_job, 'q', interval=9)\n")
    assert "timezone='Nowhere/Land'" in refusal(config, zone="Nowhere/Land")
    assert "catch_up='never' is invalid" in refusal(config, catch_up="never")


# ---- the corpus: whatever a config registers, an entry that works or one clean line ----------------

values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False, width=16),
                   st.text(max_size=20))
crons = st.one_of(values, st.sampled_from(["* * * * *", "0 3 * * *", "*/15 2 * * 1-5", "0 0 L * *", "@daily",
                                           "61 * * * *", "0 0 30 2 *", "* * * * * */10", "H * * * *", ""]))
zones = st.one_of(values, st.sampled_from(["UTC", "Europe/Berlin", "Europe", "../etc/passwd", "America/New_York"]))
catch_ups = st.one_of(values, st.sampled_from(["skip", "once", "SKIP"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={"interval": values, "cron": crons, "timezone": zones,
                                                    "catch_up": catch_ups, "name": st.text(max_size=8)}),
                max_size=3))
def test_any_registration_loads_into_working_entries_or_one_clean_line(registrations):
    with tempfile.TemporaryDirectory() as tmp:
        calls = "".join(f"ours.register(tasks.quick_job, 'default', **{kwargs!r})\n" for kwargs in registrations)
        config = write(Path(tmp) / "corpus.py", calls)
        try:
            schedule = load(config, zone="UTC", catch_up="skip")
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message and message.isprintable() and message.startswith("RQ_CRON_CONFIG"), message
            return
        finally:
            sys.modules.pop("rq_cron_config_corpus_py", None)
    assert len({e.name for e in schedule.entries}) == len(schedule.entries) == len(registrations)
    for e in schedule.entries:
        assert e.catch_up in ("skip", "once")
        assert next_slot(e, datetime(2026, 1, 1, tzinfo=UTC)) > datetime(2026, 1, 1, tzinfo=UTC)
