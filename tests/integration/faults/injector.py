"""Replaces ``rq_worker_service.faults.reached`` in a worker process with one that throws a fault.

``RQWS_FAULT=<point>:<action>[:<nth>]`` arms it: the nth time any process of this worker (the main
process, its horses, its scheduler) reaches ``point``, it acts, once: the first process to count
to nth creates its record (``RQWS_FAULT_RECORD``, default ``fired.json``; O_EXCL) in
``RQWS_FAULT_DIR`` before acting, so a re-executed or forked process never fires again. Every point
reached is logged to ``reached.log`` either way. ``RQWS_FAULT_PAUSE``: seconds of a pause (4).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import time


def install() -> None:
    from rq_worker_service import faults

    os.environ.setdefault("RQWS_FAULT_MAIN_PID", str(os.getpid()))  # the first process is the worker's main one
    faults.reached = reached


def _dir() -> str:
    return os.environ["RQWS_FAULT_DIR"]


def _record_path() -> str:
    return os.path.join(_dir(), os.environ.get("RQWS_FAULT_RECORD", "fired.json"))


def _main_pid() -> int:
    return int(os.environ["RQWS_FAULT_MAIN_PID"])


def reached(point: str) -> None:
    with open(os.path.join(_dir(), "reached.log"), "a") as log:
        log.write(f"{time.time():.3f} {os.getpid()} {point}\n")
    spec = os.environ.get("RQWS_FAULT", "")
    if not spec or spec.split(":")[0] != point:
        return
    _, action, *rest = spec.split(":")
    nth = int(rest[0]) if rest else 1
    if _count(point) != nth:
        return
    try:
        fd = os.open(_record_path(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    from rq_worker_service import journal  # the job in hand, if any (set by execute_job)
    record = {"point": point, "action": action, "pid": os.getpid(), "main": os.getpid() == _main_pid(),
              "t": time.time(), "job": journal.current_job()}
    os.write(fd, json.dumps(record).encode())
    os.close(fd)
    ACT[action]()


def _count(point: str) -> int:
    """How many times any process of this worker reached ``point``, this time included."""
    with open(f"{_record_path()}-count-{point}", "a+") as counter:
        fcntl.lockf(counter, fcntl.LOCK_EX)
        counter.seek(0)
        n = int(counter.read() or 0) + 1
        counter.seek(0)
        counter.truncate()
        counter.write(str(n))
        return n


def _kill_worker() -> None:
    os.kill(_main_pid(), signal.SIGKILL)


def _kill_horse() -> None:
    if os.getpid() != _main_pid():
        os.kill(os.getpid(), signal.SIGKILL)  # reached in the horse itself
        return
    threading.Thread(target=_kill_running_job, daemon=True).start()  # the horse may not run the job yet


def _kill_running_job(timeout: float = 5.0) -> None:
    """SIGKILL the process running a job (a run started and not ended, not the main process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _running_job_pids():
            if pid != _main_pid():
                os.kill(pid, signal.SIGKILL)
                _note(f"killed horse {pid}")
                _hit_at(time.time())
                return
        time.sleep(0.02)
    _note("no horse to kill")


def _running_job_pids() -> list[int]:
    try:
        with open(os.path.join(_dir(), "runs.jsonl")) as runs:
            records = [json.loads(line) for line in runs if line.endswith("\n")]
    except FileNotFoundError:
        return []
    open_runs: dict[tuple[str, int], bool] = {}
    for r in records:
        open_runs[(r["job"], r["pid"])] = r["event"] == "start"
    return [pid for (_, pid), running in open_runs.items() if running and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _hit_at(when: float) -> None:
    """The fault took effect later than it fired (the horse was killed once its job had started)."""
    path = _record_path()
    with open(path) as fired:
        record = json.load(fired)
    record["hit"] = when
    with open(path + ".new", "w") as new:
        json.dump(record, new)
    os.rename(path + ".new", path)


def _note(text: str) -> None:
    with open(os.path.join(_dir(), "notes.log"), "a") as notes:
        notes.write(f"{time.time():.3f} {text}\n")


def _signal(sig: signal.Signals):
    return lambda: os.kill(_main_pid(), sig)


def _redis():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)


def _cut() -> None:
    """Close every connection of this worker (they carry its name), as a fencer or a network cut would."""
    client = _redis()
    name = os.environ["RQWS_FAULT_CLIENT_NAME"]
    ids = [c["id"] for c in client.client_list() if c.get("name") == name]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    _note(f"cut {len(ids)} connection(s)")
    client.close()


def _redis_restart() -> None:
    """Shut Redis down (its AOF, fsynced on every write, keeps the data); the driver starts it again."""
    import redis

    try:
        _redis().shutdown()
    except redis.exceptions.ConnectionError:
        pass  # the server closed the connection as it went down


def _pause() -> None:
    """SIGSTOP this process; a detached helper sends SIGCONT after RQWS_FAULT_PAUSE seconds."""
    seconds = float(os.environ.get("RQWS_FAULT_PAUSE", "4"))
    subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -CONT {os.getpid()}"], start_new_session=True)
    os.kill(os.getpid(), signal.SIGSTOP)


ACT = {
    "kill-worker": _kill_worker,
    "kill-horse": _kill_horse,
    "sigterm": _signal(signal.SIGTERM),
    "sighup": _signal(signal.SIGHUP),
    "cut": _cut,
    "redis-restart": _redis_restart,
    "pause": _pause,
}
