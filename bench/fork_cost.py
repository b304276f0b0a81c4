"""What a fork-per-job costs before the job's own Redis work: the accounting behind docs/benchmarks.md.

Run with the package's Python (inside the sandbox ``bench/under_systemd.py`` boots, or anywhere
the package is installed), next to a Redis on 127.0.0.1:6379:

    /usr/lib/rq-worker-service/bin/python3 fork_cost.py [--rounds 300]

It imports what a worker imports (so the heap that is forked is a worker's) and times, per fork,
in CPU (this process and its reaped children) and wall time:

* ``fork + exit``: os.fork(), the child exits at once, the parent reaps it: the kernel's share
  (copying page tables, tearing the child's address space down);
* ``+ horse signals, seed``: what rq's horse does first (process group, random seed, handlers);
* ``+ new Redis connection``: and then opens its own connection and sends one command, as rq's
  horse does (redis-py's pool is reset in a new process): connect, HELLO, CLIENT SETNAME, and
  redis-py's set-up code run in a copy-on-write child;
* ``(inherited connection)``: the same command on a connection the parent opened (``handoff``);
* ``+ import the job's module``: and then imports the benchmark's job module, as every rq horse
  does (the worker never imports job code, so each horse imports it anew).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Callable

import redis
from rq.worker import Worker  # noqa: F401  (the worker's heap, as a worker has it)

from rq_worker_service import cli, service, worker_classes  # noqa: F401


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def horse_signals() -> None:
    os.setpgrp()
    random.seed()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


RQS = redis.Redis.from_url("redis://127.0.0.1:6379/0", client_name="fork-cost")
"""A client as an rq user makes one: in the horse its pool starts afresh and connects anew."""


def horse_set_up() -> None:
    horse_signals()
    RQS.ping()


INHERITED = redis.Redis(host="127.0.0.1", port=6379, client_name="fork-cost", single_connection_client=True)


def horse_inherits_connection() -> None:
    """The horse uses a connection the parent opened (and does not use while the horse lives)."""
    horse_signals()
    INHERITED.connection.pid = os.getpid()  # type: ignore[union-attr]  # redis-py: not a stale fork copy
    INHERITED.ping()


def horse_imports_job_module() -> None:
    horse_inherits_connection()
    importlib.import_module("benchjobs")


def one_fork(child: Callable[[], None] | None) -> None:
    pid = os.fork()
    if pid == 0:
        if child is not None:
            child()
        os._exit(0)
    os.waitpid(pid, 0)


def measure(rounds: int, child: Callable[[], None] | None) -> tuple[float, float]:
    """(CPU ms, wall ms) per fork."""
    one_fork(child)  # warm-up
    cpu0, wall0 = cpu(), time.perf_counter()
    for _ in range(rounds):
        one_fork(child)
    return (cpu() - cpu0) / rounds * 1000, (time.perf_counter() - wall0) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="forks per line (default: 300)")
    args = parser.parse_args()
    redis.Redis(host="127.0.0.1", port=6379).ping()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchjobs.py sits beside this file
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    print(f"heap forked: {rss:.1f} MB resident, {len(gc.get_objects())} objects tracked by the collector")
    INHERITED.ping()
    RQS.ping()
    cases = [("fork + exit", None), ("+ horse signals, seed", horse_signals),
             ("+ new Redis connection", horse_set_up), ("(inherited connection)", horse_inherits_connection),
             ("+ import the job's module", horse_imports_job_module)]
    for label, child in cases:
        used, wall = measure(args.rounds, child)
        print(f"{label:>30}: {used:6.2f} ms CPU, {wall:6.2f} ms wall per fork")


if __name__ == "__main__":
    main()
