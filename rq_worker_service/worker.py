"""rq's worker, hooked into systemd: readiness, status, watchdog, warm/cold shutdown and reload.

We subclass rq's own Worker classes and use the hooks its loop already has, instead of writing a
loop of our own, so job semantics stay rq's (the differences are listed, with reasons, in
tests/rq_suite/expected.txt). The pieces:

* ``heartbeat()`` runs around every blocking pop, ``maintain_heartbeats()`` on every monitor tick
  while the horse runs: both drive the tick of the service's parts (watchdog, fencing, Sentinel,
  stop/reload announcements and cuts, counters, STATUS=, scheduler take-over, sweeps), at a third
  of WatchdogSec, so a hung main loop is what stops the pings; between jobs only when due. The
  mixin only adapts rq's hooks to the parts, held in one attribute (``self.parts``) so that none
  of their state lands in rq's namespace.
* Signal handlers only record the request in the ``Lifecycle`` and make the next tick come now,
  except a stop while blocked in the pop with nothing in hand: it raises rq's StopRequested.
* The pop (``held``) moves the id into the worker's own held list, from one queue or several; the
  registration (``prepare_execution``) takes it out in the same transaction. Once the reply is in
  hand the job is started; what a stop leaves held is put back at the front as the worker leaves.
* SIGHUP finishes the running job, then the runner re-executes the process in place.
"""

from __future__ import annotations

import math
import os
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
from rq import Worker
from rq.callbacks import execute_failure_callback
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import AbandonedJobError, NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.suspension import WORKERS_SUSPENDED, is_suspended
from rq.utils import as_text, now
from rq.worker import SHUTDOWN_SIGNAL, BaseWorker, WorkerStatus

from . import ending, faults, journal, keys, persisted, queued, startup
from .config import Settings
from .connection import REDIS_ERRORS
from .fencing import Fenced
from .notify import Notifier
from .parts import log
from .parts.assembly import ServiceParts
from .process import die_with_parent
from .recovery import apply_job_defaults, put_back_unstarted, record_interruption
from .rqcompat import HORSE_DIED, STUCK_IN_INTERMEDIATE, job_func
from .scheduling import start_scheduler

SUSPENSION_POLL = 1.0
"""Seconds between two looks at ``rq suspend``'s flag while suspended (rq's own: 1 s)."""

PREPARE_RETRIES = (0.5, 1.0, 2.0)
"""Seconds waited before each retry of the STARTED mark after a Redis error (``prepare_job_execution``)."""

if TYPE_CHECKING:
    _Base = Worker  # what the mixin is mixed into, for the type checker
else:
    _Base = object


class NotHeld(Exception):
    """The popped job left this worker's held list before its registration: someone put it back."""


_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
""" + queued.run_flattened(2) + """
return 1
"""
"""Run the commands in ARGV[2…] (each: its length, then its words) only while KEYS[1] exists and the worker
ARGV[1] is not marked fenced in KEYS[2], at once. 0: the execution is gone; -1: the worker is fenced."""


class EndNotWritten(Exception):
    """Redis failed while the end of a job that returned was written (its ``__cause__``)."""


class TakenBack(Exception):
    """This worker's execution of a job is gone: a rescue claimed it while the worker was silent
    (frozen, cut off) and the job is queued, failed or running elsewhere now."""


class ServiceWorkerMixin(_Base):
    """Everything systemd-specific; mixed in front of one of rq's worker classes."""

    def __init__(self, *args: Any, settings: Settings, notifier: Notifier, **kwargs: Any) -> None:
        self.settings = settings
        self.parts = ServiceParts(settings, notifier)  # first: rq's __init__ sets job_monitoring_interval
        kwargs.setdefault("job_monitoring_interval", self._monitoring_interval(settings))
        kwargs.setdefault("maintenance_interval", settings.maintenance_interval)
        if kwargs.get("default_worker_ttl") is None:  # (rq's deprecated spelling yields to worker_ttl only)
            kwargs.setdefault("worker_ttl", settings.worker_ttl)
        # rq logs a job's call with its arguments (rq's --disable-job-desc-logging); the spawn horse
        # gets this from the same settings, and from rq's _dump_worker_config, a fork horse as a copy.
        kwargs.setdefault("log_job_description", not settings.disable_job_desc_logging)
        super().__init__(*args, **kwargs)
        self.max_connection_wait_time = self.parts.retry_every
        self.parts.attach(self)

    # -- timing -------------------------------------------------------------------------------

    def _monitoring_interval(self, settings: Settings) -> int:
        """RQ_JOB_MONITORING_INTERVAL, at most a tick: each look at the job is a tick (watchdog ping,
        fencing beat, lease), so a longer one would let the watchdog abort the worker, or the fencing
        take it for lost, while a job runs. Its parser refuses what no unit's tick allows; a unit whose
        WatchdogSec= makes the tick shorter shortens it (told once): refused, a reload would end in exit 78."""
        tick = int(self.parts.interval)
        wanted = settings.job_monitoring_interval
        if wanted is None:
            return tick
        if wanted > tick:
            log.warning("RQ_JOB_MONITORING_INTERVAL=%d is longer than this unit's tick of %ds (a third of "
                        "WatchdogSec=): using %ds; lower it, or raise WatchdogSec= to %ds", wanted, tick, tick,
                        3 * wanted)
        return min(wanted, tick)

    @property
    def dequeue_timeout(self) -> int:
        """rq blocks up to worker_ttl-15 s (405 s) in BLPOP; we come back every tick instead (under
        Sentinel every FAILOVER_RETRY seconds, to look for a new primary)."""
        return max(1, min(self.worker_ttl - 15, int(self.parts.retry_every)))

    @property
    def job_monitoring_interval(self) -> int:
        """Monitor tick while a job runs; shortened to land on the shutdown deadline when stopping."""
        return self.parts.lifecycle.wait_interval(self.parts.monitoring_interval)

    @job_monitoring_interval.setter
    def job_monitoring_interval(self, value: int) -> None:
        self.parts.monitoring_interval = int(value)

    def _stop_job(self) -> None:
        """Cut the running job (fork and spawn: kill the horse; the failure is then recorded)."""
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)

    # -- rq's hooks ---------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or self.is_horse:
            super().heartbeat(timeout, pipeline)
            return
        if self.parts.popping and self._stop_requested:
            raise StopRequested()  # the stop came just before the pop: nothing is in hand yet
        self.parts.between_jobs()
        if self.parts.rq_beat_due(timeout):
            self.parts.guard.call(super().heartbeat, timeout)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        self.parts.tick()
        self.parts.guard.call(super().maintain_heartbeats, job, execution)  # the job goes on meanwhile

    def check_for_suspension(self, burst: bool) -> None:
        """rq's wait while the workers are suspended (``rq suspend``), with the tick going on.

        rq's own sleeps in a loop of its own, one second at a time, with no tick: systemd's watchdog
        restarted a suspended instance every WatchdogSec. Here the loop ticks (watchdog pings, fencing
        beats, STATUS=Suspended), sets the worker's rq state to suspended as rq does (``rq info``), and
        a stop or reload ends it at once. rq ends the worker when its look fails; here the pop that
        follows waits for Redis instead. Burst mode leaves at once, as rq does."""
        if burst:
            self.parts.guard.call(super().check_for_suspension, burst)
        else:
            self._wait_while_suspended()

    def _wait_while_suspended(self) -> bool:
        """Wait while ``rq suspend`` holds (rq's look, which beats too, once a second); whether it did."""
        if not self._suspended():
            return False
        self.log.info("Worker %s: suspended, run `rq resume` to resume", self.name)  # rq's line
        before = self.parts.guard.call(self.get_state)
        self.parts.suspended = True
        try:
            self.parts.guard.call(self.set_state, WorkerStatus.SUSPENDED)
            self.procline("Suspended (rq suspend)")
            self.parts.status.send()
            while not self._stop_requested:
                self.heartbeat()  # the tick when due: watchdog, fencing beat, STATUS=
                self.parts.woken.wait(SUSPENSION_POLL)  # a stop or reload wakes it (``_shutdown``)
                if self._stop_requested or self.parts.guard.call(is_suspended, self.connection, self) == 0:
                    break  # (None: Redis did not answer; the wait goes on, the tick reports the outage)
        finally:
            self.parts.suspended = False
        if before and not self._stop_requested:
            self.parts.guard.call(self.set_state, before)
        if not self._stop_requested:
            log.info("Worker %s: resumed (rq resume, or the suspension's --duration ended)", self.name)
            self.parts.status.send()
        return True

    def _suspended(self) -> int | None:
        """rq's look at ``rq suspend``'s flag before each pop (None: Redis did not answer), at most once
        per SUSPENSION_POLL (0: not looked at, as the last look found it). rq's look sends its worker
        heartbeat along, in a transaction: MULTI, HSET, EXPIRE ×2, EXISTS, EXEC, six commands per job;
        the beat goes with it only when due (``rq_beat_due``), else the flag's EXISTS is the one command.
        A worker taking one job after another sees a suspension within a second, one command per job
        less; a worker waiting in its pop sees it as the pop returns a job (``held``). After a pop that
        took nothing (its wait timed out, or it came back empty for the flag) the look is made at once:
        an idle worker's pop lasts about SUSPENSION_POLL, and skipping a look there could let a short
        ``rq suspend --duration`` pass unseen (and the one-queue LMOVE that follows does not look)."""
        if self.parts.clock() < self.parts.next_suspension_look and self.parts.last_pop_took:
            return 0
        self.parts.next_suspension_look = self.parts.clock() + SUSPENSION_POLL
        if self.parts.rq_beat_due(None):
            return self.parts.guard.call(is_suspended, self.connection, self)
        return self.parts.guard.call(self.connection.exists, WORKERS_SUSPENDED)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """rq's, noting which state Redis acknowledged (``parts.state_written``).

        rq's IDLE at the end of each job is kept in this process only (``get_state`` says it): Redis is told
        by the next pop, once it finds the queues empty (``_pop``). A worker that takes one job after
        another stays BUSY in Redis (``rq info``) in between, one command per job less; an idle one shows
        IDLE as soon as it waits."""
        if state == WorkerStatus.IDLE and pipeline is None and self.parts.lifecycle.job is not None \
                and not self.is_horse:
            self._state = state  # (rq's own step, without its HSET)
            return
        self.parts.state_written = None
        super().set_state(state, pipeline)
        if pipeline is None:
            self.parts.state_written = state

    def run_maintenance_tasks(self) -> None:
        self.parts.guard.call(super().run_maintenance_tasks)  # tried again on the next pass of the loop

    def clean_registries(self) -> None:
        """rq's registry maintenance, after putting back what rq's cleanup would drop and lose: jobs
        registered and never started whose entry expired (``recovery.put_back_unstarted``)."""
        for queue in self.queues:
            put_back_unstarted(queue, self.settings)
        super().clean_registries()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:
        """rq's loop around the pop, with our pop (``held``): the id goes into this worker's held list
        in the same step that takes it from its queue, from one queue or several, in rq's order.

        While blocked with nothing in hand, a stop may interrupt the pop (``_shutdown``); once the
        reply is in hand the stop flag no longer matters: the job is started, and a stop that
        raised in between leaves the id in the held list, which the worker puts back as it leaves.
        After a Redis error the id of a reply that was lost on the way may be held already: it is
        taken from the held list first (``held``). No tick runs between the pop and the registration.
        A worker marked fenced (woken after another revoked its membership) pops nothing and exits."""
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = now()
        wait = 1.0
        looked = True  # rq's loop looked at the suspension just before
        try:
            while True:
                self.parts.popping = True  # nothing in hand (an id held after an error is put back on a stop)
                try:
                    if not looked and self._wait_while_suspended():
                        idle_since = now()  # as in rq, whose pop starts after its wait
                    looked = False
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    self.heartbeat()  # last before the pop: a pop goes out at most a tick after a beat (``fencing``)
                    if timeout is not None and max_idle_time is not None:
                        timeout = min(timeout, max(1, math.ceil(max_idle_time - (now() - idle_since).total_seconds())))
                    reply = self._pop(timeout)
                    if reply is None:
                        if timeout is None:
                            return None  # burst: nothing left
                        if max_idle_time is not None and (now() - idle_since).total_seconds() >= max_idle_time:
                            self.parts.idle_out(max_idle_time)
                            return None
                        continue
                    result = self._fetch_popped(*reply)
                    if result is not None:
                        break
                except REDIS_ERRORS as exc:  # a reply lost on the way is in the held list: the next pop's
                    self.parts.held.retake = True
                    self.parts.outage.failed(exc)
                    self.heartbeat()  # the tick (watchdog, STATUS=); a stop that came meanwhile ends here
                    self._raise_if_stopping()
                    time.sleep(wait)
                    wait = min(wait * self.exponential_backoff_factor, self.max_connection_wait_time)
        except redis.exceptions.ResponseError as exc:
            self.parts.guard.exit_if_fatal(exc)  # a refusal, a moved cluster slot: one line, and out
            raise
        except Fenced:  # woken after its fencing: the pop moved nothing
            self.parts.fencer.exit_fenced()
        except StopRequested:  # carried out now: the flag (its backup) is left unset, as rq leaves it when idle
            self._stop_requested = False
            raise
        finally:
            self.parts.popping = False
        job, queue = result
        if self.log_job_description:  # rq's line (journal.PICKED_UP)
            self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        else:
            self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
        self.parts.follower.look()  # under Sentinel: a job popped from a replaced primary is rescued
        if self.parts.rq_beat_due(None):
            self.parts.guard.call(super().heartbeat)  # rq's beat after the pop, without the tick
        return result

    def _raise_if_stopping(self) -> None:
        """Before a wait of the idle loop (the pop, the backoff after a Redis error): a stop's handler
        raises StopRequested where it lands, and that is lost inside a library that catches every
        Exception (sdnotify's send, logging's emit: the tick does both) after the heartbeat's look at the
        flag; the wait then ran its whole length (a tick) before the stop was seen. The flag stays."""
        if self._stop_requested:
            raise StopRequested()

    def _pop(self, timeout: int | None) -> tuple[str | None, str] | None:
        """(queue key, job id) of the job now in hand (held), or None when none came in time. The
        queue key is None for an id that was held already (a reply lost on the way).

        A stop is looked at once more right before the pop blocks (``_raise_if_stopping``). Unless Redis
        says IDLE already, a first look takes a waiting job without a wait, and IDLE is written only when
        it finds none (``set_state``), before the wait."""
        self._raise_if_stopping()
        held, queue_keys = self.parts.held, [queue.key for queue in self._ordered_queues]
        if self.parts.state_written == WorkerStatus.IDLE:
            reply = held.pop(queue_keys, timeout)
        else:
            reply = held.pop(queue_keys, None)
            if reply is None:
                if self.parts.prefork is not None:
                    self.parts.prefork.settle()  # the last horse, exiting: reaped before the worker idles
                self.parts.guard.call(self.set_state, WorkerStatus.IDLE)
                if timeout is not None and not held.suspended:
                    reply = held.pop(queue_keys, timeout)
        self.parts.last_pop_took = reply is not None
        if reply is not None:
            self.parts.popping = False  # in hand: from here on the job is started, whatever comes
            self.parts.held.in_hand = reply[1]
            faults.reached("pop.reply")
        return reply

    def _fetch_popped(self, queue_key: str | None, job_id: str) -> tuple[Job, Queue] | None:
        """The job and its queue, as rq's ``_fetch_dequeued_job``; a job whose hash is gone is dropped
        (rq skips it), one rq cannot load is failed at once (``held.Held.quarantine``): None for both."""
        held = self.parts.held
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except redis.exceptions.RedisError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, NoSuchJobError) and not self.connection.exists(self.job_class.key_for(job_id)):
                held.drop(job_id)
            else:
                origin = self.connection.hget(self.job_class.key_for(job_id), "origin")
                queue = (self._queue(queue_key=queue_key) if queue_key else
                         self._queue(name=as_text(origin) if origin else self._ordered_queues[0].name))
                held.quarantine(job_id, queue, reason)
            return None
        faults.reached("pop.fetched")
        job.redis_server_version = self.get_redis_server_version()
        if queue_key is None:  # held already: no pop to reorder the queues after
            return job, self._queue(name=job.origin)
        queue = self._queue(queue_key=queue_key)
        self.reorder_queues(reference_queue=queue)
        return job, queue

    def _queue(self, *, queue_key: str | None = None, name: str | None = None) -> Queue:
        """A queue of rq's queue class, built as rq builds the queue of a popped job."""
        if queue_key is not None:
            return self.queue_class.from_queue_key(queue_key, connection=self.connection, job_class=self.job_class,
                                                   serializer=self.serializer,
                                                   death_penalty_class=self.death_penalty_class)
        return self.queue_class(name or "default", connection=self.connection, job_class=self.job_class,
                                serializer=self.serializer, death_penalty_class=self.death_penalty_class)

    def prepare_execution(self, job: Job) -> Execution:
        """rq's registration (the execution, the StartedJobRegistry entry, BUSY), and the id leaves the
        held list in the same step: a popped job is never in neither.

        One script (``Held.register``) takes the id out of the held list and runs rq's writes, only while
        the id is still held: a worker frozen
        with the id in hand past its fencing deadline, or whose rq worker key expired meanwhile, had its
        held list put back by another (``held.put_back``); that job is queued or running elsewhere now,
        and starting it here too would run it twice at once (``NotHeld``). Nor once this worker is marked
        fenced (``Fenced``: a pop served to it after its fencing; its caller exits, putting the id back).
        A WATCH, a read, MULTI and EXEC did the same at three more commands per job.

        A reply lost with the link is sent again once (redis-py may resend it too): an id no longer held
        then is registered if the execution this call created exists (its id is new, so only an applied
        earlier attempt wrote it). A job this worker did not pop (rq's API called directly, as rq's own
        tests do) is registered as rq does."""
        if job.id != self.parts.held.in_hand:
            return super().prepare_execution(job)
        self.parts.held.in_hand = None
        with self.connection.pipeline(transaction=False) as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            # rq's worker heartbeat of the STARTED mark, sent here (``_mark_started``): its HSET joins BUSY's
            # and its EXPIRE of the worker's executions replaces the one just before (``queued.compact``)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            commands = queued.flatten(pipeline)
        try:
            registered = self.parts.held.register(job.id, commands)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            registered = self.parts.held.register(job.id, commands)  # (a second error goes to execute_job)
        if not registered and not self.connection.exists(execution.key):
            raise NotHeld(job.id)
        self.parts.held.registered = execution.id
        self.executions[execution.id] = execution
        faults.reached("job.registered")
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """rq's step that marks the job STARTED (in the horse; in a simple worker's main thread).

        Only while this execution is still registered and this worker is not marked fenced: a worker
        frozen between its registration and this mark past its fencing deadline had the job put back
        by its fencer (its claim marks it, then ``recovery.claim`` deletes the execution); running it
        here too would run it twice at once, and marking it STARTED would overwrite what the other
        run wrote (``TakenBack``, and nothing is written). Sent again after a Redis error: rq's
        ``perform_job`` takes any exception here for the job's own, so a dropped link failed a job
        that never ran, with no retry; the writes (STARTED, heartbeats, persist) are the same when
        sent twice. A longer outage still fails it."""
        for wait in (*PREPARE_RETRIES, None):
            try:
                self._mark_started(job, remove_from_intermediate_queue)
                break
            except REDIS_ERRORS:
                if wait is None:
                    raise
                time.sleep(wait)
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")

    def _mark_started(self, job: Job, remove_from_intermediate_queue: bool) -> None:
        """rq's ``prepare_job_execution`` writes, committed only while our execution exists.

        rq's own methods queue the writes on a pipeline that is never executed; its commands go to
        Redis in one script that runs them only if the execution's hash exists and this worker is not
        marked fenced (``_IF_EXISTS``). A
        WATCH, EXISTS, MULTI and EXEC around them did the same at two more commands per job. A horse looks
        at the mark too: its lease ends it before its worker may be fenced, but a whole process group frozen
        and thawed after a fencing runs the horse's main thread beside the lease's thread until that one
        ends it, and the fencer's rescue may not have taken the execution yet (review of issue 31)."""
        execution = getattr(self, "execution", None)
        if execution is not None and execution.job_id != job.id:
            execution = None  # rq's API called directly, for a job this worker is not executing
        ours = execution is not None and execution.id == self.parts.held.registered
        with self.connection.pipeline() as pipeline:
            if not ours:  # (our registration sent rq's worker heartbeat of this step: ``prepare_execution``)
                self.heartbeat(self.get_heartbeat_ttl(job), pipeline=pipeline)
            # (rq's job.heartbeat here is left out: prepare_for_execution writes last_heartbeat too)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if remove_from_intermediate_queue and not ours:  # (rq's API: our pop never uses rq's intermediate list)
                pipeline.lrem(self.queue_class(job.origin, connection=self.connection).intermediate_queue_key,
                              1, job.id)
            if execution is None:
                pipeline.execute()
                return
            flat = queued.flatten(pipeline)
        if self._if_exists(keys=[execution.key, keys.fencing_fenced()], args=[self.name, *flat]) != 1:
            raise TakenBack(job.id)

    @property
    def _if_exists(self) -> Any:
        return self.connection.register_script(_IF_EXISTS)

    def _finalize_success(self, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
        """rq's end of a job that returned; a Redis error while it is written is not the job's failure
        (``EndNotWritten``, handled in ``_finalize_failure``)."""
        try:
            super()._finalize_success(job, queue, execution, return_value)
        except ending.RecordedElsewhere:
            return  # (no FINISHED webhook, no "Job OK": its end is not this run's)
        except REDIS_ERRORS as exc:
            raise EndNotWritten(exc) from exc

    def _finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info: Any) -> None:
        """A job taken back before it started here (``TakenBack``) is not this worker's to fail: nothing
        is written; a horse then exits 0, and its worker leaves the job to where it is now.

        Nor is a job whose end could not be written because Redis failed after it returned (a failover,
        a dropped link: ``EndNotWritten``). rq took that for the job's exception: it logged the Redis
        error's traceback as the job's, ran the job's failure callback and the exception handlers (Sentry)
        for a job that succeeded, then met the outage again. Here one warning, and the Redis error goes
        on: a horse exits 1 and its worker records it as a horse lost under the job, a simple worker's
        loop meets it as a lost Redis around the job (``parts.job_lost``); either way the job is
        re-queued once Redis answers unless its end was recorded after all (a reply lost with the link)."""
        if isinstance(exc_info[1], EndNotWritten):
            cause = exc_info[1].__cause__
            log.warning("Lost Redis while recording the end of job %s (%s), which returned: %s; it is re-queued "
                        "once Redis answers unless its end was recorded", job.id, job_func(job), cause,
                        extra={"RQ_JOB_ID": job.id, "RQ_QUEUE": queue.name})
            raise cause  # type: ignore[misc]
        if isinstance(exc_info[1], TakenBack):
            log.warning("Job %s was put back on its queue while this worker was silent (frozen or cut off) between "
                        "registering it and starting it: not running it here", job.id,
                        extra={"RQ_JOB_ID": job.id, "RQ_QUEUE": queue.name})
            return
        super()._finalize_failure(job, queue, execution, exc_info)

    def wait_for_horse(self) -> Any:
        self.parts.in_horse_wait = True
        prefork = self.parts.prefork
        try:
            # A spare's horse says "done" as its job's end is written, and is reaped later (``prefork``).
            reaped = (prefork.wait(self.horse_pid) if prefork is not None else None) or super().wait_for_horse()
        finally:
            self.parts.in_horse_wait = False
        rusage = reaped[2] if reaped else None
        if rusage is not None:
            self.parts.recycler.horse_ended(rusage.ru_maxrss)  # RQ_MAX_MEMORY
        return reaped

    def stop_loop(self) -> None:
        """rq's loop takes no other job and ends before its next pop (a recycle, ``parts.recycling``)."""
        self._stop_requested = True

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        """Any kill of the horse from this side (an operator's kill-horse or stop-job command, rq's
        hard timeout, our cut) is deliberate: its death is not a crash, so no default retry."""
        self.parts.horse_killed = True
        super().kill_horse(sig)

    def bootstrap(self, logging_level: str | None = "INFO", date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                  log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        journal.set_worker(self.name)
        self._install_signal_handlers()  # early: a stop during start-up is graceful too
        startup.early.hand_over()  # what came before these handlers existed, carried out now
        super().bootstrap(logging_level, date_format, log_format)
        self.parts.started()

    def teardown(self) -> None:
        if not self.is_horse:
            faults.reached("stop.teardown")
            self.parts.teardown()
        super().teardown()

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT, log_format: str = DEFAULT_LOGGING_FORMAT
                         ) -> None:
        if burst:  # enqueue what is due, then leave: rq's own way, nothing to take over later
            super()._start_scheduler(burst, logging_level, date_format, log_format)
            return
        self.scheduler = start_scheduler(self, logging_level, date_format, log_format)

    def execute_job(self, job: Job, queue: Queue) -> None:
        apply_job_defaults(job, self.settings)
        func = job_func(job)
        self.parts.job_started(job.id, func, queue.name)
        try:
            super().execute_job(job, queue)
            faults.reached("job.ended")
        except Fenced:  # a pop served after its fencing: not started, the id held
            self.parts.fencer.exit_fenced()
        except NotHeld:
            log.warning("Job %s (%s) was put back on queue %s while this worker was silent (frozen or cut off) "
                        "between taking it and starting it: not starting it here", job.id, func, queue.name,
                        extra={"RQ_JOB_ID": job.id, "RQ_QUEUE": queue.name})
            self.parts.guard.call(self.set_state, WorkerStatus.IDLE)
        except redis.exceptions.ResponseError as exc:
            self.parts.guard.exit_if_fatal(exc)  # a refusal, a moved cluster slot: one line, and out
            raise
        except REDIS_ERRORS as exc:  # (a registration that did not happen left the id held: the next pop's)
            # Only before the horse starts or after it ended: while it runs every Redis call of
            # ours goes through the guard. rq would end the worker for this; we go on.
            self.parts.job_lost(job.id, func, exc)
        finally:
            self.parts.job_ended()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent(self.parts.main_pid)
        if self.parts.lease is not None:
            self.parts.lease.guard_horse()  # ends this horse before anyone may fence its worker
        # The horse opens its own connections (redis-py's pool notices the fork) and lives for one
        # job: a health-check PING before its first command would be one more round trip per job.
        self.connection.connection_pool.connection_kwargs["health_check_interval"] = 0
        super().main_work_horse(job, queue)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """rq calls this first thing after the job's function returned or raised, before it writes the end.

        A simple worker runs the job in its main process: frozen with it past its fencing and woken,
        the job was re-queued (perhaps run elsewhere) and its end is not this worker's to write. So
        when its last beat that went through is older than half a period (only then may a fencer
        have claimed it) it beats first, and exits there if fenced (``Fencer.exit_fenced``); otherwise
        no Redis call is added. A horse's end needs no check: its lease ends it before any fencing.

        rq's own step writes the job's ``last_heartbeat`` alone (one HSET, a round trip per job); every
        end that follows (finished, failed, retried, scheduled, stopped) saves the whole job hash, which
        carries it, so it is only set here. An app's worker class that overrides the step gets rq's, and so
        does a worker without rq's default exception handler (RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER, rq's
        -d), whose failed job's end writes its status alone."""
        faults.reached("job.performed")
        if not self.is_horse and self.parts.fencer.membership.may_be_fenced():
            self.parts.fencer.beat()
        rqs = super().handle_execution_ended
        # (rq -d: a failed job's end writes its status alone, not the hash; rq's HSET then stays)
        if getattr(rqs, "__func__", None) is not BaseWorker.handle_execution_ended \
                or self.disable_default_exception_handler:
            rqs(job, queue, heartbeat_ttl)
            return
        job.ended_at = job.last_heartbeat = now()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution) -> None:
        """rq's end of a job that returned, written by a simple worker only while it is not marked fenced.

        The look in ``handle_execution_ended`` can be passed just before a pause (a stopped process,
        a paused VM) longer than the period: the fencer re-runs the job, and the woken worker would
        write FINISHED and a second result over the re-run's. rq writes the end in one transaction
        after ``WATCH``ing the job's dependents (its loop retries on ``WatchError``); right after that
        watch (rq's ``move_dependents_to_ready``, before its ``MULTI``) this worker watches the
        fencing marks too and reads its own: marked, it exits there (``Fencer.exit_fenced``), writing
        nothing; a fencing after the read fails rq's ``EXEC``, and rq's retry reads the mark again.
        Two round trips per job. A horse needs none: its lease ends it before any fencing.

        A job this worker popped, without dependents, ends by one script instead (``ending``), with the
        same look at the fencing mark for a simple worker."""
        rqs = super().handle_job_success
        if ending.applies(self, job, queue, execution, rqs):
            done = ending.write_success(self, job, queue, execution)
            if done == ending.FENCED:
                self.parts.fencer.exit_fenced()
            if done != ending.DEPENDENTS:
                return
        if self.is_horse:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        move = queue.move_dependents_to_ready

        def unless_fenced(job: Job, pipeline: Any = None, **kwargs: Any) -> Any:
            self._watch_the_fencing(pipeline)
            return move(job, pipeline=pipeline, **kwargs)

        queue.move_dependents_to_ready = unless_fenced  # type: ignore[method-assign,assignment]
        try:
            super().handle_job_success(job, queue, started_job_registry, execution)
        finally:
            del queue.move_dependents_to_ready

    def _watch_the_fencing(self, pipeline: Any) -> None:
        """On rq's watched pipeline, before its ``MULTI``: watch the fencing marks; exit if ours is set."""
        pipeline.watch(keys.fencing_fenced())
        if pipeline.hexists(keys.fencing_fenced(), self.name):
            self.parts.fencer.exit_fenced()

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "", execution: Execution | None = None) -> None:
        """Record a job cut off under its worker as interrupted, with the default retry if it has none.

        Not when a rescue took the job from this worker meanwhile (the worker was silent, and fenced):
        the job is queued, failed or running elsewhere, and a retry written here would queue it twice."""
        if not self.is_horse and execution is not None and self._claimed_by_a_rescue(queue, execution):
            log.warning("Job %s (%s) was rescued by another worker while this one was silent; its end here is not "
                        "recorded (%s)", job.id, job_func(job), exc_string.strip(),
                        extra={"RQ_JOB_ID": job.id, "RQ_QUEUE": queue.name})
            return
        reason = None
        if not self.is_horse:
            reason = self.parts.lifecycle.cut_reason
            if exc_string.startswith(HORSE_DIED):
                # A horse that ended itself for its lease (``lease``): this worker may have been fenced
                # meanwhile, the job re-queued and run elsewhere; then it is not ours to record.
                self.parts.fencer.beat()
            if reason is None and exc_string.startswith(HORSE_DIED) and not self.parts.horse_killed:
                reason = f"the work horse died under the job ({exc_string.strip().rstrip(';')})"
            elif reason is None and exc_string.startswith(STUCK_IN_INTERMEDIATE):
                reason = "its worker died after taking it from the queue, before starting it"
        if reason is not None and reason == self.parts.lifecycle.cut_reason and self.parts.horse_killed \
                and exc_string.startswith(HORSE_DIED):
            self._run_failure_callback_of_a_cut(job, reason)
        if reason is not None:
            exc_string = f"JobInterrupted: {reason}"
            retry = record_interruption(job, exc_string, self.name, self.settings)
            log.warning("Job %s (%s) %s; %s", job.id, job_func(job), reason,
                        "it will be retried" if retry else "no retries left, it is failed")
        with persisted.watching(self, job.id):  # rq swallows a Redis error here; it is raised again
            super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                       execution=execution)

    def handle_job_retry(self, job: Job, queue: Queue, retry: Any, started_job_registry: Any,
                         execution: Execution) -> None:
        """rq's step for a job that returned ``Retry``: its FAILED end, once ``max`` is used up, swallows
        a Redis error as ``handle_job_failure`` does; it is raised again (``persisted``)."""
        with persisted.watching(self, job.id):
            super().handle_job_retry(job, queue, retry, started_job_registry, execution)

    def _run_failure_callback_of_a_cut(self, job: Job, reason: str) -> None:
        """The app's failure callback of a job whose fork or spawn horse this worker killed for a cold
        stop: the job never saw the cut, so its horse ran none. Stock rq's cold stop leaves such a job
        to its abandoned-job cleanup, which runs the callback with ``AbandonedJobError`` (a simple
        worker's job has ``JobInterrupted`` raised inside it, and rq's worker runs the callback with
        that). Before the end is written, as rq does; a callback that raises changes nothing."""
        try:
            execute_failure_callback(job, self.death_penalty_class, AbandonedJobError, AbandonedJobError(reason),
                                     None)
        except Exception:
            log.exception("The failure callback of job %s raised after the cut", job.id)

    def _claimed_by_a_rescue(self, queue: Queue, execution: Execution) -> bool:
        """Whether a rescue took this execution's StartedJobRegistry entry (its claim removes it; the
        execution's own hash is no sign: it also expires with its heartbeat TTL near a job's limit).
        A Redis error says nothing: rq's own write that follows meets it too."""
        try:
            return self.connection.zscore(queue.started_job_registry.key, execution.composite_key) is None
        except REDIS_ERRORS:
            return False

    # -- signals: record, then let the tick act -------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self.parts.handlers_pid = os.getpid()
        super()._install_signal_handlers()
        signal.signal(signal.SIGHUP, self.request_reload)

    def _handled_here(self, signum: int) -> bool:
        """False in a process forked from the worker before it set handlers of its own (the
        scheduler just after its fork, a worker pool's new worker): there the signal takes its
        default action, as it would without us. rq's handlers raise StopRequested in any process,
        which ends such a child by accident; ours only record, so they must not act for another."""
        if self.parts.handlers_pid in (None, os.getpid()):  # None: called directly, not as a handler
            return True
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum):
            self.parts.lifecycle.request_stop(signal.Signals(signum).name)
            self._shutdown()

    request_force_stop = request_stop  # rq's cold stop: our rules for a second signal apply (cut, record, retry)

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        if self._handled_here(signum) and self.parts.lifecycle.request_reload():
            self._shutdown()

    def _shutdown(self) -> None:
        """Take no new job. Only while blocked in the pop with nothing in hand, return from it at once.

        rq raises StopRequested whenever the worker is not BUSY, which includes the moment between
        popping a job and starting it: the popped job was then lost.
        """
        self._stop_requested = True  # even when raising: an `except Exception` in rq's maintenance may swallow it
        if self.parts.popping:
            raise StopRequested()
        self.parts.wake()
