"""The benchmarks run, in smoke mode: bench/under_systemd.py's tables from the installed package and
stock rq under rq's documented unit, and bench/fork_cost.py in the same booted sandbox.

No timing threshold (the machines are shared and noisy; the figures live in docs/benchmarks.md).
What is checked: every job of every measurement finished (the bench raises otherwise), the tables
have a row per cell with a ratio, and Redis commands per job, which do not depend on timing, stay
below stock rq's and within ``COMMANDS_PER_JOB`` for both worker classes.
"""

from __future__ import annotations

import re
import sys
import time

import pytest
from conftest import ROOT
from sandbox import Sandbox

sys.path.insert(0, str(ROOT / "bench"))
import under_systemd  # noqa: E402

CELLS = [("fork", 1), ("simple", 1)]

COMMANDS_PER_JOB = 37.0
"""Ours at most, in the smoke's 20 jobs, whose fixed share (the first beats and ticks) is larger than in
docs/benchmarks.md's 1000 (34 fork, 33 simple); 44 before the end became one script, 56.5 before issue 31.
A step of rq's lifecycle sent twice, or a beat per job (three commands), goes over it."""

pytestmark = pytest.mark.release_independent  # the smoke run checks that the benchmarks work


def test_the_systemd_benchmark_and_the_fork_cost_run(rootfs, deb):
    with Sandbox(rootfs) as box:
        spans: list[dict] = []
        text = under_systemd.report(box, deb, CELLS, jobs=20, rounds=1, spans=spans)
        box.copy_in(ROOT / "bench" / "fork_cost.py", "/srv/bench/fork_cost.py")
        fork_cost = box.run([under_systemd.PY, "/srv/bench/fork_cost.py", "--rounds", "5"], timeout=300).stdout
    print(text + "\n\n" + fork_cost)
    for worker_class, instances in CELLS:
        cell = rf"^\| {worker_class} \| {instances} \| "
        row = re.search(cell + r".*\*\*(\d+\.\d\d)\*\* \| ([\d.]+) / ([\d.]+) \|", text, re.M)
        assert row, f"no {worker_class}×{instances} row in:\n{text}"
        stock, ours = float(row[2]), float(row[3])
        assert ours < stock, f"{worker_class}: {ours} Redis commands per job, stock rq {stock}"
        assert ours <= COMMANDS_PER_JOB, f"{worker_class}: {ours} Redis commands per job, more than {COMMANDS_PER_JOB}"
    assert "idle `systemctl stop`" in text and f"{worker_class}×1 ours" in text
    processes = re.search(r"^\| processes, idle [^|]* \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    assert processes, text
    assert int(processes[2]) == int(processes[3]) + 1, f"the spare horse is not the one process more: {processes[0]}"
    assert re.search(r"^\| their memory, PSS [^|]* \| [\d.]+ MiB \| [\d.]+ MiB \| [\d.]+ MiB \|$", text, re.M), text
    assert len(re.findall(r"ms CPU, +[\d.]+ ms wall per fork", fork_cost)) == 5, fork_cost
    # --perf's spans (bench/perf_split.py): one per measurement, on the host's monotonic clock
    assert [s["label"] for s in spans] == ["fork×1 stock", "fork×1 ours", "simple×1 stock", "simple×1 ours"], spans
    assert all(s["span"][0] < s["span"][1] <= time.monotonic() and s["jobs"] == 20 for s in spans), spans

