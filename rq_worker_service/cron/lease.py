"""The cron lease: of every scheduler running (one per host), only its holder enqueues cron jobs.

The lease is one Redis string, ``keys.cron_lease()`` = ``"<token> <holder>"``, set with a PX of the
lease period and renewed (PEXPIRE) every third of it by its holder. Whoever finds it gone takes it:
a Lua script INCRs ``keys.cron_token()`` and sets the lease in one step, so the token is a fencing
token (strictly increasing across holders) and two schedulers never both get one. Renewal and release
compare the whole value first, in the same script: a scheduler never extends or deletes a lease that
expired under it and went to another.

The token in Redis is what an enqueue checks (``enqueue``: under WATCH of the lease key, in the same
transaction as the job); the holder's own monotonic clock is the second guard. A holder stops acting
once its last successful renewal is older than the period less a margin (``acting``): the time it
keeps is read *before* the renewal is sent, so Redis can only have received it later and the lease
in Redis outlives that moment by the whole period. An ex-leader frozen (SIGSTOP, a VM paused) past
the period wakes up not acting, tries to renew, finds another's value and says it lost the lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import keys

RENEW_FRACTION = 1 / 3
"""The holder renews every third of the period: two renewals may fail before it stops acting."""
MARGIN_FRACTION = 1 / 4
"""It stops acting a quarter of the period before the lease could expire in Redis: room for a
transaction in flight and for clocks that run at slightly different rates."""

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, redis.call('GET', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
local previous = ''
local last = redis.call('LINDEX', KEYS[3], 0)
if last then
    local ok, record = pcall(cjson.decode, last)
    if ok and type(record) == 'table' and type(record.holder) == 'string' then
        previous = record.holder
    end
end
local handover = {at = tonumber(ARGV[3]), holder = ARGV[1], token = token, previous = cjson.null}
if previous ~= '' then
    handover.previous = previous
end
redis.call('LPUSH', KEYS[3], cjson.encode(handover))
redis.call('LTRIM', KEYS[3], 0, 19)
return {token, previous}
"""
"""KEYS: lease, token, handovers; ARGV: holder, period (ms), now (epoch s). {token, previous holder or ''};
{0, the current value} when another holds it."""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and it goes on while the host is suspended, where
    CLOCK_MONOTONIC stops. A leader suspended past its lease must wake up knowing it may have lost it."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Acquired:
    """A successful acquisition: our fencing token, and who acquired before us (None: nobody yet)."""

    token: int
    previous: str | None


def parse_value(value: bytes | str | None) -> tuple[int, str] | None:
    """The token and holder of a lease value, or None for no lease (or one this version did not write)."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    token, _, holder = text.partition(" ")
    return (int(token), holder) if token.isdigit() and holder else None


class Lease:
    """One scheduler's view of the lease: whether it holds it, with which token, since when renewed."""

    def __init__(self, connection, holder: str, period: float, clock: Callable[[], float] = boottime) -> None:
        self.connection = connection
        self.holder = holder
        self.period = period
        self.clock = clock
        self.token: int | None = None
        self.renewed_at: float | None = None
        """The ``clock`` time read just before the command that last set or extended our lease."""
        self.other: str | None = None
        """The holder seen the last time another held the lease (for STATUS= and the log)."""
        self._acquire = connection.register_script(_ACQUIRE)
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)

    @property
    def value(self) -> str | None:
        """The lease's value while we hold it: what the enqueue's check compares with."""
        return None if self.token is None else f"{self.token} {self.holder}"

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def renew_every(self) -> float:
        return self.period * RENEW_FRACTION

    @property
    def acting_for(self) -> float:
        """Seconds after a renewal was sent during which the holder may enqueue."""
        return self.period * (1 - MARGIN_FRACTION)

    def acting(self) -> bool:
        """Whether we hold the lease by our own clock: renewed within the period less the margin."""
        return self.renewed_at is not None and self.token is not None and \
            self.clock() - self.renewed_at < self.acting_for

    def renewal_due(self) -> bool:
        return self.renewed_at is None or self.clock() - self.renewed_at >= self.renew_every

    def acquire(self, now: float | None = None) -> Acquired | None:
        """Take the lease if nobody holds it; else None (``other`` says who does). Redis errors pass through."""
        sent = self.clock()
        token, found = self._acquire(keys=[keys.cron_lease(), keys.cron_token(), keys.cron_handovers()],
                                     args=[self.holder, int(self.period * 1000), time.time() if now is None else now])
        if not token:
            seen = parse_value(found)
            if seen is not None and seen[1] == self.holder:
                # Ours already: an acquisition whose reply was lost (a timeout, a reset connection), or a
                # predecessor with our host and PID, which is gone. Waiting for it to expire would stretch the
                # takeover past its bound; adopt it, if it is still there to renew.
                self.token, self.renewed_at = seen[0], None
                if self.renew():
                    self.other = None
                    return Acquired(seen[0], None)
                return None
            self.other = seen[1] if seen else None
            return None
        self.token, self.renewed_at, self.other = int(token), sent, None
        previous = found.decode("utf-8", "replace") if isinstance(found, bytes) else found
        return Acquired(self.token, previous or None)

    def renew(self) -> bool:
        """Extend our lease by a period; False (and no longer held) when it is not ours any more."""
        value = self.value
        if value is None:
            return False
        sent = self.clock()
        if self._renew(keys=[keys.cron_lease()], args=[value, int(self.period * 1000)]):
            self.renewed_at = sent
            return True
        self.token = self.renewed_at = None
        return False

    def release(self) -> bool:
        """Give the lease up (delete it only if still ours), so a standby takes over at its next look;
        True if it was ours. We hold nothing afterwards, whatever Redis answers."""
        value = self.value
        self.token = self.renewed_at = None
        if value is None:
            return False
        return bool(self._release(keys=[keys.cron_lease()], args=[value]))

    def forget(self) -> None:
        """No longer held, without asking Redis (an enqueue found another's value there)."""
        self.token = self.renewed_at = None
