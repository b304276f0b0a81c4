"""One slot of one cron job enqueued at most once: under the lease, in one transaction with its mark.

Three things could double a slot: two leaders for a moment (a frozen ex-leader waking up), a restart
that forgot what it did, a retry after an answer lost on the way back. Each is closed here, by one
WATCH/MULTI/EXEC per slot (rq's own way of enqueueing inside a caller's transaction):

* WATCH the lease key, the ``keys.cron_last()`` hash and the job's key; check that the lease holds our
  token (else ``LeaseLost``: we enqueue nothing more), that the slot is later than the last one handled
  and that the job id (``slots.job_id``: the cron job's name and the slot) does not exist yet;
* MULTI: rq's ``Queue.enqueue`` with that job id and the entry's job options, rq's own cron bookkeeping
  as ``rq.cron.CronJob.enqueue`` does it (the job history sorted set, ``cron_job_registry.add``), so that
  rq's tools see the job, the slot as the entry's last mark, and the entry's record (``records``); EXEC.

A write to any watched key meanwhile (another leader, our lease expiring and taken) aborts the EXEC,
and the checks are made again. A slot already handled, or a job id that exists, is not enqueued again;
a skip (``mark``) writes the mark the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum

from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import cron_job_registry
from rq.cron import get_cron_job_history_key
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.queue import Queue

from .. import keys
from .schedule import Entry
from .slots import job_id

MAX_ATTEMPTS = 10
"""WATCH retries of one slot: each abort means another client wrote a watched key; the checks that
follow almost always end it (the lease is another's, or the slot is done). Beyond this, the next look
tries again."""


class Outcome(Enum):
    """What became of one slot."""

    ENQUEUED = "enqueued"
    EXISTED = "existed"
    """Its job id was there already (enqueued before its mark could be written, or by hand): marked only."""
    DONE = "done"
    """Its mark was there already (by us before, or by another leader): nothing written."""


class LeaseLost(Exception):
    """The lease no longer holds our token: another scheduler took it, or it expired."""


class Contended(Exception):
    """MAX_ATTEMPTS transactions in a row were aborted by writes to the watched keys."""


def last_marks(connection) -> dict[str, datetime]:
    """Every cron job's last handled slot, from ``keys.cron_last()``."""
    marks = {}
    for name, raw in connection.hgetall(keys.cron_last()).items():
        mark = _mark(raw)
        if mark is not None:
            marks[name.decode() if isinstance(name, bytes) else name] = mark
    return marks


def _mark(raw: bytes | str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError):
        return None  # unreadable: as if never handled (an interval job is then due at once, a cron job at its next)


def _stamp(moment: datetime) -> str:
    return repr(moment.timestamp())


def _transaction(connection, entry: Entry, lease_value: str, moment: datetime, watch: tuple[str, ...],
                 write: Callable[[Pipeline], None]) -> bool:
    """WATCH, check the lease and that ``moment`` is past the entry's mark, then MULTI ``write`` + the mark,
    EXEC. False when the mark is already at or past ``moment`` (done: by us before, or by another leader)."""
    lease_key, last_key = keys.cron_lease(), keys.cron_last()
    with connection.pipeline() as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                pipe.watch(lease_key, last_key, *watch)
                current = pipe.get(lease_key)
                if (current.decode("utf-8", "replace") if isinstance(current, bytes) else current) != lease_value:
                    raise LeaseLost(lease_value)
                last = _mark(pipe.hget(last_key, entry.name))
                if last is not None and last >= moment:
                    return False
                write(pipe)  # (it begins the MULTI)
                pipe.hset(last_key, entry.name, _stamp(moment))
                pipe.execute()
                return True
            except WatchError:
                continue
    raise Contended(entry.name)


def enqueue_slot(connection, queue: Queue, entry: Entry, slot: datetime, lease_value: str,
                 record: Callable[[bool], str]) -> Outcome:
    """Enqueue ``entry``'s job for ``slot`` (job id ``slots.job_id(entry, slot)``) unless that slot is done.

    ``record(enqueues)``: the entry's ``keys.cron_jobs()`` JSON after this slot, written in the same
    transaction. Raises LeaseLost, Contended, and Redis errors (nothing is written then)."""
    jid = job_id(entry, slot)
    job_key = queue.job_class.key_for(jid)
    enqueued: list[bool] = []

    def write(pipe: Pipeline) -> None:
        enqueued.clear()
        exists = bool(pipe.exists(job_key))
        pipe.multi()
        if not exists:
            job = queue.enqueue(entry.func, args=entry.args, kwargs=entry.kwargs, job_id=jid, **entry.job_options,
                                pipeline=pipe)
            stamp = job.enqueued_at.timestamp() if job.enqueued_at else slot.timestamp()
            history = get_cron_job_history_key(entry.name)
            pipe.zadd(history, {job.id: stamp})
            pipe.zremrangebyrank(history, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipe.expire(history, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(entry.name, pipe, enqueue_timestamp=stamp)
        enqueued.append(not exists)
        pipe.hset(keys.cron_jobs(), entry.name, record(not exists))

    if not _transaction(connection, entry, lease_value, slot, (job_key,), write):
        return Outcome.DONE
    return Outcome.ENQUEUED if enqueued[0] else Outcome.EXISTED


def mark(connection, entry: Entry, moment: datetime, lease_value: str, record: str) -> bool:
    """Record ``moment`` as ``entry``'s last handled slot without enqueueing (skipped slots, a fresh cron
    entry's start), with its record; False when the mark was already there or later."""

    def write(pipe: Pipeline) -> None:
        pipe.multi()
        pipe.hset(keys.cron_jobs(), entry.name, record)

    return _transaction(connection, entry, lease_value, moment, (), write)
