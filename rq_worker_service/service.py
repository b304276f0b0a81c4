"""``rq-worker-service run``: from configuration to a registered worker, and out again.

Each way out has its exit status from ``exits`` (README lists them; the unit's
RestartPreventExitStatus= names 77 and 78) and an ERRNO= for ``systemctl status``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import redis
from rq.exceptions import StopRequested
from rq.worker import DequeueStrategy

from . import aftermath, exits, faults, journal, keys, startup
from .acl import denied
from .config import ConfigError, load_settings
from .connection import (
    REDIS_ERRORS,
    RedisAuthError,
    RedisNoSuchDatabase,
    RedisUnavailable,
    make_connection,
    slot_moved,
    slot_moved_message,
    wait_for_redis,
    warn_if_not_persistent,
)
from .envfiles import refresh_environment
from .lifecycle import Phase
from .notify import Notifier
from .parts.reporting import COUNTS_VAR
from .parts.stops import STOP_GRACE
from .prepare import Prepared, prepare
from .recovery import WorkerNameInUse, predecessor_hung, recover_predecessor
from .rqcompat import mixed_rq_workers
from .secret_env import environment, handover, url_has_secret
from .startcheck import check_command, start_problem, time_limit
from .startup import StartupStopped, early
from .worker import ServiceWorkerMixin

log = logging.getLogger("rq_worker_service")

REEXEC_VAR = "RQ_WORKER_SERVICE_REEXEC"
PREFIX_REEXEC_VAR = "RQ_WORKER_SERVICE_PREFIX_REEXEC"
RECYCLED = "recycle"
"""REEXEC_VAR's value after a recycle (``parts.recycling``), rather than a reload."""


def build_worker(prepared: Prepared, connection, notifier: Notifier) -> ServiceWorkerMixin:
    settings, classes = prepared.settings, prepared.classes
    # The serializer by its name: rq hands that to a spawned horse (``_serializer_arg``).
    return prepared.worker_class(list(settings.queues), name=settings.name, connection=connection,
                                 default_result_ttl=settings.result_ttl, serializer=classes.serializer_name,
                                 job_class=classes.job_class, queue_class=classes.queue_class, settings=settings,
                                 notifier=notifier, exception_handlers=list(prepared.exception_handlers) or None,
                                 disable_default_exception_handler=settings.disable_default_exception_handler)


def configure(overrides: dict, env_files: Sequence[str]) -> Prepared:
    """Apply the env files, validate, enter RQ_APP_DIR (the app's settings module and classes may read
    relative paths as they are imported) and build what is built before connecting (``prepare``: the
    same for ``run --check``); raises ConfigError.

    A password in ``--url`` is refused: ``ps`` shows a command line to every user of the host, and
    the unit's stays in ``systemctl show`` too."""
    url = overrides.get("url")
    if url and url_has_secret(url):
        raise ConfigError("--url", None, "holds a password, which any user sees in the command line (ps): give "
                          "--url without it and the password in REDIS_PASSWORD_FILE, the credential "
                          "redis-password (LoadCredential=) or REDIS_PASSWORD in the env file")
    refresh_environment(env_files, Path.cwd() / ".env", environment)
    settings = load_settings(environment, overrides)
    if settings.app_dir:
        try:
            os.chdir(settings.app_dir)  # the app's relative paths, as under its old supervisor (and its imports)
        except OSError as exc:
            raise ConfigError("RQ_APP_DIR", None, f"cannot enter {settings.app_dir} ({exc.strerror}); give the "
                              "service's user access to it (e.g. SupplementaryGroups= with its group)") from None
    return prepare(settings)


def run(overrides: dict, env_files: Sequence[str] = (), check_only: bool = False) -> int:
    """Run one worker until it is stopped; returns the process exit status.

    ``check_only``: validate the configuration as a start would, and return (``run --check``, the
    unit's ``ExecReload=`` guard: a reload with an invalid file then fails and changes nothing).
    A stop during start-up (``startup.early``, installed by the command line first) ends it at the
    next safe point below, with exit 0 and no job taken.
    """
    journal.setup_logging("INFO")
    notifier = Notifier()
    try:
        prepared = configure(overrides, env_files)
    except ConfigError as exc:
        if check_only:  # the running worker is not this process: no STATUS=/ERRNO= on its behalf
            log.error("configuration error: %s", exc)
            return exits.CONFIG
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    settings = prepared.settings
    if check_only:
        for warning in settings.warnings:
            log.warning("%s", warning)
        # (the prerm quotes this line before a removal's warm stop: how long that may wait)
        log.info("Configuration OK: worker %s (%s) for queues %s on Redis %s; a stop waits up to %gs for its job "
                 "(RQ_SHUTDOWN_TIMEOUT)", settings.name, settings.worker_class, ", ".join(settings.queues),
                 settings.redis.display, settings.shutdown_timeout)
        return exits.OK
    if early.stop_requested:
        return stopped_during_startup()
    try:
        keys.check_imported(settings.key_prefix)
    except ConfigError as exc:
        # rq reads its key prefix once, when it is imported; this one came from a file read since.
        if os.environ.get(PREFIX_REEXEC_VAR):
            return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
        failed = reexec(PREFIX_REEXEC_VAR)
        return notifier.fail(cannot_reexec(failed), exits.LOOP_ERROR, failed.errno or errno.EIO)
    os.environ.pop(PREFIX_REEXEC_VAR, None)
    journal.setup_logging(settings.log_level)
    journal.set_worker(settings.name)
    aftermath.configure(lambda: keep_alive(notifier), settings.shutdown_timeout)
    for warning in settings.warnings:
        log.warning("%s", warning)

    reexec_why = os.environ.pop(REEXEC_VAR, None)
    started = {None: "Starting", RECYCLED: "Recycled"}.get(reexec_why, "Reloaded")
    log.info("%s worker %s (%s) for queues %s on Redis %s", started, settings.name,
             settings.worker_class, ", ".join(settings.queues), settings.redis.display)
    worker: ServiceWorkerMixin | None = None
    try:
        with early.wait():  # nothing is held yet: a stop ends it at once
            connection = wait_for_redis(lambda: make_connection(settings.redis, settings.key_prefix, settings.name,
                                                                redis_class=prepared.redis_class),
                                        settings.redis, notifier, settings.redis_startup_wait, sleep=early.sleep)
        warn_if_not_persistent(connection, settings.redis)
        for message in mixed_rq_workers(connection, list(settings.queues)):
            log.warning("%s", message)
        recovered = recover_predecessor(connection, settings, socket.gethostname(),
                                        went_silent=predecessor_hung(settings.instance, os.environ))
        if recovered:
            log.warning("Recovered %d job(s) from this instance's previous run", len(recovered))
            with early.wait():  # committed: a stop may end the wait for their callbacks and handlers
                aftermath.settle()
        worker = build_worker(prepared, connection, notifier)
        parts = worker.parts
        parts.recycler.check = lambda: start_problem(  # (the re-execution's command line and environment)
            check_command(sys.orig_argv, sys.argv), os.environ, environment.private,
            time_limit(notifier.watchdog_seconds), parts.tick_while_waiting, lambda: parts.lifecycle.stopping)
        if early.stop_requested:  # its started jobs are re-queued; what it held, any worker puts back (its key is gone)
            return stopped_during_startup()
        worker.work(with_scheduler=settings.with_scheduler, logging_level=settings.log_level,  # hands over the rest
                    dequeue_strategy=DequeueStrategy(settings.dequeue_strategy),
                    max_idle_time=settings.max_idle_time)  # (RQ_MAX_JOBS, RQ_MAX_MEMORY: parts.recycling)
    except StartupStopped:
        return stopped_during_startup()
    except RedisUnavailable as exc:
        return notifier.fail(str(exc), exits.UNAVAILABLE, errno.ECONNREFUSED)
    except RedisAuthError as exc:
        return notifier.fail(str(exc), exits.NOPERM, errno.EACCES)
    except RedisNoSuchDatabase as exc:
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    except WorkerNameInUse as exc:
        return notifier.fail(str(exc), exits.TEMPFAIL, errno.EEXIST)
    except StopRequested:
        return exits.OK  # stopped during start-up, before the loop began
    except REDIS_ERRORS as exc:
        if worker is not None and worker.parts.lifecycle.phase is Phase.STOPPING:  # rq's teardown met the outage
            log.warning("Stopped with Redis at %s unreachable (%s): this worker's registration and any id it held "
                        "stay in Redis, for its next start or another worker to clear", settings.redis.display, exc)
            return exits.OK  # what was asked: a stop (69 left the unit failed after systemctl stop)
        return notifier.fail(f"lost Redis at {settings.redis.display}: {exc}; exiting so that systemd restarts "
                             "this instance", exits.UNAVAILABLE, errno.ECONNRESET)
    except redis.exceptions.NoPermissionError as exc:  # at registration, before the loop
        return notifier.fail(f"{denied(exc) or exc}; exiting", exits.NOPERM, errno.EACCES)
    except redis.exceptions.ResponseError as exc:
        if not slot_moved(settings.redis, exc):
            raise
        return notifier.fail(slot_moved_message(settings.key_prefix, exc), exits.UNAVAILABLE, errno.ECONNRESET)

    if worker.parts.lifecycle.phase is Phase.RELOADING:
        os.environ[COUNTS_VAR] = "{},{}".format(*worker.parts.counters.job_counts)
        faults.reached("reload.exec")
        recycle = worker.parts.lifecycle.recycle_reason
        failed = reexec(why=f"recycling ({recycle})" if recycle else None)
        return notifier.fail(cannot_reexec(failed), exits.LOOP_ERROR, failed.errno or errno.EIO)
    if worker.parts.lifecycle.phase is Phase.STOPPING:
        log.info("Stopped")
        return exits.OK
    return notifier.fail("the worker loop ended without a stop request (see the error above); exiting so that "
                         "systemd restarts this instance", exits.LOOP_ERROR, errno.EIO)


def keep_alive(notifier: Notifier) -> None:
    """While the process waits to leave (``aftermath.drain``): systemd's watchdog stays armed during a
    reload, and a stop's timeout runs; keep both ahead, as the tick does."""
    notifier.watchdog()
    notifier.extend_timeout(aftermath.PING_EVERY + STOP_GRACE)


def stopped_during_startup() -> int:
    log.info("Stopped during start-up (%s), before taking any job", early.names())
    return exits.OK


def reexec(marker: str = REEXEC_VAR, why: str | None = None) -> OSError:
    """Replace this process with a fresh copy of itself: same pid, new config and app code.
    ``marker`` tells the new process why (a reload, or rq's key prefix to import anew); ``why``: a
    recycle (RQ_MAX_JOBS, RQ_MAX_MEMORY), which the new process says it is.

    Returns only when the execution failed (the interpreter removed or replaced by an upgrade, out of
    memory), with why: the worker has left rq's loop and holds no job; the caller exits with status 1,
    which systemd restarts (a traceback said no more, and a 78 would have left the instance dead)."""
    log.info("Re-executing in place%s", f": {why}" if why else " to apply new configuration and code")
    aftermath.drain()  # the exec would end their threads (it pings the watchdog while it waits)
    os.environ[marker] = RECYCLED if why else "1"
    for handler in logging.getLogger().handlers:
        handler.flush()
    handover(environment.private, os.environ)  # the secrets, never in the new process's environment
    startup.block()  # a signal that comes before the new process can record it waits for it
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError as exc:
        return exc


def cannot_reexec(exc: OSError) -> str:
    return (f"cannot re-execute in place ({sys.executable}: {exc.strerror}); exiting so that systemd starts this "
            "instance again")
