"""Throughput of three prefix groups on a Redis Cluster of 1 primary against 3 primaries.

What users run: the built .deb installed in a booted systemd (the e2e sandbox), three instances
``rq-worker@1..3``, each with its own hash-tagged ``RQ_KEY_PREFIX`` in ``worker-<i>.env`` and
``REDIS_CLUSTER=yes``. With 3 primaries each prefix lives on its own shard; with 1 primary (all
16384 slots on one node) the same three prefixes share one Redis. Each round enqueues the same
no-op jobs under every prefix with the instances stopped, starts them, and times until every job
is finished; the two layouts alternate, and the medians and their ratio are printed.

    .venv/bin/python bench/cluster.py [--release trixie] [--deb dist/…deb] [--jobs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from provision import build_deb  # noqa: E402
from sandbox import Sandbox, ensure_rootfs  # noqa: E402

PY = "/usr/lib/rq-worker-service/bin/python3"
LAYOUTS = {"1 primary": [7101], "3 primaries": [7201, 7202, 7203]}

ENQUEUE = """
import sys
from rq import Queue
from rq_worker_service.client import settings_from_env
from rq_worker_service.connection import make_connection
settings = settings_from_env()
queue = Queue("bench", connection=make_connection(settings.redis, settings.key_prefix))
with queue.connection.pipeline() as pipe:
    for i in range(int(sys.argv[1])):
        queue.enqueue("benchjobs.noop", i, result_ttl=600, pipeline=pipe)
    pipe.execute()
"""

WAIT = """
import sys, time
from rq import Queue
from rq_worker_service.client import settings_from_env
from rq_worker_service.connection import make_connection
settings = settings_from_env()
queue = Queue("bench", connection=make_connection(settings.redis, settings.key_prefix))
deadline = time.time() + 600
while queue.finished_job_registry.count < int(sys.argv[1]):
    if time.time() > deadline:
        sys.exit("timed out")
    time.sleep(0.05)
print(time.time())
"""


def start_layout(box: Sandbox, ports: list[int]) -> None:
    for port in ports:
        box.run(f"mkdir -p /var/lib/bench/{port} && redis-server --port {port} --bind 127.0.0.1 --daemonize yes "
                f"--cluster-enabled yes --cluster-config-file nodes.conf --dir /var/lib/bench/{port} "
                f"--save '' --appendonly no --logfile /var/lib/bench/{port}.log")
    time.sleep(0.5)
    if len(ports) == 1:
        box.run(["redis-cli", "-p", str(ports[0]), "cluster", "addslotsrange", "0", "16383"])
    else:
        box.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                 "--cluster-yes"])
    for _ in range(100):
        if all("cluster_state:ok" in box.run(["redis-cli", "-p", str(p), "cluster", "info"]).stdout for p in ports):
            return
        time.sleep(0.2)
    raise SystemExit(f"cluster on {ports} did not become ok")


def prefixes_on_separate_shards(box: Sandbox) -> list[str]:
    """Three hash tags whose slots sit on the three primaries of the 3-primary layout."""
    script = (f"import redis; from redis.crc import key_slot; slots = redis.Redis(port={LAYOUTS['3 primaries'][0]})"
              ".cluster('SLOTS'); found = {}\n"
              "for i in range(200):\n"
              "    s = key_slot(b'{p%d}' % i)\n"
              "    found.setdefault(next(n[1] for a, b, n, *_ in slots if a <= s <= b), '{p%d}' % i)\n"
              "print(' '.join(found[k] for k in sorted(found)))")
    prefixes = box.run([PY, "-c", script]).stdout.split()
    if len(prefixes) != 3:
        raise SystemExit(f"no three prefixes on three shards: {prefixes}")
    return prefixes


def configure(box: Sandbox, seed: int, prefixes: list[str]) -> None:
    box.write("/etc/rq-worker/worker.env", f"REDIS_URL=redis://127.0.0.1:{seed}/0\nREDIS_CLUSTER=yes\n"
              "RQ_QUEUES=bench\nRQ_APP_PATH=/srv/bench\nRQ_WITH_SCHEDULER=no\n", mode=0o640)
    for i, prefix in enumerate(prefixes, 1):
        box.write(f"/etc/rq-worker/worker-{i}.env", f"RQ_KEY_PREFIX={prefix}\n", mode=0o640)
    box.run("chgrp rq-worker /etc/rq-worker/*.env")


def in_box(box: Sandbox, seed: int, prefix: str, script: str, *args: str) -> str:
    env = f"REDIS_URL=redis://127.0.0.1:{seed}/0 REDIS_CLUSTER=yes RQ_KEY_PREFIX='{prefix}' PYTHONPATH=/srv/bench"
    return box.run(f"env {env} {PY} -c '{script}' {' '.join(args)}", timeout=700).stdout.strip()


def one_round(box: Sandbox, layout: str, prefixes: list[str], jobs: int) -> float:
    ports = LAYOUTS[layout]
    seed = ports[0]
    box.run(["systemctl", "stop", "rq-worker@1", "rq-worker@2", "rq-worker@3"])
    for port in ports:
        box.run(["redis-cli", "-p", str(port), "flushall"])
    configure(box, seed, prefixes)
    for prefix in prefixes:
        in_box(box, seed, prefix, ENQUEUE, str(jobs))
    started = float(box.run(["python3", "-c", "import time; print(time.time())"]).stdout)
    box.run(["systemctl", "start", "rq-worker@1", "rq-worker@2", "rq-worker@3"])
    return max(float(in_box(box, seed, prefix, WAIT, str(jobs))) for prefix in prefixes) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie")
    parser.add_argument("--deb", help="a built package (default: build one with packaging/build-deb)")
    parser.add_argument("--jobs", type=int, default=300, help="no-op jobs per prefix per round (default 300)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    deb = Path(args.deb) if args.deb else build_deb(args.release)
    with Sandbox(ensure_rootfs(args.release)) as box:
        box.copy_in(deb, f"/root/{deb.name}")
        box.run(["apt-get", "install", "-y", f"/root/{deb.name}"], timeout=300)
        box.copy_in(ROOT / "bench" / "benchjobs.py", "/srv/bench/benchjobs.py")
        for ports in LAYOUTS.values():
            start_layout(box, ports)
        prefixes = prefixes_on_separate_shards(box)
        times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        for _ in range(args.rounds):
            for layout in LAYOUTS:
                times[layout].append(one_round(box, layout, prefixes, args.jobs))
    total = 3 * args.jobs
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.release}, 3 instances (fork), prefixes {', '.join(prefixes)}, {total} no-op jobs per round")
    for layout, median in medians.items():
        print(f"{layout:>12}: {total / median:7.1f} jobs/s  (median of {args.rounds}: "
              f"{', '.join(f'{t:.2f}s' for t in times[layout])})")
    print(f"{'ratio':>12}: {medians['1 primary'] / medians['3 primaries']:.2f} (3 primaries / 1 primary throughput)")


if __name__ == "__main__":
    main()
