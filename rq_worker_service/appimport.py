"""What the worker imports from the app: its import path, its exception handlers, its rq settings module.

``rq worker --exception-handler myapp.errors.report -c myapp.rq_settings`` imports both from the app
before it takes a job; so does ``prepare`` here, for ``run`` and ``run --check`` alike, so that a name
that does not import (a typo, a module missing from RQ_APP_PATH or the virtualenv, a module that
raises) is one line and exit 78 at the start or the reload, never a traceback at the first failed job.
The spawn horse, a fresh interpreter, imports the settings module again (``horse``): its
``sentry_sdk.init()`` must run there too; the handlers reach it with rq's own worker configuration.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .config import MASK, ConfigError, Settings, virtualenv_site_packages

WHERE = "RQ_APP_DIR, RQ_APP_PATH, RQ_APP_VIRTUALENV"

RQ_SETTINGS = {
    "REDIS_URL": "REDIS_URL", "REDIS_HOST": "REDIS_HOST", "REDIS_PORT": "REDIS_PORT", "REDIS_DB": "REDIS_DB",
    "REDIS_PASSWORD": "REDIS_PASSWORD", "REDIS_SSL": "a rediss:// REDIS_URL", "SENTINEL": "REDIS_SENTINELS",
    "QUEUES": "RQ_QUEUES", "NAME": "run --name", "DICT_CONFIG": "RQ_LOG_LEVEL (the journal keeps the format)",
}
"""What ``rq worker -c`` reads from the settings module (rq.cli: ``worker`` and ``get_redis_from_config``),
and the setting that serves it here. The service is configured by its variables, which the operator
commands, ``run --check`` and the spawn horse read alike; a module's values would bypass their checks
(and its Redis password the secret handling), so they are not read, and a warning names those set."""


def extend_import_path(settings: Settings) -> None:
    """RQ_APP_PATH first (the app's own modules win), the app's virtualenv after our packages."""
    for path in reversed(settings.app_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    if settings.app_virtualenv:
        site = str(virtualenv_site_packages(settings.app_virtualenv))
        if site not in sys.path:
            sys.path.append(site)


def _why(exc: BaseException, settings: Settings) -> str:
    """The app's exception as text for the one line, without the service's own secrets (an app's
    connection error at import may quote what it was given)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    sentinels = settings.redis.sentinels
    for secret in (settings.redis.password, sentinels.password if sentinels else None):
        if secret:
            text = text.replace(secret, MASK)
    return text


def _import_module(variable: str, value: str, name: str, settings: Settings) -> ModuleType | None:
    """Module ``name``, or None when there is no such module (as opposed to one that fails to import)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None  # this name (or a package above it) is not there
        raise ConfigError(variable, value, f"a module that imports ({name}: {_why(exc, settings)})") from None
    except (Exception, SystemExit) as exc:  # the app's module raised at its import
        raise ConfigError(variable, value, f"a module that imports ({name} raised {_why(exc, settings)})") from None


def import_object(variable: str, path: str, settings: Settings) -> Any:
    """The object at dotted ``path`` (module, then attributes: ``myapp.errors.Reporter.report`` too, as
    rq's ``import_attribute`` takes it), imported from the app; a ConfigError that says why not."""
    bits = path.split(".")
    for cut in range(len(bits) - 1, 0, -1):
        module = _import_module(variable, path, ".".join(bits[:cut]), settings)
        if module is None:
            continue
        found: Any = module
        for attribute in bits[cut:]:
            if not hasattr(found, attribute):
                raise ConfigError(variable, path, f"a name the app defines ({'.'.join(bits[:cut])} has no "
                                  f"{'.'.join(bits[cut:])}); check the spelling")
            found = getattr(found, attribute)
        return found
    raise ConfigError(variable, path, f"a module the app has (no module {bits[0]} on the import path: {WHERE})")


def exception_handlers(settings: Settings) -> tuple[Callable[..., Any], ...]:
    """RQ_EXCEPTION_HANDLERS imported, in order; each must be callable, and for the spawn worker
    importable by name in its horse (rq pickles them into its configuration: a lambda or a bound
    method would fail the worker's start)."""
    handlers = []
    for path in settings.exception_handlers:
        handler = import_object("RQ_EXCEPTION_HANDLERS", path, settings)
        if not callable(handler):
            raise ConfigError("RQ_EXCEPTION_HANDLERS", path, f"a function handler(job, exc_type, exc_value, "
                              f"traceback) (it is a {type(handler).__name__})")
        if settings.worker_class == "spawn":
            try:
                pickle.dumps(handler)
            except Exception as exc:
                raise ConfigError("RQ_EXCEPTION_HANDLERS", path, f"a handler the spawn horse can import by its "
                                  f"name, such as a module's function ({_why(exc, settings)})") from None
        handlers.append(handler)
    return tuple(handlers)


def import_settings_module(settings: Settings) -> ModuleType | None:
    """RQ_SETTINGS_MODULE imported (run once per process: its ``sentry_sdk.init()``), or None."""
    name = settings.settings_module
    if name is None:
        return None
    module = _import_module("RQ_SETTINGS_MODULE", name, name, settings)
    if module is None:
        raise ConfigError("RQ_SETTINGS_MODULE", name, f"a module the app has (not found on the import path: "
                          f"{WHERE})")
    return module


def ignored_settings(module: ModuleType, settings: Settings) -> list[str]:
    """A warning naming what ``rq worker -c`` would have read from ``module`` and this service does not,
    where it differs from the service's own setting."""
    values = {name: getattr(module, name) for name in RQ_SETTINGS if hasattr(module, name)}
    if list(values.get("QUEUES", ())) == list(settings.queues):
        values.pop("QUEUES")
    for name, ours in (("NAME", settings.name), ("REDIS_URL", settings.redis.url)):
        if values.get(name) == ours:
            values.pop(name)
    if not values:
        return []
    names = ", ".join(f"{name} (here: {RQ_SETTINGS[name]})" for name in values)
    return [f"RQ_SETTINGS_MODULE {module.__name__} sets {names}, which rq worker -c reads and this service does "
            "not: the worker is configured by its variables only"]
