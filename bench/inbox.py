"""The in-sandbox half of ``bench/under_systemd.py``: run by the package's Python inside the booted
sandbox, next to Redis, so that measuring adds no nsenter or network hop to what is measured.

    inbox.py workers                 how many rq workers are registered (stock and ours alike)
    inbox.py measure JOBS            enqueue JOBS no-op jobs at once, wait until every one ended, and
                                     print one JSON line: the drain window, Redis commands and CPU
    inbox.py started UNIT...         seconds from `systemctl start` to each unit's worker registered
                                     (and to READY for a Type=notify unit: systemctl returns then)
    inbox.py stop UNIT...            seconds `systemctl stop` takes for idle workers
    inbox.py memory UNIT             an idle unit's processes: their count, summed PSS and RSS (KiB,
                                     from smaps_rollup) and its MemoryCurrent

Time comes from the jobs themselves (rq's started_at and ended_at), so the window is the workers'
steady drain and excludes start-up and this script's polling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from probes import commands, connection, cpu, cpu_by_process
from rq import Queue, Worker
from rq.job import Job, JobStatus

TIMEOUT = 600.0
POLL = 0.05


def measure(jobs: int) -> dict:
    conn = connection()
    queue = Queue("bench", connection=conn)
    with conn.pipeline() as pipe:
        ids = [queue.enqueue("benchjobs.noop", i, result_ttl=3600, pipeline=pipe).id for i in range(jobs)]
        pipe.execute()
    processes_before = cpu_by_process()
    commands_before, cpu_before, checks = commands(conn), cpu(conn), 0
    began = time.monotonic()
    deadline = began + TIMEOUT
    while time.monotonic() < deadline:
        checks += 1
        if queue.finished_job_registry.count + queue.failed_job_registry.count >= jobs:
            break
        time.sleep(POLL)
    span = [began, time.monotonic()]
    # Not the workers': the two INFO calls after the first snapshot and each check's two ZCARDs.
    worker_commands = commands(conn) - commands_before - 2 - 2 * checks
    redis_cpu = cpu(conn) - cpu_before
    processes = {name: used - processes_before.get(name, 0.0) for name, used in cpu_by_process().items()}
    fetched = [j for j in Job.fetch_many(ids, connection=conn) if j is not None]
    done = [j for j in fetched if j.get_status(refresh=False) == JobStatus.FINISHED]
    window = (max(j.ended_at for j in done) - min(j.started_at for j in done)).total_seconds() if done else 0.0
    return {"jobs": jobs, "finished": len(done), "window": window, "commands_per_job": worker_commands / jobs,
            "span": span, "span_jobs": jobs,  # (the host's monotonic clock: bench/perf_split.py)
            "redis_cpu_per_job": redis_cpu / jobs,
            "cpu_per_job": {name: used / jobs for name, used in processes.items() if used / jobs >= 1e-5}}


def workers() -> int:
    return len(Worker.all(connection=connection()))


def started(units: list[str]) -> dict:
    """Seconds to READY (systemctl start returns) and to every worker registered."""
    conn = connection()
    before = len(Worker.all(connection=conn))
    t0 = time.monotonic()
    subprocess.run(["systemctl", "start", *units], check=True)
    ready = time.monotonic() - t0
    while len(Worker.all(connection=conn)) < before + len(units):
        if time.monotonic() - t0 > 60:
            sys.exit(f"{units} did not register within 60 s")
        time.sleep(0.01)
    return {"ready": ready, "registered": time.monotonic() - t0}


def stop(units: list[str]) -> dict:
    t0 = time.monotonic()
    subprocess.run(["systemctl", "stop", *units], check=True)
    return {"stop": time.monotonic() - t0}


def memory(unit: str) -> dict:
    """What an idle unit holds: PSS counts a page shared by the worker and its forked children once in
    all (split between them), RSS once per process; MemoryCurrent is what systemd's MemoryMax= sees."""
    shown = dict(line.split("=", 1) for line in subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "-p", "MemoryCurrent", unit], capture_output=True, text=True,
        check=True).stdout.split())
    pids, todo = [], [int(shown["MainPID"])]
    while todo:  # the main process and its descendants
        pid = todo.pop()
        pids.append(pid)
        for task in os.listdir(f"/proc/{pid}/task"):
            todo += [int(child) for child in open(f"/proc/{pid}/task/{task}/children").read().split()]
    totals = {"Pss": 0, "Rss": 0}
    for pid in pids:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            name, _, value = line.partition(":")
            if name in totals:
                totals[name] += int(value.split()[0])
    return {"processes": len(pids), "pss_kib": totals["Pss"], "rss_kib": totals["Rss"],
            "current_kib": int(shown["MemoryCurrent"]) // 1024 if shown["MemoryCurrent"].isdigit() else 0}


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "measure":
        print(json.dumps(measure(int(args[0]))))
    elif command == "workers":
        print(workers())
    elif command == "started":
        print(json.dumps(started(args)))
    elif command == "stop":
        print(json.dumps(stop(args)))
    elif command == "memory":
        print(json.dumps(memory(args[0])))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
