"""One cell of the fault matrix: jobs enqueued, a worker started with a fault armed and restarted
(unarmed) whenever it ends, as systemd's Restart= would, until every job is done or a bound
passes; then the property, from Redis and the jobs' own records.

The property (issue 25): every job ends FINISHED, or FAILED exactly as its retry policy says; no
job is in no list and no registry; never two runs of one job at once; a run beyond those its
policy gives is explained by a fault (its job had started when the fault hit: at-least-once).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import redis
from helpers import NotifySocket, RedisServer, WorkerProcess, wait_until
from rq import Callback, Queue, Retry

from rq_worker_service.faults import POINTS

from .injector import ACT

ACTIONS = (*ACT, "clock-step")
"""The injector's actions, and the Redis clock step it cannot throw (UNAVAILABLE)."""

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[2] / "rq_worker_service"
QUEUE_SETS = {1: ("q1",), 3: ("q1", "q2", "q3")}
WORKER_CLASSES = ("fork", "prefork", "spawn", "simple")
CLASS_ENV = {"fork": {"RQ_WORKER_CLASS": "fork", "RQ_PREFORK": "no"},
             "prefork": {"RQ_WORKER_CLASS": "fork", "RQ_PREFORK": "yes"},
             "spawn": {"RQ_WORKER_CLASS": "spawn"}, "simple": {"RQ_WORKER_CLASS": "simple"}}
"""What each class of the matrix sets: prefork is the fork worker with its spare horse (``prefork``)."""
PREFORK_ONLY = ("spare.ready", "horse.released")
"""Points only a spare horse reaches."""
CELL_BOUND = 40.0
"""Seconds a cell may take from the first start to every job done."""
INSTANCE = "f1"
DEFAULT_RETRY_MAX = 3
"""RQ_JOB_RETRY_MAX's default: the retries a job without Retry gets when a fault cuts it off."""

PRIMERS = {
    "rescue.claimed": "job.performed:kill-worker:1",
    "rescue.callback": "job.performed:kill-worker:1",
    "sweep.requeue": "pop.fetched:kill-worker:1",
    "fence.claimed": "horse.started:pause:1",
}
"""A point reached only after an earlier fault: the first run throws this one, the next run is
armed with the cell's fault (a rescue needs a predecessor that died under a STARTED job: after
its function ran, since the horse marks it STARTED only as it begins; a sweep, a pop
left unstarted; a fencing, a second instance and a member that went silent for longer than
FENCE_PAUSE)."""

FENCE_PAUSE = 10.0
"""Seconds the primed member of a fence.claimed cell is stopped: more than a watchdog period (3 s)
plus the deadline's second and the fencer's own period of beating on time."""

TRIGGERS = {"stop.teardown": signal.SIGTERM, "reload.exec": signal.SIGHUP}
"""A point the worker reaches only when told: the driver sends this signal once, as soon as the first
job has started (with jobs still queued), as systemctl stop or reload would."""

UNAVAILABLE = {
    "clock-step": "libfaketime cannot wrap Debian's redis-server (jemalloc's clock_gettime recursion at start): "
                  "the Redis clock step is left out of the matrix",
}


@dataclass(frozen=True)
class Cell:
    point: str
    action: str
    queues: int
    worker_class: str
    nth: int = 1

    @property
    def id(self) -> str:
        return f"{self.point}-{self.action}-q{self.queues}-{self.worker_class}-n{self.nth}"

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.action}:{self.nth}"


@dataclass
class JobSpec:
    id: str
    queue: str
    seconds: float
    fail: bool
    retries: int | None  # None: no Retry of its own
    callback: bool


@dataclass
class Outcome:
    cell: Cell
    seed: int
    problems: list[str] = field(default_factory=list)
    fired: dict | None = None
    primer: dict | None = None
    starts: int = 0
    exits: list[int | None] = field(default_factory=list)
    elapsed: float = 0.0
    notes: str = ""
    reached: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        # The whole matrix has each cell at nth=1 only: a sampled nth=2 cell is replayed by its sample.
        full = "RQWS_FAULTS_FULL=1 " if self.cell.nth == 1 else ""
        lines = [f"cell {self.cell.id} (seed {self.seed}; replay: RQWS_FAULT_SEED={self.seed} "
                 f"{full}.venv/bin/python -m pytest tests/integration/test_fault_matrix.py -k '{self.cell.id}')",
                 *([f"primer: {self.primer}"] if self.primer else []),
                 f"fault: {self.fired or 'never fired'}; worker starts: {self.starts}, exits: {self.exits}; "
                 f"{self.elapsed:.1f}s", *self.problems]
        if not self.fired:  # why it never fired: what the worker did reach
            lines.append(f"points reached: {self.reached or 'none'}")
        if self.notes:
            lines.append(f"injector notes: {self.notes.strip()}")
        return "\n  ".join(lines)


def all_cells() -> list[Cell]:
    """The whole matrix: point × action × {one queue, three} × {fork, prefork, spawn, simple}; no horse in simple
    mode."""
    return [Cell(point, action, queues, cls) for point in POINTS for action in ACTIONS for queues in QUEUE_SETS
            for cls in WORKER_CLASSES if not (cls == "simple" and action == "kill-horse")
            and not (point in PREFORK_ONLY and cls != "prefork")]


def placed_points() -> set[str]:
    """The points this code reaches: a cell whose point is reached nowhere cannot fire."""
    import re

    return {name for path in PACKAGE.rglob("*.py")
            for name in re.findall(r"""faults\.reached\(\s*["']([^"']+)["']""", path.read_text())}


def job_specs(cell: Cell, rng: Random) -> list[JobSpec]:
    """Six jobs across the cell's queues: with and without Retry, two that fail, two with a failure callback."""
    queues = QUEUE_SETS[cell.queues]
    kinds = [(False, 2, False), (False, None, True), (True, 1, True), (False, 1, False), (True, None, False),
             (False, None, False)]
    rng.shuffle(kinds)
    if cell.point in PRIMERS:  # the primer cuts off the first job popped (fj-0, from q1): one with a callback
        kinds.sort(key=lambda kind: not kind[2])
    return [JobSpec(f"fj-{i}", queues[i % len(queues)], round(rng.uniform(0.2, 0.5), 2), fail, retries, callback)
            for i, (fail, retries, callback) in enumerate(kinds)]


class RestartableRedis(RedisServer):
    """A redis-server that keeps its data across a restart (AOF, fsync on every write), on the same port."""

    def __init__(self) -> None:
        super().__init__()
        self.extra_args = ["--appendonly", "yes", "--appendfsync", "always"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart_if_down(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None
            self.start()
            return True
        return False


def enqueue(conn: redis.Redis, jobs: list[JobSpec]) -> None:
    for spec in jobs:
        Queue(spec.queue, connection=conn).enqueue(
            "faultjobs.run", spec.seconds, spec.fail, job_id=spec.id,
            retry=Retry(max=spec.retries) if spec.retries is not None else None,
            on_failure=Callback("faultjobs.on_failure") if spec.callback else None)


def _terminal(conn: redis.Redis, jobs: list[JobSpec]) -> bool:
    try:
        statuses = [conn.hget(f"rq:job:{spec.id}", "status") for spec in jobs]
    except redis.exceptions.RedisError:
        return False
    return all(s in (b"finished", b"failed") for s in statuses)


def run_cell(server: RestartableRedis, cell: Cell, seed: int, workdir: Path) -> Outcome:
    outcome = Outcome(cell, seed)
    rng = Random(f"{seed}-{cell.id}")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    conn = server.client()
    conn.flushall()
    jobs = job_specs(cell, rng)
    enqueue(conn, jobs)
    notify = NotifySocket(workdir)
    env = {"RQ_QUEUES": ",".join(QUEUE_SETS[cell.queues]), **CLASS_ENV[cell.worker_class],
           "WATCHDOG_USEC": "3000000", "RQ_JOB_RETRY_DELAY": "0", "RQ_APP_PATH": str(HERE),
           # (the caller's PYTHONPATH kept: a run from a worktree tests the worktree's code)
           "PYTHONPATH": ":".join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
           "RQWS_FAULT_DIR": str(workdir)}
    instances = _instances(cell)
    t0 = time.monotonic()
    triggered = False
    done_at = 0.0
    try:
        while True:
            server.restart_if_down()
            for instance in instances:
                if instance.ended():
                    outcome.exits.extend(instance.restarted(server, workdir, notify, env))
                    outcome.starts += 1
            first = instances[0].worker
            if cell.point in TRIGGERS and not triggered and (workdir / "runs.jsonl").exists() and first:
                first.signal(TRIGGERS[cell.point])
                triggered = True
            if time.monotonic() - t0 > CELL_BOUND:
                break
            if _terminal(conn, jobs):
                done_at = done_at or time.monotonic()
                # A primed cell's fault comes after the primer's (a rescue, a fencing): give it a moment.
                if cell.point not in PRIMERS or (workdir / "fired.json").exists() or time.monotonic() - done_at > 5:
                    break
            time.sleep(0.1)
        outcome.elapsed = time.monotonic() - t0
        for instance in instances:
            instance.stop(server)
        outcome.fired = _read_json(workdir / "fired.json")
        outcome.primer = _read_json(workdir / "primer.json")
        outcome.problems = check(conn, jobs, workdir, outcome.fired, outcome.primer)
        outcome.notes = (workdir / "notes.log").read_text() if (workdir / "notes.log").exists() else ""
        reached_log = workdir / "reached.log"
        for line in reached_log.read_text().splitlines() if reached_log.exists() else []:
            point = line.split()[-1]
            outcome.reached[point] = outcome.reached.get(point, 0) + 1
        if outcome.problems:
            named = {spec.id for spec in jobs if any(f" {spec.id} " in p for p in outcome.problems)}
            for instance in instances:
                if instance.worker:
                    lines = [line for line in instance.worker.output().splitlines()
                             if any(f"{job_id}" in line for job_id in named) or "Starting" in line]
                    outcome.problems.append(f"worker {instance.name} log, lines naming {sorted(named)}:\n    " +
                                            "\n    ".join(lines[-25:]))
    finally:
        for instance in instances:
            if instance.worker:
                instance.worker.kill()
        notify.close()
        conn.close()
    return outcome


@dataclass
class Instance:
    """One rq-worker@<name>: started with each armed fault in turn, then unarmed, whenever it has ended."""

    name: str
    armed: list[dict[str, str]]
    worker: WorkerProcess | None = None

    def ended(self) -> bool:
        return self.worker is None or self.worker.proc is None or self.worker.proc.poll() is not None

    def restarted(self, server: RestartableRedis, workdir: Path, notify: NotifySocket, env: dict[str, str]
                  ) -> list[int | None]:
        exits = []
        if self.worker is not None:
            exits.append(self.worker.proc.returncode if self.worker.proc else None)
            self.worker.kill()
            time.sleep(0.3)  # RestartSec=, shortened
        fault = self.armed.pop(0) if self.armed else {}
        client_name = f"{os.uname().nodename}.rq-worker@{self.name}"
        self.worker = WorkerProcess(server.url, self.name, workdir, notify=notify,
                                    env={**env, "RQWS_FAULT": "", **fault, "RQWS_FAULT_CLIENT_NAME": client_name}
                                    ).start()
        return exits

    def stop(self, server: RestartableRedis) -> None:
        """A warm stop, so that nothing moves while the property is read."""
        server.restart_if_down()
        worker = self.worker
        if worker is not None and worker.proc is not None and worker.proc.poll() is None:
            worker.signal(signal.SIGCONT)
            worker.signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        wait_until(server.alive, 5, what="redis-server")


def _instances(cell: Cell) -> list[Instance]:
    fault = {"RQWS_FAULT": cell.spec, "RQWS_FAULT_RECORD": "fired.json"}
    if cell.point not in PRIMERS:
        return [Instance(INSTANCE, [fault])]
    primer = {"RQWS_FAULT": PRIMERS[cell.point], "RQWS_FAULT_RECORD": "primer.json"}
    if cell.point == "fence.claimed":  # the fencer is another instance: armed from the start
        return [Instance(INSTANCE, [{**primer, "RQWS_FAULT_PAUSE": str(FENCE_PAUSE)}]), Instance("f2", [fault])]
    return [Instance(INSTANCE, [primer, fault])]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _runs(workdir: Path) -> dict[str, list[dict]]:
    """Each job's runs, in start order: {"start", "end" (None if cut off), "pid", "overlap"}."""
    runs: dict[str, list[dict]] = {}
    path = workdir / "runs.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        mine = runs.setdefault(r["job"], [])
        if r["event"] == "start":
            mine.append({"start": r["t"], "end": None, "pid": r["pid"], "overlap": r["overlap"]})
        else:
            run = next(x for x in reversed(mine) if x["pid"] == r["pid"] and x["end"] is None)
            run["end"] = r["t"]
    return runs


def where(conn: redis.Redis, job_id: str) -> set[str]:
    """Every list and sorted set under rq's prefix that holds the job id."""
    found = set()
    for key in conn.scan_iter("rq:*", count=1000):
        kind = conn.type(key)
        if kind == b"list" and conn.lpos(key, job_id) is not None:
            found.add(key.decode())
        elif kind == b"zset" and conn.zscore(key, job_id) is not None:
            found.add(key.decode())
    return found


def check(conn: redis.Redis, jobs: list[JobSpec], workdir: Path, fired: dict | None,
          primer: dict | None) -> list[str]:
    problems = []
    runs = _runs(workdir)
    faults = [f.get("hit", f["t"]) for f in (fired, primer) if f]
    for spec in jobs:
        status = (conn.hget(f"rq:job:{spec.id}", "status") or b"(no job hash)").decode()
        expected = "failed" if spec.fail else "finished"
        lists = where(conn, spec.id)
        home = {f"rq:{expected}:{spec.queue}"}
        mine = runs.get(spec.id, [])
        explained = sum(1 for t in faults if any(r["start"] <= t for r in mine))
        if primer and spec.id == primer.get("job") and not any(r["start"] <= primer.get("hit", primer["t"])
                                                              for r in mine):
            # The primer hit this job in hand before its first run began (a pause at horse.started, before
            # the simple worker's STARTED mark): the fencing it causes may cut the run that follows.
            explained += 1
        retries = spec.retries
        if retries is None and explained:
            retries = DEFAULT_RETRY_MAX  # a job cut off under its worker gets the service's default policy
        policy_runs = 1 + (retries or 0) if spec.fail else 1
        least_runs = 1 + (spec.retries or 0) if spec.fail else 1
        what = (f"{spec.id} (queue {spec.queue}, {'fails' if spec.fail else 'succeeds'}, "
                f"Retry(max={spec.retries}))")
        if status != expected:
            problems.append(f"LOST {what}: status {status}, expected {expected}; in {sorted(lists) or 'no list'}")
        elif lists != home:
            problems.append(f"MISPLACED {what}: in {sorted(lists) or 'no list and no registry'}, expected {home}")
        if any(r["overlap"] for r in mine) or _overlapping(mine):
            problems.append(f"CONCURRENT {what}: two runs at once: {mine}")
        if len(mine) > policy_runs + explained:
            problems.append(f"UNEXPLAINED RUN {what}: {len(mine)} runs, its policy gives {policy_runs} and "
                            f"{explained} fault(s) hit it while started")
        if status == expected and len(mine) < least_runs:
            problems.append(f"RETRIES SKIPPED {what}: {status} after {len(mine)} run(s), its policy gives {least_runs}")
    return problems


def _overlapping(runs: list[dict]) -> bool:
    ended = sorted((r["start"], r["end"]) for r in runs if r["end"] is not None)
    return any(b_start < a_end for (_, a_end), (b_start, _) in zip(ended, ended[1:], strict=False))
