"""Throughput as users run it: the installed .deb under its shipped unit against stock rq under the
unit from rq's documentation, in one booted systemd, on one Redis, interleaved.

What runs (the e2e sandbox: a booted Debian with systemd as PID 1):

* ours: ``rq-worker@1..N`` from the package, ``RQ_WORKER_CLASS`` fork or simple, every other setting
  at its default (INFO logging to the journal with fields, the scheduler on, the watchdog armed);
* stock: ``rqworker@1..N``, rq's documented unit (python-rq.org/patterns/systemd/) running
  ``rq worker --with-scheduler`` (``--worker-class rq.worker.SimpleWorker`` for simple) with the rq
  the package bundles, its output going to the journal as rq's unit does;
* Debian's redis-server unit with snapshots off, shared by both.

Each measurement starts N instances and waits until they are registered, enqueues the jobs at once,
and times the drain from the first job's start to the last job's end (rq's own timestamps, so
start-up and polling are not in it). It also counts Redis commands and Redis CPU per job. Rounds
alternate which side goes first; the table gives medians, the spread (min–max) and ours/stock.
Start-up (``systemctl start`` to READY and to registered) and an idle ``systemctl stop`` are
measured the same way. The numbers describe this machine; compare the ratios.

    .venv/bin/python bench/under_systemd.py [--release bookworm] [--deb dist/…deb] [--jobs 1000]
        [--rounds 3] [--classes fork,simple] [--instances 1,2,4] [--scaling 8] [--perf FILE] [--smoke]

``--perf FILE`` records every CPU with ``perf`` (Debian's linux-perf) while it measures and adds a
table of where each measurement's CPU went: the kernel's work for a fresh process per job (fork,
page faults, exit) against the code's (``bench/perf_split.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import stock_rq  # noqa: E402
from provision import build_deb  # noqa: E402
from sandbox import Sandbox, ensure_rootfs  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import celery_side  # noqa: E402
import perf_split  # noqa: E402

PY = stock_rq.PY  # the package's interpreter: the in-sandbox scripts need its rq
INBOX = "/srv/bench/inbox.py"
SIDES = ("stock", "ours")
UNITS = {"stock": "rqworker@{}", "ours": "rq-worker@{}"}
STOCK_CLASS = {"fork": "", "fork-auto": "", "fork-noprefork": "", "simple": "--worker-class rq.worker.SimpleWorker"}
"""Stock rq's arguments per class measured."""
OUR_CLASS = {"fork": "RQ_WORKER_CLASS=fork\n", "simple": "RQ_WORKER_CLASS=simple\n",
             "fork-auto": "RQ_WORKER_CLASS=fork\nRQ_PREFORK=auto\n",
             "fork-noprefork": "RQ_WORKER_CLASS=fork\nRQ_PREFORK=no\n"}
"""Ours per class measured: ``fork`` as shipped (a spare horse forked while each job runs, ``prefork``);
``fork-auto`` with RQ_PREFORK=auto (no spare while the CPUs are busy), ``fork-noprefork`` with none (each
job's horse forked as the job is taken, as rq does)."""
STOCK_UNIT = stock_rq.documented_unit(
    "/srv/bench", "/usr/local/bin/rq worker --with-scheduler --url redis://127.0.0.1:6379/0 $STOCK_ARGS bench",
    "EnvironmentFile=/etc/rq-bench/stock.env")
"""rq's documented unit; the bench's environment file only chooses the worker class."""


@dataclass
class Series:
    """One side's measurements for one (class, instances) cell."""

    rates: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    redis_cpu: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # seconds per job, by process group

    def median(self) -> float:
        return statistics.median(self.rates)

    def spread(self) -> str:
        return f"{min(self.rates):.0f}–{max(self.rates):.0f}"


def set_up(box: Sandbox, deb: Path) -> None:
    """The package as an operator installs it, stock rq beside it, Redis without snapshots."""
    box.copy_in(deb, f"/root/{deb.name}")
    box.run(["apt-get", "install", "-y", f"/root/{deb.name}"], timeout=300)
    for name in ("benchjobs.py", "inbox.py", "probes.py"):
        box.copy_in(ROOT / "bench" / name, f"/srv/bench/{name}")
    box.run("chmod -R a+rX /srv/bench")
    box.run(["redis-cli", "config", "set", "save", ""])
    stock_rq.install(box, STOCK_UNIT)
    choose_class(box, "fork")
    box.run(["systemctl", "daemon-reload"])


def choose_class(box: Sandbox, worker_class: str) -> None:
    """Both sides' configuration for ``worker_class``: stock's unit arguments, ours in worker.env."""
    box.write("/etc/rq-bench/stock.env", f"STOCK_ARGS={STOCK_CLASS[worker_class]}\n")
    box.write("/etc/rq-worker/worker.env", "REDIS_URL=redis://127.0.0.1:6379/0\nRQ_QUEUES=bench\n"
              f"RQ_APP_PATH=/srv/bench\n{OUR_CLASS[worker_class]}", mode=0o640)
    box.run("chgrp rq-worker /etc/rq-worker/worker.env")


def inbox(box: Sandbox, *args: str, timeout: float = 700) -> dict:
    return json.loads(box.run([PY, INBOX, *args], timeout=timeout).stdout)


def units(side: str, instances: int) -> list[str]:
    return [UNITS[side].format(i) for i in range(1, instances + 1)]


def stop_all(box: Sandbox) -> None:
    box.run("systemctl stop 'rq-worker@*.service' 'rqworker@*.service'; systemctl reset-failed", check=False)
    box.run(["redis-cli", "flushall"])


def measure(box: Sandbox, side: str, worker_class: str, instances: int, jobs: int) -> dict:
    """One drain of ``jobs`` no-op jobs by ``instances`` workers of one side."""
    stop_all(box)
    choose_class(box, worker_class)
    inbox(box, "started", *units(side, instances))
    result = inbox(box, "measure", str(jobs))  # (the next measurement stops these instances first)
    if result["finished"] != jobs:
        raise SystemExit(f"{side} {worker_class}×{instances}: {result['finished']} of {jobs} jobs finished")
    return result


def start_stop(box: Sandbox, side: str, worker_class: str = "fork") -> dict:
    """systemctl start → READY and → registered, its memory once idle after a few jobs (ours: with the
    spare horse those forked), then an idle systemctl stop (scheduler on, as deployed)."""
    stop_all(box)
    choose_class(box, worker_class)
    started = inbox(box, "started", *units(side, 1))
    inbox(box, "measure", "5")
    box.run("sleep 2")
    return started | inbox(box, "memory", units(side, 1)[0]) | inbox(box, "stop", *units(side, 1))


ACKS = ("early", "late")
"""Celery's two settings measured: task_acks_late off (its default: a task is acknowledged as it is
received, and lost with its worker) and on (acknowledged after it ran)."""


def run(box: Sandbox, cells: list[tuple[str, int]], jobs: int, rounds: int,
        celery: bool = False, spans: list[dict] | None = None) -> dict[tuple[str, int, str], Series]:
    """Every cell's sides, and (``celery``) Celery's prefork pool at each instance count, per round;
    each measurement's time span appended to ``spans`` (``--perf``)."""
    results: dict[tuple[str, int, str], Series] = {}

    def note(key: tuple[str, int, str], m: dict, r: int) -> None:
        s = results.setdefault(key, Series())
        s.rates.append(jobs / m["window"])
        s.commands.append(m["commands_per_job"])
        s.redis_cpu.append(m["redis_cpu_per_job"])
        s.cpu.append(cpu_groups(m["cpu_per_job"]))
        if spans is not None:
            spans.append({"label": f"{key[0]}×{key[1]} {key[2]}", "span": m["span"],
                          "jobs": m["span_jobs"]})
        print(f"  round {r + 1}: {key[0]}×{key[1]} {key[2]:5}: {jobs / m['window']:7.1f} jobs/s, "
              f"{m['commands_per_job']:.1f} Redis commands/job", flush=True)

    for r in range(rounds):
        for worker_class, instances in cells:
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                note((worker_class, instances, side), measure(box, side, worker_class, instances, jobs), r)
        if celery:
            stop_all(box)
            for processes in sorted({n for _, n in cells}):
                for acks in ACKS if r % 2 == 0 else ACKS[::-1]:
                    note(("celery", processes, acks), celery_side.measure(box, processes, acks == "late", jobs), r)
    return results


GROUPS = {"worker": ("rq", "python3", "celery", "celery-python"), "work horses": ("rq children", "python3 children"),
          "redis-server": ("redis-server",), "journald": ("systemd-journal",),
          "PID 1, dbus, logind": ("systemd", "dbus-daemon", "systemd-logind")}
"""Where a job's CPU goes. "python3" is the package's interpreter (ours) and the bench's own
in-box script (≈0.1 ms per job, on both sides); "rq" is stock rq's console script; "celery" is
Celery's worker and its prefork pool's processes (their CPU is their own: they are not reaped)."""


def cpu_groups(per_process: dict[str, float]) -> dict[str, float]:
    return {group: sum(per_process.get(name, 0.0) for name in names) for group, names in GROUPS.items()}


def cpu_table(results: dict[tuple[str, int, str], Series], cells: list[tuple[str, int]]) -> str:
    lines = ["| CPU ms per job (median) | " + " | ".join(GROUPS) + " | total |",
             "|---|" + "---|" * (len(GROUPS) + 1)]
    rows = [(worker_class, instances, side) for worker_class, instances in cells for side in SIDES]
    rows += sorted(key for key in results if key[0] == "celery")
    for worker_class, instances, side in rows:
        s = results[(worker_class, instances, side)]
        medians = {g: statistics.median(c[g] for c in s.cpu) * 1000 for g in GROUPS}
        lines.append(f"| {worker_class}×{instances} {side} | " + " | ".join(f"{v:.2f}" for v in medians.values())
                     + f" | {sum(medians.values()):.2f} |")
    return "\n".join(lines)


def celery_table(results: dict[tuple[str, int, str], Series], cells: list[tuple[str, int]]) -> str:
    """Celery's prefork pool at each instance count, and ours (fork, simple) ÷ Celery with the same
    number of processes."""
    lines = ["| processes | Celery prefork, acks early (jobs/s, median; spread) | acks late | ours fork ÷ Celery "
             "(early / late) | ours simple ÷ Celery (early / late) | Redis commands/job early / late "
             "| Redis CPU µs/job early / late |",
             "|---|---|---|---|---|---|---|"]
    def ratios(worker_class: str, processes: int, early: Series, late: Series) -> str:
        ours = results.get((worker_class, processes, "ours"))
        return "–" if ours is None else \
            f"**{ours.median() / early.median():.2f}** / **{ours.median() / late.median():.2f}**"

    for processes in sorted({n for _, n in cells}):
        early, late = (results[("celery", processes, acks)] for acks in ACKS)
        lines.append(
            f"| {processes} | {early.median():.0f} ({early.spread()}) | {late.median():.0f} ({late.spread()}) | "
            f"{ratios('fork', processes, early, late)} | {ratios('simple', processes, early, late)} | "
            f"{statistics.median(early.commands):.1f} / {statistics.median(late.commands):.1f} | "
            f"{statistics.median(early.redis_cpu) * 1e6:.0f} / {statistics.median(late.redis_cpu) * 1e6:.0f} |")
    return "\n".join(lines)


def table(results: dict[tuple[str, int, str], Series], cells: list[tuple[str, int]]) -> str:
    lines = ["| class | instances | stock rq (jobs/s, median; spread) | rq-worker-service | ratio "
             "| Redis commands/job stock / ours | Redis CPU µs/job stock / ours |",
             "|---|---|---|---|---|---|---|"]
    for worker_class, instances in cells:
        stock, ours = (results[(worker_class, instances, side)] for side in SIDES)
        lines.append(
            f"| {worker_class} | {instances} | {stock.median():.0f} ({stock.spread()}) | "
            f"{ours.median():.0f} ({ours.spread()}) | **{ours.median() / stock.median():.2f}** | "
            f"{statistics.median(stock.commands):.1f} / {statistics.median(ours.commands):.1f} | "
            f"{statistics.median(stock.redis_cpu) * 1e6:.0f} / {statistics.median(ours.redis_cpu) * 1e6:.0f} |")
    return "\n".join(lines)


def start_stop_table(box: Sandbox, rounds: int) -> str:
    columns = {"stock": ("stock", "fork"), "ours": ("ours", "fork"), "ours-noprefork": ("ours", "fork-noprefork")}
    figures: dict[str, list[dict]] = {column: [] for column in columns}
    for _ in range(rounds):
        for column, (side, worker_class) in columns.items():
            figures[column].append(start_stop(box, side, worker_class))

    def row(label: str, key: str, scale: float = 1.0, unit: str = " s", digits: int = 2) -> str:
        medians = (statistics.median(f[key] for f in figures[column]) * scale for column in columns)
        return f"| {label} | " + " | ".join(f"{m:.{digits}f}{unit}" for m in medians) + " |"

    mib = (1 / 1024, " MiB", 1)
    return "\n".join([
        "| one idle instance (fork, scheduler on) | stock rq | rq-worker-service (with its spare horse) "
        "| rq-worker-service, RQ_PREFORK=no |",
        "|---|---|---|---|",
        row("`systemctl start` returns (stock: Type=simple, at once; ours: Type=notify, at READY)", "ready"),
        row("start → registered in Redis", "registered"),
        row("processes, idle after 5 jobs (worker, scheduler, spare horse)", "processes", unit="", digits=0),
        row("their memory, PSS (a page shared by forked processes counted once)", "pss_kib", *mib),
        row("their memory, RSS summed (shared pages counted in each)", "rss_kib", *mib),
        row("the unit's `MemoryCurrent` (what MemoryMax= limits; page cache included)", "current_kib", *mib),
        row("idle `systemctl stop`", "stop")])


def versions(box: Sandbox, celery: bool = False) -> str:
    out = box.run([PY, "-c", "import rq, redis, sys, platform; print(rq.__version__, redis.__version__, "
                   "platform.python_version())"]).stdout.split()
    system = box.run(["systemctl", "--version"]).stdout.split()[1]
    server = box.run(["redis-server", "--version"]).stdout.split()[2].removeprefix("v=")
    release = box.run(["cat", "/etc/debian_version"]).stdout.strip()
    line = f"Debian {release}, systemd {system}, Python {out[2]}, rq {out[0]}, redis-py {out[1]}, Redis {server}"
    if celery:
        line += f", Celery {celery_side.CELERY.split('==')[1]} on Debian's python3"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="bookworm", help="Debian release to boot (default: bookworm)")
    parser.add_argument("--deb", help="a built package (default: build one with packaging/build-deb)")
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs per measurement (default: 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--classes", default="fork,simple", help="worker classes (default: fork,simple)")
    parser.add_argument("--instances", default="1,2,4", help="instance counts (default: 1,2,4)")
    parser.add_argument("--scaling", default="8", help="further fork instance counts for the scaling line "
                        "(default: 8; '' for none)")
    parser.add_argument("--celery", action=argparse.BooleanOptionalAction, default=True,
                        help="Celery's prefork pool at each instance count, under Celery's documented unit "
                        "(default: on)")
    parser.add_argument("--perf", type=Path, metavar="FILE",
                        help="record every CPU with perf while measuring, into FILE, and print where each "
                        "measurement's CPU went (bench/perf_split.py; default: off)")
    parser.add_argument("--smoke", action="store_true", help="check that it works: 20 jobs, 1 round, "
                        "one instance of each class, no scaling line (what CI runs)")
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.rounds, args.instances, args.scaling = 20, 1, "1", ""
    cells = [(c, int(n)) for c in args.classes.split(",") for n in args.instances.split(",")]
    cells += [("fork", int(n)) for n in args.scaling.split(",") if n]
    deb = Path(args.deb) if args.deb else build_deb(args.release)
    if args.perf and shutil.which("perf") is None:
        sys.exit("--perf needs perf: apt-get install linux-perf")
    spans: list[dict] | None = [] if args.perf else None
    with Sandbox(ensure_rootfs(args.release)) as box, recording(args.perf):
        print(report(box, deb, cells, args.jobs, args.rounds, celery=args.celery, spans=spans))
    if args.perf:
        perf_split.spans_path(args.perf).write_text(json.dumps(spans))
        print("\n" + perf_split.report(args.perf))


@contextlib.contextmanager
def recording(path: Path | None) -> Iterator[None]:
    """``perf record`` of every CPU while the block runs (nothing without ``path``)."""
    if path is None:
        yield
        return
    perf = subprocess.Popen(perf_split.record_command(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(120)


def report(box: Sandbox, deb: Path, cells: list[tuple[str, int]], jobs: int, rounds: int,
           celery: bool = False, spans: list[dict] | None = None) -> str:
    """Install, measure every cell ``rounds`` times interleaved (with Celery: its pool at each
    instance count too), and return the tables."""
    set_up(box, deb)
    if celery:
        celery_side.install(box)
    print(f"{versions(box, celery)}; {jobs} no-op jobs per measurement, {rounds} round(s)", flush=True)
    results = run(box, cells, jobs, rounds, celery, spans)
    tables = [table(results, cells), *([celery_table(results, cells)] if celery else []), cpu_table(results, cells)]
    return "\n\n".join([*tables, start_stop_table(box, rounds)])


if __name__ == "__main__":
    main()
