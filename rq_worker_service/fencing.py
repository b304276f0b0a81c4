"""Fencing: a worker that stops beating (frozen, cut off, its host lost) is shut out and its jobs re-run.

rq notices a dead worker only when its started job's heartbeat has expired and some worker runs
maintenance (minutes), and never notices a worker that is merely frozen or on the far side of a
partition. Here every worker of this package is a *member*: from each live tick it *beats*, one
script that counts its beats in Redis (and moves its deadline in the older sorted set forward, for
workers of older versions, which judge by that). A member that has not beaten for its period (a
watchdog period: three ticks) is *lost*: its own systemd is aborting it (watchdog), or nothing can
reach it.

Silence is judged on the fencer's own monotonic clock, never on Redis's: each fencer notes, per
member, the beat count it saw and when (by its clock) it first saw that count; a count that has not
moved for a period is silence. Redis's ``TIME`` would make every deadline pass at once
when Redis's clock steps (an NTP step, a resumed VM, a failover to a node whose clock is off), and
the first fencer would fence every healthy worker. A fencer vouches only for what it watched while
its own beats went through on time: a failed or late beat of its own (Redis stalled, or this process
did) forgets every count it noted, so a Redis outage, or a pause of the fencer, fences no one.

Any live member that sees a lost one claims it atomically (only while the count is still the one it
saw, so a member that beat meanwhile is not claimed, and only once: the claim removes it), which
marks it fenced (``FENCED_KEY``): its membership is revoked. The fencer then rescues the jobs it was
running (``recovery.rescue_executions``) and puts back what it had popped (``held.put_back``).

The lost worker, if it ever runs again, may wake anywhere; every step of its own that moves a job
reads the mark in the same atomic step, and stops it (``Fenced``, then ``Fencer.exit_fenced``):
its beat, its pop (the take script), its registration (watched with the mark) and its STARTED mark
(one script with the check). So a fenced worker moves no job: a job a blocking pop hands it after
its fencing lands in its held list, is not started, and is put back by the worker itself as it
exits (or by its restarted instance). Its blocking pops end by themselves: each is sent at most a
tick after a beat and blocks at most a tick, and no one may fence it before a whole period (three
ticks) has passed since that beat. Closing its connections (``CLIENT KILL``, found by client name)
is therefore not needed; a fencer whose ACL user is granted CLIENT LIST and CLIENT KILL (``acl
--allow-client-kill``) still does it, which ends such a pop at once; CLIENT KILL never stopped a
woken worker's later writes (redis-py reconnects), the marks do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from redis import Redis

from . import faults, keys
from .host import identity as host_identity

log = logging.getLogger("rq_worker_service.fencing")

BEATS_KEY = keys.fencing_deadlines()
"""The roster (every member is in it) and each member's deadline in Redis time, kept for older versions."""
COUNTS_KEY = keys.fencing_beats()
MEMBERS_KEY = keys.fencing_members()
FENCED_KEY = keys.fencing_fenced()
HISTORY_KEY = keys.fencing_history()
HISTORY_LENGTH = 100
FENCED_KEEP = 24 * 3600
"""Seconds a fencing stays listed by ``status``."""
SWEEP_JITTER = 0.25
"""Seconds a sweep may land earlier in its tick than the one that first saw a token (the parts before
it take more or less time): a period being three ticks, the third sweep must not miss it by that
much and leave the lost member to a fourth. A healthy member beats every tick, so one silent for
nearly three ticks is not healthy."""
LEGACY_PERIOD = 90.0
"""The period of a member whose record does not say (a worker of an older version): the longest a
member can have (three ticks of at most 30 s), so that none is fenced sooner than its own allows."""

_JOIN = """
redis.call('HDEL', KEYS[4], ARGV[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""
_BEAT = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""
_CLAIM = """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) ~= tonumber(ARGV[3]) then return false end
if (redis.call('HGET', KEYS[2], ARGV[1]) or '') ~= ARGV[2] then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local member = redis.call('HGET', KEYS[3], ARGV[1]) or '{}'
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
return member
"""
Token = tuple[str, float]
"""A member's beat count ('' if it has none: an older version) and deadline. A beat of this version
moves both, one of an older version the deadline: any beat of either changes the token."""


class Fenced(Exception):
    """This worker is marked fenced: another worker revoked its membership while it was silent and took
    over its jobs. Nothing was moved; the worker must exit (``Fencer.exit_fenced``)."""


@dataclass(frozen=True)
class Lost:
    """A member claimed by this fencer: where it ran and how long it had been silent."""

    name: str
    host: str
    pid: int | None
    queues: list[str]
    silent: float
    """Seconds this fencer saw no beat of it, by its own clock."""
    period: float
    """The period it was judged by (the longer of its own and the fencer's)."""
    mark: str = ""
    """What this fencer wrote as its fencing mark (``FENCED_KEY``); a rejoin of the name removes it."""


@dataclass(frozen=True)
class _Sighting:
    """A member's token as this fencer last saw it: since when (its clock) it has not moved."""

    token: Token
    since: float
    period: float
    """The member's own period, from its record."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _period(record: bytes | str | None) -> float:
    """A member's period from its record; ``LEGACY_PERIOD`` when the record does not say."""
    try:
        period = float(json.loads(record)["period"]) if record else LEGACY_PERIOD
    except (ValueError, KeyError, TypeError):
        return LEGACY_PERIOD
    return period if period > 0 else LEGACY_PERIOD


class Membership:
    """One worker's membership: its beats, what it saw of the others', and fencing the silent ones."""

    def __init__(self, connection: Redis, name: str, period: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection
        self.name = name
        self.period = period
        """Seconds a member may stay silent before it counts as lost (its watchdog period)."""
        self.clock = clock
        self._last_beat: float | None = None
        """When our last beat went through on time; None after one failed."""
        self._joined = False
        self._sightings: dict[str, _Sighting] = {}
        self._join = connection.register_script(_JOIN)
        self._beat = connection.register_script(_BEAT)
        self._claim = connection.register_script(_CLAIM)
        self._kill_refused = False

    def join(self, host: str, pid: int, queues: list[str]) -> dict | None:
        """Become a member (again); returns the record of this name's last fencing, if any."""
        previous = self.connection.hget(FENCED_KEY, self.name)
        member = json.dumps({"host": host, "pid": pid, "queues": queues, "period": self.period,
                             **host_identity().fields()})
        sent = self.clock()  # (as a beat: dated before it was sent)
        self._join(keys=[BEATS_KEY, COUNTS_KEY, MEMBERS_KEY, FENCED_KEY],
                   args=[self.name, int(self.period) + 1, member])
        self._last_beat = sent
        self._joined = True
        self._sightings.clear()
        return json.loads(previous) if previous else None

    def still_fenced(self, lost: Lost) -> bool:
        """Whether ``lost`` is still the member this fencer claimed: not rejoined since. A fencer slow
        between its claim and its steps (paused, a slow CLIENT LIST) must not act on a restarted
        instance of the same name, which joined anew (clearing the mark) and runs jobs of its own."""
        mark = self.connection.hget(FENCED_KEY, lost.name)
        return mark is not None and (mark.decode() if isinstance(mark, bytes) else str(mark)) == lost.mark

    def beat(self) -> bool:
        """Count a beat; False if we were fenced meanwhile (then nothing is written).

        Raises redis errors. A failed beat, or one that lands more than half a period after the last
        (Redis stalled, or we did), is a break: what we saw of the others' beats before it says
        nothing, since they could not beat on time either, so it is forgotten.

        The beat is dated by the clock read *before* it was sent: Redis counted it somewhere between
        that and the reply, and a process frozen in between (the reply read long after) must not
        take it for a fresh one, or ``may_be_fenced`` would say no to a worker fenced meanwhile. A
        beat answered "fenced" dates nothing: the last beat that went through stays unknown (None)."""
        sent = self.clock()
        try:
            alive = bool(self._beat(keys=[BEATS_KEY, COUNTS_KEY, FENCED_KEY], args=[self.name, int(self.period) + 1]))
        except redis.exceptions.RedisError:
            self._break()
            raise
        if not alive:
            self._break()
            return False
        if not self._on_time(self.clock()):
            self._sightings.clear()
        self._last_beat = sent
        return True

    def may_be_fenced(self) -> bool:
        """Whether a fencer may have claimed this member by now: its last beat that went through is
        older than half a period, or the last one failed. A fencer claims only after a whole period
        without a beat (less its sweep's jitter), so a member that beat since cannot be fenced; nor
        can a worker that never joined (rq's API called directly)."""
        return self._joined and (self._last_beat is None or self.clock() - self._last_beat > self.period / 2)

    def leave(self) -> None:
        """A clean exit: no one must fence a worker that stopped on request."""
        with self.connection.pipeline() as pipe:
            pipe.zrem(BEATS_KEY, self.name)
            pipe.hdel(COUNTS_KEY, self.name)
            pipe.hdel(MEMBERS_KEY, self.name)
            pipe.execute()

    def _on_time(self, now: float) -> bool:
        return self._last_beat is not None and now - self._last_beat <= self.period / 2

    def _break(self) -> None:
        self._last_beat = None
        self._sightings.clear()

    def claim_lost(self) -> Iterator[Lost]:
        """Claim the members silent for their period, one at a time: each is yielded
        right after its claim (so it is fenced before the next is claimed), and claimed once."""
        for name, (count, deadline), silent, period in self._silent():
            record = json.dumps({"by": self.name, "at": time.time()})
            result = self._claim(keys=[BEATS_KEY, COUNTS_KEY, MEMBERS_KEY, FENCED_KEY],
                                 args=[name, count, repr(deadline), record])
            self._sightings.pop(name, None)
            if not result:
                continue  # it beat just now, or another member claimed it first
            faults.reached("fence.claimed")
            member = json.loads(result)
            yield Lost(name=name, host=member.get("host", "?"), pid=member.get("pid"),
                       queues=list(member.get("queues", [])), silent=silent, period=period, mark=record)

    def _silent(self) -> list[tuple[str, Token, float, float]]:
        """(name, token, seconds silent, period) of each member whose token has not moved for its
        period (or ours, if longer: our own beats only vouch for Redis at that grain).

        Silence counts from the sweep that first saw the token, which is after the beat that wrote
        it: never more than the real silence, at most one of our ticks less."""
        before = self.clock()
        if not self._on_time(before):
            self._sightings.clear()  # our own beats are late or failing: we can vouch for no one's silence
            return []
        try:
            tokens = self._tokens()
        except redis.exceptions.RedisError:
            self._break()
            raise
        after = self.clock()
        tokens.pop(self.name, None)
        for gone in self._sightings.keys() - tokens.keys():
            del self._sightings[gone]  # left, or claimed by another fencer
        new = [name for name in tokens if name not in self._sightings]
        records = self.connection.hmget(MEMBERS_KEY, new) if new else []
        periods = dict(zip(new, map(_period, records), strict=True))
        silent = []
        for name, token in tokens.items():
            seen = self._sightings.get(name)
            if seen is None or seen.token != token:
                self._sightings[name] = _Sighting(token, after, periods[name] if seen is None else seen.period)
                continue
            period = max(seen.period, self.period)
            if before - seen.since >= period - SWEEP_JITTER:  # a watchdog period: its systemd is aborting it
                silent.append((name, token, before - seen.since, period))
        return silent

    def _tokens(self) -> dict[str, Token]:
        """Every member's token, in one round trip (two commands that scan in C, not a script that
        looks each member up: a sweep of every worker reads the whole roster)."""
        with self.connection.pipeline() as pipe:
            pipe.zrange(BEATS_KEY, 0, -1, withscores=True)
            pipe.hgetall(COUNTS_KEY)
            roster, counts = pipe.execute()
        count = {_text(name): _text(value) for name, value in counts.items()}
        return {_text(name): (count.get(_text(name), ""), float(deadline)) for name, deadline in roster}

    def kill_connections(self, lost: Lost) -> int:
        """Close every Redis connection named after ``lost``, if this user may; returns how many.

        Not needed for safety (the fenced worker stops itself before it moves a job, and its pops end
        by themselves within a tick): the default ACL rule does not grant CLIENT LIST and CLIENT KILL,
        which act on every client of the server. Refused, it is not tried again, and said once."""
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
            log.info("Not closing fenced workers' Redis connections (%s: the default ACL rule does not grant CLIENT "
                     "LIST and CLIENT KILL); a fenced worker stops itself before it moves a job", exc)
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
