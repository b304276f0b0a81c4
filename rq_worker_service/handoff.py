"""A connected Redis connection handed to each work horse, so that the horse does not open its own.

rq's forked horse cannot use its parent's connections (redis-py resets the pool in a new process),
so every job began with a fresh connection: redis-py's set-up code run in a copy-on-write child,
TCP connect, HELLO, CLIENT SETNAME. Measured in the sandbox (``bench/fork_cost.py``, Debian 12)
that was 3.4 ms of CPU per job, a third of what a no-op job costs under rq; a connection the parent
opened beforehand costs the horse 0.45 ms. The parent opens the next one right after each fork,
while the horse runs (on another core, when there is one), and closes its own copy of the
horse's socket without shutting it down: the horse alone uses it, and it closes with the horse.

Only for plain TCP and Unix-socket pools without client-side caching: a TLS session's state would be
copied into the horse, and Sentinel-managed connections find their primary through their pool;
those keep rq's way. If the spare cannot be opened (Redis is down), the horse opens its own.
"""

from __future__ import annotations

import os
import time

import redis
from redis.connection import AbstractConnection, Connection, ConnectionPool, UnixDomainSocketConnection
from redis.maint_notifications import MaintNotificationsConfig

from .connection import REDIS_ERRORS

PLAIN = (Connection, UnixDomainSocketConnection)
NO_MAINT_NOTIFICATIONS = MaintNotificationsConfig(enabled=False)


def applies(pool: object) -> bool:
    """A pool whose connections can be handed over (see the module docstring)."""
    return (type(pool) is ConnectionPool and getattr(pool, "connection_class", None) in PLAIN
            and getattr(pool, "cache", None) is None and hasattr(pool, "_available_connections"))


class Handoff:
    """The connection the next work horse will use, opened by the worker process."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.enabled = applies(self.pool)
        self.spare: AbstractConnection | None = None

    def prepare(self) -> None:
        """Open the next horse's connection (in the worker, while the current horse runs)."""
        if not self.enabled or self.spare is not None:
            return
        # Without the driver's CLIENT SETINFO ×2 (LIB-NAME, LIB-VER): two round trips per job, counted
        # as commands by Redis ≥ 7.2 and refused by older ones; CLIENT LIST names the horse's connection
        # by its worker all the same (CLIENT SETNAME, which fencing needs).
        # Nor redis-py's maintenance-notification handshake (CLIENT MAINT_NOTIFICATIONS ON, RESP3): a round
        # trip per job that Redis answers with an error unless it is Redis Enterprise or Cloud, for a
        # connection that lives one job (``INFO errorstats``: one ERR per job).
        spare = self.pool.connection_class(**dict(self.pool.connection_kwargs, driver_info=None,
                                                  maint_notifications_config=NO_MAINT_NOTIFICATIONS))
        # redis-py checks a connection's health (a PING) before its first command once it is older than
        # health_check_interval, and a new one counts as old: a PING before HELLO, one more command per
        # job. A new socket's HELLO answers for its health.
        spare.next_health_check = time.monotonic() + spare.health_check_interval
        try:
            spare.connect()
        except (*REDIS_ERRORS, OSError):
            return  # the horse opens its own, and meets the outage there as under rq
        self.spare = spare

    def forked(self, horse_pid: int) -> None:
        """In the worker, right after the fork: the spare is the horse's now. Close our copy of its
        socket only: with the horse's pid on it, redis-py's disconnect() skips the shutdown() that
        would end the connection for the horse too."""
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.pid = horse_pid
            spare.disconnect()

    def adopt(self) -> None:
        """In the horse, first thing: a pool of its own (as redis-py would make on first use) that
        holds the spare, connected and idle, so that the job's first command goes out at once."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        self.pool.reset()
        spare.pid = os.getpid()
        self.pool._available_connections.append(spare)
        self.pool._created_connections = 1
