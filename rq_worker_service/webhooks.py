"""rq's job webhooks (rq 2.10+) for the ends this package decides itself.

rq sends a job's webhooks from the path that writes its end, once that end is committed: the worker
(finished, failed, retries exhausted), its monitor when the horse died, and its
``StartedJobRegistry.cleanup`` for a job whose worker died (failed, ``AbandonedJobError``). A job
this package ends itself never passes there: one rescued after its worker was killed (the restarted
instance's recovery), one a fencer rescued from a silent worker, one whose worker could not record
its end. Each of those that ends failed (no retry left) sends its ``failed`` webhooks here, after
the rescue's commit and the app's callback and handlers (``aftermath``, on a thread of its own), as
rq's ``Job.send_webhooks`` does: in turn, each with rq's ``Webhook.send`` (the same payload, with
``exc_info`` the failure the rescue recorded, method, headers and timeout), a send that fails logged,
never raised, and changing nothing about the job. A job the rescue re-queues sends nothing now: its
final end sends. Cold stops and a horse's death go through rq's worker path, which sends them itself.
"""

from __future__ import annotations

import logging

from rq.job import Job, JobStatus
from rq.webhook import Webhook

from .config import mask_webhook_url

log = logging.getLogger(__name__)

MARGIN = 1.0
"""Seconds a process waits beyond the sends' own timeouts, for the reply already on its way."""


def failed(job: Job) -> list[Webhook]:
    """The job's ``failed`` webhooks, in the order rq sends them."""
    return [webhook for webhook in job.webhooks if webhook.job_status == JobStatus.FAILED]


def budget(hooks: list[Webhook]) -> float:
    """Seconds sending ``hooks`` one after the other takes at most, unless an endpoint trickles its reply."""
    return sum(webhook.timeout for webhook in hooks) + MARGIN


def send(job: Job, webhook: Webhook, exc_string: str) -> None:
    """Send one of ``job``'s failed webhooks as rq's ``Job.send_webhooks`` does (its debug line, which
    ``journal.WEBHOOK_LINES`` masks; ``Webhook.send`` logs a failure and never raises)."""
    job.log.debug("Job %s: sending %s webhook to %s", job.id, webhook.job_status, webhook.url)
    webhook.send(job, exc_string=exc_string)


def log_unsent(job_id: str, webhook: Webhook) -> None:
    """One line for a webhook the process leaves without having sent (or while its send was under way)."""
    log.warning("Job %s: its failed webhook to %s was not sent: this process left before it (past the webhooks' "
                "timeouts or RQ_SHUTDOWN_TIMEOUT)", job_id, mask_webhook_url(webhook.url),
                extra={"RQ_JOB_ID": job_id})
