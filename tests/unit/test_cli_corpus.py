"""A generated corpus over every command's arguments: whatever an operator types, the command ends in a
documented exit status with at most one line on stderr (naming the flag, when one flag was given), and
never a traceback or a secret.

The flags are read from the parser itself (``run``'s come from the variable table), so a new flag is in
the corpus without a change here. Values: empty, blanks, bytes that are not UTF-8 (as Python hands
them over: surrogateescape), huge and negative numbers, nan/inf, option-looking values, long strings,
odd job ids, odd paths and URLs, and arbitrary text.

Replaying: the examples are derandomized (the same on every run, so CI is reproducible); a failure
prints the falsifying argv as a shell command line to paste. ``RQWS_CLI_CORPUS_EXAMPLES=2000
RQWS_CLI_CORPUS_RANDOM=1 pytest tests/unit/test_cli_corpus.py --hypothesis-seed=N`` explores further
from seed N (without ``--hypothesis-seed``, Hypothesis prints the seed of a failing run).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_arguments import Outcome, invoke

from rq_worker_service import cli, exits

CORPUS = settings(
    max_examples=int(os.environ.get("RQWS_CLI_CORPUS_EXAMPLES", "60")),
    derandomize=not os.environ.get("RQWS_CLI_CORPUS_RANDOM"),
    deadline=timedelta(seconds=5),  # one in-process command takes ~10 ms; a shared CI machine, far more
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECRET = "S3cr3t-pw"
"""A password given on the command line (--url) or in the environment: it must never be printed."""

NOT_UTF8 = [b.decode("utf-8", "surrogateescape") for b in (b"\xff", b"caf\xe9", b"\xc3", b"a\x80b")]
ODD = ["", " ", "\t", " x ", "\n", "a\nb", "-", "--", "-x", "--json", "-h", "nan", "inf", "-inf", "-1", "0", "1e400",
       "99999999999999999999", "0x10", "1_000", "1,2", "2,1", "1,2,3", ",", "None", "true", "a b", "a,b", ":", "*",
       "../x", "%s", "%(prog)s", "{", "{x}", "x" * 5000, "😀", "\u200b", *NOT_UTF8]
"""Values every flag and positional is given, whatever it expects."""

URLS = [f"redis://u:{SECRET}@127.0.0.1:1/0", f"redis://:{SECRET}@h/abc", f"rediss://u:{SECRET}@[::1/0",
        f"redis://u:{SECRET}@h:99999/0", "unix://", "unix:///x.sock", "redis://h/0", "http://h", "redis://\udcff/0"]
JOB_IDS = ["x", "x" * 300, "a-b_C", "a:0123abcd", "a:b:c", "a/b", ".", "..", "a.b", "*", "?"]


def text_values() -> st.SearchStrategy[str]:
    """Arbitrary text (no NUL: an argv cannot hold one), bytes through surrogateescape, numbers."""
    return st.one_of(
        st.sampled_from(ODD),
        st.text(max_size=30).filter(lambda t: "\0" not in t),
        st.binary(max_size=16).map(lambda b: b.decode("utf-8", "surrogateescape")).filter(lambda t: "\0" not in t),
        st.integers().map(str),
        st.floats().map(str),
    )


def relative(value: str) -> str:
    """A generated path stays inside the working directory (a tmp one): never /dev/stdin or /etc/…."""
    return "./" + value.lstrip("/") if value.startswith("/") else value


def values_for(flag: str, places: dict[str, Path]) -> st.SearchStrategy[str]:
    if flag in ("--env-file",):
        return st.one_of(st.sampled_from([str(p) for p in places.values()] + [cli.DEFAULT_ENV_FILE]),
                         text_values().map(relative))
    if flag in ("-o", "--output"):
        return st.one_of(st.sampled_from([str(places["dir"]), str(places["missing"]), str(places["missing"] / "x"),
                                          "/proc/version", str(places["dir"] / "out.prom")]),
                         text_values().map(relative))
    if flag in ("-u", "--url"):
        return st.one_of(st.sampled_from(URLS), text_values())
    if flag in ("job_id", "job_ids"):
        return st.one_of(st.sampled_from(JOB_IDS), text_values())
    return text_values()


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """Env files to point --env-file at: a good one, a directory, a missing one, one that is not UTF-8, and one
    whose instance file beside it is not UTF-8."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "good").mkdir()
    (root / "good" / "worker.env").write_text("RQ_QUEUES=default\n")
    (root / "latin1").mkdir()
    (root / "latin1" / "worker.env").write_bytes(b"RQ_QUEUES=caf\xe9\n")
    (root / "sibling").mkdir()
    (root / "sibling" / "worker.env").write_text("")
    (root / "sibling" / "worker-1.env").write_bytes(b"RQ_KEY_PREFIX=\xff\n")
    (root / "cwd").mkdir()
    return {"good": root / "good" / "worker.env", "dir": root / "good", "missing": root / "missing",
            "latin1": root / "latin1" / "worker.env", "sibling": root / "sibling" / "worker.env", "cwd": root / "cwd"}


PARSER = cli.build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
ALLOWED = {
    "status": {exits.OK, 1, 2, 3, exits.UNAVAILABLE, exits.CANT_CREATE, exits.NOPERM, exits.CONFIG},
    "job": {exits.OK, exits.LOOP_ERROR, 2, exits.UNAVAILABLE, exits.NOPERM, exits.CONFIG},
    "failed": {exits.OK, exits.LOOP_ERROR, 2, exits.UNAVAILABLE, exits.NOPERM, exits.CONFIG},
    "requeue": {exits.OK, exits.LOOP_ERROR, 2, exits.USAGE, exits.UNAVAILABLE, exits.NOPERM, exits.CONFIG},
    "cleanup": {exits.OK, 2, exits.UNAVAILABLE, exits.NOPERM, exits.CONFIG},
    "acl": {exits.OK, 2, exits.CONFIG},
    "run": {exits.OK, 2, exits.CONFIG},  # always with --check: connects to nothing
    "autoscale": {2, exits.CONFIG},  # RQ_AUTOSCALE_MAX=0 below: it stops before systemd and Redis
    "cron": {exits.OK, 2, exits.CONFIG},  # always with --check: connects to nothing
}
"""The documented statuses (README, docs/operations.md) each command may end with."""
ENV = {"autoscale": {"RQ_AUTOSCALE_MAX": "0"}}


def options(command: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[command]._actions if not isinstance(a, argparse._HelpAction)]


def name_of(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


@st.composite
def command_lines(draw, command: str, places: dict[str, Path]) -> tuple[list[str], list[tuple[argparse.Action, str]]]:
    """``command`` with a few of its options, each given a generated value (``--flag value`` or
    ``--flag=value``), and its positionals after ``--``; and each option drawn with its value."""
    chosen = draw(st.lists(st.sampled_from(options(command)), max_size=3, unique_by=name_of))
    argv, positionals, given = [command], [], []
    for action in chosen:
        if not action.option_strings:
            positionals.append(draw(values_for(action.dest, places)))
            given.append((action, positionals[-1]))
            continue
        flag = draw(st.sampled_from(action.option_strings))
        value = "" if action.nargs == 0 else draw(values_for(flag, places))
        given.append((action, value))
        if action.nargs == 0:
            argv.append(flag)
        elif draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if command in ("run", "cron"):
        argv.insert(1, "--check")
    if command == "job" and not positionals:
        positionals.append("x")  # required: a sound one, so that what fails is the option drawn
    return argv + (["--", *positionals] if positionals else []), given


def shell_word(arg: str) -> str:
    """``arg`` as bash reads it back byte for byte: ``$'\\xff'`` for what is not printable ASCII."""
    raw = arg.encode("utf-8", "surrogateescape")
    if all(32 <= b < 127 for b in raw):
        return shlex.quote(arg)
    return "$'" + "".join(chr(b) if 32 <= b < 127 and b not in b"\\'" else f"\\x{b:02x}" for b in raw) + "'"


def replay(argv: list[str]) -> str:
    """The falsifying example as a command line to paste (the corpus's working directory aside)."""
    return "rq-worker-service " + " ".join(shell_word(a) for a in argv)


def check(command: str, argv: list[str], given: list[tuple[argparse.Action, str]], outcome: Outcome) -> None:
    where = f"{replay(argv)}\n -> {outcome}"
    assert outcome.status in ALLOWED[command], where
    assert "Traceback" not in outcome.stderr + outcome.stdout, where
    assert SECRET not in outcome.stderr + outcome.stdout, where
    lines = outcome.stderr.splitlines()
    if command in ("run", "cron") and outcome.status == exits.OK:
        return  # run --check's (cron --check's) log: the OK line and warnings
    if outcome.status in (exits.OK, 1, 2, 3) and command == "status" and not lines:
        return  # a verdict (--check) or a report
    if outcome.status == exits.OK and command != "status":
        assert not lines, where
        return
    assert len(lines) == 1, where
    line = lines[0]
    if outcome.status == 2:
        assert "error: " in line and line.endswith(" --help"), where
    if outcome.status in (2, exits.CONFIG) and len(given) == 1 and given[0][0].option_strings:
        action, value = given[0]
        # the flag, or the file it names, or a variable of the file it names
        names = [*action.option_strings, "--env-file", "RQ_", "REDIS_", ".env"] + ([value] if len(value) > 2 else [])
        assert any(n in line for n in names), f"the line names no flag: {where}"


@pytest.mark.parametrize("command", sorted(ALLOWED))
@CORPUS
@given(data=st.data())
def test_every_argument_ends_in_a_documented_status_and_one_line(command, places, data):
    argv, given = data.draw(command_lines(command, places), label="argv")
    check(command, argv, given, invoke(argv, places["cwd"], ENV.get(command)))


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["job", "x"], ["requeue", "x"], ["cleanup"]])
def test_an_unreachable_redis_is_one_line_and_69(places, argv):
    """The real client, on a loopback port nobody listens on; a password in the URL is not shown."""
    url = f"--url=redis://u:{SECRET}@127.0.0.1:9/0"
    outcome = invoke([*argv, url, f"--env-file={places['good']}"], places["cwd"], fake=False)
    check(argv[0], argv, [], outcome)
    assert outcome.status == exits.UNAVAILABLE and "cannot reach Redis at redis://u:***@127.0.0.1:9/0" in outcome.stderr


@pytest.mark.parametrize("argv, status, fragment", [
    (["status", "--max-age", "nan"], 2, "argument --max-age: 'nan'"),
    (["status", "-q", b"\xff".decode("utf-8", "surrogateescape")], 2, "argument -q/--queue: '\\udcff'"),
    (["job", "--", "../x"], 2, "argument JOB_ID: '../x'"),
    (["status", "--key-prefix", "a b"], exits.CONFIG, "--key-prefix='a b' is invalid"),
])
def test_the_exit_statuses_hold_for_a_real_process(places, argv, status, fragment):
    """A few runs as a separate process (the console script's module), non-UTF-8 argv bytes included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_"))}
    out = subprocess.run([sys.executable, "-m", "rq_worker_service", *argv, f"--env-file={places['good']}",
                          "--url=redis://127.0.0.1:9/0"] if argv[0] != "job" else
                         [sys.executable, "-m", "rq_worker_service", "job", f"--env-file={places['good']}", *argv[1:]],
                         capture_output=True, env=env, timeout=60, cwd=places["cwd"])
    stderr = out.stderr.decode("utf-8", "backslashreplace")
    assert out.returncode == status, stderr
    assert len(stderr.splitlines()) == 1 and fragment in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("command", sorted(ALLOWED))
def test_every_flag_takes_every_odd_value(command, places):
    """The fixed part of the corpus: each of the command's flags with each value of ODD, so that what the
    drawn examples find by chance (``--env-file=--``, a 5000-character name) is found on every run."""
    failures = []
    for action in options(command):
        if action.nargs == 0:
            continue
        for i, value in enumerate(ODD):
            flag = action.option_strings[i % len(action.option_strings)] if action.option_strings else None
            argv = [command, "--check"] if command in ("run", "cron") else [command]
            if flag is None:
                argv += ["--", value]
            else:
                argv += [f"{flag}={value}"] if i % 2 else [flag, value]
                argv += ["x"] if command == "job" else []
            try:
                check(command, argv, [(action, value)], invoke(argv, places["cwd"], ENV.get(command)))
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)
