"""What the in-sandbox halves of ``bench/under_systemd.py`` read, for rq's sides (``inbox.py``) and
Celery's (``celery_inbox.py``) alike: Redis's command count and CPU, and every process's CPU."""

from __future__ import annotations

import os

from redis import Redis


def connection() -> Redis:
    return Redis(host="127.0.0.1", port=6379, db=0)


def commands(conn: Redis) -> int:
    return sum(v["calls"] for v in conn.info("commandstats").values())


def cpu(conn: Redis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of every process, by name (systemd-journal, redis-server, rq, python3,
    celery …), and of the children each reaped, as "<name> children": a fork worker's work horses."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        for key, used in ((name, fields[11:13]), (f"{name} children", fields[13:15])):
            totals[key] = totals.get(key, 0.0) + sum(int(t) for t in used) / ticks
    return totals
