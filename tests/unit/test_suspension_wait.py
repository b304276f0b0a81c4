"""The worker's idle waits, on fakeredis: the wait while ``rq suspend`` holds (``worker._wait_while_suspended``,
rq's look replaced: what it shows, when it ends, and that an outage does not end it), and the pop and the
backoff after a failed one, which a stop keeps from blocking."""

from __future__ import annotations

import signal

import fakeredis
import pytest
import redis

from rq_worker_service import worker as worker_module
from rq_worker_service.config import load_settings
from rq_worker_service.notify import Notifier
from rq_worker_service.worker_classes import ServiceWorker


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.setattr(worker_module, "SUSPENSION_POLL", 0.01)
    w = ServiceWorker(["default"], connection=fakeredis.FakeRedis(), settings=load_settings({}), notifier=Notifier())
    w.register_birth()
    w.set_state("idle")
    return w


def looks(monkeypatch, worker, answers: list) -> list[tuple[str, str]]:
    """rq's look answers ``answers`` in turn (an exception is raised); returns (status line, rq state) at each."""
    seen = []

    def is_suspended(connection, w=None):
        seen.append((worker.parts.status.text(), worker.get_state()))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer()
        return answer

    monkeypatch.setattr(worker_module, "is_suspended", is_suspended)
    return seen


def test_the_wait_shows_suspended_outlasts_an_outage_and_restores_the_state(worker, monkeypatch):
    seen = looks(monkeypatch, worker, [1, 1, redis.exceptions.ConnectionError("down"), 1, 0])
    worker.check_for_suspension(False)
    assert len(seen) == 5, "a look that failed is no resume"
    assert seen[0] == (seen[0][0], "idle") and not seen[0][0].startswith("Suspended")
    assert [state for _, state in seen[1:]] == ["suspended"] * 4
    assert all(seen[i][0].startswith("Suspended (rq suspend)") for i in (1, 2, 4)), seen  # (3: the outage's line)
    assert worker.get_state() == "idle" and not worker.parts.suspended
    assert worker.parts.status.text().startswith("Idle")


def test_a_stop_ends_the_wait_at_once(worker, monkeypatch):
    answers = [1, 1, lambda: worker.request_stop(signal.SIGTERM, None) or 1, *[1] * 1000]
    looks(monkeypatch, worker, answers)
    worker.check_for_suspension(False)
    assert len(answers) == 1000 and worker._stop_requested


def test_burst_leaves_as_rq_does(worker, monkeypatch):
    from rq.exceptions import StopRequested
    from rq.suspension import suspend

    suspend(worker.connection)
    with pytest.raises(StopRequested):
        worker.check_for_suspension(True)


def test_a_stop_whose_raise_a_library_swallowed_before_the_pop_pops_nothing(worker, monkeypatch):
    """sdnotify's send and logging's emit catch every Exception: a SIGTERM landing in one of them after the
    heartbeat's look at the stop flag lost its StopRequested, and the pop then blocked for its whole timeout
    (a tick: 10 s under the shipped WatchdogSec) before the stop was seen. The pop looks at the flag too."""
    from rq.exceptions import StopRequested

    original = worker.parts.between_jobs

    def between_jobs() -> None:  # inside the heartbeat, after its look: the stop comes, and is swallowed
        try:
            worker.request_stop(signal.SIGTERM, None)
        except StopRequested:
            pass
        original()

    popped: list = []
    monkeypatch.setattr(worker.parts, "between_jobs", between_jobs)
    monkeypatch.setattr(worker.parts.held, "pop", lambda keys, timeout: popped.append(timeout))
    with pytest.raises(StopRequested):
        worker.dequeue_job_and_maintain_ttl(timeout=10)
    assert popped == [], "the pop blocked although a stop was requested"


def test_a_stop_swallowed_in_an_outage_s_heartbeat_ends_the_backoff(worker, monkeypatch):
    """The same stop, swallowed in the heartbeat after a failed pop: the backoff (up to a tick) was slept out
    before the stop was seen."""
    from rq.exceptions import StopRequested

    pops: list = []

    def pop(keys, timeout):
        pops.append(timeout)
        raise redis.exceptions.ConnectionError("down")

    beats = []
    original = worker.parts.between_jobs

    def between_jobs() -> None:
        beats.append(1)
        if len(beats) == 2:  # the heartbeat after the failed pop
            try:
                worker.request_stop(signal.SIGTERM, None)
            except StopRequested:
                pass
        original()

    slept: list[float] = []
    monkeypatch.setattr(worker.parts.held, "pop", pop)
    monkeypatch.setattr(worker.parts, "between_jobs", between_jobs)
    monkeypatch.setattr(worker_module.time, "sleep", slept.append)
    with pytest.raises(StopRequested):
        worker.dequeue_job_and_maintain_ttl(timeout=10)
    assert (pops, slept) == ([10], []), "the backoff was slept out although a stop was requested"
