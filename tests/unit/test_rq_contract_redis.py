"""redis-py's and systemd-python's behaviour that handoff.py, connection.py, worker.py and journal.py
rely on, checked against the installed libraries without a Redis server or a journal.

The list of internals, with the test that pins each, is ``INTERNALS`` in ``test_rq_contract.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, ConnectionPool
from redis.exceptions import MaxConnectionsError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool


class Idle(Connection):
    """A connection that is connected and has nothing to read, without a server."""

    def connect(self):
        pass

    def can_read(self, timeout=0):
        return False


def test_a_connection_placed_in_a_fresh_pool_is_the_one_its_first_command_gets():
    """handoff.Handoff.adopt: in the horse, ``reset()``, append the spare to ``_available_connections``
    and count it in ``_created_connections``; the pool then hands out that very connection, and the
    count is what its limit checks."""
    pool = ConnectionPool(connection_class=Idle, max_connections=1)
    pool.pid = -1  # as in a forked horse: the pool was the parent's
    pool.reset()
    assert hasattr(pool, "_available_connections") and hasattr(pool, "_created_connections"), (
        f"redis-py {redis.__version__} renamed the pool's idle list or its counter: port handoff.Handoff.adopt")
    assert pool.pid == os.getpid() and pool._available_connections == [] and pool._created_connections == 0
    spare = Idle()
    pool._available_connections.append(spare)
    pool._created_connections = 1
    assert pool.get_connection() is spare, "redis-py no longer hands out an idle connection from _available_connections"
    with pytest.raises(MaxConnectionsError):
        pool.get_connection()  # the spare counts: no second connection is made beyond the limit
    pool.release(spare)
    assert pool._available_connections == [spare], "a released connection goes back to _available_connections"


def test_a_health_check_is_due_by_next_health_check(monkeypatch):
    """handoff.Handoff.prepare: a new connection's ``next_health_check`` set one interval ahead keeps
    redis-py from sending a PING before its HELLO (one command more per job); redis-py checks health
    when ``time.monotonic()`` passes that attribute."""
    sent = []
    connection = Connection(health_check_interval=30)
    monkeypatch.setattr(connection, "_send_ping", lambda: sent.append("PING"))
    assert hasattr(connection, "next_health_check"), (
        f"redis-py {redis.__version__} renamed next_health_check: port handoff.Handoff.prepare")
    connection.check_health()
    assert sent == ["PING"], "a new connection with health_check_interval was expected to be due a check"
    connection.next_health_check = time.monotonic() + connection.health_check_interval
    connection.check_health()
    assert sent == ["PING"], "redis-py no longer reads next_health_check: port handoff.Handoff.prepare"


class Socket:
    def __init__(self):
        self.calls = []

    def shutdown(self, how):
        self.calls.append("shutdown")

    def close(self):
        self.calls.append("close")


@pytest.mark.parametrize("owner, calls", [("other", ["close"]), ("self", ["shutdown", "close"])])
def test_disconnect_shuts_a_socket_down_only_in_its_owners_process(owner, calls):
    """handoff.Handoff.forked: the worker sets the spare's ``pid`` to the horse's, so that closing its
    copy of the socket does not shut the connection down for the horse."""
    connection = Connection()
    sock = Socket()
    connection._sock = sock  # type: ignore[assignment]
    connection.pid = os.getpid() if owner == "self" else os.getpid() + 1
    connection.disconnect()
    assert sock.calls == calls


def test_a_pool_makes_new_connections_from_connection_kwargs():
    """worker.py's main_work_horse sets ``connection_kwargs["health_check_interval"] = 0`` in the
    horse; handoff.prepare makes the spare with ``connection_class(**connection_kwargs)``."""
    pool = ConnectionPool.from_url("redis://127.0.0.1:1/0", health_check_interval=30)
    pool.connection_kwargs["health_check_interval"] = 0
    assert pool.make_connection().health_check_interval == 0
    spare = pool.connection_class(**pool.connection_kwargs)
    assert isinstance(spare, Connection) and spare.port == 1
    assert hasattr(pool, "cache") and pool.cache is None, "handoff.applies tells a client-side cache by pool.cache"


def test_driver_info_given_once_is_not_resolved_per_connection(monkeypatch):
    """connection._driver_info: given a DriverInfo, a pool's connections do not look redis-py's
    version up on disk each."""
    driver_info = pytest.importorskip("redis.driver_info", reason="redis-py < 7: connection.py resolves nothing")
    info = driver_info.DriverInfo()
    lookups = []
    monkeypatch.setattr("redis.utils.get_lib_version", lambda: lookups.append(1) or "0")
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", driver_info=info)
    connections = [client.connection_pool.make_connection() for _ in range(3)]
    assert lookups == [] and all(c.driver_info is info for c in connections)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sentinel_discovery_failures_say_whether_sentinels_answered():
    """connection.SentinelManager shortens redis-py's MasterNotFoundError: it tells "no sentinel
    answered" (redis-py appends " : <errors>") from "no healthy primary", and names the sentinels
    by ``self.sentinels[i].connection_pool.connection_kwargs`` host and port."""
    port = _refused_port()
    manager = Sentinel([("127.0.0.1", port)], sentinel_kwargs={"socket_connect_timeout": 0.5,
                                                                "retry": Retry(NoBackoff(), 0)})
    kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", port)
    with pytest.raises(MasterNotFoundError) as unreachable:
        manager.discover_master("mymaster")
    assert " : " in str(unreachable.value)

    class Answering:
        def sentinel_masters(self):
            return {}

    manager.sentinels = [Answering()]  # type: ignore[list-item]
    with pytest.raises(MasterNotFoundError) as unknown:
        manager.discover_master("mymaster")
    assert " : " not in str(unknown.value)


def test_a_sentinel_pool_says_which_primary_it_uses():
    """connection.refresh_primary calls the pool's ``get_master_address()``; primary_address reads
    its ``master_address`` (no network); ``master_for`` takes our connection class."""
    from rq_worker_service.connection import SentinelConnection

    manager = Sentinel([("127.0.0.1", 1)])
    client = manager.master_for("mymaster", connection_class=SentinelConnection)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.connection_class is SentinelConnection
    assert pool.master_address is None
    manager.discover_master = lambda service_name: ("10.0.0.2", 6380)  # type: ignore[method-assign]
    assert pool.get_master_address() == ("10.0.0.2", 6380)
    assert pool.master_address == ("10.0.0.2", 6380)


def test_key_slot_is_the_clusters():
    """connection._slot_owner_url finds the node of the key prefix's slot with redis-py's key_slot."""
    from redis.crc import key_slot

    assert key_slot(b"somekey") == 11058 and key_slot(b"foo{hash_tag}") == 2515  # Redis's CLUSTER KEYSLOT docs


def test_our_journal_handler_sends_what_systemds_sends_less_what_journald_drops():
    """journal.journal_handler subclasses systemd-python's JournalHandler and uses its ``_extra``
    (the handler's constant fields), ``send`` and ``map_priority``: it must send the same stored
    fields as systemd's own emit(), without CODE_ARGS and the record's lower-case attributes."""
    from systemd.journal import JournalHandler

    from rq_worker_service.journal import journal_handler

    def record() -> logging.LogRecord:
        made = logging.LogRecord("app", logging.WARNING, __file__, 7, "hello %s", ("x",), None)
        made.RQ_JOB_ID = "j1"
        return made

    sent: dict[str, dict] = {}

    def sender(name: str):
        return lambda message, /, **fields: sent.update({name: fields})

    def fail(record: logging.LogRecord) -> None:
        raise  # noqa: PLE0704 (re-raise what emit() caught)

    stock = JournalHandler(sender_function=sender("stock"), SYSLOG_IDENTIFIER="rq-worker-service")
    stock.handleError = fail  # type: ignore[method-assign]
    stock.emit(record())
    ours = journal_handler()
    assert getattr(ours, "_extra", None) == {"SYSLOG_IDENTIFIER": "rq-worker-service"}, (
        "systemd-python's JournalHandler no longer keeps its constant fields in _extra: port journal.journal_handler")
    ours.send = sender("ours")
    ours.handleError = fail  # type: ignore[method-assign]
    ours.emit(record())
    expected = {k for k in sent["stock"] if k.isupper()} - {"CODE_ARGS"}
    assert set(sent["ours"]) == expected, set(sent["ours"]) ^ expected
    assert sent["ours"]["PRIORITY"] == sent["stock"]["PRIORITY"] == "4"
    assert {k: sent["ours"][k] for k in ("SYSLOG_IDENTIFIER", "RQ_JOB_ID", "LOGGER")} == {
        k: sent["stock"][k] for k in ("SYSLOG_IDENTIFIER", "RQ_JOB_ID", "LOGGER")}
