"""The main loop's Redis calls: an outage is noted and waited out; a refusal, a moved cluster slot or
a fencing ends the worker."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn

import redis

from .. import exits
from ..acl import denied
from ..connection import REDIS_ERRORS, Outage, slot_moved, slot_moved_message
from ..notify import Notifier


class RedisGuard:
    """Runs the main loop's Redis calls, and leaves the process when nothing else can be done."""

    def __init__(self, outage: Outage, notifier: Notifier, report: Callable[[], None],
                 stop_job: Callable[[], None], key_prefix: str = "rq") -> None:
        self.outage = outage
        self.notifier = notifier
        self.report = report
        """Sends STATUS= now (the status part): an outage shows at once."""
        self.stop_job = stop_job
        """Cuts the job in hand (the worker class knows how: kill the horse, or interrupt the thread)."""
        self.key_prefix = key_prefix

    def call(self, call: Callable[..., Any], *args: Any) -> Any:
        """A Redis call of the main loop that may fail while Redis is down: noted, not fatal (None is
        returned); the next tick tries again (rq's dequeue loop meets the same error and backs off)."""
        try:
            result = call(*args)
        except REDIS_ERRORS as exc:
            self.outage.failed(exc)
            self.report()
            return None
        except redis.exceptions.ResponseError as exc:
            self.exit_if_fatal(exc)
            raise
        self.outage.ok()
        return result

    def exit_if_fatal(self, exc: redis.exceptions.ResponseError) -> None:
        """Leave at once on an answer that no retry in this process cures: a refusal of our ACL user
        (exit 77), or a cluster node that no longer serves our slot (exit 69: the next start
        connects to its new owner). Wherever in rq's loop it comes, rq would log it with its whole
        traceback ("unhandled exception, quitting"); this is one line. Any other answer: returns."""
        if isinstance(exc, redis.exceptions.NoPermissionError):
            self.exit_denied(exc)
        if slot_moved(self.outage.target, exc):
            self.exit_now(slot_moved_message(self.key_prefix, exc), exits.UNAVAILABLE, errno.ECONNRESET)

    def exit_denied(self, exc: Exception) -> NoReturn:
        """Our ACL user may not run something the worker needs: no retry cures that, the operator
        must (exit 77, not restarted). A job in hand stays in the started registry: the next start
        re-runs it."""
        self.exit_now(f"{denied(exc) or exc}; exiting", exits.NOPERM, errno.EACCES)

    def exit_now(self, message: str, status: int, error: int) -> NoReturn:
        """Leave from wherever rq's loop is: it would catch an exception and carry on, or quit with
        a traceback."""
        self.stop_job()
        self.notifier.fail(message, status, error)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)
