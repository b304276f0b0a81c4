"""Fencing: a worker that stops beating (frozen, cut off, its host lost) is shut out and its jobs re-run.

rq notices a dead worker only when its started job's heartbeat has expired and some worker runs
maintenance (minutes), and never notices a worker that is merely frozen or on the far side of a
partition. Here every worker of this package is a *member*: from its main loop it moves its own
deadline forward in a sorted set, in Redis server time (``TIME`` inside the scripts, so hosts'
clocks do not matter) — the deadline is a watchdog period (three ticks) ahead. A member whose
deadline has passed is *lost*: its own systemd is aborting it (watchdog), or nothing can reach it.

Any live member that sees a lost one claims it atomically (the first claim removes it from the
set; the others see nothing), records who fenced whom, kills the lost worker's Redis connections
(``CLIENT KILL``, found by client name: every connection of a worker is named after it) so no pop
can be served to it any more, and rescues the jobs it was running (``recovery.rescue_executions``).
The lost worker, if it ever runs again, finds itself fenced at its next beat and exits without
taking another job; systemd restarts it and it rejoins as a new member.

Only a member that has itself beaten without a break for a whole period may fence: after a Redis
outage every deadline has passed, and no one must fence workers that simply could not beat.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis import Redis

from . import keys
from .host import identity as host_identity

log = logging.getLogger("rq_worker_service.fencing")

BEATS_KEY = keys.fencing_deadlines()
MEMBERS_KEY = keys.fencing_members()
FENCED_KEY = keys.fencing_fenced()
HISTORY_KEY = keys.fencing_history()
HISTORY_LENGTH = 100
FENCED_KEEP = 24 * 3600
"""Seconds a fencing stays listed by ``status``."""

_JOIN = """
redis.call('HDEL', KEYS[3], ARGV[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""
_BEAT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
return 1
"""
_LOST = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. t[1], 'LIMIT', 0, 20)
"""
_CLAIM = """
local t = redis.call('TIME')
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) >= tonumber(t[1]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local member = redis.call('HGET', KEYS[2], ARGV[1]) or '{}'
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {member, t[1], deadline}
"""


@dataclass(frozen=True)
class Lost:
    """A member claimed by this fencer: where it ran and how long it had been silent."""

    name: str
    host: str
    pid: int | None
    queues: list[str]
    overdue: float
    """Seconds past its deadline when claimed."""


def server_time(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


class Membership:
    """One worker's membership: its beats, its view of lost members, and fencing them."""

    def __init__(self, connection: Redis, name: str, period: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection
        self.name = name
        self.period = period
        """Seconds a member may stay silent before it counts as lost (its watchdog period)."""
        self.clock = clock
        self._beating_since: float | None = None
        self._last_beat: float | None = None
        self._join = connection.register_script(_JOIN)
        self._beat = connection.register_script(_BEAT)
        self._lost = connection.register_script(_LOST)
        self._claim = connection.register_script(_CLAIM)
        self._kill_refused = False

    def join(self, host: str, pid: int, queues: list[str]) -> dict | None:
        """Become a member (again); returns the record of this name's last fencing, if any."""
        previous = self.connection.hget(FENCED_KEY, self.name)
        member = json.dumps({"host": host, "pid": pid, "queues": queues, **host_identity().fields()})
        self._join(keys=[BEATS_KEY, MEMBERS_KEY, FENCED_KEY], args=[self.name, int(self.period) + 1, member])
        self._beating_since = self._last_beat = self.clock()
        return json.loads(previous) if previous else None

    def beat(self) -> bool:
        """Move our deadline forward; False if we were fenced meanwhile (then nothing is written).

        Raises redis errors. A failed beat, or one that lands more than half a period after the last
        (Redis stalled, or we did), is a break: until this member has beaten on time for a whole
        period again it may not fence anyone, since others could not beat on time either."""
        try:
            alive = bool(self._beat(keys=[BEATS_KEY, FENCED_KEY], args=[self.name, int(self.period) + 1]))
        except redis.exceptions.RedisError:
            self._beating_since = None
            raise
        now = self.clock()
        if self._beating_since is None or self._last_beat is None or now - self._last_beat > self.period / 2:
            self._beating_since = now
        self._last_beat = now
        return alive

    def leave(self) -> None:
        """A clean exit: no one must fence a worker that stopped on request."""
        with self.connection.pipeline() as pipe:
            pipe.zrem(BEATS_KEY, self.name)
            pipe.hdel(MEMBERS_KEY, self.name)
            pipe.execute()

    @property
    def may_fence(self) -> bool:
        return self._beating_since is not None and self.clock() - self._beating_since >= self.period

    def claim_lost(self) -> list[Lost]:
        """Claim every member past its deadline (none unless ``may_fence``); each is claimed once."""
        if not self.may_fence:
            return []
        claimed = []
        for raw_name in self._lost(keys=[BEATS_KEY]):
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            if name == self.name:
                continue
            record = json.dumps({"by": self.name, "at": time.time()})
            result = self._claim(keys=[BEATS_KEY, MEMBERS_KEY, FENCED_KEY], args=[name, record])
            if not result:
                continue  # it beat just now, or another member claimed it first
            member = json.loads(result[0])
            claimed.append(Lost(name=name, host=member.get("host", "?"), pid=member.get("pid"),
                                queues=list(member.get("queues", [])), overdue=float(result[1]) - float(result[2])))
        return claimed

    def kill_connections(self, lost: Lost) -> int:
        """Close every Redis connection named after ``lost``; returns how many. Without the CLIENT
        permission (an ACL user) this is skipped with one warning: the lost worker's pops still end
        by themselves within a tick, so nothing is lost, only that gap is not closed at once."""
        if self._kill_refused:
            return 0
        try:
            clients = self.connection.client_list()
            killed = 0
            for client in clients:
                if client.get("name") == lost.name:
                    killed += int(self.connection.execute_command("CLIENT", "KILL", "ID", client["id"]))
            return killed
        except redis.exceptions.ResponseError as exc:
            self._kill_refused = True
            log.warning("cannot close a lost worker's Redis connections (%s); allow CLIENT LIST and CLIENT KILL "
                        "to this user to fence at once", exc)
            return 0

    def record(self, lost: Lost, job_ids: list[str]) -> None:
        """Add the fencing to the history ``status`` shows: where the worker ran, what was rescued."""
        entry = {"worker": lost.name, "host": lost.host, "pid": lost.pid, "by": self.name, "at": time.time(),
                 "jobs": job_ids}
        with self.connection.pipeline() as pipe:
            pipe.lpush(HISTORY_KEY, json.dumps(entry))
            pipe.ltrim(HISTORY_KEY, 0, HISTORY_LENGTH - 1)
            pipe.execute()


@dataclass(frozen=True)
class Fencing:
    """One fencing as ``status`` shows it."""

    worker: str
    host: str
    by: str
    at: float
    jobs: list[str]


def recent_fencings(connection: Redis, keep: float = FENCED_KEEP) -> list[Fencing]:
    """Fencings of the last ``keep`` seconds, newest first."""
    cutoff = time.time() - keep
    found = []
    for raw in connection.lrange(HISTORY_KEY, 0, HISTORY_LENGTH - 1):
        try:
            data = json.loads(raw)
            fencing = Fencing(worker=str(data["worker"]), host=str(data.get("host", "?")), by=str(data["by"]),
                              at=float(data["at"]), jobs=[str(j) for j in data.get("jobs", [])])
        except (ValueError, KeyError, TypeError):
            continue  # not ours to judge: skip what cannot be read
        if fencing.at >= cutoff:
            found.append(fencing)
    return found
