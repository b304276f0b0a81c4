"""Chaos: random restarts, stops, kill -9 and SIGSTOP on 3 instances and a Redis restart, while
a few hundred short jobs with Retry run. Afterwards every job has completed: none is lost."""

from __future__ import annotations

import os
import random
import time

import pytest
from conftest import ctl, jobs, reset, systemctl, wait_for

JOBS = int(os.environ.get("RQWS_CHAOS_JOBS", "300"))
CHAOS_SECONDS = float(os.environ.get("RQWS_CHAOS_SECONDS", "60"))
INSTANCES = ("1", "2", "3")

pytestmark = pytest.mark.release_independent  # what the chaos exercises is proven per release by test_systemd


def test_chaos_loses_no_job(box):
    # Every guard shortened alike: the watchdog catches a loop frozen after READY=1, the start and stop
    # timeouts one frozen before it (a SIGSTOP during start-up or the Redis restart) or while it stops
    # (RQ_SHUTDOWN_TIMEOUT=5 fits well inside); the unit's 90 s would outlast the 60 s this test gives
    # the instances to come back.
    reset(box, "WatchdogSec=6s", "TimeoutAbortSec=2s", "TimeoutStartSec=15s", "TimeoutStopSec=15s",
          "RestartSec=1s",
          "Environment=RQ_SHUTDOWN_TIMEOUT=5 RQ_JOB_RETRY_DELAY=0 RQ_JOB_RETRY_MAX=10")
    systemctl(box, "start", *(f"rq-worker@{i}" for i in INSTANCES))
    ids = ctl(box, "enqueue", "sleep_job", "0.4", "--id", "chaos", "--count", str(JOBS), "--retry", "10",
              "--interval", "1")
    seed = int(os.environ.get("RQWS_CHAOS_SEED", str(time.time_ns() % 100_000)))
    rng = random.Random(seed)
    actions: list[str] = []
    t0 = time.monotonic()
    redis_restarted = False
    while time.monotonic() - t0 < CHAOS_SECONDS:
        time.sleep(rng.uniform(1.0, 3.0))
        unit = f"rq-worker@{rng.choice(INSTANCES)}"
        if not redis_restarted and time.monotonic() - t0 > CHAOS_SECONDS / 2:
            systemctl(box, "restart", "redis-server")
            redis_restarted = True
            actions.append("redis restart")
            continue
        action = rng.choice(["restart", "stop+start", "kill -9", "sigstop"])
        if action == "restart":
            systemctl(box, "restart", "--no-block", unit)
        elif action == "stop+start":
            systemctl(box, "stop", unit, check=False)
            systemctl(box, "start", "--no-block", unit)
        elif action == "kill -9":
            systemctl(box, "kill", "-s", "KILL", unit, check=False)
        else:
            systemctl(box, "kill", "-s", "STOP", "--kill-whom=main", unit, check=False)
        actions.append(f"{action} {unit}")
    chaos_end = time.monotonic()
    left = sum(1 for j in jobs(box, ids).values() if j["status"] != "finished")
    # Whatever state the chaos left (a stopped instance, one waiting for its watchdog or start timeout),
    # bring all up.
    try:
        wait_for(lambda: systemctl(box, "start", *(f"rq-worker@{i}" for i in INSTANCES),
                                   check=False).returncode == 0, 60, "all instances to start")
    except AssertionError:
        state = box.run(["systemctl", "status", "--no-pager", "-n", "15", *(f"rq-worker@{i}" for i in INSTANCES)],
                        check=False).stdout
        raise AssertionError(f"instances did not all start after the chaos (seed {seed}, {actions}):\n"
                             f"{state}") from None

    def all_done():
        state = jobs(box, ids)
        return state if all(j["status"] == "finished" for j in state.values()) else None

    try:
        state = wait_for(all_done, 300, "every job to finish", interval=2)
    except AssertionError:
        state = jobs(box, ids)
        unfinished = {k: v for k, v in state.items() if v["status"] != "finished"}
        raise AssertionError(f"seed {seed}: {len(unfinished)} jobs not finished, e.g. "
                             f"{list(unfinished.items())[:5]}; actions: {actions}") from None
    drain = time.monotonic() - chaos_end
    executions = sum(j["executions"] for j in state.values())
    print(f"\nchaos (seed {seed}): {len(actions)} actions over {CHAOS_SECONDS:.0f}s "
          f"({', '.join(sorted({a.split(' rq')[0] for a in actions}))}); {JOBS} jobs, 0 lost, "
          f"{executions} executions ({executions - JOBS} at-least-once re-runs); {left} jobs were left when "
          f"the chaos ended, drained {drain:.1f}s later")
    assert ctl(box, "registries")["started"] == []
