"""The next work horse, forked while the current job runs, handed its job over a pipe (``RQ_PREFORK``).

A fork worker's job waited for its horse's start: the ``fork()`` of a 35 MB process and the child's
first steps (copy-on-write faults of its stack and of what it touches first, its process group, its
signals) took 2.5 ms of wall time between the worker's fork and the horse's first line of rq, a
fifth of a no-op job's cycle (bench, one instance). A spare horse is forked right after the current
horse (the core that runs the job is not the one that forks) and waits on a pipe; the next job is
written to it, and it runs that job as a freshly forked horse would.

Still one process per job: a spare runs at most one job and exits; it imports no job code before
its job (it is a copy of the worker, which does not either). What it is handed is what a fork
would have copied and that changed since the spare was forked: the job (its attributes as the
worker has them after the pop and ``apply_job_defaults``; the arguments as their serialized bytes,
deserialized in the horse as in rq's), the execution the registration created, the held list's
registration (``Held.registered``: the end script reads it), the lifecycle's cut reason, and the
journal fields. The queue is rebuilt from its name with the worker's classes, as the pop built it.

The hand-over is a handshake, so that a job is never left with a spare that cannot run it: the
worker writes the message (its length first); the spare reads it, rebuilds the job, the execution and
the queue, and answers "ready"; only then does the worker say "go", and only "go" starts the job. A
spare that does not answer within ``HANDOVER_WITHIN`` (frozen: SIGSTOP, a debugger; or too slow) or
answers that it could not rebuild the job is killed and reaped before anything else happens, and the
job's horse is forked as before: the spare never runs a job the worker did not hand it, and a job the
worker handed is run by nobody else. Before its "go" the worker ticks when due (the hand-over held
its loop): the horse's lease is renewed, or a worker fenced meanwhile (frozen between "ready" and
"go") exits there, its spare dying with it, the job not started.

The job's horse is also forked as before when the job cannot be pickled (an app's job class with
something unpicklable on it), when the spare is gone (an operator's kill, the OOM killer: its pipe
refuses the write), or when what the spare copied is not what the worker uses now (a new Redis client
or connection settings: a Sentinel failover; the settings object). A spare that cannot be forked
(EAGAIN at the unit's TasksMax=, ENOMEM) is skipped: the next job's horse is forked as before. A spare
is killed and reaped when the worker leaves (stop, reload, recycle: ``retire``); the kernel kills it
with its worker otherwise (``die_with_parent``). It has its own process group from its fork on, set by
both processes (the usual fork-and-setpgid race: rq's ``kill_horse`` kills the horse's group).

The horse a spare became says "done" on the same pipe once its job's end is written (``done``), the
last step before its ``os._exit(0)``: the worker takes its next job while that process exits (the exit
of a 35 MB forked process, and the worker's wake from ``wait4``: ≈1.7 ms of wall time on a no-op
job's path) and reaps it later (``reap``: around each pop and at each spare's fork; ``settle``: before
an idle worker's wait, for up to ``REAP_WITHIN``). "Done" stands for
the exit status 0 that rq's monitor would have read, and nothing else: a horse that ends any other
way (its job raised out of rq's ``perform_job``, a kill, the OOM killer, a crash) writes nothing, the
worker sees it end (its pidfd: the pipe may live on in a process the job forked), and reads its
status from ``wait4`` as rq does. Only the horse itself says it, and only into that pipe (a job may
fork, or close its inherited descriptors and reuse their numbers). Its peak memory, as ``wait4``
gives it (``RQ_MAX_MEMORY``), comes with the "done".

Where this costs: a second process per instance (its own memory is the pages it and the worker
write after the fork: docs/benchmarks.md), and the worker's own writes between jobs now copy pages,
as they did only while a horse ran. ``RQ_PREFORK=auto`` forks no spare while the CPUs are busy
(``Contention``). Only our own fork worker class (an app's subclass may keep state of its own
between the pop and the fork that a spare would not see).
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import select
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from rq.executions import Execution
from rq.job import UNEVALUATED, Job
from rq.queue import Queue

from . import faults, journal
from .process import die_with_parent
from .rqcompat import job_func

if TYPE_CHECKING:
    from .worker_classes import ServiceWorker

log = logging.getLogger("rq_worker_service.worker")

_DESERIALIZED = ("_func_name", "_instance", "_args", "_kwargs")
"""What rq's job holds once it deserialized its data (its ``func_name``, ``args``, ``kwargs`` read them):
sent as the data's bytes instead, so that the horse deserializes them with the job's own serializer,
as rq's horse does with the job it was forked with."""

_CHUNK = 65536
_HEADER = struct.Struct("=Q")
"""The message's length, ahead of it."""

HANDOVER_WITHIN = 1.0
"""Seconds the worker gives a spare to read its message and answer "ready": a spare frozen (SIGSTOP) or
starved past it is killed and the job's horse forked as before, rather than waited for. The main loop
does not tick meanwhile: well within a fencing period (3 s at the shortest watchdog)."""

REAP_WITHIN = 0.5
"""Seconds the worker waits for a killed spare to be reaped; one that takes longer (in uninterruptible
sleep) is reaped later, between jobs, rather than holding the worker's loop."""

READY, NOT_READY, GO = b"+", b"-", b"g"
_DONE = struct.Struct("=cQ")
"""The horse's "done" and its peak memory (``ru_maxrss``, KiB): one write, shorter than a pipe's atomic size."""
DONE = b"d"


EXIT_POLL = 0.05
"""Seconds between looks at whether the running horse has exited, where the kernel gives no pidfd."""


@dataclass
class Released:
    """What ``wait4`` would have given the worker for a horse that said "done": its peak memory."""

    ru_maxrss: int


@dataclass
class Release:
    """In a spare's horse: where its "done" goes, and who may write it."""

    fd: int
    pid: int
    """The horse itself: a process the job forked inherits the descriptor, and may return through rq's end."""
    pipe: tuple[int, int]
    """The pipe's device and inode: a job that closed its inherited descriptors may have reused the number."""


@dataclass
class Spare:
    """A forked horse waiting for its job, as the worker sees it."""

    pid: int
    pipe: int
    """The write end of the pipe to the spare."""
    answers: int
    """The read end of the pipe from the spare: its "ready", then its "done"."""
    born_with: tuple[Any, dict[str, Any], Any]
    """The worker's Redis client, its connection settings and its settings object at the fork."""
    exits: int | None = None
    """Once it runs a job: a pidfd of it, readable when it has exited (None where the kernel has none)."""


class Prefork:
    """The worker's spare horse: forked after each horse, handed the next job."""

    def __init__(self, worker: ServiceWorker, auto: bool = False) -> None:
        self.worker = worker
        self.contention = Contention() if auto else None
        """RQ_PREFORK=auto: no spare while the CPUs this worker may use are busy."""
        self.spare: Spare | None = None
        self.running: Spare | None = None
        """The spare that took the current job, until it said "done" or ended."""
        self.unreaped: list[int] = []
        """Killed spares not reaped yet (``REAP_WITHIN``), and horses that said "done" and are exiting."""
        self.release: Release | None = None
        """In a spare's horse: where its "done" goes."""
        self.cannot_fork: str | None = None
        """Why the last spare could not be forked, told once until one can."""

    def _now(self) -> tuple[Any, dict[str, Any], Any]:
        connection = self.worker.connection
        return connection, dict(connection.connection_pool.connection_kwargs), self.worker.settings

    def prepare(self) -> int | None:
        """Fork the spare (in the worker, right after the current horse's fork, while it runs); its pid.
        None when there is none to fork now, or it could not be forked (the job's horse is then forked)."""
        self.reap()
        parts = self.worker.parts
        if self.spare is not None or parts.lease is None or parts.lifecycle.stopping:
            return None  # (the lease exists from the first tick on: a spare forked before it would run without)
        if self.contention is not None and self.contention.busy():
            return None
        fds: list[int] = []
        try:
            to_spare, from_spare = os.pipe(), os.pipe()
            fds = [*to_spare, *from_spare]
            pid = os.fork()
        except OSError as exc:  # EAGAIN (TasksMax=, a pids limit), ENOMEM, EMFILE: the job's horse is forked
            for fd in fds:
                os.close(fd)
            if self.cannot_fork != exc.strerror:
                log.warning("Cannot fork a spare horse (%s): each job's horse is forked as the job is taken until "
                            "one can be", exc.strerror)
            self.cannot_fork = exc.strerror
            return None
        if pid == 0:
            os.close(to_spare[1])
            os.close(from_spare[0])
            self._wait_and_run(to_spare[0], from_spare[1])
        os.close(to_spare[0])
        os.close(from_spare[1])
        os.set_blocking(to_spare[1], False)
        try:
            os.setpgid(pid, pid)  # (the child does the same: whichever comes first)
        except OSError:
            pass  # it exited already
        self.spare = Spare(pid, to_spare[1], from_spare[0], self._now())
        self.cannot_fork = None
        return pid

    def take(self, job: Job, queue: Queue) -> int | None:
        """Hand ``job`` to the spare; its pid, or None when the caller forks a horse as before."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        if not self._same(spare.born_with):
            self._end(spare)
            return None
        try:
            message = pickle.dumps(self._message(job, queue), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001  (anything a pickle of an app's objects may raise)
            log.debug("Job %s cannot be handed to a spare horse (%s): forking its horse", job.id, exc)
            self._end(spare)
            return None
        deadline = time.monotonic() + HANDOVER_WITHIN
        if not _send(spare.pipe, _HEADER.pack(len(message)) + message, deadline) \
                or _answer(spare.answers, deadline) != READY:
            # Gone (killed, OOM), frozen, too slow, or it could not rebuild the job: it has not started
            # it (only "go" starts it), and it is dead before the job's horse is forked.
            log.info("The spare horse %d did not take job %s: forking its horse", spare.pid, job.id)
            self._end(spare)
            return None
        faults.reached("spare.ready")
        # The hand-over held the main loop (up to HANDOVER_WITHIN, a freeze here): the tick, when due,
        # renews the horse's lease before the job may start, or ends a worker fenced meanwhile (its
        # spare dies with it). A stale lease ended the horse at its start, a run that never happened
        # taken for a horse that died under its job (second review).
        self.worker.parts.horse_starting()
        try:
            os.write(spare.pipe, GO)  # (a byte in an empty pipe: never blocks)
        except OSError:  # gone since its "ready": it never had "go", the job's horse is forked
            self._end(spare)
            return None
        os.close(spare.pipe)
        spare.exits = _pidfd(spare.pid)
        self.running = spare
        return spare.pid

    def wait(self, pid: int) -> tuple[int, int, Released] | None:
        """The end of the horse ``pid`` as rq's ``wait4`` gives it (status 0), once it said "done"; None
        when it is not a spare's or it ended without saying so (the caller's ``wait4`` then reads how).

        Blocks like ``wait4``, inside rq's monitor: its alarm (the monitor's interval, a wake) raises
        out of the ``select`` as out of the ``wait4``, and the next call waits again."""
        running = self.running
        if running is None or running.pid != pid:
            return None
        said = _said(running)  # (an alarm here leaves it running: the next call waits again)
        # The monitor's alarm held back while it is let go: one between its two closes left a pidfd open
        # (fourth review). One that comes meanwhile raises after, the "done" lost: rq's wait4 reads the exit.
        held_back = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self.running = None
            _close_fds(running)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held_back)
        if len(said) != _DONE.size or said[:1] != DONE:
            return None  # it ended without a "done": it has exited or is exiting
        self.unreaped.append(pid)
        return pid, 0, Released(_DONE.unpack(said)[1])

    def done(self) -> None:
        """In a spare's horse, its job's end written and rq's ``os._exit(0)`` next: the worker may go on."""
        release = self.release
        if release is None or os.getpid() != release.pid:
            return  # (a process the job forked, returning through rq's end: its horse is still running)
        # The peak as wait4 gives it: this process's or that of the largest process of its job it waited for.
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        try:
            if _identity(release.fd) != release.pipe:
                return  # the job closed the pipe and the number is one of its files now: the worker waits for the exit
            os.write(release.fd, _DONE.pack(DONE, peak))
        except OSError:  # closed by the job, or the worker is gone (this process dies with it)
            return
        lease = self.worker.parts.lease
        if lease is not None:
            lease.job_written = True  # (its lease may still end it, frozen in its exit: no job of its is cut)
        faults.reached("horse.released")

    def reap(self) -> None:
        """Reap what has ended of the killed spares and the horses that said "done"; never waits."""
        for pid in list(self.unreaped):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass
            self.unreaped.remove(pid)

    def settle(self) -> None:
        """The queues are empty: wait for the horses that said "done" to exit (``REAP_WITHIN`` at most), so
        that an idle worker does not keep a finished horse as a zombie until its next job."""
        self._reap_within(REAP_WITHIN)

    def retire(self) -> None:
        """The worker leaves (stop, reload, recycle): the spare is killed and reaped, and so are the horses
        that said "done" and have not exited yet (their jobs' ends are written). A reload or a recycle
        re-executes the worker in place, whose new image would never reap them: they would stay zombies,
        and one frozen in its exit alive (no parent's death to end it)."""
        spare, running, self.spare, self.running = self.spare, self.running, None, None
        if running is not None:
            _close_fds(running)
        if spare is not None:
            self._end(spare)
        for pid in self.unreaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap_within(REAP_WITHIN)

    def _same(self, born_with: tuple[Any, dict[str, Any], Any]) -> bool:
        connection, kwargs, settings = self._now()
        return connection is born_with[0] and kwargs == born_with[1] and settings is born_with[2]

    def _end(self, spare: Spare) -> None:
        """Kill a spare that has no job, and reap it (within ``REAP_WITHIN``, else later)."""
        os.close(spare.pipe)
        os.close(spare.answers)
        try:
            os.kill(spare.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.unreaped.append(spare.pid)
        self._reap_within(REAP_WITHIN, spare.pid)

    def _reap_within(self, seconds: float, pid: int | None = None) -> None:
        """Reap ``pid`` (else all that are unreaped) for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        self.reap()
        while (pid in self.unreaped if pid is not None else self.unreaped) and time.monotonic() < deadline:
            time.sleep(0.005)
            self.reap()

    def _message(self, job: Job, queue: Queue) -> dict[str, Any]:
        execution = self.worker.execution
        if execution is None or execution.job_id != job.id:
            raise ValueError("no execution of this job")  # (rq's API called directly: never our pop's)
        return pack(job, execution) | {
            "queue": queue.name,
            "registered": self.worker.parts.held.registered,
            "cut_reason": self.worker.parts.lifecycle.cut_reason,
            "func": job_func(job),
        }

    # -- in the spare ---------------------------------------------------------------------------

    def _wait_and_run(self, read: int, answer: int) -> NoReturn:
        """The spare's life; never back into the worker's code (rq's horse ends with os._exit too)."""
        code = 1
        try:
            code = self._life(read, answer)
        except BaseException:  # noqa: BLE001
            log.exception("A spare horse failed before its job began")
        finally:
            os._exit(code)

    def _life(self, read: int, answer: int) -> int:
        """Set up as a horse, wait for the job, run it (``main_work_horse`` exits); 0 without a job."""
        worker = self.worker
        os.setpgrp()
        worker.setup_work_horse_signals()
        die_with_parent(worker.parts.main_pid)
        worker._handoff.adopt()  # the connection the worker opened for its next horse, now this one's
        if worker.parts.lease is not None:
            worker.parts.lease.start_guard()  # (its thread waits; the job's main_work_horse lets it look)
        data = _receive(read)
        if not data:
            return 0  # retired before it had a job
        try:
            message = pickle.loads(data)
            handed = self._rebuilt(message)
        except Exception:
            log.exception("A spare horse could not rebuild the job handed to it: its horse is forked instead")
            os.write(answer, NOT_READY)  # (then the worker kills this process)
            return 1
        os.write(answer, READY)
        if os.read(read, 1) != GO:
            return 0  # the worker gave up on this spare (too slow to answer): the job's horse is forked
        self.release = Release(answer, os.getpid(), _identity(answer))
        self._run(message, *handed)
        return 1  # (main_work_horse exits: never here)

    def _rebuilt(self, message: dict[str, Any]) -> tuple[Job, Execution, Queue]:
        job, execution = restore(message, self.worker.connection)
        return job, execution, self.worker._queue(name=message["queue"])

    def _run(self, message: dict[str, Any], job: Job, execution: Execution, queue: Queue) -> None:
        worker = self.worker
        worker.executions.clear()  # (the job running when the spare was forked)
        worker.execution = execution
        worker.parts.held.registered = message["registered"]
        worker.parts.lifecycle.cut_reason = message["cut_reason"]
        os.environ["RQ_WORKER_ID"] = worker.name
        os.environ["RQ_JOB_ID"] = job.id
        journal.set_job(job.id, message["func"], queue.name)
        worker.main_work_horse(job, queue)


class Contention:
    """RQ_PREFORK=auto: whether the CPUs are too busy for a spare horse, from the idle time of the CPUs
    this process may run on (its affinity: a unit's AllowedCPUs=) over each ``WINDOW`` seconds or more
    (``/proc/stat``, I/O wait counted as idle): busy below ``BUSY_BELOW`` of a CPU idle, free again
    above ``FREE_ABOVE`` (between the two the last answer stands, so that a spare's own CPU or a
    neighbour's burst does not flip it each window).

    A spare costs CPU (its fork while the job runs, and the worker's writes between jobs then copy
    pages it shares with the spare: ≈1 ms of a no-op job's 9–11 ms here) and takes the fork off the
    job's path, which pays only where a CPU is free to fork. Measured with no-op fork jobs on two
    cores (plain processes; docs/benchmarks.md for the same under systemd): one worker with its spare
    left 0.6 of a CPU idle (0.9 without) and ran 1.3× the jobs/s without; two workers left 0.13–0.15,
    and with spares ran 0.7×. When busy, the next horse is forked as the job is taken, as rq does;
    other programs keeping the CPUs busy count the same."""

    WINDOW = 1.0
    BUSY_BELOW = 0.2
    FREE_ABOVE = 0.4
    PATH = "/proc/stat"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpus: Callable[[], set[int]] = lambda: os.sched_getaffinity(0)) -> None:
        self.clock = clock
        self.cpus = cpus
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.since: tuple[float, float] | None = None
        self.answer = False

    def busy(self) -> bool:
        """The last window's answer (False until one was measured; True if /proc/stat cannot be read)."""
        now = self.clock()
        if self.since is not None and now - self.since[0] < self.WINDOW:
            return self.answer
        try:
            idle = self._idle_seconds()
        except (OSError, ValueError, IndexError):  # (no /proc: rq's way)
            self.answer = True
            return True
        if self.since is not None:
            idle_cpus = (idle - self.since[1]) / (now - self.since[0])
            if idle_cpus < self.BUSY_BELOW:
                self.answer = True
            elif idle_cpus > self.FREE_ABOVE:
                self.answer = False
        self.since = (now, idle)
        return self.answer

    def _idle_seconds(self) -> float:
        """Idle and I/O-wait time of the CPUs this process may use, since boot, in seconds."""
        mine = self.cpus()
        total = 0
        with open(self.PATH) as stat:
            for line in stat:
                name, _, values = line.partition(" ")
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in mine:
                    fields = values.split()
                    total += int(fields[3]) + int(fields[4])
        return total / self.ticks


def pack(job: Job, execution: Execution) -> dict[str, Any]:
    """The job and its execution as the worker has them, without their connection (``restore``)."""
    state = {name: value for name, value in vars(job).items() if name != "connection"}
    unevaluated = {name for name, value in state.items() if value is UNEVALUATED}
    if isinstance(state.get("_data"), bytes):
        unevaluated.update(_DESERIALIZED)  # deserialized in the horse from the bytes, as a fetch would
    for name in unevaluated:
        state.pop(name, None)
    return {"job_class": type(job), "job": state, "unevaluated": sorted(unevaluated),
            "execution": {name: value for name, value in vars(execution).items() if name not in ("connection", "_job")}}


def restore(message: dict[str, Any], connection: Any) -> tuple[Job, Execution]:
    """The job and the execution a message carries, on the horse's ``connection``."""
    job_class = message["job_class"]
    job = job_class.__new__(job_class)
    vars(job).update(message["job"])
    for name in message["unevaluated"]:
        setattr(job, name, UNEVALUATED)
    job.connection = connection
    execution = Execution.__new__(Execution)
    vars(execution).update(message["execution"])
    execution.connection = connection
    execution._job = job
    return job, execution


def _said(running: Spare) -> bytes:
    """What the running horse wrote after its "ready": its "done", or b"" once it ended without one.

    Its pipe alone does not say that it ended: a process its job forked (a helper, a multiprocessing
    child) inherited the write end and may outlive it. So the horse's pidfd is watched too (where
    there is none, its exit is looked at every ``EXIT_POLL`` seconds, without reaping it)."""
    watched = [running.answers] if running.exits is None else [running.answers, running.exits]
    while True:
        readable = select.select(watched, [], [], EXIT_POLL if running.exits is None else None)[0]
        if running.answers in readable:
            return os.read(running.answers, _DONE.size)  # (b"" at the pipe's end)
        if running.exits in readable or (running.exits is None and _exited(running.pid)):
            # Ended; a "done" written just before is in the pipe (the pidfd was seen first)
            return os.read(running.answers, _DONE.size) if select.select([running.answers], [], [], 0)[0] else b""


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # no pidfd (a kernel before 5.3, a seccomp filter): polled instead
        return None


def _exited(pid: int) -> bool:
    """Whether the child ``pid`` has exited, leaving it to be reaped."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _close_fds(running: Spare) -> None:
    try:
        os.close(running.answers)
    finally:  # (whatever the first raised)
        if running.exits is not None:
            os.close(running.exits)


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _send(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of ``data`` to the spare's pipe by ``deadline``; False if it could not."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a message larger than the pipe's buffer, read as the spare goes
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                return False
        except OSError:  # EPIPE: the spare is gone
            return False
    return True


def _answer(fd: int, deadline: float) -> bytes:
    """The spare's answer, or b"" if none came by ``deadline`` (or it is gone)."""
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            return os.read(fd, 1)
    return b""


def _receive(fd: int) -> bytes:
    """The worker's message (its length first), or b"" once the pipe is closed without one."""
    header = _read_exactly(fd, _HEADER.size)
    return _read_exactly(fd, _HEADER.unpack(header)[0]) if header else b""


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes, or b"" at the end of the pipe before any (another process forked from the worker,
    its scheduler, may hold a copy of the write end: the length, not the end of the pipe, ends a message)."""
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, _CHUNK))
        if not chunk:
            if got:
                raise EOFError(f"the worker's message ended after {got} of {size} bytes")
            return b""
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
