"""Logging: journald with structured fields under systemd, readable lines on a terminal.

Every record carries the worker's and the current job's identity as journal fields (RQ_WORKER,
RQ_QUEUE, RQ_JOB_ID, RQ_JOB_FUNC). The context lives in this module and is set by the main process
right before it forks the work horse, so the job function's own ``logging`` calls in the horse carry
the same fields and ``journalctl -u 'rq-worker@*' RQ_JOB_ID=<id>`` tells one job's whole story.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from urllib.parse import urlsplit

from .config import mask_webhook_url

IDENTIFIER = "rq-worker-service"

_context: dict[str, str] = {}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

PICKED_UP = ("Worker %s: %s: %s (%s)", "Worker %s: %s: %s")
"""rq's log line for a job just taken from a queue (worker, queue, description or id[, id]). It is
logged inside the dequeue (rq's, and ours, which repeats it), before execute_job sets the job for
the journal, so the filter takes the job's id and queue from the line's own arguments
(``tests/unit/test_rq_contract.py`` checks rq still logs it so; this module stays free of rq
imports, as rq's key prefix is read when rq is first imported)."""


def set_worker(name: str) -> None:
    _context["RQ_WORKER"] = name


def set_job(job_id: str, func: str, queue: str) -> None:
    _context.update(RQ_JOB_ID=job_id, RQ_JOB_FUNC=func, RQ_QUEUE=queue)


def current_job() -> str | None:
    """The id of the job in hand in this process, if any (the fault suite records what it hit)."""
    return _context.get("RQ_JOB_ID")


def clear_job() -> None:
    for key in ("RQ_JOB_ID", "RQ_JOB_FUNC", "RQ_QUEUE"):
        _context.pop(key, None)


class ContextFilter(logging.Filter):
    """Copies the current worker/job context onto each record (explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if record.msg in PICKED_UP and isinstance(record.args, tuple) and not hasattr(record, "RQ_JOB_ID"):
            record.RQ_JOB_ID = str(record.args[-1])  # rq's "picked up" line, before execute_job sets the job
            record.RQ_QUEUE = _ANSI.sub("", str(record.args[1]))
        return True


WEBHOOK_LINES = {"Failed to send webhook to %s for job %s": 0, "Job %s: sending %s webhook to %s": 2}
"""rq's log lines that name a job's webhook URL (rq.webhook's failed send, with its traceback, and
rq.job's debug line before each send), and which argument is the URL (``tests/unit/test_rq_contract.py``
checks rq still logs them so)."""


def _url_pieces(url: str) -> list[str]:
    """The parts of a URL that may hold a secret: itself, its login, its path and its query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    login = parts.netloc.rpartition("@")[0]
    return [url] + [piece for piece in (login, parts.path, parts.query, parts.fragment) if len(piece) > 1]


class WebhookUrlFilter(logging.Filter):
    """Masks the webhook URL on rq's lines that show it (``config.mask_webhook_url``): such URLs carry
    secrets (a token in the query or the path). A failed send's traceback becomes one line, its
    exception's type and text, the text left out when it repeats any part of the URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        index = WEBHOOK_LINES.get(record.msg) if isinstance(record.msg, str) else None
        if index is None or not isinstance(record.args, tuple) or len(record.args) <= index:
            return True
        url = str(record.args[index])
        args = list(record.args)
        args[index] = mask_webhook_url(url)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            shown = type(exc).__name__ + ("" if any(piece in text for piece in _url_pieces(url)) else f": {text}")
            record.msg = f"{record.msg}: %s"
            args.append(shown)
            record.exc_info = None
            record.exc_text = None
        record.args = tuple(args)
        return True


class TerminalFormatter(logging.Formatter):
    """Timestamped lines for a terminal or a plain log file, with the job id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "RQ_JOB_ID", None)
        return f"{line} [job {job_id}]" if job_id else line


FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
"""A field name journald keeps; it drops others (``msg``, ``levelname`` …) after parsing them."""


def journal_handler() -> logging.Handler:
    """systemd-python's JournalHandler, sending only the fields journald keeps.

    Its ``emit`` sends every attribute of the record, some 25 per line (``args``, ``msecs``,
    ``relativeCreated`` …): journald parses each and discards the lower-case ones, on every line
    of every job. We send the same stored fields (MESSAGE, PRIORITY, LOGGER, THREAD_NAME,
    PROCESS_NAME, CODE_*, SYSLOG_IDENTIFIER, our RQ_* and any upper-case ``extra=`` of the job's own
    logging), except CODE_ARGS, which only repeats what MESSAGE says.
    """
    from systemd.journal import JournalHandler

    class FieldsHandler(JournalHandler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)  # (this sets exc_text)
                fields = dict(self._extra, PRIORITY=format(self.map_priority(record.levelno)), LOGGER=record.name,
                              THREAD_NAME=record.threadName, PROCESS_NAME=record.processName,
                              CODE_FILE=record.pathname, CODE_LINE=record.lineno, CODE_FUNC=record.funcName)
                if record.exc_text:
                    fields["EXCEPTION_TEXT"] = record.exc_text
                if record.exc_info:
                    fields["EXCEPTION_INFO"] = record.exc_info
                fields.update((k, v) for k, v in record.__dict__.items() if FIELD_NAME.match(k))
                self.send(message, **fields)
            except Exception:
                self.handleError(record)

    return FieldsHandler(SYSLOG_IDENTIFIER=IDENTIFIER)


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode for it)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "INFO") -> None:
    """Install our one handler on the root logger (rq then adds none of its own)."""
    handler: logging.Handler
    if under_journald():
        handler = journal_handler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TerminalFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(WebhookUrlFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
