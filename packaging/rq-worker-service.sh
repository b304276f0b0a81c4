#!/bin/sh
# /usr/bin/rq-worker-service: run the command in the package's own Python environment.
exec /usr/lib/rq-worker-service/bin/python3 -m rq_worker_service "$@"
