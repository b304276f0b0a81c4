"""The schedule: an app's ``rq cron`` config imported into validated ``Entry`` values.

The config is rq's own format, so an app moves its file unchanged: it calls ``rq.cron.register``,
which appends to rq's module-global ``_job_data_registry``; ``load`` empties that list, imports the
file and takes what it gained, leaving the list empty again (no stale entries for a reload or for a
stock ``CronScheduler`` in the same process). Each load executes the file's current source (never a
cached module or bytecode), so a reload sees the edited file. What rq would only log and skip (a bad
cron string) or silently allow (two jobs sharing a name, whose slots and state are kept per name) is
refused here in one line (``ConfigError``: exit 78 at the caller), before anything is enqueued.

rq is imported inside the functions only: ``keys`` settles RQ_KEY_PREFIX before rq's first import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from croniter import CroniterBadDateError, croniter

from ..config import MASK, ConfigError
from ..variables import Invalid, time_zone

VARIABLE = "RQ_CRON_CONFIG"
CATCH_UP = ("skip", "once")


@dataclass(frozen=True)
class Entry:
    """One registered cron job, validated; its ``name`` keys its slots' job ids and its state in Redis."""

    name: str
    func: Callable[..., Any]
    func_name: str
    queue_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    interval: int | None
    cron: str | None
    zone: str
    catch_up: str
    job_options: dict[str, Any]


@dataclass(frozen=True)
class Schedule:
    """What one load of the config gave: ``source`` is the config as named (RQ_CRON_CONFIG)."""

    source: str
    entries: tuple[Entry, ...]


def register(func: Callable[..., Any], queue_name: str, *args: Any, timezone: str | None = None,
             catch_up: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """``rq.cron.register`` with two more keywords: ``timezone=`` (an IANA zone the cron string is read
    in, instead of RQ_CRON_TIMEZONE) and ``catch_up=`` (skip or once, instead of RQ_CRON_CATCH_UP).

    It fills rq's own registry, so a file may mix it with ``rq.cron.register``. The two keywords are
    added to rq's record only when given: stock ``rq cron`` then refuses that job (it logs an error)
    rather than running it in its host's zone.
    """
    from rq import cron as rq_cron

    data: dict[str, Any] = rq_cron.register(func, queue_name, *args, **kwargs)
    if timezone is not None:
        data["timezone"] = timezone
    if catch_up is not None:
        data["catch_up"] = catch_up
    return data


def load(config: str, *, zone: str, catch_up: str, secrets: Collection[str] = ()) -> Schedule:
    """Import ``config`` afresh and return its entries; ``zone`` and ``catch_up`` are the defaults
    (RQ_CRON_TIMEZONE, RQ_CRON_CATCH_UP) for jobs that do not set their own. The app's import path must
    already be on ``sys.path``. ``secrets`` are masked in a message quoting the app's exception."""
    from rq import cron as rq_cron

    rq_cron._job_data_registry = []
    try:
        _execute(config, secrets)
        registered = list(rq_cron._job_data_registry)
    finally:
        rq_cron._job_data_registry = []
    if not registered:
        raise ConfigError(VARIABLE, config, "a schedule that registers a job (it imports, but calls no "
                          "rq.cron.register(...))")
    entries = tuple(_entry(config, data, zone, catch_up) for data in registered)
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(VARIABLE, None, f"{config}: job {entry.name!r}: registered twice: expected one job "
                              "per name (its slots and state are kept by name): give one of them name=...")
        seen.add(entry.name)
    return Schedule(source=config, entries=entries)


def _execute(config: str, secrets: Collection[str]) -> ModuleType:
    """Run the config's current source as rq cron would import it: an absolute path as a file (rq's
    module name for it), anything else as a dotted module (a relative file path converted as rq's
    ``normalize_config_path`` does, found from the working directory as ``rq cron`` finds it)."""
    from rq.utils import normalize_config_path, validate_absolute_path

    importlib.invalidate_caches()  # a file created since the last load
    try:
        if os.path.isabs(config):
            validate_absolute_path(config)
            name = f"rq_cron_config_{os.path.basename(config).replace('.', '_')}"
            spec = importlib.util.spec_from_file_location(name, config)
        else:
            if os.path.sep in config or config.endswith(".py"):
                cwd = os.getcwd()
                if cwd not in sys.path:
                    sys.path.append(cwd)
            name = normalize_config_path(config)
            spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return _fresh_module(name, spec)
    except (Exception, SystemExit) as exc:  # the app's file raised: its one line, not its traceback
        raise ConfigError(VARIABLE, config, f"a schedule that imports ({_last_line(exc, secrets)})") from None


def _fresh_module(name: str, spec: importlib.machinery.ModuleSpec) -> ModuleType:
    """The module executed from its source now: ``importlib.reload`` and the import system would take
    bytecode cached from an edit within the same second, and a failed run leaves no half module."""
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    source = loader.get_source(name) if isinstance(loader, importlib.abc.InspectLoader) else None
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        if source is None or spec.origin is None:
            loader.exec_module(module)  # type: ignore[union-attr]  # no source (bytecode only): as imported
        else:
            exec(compile(source, spec.origin, "exec"), module.__dict__)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    return module


def _last_line(exc: BaseException, secrets: Collection[str]) -> str:
    """The exception as its traceback's last line would print it, without the given secrets."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _entry(config: str, data: dict[str, Any], default_zone: str, default_catch_up: str) -> Entry:
    """One of rq's registry records as an Entry, or the ConfigError naming the job and its mistake."""
    from rq.cron import CronJob

    func = data["func"]
    func_name = f"{getattr(func, '__module__', None)}.{getattr(func, '__name__', None)}"
    name = data.get("name") or func_name

    def refuse(problem: str) -> ConfigError:
        return ConfigError(VARIABLE, None, f"{config}: job {name!r}: {problem}")

    if not isinstance(name, str):
        raise refuse("name= is not a string: expected the job's name, e.g. name='nightly-report'")
    if not callable(func):
        raise refuse(f"register's first argument is a {type(func).__name__}: expected the function to run")
    if func_name.startswith("rq_cron_config_") or "<" in getattr(func, "__qualname__", ""):
        raise refuse(f"{func_name} is defined in the schedule itself or inside a function, where no worker can "
                     "import it by name: expected a function of the app's modules")
    if not isinstance(data["queue_name"], str) or not data["queue_name"]:
        raise refuse(f"queue {data['queue_name']!r} is invalid: expected a queue's name, e.g. 'default'")
    interval, cron = data.get("interval"), data.get("cron")
    if (interval is None) == (cron is None):
        raise refuse("give either interval= (seconds) or cron= (a cron string), not both nor neither")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
        raise refuse(f"interval={interval!r} is invalid: expected a whole number of seconds, 1 or more")
    zone = data.get("timezone", default_zone)
    try:
        if not isinstance(zone, str):
            raise Invalid("a time zone's name as a string, e.g. 'Europe/Berlin'")
        time_zone(zone)
    except Invalid as exc:
        raise refuse(f"timezone={zone!r} is invalid: expected {exc}") from None
    if cron is not None:
        _check_cron(cron, refuse)
    catch_up = data.get("catch_up", default_catch_up)
    if catch_up not in CATCH_UP:
        raise refuse(f"catch_up={catch_up!r} is invalid: expected one of {', '.join(CATCH_UP)}")
    rq_fields = {key: value for key, value in data.items() if key not in ("timezone", "catch_up")}
    try:  # rq's own checks (webhooks) and its job_options, exactly as its scheduler would enqueue them
        job_options = CronJob(**rq_fields).job_options
    except (ValueError, TypeError) as exc:
        raise refuse(f"{exc}: expected what rq.cron.register takes") from None
    return Entry(name=name, func=func, func_name=func_name, queue_name=data["queue_name"],
                 args=tuple(data.get("args") or ()), kwargs=dict(data.get("kwargs") or {}), interval=interval,
                 cron=cron, zone=zone, catch_up=catch_up, job_options=job_options)


def _check_cron(cron: object, refuse: Callable[[str], ConfigError]) -> None:
    """croniter's own validation (rq's parser), and a string that matches some time at all: one that
    never does (``0 0 30 2 *``) would make every look-up search fifty years and fail."""
    if not isinstance(cron, str):
        raise refuse(f"cron={cron!r} is invalid: expected a cron string such as '0 3 * * *'")
    try:
        croniter(cron).get_next()
    except CroniterBadDateError:
        raise refuse(f"cron={cron!r} never matches a date: expected one that does, such as '0 3 * * *'") from None
    except (ValueError, KeyError, TypeError) as exc:  # croniter's errors are ValueErrors; a few slip out raw
        raise refuse(f"cron={cron!r} is invalid ({exc}): expected a cron string such as '0 3 * * *'") from None
