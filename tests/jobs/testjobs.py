"""Job functions the tests enqueue; the worker imports them through RQ_APP_PATH=tests/jobs.

Each job counts its executions in Redis (``executions:<job id>``) so that tests can tell a job that
ran once from one that ran twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from rq import get_current_job
from rq.defaults import RQ_KEY_PREFIX

log = logging.getLogger("testjobs")


def counter_key(job_id: str) -> str:
    """``executions:<id>``; under a cluster hash-tag prefix, inside that prefix's slot (as any key a
    job keeps on its connection must be: that node serves no other slot)."""
    return f"executions:{job_id}" if RQ_KEY_PREFIX == "rq" else f"{RQ_KEY_PREFIX}:test-executions:{job_id}"


def _count() -> int:
    job = get_current_job()
    return int(job.connection.incr(counter_key(job.id)))


def sleep_job(seconds: float, tag: str = "") -> str:
    n = _count()
    log.info("sleep_job %s starting execution %d (%ss)", tag, n, seconds)
    time.sleep(seconds)
    log.info("sleep_job %s done", tag)
    return f"slept {seconds}"


def failing_job(times: int) -> str:
    n = _count()
    if n <= times:
        raise RuntimeError(f"planned failure {n} of {times}")
    return "ok"


def quick_job(value: int) -> int:
    _count()
    return value * 2


def note_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """A failure callback (``on_failure=``) that leaves a trace in Redis."""
    connection.set(f"failure-callback:{job.id}", exc_type.__name__)


def timed_job(seconds: float) -> str:
    """Sleeps, and records when it ran (``ran:<queue>``: "start end" per execution) for overlap checks."""
    job = get_current_job()
    _count()
    started = time.time()
    time.sleep(seconds)
    job.connection.rpush(f"ran:{job.origin}", f"{started} {time.time()} {job.id}")
    return job.id


def alive_job(path: str, seconds: float) -> str:
    """Runs ``seconds``, appending "<pid> <time>" to ``path`` at its start and every 0.1 s, and
    "<pid> <time> end" at its end: each run's span, even of a run killed mid-way, for overlap checks."""
    _count()
    ends = time.monotonic() + seconds
    while True:
        done = time.monotonic() >= ends
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {time.time()}{' end' if done else ''}\n")
        if done:
            return "done"
        time.sleep(0.1)


def logged_job(path: str, tag: str, seconds: float = 0.0) -> str:
    """Sleeps, then appends "<tag> <time>" to ``path``: a record of completion kept outside Redis,
    which a failover may roll back. No Redis call of its own."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{tag} {time.time()}\n")
    return tag


def client_id_job() -> int:
    """The Redis client id of the connection the job's own commands go out on."""
    _count()
    return int(get_current_job().connection.client_id())


def note_status_on_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """A failure callback that records the job's stored status when it runs (``status-at-callback:<id>``)."""
    connection.set(f"status-at-callback:{job.id}", connection.hget(job.key, "status") or b"")


def slow_failure_callback(job, connection, exc_type, exc_value, traceback) -> None:
    """A failure callback that counts its calls (``failure-callbacks:<id>``), then takes 20 s: time
    to kill the process running it."""
    connection.incr(f"failure-callbacks:{job.id}")
    time.sleep(20)


def exiting_job() -> str:
    """Ends the worker's process with status 0 on its first execution (a simple worker runs it in
    the main process), as a job calling ``os._exit(0)`` or C code ``exit(0)`` does."""
    import os

    if _count() == 1:
        os._exit(0)
    return "ok"


def marked_failure_callback(job, connection, exc_type, exc_value, traceback) -> None:
    """A failure callback (``on_failure=``) that marks its start, takes 3 s, then marks its end."""
    connection.set(f"failure-callback-started:{job.id}", 1)
    time.sleep(3)
    connection.set(f"failure-callback:{job.id}", exc_type.__name__)


def environ_job() -> str:
    """What the job's process (the horse, or a simple worker) started with and holds, and what a
    subprocess the job starts gets: /proc/<pid>/environ and cmdline of both, and ``os.environ``.
    First the enqueue helper's settings log in from the job, as they do in an app process."""
    from rq_worker_service.client import settings_from_env
    from rq_worker_service.connection import make_connection

    _count()
    settings = settings_from_env()
    make_connection(settings.redis, settings.key_prefix).ping()
    own = b"".join(Path(f"/proc/self/{name}").read_bytes() for name in ("environ", "cmdline"))
    child = subprocess.run(["cat", "/proc/self/environ", "/proc/self/cmdline"], capture_output=True, check=True)
    return (own + b"\n" + child.stdout + b"\n" + repr(dict(os.environ)).encode()).decode("latin-1")


def birth_job(mib: int = 0) -> int:
    """Notes the registration (``birth``) of the worker process that runs it in ``births:<queue>``, after
    holding ``mib`` MiB (touched, so resident) for a moment: a recycled worker registers anew."""
    from rq.worker import Worker

    job = get_current_job()
    held = bytearray(mib * 2**20)
    for offset in range(0, len(held), 4096):
        held[offset] = 1
    birth = job.connection.hget(Worker.redis_worker_namespace_prefix + str(job.worker_name), "birth")
    job.connection.rpush(f"births:{job.origin}", birth or b"?")
    _count()
    del held
    return mib


def killed_leaving_a_child(seconds: float, pidfile: str) -> None:
    """The horse dies under its job (the OOM killer, a crash: here its own SIGKILL) while a process the job
    forked (a multiprocessing worker, a helper) lives on ``seconds``, with every descriptor of the horse; its
    pid goes to ``pidfile``."""
    _count()
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    Path(pidfile).write_text(str(child))
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
