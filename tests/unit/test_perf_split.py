"""bench/perf_split.py: samples from ``perf script`` split by process and by what the process did.

The recording itself needs perf and a booted sandbox (``bench/under_systemd.py --perf``); here its
text form is written by hand, as perf 6.1 prints it, to pin the parsing and the sorting.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import perf_split  # noqa: E402


def sample(comm: str, pid: int, time: float, *frames: str) -> str:
    return f"{comm:>15} {pid:>6} {time:.6f}: \n" + "".join(f"\t{f}\n" for f in frames) + "\n"


FAULT = ("ffffffff8101 do_wp_page ([kernel.kallsyms])", "ffffffff8102 asm_exc_page_fault ([kernel.kallsyms])",
         "7f0000000001 _PyEval_EvalFrameDefault (/usr/bin/python3.11)")
FORK = ("ffffffff8201 copy_page_range ([kernel.kallsyms])", "ffffffff8202 copy_process ([kernel.kallsyms])",
        "7f0000000002 __libc_fork (/usr/lib/x86_64-linux-gnu/libc.so.6)")
EXIT = ("ffffffff8301 unmap_page_range ([kernel.kallsyms])", "ffffffff8302 exit_mmap ([kernel.kallsyms])",
        "ffffffff8303 do_exit ([kernel.kallsyms])")
SEND = ("ffffffff8401 tcp_sendmsg ([kernel.kallsyms])", "ffffffff8402 __x64_sys_sendto ([kernel.kallsyms])")
USER = ("7f0000000003 _PyEval_EvalFrameDefault (/usr/bin/python3.11)",)


def recording() -> list[perf_split.Sample]:
    text = "".join([
        sample("python3", 100, 10.0, *USER),  # the worker: seen from the span's start to its end
        sample("python3", 100, 12.0, *FORK),
        sample("python3", 100, 14.0, *FAULT),
        sample("python3", 100, 19.9, *SEND),
        sample("python3", 201, 12.1, *FAULT),  # a horse: lives a moment
        sample("python3", 201, 12.2, *USER),
        sample("python3", 201, 12.3, *EXIT),
        sample("python3", 202, 15.0, *FAULT),
        sample("rq", 300, 13.0, *FORK),  # the other side's: not this span's
        sample("redis-server", 400, 13.0, *SEND),
        sample("python3", 100, 25.0, *USER),  # after the span
    ])
    return list(perf_split.parse(text.splitlines()))


def test_parse_reads_each_sample_with_its_call_chain():
    samples = recording()
    assert len(samples) == 11
    assert (samples[0].comm, samples[0].pid, samples[0].time) == ("python3", 100, 10.0)
    assert samples[1].frames[1].endswith("copy_process ([kernel.kallsyms])")
    assert samples[8].comm == "rq" and samples[9].comm == "redis-server"


def test_each_sample_is_sorted_by_what_its_process_did():
    kinds = [perf_split.kind(s.frames) for s in recording()[:8]]
    assert kinds == ["user", "fork", "faults", "kernel", "faults", "user", "exit", "faults"]


def test_a_span_counts_its_sides_processes_only_worker_and_children_apart():
    counts = perf_split.split(recording(), (10.0, 20.0), {"python3"})
    assert counts == {("worker", "user"): 1, ("worker", "fork"): 1, ("worker", "faults"): 1,
                      ("worker", "kernel"): 1, ("children", "faults"): 2, ("children", "user"): 1,
                      ("children", "exit"): 1}


def test_the_table_gives_ms_per_job_and_the_fresh_process_share_of_each_cells_rounds():
    spans = [{"label": "fork×1 ours", "span": [10.0, 20.0], "jobs": 1},
             {"label": "fork×1 stock", "span": [10.0, 20.0], "jobs": 1},
             {"label": "fork×1 ours", "span": [20.5, 30.0], "jobs": 1},  # a second round: only its sample
             {"label": "fork×2 stock", "span": [30.0, 40.0], "jobs": 1}]
    rows = perf_split.table(recording(), spans).splitlines()
    assert len(rows) == 4, rows  # a cell with no sample of its side gives no row
    ms = 1000 / perf_split.FREQUENCY
    ours = rows[2].split(" | ")
    assert ours[0] == "| fork×1 ours" and float(ours[1]) == round(9 * ms / 2, 2)  # 9 samples, 2 jobs
    assert ours[-1] == "56 % |"  # fork 1 + faults 3 + exit 1 of 9
    stock = rows[3].split(" | ")
    assert float(stock[1]) == round(ms, 2) and stock[-1] == "100 % |"
