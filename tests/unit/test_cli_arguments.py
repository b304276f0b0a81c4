"""Every command's arguments: a mistake is one line on stderr naming the flag and the fix, and a
documented exit status (2 from argparse, 78 for configuration, …), never a traceback or a secret.

The commands run in this process (``cli.main`` with an argv), on fakeredis: ``connection.make_connection``
is replaced, so nothing here needs a Redis server. ``test_cli_corpus.py`` generates the arguments.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest

from rq_worker_service import cli, connection
from rq_worker_service.levels import Threshold

SERVER = fakeredis.FakeServer()


@dataclass
class Outcome:
    status: int | str | None
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


@contextlib.contextmanager
def isolated(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    """The shell a command runs from: no RQ_/REDIS_ variable of the test run's own, ``env`` added,
    ``cwd`` as working directory (its .env is read); all of it put back afterwards, with the root
    logger (``run --check`` installs its handler on it)."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_log = (list(root.handlers), root.level)
    for key in [k for k in os.environ if k.startswith(("RQ_", "REDIS_", "NOTIFY_SOCKET", "CREDENTIALS_"))]:
        del os.environ[key]
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = saved_log[0]
        root.setLevel(saved_log[1])


def fake_connection(target, key_prefix: str = "rq", client_name: str | None = None):
    return fakeredis.FakeRedis(server=SERVER)


def invoke(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, *, fake: bool = True) -> Outcome:
    """``rq-worker-service ARGV`` in this process: its exit status, stdout and stderr. An exception
    other than SystemExit is not caught: it is the traceback an operator would have seen."""
    if argv and argv[0] in ("run", "cron"):
        with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):  # a usage error starts nothing
            assert cli.build_parser().parse_args(argv).check, f"{argv} would start a {argv[0]} in the test process"
    out, err = io.StringIO(), io.StringIO()
    real = connection.make_connection
    if fake:
        connection.make_connection = fake_connection
    try:
        with isolated(env or {}, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status: int | str | None = cli.main(list(argv))
            except SystemExit as exc:
                status = exc.code
    finally:
        connection.make_connection = real
    return Outcome(status, out.getvalue(), err.getvalue())


@pytest.fixture
def shell(tmp_path):
    """An empty env file beside an empty working directory: the commands' defaults and nothing else."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "worker.env").write_text("")
    (tmp_path / "cwd").mkdir()
    return tmp_path


def status_argv(shell: Path, *args: str) -> list[str]:
    return ["status", "--env-file", str(shell / "etc" / "worker.env"), *args]


def refused(outcome: Outcome, status: int, *fragments: str) -> None:
    """One line on stderr, holding each fragment, and ``status``."""
    assert outcome.status == status, outcome
    assert len(outcome.lines) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr
    for fragment in fragments:
        assert fragment in outcome.stderr, outcome.stderr


@pytest.mark.parametrize("flag", ["--max-queued", "--max-age", "--max-failed", "--min-workers",
                                  "--max-heartbeat-age"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1,nan", "nan,1", "-1", "1,-1", "1e400", "", ",", "1,2,3"])
def test_a_threshold_that_could_never_fire_or_always_would_is_refused(shell, flag, value):
    """``--max-age nan`` was accepted: nan compares false with every age, so the check never fired."""
    refused(invoke(status_argv(shell, "--check", f"{flag}={value}"), shell / "cwd"), 2,
            f"argument {flag}: {value!r}", "finite numbers, 0 or more")


@pytest.mark.parametrize("flag, value, fix", [("--max-age", "900,300", "C must not be below"),
                                              ("--max-queued", "10,1", "C must not be below"),
                                              ("--min-workers", "1,2", "C must not be above")])
def test_a_critical_level_on_the_wrong_side_of_the_warning_is_refused(shell, flag, value, fix):
    """Past C the verdict is CRITICAL at once: a C on the wrong side of W hid the warning for good."""
    refused(invoke(status_argv(shell, "--check", flag, value), shell / "cwd"), 2, f"argument {flag}: {value!r}", fix)


@pytest.mark.parametrize("flag, value", [("--max-age", "300,300"), ("--max-age", "0"), ("--min-workers", "2,1"),
                                         ("--min-workers", "1,1"), ("--max-queued", " 5 , 1e3 ")])
def test_sound_thresholds_still_pass(shell, flag, value):
    outcome = invoke(status_argv(shell, "--check", flag, value), shell / "cwd")
    assert outcome.status in (0, 1, 2) and outcome.stderr == "", outcome


@pytest.mark.parametrize("text", ["1234567", "0.1", "1e-07", "3,1234567.25", "123456789012345678"])
def test_a_threshold_passed_on_to_a_prefix_s_child_is_the_same_threshold(text):
    """``status`` hands each key prefix's child ``str(threshold)``: ``:g`` made 1234567 into 1234570."""
    threshold = Threshold.parse(text)
    assert Threshold.parse(str(threshold)) == threshold


@pytest.mark.parametrize("value", ["a b", "", " ", " rq ", "rq\n", "caf\u00e9", "x\udcff", "a%s"])
def test_a_key_prefix_flag_rq_would_refuse_is_one_line_naming_the_flag(shell, value):
    """Through RQ_KEY_PREFIX's parser, as the variable: ``--key-prefix 'a b'`` named RQ_KEY_PREFIX, and an
    empty or blank one was silently the default prefix's report."""
    expected = "UTF-8 text" if not value.isprintable() and "\udcff" in value else "letters, digits"
    refused(invoke(status_argv(shell, f"--key-prefix={value}"), shell / "cwd"), 78,
            f"configuration error: --key-prefix={value!r} is invalid: expected {expected}")


def test_a_key_prefix_flag_refused_is_unknown_to_a_check_and_rq_up_0_to_prometheus(shell):
    """The monitoring contract of every configuration error."""
    check = invoke(status_argv(shell, "--check", "--key-prefix", "a b"), shell / "cwd")
    assert check.status == 3 and check.stdout.startswith("UNKNOWN: configuration error: --key-prefix='a b'")
    prom = invoke(status_argv(shell, "--prometheus", "--key-prefix", "a b"), shell / "cwd")
    assert prom.status == 0 and "rq_up 0" in prom.stdout and "--key-prefix='a b'" in prom.stderr


@pytest.mark.parametrize("value", ["{reports}", "rq", "app:v2"])
def test_a_sound_key_prefix_flag_is_taken(shell, value):
    outcome = invoke(status_argv(shell, "--json", "--key-prefix", value), shell / "cwd")
    assert outcome.status == 0 and outcome.stderr == "", outcome


NOT_UTF8 = b"REDIS_DB=0\nRQ_KEY_PREFIX=caf\xe9\n"


@pytest.mark.parametrize("where", ["etc/worker-2.env", "etc/worker.env", "cwd/.env"])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["job", "x"], ["requeue", "x"],
                                     ["cleanup"], ["acl"]])
def test_an_env_file_that_is_not_utf8_is_one_line_naming_it_and_the_fix(shell, where, command):
    """A worker-*.env that is not UTF-8 crashed ``status`` (only OSError was caught); worker.env's and
    .env's error told to make the file readable, which does not help."""
    (shell / where).write_bytes(NOT_UTF8)
    outcome = invoke([*command, "--env-file", str(shell / "etc" / "worker.env")], shell / "cwd")
    if where == "etc/worker-2.env" and command[0] != "status":
        assert outcome.status in (0, 1), outcome  # only status reads the instance files
        return
    refused(outcome, 78, f"{shell / where}: line 2 is not UTF-8 text; write the file in UTF-8")
    assert "caf" not in outcome.stderr, "the bytes may be a password's: only the line is named"


def test_an_env_file_that_is_not_utf8_is_unknown_to_a_check(shell):
    (shell / "etc" / "worker-2.env").write_bytes(NOT_UTF8)
    outcome = invoke(status_argv(shell, "--check"), shell / "cwd")
    assert outcome.status == 3 and outcome.stdout.startswith("UNKNOWN: configuration error: ")
    assert "worker-2.env: line 2 is not UTF-8 text" in outcome.stdout


def test_the_job_id_rule_is_rq_s():
    """Pinned: if rq widens or narrows its rule, ``job``/``requeue`` must follow it."""
    from rq.job import JOB_ID_PATTERN

    assert cli._JOB_ID_RE.pattern.split("(?:")[0] == JOB_ID_PATTERN.pattern


@pytest.mark.parametrize("command, before", [(["job"], []), (["requeue"], []), (["requeue", "--dry-run"], ["ok-id"])])
@pytest.mark.parametrize("value", ["", " ", "../x", "*", "a b", "x\udcff", "caf\u00e9", "id\n", "a:", ":a", "a:b:c"])
def test_an_odd_job_id_is_a_usage_error_naming_it(shell, command, before, value):
    """rq 3 raised ValueError (a traceback) for an id outside its rule."""
    outcome = invoke([*command, "--env-file", str(shell / "etc" / "worker.env"), "--", *before, value],
                     shell / "cwd")
    refused(outcome, 2, "argument JOB_ID: ", "expected a job id: letters, digits, _ and -")


@pytest.mark.parametrize("value", ["ghost", "ghost-1_A", "ghost:0123abcd"])
def test_a_well_formed_job_id_that_does_not_exist_is_status_1(shell, value):
    outcome = invoke(["job", "--env-file", str(shell / "etc" / "worker.env"), value], shell / "cwd")
    refused(outcome, 1, f"no job with id {value!r}")


@pytest.mark.parametrize("argv", [["status", "-q"], ["status", "--queue"], ["requeue", "--queue"]])
@pytest.mark.parametrize("value", ["", " ", "a b", "a,b", "x\udcff", "\t"])
def test_an_odd_queue_name_is_a_usage_error_naming_it(shell, argv, value):
    """``status -q $'\\xff'`` crashed in redis-py's encoder; an empty name was a silent empty report."""
    outcome = invoke([*argv[:-1], "--env-file", str(shell / "etc" / "worker.env"), f"{argv[-1]}={value}"],
                     shell / "cwd")
    refused(outcome, 2, f"argument {'-q/--queue' if argv[0] == 'status' else '--queue'}: ", "queue name")


@pytest.mark.parametrize("command", [["status"], ["job", "x"], ["requeue", "x"], ["cleanup"], ["acl"],
                                     ["autoscale"]])
def test_an_env_file_that_is_a_directory_missing_or_empty_is_one_line(shell, command):
    outcomes = {kind: invoke([*command, f"--env-file={value}"], shell / "cwd", {"RQ_AUTOSCALE_MAX": "0"})
                for kind, value in [("dir", shell / "etc"), ("missing", shell / "nope.env"), ("empty", "")]}
    refused(outcomes["dir"], 78, f"--env-file {shell / 'etc'} is a directory: give the workers' environment file")
    refused(outcomes["missing"], 78, f"cannot read --env-file {shell / 'nope.env'}: give a readable file")
    refused(outcomes["empty"], 2, "argument --env-file: '': expected a file's path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_env_file_this_user_cannot_read_is_one_line(shell):
    env_file = shell / "etc" / "worker.env"
    env_file.chmod(0)
    refused(invoke(status_argv(shell), shell / "cwd"), 78, f"cannot read --env-file {env_file}")


@pytest.mark.parametrize("target, status, fragment", [
    ("", 2, "argument -o/--output: '': expected a file's path"),
    ("{tmp}", 73, "cannot write {tmp}: Is a directory"),
    ("{tmp}/no/such/dir/rq.prom", 73, "cannot write {tmp}/no/such/dir/rq.prom: No such file or directory"),
    ("/proc/version", 73, "cannot write /proc/version: "),
    ("{tmp}/no\nsuch/rq.prom", 73, "cannot write {tmp}/no\\nsuch/rq.prom: No such file or directory"),
])
@pytest.mark.parametrize("fmt", [[], ["--json"], ["--prometheus"]])
def test_an_output_that_cannot_be_written_is_one_line(shell, target, status, fragment, fmt):
    """-o to a directory, a missing one or /proc: exit 73 (EX_CANTCREAT), one line, even with a newline in
    the path."""
    target, fragment = (t.replace("{tmp}", str(shell)) for t in (target, fragment))
    refused(invoke(status_argv(shell, *fmt, f"--output={target}"), shell / "cwd"), status, fragment)


def test_status_hands_each_prefix_s_child_options_it_reads_back_the_same(shell, monkeypatch):
    """A prefix (or queue name) may start with '-': passed as ``--key-prefix -x`` the child took it for an
    option and failed with 'expected one argument'."""
    (shell / "etc" / "worker-1.env").write_text("RQ_KEY_PREFIX={b}\n")
    children = []

    def child(argv, **kwargs):
        children.append((cli.build_parser().parse_args(argv[3:]), kwargs["env"].get("REDIS_URL")))
        return subprocess.CompletedProcess(argv, 1, "", "stopped here")

    monkeypatch.setattr(cli.subprocess, "run", child)
    outcome = invoke(status_argv(shell, "--queue=-q", "--url=redis://h/0", "--max-age=1234567,2e6"), shell / "cwd",
                     {"RQ_KEY_PREFIX": "-own"})
    refused(outcome, 1, "key prefix -own: stopped here")
    [(args, url)] = children  # --url becomes the child's REDIS_URL (its password, if any, goes by memfd)
    assert (args.key_prefix, args.queues, url, str(args.max_age), args.json) == (
        "-own", ["-q"], "redis://h/0", "1234567,2000000", True)


@pytest.mark.parametrize("argv, status, fragment", [
    (["acl", "--env-file=--"], 78, "cannot read --env-file --: give a readable file"),
    (["status", "--max-age=--"], 2, "argument --max-age: '--': expected W or W,C"),
    (["status", "--queue=--"], 0, ""),
    (["job", "--url=--", "x"], 78, "--url='--' is invalid"),
])
def test_a_flag_given_as_flag_equals_dashes_gets_the_value_dashes(shell, argv, status, fragment):
    """Python 3.11's argparse dropped the '--' of ``--env-file=--`` and handed the command an empty list:
    a TypeError traceback (found by the corpus)."""
    outcome = invoke([*argv, "--env-file", str(shell / "etc" / "worker.env")] if "--env-file=--" not in argv
                     else argv, shell / "cwd")
    assert outcome.status == status, outcome
    assert fragment in outcome.stderr and "Traceback" not in outcome.stderr


@pytest.mark.parametrize("command", [["status"], ["acl"], ["autoscale"], ["run", "--check"]])
def test_an_env_file_name_too_long_for_the_file_system_is_one_line(shell, command):
    """``Path.is_dir()`` raises ENAMETOOLONG instead of answering False (found by the corpus)."""
    outcome = invoke([*command, "--env-file", "x" * 5000], shell / "cwd", {"RQ_AUTOSCALE_MAX": "0"})
    refused(outcome, 78, "File name too long")


@pytest.mark.parametrize("mode", ["--check", "--prometheus"])
def test_a_configuration_error_stays_one_line_for_monitoring_too(shell, mode):
    """An env file's name with a newline made ``UNKNOWN: …`` (stdout) or the ``rq_up 0`` note (stderr) two
    lines: a monitoring system reads the first only."""
    bad = shell / "etc\nx"
    bad.mkdir()
    (bad / "worker.env").write_bytes(NOT_UTF8)
    outcome = invoke(["status", mode, "--env-file", str(bad / "worker.env")], shell / "cwd")
    assert outcome.status in (0, 3), outcome
    message = outcome.stdout if mode == "--check" else outcome.stderr
    assert "etc\\nx" in message and len(message.strip().splitlines()) == 1, outcome


def test_a_refusal_or_no_redis_names_the_default_env_file_this_user_could_not_read(tmp_path, monkeypatch):
    """A user outside group rq-worker runs ``status``: the default worker.env (0640) is passed over unread, and
    Redis refused the login with no word of why; the one line now says the file was not read and how to."""
    import argparse

    env_file = tmp_path / "worker.env"
    env_file.write_text("REDIS_PASSWORD=secret\n")
    monkeypatch.setattr(cli, "DEFAULT_ENV_FILE", str(env_file))
    args = argparse.Namespace(env_file=str(env_file))
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    assert cli._unread(args) == (f"; {env_file} was not read (this user may not: run as root or as a member of "
                                 "group rq-worker)")
    monkeypatch.undo()
    monkeypatch.setattr(cli, "DEFAULT_ENV_FILE", str(env_file))
    assert cli._unread(args) == "", "read: nothing to add"
    assert cli._unread(argparse.Namespace(env_file=str(tmp_path / "other.env"))) == "", "a file given by hand"
