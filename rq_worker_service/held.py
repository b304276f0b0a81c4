"""The list each worker owns for the jobs it popped and has not yet registered as started ("held").

rq pops from one queue with BLMOVE into that queue's intermediate list, but from several with
BLPOP: the id is then in the client only, and a stop or reload raised after the reply, a dropped
connection, kill -9, the OOM killer, a watchdog abort, a fencer's CLIENT KILL or a cluster MOVED in
that window lost the job. Here every pop moves the id, in one atomic step, into the popping
worker's own list (``keys.held(name)``):

* a script moves the head of the first non-empty queue, in the order rq passes (after its dequeue
  strategy reordered them); but after a Redis error an id already in the held list comes first:
  it is a pop whose reply was lost (a dropped connection) or whose registration was (a Sentinel
  failover that kept the pop and lost the registration);
* when all queues are empty: one queue, ``BLMOVE queue held LEFT RIGHT``, blocking as rq's pop
  does; several, Redis cannot block inside a script nor wait on several lists without taking from
  one, so the worker blocks on the first queue for ``POLL`` seconds (a job arriving there is taken
  at once) and runs the script again: a job arriving on another queue of an idle worker waits up to
  ``POLL`` seconds more than with BLPOP;
* while ``rq suspend`` holds, nothing is taken: the script looks at rq's flag, and a job a blocking
  BLMOVE returns then goes back to the head of its queue in one step (``_UNLESS_SUSPENDED``).

The registration (rq's ``prepare_execution`` pipeline, which adds the StartedJobRegistry entry)
removes the id in the same script that runs it (``Held.register``), so a popped job is at every
moment in its queue, in a held list or in the StartedJobRegistry. What a held list holds belongs to
its owner alone; it is put back at the front of its queue, status untouched (it never ran: no retry
attempt is taken), one atomic step per job, by:

* the owner itself when it leaves (a stop or reload that came with a reply in hand) and when it
  starts (what its previous run held when it died);
* the fencer that fenced the owner (its rq worker key is gone by then);
* the owner once it finds itself fenced (``fencing.Fenced``: a pop served to it after its fencing
  is not started), as it exits;
* any worker's sweep, once the owner's rq worker key is gone (checked inside the same script).

Nobody guesses from sightings: a live worker's list is never touched by another worker.

Who is found: the sweep looks at the names in ``keys.holders()``, which a worker's start adds
(``join``, after its membership's join) and which its clean exit removes (``leave``). The sweep forgets
a name (``_FORGET_HOLDER``) only while its process can pop no more, checked in one script: its list
empty, its rq worker key gone, and the name neither in the fencing roster nor marked fenced. From its
first join until its clean leave, a member is always in one of the two: the claim moves it from the
roster to the fenced marks, and a rejoin back, each in one script; only ``Membership.leave`` (its
clean exit, after its last pop) takes it out of both. So a name whose pop may still be sent or in
flight (a worker frozen before its pop goes out, fenced, woken, then killed: review 26) is never
forgotten, in any order of the forget, the pop's sending, its reply and the kill: while the forget
can run the process is past its last pop, and a pop sent by a process the forget spares lands in a
list the sweep still looks at. A pop's own moves need no check of their own. A fenced name whose
host never comes back stays in ``holders`` (one ``EXISTS`` per sweep) until an instance of that name
starts again; what its list holds is put back by the sweep once its rq worker key is gone (a woken
fenced worker's rq heartbeat (an HSET) can recreate that key; after its kill -9 that waits for the key's TTL).
A worker that never joined (rq's API called directly) is forgotten as before, once its key is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.queue import Queue
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import as_text, current_timestamp, get_version, now, utcformat

from . import faults, keys, queued
from .classes import AppClasses
from .fencing import Fenced
from .rqcompat import worker_key

log = logging.getLogger("rq_worker_service.held")

POLL = 0.1
"""Seconds an idle worker of several queues blocks on its first queue before it looks at all of
them again: about what a job on another of its queues waits beyond BLPOP's latency (Redis ends
blocking timeouts on its 10 Hz timer: 0.1–0.2 s). Measured on Redis 7.0: ≈7 looks a second per idle
worker, each a script run (6–50 µs of Redis time) and a timed-out BLMOVE (≈25 µs): 0.02–0.05 % of a
Redis core per idle worker, 0.5 % of a core in the worker."""

_TAKE = """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return -1 end
if ARGV[1] == '1' then
  local held = redis.call('LINDEX', KEYS[1], 0)
  if held then return {'', held} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
for i = 4, #KEYS do
  local id = redis.call('LPOP', KEYS[i])
  if id then
    redis.call('RPUSH', KEYS[1], id)
    return {KEYS[i], id}
  end
end
return false
"""

_TAKE_FENCED = -1
"""The take script's answer when this worker is marked fenced (KEYS[2], ARGV[2]): nothing was moved."""
_TAKE_SUSPENDED = -2
"""Its answer while the workers are suspended (``rq suspend``, KEYS[3]): nothing was moved. An id held
already (a retake) is still served: it was taken before, and left held it would wait for the worker's exit."""

_UNLESS_SUSPENDED = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[4], 'status') == 'queued' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 2
"""
"""After a blocking pop that returned ARGV[1] (moved from queue KEYS[2] to the held list KEYS[1]): while the
workers are suspended (KEYS[3] exists), the id goes back to the head of its queue in the same step that takes
it from the held list, as the other put-backs (``_PUT_BACK``). KEYS[4]: the job's hash. 0: not suspended, the
job is this worker's; 1: put back; 2: dropped (deleted or cancelled meanwhile: nothing to run); -1: not
held any more (a fencer put it back)."""

_REGISTER = """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
""" + queued.run_flattened(3) + """
return 1
"""
"""KEYS: held list, fenced marks; ARGV: id, worker name, then the registration's commands (each: its
length, then its words). Takes the id out of the held list and runs them, only while the id is held and
the worker is not marked fenced, at once (the removal is the look: one command, where a read and then
the removal were two). -1: this worker is fenced; 1: registered; 0: not held (nothing written)."""

_REGISTER_READ_FIRST = """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return -1 end
local held = false
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if id == ARGV[1] then held = true break end
end
if not held then return 0 end
""" + queued.run_flattened(3) + """
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
"""
"""``_REGISTER`` for Redis Cluster, where a script is not all or nothing: a key of rq's writes refused
mid-way (its slot migrating: "non local key") ends the script with what it wrote so far kept. Here the
look reads and the id leaves the held list last, so a refusal at the first write (the new execution's
key) leaves the id held, as it left it before the script existed."""

_PUT_BACK = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' and redis.call('HGET', KEYS[3], 'status') == 'queued' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 2
"""
"""KEYS: held list, queue, job hash, owner's rq worker key; ARGV: id, whether the owner must be gone,
whether the job has a queue. -1: the owner is alive; 0: not held (any more); 1: put back; 2: dropped
(deleted, cancelled or otherwise handled while held: nothing to run)."""

_FORGET_HOLDER = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('LLEN', KEYS[1]) > 0 then return 0 end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 0 end
return redis.call('SREM', KEYS[3], ARGV[1])
"""
"""KEYS: held list, owner's rq worker key, holders, fencing roster (deadlines), fenced marks; ARGV: owner.
Forgets the owner only once it can pop no more: its list empty, its rq worker key gone, and it neither
a member nor fenced (it left cleanly, or never joined). See the module's docstring, "Who is found"."""

_QUARANTINE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'status', 'failed', 'ended_at', ARGV[3], 'exc_info', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""


class Held:
    """One worker's held list: its pops, and what becomes of an id it holds. ``classes``: the app's job and
    queue classes (RQ_JOB_CLASS, RQ_QUEUE_CLASS), whose keys a job's hash and its queue are at: a class may
    keep them under a prefix of its own (``redis_job_namespace_prefix``, ``redis_queue_namespace_prefix``)."""

    def __init__(self, connection: Redis, name: str, classes: AppClasses, cluster: bool = False) -> None:
        """``cluster``: Redis Cluster (REDIS_CLUSTER), where the registration reads before it writes."""
        self.connection = connection
        self.name = name
        self.classes = classes
        self.key = keys.held(name)
        self.fenced_key = keys.fencing_fenced()
        """The fencers' marks: a worker marked there moves no job any more (``fencing``)."""
        self._take = connection.register_script(_TAKE)
        self._register = connection.register_script(_REGISTER_READ_FIRST if cluster else _REGISTER)
        self.retake = False
        """A Redis error may have lost a pop's reply or a registration: the next pop takes what is held
        first. Only then: an id handed to rq that stays held without an error (an app's execute_job
        that returns without starting it) is put back when the worker leaves, not served again in a loop."""
        self.in_hand: str | None = None
        """The id the last pop returned, until its registration (``worker.prepare_execution``)."""
        self.registered: str | None = None
        """The execution id of the last job this pop took and registered: its id never was in rq's
        intermediate list, so its STARTED mark sends no LREM there (``worker._mark_started``)."""
        self._quarantine = connection.register_script(_QUARANTINE)
        self._unless_suspended = connection.register_script(_UNLESS_SUSPENDED)
        self.suspended_key = WORKERS_SUSPENDED
        """rq's suspension flag (``rq suspend``), under the prefix rq was imported with."""
        self.suspended = False
        """The last pop came back empty because the workers are suspended (``rq suspend``)."""

    def pop(self, queue_keys: list[str], timeout: float | None, clock: Callable[[], float] = time.monotonic
            ) -> tuple[str | None, str] | None:
        """(queue key, job id) of the job now held, or None: nothing came within ``timeout`` seconds
        (None: do not wait). The queue key is None for an id that was held already (its job's origin
        says which queue). The take script (several queues, or a retake) raises ``Fenced`` once this
        worker is marked fenced, having moved nothing: its membership was revoked while it was silent.
        A one-queue pop (LMOVE, BLMOVE) does not read the marks: the registration does (``holds``).

        Nothing is taken while the workers are suspended (``rq suspend``): None at once, ``suspended``
        set. Stock rq looks at the suspension only between pops, so a worker already blocked in its pop
        when ``rq suspend`` runs takes the next job enqueued; here the take script looks first, and a
        job a blocking pop (BLMOVE) returns goes back to the head of its queue in one step if the
        workers were suspended meanwhile (``_UNLESS_SUSPENDED``). The one-queue LMOVE that is tried
        first does not look: it goes out right after the worker's own look (``check_for_suspension``),
        as rq's pop does."""
        self.suspended = False
        reply = self._take_one(queue_keys, retake=self.retake)
        self.retake = False
        if reply or self.suspended:
            return reply
        if timeout is None:
            return None
        blocking = get_version(self.connection) >= (6, 2, 0)  # BLMOVE (rq's own test; cached on the connection)
        if blocking and len(queue_keys) == 1:
            return self._blmove(queue_keys[0], timeout)
        deadline = clock() + timeout
        while (left := deadline - clock()) > 0:
            if blocking:
                taken = self._blmove(queue_keys[0], min(POLL, left))
                if taken is not None or self.suspended:
                    return taken
            else:
                time.sleep(min(POLL, left))
            reply = self._take_one(queue_keys, retake=False)
            if reply or self.suspended:
                return reply
        return None

    def _take_one(self, queue_keys: list[str], retake: bool) -> tuple[str | None, str] | None:
        if len(queue_keys) == 1 and not retake and get_version(self.connection) >= (6, 2, 0):
            # One queue: LMOVE, one command where the script costs four. It does not read the fenced
            # marks; the registration does (``holds``), as for the blocking pop below, and a fenced
            # worker's held id is put back as it exits (``Fencer.exit_fenced``) or by the sweep.
            job_id = self.connection.lmove(queue_keys[0], self.key, "LEFT", "RIGHT")
            return None if job_id is None else (queue_keys[0], as_text(job_id))
        reply = self._take(keys=[self.key, self.fenced_key, self.suspended_key, *queue_keys],
                           args=[int(retake), self.name])
        if reply == _TAKE_FENCED:
            raise Fenced(self.name)
        if reply == _TAKE_SUSPENDED:
            self.suspended = True
            return None
        return (as_text(reply[0]) or None, as_text(reply[1])) if reply else None

    def register(self, job_id: str, commands: list[Any]) -> bool:
        """Run ``commands`` (rq's registration, ``queued.flatten``) if ``job_id`` is still in this
        worker's held list, in one step with that look; whether it was. Raises ``Fenced`` once this worker is
        marked fenced, writing nothing: a pop served after its fencing (a blocking pop that outlived it, or
        one sent after it) is not started; the id stays held, for the worker to put back as it exits
        (``Fencer.exit_fenced``). The script takes the id out of the held list itself."""
        found = self._register(keys=[self.key, self.fenced_key], args=[job_id, self.name, *commands])
        if found == _TAKE_FENCED:
            raise Fenced(self.name)
        return bool(found)

    def _blmove(self, queue_key: str, timeout: float) -> tuple[str, str] | None:
        # (Redis takes a fractional timeout since 6.0; redis-py's hint says int)
        job_id = self.connection.blmove(queue_key, self.key, timeout, "LEFT", "RIGHT")  # type: ignore[arg-type]
        if job_id is None:
            return None
        job_id = as_text(job_id)
        back = self._unless_suspended(
            keys=[self.key, queue_key, self.suspended_key, self.classes.job_class.key_for(job_id)], args=[job_id])
        if back:  # blocked since before ``rq suspend``: it takes nothing
            self.suspended = True
            if back == 1:
                queue = queue_key.removeprefix(self.classes.queue_class.redis_queue_namespace_prefix)
                log.info("Job %s came to this worker's pop after `rq suspend`: put back at the head of queue %s, "
                         "for after `rq resume`", job_id, queue, extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": queue})
            return None
        return queue_key, job_id

    def ids(self, connection=None) -> list[str]:
        """What is held; ``connection``: read through it (a pipeline watching the list, before its MULTI)."""
        return [as_text(i) for i in (connection or self.connection).lrange(self.key, 0, -1)]

    def join(self) -> None:
        """Be found by the sweep of dead owners' lists (``put_back_dead``)."""
        self.connection.sadd(keys.holders(), self.name)

    def drop(self, job_id: str) -> None:
        """The job's hash is gone (rq skips such an id): nothing to run, nothing to keep."""
        self.connection.lrem(self.key, 1, job_id)

    def quarantine(self, job_id: str, queue: Queue, reason: str) -> bool:
        """A job rq cannot load: failed in its queue's FailedJobRegistry, with ``reason``, in one step
        with its removal from the held list; rq's data for it is left as it is apart from its status.
        Returns False when it was not held (any more)."""
        done = self._quarantine(keys=[self.key, queue.failed_job_registry.key, queue.job_class.key_for(job_id)],
                                args=[job_id, current_timestamp() + DEFAULT_FAILURE_TTL, utcformat(now()), reason,
                                      DEFAULT_FAILURE_TTL])
        if done:
            log.error("Job %s on queue %s cannot be loaded (%s): failed without running, in the failed registry; "
                      "the queue goes on", job_id, queue.name, reason,
                      extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": queue.name})
        return bool(done)

    def put_back(self) -> list[str]:
        """Everything this worker holds, back at the front of its queue (it is leaving, or starting anew)."""
        return put_back(self.connection, self.name, self.classes, owner_gone=False)

    def leave(self) -> None:
        """Put back what is held; the list is then empty and the owner no longer needs to be found."""
        self.put_back()
        self.connection.srem(keys.holders(), self.name)


def put_back(connection: Redis, owner: str, classes: AppClasses, *, owner_gone: bool, reason: str = "") -> list[str]:
    """Put ``owner``'s held jobs back at the front of their queues, newest first so that the oldest
    ends first; ``owner_gone``: only while its rq worker key does not exist (checked atomically with
    each move). ``classes``: the app's, whose keys the job's hash and its queue are at. Returns the ids
    put back."""
    key = keys.held(owner)
    script = connection.register_script(_PUT_BACK)
    done: list[str] = []
    for job_id in reversed([as_text(i) for i in connection.lrange(key, 0, -1)]):
        job_key = classes.job_class.key_for(job_id)
        raw = connection.hget(job_key, "origin")
        origin = as_text(raw) if raw else None
        queue_key = classes.queue(origin, connection).key if origin else job_key
        faults.reached("sweep.requeue")
        result = script(keys=[key, queue_key, job_key, worker_key(owner)],
                        args=[job_id, int(owner_gone), int(origin is not None)])
        if result == -1:
            break  # the owner is alive (again): what it holds is its own
        if result == 1:
            done.append(job_id)
            log.warning("Job %s was taken from queue %s by worker %s, which did not start it (%s); put back at the "
                        "front of the queue", job_id, origin, owner, reason or "it stopped or died first",
                        extra={"RQ_JOB_ID": job_id, "RQ_QUEUE": origin})
    return done


def put_back_dead(connection: Redis, living: str, classes: AppClasses) -> list[str]:
    """Every held list whose owner's rq worker key is gone, put back (any worker's sweep; ``living``
    is the sweeping worker, whose own list is its own business; ``classes``: the app's)."""
    done: list[str] = []
    owners = sorted(as_text(n) for n in connection.smembers(keys.holders()) if as_text(n) != living)
    if not owners:
        return done
    with connection.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(worker_key(owner))
        alive = pipe.execute()
    forget = connection.register_script(_FORGET_HOLDER)
    for owner in (o for o, up in zip(owners, alive, strict=True) if not up):
        done += put_back(connection, owner, classes, owner_gone=True, reason="its worker is gone")
        forget(keys=[keys.held(owner), worker_key(owner), keys.holders(), keys.fencing_deadlines(),
                     keys.fencing_fenced()], args=[owner])
    return done
