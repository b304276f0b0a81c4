"""Named fault points on the steps that move a job: where a test may kill, stop, cut or pause us.

A job is lost or run twice *between* steps, not at the moments a test happens to choose; so each
step that moves a job calls ``reached(<point>)`` right after it, and the fault-injection suite
(tests/integration/faults) replaces ``reached`` in the worker processes it starts with one that
acts at a chosen point: SIGKILL itself or its horse, send itself SIGTERM or SIGHUP, cut its Redis
connections, restart or step the clock of Redis, pause. In production ``reached`` does nothing and
reads nothing: no variable or file can switch a fault on in an installed worker.
"""

from __future__ import annotations

POINTS: dict[str, str] = {
    "pop.reply": "a pop's reply is in hand: the job id is in a list the worker owns",
    "pop.fetched": "the popped job's hash was loaded",
    "job.registered": "the job is registered as started (StartedJobRegistry, execution)",
    "spare.ready": "a spare horse rebuilt the job handed to it and answered ready; the worker has not said go",
    "horse.started": "the horse (fork or spawn) runs the job, or the simple worker is about to",
    "job.performed": "the job's function returned or raised, its end not yet written",
    "horse.released": "a spare's horse wrote its job's end and told its worker so; it has not exited",
    "job.ended": "the job's end (result, status, registries) is written",
    "rescue.claimed": "a rescue committed: the job is re-queued or failed, callbacks not yet run",
    "rescue.callback": "a rescue ran the job's failure callback",
    "fence.claimed": "a lost member was claimed by its fencer, its jobs not yet rescued",
    "sweep.requeue": "a sweep is about to put a never-started job back on its queue",
    "reload.exec": "a reload is about to re-execute the worker in place",
    "stop.teardown": "a stopping worker is about to leave",
}
"""Every point, with what has happened when it is reached. A point not listed here is a mistake
(``tests/unit/test_faults.py`` checks both ways: each listed point is reached somewhere)."""


def reached(point: str) -> None:
    """A step that moves a job has just happened. Does nothing: the fault suite replaces it."""
