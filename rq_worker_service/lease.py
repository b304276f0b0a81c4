"""The horse lease: a work horse ends its job before anyone may fence its worker.

Fencing (``fencing``) lets a live worker re-run the jobs of a member whose main loop has been
silent for a whole period. A member whose main process alone is frozen (SIGSTOP, an uninterruptible
wait) is not dead, though: its horse runs on, and systemd's watchdog only kills the cgroup
TimeoutAbortSec after its abort, so the old run would go on beside the re-run. A whole process
group frozen past the period and resumed would do the same until the main loop's next beat.

So the main process writes, after each fencing beat of its main loop's ticks, the monotonic time
read before that beat into eight bytes of shared memory (a lease renewed before the beat, by a
process frozen between the two, would outlast what Redis saw of it), and the horse's own thread ends
the horse (SIGKILL to itself) once that time is older than the period less half a tick: before the
earliest moment another worker may fence this one. CLOCK_MONOTONIC is one clock for the whole
system, so the two processes' times compare. The memory is an anonymous file (memfd): a fork horse
inherits its mapping, a spawn horse opens it by its ``/proc/<pid>/fd/<n>`` path, given in its
environment.

Every tick renews the lease, whether its fencing beat went through or failed (not one answered
"fenced": the worker exits): during a Redis outage the main loop still ticks and beats fail for
every worker alike, and no worker fences after an outage, so an outage cuts no job. The cost is a
host cut off from Redis while others still reach it (a partition): it is fenced after the period,
and its horse runs on until its worker reaches Redis again (docs/operations.md).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Callable

log = logging.getLogger("rq_worker_service.worker")

LEASE_VAR = "RQ_WORKER_SERVICE_HORSE_LEASE"
"""Environment variable with the lease's path for the spawn horse, read and removed by ``horse``."""

CHECK_EVERY = 0.1
"""Seconds between two looks of the horse at the lease: a fencer may fence SWEEP_JITTER (0.25 s) short
of a whole period after the beat, and the lease ends half a tick before that period, so the look
must come well within the rest (half a tick less 0.35 s: 0.65 s at a 2 s tick, 4.65 s shipped)."""

_LAYOUT = struct.Struct("=dd")
"""The main loop's last tick, and the limit (seconds) beyond which the horse must end."""


class HorseLease:
    """The main loop's last tick, shared with its work horses."""

    def __init__(self, memory: mmap.mmap, fd: int) -> None:
        self.memory = memory
        self.fd = fd
        self.job_written = False
        """In a horse: its job's end is written (a spare's horse that said "done", ``prefork``): a silent
        main loop still ends it, without reporting a job cut that was not."""
        self._waiting: tuple[int, threading.Event, threading.Thread] | None = None
        """A spare horse's guard, started before its job and waiting for it (``start_guard``): its process."""

    @classmethod
    def create(cls, limit: float) -> HorseLease:
        """In the worker's main process, before its first horse: a lease of ``limit`` seconds."""
        fd = os.memfd_create("rq-worker-horse-lease")  # close-on-exec: no other program gets it
        os.ftruncate(fd, _LAYOUT.size)
        lease = cls(mmap.mmap(fd, _LAYOUT.size), fd)
        _LAYOUT.pack_into(lease.memory, 0, time.monotonic(), limit)
        return lease

    @classmethod
    def open(cls, path: str) -> HorseLease:
        """In a spawn horse: the lease its worker gave it (``path``)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return cls(mmap.mmap(fd, _LAYOUT.size, prot=mmap.PROT_READ), fd)

    @property
    def path(self) -> str:
        """Where another process of the same user opens this lease, while this process lives."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def renew(self, now: float) -> None:
        """A tick of the main loop (one eight-byte write)."""
        struct.pack_into("=d", self.memory, 0, now)

    def read(self) -> tuple[float, float]:
        """The last tick and the limit, read until two reads agree (a write may be under way)."""
        values = _LAYOUT.unpack_from(self.memory)
        while (again := _LAYOUT.unpack_from(self.memory)) != values:
            values = again
        return values

    def silent_for(self, now: float) -> float | None:
        """Seconds the main loop has been silent, once that is past the limit; else None."""
        last, limit = self.read()
        return now - last if now - last > limit else None

    def guard_horse(self, clock: Callable[[], float] = time.monotonic,
                    end: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGKILL)) -> threading.Thread:
        """In the horse: a thread that ends the horse once the main loop has been silent too long.

        A thread frozen along with the rest (its sleep overran) looks at the lease first thing on
        waking, as any other time: the job gets at most a few switch intervals of the GIL. In a spare
        horse the thread was started before its job (``start_guard``): it begins looking here."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting[0] == os.getpid():
            waiting[1].set()
            return waiting[2]
        return self.start_guard(clock, end, waiting=False)

    def start_guard(self, clock: Callable[[], float] = time.monotonic,
                    end: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGKILL),
                    waiting: bool = True) -> threading.Thread:
        """The guard's thread; ``waiting``: started by a spare horse before its job (a thread's start,
        0.4 ms of wall time on a no-op job's path, moved to where it waits for the job), it blocks
        without waking until ``guard_horse`` lets it look."""
        begin = threading.Event()
        if not waiting:
            begin.set()

        def watch() -> None:
            begin.wait()
            while True:
                silent = self.silent_for(clock())
                if silent is not None:
                    if not self.job_written:
                        log.error("The worker's main loop has been silent for %.0fs (frozen or hung): this horse ends "
                                  "its job now so that it never runs beside the re-run another worker may start",
                                  silent)
                        for handler in logging.getLogger().handlers:
                            handler.flush()
                    end()
                    return
                time.sleep(CHECK_EVERY)

        thread = threading.Thread(target=watch, name="horse-lease", daemon=True)
        thread.start()
        if waiting:
            self._waiting = (os.getpid(), begin, thread)
        return thread
