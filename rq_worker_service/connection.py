"""Connecting to Redis at start-up: a bounded, capped-backoff wait that systemd can see.

Choice (documented in README): while Redis is unreachable at start we retry with capped backoff
for ``RQ_REDIS_STARTUP_WAIT`` seconds (default 30), telling systemd ``STATUS=waiting for Redis at …``
and extending its start timeout; then we exit 69 (EX_UNAVAILABLE) and ``Restart=on-failure`` tries
again later. That keeps ``systemctl start`` from blocking for the length of an outage, while a
Redis that comes back within the window costs no restart. Wrong credentials are not a transient
condition: exit 77 (EX_NOPERM) at once, listed in ``RestartPreventExitStatus=``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.crc import key_slot

from .config import RedisTarget
from .notify import Notifier

log = logging.getLogger("rq_worker_service.connection")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""What a Redis that is down or unreachable raises: waited out or retried, never fatal at once."""
CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 10.0


class RedisUnavailable(Exception):
    """Redis did not answer within the start-up window."""


class RedisAuthError(Exception):
    """Redis refused our credentials (or our user may not run what a worker needs)."""


CLUSTER_MOVED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
"""How a cluster node answers for a slot it no longer serves (a failover or a reshard)."""


KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
"""TCP keepalive on every connection: a Redis host that vanished without a FIN (power cut,
partition) is noticed by the kernel within ≈25 s of silence instead of after hours."""


def make_connection(target: RedisTarget, key_prefix: str = "rq", client_name: str | None = None) -> redis.Redis:
    """A client for ``target``; timeouts so that no call can hang the main loop for long.

    ``client_name``: every connection of a worker carries its name (CLIENT SETNAME on connect), so
    that a worker fencing it can find and close them all (``fencing``).
    For a Redis Cluster (REDIS_CLUSTER) the client connects straight to the primary that holds
    ``key_prefix``'s hash slot: rq needs a plain client (transactions, scripts, blocking pops over
    several queue keys), which a cluster serves only for keys of one slot, on that slot's node.
    """
    url = _slot_owner_url(target, key_prefix) if target.cluster else target.url
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_keepalive=True,
                                socket_keepalive_options=KEEPALIVE, health_check_interval=30,
                                client_name=client_name)


def _slot_owner_url(target: RedisTarget, key_prefix: str) -> str:
    """``target.url`` with its host and port replaced by those of the primary owning the prefix's slot."""
    slot = key_slot(key_prefix.encode())
    with redis.Redis.from_url(target.url, socket_connect_timeout=CONNECT_TIMEOUT,
                              socket_timeout=CONNECT_TIMEOUT) as seed:
        slots = seed.cluster("SLOTS")
    parts = urlsplit(target.url)
    login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    for start, end, (host, port, *_), *_ in slots:
        if start <= slot <= end:
            host = host.decode() if isinstance(host, bytes) else str(host)
            netloc = f"{login}{host or parts.hostname}:{port}"  # no host: the node we asked
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    raise redis.exceptions.ConnectionError(f"no cluster node serves hash slot {slot} (RQ_KEY_PREFIX={key_prefix})")


def _auth_error(target: RedisTarget, exc: Exception) -> RedisAuthError:
    return RedisAuthError(f"Redis at {target.display} refused the login ({exc}); "
                          "check REDIS_PASSWORD / REDIS_PASSWORD_FILE / REDIS_USERNAME")


def ping(connection: redis.Redis, target: RedisTarget) -> None:
    """One PING, the one place that tells a refused login from an unreachable Redis.

    Raises ``RedisAuthError`` for refused credentials (whatever form the server's refusal takes)
    and lets redis-py's ConnectionError / TimeoutError through for the caller to wait or give up.
    """
    try:
        connection.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise _auth_error(target, exc) from None
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise _auth_error(target, exc) from None
        raise


def unreachable(target: RedisTarget, exc: Exception) -> str:
    """The one-line message for a Redis that does not answer (the URL masked)."""
    return f"cannot reach Redis at {target.display}: {exc}"


def wait_for_redis(connect: Callable[[], redis.Redis], target: RedisTarget, notifier: Notifier, wait: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> redis.Redis:
    """Return a connection from ``connect`` once it answers PING; raise RedisUnavailable /
    RedisAuthError otherwise. Each attempt connects anew: in a cluster, the node may change."""
    deadline = clock() + wait
    delay = 1.0
    while True:
        try:
            connection = connect()
            ping(connection, target)
            return connection
        except REDIS_ERRORS as exc:
            left = deadline - clock()
            if left <= 0:
                raise RedisUnavailable(f"{unreachable(target, exc)}; gave up after {wait:g}s "
                                       "(RQ_REDIS_STARTUP_WAIT), exiting so that systemd retries") from None
            status = f"waiting for Redis at {target.display}: {exc}"
            log.warning("%s; retrying in %.1fs", status, min(delay, left))
            notifier.status(status)
            notifier.extend_timeout(min(delay, left) + CONNECT_TIMEOUT + 10)
            notifier.watchdog()
            sleep(min(delay, left))
            delay = min(delay * 2, MAX_BACKOFF)


def warn_if_not_persistent(connection: redis.Redis, target: RedisTarget) -> bool:
    """Warn once when Redis keeps nothing on disk; returns True if it warned.

    Jobs live only in Redis: without AOF or RDB save points a Redis restart loses every queued job.
    A user whose ACL forbids CONFIG gets a debug line, not an error.
    """
    try:
        aof = connection.config_get("appendonly").get("appendonly", "")
        save = connection.config_get("save").get("save", "")
    except redis.exceptions.ResponseError as exc:
        log.debug("cannot check Redis persistence (CONFIG GET refused: %s)", exc)
        return False
    if str(aof).lower() == "no" and not str(save).strip():
        log.warning("Redis at %s keeps nothing on disk (appendonly no, no save points): queued jobs are lost "
                    "if Redis restarts; enable 'appendonly yes' or RDB 'save' in redis.conf", target.display)
        return True
    return False


class Outage:
    """Whether Redis answers the main loop, for STATUS= and the log: each change is logged once.

    While Redis is down the worker keeps its loop (and the watchdog pings) going and retries every
    tick; this only remembers since when, so that ``systemctl status`` can say it.
    """

    def __init__(self, target: RedisTarget, retry_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.retry_every = retry_every
        self.clock = clock
        self.since: float | None = None

    def ok(self) -> None:
        if self.since is not None:
            log.info("Redis at %s is reachable again", self.target.display)
            self.since = None

    def failed(self, exc: Exception) -> None:
        if self.since is None:
            self.since = self.clock()
            log.error("Redis at %s is unreachable: %s; retrying every %ds", self.target.display, exc,
                      int(self.retry_every))

    def status(self) -> str | None:
        if self.since is None:
            return None
        return f"Redis unreachable at {self.target.display} for {int(self.clock() - self.since)}s, retrying"
