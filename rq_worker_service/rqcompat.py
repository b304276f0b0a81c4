"""Everything we assume about rq beyond its public API, in one place.

rq's key layout, the texts it records for a failure we must recognise, and the way we name a job
for people. ``tests/unit/test_rq_contract.py`` checks each assumption against the installed rq
(and the methods our worker overrides), so raising rq's version pin fails there, with a message
that says what changed, instead of in production. docs/operations.md lists the coupling.
"""

from __future__ import annotations

from datetime import timedelta

import rq
from redis import Redis
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

__all__ = ["RQ_MAJOR", "HORSE_DIED", "STUCK_IN_INTERMEDIATE", "REDIS_WORKER_KEYS", "WORKERS_BY_QUEUE_KEY",
           "execution_key", "first_seen_key", "intermediate_key", "job_func", "mixed_rq_message",
           "mixed_rq_workers", "requeue_now", "retry_in", "same_rq_major", "worker_key"]

RQ_MAJOR = 3
"""The rq major version this code is written against. Workers and the apps that enqueue must share
it: rq 3 changed its Redis data model (dependents pass through READY_TO_ENQUEUE, rate limits are
enforced by workers, workers no longer store ``current_job``)."""


def same_rq_major(version: str) -> bool:
    """Whether a worker that registered with rq ``version`` keeps jobs in Redis as ours does."""
    return version.split(".")[0] == str(RQ_MAJOR)


def mixed_rq_message(worker: str, version: str) -> str:
    return (f"worker {worker} runs rq {version}, this package rq {rq.__version__}: one Redis with two rq major "
            "versions mishandles rate limits and dependents; upgrade or stop it")


def mixed_rq_workers(connection: Redis, queue_names: list[str]) -> list[str]:
    """A message for each registered worker on one of these queues that runs another rq major."""
    return [mixed_rq_message(w.name, w.version) for w in Worker.all(connection=connection)
            if set(w.queue_names()) & set(queue_names) and not same_rq_major(w.version)]


HORSE_DIED = "Work-horse terminated unexpectedly"
"""How rq's ``monitor_work_horse`` starts the failure it records when the horse died without a result."""
STUCK_IN_INTERMEDIATE = "Job was stuck in intermediate queue"
"""How rq's intermediate-queue cleanup starts the failure of a job popped by a worker that then died."""


def worker_key(name: str) -> str:
    """The hash rq keeps a worker's record in (``rq:worker:<name>``)."""
    return Worker.redis_worker_namespace_prefix + name


def execution_key(composite: str) -> str:
    """The hash of one execution, from a StartedJobRegistry entry (``<job id>:<execution id>``)."""
    return Execution.from_composite_key(composite, connection=None).key  # type: ignore[arg-type]


def job_func(job: Job | None) -> str:
    """The job's function name for logs and status, or ``?`` when its data cannot be read here
    (a missing app module, another serializer): our bookkeeping must never fail on a bad job."""
    if job is None:
        return "?"
    try:
        return job.func_name or "?"
    except Exception:
        return "?"


def intermediate_key(queue: Queue) -> str:
    """The list a single-queue worker's pop moves a job into (BLMOVE) until it has started it."""
    return IntermediateQueue.get_intermediate_queue_key(queue.key)


def first_seen_key(queue: Queue, job_id: str) -> str:
    """rq's marker of a job's first sighting in the intermediate list by its own cleanup."""
    return IntermediateQueue(queue.key, queue.connection).get_first_seen_key(job_id)


def requeue_now(job: Job, queue: Queue, pipeline) -> None:
    """rq's ``Job.retry`` without its interval: one attempt taken, the job queued again at the front."""
    assert job.retries_left
    job.retries_left -= 1
    queue._enqueue_job(job, pipeline=pipeline, at_front=True)


def retry_in(job: Job, queue: Queue, pipeline) -> None:
    """rq's ``Job.retry`` with every write in ``pipeline``: one attempt taken, the job queued again, or
    scheduled after its retry interval. rq's own writes the SCHEDULED status on the job's connection,
    outside the pipeline: inside a transaction that watches the job (a rescue's) that write alone
    would abort it, every time."""
    assert job.retries_left
    interval = job.get_retry_interval()
    job.retries_left -= 1
    if interval:
        queue.schedule_job(job, now() + timedelta(seconds=interval), pipeline=pipeline)
    else:
        queue._enqueue_job(job, pipeline=pipeline, at_front=job.enqueue_at_front_on_retry)
