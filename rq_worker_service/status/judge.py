"""The verdict on one ``status`` report: its level (OK, WARNING, CRITICAL) and the problems, worst first.

The operator's thresholds (``status --max-queued`` …, ``levels.Threshold``) and the built-in checks:
a suspension (``rq suspend``: a warning, as no job runs until ``rq resume``), stale workers, workers on
another rq major, abandoned jobs, silent autoscalers, recent fencings, cron jobs no scheduler enqueues
(no lease holder for longer than the takeover bound), jobs queued where no live worker listens, jobs
queued and no live worker at all.
"""

from __future__ import annotations

from .. import keys
from ..levels import CRITICAL, OK, WARNING, Threshold
from ..rqcompat import mixed_rq_message, same_rq_major
from .report import Report

FENCING_WARNS_FOR = 900
"""Seconds a fencing keeps the verdict at WARNING (it stays listed for a day)."""


def evaluate(report: Report, *, max_queued: Threshold | None = None, max_age: Threshold | None = None,
             max_failed: Threshold | None = None, min_workers: Threshold | None = None,
             max_heartbeat_age: Threshold | None = None) -> Report:
    """Set ``report.level`` and ``report.problems`` from the thresholds and the built-in checks."""
    findings: list[tuple[int, str]] = []

    def check(level: int, message: str) -> None:
        if level:
            findings.append((level, message))

    queued = sum(q.queued for q in report.queues)
    ages = [q.oldest_age for q in report.queues if q.oldest_age is not None]
    failed = sum(q.failed for q in report.queues)
    alive = [w for w in report.workers if not w.stale]
    if max_queued:
        check(max_queued.level_above(queued), f"{queued} jobs queued (limit {max_queued.warning:g})")
    if max_age and ages:
        check(max_age.level_above(max(ages)), f"oldest queued job waits {max(ages):.0f}s "
                                              f"(limit {max_age.warning:g}s)")
    if max_failed:
        check(max_failed.level_above(failed), f"{failed} failed jobs (limit {max_failed.warning:g})")
    if min_workers:
        check(min_workers.level_below(len(alive)), f"{len(alive)} live workers (minimum {min_workers.warning:g})")
    if max_heartbeat_age:
        for w in report.workers:
            if w.heartbeat_age is not None:
                check(max_heartbeat_age.level_above(w.heartbeat_age),
                      f"worker {w.name} last heartbeat {w.heartbeat_age:.0f}s ago")
    if report.suspended:
        check(WARNING, f"{report.suspension}: the workers take no job; queued jobs wait")
    for w in report.workers:
        if w.stale:
            check(WARNING, f"worker {w.name} is stale (heartbeat {w.heartbeat_age:.0f}s ago)")
    for w in alive:
        if not same_rq_major(w.rq_version):
            check(WARNING, mixed_rq_message(w.name, w.rq_version))
    if report.abandoned:
        check(WARNING, f"{len(report.abandoned)} abandoned started jobs")
    for a in report.autoscalers:
        if a.stale:
            check(WARNING, f"the autoscaler on {a.host} has not reported for {a.age:.0f}s (is "
                           "rq-worker-autoscale.service running?)")
    for f in report.fenced:
        if f.ago < FENCING_WARNS_FOR:
            check(WARNING, f"worker {f.worker} on host {f.host} was fenced by {f.by} {f.ago:.0f}s ago "
                           f"({len(f.jobs)} jobs re-queued): it went silent (frozen, cut off or host lost)")
    cron = report.cron
    if cron is not None and cron.leaderless:
        since = "ever" if cron.leaderless_for is None else f"for {cron.leaderless_for:.0f}s"
        check(WARNING, f"{len(cron.jobs)} cron jobs registered and no scheduler has held the lease {since} (more "
                       f"than 2 lease periods of {cron.lease_period}s): their slots are not enqueued; is "
                       "rq-cron.service running on a host? (a retired schedule: delete "
                       f"{keys.cron_jobs()})")
    listened = {name for w in alive for name in w.queues}
    for q in report.queues:
        if q.queued and alive and q.name not in listened:
            critical = max_queued is not None and max_queued.level_above(q.queued) == CRITICAL
            check(CRITICAL if critical else WARNING,
                  f"{q.queued} jobs queued in {q.name}, which no live worker listens to (workers listen to: "
                  f"{', '.join(sorted(listened))}); check RQ_QUEUES")
    if queued and not alive:
        check(CRITICAL, f"{queued} jobs queued and no live worker")
    report.level = max((level for level, _ in findings), default=OK)
    report.problems = [message for level, message in sorted(findings, key=lambda f: -f[0])]
    return report
