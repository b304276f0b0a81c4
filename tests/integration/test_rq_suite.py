"""rq's own test suite against our worker classes shows only the documented differences.

The run (``tests/rq_suite/run_suite.py``, ≈5 min: the whole suite, slow and TLS tests included, with
our classes and with rq's own side by side) needs root: rq's tests use Redis on localhost:6379, which
it gives them in a network namespace of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "rq_suite" / "run_suite.py"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="rq's suite needs root: it runs in a network namespace with its own Redis on port 6379")
def test_rq_suite_differs_only_where_documented():
    proc = subprocess.run([sys.executable, str(RUNNER)], capture_output=True, text=True, timeout=1300)
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("rq ", "  expected", "PROBLEM", "flaky",
                                                                             "fails with"))]
    print("\n".join(summary))
    assert proc.returncode == 0, "\n".join(summary) or proc.stdout[-5000:] + proc.stderr[-5000:]
