"""The app's own rq classes: RQ_SERIALIZER, RQ_JOB_CLASS, RQ_QUEUE_CLASS and RQ_CONNECTION_CLASS, imported.

An app that enqueues with rq's JSONSerializer, or its own Job subclass, writes jobs that only the same
serializer and class read back: a job the worker, the recovery of a crashed worker or ``status`` read
with pickle ended FAILED or unreadable. So every part of the service that reads or writes jobs asks
``app_classes(settings)`` for the queue and the job class and the serializer to use, as ``rq worker -S
-j --queue-class`` makes rq's worker do.

The variables are checked for their form in ``variables``; here they are imported, from the app
(``appimport.extend_import_path`` put RQ_APP_PATH/RQ_APP_VIRTUALENV on the import path first) and
checked for their kind. A mistake is a ``ConfigError`` naming the variable and the fix (exit 78, from
``run`` and ``run --check`` alike, which both go through ``prepare``).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import Serializer, resolve_serializer

from .config import ConfigError, Settings

WHERE = "importable from the app (RQ_APP_DIR, RQ_APP_PATH or RQ_APP_VIRTUALENV)"


@dataclass(frozen=True)
class AppClasses:
    """What jobs are read and written with; ``serializer_name`` is the variable's value, which rq's
    worker keeps to hand its spawned horse (``_serializer_arg``)."""

    serializer_name: str
    serializer: Serializer
    job_class: type[Job]
    queue_class: type[Queue]

    def queue(self, name: str, connection: redis.Redis) -> Queue:
        """A queue as the worker makes it: its jobs fetched with the app's job class and serializer."""
        return self.queue_class(name, connection=connection, job_class=self.job_class, serializer=self.serializer)

    def fetch(self, job_id: str, connection: Any) -> Job:
        """``job_class.fetch`` with the app's serializer; raises rq's NoSuchJobError."""
        return self.job_class.fetch(job_id, connection=connection, serializer=self.serializer)


RQ_DEFAULTS = AppClasses("pickle", resolve_serializer("pickle"), Job, Queue)
"""rq's own: what ``rq worker`` uses without -S, -j, --queue-class."""


def imported(variable: str, path: str, kind: str) -> Any:
    """``path`` imported as rq imports its ``--*-class`` options (the longest prefix that is a module, then
    attributes); a failure, whatever the app's module raised while being imported, is one line naming
    ``variable`` and what failed."""
    parts = path.split(".")
    why = f"there is no module {parts[0]}"
    for end in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:end])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
                continue  # no such module: a shorter prefix may be one, and the rest its attributes
            why = f"importing {module} raised {type(exc).__name__}: {exc}"
            break
        except Exception as exc:  # the module's own error (a SyntaxError, a failing import in it …)
            why = f"importing {module} raised {type(exc).__name__}: {exc}"
            break
        try:
            for attribute in parts[end:]:
                found = getattr(found, attribute)
        except AttributeError:
            why = f"module {module} has no {'.'.join(parts[end:])}"
            break
        return found
    raise ConfigError(variable, path, f"a dotted path to {kind} {WHERE}; {why}")


def subclass(variable: str, path: str | None, base: type, kind: str) -> Any:
    """The class ``path`` names, refused unless it is ``base`` or a subclass; ``base`` when unset."""
    if path is None:
        return base
    found = imported(variable, path, kind)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(variable, path, f"a dotted path to {kind} {WHERE}; it names {found!r}")
    return found


def serializer(name: str) -> Serializer:
    """rq's ``resolve_serializer``, with our error: pickle, json, or the app's object with dumps and loads."""
    if name not in ("pickle", "json"):
        imported("RQ_SERIALIZER", name, "a serializer")  # the import's own error, not rq's NotImplementedError
    try:
        return resolve_serializer(name)
    except NotImplementedError:
        raise ConfigError("RQ_SERIALIZER", name, f"pickle, json, or a dotted path to a class or module with dumps "
                          f"and loads (rq's --serializer) {WHERE}") from None


@functools.cache
def _resolve(serializer_name: str, job_class: str | None, queue_class: str | None) -> AppClasses:
    return AppClasses(serializer_name=serializer_name, serializer=serializer(serializer_name),
                      job_class=subclass("RQ_JOB_CLASS", job_class, Job, "a subclass of rq.job.Job"),
                      queue_class=subclass("RQ_QUEUE_CLASS", queue_class, Queue, "a subclass of rq.queue.Queue"))


def app_classes(settings: Settings) -> AppClasses:
    """The serializer, job and queue classes of ``settings``, imported once per process; raises ConfigError."""
    return _resolve(settings.serializer, settings.job_class, settings.queue_class)


def connection_class(settings: Settings) -> type[redis.Redis]:
    """RQ_CONNECTION_CLASS imported (redis.Redis when unset); raises ConfigError."""
    return subclass("RQ_CONNECTION_CLASS", settings.connection_class, redis.Redis, "a subclass of redis.Redis")
