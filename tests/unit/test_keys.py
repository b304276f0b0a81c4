"""``keys``: the prefix is settled before rq reads it, and the service's key names never move."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rq_worker_service import keys
from rq_worker_service.acl import rule
from rq_worker_service.config import ConfigError


def test_the_service_keys_keep_their_names():
    """Stored data: a renamed key would hide every worker's, autoscaler's and cron scheduler's entries from the
    others (two cron schedulers of two versions would each take their own lease and enqueue every slot twice)."""
    assert keys.imported() == "rq"  # the test process imported rq without RQ_KEY_PREFIX
    assert [keys.enqueued(), keys.autoscalers(), keys.autoscale_step(), keys.fencing_deadlines(),
            keys.fencing_members(), keys.fencing_fenced(), keys.fencing_history(), keys.fencing_beats(),
            keys.held("h.rq-worker@1"), keys.holders(), keys.cron_lease(), keys.cron_token(), keys.cron_last(),
            keys.cron_jobs(), keys.cron_schedulers(), keys.cron_handovers()] == [
        "rq:service:enqueued", "rq:service:autoscalers", "rq:service:autoscale-step", "rq:service:deadlines",
        "rq:service:members", "rq:service:fenced", "rq:service:fencings", "rq:service:beats",
        "rq:service:held:h.rq-worker@1", "rq:service:holders", "rq:service:cron:lease", "rq:service:cron:token",
        "rq:service:cron:last", "rq:service:cron:jobs", "rq:service:cron:schedulers", "rq:service:cron:handovers"]


def test_the_acl_rule_covers_every_key_and_channel_under_the_prefix():
    assert keys.everything("{reports}") == "{reports}:*"
    assert rule("{reports}").startswith("resetkeys ~{reports}:* resetchannels &{reports}:* ")


@pytest.mark.parametrize("raw, read", [("{reports}", "{reports}"), (" app ", "app"), ("", "rq"), ("  ", "rq")])
def test_the_environment_is_read_as_the_configuration_reads_it(raw, read):
    env = {keys.VARIABLE: raw}
    keys.prepare_environment(env)
    assert env == {keys.VARIABLE: read}
    assert keys.from_environment(env) == read


def test_an_unset_prefix_stays_unset_for_run_s_env_file_to_fill_in():
    env: dict[str, str] = {}
    keys.prepare_environment(env)
    assert env == {}
    assert keys.from_environment(env) == "rq"


@pytest.mark.parametrize("raw", ["app%s", "a b", "app/x", "caf\u00e9"])
def test_a_prefix_rq_would_refuse_is_one_line_naming_the_variable(raw):
    env = {keys.VARIABLE: f"x{raw}"}
    with pytest.raises(ConfigError) as caught:
        keys.prepare_environment(env)
    assert str(caught.value).startswith(f"RQ_KEY_PREFIX={env[keys.VARIABLE].strip()!r} is invalid: expected letters")
    assert env[keys.VARIABLE] == f"x{raw}", "a refused value is left as it was"


def test_export_is_what_rq_reads():
    env: dict[str, str] = {}
    keys.export("{reports}", env)
    assert env == {keys.VARIABLE: "{reports}"}


def test_check_imported_refuses_another_prefix_than_rq_s():
    keys.check_imported("rq")
    with pytest.raises(ConfigError, match=r"RQ_KEY_PREFIX='\{reports\}' is invalid: expected the prefix rq was "
                                          r"imported with \('rq'\)"):
        keys.check_imported("{reports}")


def _python(code: str, prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, keys.VARIABLE: prefix}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_rq_imported_after_prepare_takes_the_trimmed_prefix_and_the_keys_follow_it():
    """Unprepared, rq's own import refuses blanks around the prefix with a traceback."""
    bare = _python("import rq.defaults", " {reports} ")
    assert bare.returncode != 0 and "Invalid RQ_KEY_PREFIX" in bare.stderr
    out = _python("from rq_worker_service import keys\nkeys.prepare_environment()\nimport rq.defaults\n"
                  "keys.check_imported('{reports}')\nprint(rq.defaults.RQ_KEY_PREFIX, keys.autoscalers())",
                  " {reports} ")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["{reports}", "{reports}:service:autoscalers"]


@pytest.mark.parametrize("prefix, status", [("", 0), (" {reports} ", 0), ("app%s", 78)])
def test_run_settles_the_prefix_before_rq_s_import(prefix, status):
    """``run --check`` imports rq (through ``service``): a blank or padded prefix no longer ends in
    rq's traceback, a bad one is one line with exit 78."""
    out = _python("import sys\nfrom rq_worker_service.cli import main\nsys.exit(main(['run', '--check']))", prefix)
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr
    if status:
        assert f"RQ_KEY_PREFIX={prefix!r} is invalid" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_status_reads_the_instance_files_prefixes_as_the_workers_do(tmp_path):
    """A padded prefix is the same prefix (one section, not two); a blank one is not set; a bad one is one
    line naming the file, exit 78."""
    import argparse

    from rq_worker_service.cli import CommandError, _instance_prefixes

    env_file = tmp_path / "worker.env"
    (tmp_path / "worker-1.env").write_text("RQ_KEY_PREFIX=' {a} '\n")
    (tmp_path / "worker-2.env").write_text("RQ_KEY_PREFIX=\n")
    (tmp_path / "worker-3.env").write_text("RQ_KEY_PREFIX={a}\n")
    (tmp_path / "worker-4.env").write_text("RQ_KEY_PREFIX={b}\n")
    args = argparse.Namespace(env_file=str(env_file))
    assert _instance_prefixes(args, "rq") == ["rq", "{a}", "{b}"]
    (tmp_path / "worker-5.env").write_text("RQ_KEY_PREFIX=a/b\n")
    with pytest.raises(CommandError) as caught:
        _instance_prefixes(args, "rq")
    assert caught.value.status == 78
    assert str(caught.value).startswith(f"configuration error in {tmp_path / 'worker-5.env'}: RQ_KEY_PREFIX='a/b'")
