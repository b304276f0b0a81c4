"""Entry point of a work horse in ``RQ_WORKER_CLASS=spawn`` mode: ``python -m rq_worker_service.horse``.

rq's SpawnWorker starts a bare interpreter from a ``-c`` source that knows nothing of our
configuration: the job's module is not importable from RQ_APP_PATH, its log lines lose the job's
journal fields, and its connection (the Redis password included) is spelled out on its command
line, visible in ``ps``. This horse instead reads the same configuration as its parent from the
environment it inherits and the secrets from a descriptor it inherits (``secret_env``: never from
its environment, which every subprocess of the job would inherit), gets the worker's own
configuration (its class, job and queue classes, exception handlers: what rq 3 hands its horse) from
that environment too, and only ids on its command line. It imports the app's settings module
(RQ_SETTINGS_MODULE) as the worker did: what ``sentry_sdk.init()`` sets up does not cross an exec.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import sys

from rq.executions import Execution

from . import exits, journal
from .appimport import extend_import_path, import_settings_module
from .classes import connection_class
from .config import ConfigError, load_settings
from .connection import make_connection
from .lease import LEASE_VAR, HorseLease
from .notify import Notifier
from .process import die_with_parent
from .rqcompat import job_func
from .secret_env import environment
from .worker import ServiceWorkerMixin
from .worker_classes import HORSE_CONFIG_VAR

log = logging.getLogger("rq_worker_service.horse")


def main(argv: list[str]) -> None:
    worker_key, job_id, queue_name, execution_id, parent_pid, serializer = argv
    die_with_parent(int(parent_pid))
    environment.receive()  # the secrets, handed over by the worker (never in this process's environment)
    settings = load_settings(environment)
    journal.setup_logging(settings.log_level)
    extend_import_path(settings)  # before unpickling: the classes may be the app's
    try:
        import_settings_module(settings)  # a fresh interpreter: the app's sentry_sdk.init() must run here too
    except ConfigError as exc:  # (it imported in the worker: changed on disk since, or failing only now)
        log.error("configuration error: %s", exc)
        sys.exit(exits.CONFIG)
    worker_class, attributes = pickle.loads(base64.b64decode(os.environ.pop(HORSE_CONFIG_VAR)))
    name = worker_key[len(worker_class.redis_worker_namespace_prefix):]
    connection = make_connection(settings.redis, settings.key_prefix, name, redis_class=connection_class(settings))
    if not connection.exists(worker_key):
        sys.exit(1)  # the worker is gone: nobody would record this job's outcome
    # Our classes take the service's settings; a class resolved to plain rq's here takes rq's arguments only.
    ours = dict(settings=settings, notifier=Notifier()) if issubclass(worker_class, ServiceWorkerMixin) else {}
    worker = worker_class([], name, connection=connection, job_class=attributes["job_class"],
                          queue_class=attributes["queue_class"], prepare_for_work=False,
                          serializer=serializer or None, **ours)
    worker.refresh()
    for attribute, value in attributes.items():
        setattr(worker, attribute, value)
    job = worker.job_class.fetch(job_id, connection=connection, serializer=worker.serializer)
    queue = worker.queue_class(queue_name, connection=connection, job_class=worker.job_class,
                               serializer=worker.serializer, death_penalty_class=worker.death_penalty_class)
    execution = Execution.fetch(execution_id, job.id, connection=connection)
    execution._job = job
    worker.execution = execution
    journal.set_worker(worker.name)
    journal.set_job(job.id, job_func(job), queue.name)
    worker._is_horse = True
    if isinstance(worker, ServiceWorkerMixin):
        worker.parts.main_pid = int(parent_pid)  # our main_work_horse dies with it
        lease = os.environ.pop(LEASE_VAR, None)
        if lease is not None:
            try:
                worker.parts.lease = HorseLease.open(lease)  # our main_work_horse keeps to it
            except OSError as exc:  # the job runs all the same, as before the lease existed
                log.warning("This horse cannot read its worker's lease (%s): it runs without it", exc)
    worker.main_work_horse(job, queue)


if __name__ == "__main__":
    main(sys.argv[1:])
