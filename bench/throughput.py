"""Throughput of rq-worker-service's worker against stock `rq worker`, as a ratio in one run.

Both drain the same number of no-op jobs from a throwaway redis-server with one worker process;
plain processes, no systemd: quick to rerun under a profiler (py-spy, cProfile). Claims about the
installed service come from ``bench/under_systemd.py``, which measures it under its unit. The
machine is shared and noisy: the figures are medians of alternating rounds, and only the ratio is
meant to be compared.

    .venv/bin/python bench/throughput.py [--jobs 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from redis import Redis
from rq import Queue

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import benchjobs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(conn: Redis, cmd: list[str], env: dict[str, str], jobs: int) -> float:
    """Seconds from starting the worker to the last job finished."""
    conn.flushall()
    q = Queue("bench", connection=conn)
    for i in range(jobs):
        q.enqueue(benchjobs.noop, i, result_ttl=60)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while q.finished_job_registry.count < jobs:
            if proc.poll() is not None and q.finished_job_registry.count < jobs:
                raise SystemExit(f"{cmd[0]} exited early with {proc.returncode}")
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rqws-bench-")
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    conn = Redis.from_url(url)
    for _ in range(100):
        try:
            conn.ping()
            break
        except Exception:
            time.sleep(0.05)
    env = dict(os.environ, PYTHONPATH=str(BENCH), REDIS_URL=url, RQ_QUEUES="bench", RQ_APP_PATH=str(BENCH))
    bindir = Path(sys.executable).parent
    stock = [str(bindir / "rq"), "worker", "--url", url, "--path", str(BENCH), "bench"]
    ours = [sys.executable, "-m", "rq_worker_service", "run", "--instance", "bench", "--without-scheduler"]
    # A notify socket drained by a thread, as systemd's is: the notifications are part of the cost.
    notify_path = os.path.join(workdir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    threading.Thread(target=lambda: [notify.recv(4096) for _ in iter(int, 1)], daemon=True).start()
    ours_env = dict(env, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="30000000")
    times: dict[str, list[float]] = {"stock rq worker": [], "rq-worker-service": []}
    try:
        for _ in range(args.rounds):
            times["stock rq worker"].append(drain(conn, stock, env, args.jobs))
            times["rq-worker-service"].append(drain(conn, ours, ours_env, args.jobs))
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        subprocess.run(["rm", "-rf", workdir])
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, median in medians.items():
        print(f"{name:>18}: {args.jobs / median:7.1f} jobs/s  (median of {args.rounds}: "
              f"{', '.join(f'{t:.2f}s' for t in times[name])})")
    ratio = medians["stock rq worker"] / medians["rq-worker-service"]
    print(f"{'ratio':>18}: {ratio:.2f} of stock rq's throughput (1.00 = the same)")


if __name__ == "__main__":
    main()
