"""The worker unit's shell lines, run as systemd runs them: ``$$`` is ``$`` and ``%i`` the instance.

What systemd does with their status (a failing ExecStopPost= fails the run, and Restart=on-failure
restarts it) is tests/e2e/test_systemd.py's part; here: that the line fails exactly when it must.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from rq_worker_service.process import forget_left, mark_left

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "rq-worker@.service"


def exec_lines(directive: str) -> list[list[str]]:
    """Each ``directive=`` command line of the unit, as argv, with its ``-`` prefix kept."""
    lines = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{directive}=")]
    return [shlex.split(line.replace("$$", "$").replace("%i", "1")) for line in lines]


def run_left_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    (argv,) = [argv for argv in exec_lines("ExecStopPost") if "left" in " ".join(argv)]
    assert not argv[0].startswith("-"), "its failure must count (no '-' prefix)"
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("result, code, left, fails", [
    ("success", "exited", False, True),  # exited 0 without its way out: a job ended the process
    ("success", "exited", True, False),  # a stop (systemctl's, or a signal's)
    ("success", "killed", False, False),  # SIGTERM/SIGHUP before `run` could record it: nothing taken yet
    ("exit-code", "exited", False, False),  # a failure already: Restart=on-failure acts on its own
    ("watchdog", "dumped", False, False),
    ("signal", "killed", False, False),
])
def test_a_run_that_exited_0_without_leaving_its_own_way_fails(tmp_path, result, code, left, fails):
    env = {"SERVICE_RESULT": result, "EXIT_CODE": code, "RUNTIME_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if left:
        mark_left(env)  # what `run` does on its way out
    out = run_left_check(env)
    assert (out.returncode != 0) == fails, out
    assert ("exited 0 without stopping" in out.stderr) == fails


def test_mark_left_needs_a_runtime_directory(tmp_path):
    mark_left({})  # outside systemd: nothing, and no error
    mark_left({"RUNTIME_DIRECTORY": str(tmp_path / "gone")})  # cannot write: the check restarts, the safe side
    assert not (tmp_path / "gone").exists()


def test_a_mark_left_from_a_previous_run_is_forgotten_at_start(tmp_path):
    env = {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "RUNTIME_DIRECTORY": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    mark_left(env)
    forget_left(env)  # what `run` does first (a RuntimeDirectory kept across runs: RuntimeDirectoryPreserve=)
    assert run_left_check(env).returncode != 0
    forget_left(env)  # none to forget: no error
