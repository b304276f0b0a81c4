"""Every option of rq 3's ``rq worker`` and what serves it under this service, declared once.

An app that runs under ``rq worker --some-option`` must be able to move onto the package; the README
promises so. Each option is either served by one of our variables (``variables.VARIABLES``), served by
a ``run`` flag that has no variable (``--name``), or listed with the reason it does not apply to a
systemd service. ``tests/unit/test_parity.py`` reads ``rq worker``'s options from rq's click command
and fails on one this table does not name, so the next rq release cannot add an option silently;
``tests/unit/test_docs.py`` fails when README.md's copy of the table is stale (``python -m
rq_worker_service.parity readme`` prints the current one).

Only the standard library and ``variables`` are imported here, as in ``variables``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rq_worker_service.variables import BY_NAME


@dataclass(frozen=True)
class RqOption:
    """One parameter of ``rq worker``, spelled as rq's click command spells it (``opts``), and exactly one
    of: the ``variable`` that serves it (``value``: the setting that gives rq's meaning, where the
    option is a fixed value of the variable, as ``-v`` is RQ_LOG_LEVEL=DEBUG), the ``flag`` of ``run``
    that serves it without a variable, or the ``reason`` it is not served."""

    opts: tuple[str, ...]
    variable: str | None = None
    value: str | None = None
    flag: str | None = None
    reason: str | None = None
    note: str = ""

    def served_by(self) -> str:
        """The README's cell: the variable (with its ``run`` flag), the flag, or the reason."""
        if self.variable is not None:
            var = BY_NAME[self.variable]
            text = f"`{self.variable}={self.value}`" if self.value else f"`{self.variable}`"
            if var.flag and not self.value:
                text += f" (`run {var.flag}`)"
        elif self.flag is not None:
            text = f"`run {self.flag}`"
        else:
            text = str(self.reason)
        return f"{text}; {self.note}" if self.note else text


OPTIONS: tuple[RqOption, ...] = (
    RqOption(("queues",), variable="RQ_QUEUES"),
    RqOption(("--url", "-u"), variable="REDIS_URL",
             note="or REDIS_HOST/REDIS_PORT/REDIS_DB, Sentinel, Cluster, TLS (Configure)"),
    RqOption(("--path", "-P"), variable="RQ_APP_PATH", note="or RQ_APP_DIR, RQ_APP_VIRTUALENV"),
    RqOption(("--name", "-n"), flag="--name", note="default <hostname>.rq-worker@<instance>"),
    RqOption(("--worker-class", "-w"), variable="RQ_WORKER_CLASS",
             note="fork, simple, spawn, or a dotted path to the app's subclass of Worker, SpawnWorker or SimpleWorker "
                  "(the service's behaviour put in front of it)"),
    RqOption(("--results-ttl",), variable="RQ_RESULT_TTL"),
    RqOption(("--with-scheduler", "-s"), variable="RQ_WITH_SCHEDULER", note="on by default here"),
    RqOption(("--logging_level",), variable="RQ_LOG_LEVEL"),
    RqOption(("--verbose", "-v"), variable="RQ_LOG_LEVEL", value="DEBUG"),
    RqOption(("--quiet", "-q"), variable="RQ_LOG_LEVEL", value="WARNING"),
    RqOption(("--disable-job-desc-logging",), variable="RQ_DISABLE_JOB_DESC_LOGGING"),
    RqOption(("--burst", "-b"), reason="does not apply: an instance is a long-running service that systemd "
             "starts, restarts on failure and stops; to drain the queues once and quit, run `rq worker --burst` "
             "itself (e.g. from a timer)"),
    RqOption(("--pid",), reason="does not apply: systemd tracks the worker's PID itself (MAINPID, "
             "`systemctl show -p MainPID`)"),
    RqOption(("--log-format",), reason="does not apply: the journal stores each line with its time, "
             "priority and fields (`journalctl -o`, Logs)"),
    RqOption(("--date-format",), reason="does not apply: the journal stores each line's time (`journalctl -o`)"),
    RqOption(("--serializer", "-S"), variable="RQ_SERIALIZER", note="pickle, json or a dotted path"),
    RqOption(("--job-class", "-j"), variable="RQ_JOB_CLASS"),
    RqOption(("--queue-class",), variable="RQ_QUEUE_CLASS"),
    RqOption(("--connection-class",), variable="RQ_CONNECTION_CLASS"),
    RqOption(("--exception-handler",), variable="RQ_EXCEPTION_HANDLERS", note="one variable, the handlers in order"),
    RqOption(("--disable-default-exception-handler", "-d"), variable="RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER"),
    RqOption(("--config", "-c"), variable="RQ_SETTINGS_MODULE",
             note="imported in the worker and each spawned horse (Sentry); its REDIS_URL, QUEUES, NAME are not read"),
    RqOption(("--dequeue-strategy", "-ds"), variable="RQ_DEQUEUE_STRATEGY",
             note="our pop serves the queues in the order rq's strategy gives"),
    RqOption(("--max-jobs",), variable="RQ_MAX_JOBS",
             note="recycled in place (same PID), not exited; also RQ_MAX_MEMORY"),
    RqOption(("--max-idle-time",), variable="RQ_MAX_IDLE_TIME", note="exits 0: the unit does not restart it"),
    RqOption(("--worker-ttl",), variable="RQ_WORKER_TTL"),
    RqOption(("--maintenance-interval",), variable="RQ_MAINTENANCE_INTERVAL"),
    RqOption(("--job-monitoring-interval",), variable="RQ_JOB_MONITORING_INTERVAL", note="at most a tick"),
)


def readme_table() -> str:
    """The parity table of README.md (Markdown)."""
    rows = ["| `rq worker` option | here |", "| --- | --- |"]
    for option in OPTIONS:
        spelled = ", ".join(o if o.startswith("-") else f"{o.upper()}… (argument)" for o in option.opts)
        rows.append(f"| `{spelled}` | {option.served_by().replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["readme"]:
        sys.exit("usage: python -m rq_worker_service.parity readme")
    print(readme_table(), end="")
