"""Entry point of a work horse in ``RQ_WORKER_CLASS=spawn`` mode: ``python -m rq_worker_service.horse``.

rq's SpawnWorker starts a bare interpreter that knows nothing of our configuration: the job's
module is not importable from RQ_APP_PATH, its log lines lose the job's journal fields, and the
Redis password travels on its command line, visible in ``ps``. This horse instead reads the same
configuration as its parent from the environment it inherits, and gets only ids (and the
worker's serializer, as rq's own spawn horse does) on its command line.
"""

from __future__ import annotations

import os
import sys

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.worker import Worker

from . import journal
from .config import load_settings
from .connection import make_connection
from .process import die_with_parent
from .rqcompat import job_func
from .service import extend_import_path


def main(argv: list[str]) -> None:
    worker_key, job_id, queue_name, execution_id, parent_pid, serializer = argv
    die_with_parent(int(parent_pid))
    os.setpgrp()
    settings = load_settings(os.environ)
    journal.setup_logging(settings.log_level)
    extend_import_path(settings)
    connection = make_connection(settings.redis)
    worker = Worker.find_by_key(worker_key, connection=connection, serializer=serializer or None)
    if worker is None:
        sys.exit(1)
    job = Job.fetch(job_id, connection=connection, serializer=worker.serializer)
    queue = Queue(queue_name, connection=connection, serializer=worker.serializer)
    worker.execution = Execution.fetch(execution_id, job.id, connection=connection)
    journal.set_worker(worker.name)
    journal.set_job(job.id, job_func(job), queue.name)
    worker._is_horse = True
    worker.main_work_horse(job, queue)


if __name__ == "__main__":
    main(sys.argv[1:])
