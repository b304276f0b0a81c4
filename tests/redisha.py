"""Redis set-ups beyond one server, for the integration tests: TLS certificates and Sentinel.

Everything is made by the test (a CA with openssl, servers on free loopback ports) and removed
after it; no certificate is committed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from helpers import RedisServer, free_port, wait_until


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by it,
    and a second CA that signed nothing (the wrong one). Returns their paths by name."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=rqws test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *extra)
    for key in directory.glob("*.key"):
        key.chmod(0o644)  # the workers run as this user anyway; redis-server reads them too
    return {p.stem.replace("-", "_") + ("_key" if p.suffix == ".key" else ""): p
            for p in directory.iterdir() if p.suffix in (".crt", ".key")}


class TLSRedis(RedisServer):
    """redis-server speaking only TLS on its port, requiring client certificates."""

    def __init__(self, certs: dict[str, Path]) -> None:
        super().__init__()
        self.certs = certs
        self.extra_args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(certs["server"]),
                           "--tls-key-file", str(certs["server_key"]), "--tls-ca-cert-file", str(certs["ca"]),
                           "--tls-auth-clients", "yes"]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        certs = self.certs
        return redis.Redis.from_url(self.url, ssl_ca_certs=str(certs["ca"]), ssl_certfile=str(certs["client"]),
                                    ssl_keyfile=str(certs["client_key"]))


MASTER = "mymaster"


class SentinelSetup:
    """One primary with AOF, one replica and three sentinels on loopback ports.

    ``down_after_ms`` is short so that a killed primary is failed over in seconds; the failover
    itself, and what the workers do, is as with the shipped sentinel.conf.
    """

    def __init__(self, down_after_ms: int = 2000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rqws-sentinel-"))
        self.down_after_ms = down_after_ms
        self.servers: dict[int, RedisServer] = {}
        self.sentinels: list[tuple[int, subprocess.Popen]] = []

    def start(self) -> SentinelSetup:
        """Start everything; on failure, stop what was started (the fixture's cleanup never runs then)."""
        try:
            return self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> SentinelSetup:
        primary = RedisServer()
        primary.extra_args = ["--appendonly", "yes"]
        self.servers[primary.port] = primary
        primary.start()
        replica = RedisServer()
        replica.extra_args = ["--appendonly", "yes", "--replicaof", "127.0.0.1", str(primary.port)]
        self.servers[replica.port] = replica
        replica.start()
        binary = shutil.which("redis-sentinel") or "redis-server"
        for n in range(3):
            port = free_port()
            conf = self.dir / f"sentinel-{n}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                            f"sentinel failover-timeout {MASTER} 10000\nsentinel parallel-syncs {MASTER} 1\n")
            args = [binary, str(conf)] + (["--sentinel"] if binary == "redis-server" else [])
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.sentinels.append((port, proc))
        wait_until(self._settled, 40, interval=0.2, what="the sentinels to see the replica and each other")
        return self

    def _settled(self) -> bool:
        """Every sentinel sees the replica and the other sentinels, and the replica finished its
        first sync (which Redis delays by 5 s): promoting it before would elect an empty primary."""
        try:
            replica = self.primary().client().info("replication").get("slave0") or {}
            if replica.get("state") != "online":
                return False
            for port, _ in self.sentinels:
                state = self.sentinel(port).sentinel_master(MASTER)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            return True
        except redis.exceptions.RedisError:
            return False

    def sentinel(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(port=port or self.sentinels[0][0], socket_timeout=2, decode_responses=True)

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the workers."""
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": f"redis://{MASTER}/0", "REDIS_SENTINELS": self.addresses,
                "REDIS_SENTINEL_MASTER": MASTER}

    def primary(self) -> RedisServer:
        _, port = self.sentinel().sentinel_get_master_addr_by_name(MASTER)
        return self.servers[int(port)]

    def wait_for_new_primary(self, old: RedisServer, timeout: float = 30) -> tuple[RedisServer, float]:
        """Poll the sentinels until they name another primary; return it and when they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                current = self.primary()
            except redis.exceptions.RedisError:
                current = old
            if current is not old:
                return current, time.time()
            time.sleep(0.02)
        raise AssertionError(f"the sentinels did not elect a new primary within {timeout}s")

    def kill(self, server: RedisServer) -> None:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        server.proc = None

    def cleanup(self) -> None:
        for _, proc in self.sentinels:
            proc.kill()
            proc.wait(10)
        for server in self.servers.values():
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
