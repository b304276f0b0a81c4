"""Import, at the worker's start, every module its paths may import later.

An upgrade replaces the package's files under a running worker: a busy one keeps running its job for
up to RQ_SHUTDOWN_TIMEOUT after dpkg's unpack, before its reload re-executes it on the new code. An
import made lazily meanwhile (a function-level ``import``, ours or rq's) would load the *new*
version's module into the *old* process: code of two versions in one worker. Importing all of it
first closes that window; what is in ``sys.modules`` is never read from disk again.
``tests/unit/test_preload.py`` fails when a function-level import in either package is not covered.
"""

from __future__ import annotations

import importlib
import pkgutil

PACKAGES = ("rq_worker_service", "rq")
"""Every module of these is imported (rq's optional extras only when their dependency is there)."""

LAZY_ELSEWHERE = ("contextlib", "datetime", "errno", "redis", "redis.driver_info", "systemd.journal")
"""Modules outside ``PACKAGES`` that ours or rq's import inside a function (the test lists them)."""

SKIPPED = ("rq_worker_service.__main__", "rq.cli", "rq.contrib", "rq.cron_scheduler_runner")
"""Entry points and extras no worker path imports: importing them would run or require other things."""


def preload() -> None:
    """Import them all. A module that fails to import (an optional dependency missing, or an error of
    its own on this Python) is left to be imported when used, as before: preloading is a guard, never
    a reason the worker does not start."""
    for name in LAZY_ELSEWHERE:
        _try(name)
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + ".", onerror=lambda _name: None):
            if not info.name.startswith(SKIPPED):
                _try(info.name)


def _try(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:
        pass
