"""Connecting to Redis at start-up: a bounded, capped-backoff wait that systemd can see.

Choice (documented in README): while Redis is unreachable at start we retry with capped backoff
for ``RQ_REDIS_STARTUP_WAIT`` seconds (default 30), telling systemd ``STATUS=waiting for Redis at …``
and extending its start timeout; then we exit 69 (EX_UNAVAILABLE) and ``Restart=on-failure`` tries
again later. That keeps ``systemctl start`` from blocking for the length of an outage, while a
Redis that comes back within the window costs no restart. Wrong credentials are not a transient
condition, nor is a TLS certificate that does not verify: exit 77 (EX_NOPERM) at once, listed in
``RestartPreventExitStatus=``.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from redis.utils import SENTINEL

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
    """Redis refused our credentials, or we cannot trust it (TLS): waiting does not cure either.

    Exit 77 (EX_NOPERM), which the unit does not restart: the operator must act."""


class RedisNoSuchDatabase(Exception):
    """Redis has fewer databases than the one configured (its ``databases`` setting): a mistake in
    configuration that only the server can tell, and that waiting does not cure. Exit 78."""


CLUSTER_MOVED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
"""How a cluster node answers for a slot it no longer serves (a failover or a reshard)."""
CLUSTER_MOVED_ERRORS = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
"""The same answers as redis-py raises them (MovedError is an AskError); it strips the word from the
message, so only a plain ResponseError still starts with it."""


SCRIPT_NON_LOCAL_KEY = "Script attempted to access a non local key in a cluster node"
"""Redis Cluster's refusal of a write inside a script (ours replay rq's writes, ``queued``) to a key of a
slot being migrated away: the same news as an ASK for a command of its own."""


def slot_moved(target: RedisTarget, exc: BaseException) -> bool:
    """Whether ``exc`` says that the cluster node we use no longer serves our keys' slot."""
    return bool(target.cluster) and (isinstance(exc, CLUSTER_MOVED_ERRORS) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and (str(exc).startswith(CLUSTER_MOVED) or SCRIPT_NON_LOCAL_KEY in str(exc))))


def slot_moved_message(key_prefix: str, exc: BaseException) -> str:
    """The one line a worker leaves with when its slot moved (exit 69: systemd restarts it, and the
    new process connects to the slot's new owner)."""
    code = getattr(exc, "status_code", None)  # redis-py's MOVED/ASK errors keep the word only here
    answer = f"{code} {exc}" if code and not str(exc).startswith(code) else str(exc)
    return (f"the cluster no longer serves RQ_KEY_PREFIX={key_prefix} from this node ({answer}); exiting so that "
            "systemd restarts this instance against the slot's new owner")


KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
"""TCP keepalive on every connection: a Redis host that vanished without a FIN (power cut,
partition) is noticed by the kernel within ≈25 s of silence instead of after hours."""
TCP_OPTIONS = {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}


@functools.cache
def _driver_info() -> dict[str, Any]:
    """redis-py's driver metadata, resolved once. Given none, redis-py (≥ 7) resolves it for every
    new connection of a pool built from a URL by reading its own package metadata from disk: 0.4 ms
    of CPU per connection, and a fork worker's horses each made one (stock rq's still do)."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # older redis-py: nothing to resolve
        return {}
    return {"driver_info": DriverInfo()}


def make_connection(target: RedisTarget, key_prefix: str = "rq", client_name: str | None = None, *,
                    offline: bool = False, redis_class: type[redis.Redis] = redis.Redis) -> redis.Redis:
    """A client for ``target``; timeouts so that no call can hang the main loop for long.

    ``client_name``: every connection of a worker carries its name (CLIENT SETNAME on connect), so
    that a worker fencing it can find and close them all (``fencing``).
    For a Redis Cluster (REDIS_CLUSTER) the client connects straight to the primary that holds
    ``key_prefix``'s hash slot: rq needs a plain client (transactions, scripts, blocking pops over
    several queue keys), which a cluster serves only for keys of one slot, on that slot's node.
    For Redis Sentinel (REDIS_SENTINELS) every new connection asks the sentinels for the primary
    first, and a connection to a primary that became a replica fails: after a failover the next
    command (or the retry of the failed one) reaches the new primary with no restart.
    ``offline``: connect to nothing (``run --check``); a cluster's client is then its seed node's,
    which differs from the slot owner's only in host and port.
    ``redis_class``: the app's subclass of redis.Redis (RQ_CONNECTION_CLASS, ``classes.connection_class``),
    which every kind of client here is made of (Sentinel's ``master_for`` takes it too).
    """
    options: dict = dict(socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30, client_name=client_name)
    options.update(_driver_info())
    if target.sentinels:
        return _sentinel_client(target, dict(options, **TCP_OPTIONS), redis_class)
    url = _slot_owner_url(target, key_prefix) if target.cluster and not offline else target.url
    if urlsplit(url).scheme != "unix":  # redis-py's socket connection refuses them (a TypeError at connect)
        options.update(TCP_OPTIONS)
    if urlsplit(url).scheme == "rediss":
        options.update(target.tls)
    return redis_class.from_url(url, **options)


class SentinelConnection(SentinelManagedConnection):
    """redis-py's, except that a reply left unread closes the connection, as every other redis-py
    connection does. Ours are left so whenever a stop interrupts the blocking pop: redis-py's
    Sentinel connection went back to the pool with the pop's reply pending, and the next command
    read it as its own ("Wrong number of response items" at the worker's exit). redis/redis-py#4292."""

    def read_response(self, disable_decoding: Any = False, *, timeout: float | object = SENTINEL,
                      disconnect_on_error: bool | None = True, push_request: bool | None = False) -> Any:
        return super().read_response(disable_decoding, timeout=timeout, disconnect_on_error=disconnect_on_error,
                                     push_request=push_request)


class SentinelSSLConnection(SentinelConnection, SSLConnection):
    """The same over TLS (rediss:// with REDIS_SENTINELS)."""


class SentinelManager(Sentinel):
    """redis-py's Sentinel manager, with an error that fits on a line. redis-py's lists the full
    repr of every sentinel's client (two screens of connection settings), and rq's own log and
    ours repeat it on every retry while no primary is found."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as exc:
            addresses = ", ".join("{host}:{port}".format(**s.connection_pool.connection_kwargs) for s in self.sentinels)
            if " : " in str(exc):  # redis-py appends what each unreachable sentinel raised
                message = f"no sentinel answered for {service_name!r} (tried {addresses})"
            else:
                message = f"the sentinels ({addresses}) know no healthy primary for {service_name!r}"
            raise MasterNotFoundError(message) from None


def _sentinel_client(target: RedisTarget, options: dict, redis_class: type[redis.Redis]) -> redis.Redis:
    """A client of the primary the sentinels name (redis-py's Sentinel connection pool)."""
    assert target.sentinels is not None
    sentinels = target.sentinels
    parts = urlsplit(target.url)
    sentinel_options = {key: value for key, value in options.items() if key.startswith("socket_")}
    sentinel_options["socket_timeout"] = CONNECT_TIMEOUT
    sentinel_options["retry"] = Retry(NoBackoff(), 0)  # the next sentinel is the retry: redis-py's 10 retries
    # of each unreachable sentinel made one look for the primary take ≈4 s per sentinel
    if sentinels.username:
        sentinel_options["username"] = sentinels.username
    if sentinels.password:
        sentinel_options["password"] = sentinels.password
    if sentinels.ssl:
        sentinel_options.update(ssl=True, **dict(target.tls))
    options["connection_class"] = SentinelConnection
    if parts.scheme == "rediss":
        options.update(connection_class=SentinelSSLConnection, **dict(target.tls))
    manager = SentinelManager(list(sentinels.addresses), sentinel_kwargs=sentinel_options)
    return manager.master_for(sentinels.master, db=int(parts.path.lstrip("/") or 0), username=target.username,
                              password=target.password, redis_class=redis_class, **options)


def refresh_primary(connection: redis.Redis) -> str | None:
    """Under Sentinel, ask the sentinels for the primary now and return it as host:port; if it
    changed, redis-py closes the pool's idle connections, so that the next command goes to the new
    one. None for a client that is not Sentinel's.

    A replaced primary keeps answering the connections it has until the sentinels turn it into a
    replica (≈10 s after a manual failover; after a crash, once it is back): what is written there
    meanwhile is lost. Waiting for a connection to fail is not enough."""
    ask = getattr(connection.connection_pool, "get_master_address", None)
    if ask is None:
        return None
    host, port = ask()
    return f"{host}:{port}"


def primary_address(connection: redis.Redis) -> str | None:
    """The primary a Sentinel client last connected to, as host:port (no network call); None
    for a client that is not Sentinel's."""
    address = getattr(connection.connection_pool, "master_address", None)
    return f"{address[0]}:{address[1]}" if address else None


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
    sentinel = " (or REDIS_SENTINEL_PASSWORD / REDIS_SENTINEL_USERNAME for the sentinels)" if target.sentinels else ""
    return RedisAuthError(f"Redis at {target.display} refused the login ({exc}); "
                          f"check REDIS_PASSWORD / REDIS_PASSWORD_FILE / REDIS_USERNAME{sentinel}")


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a connection error, if one is: redis-py keeps it only as the context.

    A certificate that does not verify, or a port that does not speak TLS, is not an outage that
    waiting cures. A TLS connection cut in the middle (EOF) is, and is not returned."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_error(target: RedisTarget, exc: ssl.SSLError) -> RedisAuthError:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return RedisAuthError(f"TLS with Redis at {target.display} failed ({reason}); check that REDIS_SSL_CA_CERTS is "
                          "the CA that signed the server's certificate, that the certificate names the host you "
                          "connect to, and that the port speaks TLS (tls-port)")


def ping(connection: redis.Redis, target: RedisTarget) -> None:
    """One PING, the one place that tells a refused login from an unreachable Redis.

    Raises ``RedisAuthError`` for refused credentials (whatever form the server's refusal takes)
    and for a TLS handshake that cannot succeed, ``RedisNoSuchDatabase`` for a database number the
    server does not have, and lets redis-py's ConnectionError /
    TimeoutError through for the caller to wait or give up.
    """
    try:
        connection.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise _auth_error(target, exc) from None
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise _auth_error(target, exc) from None
        if "DB index is out of range" in str(exc):  # SELECT, sent as the connection is made
            raise RedisNoSuchDatabase(f"Redis at {target.display} has no such database ({exc}); set the database "
                                      "number in REDIS_URL (or REDIS_DB) below the server's `databases` "
                                      "setting (16 by default)") from None
        raise
    except REDIS_ERRORS as exc:
        failure = tls_failure(exc)
        if failure is not None:
            raise _tls_error(target, failure) from None
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
