"""rq's job webhooks (rq 2.10+) for the ends this package decides itself.

rq sends a job's webhooks from the path that writes its end, once that end is committed: the worker
(finished, failed, retries exhausted), its monitor when the horse died, and its
``StartedJobRegistry.cleanup`` for a job whose worker died (failed, ``AbandonedJobError``). A job
this package ends itself never passes there: one rescued after its worker was killed (the restarted
instance's recovery), one a fencer rescued from a silent worker, one whose worker could not record
its end. Each of those that ends failed (no retry left) sends its ``failed`` webhooks here, after
the rescue's commit (``recovery.after_claim``), with rq's own ``Job.send_webhooks``: the same
payload (``exc_info`` is the failure the rescue recorded), method, headers and timeout, and a send
that fails is logged, never raised, and changes nothing about the job. A job the rescue re-queues
sends nothing now: its final end sends. Cold stops and a horse's death go through rq's worker path,
which sends them itself.

A rescue runs in the main loop (a fencer's sweep) or before it (start-up), where a slow endpoint
must not hold the loop past its watchdog: the webhooks are sent on a thread of their own, and the
process waits for them (each up to its timeout) only as it leaves (``drain``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

MARGIN = 1.0
"""Seconds ``drain`` waits beyond a send's own timeout, for the reply already on its way."""

_pending: list[tuple[threading.Thread, float]] = []
"""Sends not known to be done: the thread and its deadline (``time.monotonic``)."""
_lock = threading.Lock()


def send_failed(job: Job, exc_string: str) -> threading.Thread | None:
    """Send ``job``'s ``failed`` webhooks as rq does once it has recorded a failure, on a thread; the
    thread, or None when the job has none. ``job`` must be the object read for the rescue (the app's
    job class and serializer: its payload reads the job's function name)."""
    webhooks = [webhook for webhook in job.webhooks if webhook.job_status == JobStatus.FAILED]
    if not webhooks:
        return None
    deadline = time.monotonic() + sum(webhook.timeout for webhook in webhooks) + MARGIN  # rq sends them in turn
    thread = threading.Thread(target=job.send_webhooks, args=(JobStatus.FAILED,), kwargs={"exc_string": exc_string},
                              name=f"webhooks {job.id}", daemon=True)
    with _lock:
        if not _pending:
            atexit.register(drain)  # (once per batch: drain unregisters it)
        _pending[:] = [(t, d) for t, d in _pending if t.is_alive()] + [(thread, deadline)]
    thread.start()
    return thread


def drain() -> int:
    """Wait for the sends still under way, each until its deadline; returns how many were left unfinished.

    Called as the process leaves: at exit, and before a reload re-executes it (which would end the
    threads at once). The deadline is the sum of the job's timeouts (rq sends its webhooks one after
    the other, each with its own): a send still going past it is to an endpoint that trickles its
    reply, which the process does not wait for."""
    with _lock:
        pending, _pending[:] = list(_pending), []
        atexit.unregister(drain)
    left = 0
    for thread, deadline in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left += 1
    if left:
        log.warning("Left %d job webhook send(s) unfinished past their timeout as this process exits", left)
    return left
