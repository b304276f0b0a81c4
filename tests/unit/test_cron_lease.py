"""The cron lease (``cron.lease``) against fakeredis, which runs its Lua scripts: one holder at a time, a
fencing token that only grows, renew and release only while ours, the holder's own clock as second guard."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from rq_worker_service import keys
from rq_worker_service.cron.lease import Lease, parse_value


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def conn():
    return fakeredis.FakeRedis()


def test_one_holder_at_a_time_and_the_other_sees_who(conn):
    a, b = Lease(conn, "a:1", 10), Lease(conn, "b:2", 10)
    got = a.acquire(now=100.0)
    assert got is not None and got.token == 1 and got.previous is None
    assert b.acquire() is None and not b.held
    assert b.other == "a:1"
    assert conn.get(keys.cron_lease()) == b"1 a:1"
    assert 9000 < conn.pttl(keys.cron_lease()) <= 10000


def test_the_token_grows_across_holders_and_each_hand_over_is_recorded(conn):
    a, b = Lease(conn, "a:1", 10), Lease(conn, "b:2", 10)
    assert a.acquire(now=100.0).token == 1
    conn.delete(keys.cron_lease())  # (as if it expired)
    got = b.acquire(now=120.5)
    assert got is not None and got.token == 2 and got.previous == "a:1"
    handovers = [json.loads(x) for x in conn.lrange(keys.cron_handovers(), 0, -1)]
    assert handovers == [{"at": 120.5, "holder": "b:2", "token": 2, "previous": "a:1"},
                         {"at": 100.0, "holder": "a:1", "token": 1, "previous": None}]


def test_the_hand_overs_keep_the_last_twenty(conn):
    lease = Lease(conn, "a:1", 10)
    for _ in range(25):
        lease.acquire()
        conn.delete(keys.cron_lease())
    records = [json.loads(x) for x in conn.lrange(keys.cron_handovers(), 0, -1)]
    assert [r["token"] for r in records] == list(range(25, 5, -1))


def test_renew_and_release_touch_only_our_own_lease(conn):
    a, b = Lease(conn, "a:1", 10), Lease(conn, "b:2", 10)
    a.acquire()
    conn.pexpire(keys.cron_lease(), 500)
    assert a.renew() and conn.pttl(keys.cron_lease()) > 9000
    conn.delete(keys.cron_lease())
    b.acquire()  # a's lease expired and went to b
    assert not a.renew() and not a.held, "a renewal must not extend another's lease"
    assert conn.get(keys.cron_lease()) == b"2 b:2"
    a.token = 1  # (a, unaware, stops)
    assert not a.release()
    assert conn.get(keys.cron_lease()) == b"2 b:2", "a release must not delete another's lease"
    assert b.release() and conn.get(keys.cron_lease()) is None and not b.held


def test_the_holder_stops_acting_by_its_own_clock_before_the_lease_can_expire(conn):
    clock = Clock()
    lease = Lease(conn, "a:1", 12, clock)
    assert not lease.acting()
    lease.acquire()
    assert lease.acting() and not lease.renewal_due()
    clock.now += 4  # a third of the period
    assert lease.renewal_due() and lease.acting()
    clock.now += 4.99
    assert lease.acting()
    clock.now += 0.02  # 9.01 s: past the period less a quarter (9 s), whatever Redis still says
    assert not lease.acting()
    assert conn.get(keys.cron_lease()) == b"1 a:1"
    assert lease.renew() and lease.acting(), "a renewal that went through makes it act again"


def test_the_renewal_time_kept_is_read_before_the_renewal_is_sent(conn):
    """A holder frozen between sending the renewal and reading its answer must not count the freeze as
    renewed time: the clock is read first."""
    clock = Clock()
    lease = Lease(conn, "a:1", 12, clock)
    lease.acquire()
    real = lease._renew

    def slow(*args, **kwargs):
        clock.now += 100
        return real(*args, **kwargs)

    lease._renew = slow
    sent = clock.now
    assert lease.renew()
    assert lease.renewed_at == sent
    assert not lease.acting()


def test_a_real_expiry_lets_the_standby_take_over(conn):
    a, b = Lease(conn, "a:1", 0.2), Lease(conn, "b:2", 0.2)
    assert a.acquire() and b.acquire() is None
    time.sleep(0.3)
    got = b.acquire()
    assert got is not None and got.token == 2
    assert not a.renew()


@pytest.mark.parametrize("raw, parsed", [(b"7 host:12", (7, "host:12")), ("3 a b", (3, "a b")), (None, None),
                                         (b"x host", None), (b"7", None), (b"", None)])
def test_lease_values_are_read_as_written(raw, parsed):
    assert parse_value(raw) == parsed


def test_an_acquisition_whose_reply_was_lost_is_adopted_at_once(conn):
    """The acquire script ran but its answer never came back (timeout, reset): the next look finds our own
    holder in the lease and takes it up at once (the takeover bound), instead of waiting a whole period for
    it to expire as if another held it. Without the adoption ``acquire`` returns None here."""
    clock = Clock()
    a = Lease(conn, "a:1", 10, clock)
    assert a.acquire(now=100.0).token == 1
    lost = Lease(conn, "a:1", 10, clock)  # the same holder, that never heard the reply
    got = lost.acquire(now=101.0)
    assert got is not None and got.token == 1 and lost.acting()
    assert conn.get(keys.cron_lease()) == b"1 a:1"
    assert conn.llen(keys.cron_handovers()) == 1  # one hand-over, the one whose reply was lost


def test_the_lease_clock_is_the_boot_clock_which_counts_a_suspend():
    """CLOCK_MONOTONIC stops while the host is suspended; a leader suspended past its lease would wake up
    believing it still acts. The default clock is CLOCK_BOOTTIME."""
    lease = Lease(fakeredis.FakeRedis(), "a:1", 10)
    assert abs(lease.clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1
