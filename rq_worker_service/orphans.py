"""Jobs a stock rq worker took and never started: back to the front of their queue, untouched.

A stock rq worker that listens to one queue pops with ``BLMOVE`` into the queue's intermediate list
and registers the job as started a few milliseconds later (rq 3 does this in the main process,
before the fork). If the worker is frozen, cut off or killed in between — or Redis hands a job to
the still-registered blocking pop of a worker that is already frozen — the job sits in that list.
rq's own cleanup fails it after two sightings at least a minute apart, during maintenance.

Our workers never use these lists (they pop into a list of their own: ``held``), so this is only
for stock rq workers sharing our queues: every worker of ours looks at its queues' intermediate
lists on each tick, and a job that is there and not started, at two sightings ``SETTLE`` seconds or
more apart, is moved back to the front of its queue in one atomic step, status untouched (it never
ran, so no retry attempt is taken). That is a guess (a stock worker frozen for two seconds between
its pop and its registration runs the job twice); no guess is made about a worker of ours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import Redis
from rq.job import JobStatus
from rq.queue import Queue
from rq.utils import as_text, parse_composite_key

from . import faults
from .rqcompat import first_seen_key, intermediate_key

log = logging.getLogger("rq_worker_service.orphans")

SETTLE = 2.0
"""Seconds between the two sightings. A live worker holds a popped job in the list for the few
Redis round trips before it registers the execution; two seconds is hundreds of those."""

_REQUEUE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""


class IntermediateWatch:
    """Remembers when each unstarted job in the intermediate lists was first seen."""

    def __init__(self, connection: Redis, queues: list[Queue], clock: Callable[[], float] = time.monotonic) -> None:
        self.connection = connection
        self.queues = queues
        self.clock = clock
        self._first_seen: dict[tuple[str, str], float] = {}
        self._requeue = connection.register_script(_REQUEUE)

    def _unstarted(self, queue: Queue) -> list[str]:
        held = [as_text(j) for j in self.connection.lrange(intermediate_key(queue), 0, -1)]
        if not held:
            return []
        started = {parse_composite_key(as_text(e))[0]  # type: ignore[arg-type]
                   for e in self.connection.zrange(queue.started_job_registry.key, 0, -1)}
        return [job_id for job_id in held if job_id not in started]

    def sweep(self) -> list[str]:
        """Requeue what was seen unstarted ``SETTLE`` seconds ago or more and still is; returns those ids."""
        now = self.clock()
        seen: dict[tuple[str, str], float] = {}
        requeued: list[str] = []
        for queue in self.queues:
            for job_id in self._unstarted(queue):
                first = self._first_seen.get((queue.name, job_id), now)
                if now - first < SETTLE:
                    seen[(queue.name, job_id)] = first
                elif self._put_back(queue, job_id):
                    requeued.append(job_id)
        self._first_seen = seen
        return requeued

    def _put_back(self, queue: Queue, job_id: str) -> bool:
        status = self.connection.hget(queue.job_class.key_for(job_id), "status")
        if status is None:  # deleted meanwhile: nothing to run
            self.connection.lrem(intermediate_key(queue), 1, job_id)
            return False
        if as_text(status) != JobStatus.QUEUED.value:
            return False  # cancelled or otherwise handled: rq's cleanup decides
        faults.reached("sweep.requeue")
        done = self._requeue(keys=[intermediate_key(queue), queue.key, first_seen_key(queue, job_id)], args=[job_id])
        if done:
            log.warning("Job %s was taken from queue %s by a worker that never started it (frozen, cut off or "
                        "killed); put back at the front of the queue", job_id, queue.name,
                        extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": queue.name})
        return bool(done)

