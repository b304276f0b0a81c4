"""The end of a job that returned, written by one script where rq spends a transaction on it.

rq's ``handle_job_success`` WATCHes the job's dependents key, reads the dependents, then writes the end
between MULTI and EXEC (and starts again on a WatchError), so that a dependent added meanwhile is not
left waiting for a parent that has ended. Most jobs have no dependents. For a job this worker popped and
registered, the look and the writes go in one script: EXISTS of the dependents key, then rq's writes.
WATCH, SMEMBERS, MULTI and EXEC go; EVALSHA and EXISTS come (issue 31: Redis commands per job). A job
with dependents, one with a repeat to schedule, an app's worker class with a ``handle_job_success`` of its
own, an app's queue class with a ``move_dependents_to_ready`` of its own, and Redis Cluster get rq's step,
whole: the script writes nothing when the dependents key exists, so a dependent added after its look
finds its parent ended and is enqueued by rq's step as before.

The writes are rq's own, queued by rq's methods on a pipeline that is never executed (``queued``), with
three left out as they change nothing here:

* the EXPIRE of the dependents key, which the script has just found missing;
* the EXPIRE of the dependencies key of a job without dependencies (rq adds to that set only for a job
  enqueued with ``depends_on``);
* the job's status HSET, which joins the HSET of its whole hash that follows (``queued.compact``).

The StartedJobRegistry entry's ZREM, one of rq's writes, goes first and guards the rest: gone already,
the end was written by an earlier send of this script (a reply lost with the link, sent again by redis-py
or by us) or another worker's cleanup took the execution (it found the entry expired: the job is failed or
re-queued there). Either way nothing is written twice: no second result, no counter counted twice, no
FINISHED over the outcome another worker recorded. A simple worker also looks at its fencing mark in the
same step (the WATCH and HEXISTS of ``ServiceWorkerMixin._watch_the_fencing``, one command here). A horse
does not look: the guard covers it. Its lease ends it before its worker may be fenced, and a horse thawed
with its whole process group after a fencing (which the lease cannot stop at once: review of issue 31)
finds the entry gone once the fencer's rescue claimed it, or writes the job's only end before that claim,
which then finds the entry gone and leaves the job alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.rate_limit import release_slot

from . import keys, queued

if TYPE_CHECKING:
    from .worker import ServiceWorkerMixin

log = logging.getLogger("rq_worker_service.worker")

_END = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[2] == '1' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
if redis.call('ZREM', KEYS[3], ARGV[3]) == 0 then return 2 end
""" + queued.run_flattened(4) + """
return 1
"""
"""KEYS: the job's dependents, the fencing marks, the StartedJobRegistry; ARGV: the worker's name, '1' to
look at its fencing mark, the execution's entry in the registry, then the end's commands. 0: the job has
dependents (nothing written); -1: this worker is marked fenced (nothing written); 2: the entry was gone
(nothing written); 1: written."""

WRITTEN, DEPENDENTS, FENCED, GONE = 1, 0, -1, 2


class RecordedElsewhere(Exception):
    """The end was not written here (``GONE``): rq's steps after it (the FINISHED webhook, "Job OK") are
    skipped (``ServiceWorkerMixin._finalize_success``)."""


def applies(worker: ServiceWorkerMixin, job: Job, queue: Queue, execution: Execution | None, rqs_step: Any
            ) -> bool:
    """Whether the end of ``job`` goes by the script: an execution this worker's pop registered, no
    repeat to schedule, rq's own ``handle_job_success`` behind ours (``rqs_step``: the bound method
    ``super()`` finds) and rq's own ``move_dependents_to_ready`` in the queue's class, not an app's (the
    script calls neither); and not under Redis Cluster, where a script is not all or nothing (a key
    refused mid-way while its slot migrates ends it with its first writes kept) and rq's transaction,
    refused whole, is."""
    from rq.worker import BaseWorker

    return (not worker.settings.redis.cluster and execution is not None
            and execution.id == worker.parts.held.registered
            and getattr(rqs_step, "__func__", None) is BaseWorker.handle_job_success
            and type(queue).move_dependents_to_ready is Queue.move_dependents_to_ready
            and not (job.repeats_left is not None and job.repeats_left > 0))


def write_success(worker: ServiceWorkerMixin, job: Job, queue: Queue, execution: Execution) -> int:
    """rq's end of a job that returned, by the script (module docstring): ``WRITTEN``, or what kept it
    from being written (``DEPENDENTS``: rq's step must write it; ``FENCED``); ``RecordedElsewhere`` when
    the registry entry was gone (``GONE``)."""
    registry = queue.started_job_registry
    assert job.ended_at is not None and job.started_at is not None  # (set by the end's first step)
    time_taken = job.ended_at - job.started_at
    with worker.connection.pipeline(transaction=False) as pipeline:
        # rq's writes, in rq's order (BaseWorker.handle_job_success, without the dependents and the repeat)
        worker.increment_successful_job_count(pipeline=pipeline)
        worker.increment_total_working_time(time_taken, pipeline)
        result_ttl = job.get_result_ttl(worker.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(result_ttl, pipeline=pipeline, worker_name=worker.name, execution_id=execution.id,
                                execution_started_at=execution.created_at, execution_ended_at=job.ended_at)
        job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
        worker.cleanup_execution(job, pipeline=pipeline, execution=execution)
        commands = queued.taken(pipeline)
        guard = ("ZREM", registry.key, execution.composite_key)
        unchanged = {("EXPIRE", job.dependents_key, result_ttl)}
        if not job._dependency_ids:
            unchanged.add(("EXPIRE", job.dependencies_key, result_ttl))
        if guard not in commands:  # (an app's job or registry class that writes differently)
            return DEPENDENTS
        commands = [command for command in commands if command != guard and command not in unchanged]
        flat = queued.flatten(pipeline, commands)
    done = worker.connection.register_script(_END)(
        keys=[job.dependents_key, keys.fencing_fenced(), registry.key],
        args=[worker.name, "0" if worker.is_horse else "1", execution.composite_key, *flat])
    if done == GONE:
        log.warning("Job %s returned, but its execution was no longer in the StartedJobRegistry: its end was "
                    "recorded already (a resent write) or another worker's cleanup took it; not recorded again",
                    job.id, extra={"RQ_JOB_ID": job.id, "RQ_QUEUE": queue.name})
        raise RecordedElsewhere(job.id)
    if done != WRITTEN:
        return done
    job._status = JobStatus.FINISHED  # (as rq's step sets it after its cleanup)
    release_slot(job)
    if worker.log_job_description:  # rq's line
        worker.log.info("Successfully completed %s job in %ss on worker %s", job.description, time_taken,
                        worker.name)
    else:
        worker.log.info("Successfully completed job %s in %ss on worker %s", job.id, time_taken, worker.name)
    return WRITTEN
