"""Test-side control inside the sandbox: enqueue jobs and report their state as JSON.

Runs with the package's own interpreter (/usr/lib/rq-worker-service/bin/python3) and reads the
Redis connection from /etc/rq-worker/worker.env with the package's own config loader.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

from dotenv import dotenv_values
from rq import Queue, Retry
from rq.job import Job

sys.path.insert(0, os.path.dirname(__file__))
import e2ejobs  # noqa: E402,F401

from rq_worker_service.config import load_settings  # noqa: E402
from rq_worker_service.connection import make_connection  # noqa: E402


def utc(moment: datetime) -> datetime:
    """rq keeps UTC times, with or without the zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def connect():
    env = {k: v for k, v in dotenv_values("/etc/rq-worker/worker.env").items() if v is not None}
    return make_connection(load_settings(env).redis)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serializer", default="pickle", help="the jobs' serializer (rq's name), for enqueue and jobs")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("func")
    e.add_argument("args", nargs="*", type=float)
    e.add_argument("--id")
    e.add_argument("--queue", default="default")
    e.add_argument("--retry", type=int, default=0)
    e.add_argument("--interval", type=int, default=0)
    e.add_argument("--count", type=int, default=1)
    e.add_argument("--in", dest="delay", type=int, default=0, help="schedule it this many seconds ahead")
    s = sub.add_parser("jobs")
    s.add_argument("ids", nargs="*")
    s.add_argument("--file")
    r = sub.add_parser("registries")
    r.add_argument("--queue", default="default")
    sub.add_parser("flush")
    st = sub.add_parser("stream", help="enqueue traced_job(seconds) every --every s for --for s; print the ids")
    st.add_argument("seconds", type=float)
    st.add_argument("--every", type=float, default=0.5)
    st.add_argument("--for", dest="duration", type=float, default=30)
    st.add_argument("--id", default="stream")
    sub.add_parser("trace", help="the executions traced_job recorded")
    sub.add_parser("now", help="Redis server time")
    sub.add_parser("members", help="rq-worker-service members and their deadlines (Redis server time)")
    a = p.parse_args()
    conn = connect()
    if a.cmd == "flush":
        conn.flushall()
        return
    if a.cmd == "stream":
        q = Queue(connection=conn)
        ids, start, i = [], time.monotonic(), 0
        while time.monotonic() - start < a.duration:
            ids.append(q.enqueue(e2ejobs.traced_job, a.seconds, job_id=f"{a.id}-{i}", result_ttl=3600).id)
            i += 1
            time.sleep(max(0.0, start + i * a.every - time.monotonic()))
        print(json.dumps(ids))
        return
    if a.cmd == "trace":
        print(json.dumps([json.loads(e) for e in conn.lrange("trace", 0, -1)]))
        return
    if a.cmd == "now":
        seconds, micros = conn.time()
        print(json.dumps(seconds + micros / 1e6))
        return
    if a.cmd == "members":
        from rq_worker_service.fencing import BEATS_KEY
        print(json.dumps({n.decode(): s for n, s in conn.zrange(BEATS_KEY, 0, -1, withscores=True)}))
        return
    if a.cmd == "enqueue":
        q = Queue(a.queue, connection=conn, serializer=a.serializer)
        retry = Retry(max=a.retry, interval=a.interval) if a.retry else None
        func = getattr(e2ejobs, a.func)
        args = [int(x) if x == int(x) else x for x in a.args]
        ids = []
        for i in range(a.count):
            job_id = a.id if a.count == 1 else (f"{a.id}-{i}" if a.id else None)
            if a.delay:
                job = q.enqueue_in(timedelta(seconds=a.delay), func, *args, job_id=job_id, retry=retry, result_ttl=3600)
            else:
                job = q.enqueue(func, *args, job_id=job_id, retry=retry, result_ttl=3600)
            ids.append(job.id)
        print(json.dumps(ids))
        return
    if a.cmd == "jobs":
        ids = a.ids or json.load(open(a.file))
        out = {}
        for job, job_id in zip(Job.fetch_many(ids, connection=conn, serializer=a.serializer), ids, strict=True):
            execs = int(conn.get(f"executions:{job_id}") or 0)
            if job is None:
                out[job_id] = {"status": None, "executions": execs}
                continue
            latest = job.latest_result()
            out[job_id] = {"status": job.get_status(), "executions": execs, "worker": job.worker_name,
                           "enqueued_at": utc(job.enqueued_at).timestamp() if job.enqueued_at else None,
                           "retries_left": job.retries_left,
                           "last_error": latest.exc_string if latest and latest.exc_string else None}
        print(json.dumps(out))
        return
    if a.cmd == "registries":
        q = Queue(a.queue, connection=conn)
        print(json.dumps({
            "queued": q.job_ids,
            "started": q.started_job_registry.get_job_ids(cleanup=False),
            "scheduled": q.scheduled_job_registry.get_job_ids(),
            "failed": q.failed_job_registry.get_job_ids(),
            "workers": sorted(w.name for w in __import__("rq").Worker.all(connection=conn)),
        }))


if __name__ == "__main__":
    main()
