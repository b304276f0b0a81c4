"""The configuration variables, documented once.

This list is the single source for the commented ``/etc/rq-worker/worker.env`` the package ships and
the ENVIRONMENT section of ``rq-worker-service(8)``; a unit test checks that every variable
``config.py`` reads is here and in README.md.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    help: str
    example: str = ""
    active: bool = False
    """Written uncommented (with ``example`` as its value) in the shipped worker.env."""


VARIABLES: tuple[Variable, ...] = (
    Variable("REDIS_URL", "redis://localhost:6379/0",
             "Redis to take jobs from: redis://[user[:password]@]host[:port][/db], rediss:// (TLS) or "
             "unix:///path/to/redis.sock?db=N. Takes precedence over the REDIS_HOST/PORT/DB form.",
             "redis://localhost:6379/0", active=True),
    Variable("REDIS_HOST", "localhost", "Split form used by many apps' .env: host name or address.", ""),
    Variable("REDIS_PORT", "6379", "Split form: TCP port.", ""),
    Variable("REDIS_DB", "0", "Split form: database number.", ""),
    Variable("REDIS_USERNAME", "(none)", "Redis ACL user name (overrides one in REDIS_URL).", ""),
    Variable("REDIS_PASSWORD", "(none)",
             "Redis password (overrides one in REDIS_URL). Never logged or shown. Prefer REDIS_PASSWORD_FILE "
             "or the credential redis-password (LoadCredential=), which take precedence in that order.", ""),
    Variable("REDIS_PASSWORD_FILE", "(none)", "File whose first line is the Redis password.", ""),
    Variable("RQ_QUEUES", "default", "Queues to work on, comma-separated, highest priority first.",
             "default", active=True),
    Variable("RQ_APP_PATH", "(none)",
             "Directories (colon-separated) put first on the import path, so the app's job functions "
             "import, e.g. the app's project directory.", "/srv/myapp"),
    Variable("RQ_APP_VIRTUALENV", "(none)",
             "The app's virtualenv; its site-packages are added after the service's own. Must be built "
             "with the same Python minor version (/usr/bin/python3).", ""),
    Variable("RQ_WORKER_CLASS", "fork",
             "fork: each job in a forked work horse (rq's Worker); spawn: each job in a fresh "
             "interpreter; simple: jobs in the worker process itself (no isolation).", ""),
    Variable("RQ_JOB_TIMEOUT", "(rq's 180 s)",
             "Timeout in seconds for jobs that carry none (-1: no limit). Jobs enqueued with plain rq "
             "already carry their queue's default; enqueue helper uses this too.", ""),
    Variable("RQ_RESULT_TTL", "500", "Seconds to keep a successful job's result (0: discard, -1: forever).", ""),
    Variable("RQ_FAILURE_TTL", "(rq's 1 year)", "Seconds to keep failed jobs, for jobs that set none.", ""),
    Variable("RQ_WITH_SCHEDULER", "yes",
             "Run rq's scheduler (needed by Retry(interval=…), enqueue_in/enqueue_at). One instance holds "
             "the lock per queue; a restarted instance takes it over at once.", ""),
    Variable("RQ_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL.", ""),
    Variable("RQ_SHUTDOWN_TIMEOUT", "600",
             "Seconds a stop waits for the running job. Past it the job is cut, recorded as interrupted "
             "and retried (cold shutdown).", ""),
    Variable("RQ_JOB_RETRY_MAX", "3",
             "Retries given to a job without a Retry of its own when its worker dies under it (crash, "
             "kill, shutdown limit). 0 turns this default off.", ""),
    Variable("RQ_JOB_RETRY_DELAY", "60", "Seconds before each such default retry.", ""),
    Variable("RQ_REDIS_STARTUP_WAIT", "30",
             "Seconds to wait for an unreachable Redis at start before exiting (status 69) so that "
             "systemd restarts the instance later.", ""),
)


def env_file_text() -> str:
    """The commented ``/etc/rq-worker/worker.env`` shipped as a conffile."""
    lines = [
        "# /etc/rq-worker/worker.env: settings for every rq-worker@ instance.",
        "# /etc/rq-worker/worker-<instance>.env overrides them for one instance.",
        "# After a change: systemctl reload 'rq-worker@*' (running jobs finish first).",
        "# See rq-worker-service(8) and /usr/share/doc/rq-worker-service/README.md.",
        "",
    ]
    for var in VARIABLES:
        lines += [f"# {line}" for line in textwrap.wrap(var.help, 96)]
        lines.append(f"# Default: {var.default}")
        lines.append(f"{'' if var.active else '#'}{var.name}={var.example}")
        lines.append("")
    return "\n".join(lines)


def man_environment() -> str:
    """The ENVIRONMENT section for argparse-manpage's --include file (roff)."""
    out = ["[ENVIRONMENT]"]
    for var in VARIABLES:
        out += [".TP", rf"\fB{var.name}\fR (default: {var.default})", var.help.replace("-", r"\-")]
    return "\n".join(out) + "\n"
