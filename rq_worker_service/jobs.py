"""``rq-worker-service job / requeue / cleanup``: look at one job, send failed jobs back, tidy up.

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
