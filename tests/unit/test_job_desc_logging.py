"""RQ_DISABLE_JOB_DESC_LOGGING: a job's arguments (its description) reach no log line (issue 26, item 5)."""

from __future__ import annotations

import base64
import logging
import pickle

import fakeredis
import pytest
from rq import Queue

from rq_worker_service.cli import build_parser, opposite_flag
from rq_worker_service.config import load_settings
from rq_worker_service.journal import FIELD_NAME, ContextFilter, TerminalFormatter
from rq_worker_service.notify import Notifier
from rq_worker_service.worker_classes import WORKER_CLASSES

SECRET = "Sekr1t-token"


@pytest.mark.parametrize("argv, expected", [
    ([], None), (["--disable-job-desc-logging"], True), (["--enable-job-desc-logging"], False),
])
def test_the_run_flag_and_its_opposite(argv, expected):
    args = build_parser().parse_args(["run", *argv])
    assert args.disable_job_desc_logging is expected
    settings = load_settings({"RQ_DISABLE_JOB_DESC_LOGGING": "yes"}, {"disable_job_desc_logging": expected})
    assert settings.disable_job_desc_logging is (expected is not False)  # the flag wins over the variable


def test_opposite_flags():
    assert opposite_flag("--with-scheduler") == "--without-scheduler"
    assert opposite_flag("--disable-job-desc-logging") == "--enable-job-desc-logging"
    with pytest.raises(ValueError):
        opposite_flag("--verbose")


@pytest.mark.parametrize("kind", sorted(WORKER_CLASSES))
@pytest.mark.parametrize("disabled", [False, True])
def test_every_worker_class_and_the_spawn_horse_take_the_setting(kind, disabled):
    settings = load_settings({"RQ_DISABLE_JOB_DESC_LOGGING": "yes" if disabled else "no"})
    cls = WORKER_CLASSES[kind]
    worker = cls(["default"], connection=fakeredis.FakeRedis(), settings=settings, notifier=Notifier())
    assert worker.log_job_description is not disabled
    if kind == "spawn":  # what horse.py builds its worker from: the same settings, then rq's dumped config
        _, attributes = pickle.loads(base64.b64decode(base64.b64encode(worker._dump_worker_config())))
        assert attributes["log_job_description"] is not disabled
        horse = cls([], worker.name, connection=worker.connection, prepare_for_work=False, settings=settings,
                    notifier=Notifier())
        assert horse.log_job_description is not disabled


class Lines(logging.Handler):
    """Each record as the terminal shows it, and the journal fields it would carry (journal.py)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.setFormatter(TerminalFormatter())
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if FIELD_NAME.match(k)}
        self.texts.append(self.format(record) + " " + repr(fields))


@pytest.mark.parametrize("disabled", [False, True])
def test_a_jobs_secret_arguments_reach_no_log_line(disabled):
    """A job that succeeds and one that fails, both called with a secret, run by the simple worker
    (in this process) at DEBUG: with the setting on, the secret is in no line nor journal field; off,
    rq's lines show it (so this test sees what it looks for)."""
    connection = fakeredis.FakeRedis()
    queue = Queue(connection=connection)
    queue.enqueue("os.path.isfile", SECRET)  # its result (rq logs it at DEBUG) is no secret
    queue.enqueue("time.sleep", SECRET)  # TypeError, whose text does not repeat the argument
    settings = load_settings({"RQ_DISABLE_JOB_DESC_LOGGING": "yes" if disabled else "no"})
    worker = WORKER_CLASSES["simple"](["default"], connection=connection, settings=settings, notifier=Notifier())
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    try:
        assert worker.work(burst=True, logging_level="DEBUG")
    finally:
        root.removeHandler(lines)
    assert queue.failed_job_registry.count == 1 and any("time.sleep" in text for text in lines.texts)
    shown = [text for text in lines.texts if SECRET in text]
    assert bool(shown) is not disabled, shown
