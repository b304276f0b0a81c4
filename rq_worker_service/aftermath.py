"""What follows a committed rescue that runs the app's code or waits on the network, off the rescuer's loop.

After a rescue's commit rq's order is: the job's failure callback (up to its timeout, 60 s by default),
the app's exception handlers (RQ_EXCEPTION_HANDLERS: no time limit at all, an error tracker's flush over
a slow network), then a failed job's ``failed`` webhooks (each up to its timeout). A rescue runs in the
main loop (a fencer's sweep, a worker's rescue of its own jobs) or before it (start-up). Run there, they
stopped the tick for as long as they took: no WATCHDOG=1 (systemd aborted the healthy rescuer, and the
job its own horse ran), no fencing beat (others fenced it) and no lease renewal (its horse ended its own
job). So each rescued job's aftermath runs on a thread of its own, in that order, once (a process that
dies before it ends skips the rest: at most once, as rq's own cleanup does for the steps after its
commit); the loop goes on ticking meanwhile.

The failure callback keeps its time limit off the main thread the way rq enforces one there
(``ThreadDeathPenalty``: it lands between two Python steps, so a callback blocked in one long C call sees
it when that call returns). An exception of the callback or of a handler is logged and ends that step
only; the other jobs' rescues never wait for it.

The restarted instance waits for its start-up rescue's callbacks and handlers (not the webhooks) before
its first pop (``settle``: pinging, and a stop ends it), so that it runs no job while the app's code still
handles a rescued one, as before. The process waits for the aftermaths still under way as it leaves
(``drain``): before a reload or a recycle re-executes it (which ends every thread at once, and the new
process cannot send what the old one had in hand), and at exit. It waits up to RQ_SHUTDOWN_TIMEOUT
(``configure``), pinging systemd's watchdog (armed during a reload) and extending a stop's timeout every
second meanwhile, and gives up on a job's webhooks once their own timeouts have passed (an endpoint that
trickles its reply). What it gives up on is logged, one line per webhook not sent, with the job's id and
the webhook's masked URL.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rq.callbacks import execute_failure_callback
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.webhook import Webhook

from . import faults, webhooks

log = logging.getLogger(__name__)

PING_EVERY = 1.0
"""Seconds between two keep-alives while ``drain`` waits: below any watchdog period a unit may set."""
DEFAULT_LIMIT = 90.0
"""Seconds ``drain`` waits at most until ``configure`` says otherwise (the unit's TimeoutStopSec)."""


class ThreadDeathPenalty(TimerDeathPenalty):
    """rq's timer-based time limit (``TimerDeathPenalty``: what rq uses where SIGALRM is not available), with an
    exception class of its own per use: rq's sets the message of the class it is given, process-wide, and
    JobTimeoutException is the class the SIGALRM limit of the jobs in the main thread raises too."""

    def __init__(self, timeout: int, exception: type[Exception] = JobTimeoutException, **kwargs: object) -> None:
        own = type(exception.__name__, (exception,), {"__module__": exception.__module__})
        super().__init__(timeout, own, **kwargs)


@dataclass
class Aftermath:
    """One rescued job's steps after the commit, and how far they got."""

    job: Job
    handlers: Sequence[Callable[..., object]]
    failure: str | None
    """The failure recorded when the rescue failed the job (its ``failed`` webhooks go out); None: re-queued."""
    hooks: list[Webhook] = field(default_factory=list)
    sent: int = 0
    """How many of ``hooks`` were sent (or given up by rq's send, which logs why)."""
    deadline: float | None = None
    """``time.monotonic()`` past which ``drain`` gives up: set once the webhooks are under way."""
    thread: threading.Thread | None = None
    handled: threading.Event = field(default_factory=threading.Event)
    """The callback and the handlers are over (the webhooks may be under way)."""

    def run(self) -> None:
        try:
            self.handle()
        finally:
            self.handled.set()
        faults.reached("rescue.callback")
        if self.failure is not None and self.hooks:
            self.deadline = time.monotonic() + webhooks.budget(self.hooks)
            for hook in self.hooks:
                webhooks.send(self.job, hook, self.failure)
                self.sent += 1

    def handle(self) -> None:
        """The app's code: the job's failure callback, then the exception handlers, as rq's cleanup calls them."""
        job = self.job
        try:
            execute_failure_callback(job, ThreadDeathPenalty, AbandonedJobError, AbandonedJobError(), None)
        except Exception:  # the app's callback must not stop the rest
            log.exception("failure callback of job %s raised during recovery", job.id)
        if self.handlers:
            try:
                call_exception_handlers(self.handlers, job, AbandonedJobError, AbandonedJobError(), None)
            except Exception:  # nor its handlers
                log.exception("an exception handler raised for job %s during recovery", job.id)

    def unsent(self) -> list[Webhook]:
        return self.hooks[self.sent:] if self.failure is not None else []


_pending: list[Aftermath] = []
"""Aftermaths not known to be over."""
_lock = threading.Lock()


def _nothing() -> None:
    """``drain``'s keep-alive until ``configure`` gives one (outside ``run``: tests, the command line)."""


_keepalive: Callable[[], None] = _nothing
_limit = DEFAULT_LIMIT


def configure(keepalive: Callable[[], None], limit: float) -> None:
    """What ``drain`` does while it waits (ping the watchdog, extend a stop's timeout), and for how long at most
    (RQ_SHUTDOWN_TIMEOUT: as long as a warm stop waits for a job)."""
    global _keepalive, _limit
    _keepalive, _limit = keepalive, limit


def follow(job: Job, handlers: Sequence[Callable[..., object]], failure: str | None) -> threading.Thread:
    """Run ``job``'s failure callback, ``handlers`` and (``failure`` given: the rescue failed it) its failed
    webhooks on a thread; returns the thread. ``job`` is the object the rescue read (the app's job class and
    serializer: the callback and the webhook's payload read its function)."""
    aftermath = Aftermath(job, handlers, failure, webhooks.failed(job) if failure is not None else [])
    aftermath.thread = threading.Thread(target=aftermath.run, name=f"aftermath {job.id}", daemon=True)
    with _lock:
        if not _pending:
            atexit.register(drain)  # (once per batch: drain unregisters it)
        _pending[:] = [a for a in _pending if a.thread is not None and a.thread.is_alive()] + [aftermath]
    aftermath.thread.start()
    return aftermath.thread


def settle() -> None:
    """At start-up, after the rescue of the predecessor's jobs: wait until their failure callbacks and exception
    handlers are over (not their webhooks), up to the configured limit and pinging meanwhile, so that this
    instance takes no job while the app's code still handles a rescued one, as before the loop ran them on
    threads (a stop ends the wait: ``startup.early``). Past the limit they go on running; ``drain`` takes them."""
    with _lock:
        waiting = [a for a in _pending if not a.handled.is_set()]
    if waiting:
        log.info("Waiting up to %gs for the failure callbacks and exception handlers of %d rescued job(s)", _limit,
                 len(waiting))
    end = time.monotonic() + _limit
    while waiting and time.monotonic() < end:
        _keepalive()
        waiting[0].handled.wait(max(0.0, min(PING_EVERY, end - time.monotonic())))
        waiting = [a for a in waiting if not a.handled.is_set()]  # (set however the steps ended)


def drain() -> int:
    """Wait for the aftermaths still under way, up to the configured limit, keeping the process alive in
    systemd's eyes meanwhile; returns how many were left unfinished (each webhook of theirs not sent logged)."""
    with _lock:
        pending, _pending[:] = list(_pending), []
        atexit.unregister(drain)
    end = time.monotonic() + _limit
    waiting = [a for a in pending if a.thread is not None and a.thread.is_alive()]
    if waiting:
        log.info("Waiting up to %gs for the failure callbacks, exception handlers and webhooks of %d rescued "
                 "job(s) before leaving", _limit, len(waiting))
    while waiting and time.monotonic() < end:
        _keepalive()
        first = waiting[0]
        until = min(end, first.deadline) if first.deadline is not None else end
        assert first.thread is not None
        first.thread.join(max(0.0, min(PING_EVERY, until - time.monotonic())))
        now = time.monotonic()
        waiting = [a for a in waiting if a.thread is not None and a.thread.is_alive()
                   and (a.deadline is None or now < a.deadline)]
    left = [a for a in pending if a.thread is not None and a.thread.is_alive()]
    for aftermath in left:
        unsent = aftermath.unsent()
        if not unsent:
            log.warning("Left job %s's failure callback or exception handlers unfinished as this process leaves",
                        aftermath.job.id)
        for hook in unsent:
            webhooks.log_unsent(aftermath.job.id, hook)
    return len(left)
