"""The service's duties around rq's worker, each a part with hooks of its own.

As with Celery's bootsteps and dramatiq's middleware, each duty (the watchdog, fencing, the status
line, …) is a small object whose hooks the worker calls at fixed points, testable on its own.
``assembly.ServiceParts`` holds them all in the one attribute the worker has (``worker.parts``), so
none of their state lives in rq's namespace, and runs their hooks in the order it lists them:

* ``started()``: rq has registered the worker (the end of ``bootstrap``).
* ``beat()``: a tick of a worker that is alive; the simple worker's watch thread ticks without
  it once its job has overrun its time limit, so that systemd's watchdog fires.
* ``tick(main_loop)``: every tick; ``main_loop`` is False on the simple worker's watch thread.
* ``sweep()``: ticks of the main loop while no stop is asked, all under one Redis guard: the
  first call that fails ends the sweep until the next tick.
* ``job_started()`` / ``job_ended()``: around each job, in the worker's own process.
* ``woken()``: a signal asked for the next tick now.
* ``teardown()``: the worker leaves; these run in reverse order, as bootsteps stop.
"""

from __future__ import annotations

import logging

log = logging.getLogger("rq_worker_service.worker")
"""The parts log under the worker's name: their lines are the worker's, as before they were parts."""


class Part:
    """A duty of the service; each hook does nothing unless the part needs it."""

    def started(self) -> None:
        """rq has registered the worker."""

    def beat(self) -> None:
        """A tick of a worker that is alive."""

    def tick(self, main_loop: bool) -> None:
        """Every tick, from the main loop or (``main_loop`` False) the simple worker's watch thread."""

    def sweep(self) -> None:
        """A tick of the main loop while no stop is asked; Redis errors end the sweep."""

    def job_started(self) -> None:
        """A job is in hand (the ``Lifecycle`` knows it)."""

    def job_ended(self) -> None:
        """The job in hand is over."""

    def woken(self) -> None:
        """A signal asked for the next tick now."""

    def teardown(self) -> None:
        """The worker leaves."""
