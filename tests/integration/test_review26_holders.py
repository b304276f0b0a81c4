"""Adversarial review (issue 26): a job popped by a fenced worker must stay where a sweep finds it.

Fails while a held list can hold a job that no sweep looks at."""

from __future__ import annotations

import signal

from helpers import notify_socket, wait_until
from rq import Queue
from test_fencing import FAST, name, status, stopped

from rq_worker_service import keys
from rq_worker_service.fencing import COUNTS_KEY, FENCED_KEY

FREEZE_THEN_DIE = '''
import os, signal
arm = os.environ.get("R26_FREEZE_ARM")
if arm:
    from rq_worker_service import faults, held

    original = held.Held._blmove

    def frozen_first(self, *args, **kwargs):
        if os.path.exists(arm):  # once: frozen just before its blocking pop goes out
            os.remove(arm)
            os.kill(os.getpid(), signal.SIGSTOP)
            open(arm + ".woken", "w").close()
        return original(self, *args, **kwargs)

    def reached(point):
        if point == "pop.reply" and os.path.exists(arm + ".woken"):
            os.kill(os.getpid(), signal.SIGKILL)  # the woken worker's host dies with the reply in hand

    held.Held._blmove = frozen_first
    faults.reached = reached
'''


def beats(rconn, worker: str) -> int:
    return int(rconn.hget(COUNTS_KEY, worker) or 0)


def test_a_job_popped_by_a_woken_fenced_worker_that_then_dies_is_put_back_by_the_sweep(start_worker, rconn,
                                                                                       tmp_path):
    """A worker frozen just before its blocking pop goes out is fenced; sweeps follow the fencing (its
    rq worker key is gone and its list empty: before the fix, the first of them forgot its name in
    ``rq:service:holders``). Woken, it sends that pop, which hands it a job into its held list, and it
    dies there (kill -9; its host lost, so no restarted instance). A sweep must still find that list:
    the live worker of its queue runs the job."""
    site = tmp_path / "freezesite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FREEZE_THEN_DIE)
    arm = tmp_path / "arm"
    env = {**FAST, "RQ_QUEUES": "q-lost", "PYTHONPATH": str(site), "R26_FREEZE_ARM": str(arm)}
    one, two = notify_socket(tmp_path, "one"), notify_socket(tmp_path, "two")
    frozen = start_worker("1", notify=one, env=env)
    start_worker("2", notify=two, env={**FAST, "RQ_QUEUES": "q-other"})
    one.wait_for("READY=1")
    two.wait_for("READY=1")
    arm.touch()
    wait_until(lambda: not arm.exists() and stopped(frozen.pid), 5, what="worker 1 to freeze before its pop")
    wait_until(lambda: rconn.hexists(FENCED_KEY, name("1")), 20, what="worker 2 to fence worker 1")
    fenced_at = beats(rconn, name("2"))
    # three more beats of worker 2: at least two whole ticks, each with its sweep, after the fencing
    wait_until(lambda: beats(rconn, name("2")) >= fenced_at + 3, 10, what="two sweeps of worker 2 after the fencing")
    job = Queue("q-lost", connection=rconn).enqueue("testjobs.quick_job", 1, job_id="popped-by-the-woken")
    frozen.signal(signal.SIGCONT)
    assert frozen.wait(15) == -signal.SIGKILL
    start_worker("3", env={**FAST, "RQ_QUEUES": "q-lost"})  # a live worker of that queue (worker 1 is gone)
    try:
        wait_until(lambda: status(rconn, job.id) == "finished", 15, what="the job to run on worker 3")
    except AssertionError:
        where = {"queue": rconn.lrange("rq:queue:q-lost", 0, -1), "held": rconn.lrange(keys.held(name("1")), 0, -1),
                 "holders": rconn.smembers(keys.holders()), "status": status(rconn, job.id)}
        raise AssertionError(f"the job never ran: {where}") from None
    one.close()
    two.close()
