"""Redis Cluster through rq 3's key prefix: two hash-tagged prefixes on two primaries of a real
three-primary cluster, a worker for each; jobs, retries and crash recovery work, status shows both.

Each process connects to the primary holding its prefix's slot (REDIS_CLUSTER=yes, REDIS_URL: any
node); the test points both workers at a node that serves neither prefix, so that the discovery is
what makes them work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import JOBS_DIR, RedisCluster, wait_until

ENQUEUE = """
import json, sys
from rq import Retry
from rq_worker_service.client import enqueue
spec = json.loads(sys.argv[1])
retry = Retry(max=spec["retry"]) if spec.get("retry") else None
job = enqueue(spec["func"], *spec["args"], queue=spec["queue"], job_id=spec["id"], retry=retry)
print(job.id)
"""


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster(3).start()
    yield c
    c.cleanup()


def prefixes_on_two_shards(cluster: RedisCluster) -> tuple[str, str, int]:
    """Two hash-tag prefixes whose slots sit on different primaries, and a third node's port."""
    by_node: dict[int, str] = {}
    for i in range(200):
        prefix = f"{{g{i}}}"
        by_node.setdefault(cluster.owner(prefix).port, prefix)
        if len(by_node) == 3:
            break
    (port_a, a), (port_b, b), (seed, _) = sorted(by_node.items())
    return a, b, seed


def env_for(prefix: str, seed: int, queue: str) -> dict[str, str]:
    return {"REDIS_URL": f"redis://127.0.0.1:{seed}/0", "REDIS_CLUSTER": "yes", "RQ_KEY_PREFIX": prefix,
            "RQ_QUEUES": queue, "RQ_JOB_RETRY_DELAY": "0"}


def enqueue(env: dict[str, str], **spec) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_"))}
    full.update(env, PYTHONPATH=str(JOBS_DIR))
    out = subprocess.run([sys.executable, "-c", ENQUEUE, json.dumps(spec)], env=full, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def status_of(cluster: RedisCluster, prefix: str, job_id: str) -> str | None:
    value = cluster.owner(prefix).client().hget(f"{prefix}:job:{job_id}", "status")
    return value.decode() if value else None


def executions(cluster: RedisCluster, prefix: str, job_id: str) -> int:
    return int(cluster.owner(prefix).client().get(f"{prefix}:test-executions:{job_id}") or 0)  # testjobs.counter_key


def test_two_prefixes_on_two_shards_each_with_its_worker(cluster, start_worker, tmp_path):
    a, b, seed = prefixes_on_two_shards(cluster)
    env_a, env_b = env_for(a, seed, "reports"), env_for(b, seed, "emails")
    assert cluster.owner(a).port != cluster.owner(b).port != seed
    start_worker("a", env=env_a)
    start_worker("b", env=env_b)

    quick = {a: [enqueue(env_a, func="testjobs.quick_job", args=[i], queue="reports", id=f"r{i}") for i in range(5)],
             b: [enqueue(env_b, func="testjobs.quick_job", args=[i], queue="emails", id=f"e{i}") for i in range(5)]}
    flaky = enqueue(env_a, func="testjobs.failing_job", args=[1], queue="reports", id="flaky", retry=2)
    for prefix, ids in quick.items():
        wait_until(lambda p=prefix, i=ids: all(status_of(cluster, p, j) == "finished" for j in i), 30,
                   what=f"the jobs under {prefix} to finish")
    wait_until(lambda: status_of(cluster, a, "flaky") == "finished", 30, what="the retried job to finish")
    assert executions(cluster, a, flaky) == 2
    # every key of a prefix is on its own shard: the other primaries hold none of them
    for prefix in (a, b):
        for node in cluster.nodes:
            keys = node.client().keys(f"{prefix}:*")
            assert bool(keys) == (node is cluster.owner(prefix)), (prefix, node.port, keys[:3])

    # status, with both prefixes named in the instance files next to the env file
    (tmp_path / "worker.env").write_text(f"REDIS_URL=redis://127.0.0.1:{seed}/0\nREDIS_CLUSTER=yes\n"
                                         f"RQ_KEY_PREFIX={a}\n")
    (tmp_path / "worker-b.env").write_text(f"RQ_KEY_PREFIX={b}\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_"))}
    out = subprocess.run([sys.executable, "-m", "rq_worker_service", "status", "--env-file",
                          str(tmp_path / "worker.env"), "--json"], env=clean, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    reports = {r["key_prefix"]: r for r in json.loads(out.stdout)["prefixes"]}
    assert set(reports) == {a, b}
    assert [q["name"] for q in reports[a]["queues"]] == ["reports"]
    assert [q["name"] for q in reports[b]["queues"]] == ["emails"]
    assert [len(reports[p]["workers"]) for p in (a, b)] == [1, 1]
    assert reports[a]["queues"][0]["finished"] == 6
    text = subprocess.run([sys.executable, "-m", "rq_worker_service", "status", "--env-file",
                           str(tmp_path / "worker.env")], env=clean, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path).stdout
    assert f"Key prefix {a}" in text and f"Key prefix {b}" in text and "emails" in text and "reports" in text


def test_crash_recovery_under_a_prefix(cluster, start_worker):
    a, _, seed = prefixes_on_two_shards(cluster)
    env_a = env_for(a, seed, "crash")
    worker = start_worker("crash", env=env_a)
    job = enqueue(env_a, func="testjobs.sleep_job", args=[3], queue="crash", id="crashed")
    wait_until(lambda: executions(cluster, a, job) == 1, 20, what="the job to start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    start_worker("crash", env=env_a)  # as systemd's Restart= would
    wait_until(lambda: status_of(cluster, a, job) == "finished", 40, what="the recovered job to run again")
    assert executions(cluster, a, job) == 2



@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_slot_moved_under_a_running_worker_ends_it_with_one_line(cluster, start_worker, busy):
    """A reshard moves the prefix's slot while the worker waits in its pop, or runs a job: its next
    command there is answered MOVED (ASK while the keys move). It leaves with the one line and exit
    69, not rq's traceback ("unhandled exception, quitting"), nor its scheduler's; the next start
    finds the slot's new owner, where the job's started entry moved with its keys, and runs it again."""
    prefix = f"{{moved-{busy}}}"
    seed = cluster.owner(prefix).port
    env = env_for(prefix, seed, "moving") | {"WATCHDOG_USEC": "3000000"}  # a tick, and a pop, a second
    worker = start_worker("moved", env=env)
    if busy:
        job = enqueue(env, func="testjobs.sleep_job", args=[4], queue="moving", id="moved-job")
        wait_until(lambda: executions(cluster, prefix, job) == 1, 20, what="the job to start")
    else:
        wait_until(lambda: "Ready: worker" in worker.output(), 20, what="the worker to be ready")
    cluster.move_slot(prefix, next(n for n in cluster.nodes if n.port != seed))
    assert worker.wait(15) == 69
    output = worker.output()
    assert "Traceback" not in output and "unhandled exception" not in output, output
    assert f"the cluster no longer serves RQ_KEY_PREFIX={prefix} from this node (" in output, output
    if busy:
        start_worker("moved", env=env)  # as systemd's Restart= would
        wait_until(lambda: status_of(cluster, prefix, job) == "finished", 40, what="the job to run again")
        assert executions(cluster, prefix, job) == 2
