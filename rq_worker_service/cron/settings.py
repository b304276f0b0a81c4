"""The RQ_CRON_* settings, read and checked together (one of them bounds another)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ConfigError, read


@dataclass(frozen=True)
class CronSettings:
    """What the scheduler runs and how: the schedule's file or module, its defaults, the lease."""

    config: str
    zone: str
    catch_up: str
    lease_period: int
    grace: int


def cron_settings(env: Mapping[str, str]) -> CronSettings:
    """RQ_CRON_* from ``env``; ConfigError (exit 78) for a missing schedule or a grace shorter than two
    lease periods: a takeover may take that long, and the slots due meanwhile must still be in the grace."""
    config = read(env, "RQ_CRON_CONFIG")
    if not config:
        raise ConfigError("RQ_CRON_CONFIG", None, "not set: name the schedule (a file or module calling "
                          "rq.cron.register, e.g. /srv/myapp/cron_config.py) in /etc/rq-worker/cron.env")
    period, grace = read(env, "RQ_CRON_LEASE_PERIOD"), read(env, "RQ_CRON_MISFIRE_GRACE")
    if grace < 2 * period:
        raise ConfigError("RQ_CRON_MISFIRE_GRACE", str(grace), f"at least two lease periods ({2 * period} s with "
                          f"RQ_CRON_LEASE_PERIOD={period}): a takeover takes up to that long, and slots due "
                          "meanwhile must not be skipped")
    return CronSettings(config=config, zone=read(env, "RQ_CRON_TIMEZONE"), catch_up=read(env, "RQ_CRON_CATCH_UP"),
                        lease_period=period, grace=grace)
