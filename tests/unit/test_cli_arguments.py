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
    refused(invoke(status_argv(shell, f"--key-prefix={value}"), shell / "cwd"), 78,
            f"configuration error: --key-prefix={value!r} is invalid: expected letters, digits")


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
