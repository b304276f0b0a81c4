"""The e2e app's schedule (RQ_CRON_CONFIG), in rq cron's own format: moved unchanged from ``rq cron``.

Both jobs go to a queue no worker listens to, so that the test counts enqueues (by job id), not runs."""

from e2ejobs import quick_job
from rq import cron

cron.register(quick_job, "cron-e2e", args=(10,), interval=10, name="every-10s")
cron.register(quick_job, "cron-e2e", args=(60,), cron="* * * * *", name="every-minute")
