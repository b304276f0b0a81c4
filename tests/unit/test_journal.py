from __future__ import annotations

import logging
import os
import sys

from rq_worker_service import journal


def make_record(msg="hello", **extra):
    record = logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_context_fields_are_added_and_explicit_ones_win():
    journal.set_worker("w1")
    journal.set_job("j1", "app.f", "q")
    try:
        record = make_record()
        journal.ContextFilter().filter(record)
        assert (record.RQ_WORKER, record.RQ_JOB_ID, record.RQ_JOB_FUNC, record.RQ_QUEUE) == ("w1", "j1", "app.f", "q")
        record = make_record(RQ_JOB_ID="other")
        journal.ContextFilter().filter(record)
        assert record.RQ_JOB_ID == "other"
    finally:
        journal.clear_job()
    record = make_record()
    journal.ContextFilter().filter(record)
    assert not hasattr(record, "RQ_JOB_ID")
    assert record.RQ_WORKER == "w1"


def test_terminal_lines_have_time_level_and_job():
    line = journal.TerminalFormatter().format(make_record("working", RQ_JOB_ID="j9"))
    assert "INFO" in line and line.endswith("working [job j9]")
    assert line[:4].isdigit()


def test_under_journald_only_when_stderr_is_the_journal_stream(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not journal.under_journald()
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert journal.under_journald()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not journal.under_journald()


def test_rqs_picked_up_line_carries_the_job_it_names():
    """rq logs it before any hook of ours knows the job: the fields come from its arguments."""
    for template, args in ((journal.PICKED_UP[0], ("w1", "\x1b[32mreports\x1b[39;49;00m", "app.f(1)", "job-7")),
                           (journal.PICKED_UP[1], ("w1", "reports", "job-7"))):
        record = logging.LogRecord("rq.worker", logging.INFO, __file__, 1, template, args, None)
        journal.ContextFilter().filter(record)
        assert (record.RQ_JOB_ID, record.RQ_QUEUE) == ("job-7", "reports")
    other = logging.LogRecord("rq.worker", logging.INFO, __file__, 1, "Worker %s: %s", ("w1", "x"), None)
    journal.ContextFilter().filter(other)
    assert not hasattr(other, "RQ_JOB_ID")


def test_journal_handler_sends_the_fields_journald_keeps():
    handler = journal.journal_handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    sent = []
    handler.send = lambda message, **fields: sent.append((message, fields))
    record = make_record("job %s done", RQ_JOB_ID="j1", REPORT_ID=42, lower_case="dropped")
    record.args = ("j1",)
    handler.emit(record)
    message, fields = sent[0]
    assert message == "job j1 done"
    assert fields["RQ_JOB_ID"] == "j1" and fields["REPORT_ID"] == 42  # ours and the job's own upper-case extra=
    assert fields["SYSLOG_IDENTIFIER"] == journal.IDENTIFIER and fields["PRIORITY"] == "6" and fields["LOGGER"] == "x"
    assert {"CODE_FILE", "CODE_LINE", "CODE_FUNC", "THREAD_NAME", "PROCESS_NAME"} <= set(fields)
    assert all(journal.FIELD_NAME.match(name) for name in fields), fields  # nothing journald would drop
    assert "CODE_ARGS" not in fields
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    handler.emit(failed)
    message, fields = sent[1]
    assert "ValueError: boom" in message and "ValueError: boom" in fields["EXCEPTION_TEXT"]
    assert fields["PRIORITY"] == "3"
