"""Periodic jobs (issue 29): rq's own cron schedule, run as a service that enqueues each slot once.

An app keeps its ``rq cron`` config file as it is (``from rq import cron; cron.register(...)``);
``register`` here is the same call with two more keywords, for a job that needs its own time zone or
catch-up policy. ``schedule`` imports the file into ``Entry`` values; ``slots`` says which instants
are due; the lease, the enqueue and the loop build on those two.
"""

from .schedule import register

__all__ = ["register"]
