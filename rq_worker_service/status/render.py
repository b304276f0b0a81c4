"""``status``'s renderings of judged reports: a table for people, JSON for scripts, and the
Prometheus text exposition format for monitoring (node_exporter's textfile collector); with
several key prefixes, one section per prefix under their verdicts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from ..levels import LEVELS
from .report import CronInfo, Report

HANDOVERS_SHOWN = 5
"""The last hand-overs the text shows (JSON: all the scheduler keeps, 20)."""


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _when(epoch: float | None, now: float) -> str:
    """An instant as UTC (what the schedule's slots are computed in) and how far from now."""
    if epoch is None:
        return "-"
    at = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{at} (in {_dur(epoch - now)})" if epoch >= now else f"{at} ({_dur(now - epoch)} ago)"


def cron_lines(cron: CronInfo, now: float | None = None) -> list[str]:
    """The periodic-job section: the lease, each cron job, the live schedulers, the last hand-overs."""
    now = time.time() if now is None else now
    if cron.holder:
        left = "" if cron.lease_left is None else f", {cron.lease_left:.1f}s left"
        lease = f"lease held by {cron.holder} (token {cron.token}{left})"
    elif cron.leaderless_for is not None:
        lease = f"NO scheduler holds the lease (none seen for {_dur(cron.leaderless_for)})"
    else:
        lease = "NO scheduler holds the lease"
    lines = [f"Periodic jobs (rq-cron): {lease}; lease period {cron.lease_period}s"]
    if cron.jobs:
        lines += _table(["CRON JOB", "QUEUE", "SCHEDULE", "ZONE", "CATCH-UP", "NEXT RUN", "LAST SLOT", "LAST JOB",
                         "ENQUEUED", "SKIPPED"],
                        [[j.name, j.queue, j.schedule, j.zone, j.catch_up, _when(j.next_run, now),
                          _when(j.last_slot, now), f"{j.last_job_id} ({j.last_outcome})" if j.last_job_id else "-",
                          str(j.enqueued_total), str(j.skipped_total)] for j in cron.jobs])
    if cron.schedulers:
        lines.append("  schedulers: " + ", ".join(
            f"{s.holder} {s.role}" + (f" (token {s.token})" if s.token is not None else "") for s in cron.schedulers))
    for h in cron.handovers[:HANDOVERS_SHOWN]:
        lines.append(f"  {_when(h.at, now)}: {h.holder} took the lease (token {h.token}) from "
                     f"{h.previous or 'nobody'}")
    return lines


def render_text(report: Report) -> str:
    redis = f"Redis {report.redis}" + (f", key prefix {report.key_prefix}" if report.key_prefix != "rq" else "")
    redis += f"; workers {report.suspension}" if report.suspended else ""
    lines = [report.verdict, redis, ""]
    lines += _table(["QUEUE", "QUEUED", "OLDEST", "STARTED", "SCHEDULED", "DEFERRED", "FAILED", "FINISHED"],
                    [[q.name, str(q.queued), _dur(q.oldest_age), str(q.started), str(q.scheduled), str(q.deferred),
                      str(q.failed), str(q.finished)] for q in report.queues])
    lines.append("")
    lines += _table(["WORKER", "HOST", "UNIT", "PID", "QUEUES", "STATE", "JOB", "RUNNING", "HEARTBEAT"],
                    [[w.name, w.host, w.unit or "-", str(w.pid or "-"), ",".join(w.queues),
                      "stale" if w.stale else "SUSPENDED" if w.state == "suspended" else w.state,
                      f"{w.job_id} ({w.job_func})" if w.job_id else "-", _dur(w.job_running_for),
                      _dur(w.heartbeat_age) + " ago"] for w in report.workers])
    if report.abandoned:
        lines += ["", "Abandoned jobs (started, but their worker is gone):"]
        lines += _table(["JOB", "QUEUE", "FUNCTION", "WORKER", "SINCE"],
                        [[a.job_id, a.queue, a.func, a.worker, _dur(a.since) + " ago"] for a in report.abandoned])
    if report.fenced:
        lines += ["", "Fenced workers (silent past their deadline; their jobs were re-queued), last 24 h:"]
        lines += _table(["WORKER", "HOST", "FENCED BY", "WHEN", "JOBS RE-QUEUED"],
                        [[f.worker, f.host, f.by, _dur(f.ago) + " ago", " ".join(f.jobs) or "-"]
                         for f in report.fenced])
    for a in report.autoscalers:
        state = f"stale (last report {_dur(a.age)} ago)" if a.stale else "running"
        lines += ["", f"Autoscaler on {a.host}: {state}; {a.running} instances running ({a.busy} busy), min "
                      f"{a.minimum}, max {a.maximum}; memory: {a.memory}",
                  f"  instances (* started by it): {' '.join(a.instances) or '-'}"]
        if a.last_decision:
            lines.append(f"  last decision, {_dur(a.last_decision_age)} ago: {a.last_decision}")
        if a.holding:
            lines.append(f"  now: {a.holding}")
    if report.cron is not None:
        lines += ["", *cron_lines(report.cron)]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"


def render_text_per_prefix(reports: list[Report]) -> str:
    """Each prefix's verdict first, then each prefix's table in its section."""
    text = "".join(f"Key prefix {r.key_prefix}: {r.verdict}\n" for r in reports)
    return text + "".join(f"\n== Key prefix {r.key_prefix} ==\n{render_text(r)}" for r in reports)


def render_json_per_prefix(reports: list[Report]) -> str:
    """The worst status over all prefixes, and each prefix's report."""
    data = {"status": LEVELS[max(r.level for r in reports)], "prefixes": [r.to_dict() for r in reports]}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric(lines: list[str], name: str, kind: str, help_text: str,
            samples: list[tuple[dict[str, str], float]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        # 15 significant digits: a timestamp keeps its seconds (``:g`` made 1796080520 into 1.79608e+09)
        lines.append(f"{name}{{{rendered}}} {value:.15g}" if rendered else f"{name} {value:.15g}")


def render_prometheus(report: Report | None) -> str:
    """Prometheus text exposition format (version 0.0.4); ``None`` means Redis was unreachable."""
    lines: list[str] = []
    _metric(lines, "rq_up", "gauge", "1 if Redis answered, 0 if not.", [({}, 0 if report is None else 1)])
    if report is None:
        return "\n".join(lines) + "\n"
    _metric(lines, "rq_suspended", "gauge", "1 while `rq suspend` holds the workers.",
            [({}, 1 if report.suspended else 0)])
    states = ("queued", "started", "scheduled", "deferred", "failed", "finished")
    _metric(lines, "rq_queue_jobs", "gauge", "Jobs per queue and state.",
            [({"queue": q.name, "state": s}, getattr(q, s)) for q in report.queues for s in states])
    _metric(lines, "rq_queue_oldest_job_age_seconds", "gauge", "Age of the oldest queued job (0 when empty).",
            [({"queue": q.name}, q.oldest_age or 0) for q in report.queues])
    info = [({"worker": w.name, "host": w.host, "unit": w.unit or ""}, w) for w in report.workers]
    _metric(lines, "rq_worker_busy", "gauge", "1 while the worker runs a job.",
            [(labels, 1 if w.state == "busy" else 0) for labels, w in info])
    _metric(lines, "rq_worker_suspended", "gauge", "1 while the worker waits for `rq resume` (rq suspend).",
            [(labels, 1 if w.state == "suspended" else 0) for labels, w in info])
    _metric(lines, "rq_worker_stale", "gauge", "1 if the worker missed its heartbeat deadline.",
            [(labels, 1 if w.stale else 0) for labels, w in info])
    _metric(lines, "rq_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat.",
            [(labels, w.heartbeat_age or 0) for labels, w in info])
    _metric(lines, "rq_worker_jobs_total", "counter", "Jobs the worker finished, by outcome, since it started.",
            [({**labels, "outcome": o}, n) for labels, w in info
             for o, n in (("successful", w.successful_jobs), ("failed", w.failed_jobs))])
    _metric(lines, "rq_abandoned_jobs", "gauge", "Started jobs whose worker is gone.",
            [({"queue": q.name}, sum(1 for a in report.abandoned if a.queue == q.name)) for q in report.queues])
    _metric(lines, "rq_fenced_workers", "gauge", "Workers fenced in the last 24 hours, by the host they ran on.",
            [({"host": host}, sum(1 for f in report.fenced if f.host == host))
             for host in sorted({f.host for f in report.fenced})])
    _metric(lines, "rq_autoscaler_instances", "gauge", "Instances the host's autoscaler sees running.",
            [({"host": a.host}, a.running) for a in report.autoscalers])
    _metric(lines, "rq_autoscaler_max_instances", "gauge", "The host's RQ_AUTOSCALE_MAX.",
            [({"host": a.host}, a.maximum) for a in report.autoscalers])
    if report.cron is not None:
        _cron_metrics(lines, report.cron)
    _metric(lines, "rq_health_status", "gauge", "0 OK, 1 WARNING, 2 CRITICAL (the --check verdict).",
            [({}, report.level)])
    return "\n".join(lines) + "\n"


def _cron_metrics(lines: list[str], cron: CronInfo) -> None:
    _metric(lines, "rq_cron_leader", "gauge", "1 while a periodic-job scheduler holds the lease.",
            [({}, 1 if cron.holder else 0)])
    _metric(lines, "rq_cron_lease_token", "gauge", "The lease holder's fencing token: it grows by one at each "
            "acquisition (its increase counts hand-overs).", [({}, cron.token)] if cron.token is not None else [])
    _metric(lines, "rq_cron_leaderless_seconds", "gauge", "Seconds since a lease holder was last seen, while "
            "none holds it (0 while one does).", [({}, cron.leaderless_for or 0)])
    _metric(lines, "rq_cron_schedulers", "gauge", "Live periodic-job schedulers, by role.",
            [({"role": role}, sum(1 for s in cron.schedulers if s.role == role)) for role in ("leader", "standby")])
    info = [({"cron_job": j.name, "queue": j.queue}, j) for j in cron.jobs]
    _metric(lines, "rq_cron_job_next_run_timestamp_seconds", "gauge", "When the cron job's next slot is due.",
            [(labels, j.next_run) for labels, j in info if j.next_run is not None])
    _metric(lines, "rq_cron_job_last_slot_timestamp_seconds", "gauge", "The cron job's last slot enqueued or "
            "skipped.", [(labels, j.last_slot) for labels, j in info if j.last_slot is not None])
    _metric(lines, "rq_cron_job_enqueued_total", "counter", "Slots of the cron job enqueued.",
            [(labels, j.enqueued_total) for labels, j in info])
    _metric(lines, "rq_cron_job_skipped_total", "counter", "Missed slots of the cron job skipped (catch-up policy).",
            [(labels, j.skipped_total) for labels, j in info])
    _metric(lines, "rq_cron_job_last_outcome", "gauge", "1 for the rq status of the cron job's last job "
            "(queued, started, finished, failed, …; gone once rq dropped it).",
            [({**labels, "outcome": j.last_outcome}, 1) for labels, j in info if j.last_outcome])
