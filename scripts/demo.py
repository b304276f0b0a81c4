"""The demo: the seed guide's report_analysis scenarios, with two workers run as systemd would.

A throwaway redis-server on a free port, two `rq-worker-service run` instances in the foreground,
and four reports: one that fails twice and then succeeds (Retry), one whose worker is killed with
SIGKILL mid-way and is recovered when the instance restarts, one whose worker gets SIGTERM mid-job
and finishes it first, one plain. The demo restarts a stopped or killed instance itself, as
`Restart=on-failure` does under systemd. It ends with `rq-worker-service status` and one line per
report, and leaves no process, port or file behind, also when interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "report_analysis"
sys.path.insert(0, str(APP))

from redis import Redis  # noqa: E402
from report_analysis import QUEUE, enqueue_report_analysis  # noqa: E402
from rq.job import Job  # noqa: E402

T0 = time.monotonic()
INTERESTING = re.compile(r"analysis (started|finished)|scheduled for retry|Warm shutdown|Rescued job|Fenced|"
                         r"Ready:|Stopped$|died while|exception raised|Successfully completed")


def say(text: str) -> None:
    print(f"{time.monotonic() - T0:6.1f}s  {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """One `rq-worker-service run --instance N`, restarted by us as systemd's Restart= would."""

    def __init__(self, n: int, url: str, workdir: Path) -> None:
        self.n, self.url, self.workdir = n, url, workdir
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"worker-{n}.log"

    def start(self) -> None:
        env = dict(os.environ, REDIS_URL=self.url, RQ_QUEUES=QUEUE, RQ_APP_PATH=str(APP), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "rq_worker_service", "run", "--instance", f"demo{self.n}"],
                                     env=env, cwd=self.workdir, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._follow, args=(self.proc,), daemon=True).start()

    def _follow(self, proc: subprocess.Popen) -> None:
        """Echo the lines worth seeing from this run's log, tagged with the instance."""
        with open(self.log, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if not line:
                    if proc.poll() is not None:
                        return
                    time.sleep(0.1)
                    continue
                if INTERESTING.search(line):
                    message = line.split(": ", 1)[-1].strip()
                    message = re.sub(r"\s*\[job [^\]]+\]$", "", message)
                    say(f"   [worker {self.n}] {message[:110]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="rq-worker-demo-"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = None
    instances: list[Instance] = []
    try:
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                       str(workdir), "--appendonly", "yes", "--save", ""],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        conn = Redis.from_url(url)
        wait(lambda: _pings(conn), 10, "redis-server")
        say(f"redis-server on port {port} (AOF on, in {workdir})")
        instances = [Instance(1, url, workdir), Instance(2, url, workdir)]
        for inst in instances:
            inst.start()
        wait(lambda: conn.scard("rq:workers") == 2, 15, "both workers to register")
        say("two instances up: rq-worker-service run --instance demo1 / demo2 (what rq-worker@.service runs)")

        def job(report_id: int) -> Job:
            return Job.fetch(f"report_analysis_{report_id}", connection=conn)

        def worker_of(report_id: int) -> Instance:
            name = job(report_id).worker_name or ""
            return instances[0] if name.endswith("@demo1") else instances[1]

        say("enqueue report 101: fails twice, then succeeds (Retry(max=3, interval=2))")
        enqueue_report_analysis(101, conn, seconds=2, fail_times=2, retry_interval=2)
        say("enqueue report 102: a long analysis (12 s) whose worker will be killed with SIGKILL")
        enqueue_report_analysis(102, conn, seconds=12, retry_interval=1)
        wait(lambda: job(102).get_status() == "started", 10, "report 102 to start")
        time.sleep(3)
        victim = worker_of(102)
        say(f"kill -9 worker {victim.n} in the middle of report 102 (its work horse dies with it)")
        victim.signal(signal.SIGKILL)
        victim.proc.wait(5)
        time.sleep(1.5)
        say(f"restart worker {victim.n}, as systemd's Restart=on-failure would")
        restarted = time.time()
        victim.start()

        say("enqueue report 103 (6 s) and report 104 (1 s)")
        enqueue_report_analysis(103, conn, seconds=6)
        enqueue_report_analysis(104, conn, seconds=1)
        wait(lambda: job(103).get_status() == "started", 20, "report 103 to start")
        time.sleep(2)
        stopped = worker_of(103)
        say(f"SIGTERM to worker {stopped.n} while it runs report 103 (systemctl stop): it finishes the job first")
        stopped.signal(signal.SIGTERM)
        code = stopped.proc.wait(30)
        say(f"worker {stopped.n} exited with status {code} after report 103 was {job(103).get_status().value}")
        stopped.start()

        ids = [101, 102, 103, 104]
        wait(lambda: all(job(i).get_status() == "finished" for i in ids), 90, "every report to finish")
        rerun_after = job(102).started_at.timestamp() - restarted  # started_at: of its last attempt
        say("all reports finished")
        print()
        status = subprocess.run([sys.executable, "-m", "rq_worker_service", "status", "--url", url],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(APP)})
        print(status.stdout)
        print("What happened to every report:")
        for i in ids:
            j = job(i)
            attempts = j.meta.get("attempts", 1)
            line = f"  report {i}: {j.get_status().value} after {attempts} attempt{'s' if attempts > 1 else ''}"
            if i == 101:
                line += " (2 planned failures, retried by RQ's Retry)"
            if i == 102:
                line += (f" (worker killed mid-way; running again {rerun_after:.1f}s after its instance "
                         "restarted, where stock RQ takes ~14 min)")
            if i == 103:
                line += " (the worker was stopped with SIGTERM mid-job and finished it before exiting)"
            print(line)
        say("done")
        return 0
    finally:
        if any(inst.proc is not None and inst.proc.poll() is None for inst in instances):
            say("stopping the workers (SIGTERM: a running job finishes first)")
        for inst in instances:
            inst.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(conn: Redis) -> bool:
    try:
        return bool(conn.ping())
    except Exception:
        return False


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ndemo interrupted: everything it started is stopped and removed", file=sys.stderr)
        sys.exit(130)
