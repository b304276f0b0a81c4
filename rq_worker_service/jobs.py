"""``rq-worker-service job / failed / requeue / cleanup``: look at one job, list the failed ones, send them
back, tidy up.

Each function returns plain data (for ``--json``) and raises ``JobsError`` with a one-line message
for an operator mistake (an unknown id, a queue that does not exist).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, clean_registries
from rq.results import Result
from rq.worker_registration import clean_worker_registry

from .classes import RQ_DEFAULTS, AppClasses

ARG_REPR = reprlib.Repr()
ARG_REPR.maxstring = 60
ARG_REPR.maxother = 60
ARG_REPR.maxlist = ARG_REPR.maxdict = ARG_REPR.maxtuple = 6


class JobsError(Exception):
    """An operator mistake; ``str()`` is the one line to print."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def failure_in_journal(job_id: str) -> str | None:
    """The last error the workers logged with this job's RQ_JOB_ID. rq keeps no failure for a job it
    retries, so for one waiting for its retry the journal is where the traceback is. None when
    there is none, or no journal we may read (not root, not in group adm / systemd-journal)."""
    try:
        from systemd import journal

        reader = journal.Reader()
        reader.log_level(journal.LOG_ERR)
        reader.add_match(RQ_JOB_ID=job_id)
        reader.seek_tail()
        entry = reader.get_previous()
    except Exception:
        return None
    message = entry.get("MESSAGE") if entry else None
    return str(message) if message else None


def describe(connection: Redis, job_id: str,
             journal_lookup: Callable[[str], str | None] = failure_in_journal, *,
             classes: AppClasses = RQ_DEFAULTS) -> dict:
    """``classes``: the app's serializer and job class, which its jobs are read with (RQ_SERIALIZER, …)."""
    try:
        job = classes.fetch(job_id, connection)
    except NoSuchJobError:
        raise JobsError(f"no job with id {job_id!r} (it never existed, or its result TTL has expired)") from None
    try:
        args = [ARG_REPR.repr(a) for a in job.args] + [f"{k}={ARG_REPR.repr(v)}" for k, v in job.kwargs.items()]
        call = f"{job.func_name}({', '.join(args)})"
    except Exception as exc:  # the job's data cannot be unpickled here (missing app module …)
        call = f"<cannot decode the job's arguments: {type(exc).__name__}: {exc}>"
    latest = job.latest_result()
    traceback = latest.exc_string if latest and latest.exc_string else None
    traceback_from = "result" if traceback else None
    if traceback is None and job.get_status() != JobStatus.FINISHED:
        traceback = journal_lookup(job.id)
        traceback_from = "journal" if traceback else None
    return {
        "id": job.id, "status": job.get_status().value, "queue": job.origin, "call": call,
        "created_at": _iso(job.created_at), "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at), "ended_at": _iso(job.ended_at),
        "retries_left": job.retries_left, "timeout": job.timeout, "worker": job.worker_name or None,
        "meta": job.meta,
        "last_result": latest.type.name.lower() if latest else None,
        "traceback": traceback, "traceback_from": traceback_from,
    }


def render_job(info: dict) -> str:
    lines = [f"{key:<13}{'-' if info[key] is None else info[key]}" for key in
             ("id", "status", "queue", "call", "created_at", "enqueued_at", "started_at", "ended_at",
              "retries_left", "timeout", "worker", "meta", "last_result")]
    if info["traceback"]:
        if info.get("traceback_from") == "journal":
            lines += ["", "Last failure, from the journal (rq keeps none for a job it retries):"]
        lines += ["", info["traceback"].rstrip()]
    return "\n".join(lines) + "\n"


def last_line(text: str | None) -> str | None:
    """The last non-empty line of a traceback (the exception and its message), or None: rq's strings
    end in a newline, and a job's own output may add blank lines after it."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def failed_jobs(connection: Redis, queue_names: list[str] | None, limit: int, *,
                classes: AppClasses = RQ_DEFAULTS) -> list[dict]:
    """The failed registry of each queue (``queue_names``, or every queue), newest failure first, at most
    ``limit`` jobs: what the web console lists and ``requeue`` takes back.

    A registry is scored by expiry (failure + the job's failure TTL), so each queue's ``limit`` highest
    scores hold its newest failures; only those are fetched, then ordered by ``ended_at`` across queues.
    A job whose hash expired before its registry entry is left out, as rq's own listing does.
    """
    known = sorted(q.name for q in Queue.all(connection=connection))
    for name in queue_names or []:
        if name not in known:
            raise JobsError(f"no queue named {name!r} in this Redis")
    rows = []
    for name in queue_names or known:
        registry = FailedJobRegistry(name, connection=connection, job_class=classes.job_class,
                                     serializer=classes.serializer)
        ids = _newest(connection, registry.key, limit)
        for job in classes.job_class.fetch_many(ids, connection=connection, serializer=classes.serializer):
            if job is None:
                continue
            rows.append({"job_id": job.id, "queue": name, "func": _func(job), "ended_at": _iso(job.ended_at),
                         "exc_last_line": last_line(_failure(job)),
                         "worker": job.worker_name or None})
    rows.sort(key=lambda row: row["ended_at"] or "", reverse=True)  # rq's times are UTC: text order is time order
    return rows[:limit]


def _newest(connection: Redis, key: str, limit: int) -> list[str]:
    """The ``limit`` highest-scored ids of a registry, and every one tied with the last (jobs that failed in
    the same second score alike: which of them is newest only their ``ended_at`` tells)."""
    top: list[tuple[bytes, float]] = connection.zrevrange(key, 0, limit - 1, withscores=True)  # type: ignore[assignment]
    if len(top) == limit:
        top = connection.zrevrangebyscore(key, "+inf", top[-1][1], withscores=True)  # type: ignore[assignment]
    return [member.decode() for member, _ in top]


def _failure(job) -> str | None:
    """The latest failure's traceback: rq 3 keeps it in the job's latest Result (``Result.create_failure``)."""
    latest = job.latest_result()
    return latest.exc_string if latest is not None and latest.type == Result.Type.FAILED else None


def _func(job) -> str:
    """rq's ``func_name``; its description when the job's data cannot be read here (a missing app module)."""
    try:
        return job.func_name or job.description or "?"
    except Exception:
        return job.description or "?"


def render_failed(rows: list[dict]) -> str:
    """One line per job: when, queue, id, function and the exception's last line."""
    return "".join(f"{row['ended_at'] or '-'}  {row['queue']}  {row['job_id']}  {row['func']}  "
                   f"{row['exc_last_line'] or '-'}\n" for row in rows)


@dataclass
class Requeued:
    job_id: str
    queue: str


def requeue(connection: Redis, job_ids: list[str], queue_name: str | None, dry_run: bool, *,
            classes: AppClasses = RQ_DEFAULTS) -> list[Requeued]:
    """Send failed jobs back to their queue: the given ids, or every failed job of ``queue_name``; the
    jobs read and written with the app's serializer and job class (``classes``)."""
    def failed(name: str) -> FailedJobRegistry:
        return FailedJobRegistry(name, connection=connection, job_class=classes.job_class,
                                 serializer=classes.serializer)

    if queue_name is not None:
        if queue_name not in {q.name for q in Queue.all(connection=connection)}:
            raise JobsError(f"no queue named {queue_name!r} in this Redis")
        registry = failed(queue_name)
        targets = [(job_id, registry) for job_id in registry.get_job_ids()]
    else:
        targets = []
        for job_id in job_ids:
            try:
                job = classes.fetch(job_id, connection)
            except NoSuchJobError:
                raise JobsError(f"no job with id {job_id!r}") from None
            registry = failed(job.origin)
            if job_id not in registry:
                raise JobsError(f"job {job_id} is {job.get_status().value}, not failed: only failed jobs are requeued")
            targets.append((job_id, registry))
    done = []
    for job_id, registry in targets:
        if not dry_run:
            try:
                registry.requeue(job_id)
            except InvalidJobOperation:
                continue  # requeued by someone else meanwhile
        done.append(Requeued(job_id, registry.name))
    return done


def cleanup(connection: Redis, *, classes: AppClasses = RQ_DEFAULTS) -> dict[str, dict[str, int]]:
    """What a worker's maintenance does, now: expire registries, fail abandoned jobs, drop dead workers.
    The jobs it fails are read with the app's serializer and job class (``classes``).

    Returns, per queue, how many entries the started and failed registries held before and after.
    """
    report = {}
    for queue in classes.queue_class.all(connection=connection, job_class=classes.job_class,
                                         serializer=classes.serializer):
        keys = (queue.started_job_registry.key, queue.failed_job_registry.key)
        before = [connection.zcard(k) for k in keys]  # not registry.count: that cleans up first
        clean_registries(queue)
        clean_worker_registry(queue)
        after = [connection.zcard(k) for k in keys]
        report[queue.name] = {"started_before": before[0], "started_after": after[0],
                              "failed_before": before[1], "failed_after": after[1]}
    return report
