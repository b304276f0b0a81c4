"""``status``'s periodic-job section and ``cron list``: read from the keys the scheduler keeps (``keys.cron_*``).

The lease says who enqueues now; the jobs hash what the leader last wrote of each cron job; the schedulers
hash which schedulers run (entries that stopped beating are ignored, as the leader prunes them); the
hand-over list who took the lease from whom. Nothing here writes, and nothing read is a secret: the
schedule's function names, queues and config path, host names and pids.

The lease period is the operator's setting, not stored in Redis: ``lease_period`` reads it where the unit
does (worker.env, then cron.env beside it), under the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError

from .. import keys
from ..classes import RQ_DEFAULTS, AppClasses
from ..config import read
from ..envfiles import read_values
from .report import CronHandover, CronInfo, CronJobInfo, CronSchedulerInfo

LEASE_PERIOD = "RQ_CRON_LEASE_PERIOD"
CRON_ENV = "cron.env"
"""rq-cron.service's own file, beside worker.env: ``--env-file worker.env --env-file cron.env`` (it wins)."""
SCHEDULER_FORGOTTEN = 3
"""Lease periods without a beat after which a scheduler's entry is ignored (the CONTRACT's reader rule)."""


def lease_period(env_file: Path, env: Mapping[str, str]) -> int:
    """RQ_CRON_LEASE_PERIOD as rq-cron.service reads it: ``env`` (the environment over worker.env, as the
    commands read it) under cron.env beside ``env_file`` when this user may read it; raises ConfigError."""
    env = dict(env)
    cron_env = env_file.parent / CRON_ENV
    if LEASE_PERIOD not in os.environ and os.access(cron_env, os.R_OK):
        value = (read_values(cron_env) or {}).get(LEASE_PERIOD)
        if value is not None:
            env[LEASE_PERIOD] = value
    return int(read(env, LEASE_PERIOD))


def _json(raw: bytes | str) -> dict | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _outcome(connection: Redis, job_id: str | None, classes: AppClasses) -> str | None:
    if not job_id:
        return None
    try:
        status = classes.fetch(job_id, connection).get_status(refresh=False)
    except NoSuchJobError:
        return "gone"
    return status.value if status else "unknown"


def _jobs(connection: Redis, now: float, classes: AppClasses) -> list[CronJobInfo]:
    found = []
    for name, raw in connection.hgetall(keys.cron_jobs()).items():
        data = _json(raw)
        if data is None:
            continue
        try:
            found.append(CronJobInfo(
                name=_text(name), func_name=str(data["func_name"]), queue=str(data["queue"]), cron=data["cron"],
                interval=data["interval"], zone=str(data["zone"]), catch_up=str(data["catch_up"]),
                next_run=data["next"], last_slot=data["last_slot"], last_job_id=data["last_job_id"],
                last_outcome=_outcome(connection, data["last_job_id"], classes),
                enqueued_total=int(data["enqueued_total"]), skipped_total=int(data["skipped_total"]),
                updated_age=max(0.0, now - float(data["updated"]))))
        except (KeyError, TypeError, ValueError):
            continue  # written by another version: not ours to show
    return sorted(found, key=lambda j: j.name)


def _schedulers(connection: Redis, now: float, period: int) -> tuple[list[CronSchedulerInfo], float | None]:
    """The live schedulers, and the last beat of any that called itself leader (live or not)."""
    live, leader_beat = [], None
    for holder, raw in connection.hgetall(keys.cron_schedulers()).items():
        data = _json(raw)
        if data is None:
            continue
        try:
            beat = float(data["beat"])
            if data["role"] == "leader":
                leader_beat = max(beat, leader_beat or beat)
            if now - beat > SCHEDULER_FORGOTTEN * period:
                continue
            live.append(CronSchedulerInfo(
                holder=_text(holder), host=str(data["host"]), pid=int(data["pid"]), role=str(data["role"]),
                since_age=max(0.0, now - float(data["since"])), beat_age=max(0.0, now - beat),
                token=data["token"], config=str(data["config"])))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(live, key=lambda s: (s.role != "leader", s.holder)), leader_beat


def _handovers(connection: Redis) -> list[CronHandover]:
    found = []
    for raw in connection.lrange(keys.cron_handovers(), 0, -1):
        data = _json(raw)
        if data is None:
            continue
        try:
            found.append(CronHandover(at=float(data["at"]), holder=str(data["holder"]), token=int(data["token"]),
                                      previous=data["previous"]))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _lease(connection: Redis) -> tuple[str | None, int | None, float | None]:
    """The holder, its token and the lease's seconds left; Nones when nobody holds it."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(keys.cron_lease())
        pipe.pttl(keys.cron_lease())
        raw, pttl = pipe.execute()
    if raw is None:
        return None, None, None
    token, _, holder = _text(raw).partition(" ")
    return holder or None, int(token) if token.isdigit() else None, pttl / 1000 if pttl >= 0 else None


def server_time(connection: Redis) -> float:
    """The Redis server's time (epoch seconds): the schedulers write their beats, marks and records in it
    (``cron.scheduler.RedisTime``), so their ages are judged by it too, not by this host's clock."""
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def collect_cron(connection: Redis, now: float, period: int, *, classes: AppClasses = RQ_DEFAULTS
                 ) -> CronInfo | None:
    """The periodic-job section at ``now`` (epoch seconds); None when Redis holds nothing of a scheduler."""
    holder, token, left = _lease(connection)
    jobs = _jobs(connection, now, classes)
    schedulers, leader_beat = _schedulers(connection, now, period)
    handovers = _handovers(connection)
    if holder is None and not (jobs or schedulers or handovers or leader_beat):
        return None
    leaderless_for = None
    if holder is None:
        seen = [t for t in (leader_beat, *(now - j.updated_age for j in jobs), *(h.at for h in handovers[:1]))
                if t is not None]
        leaderless_for = max(0.0, now - max(seen)) if seen else None
    return CronInfo(lease_period=period, holder=holder, token=token, lease_left=left, leaderless_for=leaderless_for,
                    jobs=jobs, schedulers=schedulers, handovers=handovers)
