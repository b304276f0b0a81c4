"""rq's own test suite against our worker classes shows only the documented differences.

The run (``tests/rq_suite/run_suite.py``, ≈1.5 min: the whole suite, slow and TLS tests included,
with our classes and with rq's own, each in five parts, all ten side by side) needs root: rq's
tests use Redis on localhost:6379, which it gives them in network namespaces of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "rq_suite" / "run_suite.py"
sys.path.insert(0, str(RUNNER.parent))
from run_suite import not_the_same_suite  # noqa: E402


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="rq's suite needs root: it runs in a network namespace with its own Redis on port 6379")
def test_rq_suite_differs_only_where_documented():
    proc = subprocess.run([sys.executable, str(RUNNER)], capture_output=True, text=True, timeout=1300)
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("rq ", "  expected", "PROBLEM", "flaky",
                                                                             "fails with"))]
    print("\n".join(summary))
    assert proc.returncode == 0, "\n".join(summary) or proc.stdout[-5000:] + proc.stderr[-5000:]


def _record(outcome: str, *markers: str, reason: str | None = None) -> dict:
    return {"outcome": outcome, "markers": list(markers), "reason": reason}


def test_the_two_runs_must_run_the_same_tests():
    """The runner's comparison of the run with our classes and the one with rq's: a test skipped or
    missing on one side only, or a slow/TLS test skipped on either, is reported; the same skip on
    both sides (rq's own conditions, e.g. a Redis version) and failures are not."""
    both = {"a": _record("passed"), "b": _record("failed", "slow"), "c": _record("skipped", reason="Redis < 8")}
    assert not_the_same_suite(both, dict(both)) == []

    ours = dict(both, d=_record("skipped", reason="not for us"))
    problems = not_the_same_suite(ours, dict(both, d=_record("passed")))
    assert problems == ["run with rq's classes but skipped (not for us) with our classes: d"]
    assert not_the_same_suite(both, dict(both, e=_record("passed"))) == [
        "run with rq's classes but not collected with our classes: e"]
    assert not_the_same_suite(dict(both, e=_record("passed")), both) == [
        "run with our classes but not collected with rq's classes: e"]

    slow_off = dict(both, f=_record("skipped", "slow", reason="Slow tests disabled"))
    assert not_the_same_suite(slow_off, dict(slow_off)) == [
        "slow test skipped with our classes (Slow tests disabled): f",
        "slow test skipped with rq's classes (Slow tests disabled): f"]
