"""What ``run`` builds from its ``Settings`` before it connects, built once, for ``run`` and ``run --check``.

``run --check`` is the unit's ``ExecReload=`` guard: what passes it is what the re-executed worker
starts with. Validating the variables one by one was not enough: redis-py reads the URL again, with
its own parser and its own checks, and builds the connection only when it connects; rq encodes the
queue keys only when it sends them. A value each variable's check let pass then failed the start
with a traceback and exit 1, which ``Restart=on-failure`` repeats every five seconds for ever. So
both paths go through ``prepare``: the Redis client exactly as ``run`` makes it (for a cluster, its
seed node's; the slot owner's differs only in host and port), one connection object of it (which
is where redis-py checks its arguments), the queues as rq's ``Queue`` objects with their keys as
redis-py will send them, the worker class, and what the worker imports from the app, whose directories
go on the import path first: its rq settings module, its classes (RQ_SERIALIZER, RQ_JOB_CLASS,
RQ_QUEUE_CLASS, RQ_CONNECTION_CLASS, RQ_WORKER_CLASS: ``classes``) and its exception handlers
(``appimport``). A mistake here is a ``ConfigError``: one line, exit 78.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from .appimport import exception_handlers, extend_import_path, ignored_settings, import_settings_module
from .classes import AppClasses, app_classes, connection_class
from .config import ConfigError, Settings
from .connection import make_connection
from .worker import ServiceWorkerMixin
from .worker_classes import service_class


@dataclass(frozen=True)
class Prepared:
    """The settings, and what ``run`` builds from them before its first connection."""

    settings: Settings
    worker_class: type[ServiceWorkerMixin]
    classes: AppClasses
    redis_class: type[redis.Redis]
    exception_handlers: tuple[Callable[..., Any], ...] = ()


def prepare(settings: Settings) -> Prepared:
    """Build, without connecting, everything ``run`` builds before it connects; raises ConfigError."""
    extend_import_path(settings)  # the app's modules import from there, as its jobs will
    module = import_settings_module(settings)  # first, as rq worker -c does: it may set up what the rest uses
    if module is not None:
        settings = replace(settings, warnings=(*settings.warnings, *ignored_settings(module, settings)))
    classes = app_classes(settings)
    redis_class = connection_class(settings)
    worker_class = service_class(settings.worker_class)
    target = settings.redis
    variable = "REDIS_SENTINELS" if target.sentinels else "REDIS_URL"
    try:
        client = make_connection(target, settings.key_prefix, settings.name, offline=True, redis_class=redis_class)
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)  # redis-py checks its arguments here, not before
    except (TypeError, ValueError, redis.exceptions.RedisError) as exc:
        raise ConfigError(variable, target.display, f"settings redis-py can connect with ({exc})") from None
    encoder = client.get_encoder()
    for queue in (classes.queue(name, client) for name in settings.queues):  # as the worker makes them
        try:
            encoder.encode(queue.key)
        except (UnicodeError, redis.exceptions.DataError):
            raise ConfigError("RQ_QUEUES", queue.name, "queue names redis-py can send (UTF-8 text)") from None
    return Prepared(settings=settings, worker_class=worker_class, classes=classes, redis_class=redis_class,
                    exception_handlers=exception_handlers(settings))
