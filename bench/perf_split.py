"""Where a benchmark's CPU goes by kind: the kernel's work for a fresh process per job against the code.

``bench/under_systemd.py --perf FILE`` records every CPU (``perf record -a -g``, the monotonic clock)
while it measures, and writes each measurement's time span to ``FILE.spans.json``; this splits the
samples taken in each span that belong to the measured side's processes (by process name: stock rq's
are ``rq``, ours ``python3``, Celery's ``celery``/``celery-python``) into

* the worker (a process seen throughout the span: the worker, its scheduler, and the bench's own
  in-sandbox script, which shares our process name: ≈0.1 ms per job) and its children (work horses,
  spares: short-lived);
* what each was doing, from the call chain: page faults (copy-on-write of the pages a fork shares,
  and first touches), ``fork`` (copying the page tables), ``exit`` (tearing the address space down),
  other kernel work (sockets, signals, pipes), and user space (Python running rq, redis-py, the job).

A sample is 1/``FREQUENCY`` s of one CPU, so the table gives ms of CPU per job. A claim about why a
target is or is not reachable rests on the shares, measured on the installed package under systemd::

    .venv/bin/python bench/under_systemd.py --classes fork --instances 1,2 --perf /tmp/fork.perf
    .venv/bin/python bench/perf_split.py /tmp/fork.perf
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FREQUENCY = 199
"""Samples per second and CPU (an odd rate, so that it does not beat with the kernel's timers)."""

COMMS = {"stock": {"rq"}, "ours": {"python3"}, "early": {"celery", "celery-python"},
         "late": {"celery", "celery-python"}}
"""Process names of each side's processes (the last word of a span's label, "fork×2 ours")."""

KINDS = ("user", "faults", "fork", "exit", "kernel")
PARTS = ("worker", "children")
LONG_LIVED = 0.5
"""A process whose samples cover at least this share of the span is the worker's side, not a child."""

_HEADER = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s*$")


@dataclass
class Sample:
    comm: str
    pid: int
    time: float
    frames: list[str] = field(default_factory=list)


def record_command(path: Path) -> list[str]:
    """The ``perf record`` that ``under_systemd.py --perf`` runs around its measurements."""
    return ["perf", "record", "-a", "-g", "-k", "CLOCK_MONOTONIC", "-F", str(FREQUENCY), "-o", str(path)]


def parse(lines: Iterable[str]) -> Iterator[Sample]:
    """Samples from ``perf script -F comm,pid,time,ip,sym,dso``: a header line, then one frame a line."""
    sample: Sample | None = None
    for line in lines:
        header = _HEADER.match(line)
        if header:
            if sample is not None:
                yield sample
            sample = Sample(header.group(1), int(header.group(2)), float(header.group(3)))
        elif line.strip() and sample is not None:
            sample.frames.append(line.strip())
    if sample is not None:
        yield sample


def kind(frames: list[str]) -> str:
    """What the sampled process was doing, from its call chain (innermost frame first)."""
    chain = " ".join(frames)
    if "asm_exc_page_fault" in chain:
        return "faults"
    if "copy_process" in chain:
        return "fork"
    if "do_exit" in chain or "exit_mmap" in chain:
        return "exit"
    return "kernel" if frames and "[kernel.kallsyms]" in frames[0] else "user"


def split(samples: list[Sample], span: tuple[float, float], comms: set[str]) -> Counter[tuple[str, str]]:
    """Samples of ``comms`` in ``span`` counted by (worker or child, kind)."""
    start, end = span
    inside = [s for s in samples if start <= s.time <= end and s.comm in comms]
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for s in inside:
        first.setdefault(s.pid, s.time)
        last[s.pid] = s.time
    long_lived = {pid for pid in first if last[pid] - first[pid] >= LONG_LIVED * (end - start)}
    return Counter(("worker" if s.pid in long_lived else "children", kind(s.frames)) for s in inside)


def table(samples: list[Sample], spans: list[dict]) -> str:
    """One row per measured cell and side (its rounds' spans summed): ms of CPU per job by part and
    kind, and the fresh process's share of it."""
    counts: dict[str, Counter[tuple[str, str]]] = {}
    jobs: Counter[str] = Counter()
    for entry in spans:
        label = entry["label"]
        counts.setdefault(label, Counter()).update(split(samples, tuple(entry["span"]), COMMS[label.split()[-1]]))
        jobs[label] += entry["jobs"]
    head = ["measurement", "CPU ms/job", *(f"{part} {k}" for part in PARTS for k in KINDS),
            "fork + faults + exit"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, counted in counts.items():
        total = sum(counted.values())
        if not total:
            continue
        ms = 1000 / FREQUENCY / jobs[label]
        fresh = sum(n for (_, k), n in counted.items() if k in ("faults", "fork", "exit"))
        cells = [label, f"{total * ms:.2f}", *(f"{counted[part, k] * ms:.2f}" for part in PARTS for k in KINDS),
                 f"{100 * fresh / total:.0f} %"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def spans_path(data: Path) -> Path:
    return data.with_name(data.name + ".spans.json")


def report(data: Path) -> str:
    """The table for a recording and its spans."""
    spans = json.loads(spans_path(data).read_text())
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,time,ip,sym,dso"],
                            capture_output=True, text=True, errors="replace", check=True)
    return table(list(parse(script.stdout.splitlines())), spans)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: perf_split.py FILE  (a perf.data written by under_systemd.py --perf FILE)")
    print(report(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
