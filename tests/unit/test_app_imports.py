"""RQ_EXCEPTION_HANDLERS and RQ_SETTINGS_MODULE import from the app in ``prepare`` (``run`` and ``run --check``).

What ``rq worker --exception-handler X -c M`` imports before it takes a job, imported here too: what
cannot be imported or called is one line naming the variable (exit 78), not a traceback at the first
failed job; what can reaches the worker as rq's cli hands it over.
"""

from __future__ import annotations

import sys
import textwrap

import fakeredis
import pytest

from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.notify import Notifier
from rq_worker_service.prepare import prepare
from rq_worker_service.service import build_worker

MODULES = {
    "handlers.py": """
        def first(job, exc_type, exc_value, traceback):
            return False

        def second(job, exc_type, exc_value, traceback):
            return None

        class Reporter:
            @staticmethod
            def report(job, *exc_info):
                return None

        NOT_CALLABLE = 3
        lam = lambda job, *exc_info: None  # noqa: E731
    """,
    "rq_settings.py": """
        QUEUES = ["high", "default"]
        REDIS_URL = "redis://elsewhere:6379/0"
    """,
    "same_settings.py": "QUEUES = ['default']\nREDIS_URL = 'redis://127.0.0.1:1/0'\n",
    "raising.py": "raise KeyError('SENTRY_DSN')\n",
    "needs_dep.py": "import no_such_dependency_of_the_app  # noqa: F401\n",
    "exiting.py": "import sys\nsys.exit(3)\n",
    "quoting.py": "import os\nraise ConnectionError(f\"cannot log in with {os.environ['UNIT_APP_SECRET']}\")\n",
}


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A tmp app package ``unitapp`` (a unique name per test: sys.modules keeps what was imported)."""
    name = f"unitapp_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for file, text in MODULES.items():
        (package / file).write_text(textwrap.dedent(text))
    monkeypatch.setattr(sys, "path", list(sys.path))  # prepare extends it
    monkeypatch.chdir(tmp_path)
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def env_for(app: str, tmp_path, **variables: str) -> dict[str, str]:
    return {"REDIS_URL": "redis://127.0.0.1:1/0", "RQ_APP_PATH": str(tmp_path),
            **{key: value.replace("APP", app) for key, value in variables.items()}}


def refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(load_settings(env))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("value, expected", [
    ("APP.handlers.nope", "APP.handlers has no nope"),
    ("APP.nope.first", "APP has no nope.first"),
    ("nomodule_here.first", "no module nomodule_here on the import path"),
    ("APP.handlers.NOT_CALLABLE", "a function handler(job, exc_type, exc_value, traceback) (it is a int)"),
    ("APP.raising.first", "APP.raising raised KeyError: 'SENTRY_DSN'"),
    ("APP.needs_dep.first", "No module named 'no_such_dependency_of_the_app'"),
    ("APP.exiting.first", "APP.exiting raised SystemExit: 3"),
    ("APP.handlers.first,APP.handlers.nope", "APP.handlers has no nope"),
])
def test_a_handler_that_does_not_import_or_call_is_one_line_naming_the_variable(app, tmp_path, value, expected):
    message = refused(env_for(app, tmp_path, RQ_EXCEPTION_HANDLERS=value))
    assert message.startswith("RQ_EXCEPTION_HANDLERS="), message
    assert expected.replace("APP", app) in message, message


@pytest.mark.parametrize("value", ["a b", "first", "APP.handlers.first,APP.handlers.first", "APP..x", "é.x", ","])
def test_a_handler_list_of_the_wrong_form_is_refused_before_any_import(app, tmp_path, value):
    assert refused(env_for(app, tmp_path, RQ_EXCEPTION_HANDLERS=value)).startswith("RQ_EXCEPTION_HANDLERS=")


def test_the_spawn_horse_must_be_able_to_import_each_handler_by_name(app, tmp_path):
    """rq pickles the handlers into the spawn horse's configuration: a lambda fails its start."""
    env = env_for(app, tmp_path, RQ_EXCEPTION_HANDLERS="APP.handlers.lam")
    prepare(load_settings(env))  # fork runs it in a forked copy: fine
    message = refused({**env, "RQ_WORKER_CLASS": "spawn"})
    assert "spawn horse can import" in message, message


@pytest.mark.parametrize("value, expected", [
    ("APP.raising", "APP.raising raised KeyError: 'SENTRY_DSN'"),
    ("APP.needs_dep", "No module named 'no_such_dependency_of_the_app'"),
    ("APP.exiting", "raised SystemExit: 3"),
    ("APP.nope", "a module the app has"),
    ("nomodule_here", "a module the app has"),
    ("APP.rq_settings.QUEUES", "a module the app has"),
    ("APP/rq_settings.py", "a module's dotted name"),
])
def test_a_settings_module_that_does_not_import_is_one_line_naming_the_variable(app, tmp_path, value, expected):
    message = refused(env_for(app, tmp_path, RQ_SETTINGS_MODULE=value))
    assert message.startswith("RQ_SETTINGS_MODULE="), message
    assert expected.replace("APP", app) in message, message


def test_handlers_reach_the_worker_in_order_as_rqs_cli_passes_them(app, tmp_path):
    env = env_for(app, tmp_path, RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER="yes",
                  RQ_EXCEPTION_HANDLERS="APP.handlers.second, APP.handlers.Reporter.report APP.handlers.first")
    for worker_class in ("fork", "simple", "spawn"):
        prepared = prepare(load_settings({**env, "RQ_WORKER_CLASS": worker_class}))
        worker = build_worker(prepared, fakeredis.FakeRedis(), Notifier())
        handlers = sys.modules[f"{app}.handlers"]
        assert worker._exc_handlers == [handlers.second, handlers.Reporter.report, handlers.first], worker_class
        assert worker.disable_default_exception_handler is True


def test_without_handlers_the_worker_keeps_rqs_defaults(app, tmp_path):
    worker = build_worker(prepare(load_settings(env_for(app, tmp_path))), fakeredis.FakeRedis(), Notifier())
    assert worker._exc_handlers == [] and worker.disable_default_exception_handler is False


def test_the_settings_module_is_imported_and_what_rq_would_read_from_it_is_named(app, tmp_path):
    prepared = prepare(load_settings(env_for(app, tmp_path, RQ_SETTINGS_MODULE="APP.rq_settings")))
    assert f"{app}.rq_settings" in sys.modules
    warning = " ".join(prepared.settings.warnings)
    assert "QUEUES (here: RQ_QUEUES)" in warning and "REDIS_URL (here: REDIS_URL)" in warning, warning
    assert "elsewhere" not in warning, "a value (a URL may hold a password) is never shown"


def test_a_settings_module_that_agrees_with_the_variables_gets_no_warning(app, tmp_path):
    prepared = prepare(load_settings(env_for(app, tmp_path, RQ_SETTINGS_MODULE="APP.same_settings")))
    assert not prepared.settings.warnings


def test_an_import_error_that_quotes_the_redis_password_does_not_show_it(app, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIT_APP_SECRET", "Tr0ub4dor-s3cret")
    env = {**env_for(app, tmp_path, RQ_SETTINGS_MODULE="APP.quoting"), "REDIS_PASSWORD": "Tr0ub4dor-s3cret"}
    message = refused(env)
    assert "cannot log in with ***" in message and "Tr0ub4dor" not in message, message
