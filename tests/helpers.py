"""Helpers shared by the integration tests: a real redis-server, a notify socket, worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq.job import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = ROOT / "tests" / "jobs"
RQ_CLI = str(Path(sys.executable).parent / "rq")
"""Stock rq's own command, the oracle of the tests that compare our worker with ``rq worker``."""
ACL_PASSWORD = "acl-test-pw"
"""The password of the ACL users the integration tests make (``acl_user``)."""


class FakeClock:
    """A monotonic clock the test moves (``now``); ``sleep`` records each wait and moves it on."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def app_package(tmp_path: Path, module: str, app: str, sitecustomize: str) -> Path:
    """A throwaway app directory: ``module``.py with ``app``, and a sitecustomize.py (the worker's
    Python runs it at start when the directory is on PYTHONPATH: a test's fault injection)."""
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / f"{module}.py").write_text(app)
    (directory / "sitecustomize.py").write_text(sitecustomize)
    return directory


def app_package_env(app_dir: Path, **env: str) -> dict[str, str]:
    """A worker's environment for ``app_package``'s directory: the app's and the test jobs' path, its
    sitecustomize on PYTHONPATH, no scheduler; ``env`` on top."""
    path = ":".join(filter(None, [str(app_dir), os.environ.get("PYTHONPATH")]))
    return {"RQ_APP_PATH": f"{app_dir}:{JOBS_DIR}", "PYTHONPATH": path, "RQ_WITH_SCHEDULER": "no", **env}


def children_of(pid: int, zombies: bool = False) -> list[int]:
    """The children of ``pid`` (from each process's parent in /proc), live ones only unless ``zombies``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            found.append(int(entry.name))
    return found


def spare_of(worker_pid: int) -> int:
    """The idle fork worker's spare horse (RQ_PREFORK; no scheduler process), once there is one."""
    wait_until(lambda: len(children_of(worker_pid)) == 1, 10, what="the spare horse")
    (spare,) = children_of(worker_pid)
    return spare


def job_ended(rconn: redis.Redis, job_id: str, timeout: float = 30) -> Job:
    """The job once FINISHED or FAILED."""
    wait_until(lambda: Job.fetch(job_id, connection=rconn).get_status() in (JobStatus.FINISHED, JobStatus.FAILED),
               timeout, what=f"job {job_id} to end")
    return Job.fetch(job_id, connection=rconn)


def runs(rconn: redis.Redis, job_id: str) -> int:
    """How many times the job ran (``testjobs`` count their runs; a cluster prefix not supported here)."""
    return int(rconn.get(f"executions:{job_id}") or 0)


def horse_of(worker_pid: int) -> int:
    """The work horse of a fork worker without a scheduler process: its oldest live child. With
    RQ_PREFORK the worker's other child is the spare horse, forked after the horse it will follow
    and waiting for the next job (``prefork``)."""
    def started(pid: int) -> tuple[int, int]:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]), pid

    children = [int(p) for p in Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()]
    assert children, f"worker {worker_pid} has no child"
    return min(children, key=started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server on a free loopback port, in its own directory."""

    def __init__(self, password: str | None = None) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.password = password
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rqws-redis-")
        self.proc: subprocess.Popen | None = None
        self.extra_args: list[str] = []
        self.env: dict[str, str] | None = None
        """The server's environment (None: the test's), e.g. libfaketime's to step its clock."""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--logfile", ""]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        client = self.client()
        wait_until(lambda: _pings(client), 10, what="redis-server to answer")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClockShift:
    """Steps the wall clock of the processes started with ``env()`` (``tests/clockshift/clockshift.c``,
    built here with gcc): ``step_to(+60)`` puts it a minute ahead of the real one, at once."""

    SOURCE = ROOT / "tests" / "clockshift" / "clockshift.c"

    def __init__(self, directory: Path) -> None:
        self.library = directory / "clockshift.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(self.library), str(self.SOURCE)], check=True)
        self.file = directory / "clock-shift"
        self.file.write_bytes(self._text(0))

    @staticmethod
    def _text(seconds: int) -> bytes:
        return f"{seconds:+d}".ljust(15).encode() + b"\n"  # one width: rewritten in place, never truncated

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_PRELOAD": str(self.library), "CLOCKSHIFT_FILE": str(self.file)}

    def step_to(self, seconds: int) -> None:
        with open(self.file, "r+b") as f:
            f.write(self._text(seconds))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisCluster:
    """Throwaway Redis Cluster: ``size`` primaries on loopback (Debian's redis-server), no replicas."""

    def __init__(self, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        self.size = size

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.cleanup()  # no redis-server left behind when the cluster does not come up
            raise

    def _start(self) -> RedisCluster:
        import random

        while len(self.nodes) < self.size:
            port = random.randrange(20000, 40000)  # the cluster bus takes port + 10000
            if not (_port_free(port) and _port_free(port + 10000)):
                continue
            node = RedisServer()
            node.port = port
            node.extra_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                               "--cluster-node-timeout", "2000"]
            self.nodes.append(node.start())
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(n.client().cluster("INFO").get("cluster_state") == "ok"
                               for n in self.nodes), 30, what="the cluster to be ok")
        return self

    def owner(self, key: str) -> RedisServer:
        """The node whose primary holds ``key``'s slot."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for start, end, primary, *_ in self.nodes[0].client().cluster("SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def move_slot(self, key: str, to: RedisServer) -> None:
        """Reshard ``key``'s slot, with its keys, to the primary ``to`` (Redis's own migration steps:
        IMPORTING/MIGRATING, MIGRATE of every key, SETSLOT NODE everywhere). Clients of the old
        owner get ASK during the move and MOVED after it."""
        from redis.crc import key_slot

        slot, source = key_slot(key.encode()), self.owner(key)
        source_id, target_id = source.client().cluster("MYID"), to.client().cluster("MYID")
        to.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.client().execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "REPLACE", "KEYS", *keys)
        for node in [to, source, *(n for n in self.nodes if n not in (to, source))]:
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def notify_socket(tmp_path: Path, label: str) -> NotifySocket:
    """A ``NotifySocket`` in a directory of its own under ``tmp_path`` (one per worker of a test)."""
    directory = tmp_path / label
    directory.mkdir()
    return NotifySocket(directory)


class NotifySocket:
    """A datagram socket bound where NOTIFY_SOCKET points, recording what the worker tells systemd."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Drain continuously, as systemd does: an undrained datagram queue blocks the sender."""
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))

    def drain(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def lines(self, prefix: str = "") -> list[str]:
        return [line for _, line in self.drain() if line.startswith(prefix)]

    def wait_for(self, prefix: str, timeout: float = 15, contains: str = "", after: int = 0) -> str:
        def found():
            for line in self.lines(prefix)[after:]:
                if contains in line:
                    return line
            return None
        return wait_until(found, timeout, what=f"{prefix}{contains!r} on the notify socket")

    def close(self) -> None:
        self._closed = True
        self._reader.join(2)
        self.sock.close()


class WorkerHung(subprocess.TimeoutExpired):
    """A worker that did not exit in time (still a ``TimeoutExpired`` for callers that kill it then), with
    its threads' stacks and output in the message."""

    def __init__(self, cmd: list[str], timeout: float, report: str) -> None:
        super().__init__(cmd, timeout)
        self.report = report

    def __str__(self) -> str:
        return f"{super().__str__()}; its stacks (faulthandler, on SIGABRT) and output:\n{self.report}"


class WorkerProcess:
    """``python -m rq_worker_service run`` as systemd would start it, output captured to a file."""

    def __init__(self, redis_url: str, instance: str, workdir: Path, notify: NotifySocket | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.instance = instance
        self.log_path = workdir / f"worker-{instance}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_", "WATCHDOG_"))}
        full_env.update({"REDIS_URL": redis_url, "RQ_APP_PATH": str(JOBS_DIR), "PYTHONUNBUFFERED": "1",
                         "PYTHONFAULTHANDLER": "1"})  # SIGABRT dumps every thread's stack: ``wait``'s report
        if notify is not None:
            full_env["NOTIFY_SOCKET"] = notify.path
        full_env.update(env or {})
        self.env = full_env
        self.cmd = [sys.executable, "-m", "rq_worker_service", "run", "--instance", instance, *(args or [])]
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Its exit status. A worker still running after ``timeout`` fails the test with where each of its
        threads was (faulthandler's dump on SIGABRT) and its output: a hang is then told from slowness."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGABRT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            raise WorkerHung(self.cmd, timeout, self.output()[-6000:]) from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()
