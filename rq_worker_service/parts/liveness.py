"""The parts that keep the worker alive and its jobs safe: the watchdog, the Sentinel primary,
the worker's own lost jobs, fencing (``fencing.Membership``), and the machine and boot it runs on."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import NoReturn

from redis import Redis

from .. import exits, host
from ..classes import app_classes
from ..config import RedisTarget, Settings
from ..fencing import Lost, Membership
from ..held import put_back
from ..lifecycle import Lifecycle
from ..notify import Notifier
from ..recovery import forget_worker, rescue_executions
from . import Part, log
from .guard import RedisGuard

FAILOVER_RETRY = 2
"""Under Redis Sentinel: the longest blocking pop, and the longest wait between reconnection
attempts (rq's pop backs off 1, 2, 2 … seconds). A primary the sentinels replaced keeps serving
its old clients until they convert it to a replica, ≈10 s later (a manual failover) or until it
comes back (a crash): the tick that follows each pop asks the sentinels, so a worker moves to the
new primary within this many seconds, where a tick (10 s by default) would be the bound."""


class HostRecord(Part):
    """Adds this machine's and this boot's ids (``host``) to the worker's hash rq has just registered:
    a restarted instance reads them to tell a dead predecessor from a live one on another machine
    with the same host name (``recovery.refuse_if_alive``)."""

    def __init__(self, connection: Redis, key: Callable[[], str]) -> None:
        self.connection = connection
        self.key = key
        """The worker's hash (rq's ``worker.key``)."""

    def started(self) -> None:
        fields = host.identity().fields()
        if fields:
            self.connection.hset(self.key(), mapping=fields)  # type: ignore[arg-type]


class Watchdog(Part):
    """Pings systemd's watchdog from each tick of a live worker: a hung main loop stops the pings."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def beat(self) -> None:
        self.notifier.watchdog()


class OwnRescue(Part):
    """Jobs of this worker whose end may be lost (Redis went away around the job, or the primary
    changed under it): between jobs, once Redis answers, any started entry of ours is one of those."""

    def __init__(self, name: str, lifecycle: Lifecycle, rescue: Callable[[str], object]) -> None:
        self.name = name
        self.lifecycle = lifecycle
        self.rescue = rescue
        """Re-queues what this worker has started (``recovery.rescue_executions``), for the reason given."""
        self.lost: str | None = None
        """Why a job's end may be lost, until the rescue ran."""

    def mark(self, reason: str) -> None:
        self.lost = reason

    def sweep(self) -> None:
        if self.lost is not None and self.lifecycle.job is None:
            self.rescue(f"its worker {self.name} could not record its end: {self.lost}")
            self.lost = None


class PrimaryFollower(Part):
    """Under Sentinel: asks for the primary every ``FAILOVER_RETRY`` seconds at most (each look asks a
    sentinel) and moves to a new one; the jobs around the change may have their end on the old one."""

    def __init__(self, target: RedisTarget, primary: str | None, refresh: Callable[[], str | None],
                 guard: RedisGuard, rescue: OwnRescue, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.primary = primary
        """host:port of the primary in use (None unless under Sentinel), for the status line."""
        self.refresh = refresh
        """Connects to the primary the sentinels name now; returns it (``connection.refresh_primary``)."""
        self.guard = guard
        self.rescue = rescue
        self.clock = clock
        self.next_look = 0.0

    def beat(self) -> None:
        self.look()

    def look(self) -> None:
        if self.target.sentinels is not None and self.clock() >= self.next_look:
            self.next_look = self.clock() + FAILOVER_RETRY
            self.guard.call(self.follow)  # a call that did not touch Redis must not count as Redis answering

    def follow(self) -> None:
        """Move to the primary the sentinels name now, and say so when it changed."""
        current = self.refresh()
        previous = self.primary
        if current and current != previous:
            self.primary = current
            if previous is None:
                return
            log.warning("Following the new Redis primary %s of %s (was %s): the sentinels failed over", current,
                        self.target.sentinels and self.target.sentinels.master, previous)
            # A job in hand, or one that ended since the last look, may have its end recorded on the
            # old primary only: the new one still shows it started, by us. Re-queue it between jobs.
            self.rescue.mark(f"the Redis primary changed from {previous} to {current} around it")


class Fencer(Part):
    """This worker's membership (``fencing``): it beats from each live tick, exits once fenced, and
    from the main loop's sweeps (between jobs, and while a fork or spawn horse runs one) fences the
    members that went silent and re-runs what they were running."""

    def __init__(self, membership: Membership, guard: RedisGuard, queue_names: Callable[[], list[str]],
                 settings: Settings, host: Callable[[], str]) -> None:
        self.membership = membership
        self.guard = guard
        self.queue_names = queue_names
        self.settings = settings
        self.host = host

    def started(self) -> None:
        previous = self.membership.join(self.host(), os.getpid(), self.queue_names())
        if previous:
            log.warning("Rejoining: this worker had been fenced by %s", previous.get("by", "?"))

    def beat(self) -> None:
        if self.guard.call(self.membership.beat) is False:
            self.exit_fenced()

    def sweep(self) -> None:
        for lost in self.membership.claim_lost():
            self.fence(lost)

    def teardown(self) -> None:
        self.guard.call(self.membership.leave)

    def fence(self, lost: Lost) -> None:
        """Shut a lost worker out and re-run what it was running, now (see ``fencing``)."""
        connection, name = self.membership.connection, self.membership.name
        queues = lost.queues or self.queue_names()
        if not self.membership.still_fenced(lost):
            log.warning("Worker %s rejoined before this worker could fence it: left alone", lost.name)
            return
        killed = self.membership.kill_connections(lost)
        forget_worker(connection, lost.name, queues)
        if not self.membership.still_fenced(lost):  # (checked again: the steps above may have been slow)
            log.warning("Worker %s rejoined while this worker fenced it: its jobs are its own", lost.name)
            return
        reason = (f"worker {lost.name} on host {lost.host} stopped beating (frozen, cut off or its host lost) and "
                  f"was fenced by {name}")
        rescued = rescue_executions(connection, lost.name, queues, self.settings, reason, at_once=True)
        put_back(connection, lost.name, app_classes(self.settings), owner_gone=True,  # popped, not started
                 reason=f"it was fenced by {name}")
        self.membership.record(lost, [r.job_id for r in rescued])
        log.warning("Fenced worker %s on host %s (pid %s): no beat for %.0fs by this worker's clock (period %.0fs); "
                    "closed %d of its Redis connections, rescued %d job(s)%s", lost.name, lost.host, lost.pid or "?",
                    lost.silent, lost.period, killed, len(rescued), "".join(f" {r.job_id}" for r in rescued))

    def exit_fenced(self) -> NoReturn:
        """Another worker fenced this one while it was silent and took over its jobs: take no other
        job, stop the one in hand (it was requeued), and exit so that systemd restarts us cleanly.

        What a pop served after the fencing left in our held list is put back first: the fencer put
        back what was held when it fenced, a sweep puts back a list only once its owner's rq key is
        gone (our own beats may have written it again since), and the restarted instance, which would
        put it back too, may be long in coming (a host that stays down)."""
        connection, name = self.membership.connection, self.membership.name
        self.guard.call(lambda: put_back(connection, name, app_classes(self.settings), owner_gone=False,
                                         reason=f"{name} was fenced"))
        self.guard.exit_now(f"worker {self.membership.name} was fenced: it was silent for over "
                            f"{self.membership.period:.0f}s and another worker re-queued its jobs; exiting without "
                            "taking another job so that systemd restarts it", exits.TEMPFAIL, errno.ESTALE)
