"""The in-sandbox half of ``bench/under_systemd.py`` for Celery, run by Debian's python3 with Celery
installed under /opt/celery/lib (``celery_side.py``), next to Redis.

    celery_inbox.py measure JOBS     with celery.service stopped, publish JOBS no-op tasks, start it,
                                     and print one JSON line as ``inbox.py measure`` does

Celery keeps no start or end time of a task without a result backend, so each task notes its own in a
file of its process (``celeryjobs.noop``): the window runs from the first task's start to the last
one's end. Tasks are published before the unit starts (Celery's prefork pool drains a no-op task
faster than one client publishes it); Redis commands, Redis CPU and every process's CPU are read when
the first task has been noted and when the last has, so the worker's start-up is not in them, and
divided by the tasks run in between.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

from celeryjobs import TIMES, app, noop
from probes import commands, connection, cpu, cpu_by_process

UNIT = "celery.service"
TIMEOUT = 600.0
POLL = 0.005


def noted() -> list[tuple[float, float]]:
    """(start, end) of every task noted so far."""
    times = []
    for path in glob.glob(os.path.join(TIMES, "*")):
        with open(path) as f:
            times += [tuple(map(float, line.split())) for line in f if line.endswith("\n")]
    return times  # type: ignore[return-value]


def count() -> int:
    total = 0
    for path in glob.glob(os.path.join(TIMES, "*")):
        with open(path) as f:
            total += f.read().count("\n")
    return total


def snapshot(conn) -> tuple[int, float, dict[str, float]]:
    return commands(conn), cpu(conn), cpu_by_process()


def measure(jobs: int) -> dict:
    conn = connection()
    for path in glob.glob(os.path.join(TIMES, "*")):
        os.remove(path)
    with app.producer_or_acquire() as producer:
        for i in range(jobs):
            noop.apply_async((i,), producer=producer)
    subprocess.run(["systemctl", "start", UNIT], check=True)
    deadline = time.monotonic() + TIMEOUT
    first = None
    looked = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - looked > 1:
            looked = time.monotonic()
            if subprocess.run(["systemctl", "is-failed", "--quiet", UNIT]).returncode == 0:
                log = subprocess.run(["journalctl", "-u", UNIT, "-n", "20", "--no-pager"], capture_output=True,
                                     text=True).stdout
                sys.exit(f"{UNIT} failed:\n{log}")
        done = count()
        if first is None and done:
            first = (done, snapshot(conn), time.monotonic())
        if done >= jobs:
            break
        time.sleep(POLL)
    last, ended = snapshot(conn), time.monotonic()
    times = noted()
    if first is None or len(times) < jobs:
        return {"jobs": jobs, "finished": len(times), "window": 0.0, "commands_per_job": 0.0,
                "redis_cpu_per_job": 0.0, "cpu_per_job": {}}
    ran = jobs - first[0]
    (commands0, redis_cpu0, processes0) = first[1]
    processes = {name: used - processes0.get(name, 0.0) for name, used in last[2].items()}
    return {"jobs": jobs, "finished": len(times),
            "window": max(end for _, end in times) - min(start for start, _ in times),
            "span": [first[2], ended], "span_jobs": ran,  # (the host's monotonic clock: bench/perf_split.py)
            # (not Celery's: the two INFO calls after the first snapshot's commandstats)
            "commands_per_job": (last[0] - commands0 - 2) / ran, "redis_cpu_per_job": (last[1] - redis_cpu0) / ran,
            "cpu_per_job": {name: used / ran for name, used in processes.items() if used / ran >= 1e-5}}


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "measure":
        print(json.dumps(measure(int(args[0]))))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
