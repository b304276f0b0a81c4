"""Redis Sentinel in a booted sandbox with Debian's own units, and the faults the failover tests
and ``bench/failover.py`` inject.

redis-server (primary, AOF, password), redis-server@replica and three sentinels (redis-sentinel,
redis-sentinel@b, redis-sentinel@c), all on loopback; the package's workers pointed at the sentinels
through REDIS_SENTINELS.
"""

from __future__ import annotations

from helpers import wait_until
from provision import PASSWORD, ctl
from sandbox import Sandbox

SENTINEL_PORTS = {"": 26379, "b": 26380, "c": 26381}
REPLICA_PORT = 6380
DOWN_AFTER_MS = 5000
"""Shorter than sentinel.conf's 30 s so that a crash is failed over in seconds; it does not change
what happens after the election, which is what is measured."""
FAULTS = ("sentinel-failover", "primary-killed")
NO_USER_NAMESPACES = "[Service]\nPrivateUsers=no\n"


def sentinel_conf(port: int, run_dir: str) -> str:
    return (f"port {port}\nbind 127.0.0.1\ndaemonize no\npidfile /run/{run_dir}/redis-sentinel.pid\nlogfile \"\"\n"
            f"dir /var/lib/redis\nsentinel monitor mymaster 127.0.0.1 6379 2\nsentinel auth-pass mymaster {PASSWORD}\n"
            f"sentinel down-after-milliseconds mymaster {DOWN_AFTER_MS}\nsentinel failover-timeout mymaster 60000\n")


def redis_cli(box: Sandbox, port: int, *args: str) -> str:
    return box.run(["redis-cli", "--no-auth-warning", "-p", str(port), *args], timeout=30).stdout.strip()


def set_up_sentinel(box: Sandbox) -> None:
    """A replica and three sentinels with Debian's units, then the workers pointed at the sentinels."""
    box.run(f"printf 'masterauth {PASSWORD}\\nappendonly yes\\n' >> /etc/redis/redis.conf")
    box.write("/etc/redis/redis-replica.conf", (
        f"bind 127.0.0.1\nport {REPLICA_PORT}\ndaemonize no\npidfile /run/redis-replica/redis-server.pid\n"
        "logfile \"\"\ndir /var/lib/redis\ndbfilename replica.rdb\nappendonly yes\nappenddirname replica-aof\n"
        f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\nreplicaof 127.0.0.1 6379\n"))
    for suffix, port in SENTINEL_PORTS.items():
        name = "sentinel.conf" if not suffix else f"sentinel-{suffix}.conf"
        box.write(f"/etc/redis/{name}", sentinel_conf(port, "sentinel" if not suffix else f"sentinel-{suffix}"))
    box.run("chown redis:redis /etc/redis/*.conf && chmod 640 /etc/redis/*.conf")
    for unit in ("redis-server@", "redis-sentinel", "redis-sentinel@"):
        box.write(f"/etc/systemd/system/{unit}.service.d/e2e-sandbox.conf", NO_USER_NAMESPACES)
    systemctl(box, "daemon-reload")
    systemctl(box, "reset-failed")  # trixie: the sentinel apt started failed 5 times without the drop-in
    systemctl(box, "restart", "redis-server")
    systemctl(box, "enable", "--now", "redis-server@replica")
    systemctl(box, "restart", "redis-sentinel")
    systemctl(box, "enable", "--now", "redis-sentinel@b", "redis-sentinel@c")

    def settled() -> bool:
        for port in SENTINEL_PORTS.values():
            state = redis_cli(box, port, "sentinel", "master", "mymaster").splitlines()
            fields = dict(zip(state[::2], state[1::2], strict=False))
            if fields.get("num-slaves") != "1" or fields.get("num-other-sentinels") != "2":
                return False
        return True

    wait_until(settled, 60, interval=1, what="the sentinels to see the replica and each other")
    with box.path("/etc/rq-worker/worker.env").open("a") as f:
        f.write(f"REDIS_SENTINELS={sentinel_addresses()}\nREDIS_SENTINEL_MASTER=mymaster\n")
    systemctl(box, "daemon-reload")


def sentinel_addresses() -> str:
    return ",".join(f"127.0.0.1:{port}" for port in SENTINEL_PORTS.values())


def systemctl(box: Sandbox, *args: str, check: bool = True):
    return box.run(["systemctl", *args], check=check)


def unit(box: Sandbox, name: str, prop: str) -> str:
    return systemctl(box, "show", "-p", prop, "--value", name).stdout.strip()


def primary_port(box: Sandbox) -> int:
    return int(redis_cli(box, SENTINEL_PORTS[""], "sentinel", "get-master-addr-by-name", "mymaster").split()[1])


def replica_in_sync(box: Sandbox) -> bool:
    """The primary has a replica that finished its sync (Redis delays a first full sync by 5 s:
    promoting a replica before that elects an empty primary, which a test must not mistake)."""
    info = redis_cli(box, primary_port(box), "--pass", PASSWORD, "info", "replication")
    return "state=online" in info


def inject(box: Sandbox, fault: str, old: int) -> str:
    """``sentinel-failover``: SENTINEL FAILOVER. ``primary-killed``: the primary's process dies and stays
    down (a crash its unit does not bring back). Returns the old primary's unit."""
    old_unit = "redis-server" if old == 6379 else "redis-server@replica"
    if fault == "sentinel-failover":
        redis_cli(box, SENTINEL_PORTS[""], "sentinel", "failover", "mymaster")
    else:
        box.write(f"/run/systemd/system/{old_unit}.service.d/no-restart.conf", "[Service]\nRestart=no\n")
        systemctl(box, "daemon-reload")
        systemctl(box, "kill", "-s", "KILL", old_unit)
    return old_unit


def wait_for_election(box: Sandbox, old: int) -> tuple[int, float]:
    """Poll the sentinels until they name another primary: (its port, when, in Redis time)."""
    new = wait_until(lambda: primary_port(box) != old and primary_port(box), 60, interval=0.1,
                     what="the sentinels to elect a new primary")
    return new, ctl(box, "now")


def restore(box: Sandbox, fault: str, old_unit: str) -> None:
    """After ``primary-killed``: the old primary back, as a replica of the new one."""
    if fault != "primary-killed":
        return
    box.run(["rm", "-f", f"/run/systemd/system/{old_unit}.service.d/no-restart.conf"])
    systemctl(box, "daemon-reload")
    started = systemctl(box, "start", old_unit, check=False)
    assert started.returncode == 0, box.run(["journalctl", "-u", old_unit, "-n", "30", "--no-pager"]).stdout


def probe_end(box: Sandbox, job_id: str) -> float:
    """When traced_job ``job_id`` recorded its end (Redis time), or 0."""
    trace = [e for e in ctl(box, "trace") if e["id"] == job_id and e["event"] == "end"]
    return trace[0]["t"] if trace else 0.0
