from __future__ import annotations

import logging
import os
import shlex
import time

import pytest
import redis
from helpers import FakeClock

from rq_worker_service import exits
from rq_worker_service.config import RedisTarget, load_settings
from rq_worker_service.connection import (
    RedisAuthError,
    RedisUnavailable,
    make_connection,
    slot_moved,
    slot_moved_message,
    wait_for_redis,
    warn_if_not_persistent,
)
from rq_worker_service.notify import Notifier


class Flaky:
    """PING fails ``failures`` times with ``exc``, then answers."""

    def __init__(self, failures, exc):
        self.failures, self.exc, self.calls = failures, exc, 0

    def ping(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return True


TARGET = load_settings({"REDIS_URL": "redis://:topsecret@db:6379/0"}).redis


def test_waits_with_capped_backoff_until_redis_answers():
    clock = FakeClock()
    conn = Flaky(6, redis.exceptions.ConnectionError("refused"))
    wait_for_redis(lambda: conn, TARGET, Notifier(), 60, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1, 2, 4, 8, 10, 10]


def test_gives_up_after_the_window_with_masked_url():
    clock = FakeClock()
    with pytest.raises(RedisUnavailable) as info:
        wait_for_redis(lambda: Flaky(99, redis.exceptions.ConnectionError("refused")), TARGET, Notifier(), 5,
                       clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(5)
    assert "redis://:***@db:6379/0" in str(info.value)
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize("exc", [
    redis.exceptions.AuthenticationError("invalid username-password pair"),
    redis.exceptions.ResponseError("NOAUTH Authentication required."),
])
def test_wrong_credentials_fail_at_once(exc):
    clock = FakeClock()
    with pytest.raises(RedisAuthError, match="REDIS_PASSWORD"):
        wait_for_redis(lambda: Flaky(1, exc), TARGET, Notifier(), 60, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


class Configured:
    def __init__(self, values=None, error=None):
        self.values, self.error = values or {}, error

    def config_get(self, name):
        if self.error:
            raise self.error
        return {name: self.values[name]}


def test_persistence_warning(caplog):
    assert warn_if_not_persistent(Configured({"appendonly": "no", "save": ""}), TARGET) is True
    assert "keeps nothing on disk" in caplog.text
    assert warn_if_not_persistent(Configured({"appendonly": "yes", "save": ""}), TARGET) is False
    assert warn_if_not_persistent(Configured({"appendonly": "no", "save": "3600 1"}), TARGET) is False
    denied = redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run the 'config' command")
    assert warn_if_not_persistent(Configured(error=denied), TARGET) is False


def test_outage_is_logged_once_each_way_and_shown_with_its_length(caplog):
    from rq_worker_service.connection import Outage

    caplog.set_level(logging.INFO, logger="rq_worker_service.connection")
    clock = FakeClock()
    outage = Outage(TARGET, retry_every=10, clock=clock)
    assert outage.status() is None
    outage.failed(redis.exceptions.ConnectionError("refused"))
    clock.now += 25
    outage.failed(redis.exceptions.ConnectionError("refused"))  # still the same outage
    assert outage.status() == "Redis unreachable at redis://:***@db:6379/0 for 25s, retrying"
    outage.ok()
    outage.ok()
    assert outage.status() is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    assert not any("topsecret" in m for m in messages)


class FakeSeed:
    """A cluster node answering CLUSTER SLOTS as redis-py parses it for a plain client."""

    def __init__(self, url, **kwargs):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cluster(self, command):
        assert command == "SLOTS"
        return [[0, 5460, [b"10.0.0.1", 7001, b"id1", {}]], [5461, 10922, [b"", 7002, b"id2", {}]],
                [10923, 16383, [b"10.0.0.3", 7003, b"id3", {}]]]


@pytest.mark.parametrize("prefix, address", [("{g0}", "node1:7002"), ("{g1}", "10.0.0.3:7003"),
                                             ("{g2}", "10.0.0.1:7001")])  # slots 9454, 13519, 1196
def test_cluster_connects_to_the_primary_of_the_prefixs_slot(monkeypatch, prefix, address):
    """Credentials, scheme and database kept; an empty host in CLUSTER SLOTS means the seed's."""
    monkeypatch.setattr(redis.Redis, "from_url", FakeSeed)
    target = load_settings({"REDIS_URL": "rediss://u:s3cret@node1:7000/0", "REDIS_CLUSTER": "yes",
                            "RQ_KEY_PREFIX": prefix}).redis
    assert make_connection(target, prefix).url == f"rediss://u:s3cret@{address}/0"


def _raised_from(inner: BaseException) -> redis.exceptions.ConnectionError:
    """A ConnectionError as redis-py raises it: the TLS error only as its context."""
    try:
        try:
            raise inner
        except OSError:
            raise redis.exceptions.ConnectionError("Error 1 connecting to h:6380.") from None
    except redis.exceptions.ConnectionError as exc:
        exc.__context__ = inner
        return exc


def test_a_certificate_that_does_not_verify_is_not_waited_out():
    import ssl

    from rq_worker_service.connection import tls_failure

    bad_ca = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert tls_failure(_raised_from(bad_ca)) is bad_ca
    assert tls_failure(_raised_from(ssl.SSLEOFError(8, "EOF occurred"))) is None  # a cut connection: waited out
    assert tls_failure(redis.exceptions.ConnectionError("Connection refused")) is None
    with pytest.raises(RedisAuthError, match="TLS with Redis at rediss://h:6380/0 failed .*REDIS_SSL_CA_CERTS"):
        wait_for_redis(lambda: Flaky(1, _raised_from(bad_ca)), RedisTarget("rediss://h:6380/0"), Notifier(), 60,
                       clock=FakeClock(), sleep=FakeClock().sleep)


def test_acl_rule_and_refusals():
    from rq_worker_service.acl import denied, rule

    assert rule("{reports}").startswith("resetkeys ~{reports}:* resetchannels &{reports}:* -@all +@read")
    assert rule().index("-@dangerous") < rule().index("+info")
    default, opt_in = rule().split(), rule(allow_client_kill=True).split()
    assert not {"+client|kill", "+client|list", "+config|get"} & set(default)  # nothing server-wide by default
    assert [w for w in opt_in if w not in default] == ["+client|list", "+client|kill"]
    message = denied(redis.exceptions.NoPermissionError("this user has no permissions to run the 'blmove' command"))
    assert message and "'blmove'" in message and "rq-worker-service acl" in message
    assert denied(redis.exceptions.AuthenticationError("WRONGPASS invalid username-password pair")) is None
    assert denied(redis.exceptions.ConnectionError("refused")) is None


def test_sentinel_clients_close_a_connection_whose_reply_was_never_read():
    """redis/redis-py#4292: redis-py's Sentinel connection does not, and the next command reads
    the previous one's reply; the worker's stop interrupts its blocking pop exactly so."""
    from redis.sentinel import SentinelConnectionPool

    from rq_worker_service.connection import SentinelConnection, SentinelSSLConnection

    target = load_settings({"REDIS_SENTINELS": "127.0.0.1:1", "REDIS_SENTINEL_MASTER": "m",
                            "REDIS_URL": "redis://:pw@m/3"}).redis
    client = make_connection(target, client_name="w")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.connection_class is SentinelConnection
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "pw")

    class Interrupted(BaseException):
        pass

    connection = SentinelConnection(connection_pool=pool)
    connection._parser = type("Parser", (), {"read_response": lambda *a, **k: (_ for _ in ()).throw(Interrupted())})()
    closed = []
    connection.disconnect = lambda *a, **k: closed.append(True)  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        connection.read_response()
    assert closed == [True]
    tls = load_settings({"REDIS_SENTINELS": "127.0.0.1:1", "REDIS_SENTINEL_MASTER": "m",
                         "REDIS_URL": "rediss://m/0"}).redis
    assert make_connection(tls).connection_pool.connection_class is SentinelSSLConnection


def test_acl_command_prints_the_rule_for_the_configured_prefix_and_user(monkeypatch, capsys, tmp_path):
    from rq_worker_service.cli import main

    env_file = tmp_path / "worker.env"
    env_file.write_text("RQ_KEY_PREFIX={reports}\nREDIS_USERNAME=reports-worker\nREDIS_PASSWORD=hunter2\n")
    monkeypatch.setenv("RQ_KEY_PREFIX", "{reports}")
    assert main(["acl", "--env-file", str(env_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ACL SETUSER reports-worker reset on >YOUR-PASSWORD resetkeys ~{reports}:* ")
    assert "hunter2" not in out
    assert main(["acl", "--env-file", str(env_file), "--rule"]) == 0
    assert capsys.readouterr().out.startswith("resetkeys ~{reports}:* resetchannels &{reports}:* -@all")


@pytest.mark.parametrize("user", ["a b", "a\tb", "rq'w", 'rq"w', "rq>w", "rq<w", "~rq", "%rq", "&rq", "rq#w", "rqw\n",
                                  "ünïcode", "rq\\w", "", "-rq", "rq\x1bw"])
def test_acl_refuses_a_user_name_the_printed_command_and_users_acl_would_read_differently(user, capsys):
    """The printed ``ACL SETUSER`` line and a ``users.acl`` line (split at blanks, no quoting) must name
    the same user: a name they would read differently is refused in one line naming --user (exit 2,
    argparse's usage error); nothing is printed on stdout."""
    from rq_worker_service.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["acl", "--env-file", os.devnull, f"--user={user}"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.splitlines()[-1].startswith("rq-worker-service acl: error: argument --user:"), err
    assert "letters, digits" in err and "Traceback" not in err


def test_every_user_name_acl_prints_reads_the_same_in_redis_cli_and_in_users_acl():
    """Each character of the first 0x250 code points, and a few beyond, inside a name: either the name
    is refused, or both forms (redis-cli splits like a shell, users.acl at blanks, no quoting) give back
    that name and the same rule."""
    from rq_worker_service.acl import bad_user_name, rule, setuser

    printed = 0
    for code in [*range(0x250), 0x2028, 0x3000, 0xFEFF, 0x1F600]:
        name = f"rq{chr(code)}w"
        if bad_user_name(name):
            continue
        line = setuser(name)
        cli_words = shlex.split(line)
        acl_words = f"user {name} on >pw {rule()}".split()
        assert cli_words[2] == name and acl_words[1] == name, repr(name)
        assert cli_words[6:] == acl_words[4:] == rule().split(), repr(name)
        printed += 1
    assert printed == 62 + 1 + 4  # letters, digits, _ and . : @ -


@pytest.mark.parametrize("line", ['REDIS_USERNAME="a b"', "REDIS_USERNAME='rq>w'", "REDIS_USERNAME=~rq",
                                  "REDIS_USERNAME=ünïcode", 'REDIS_USERNAME="rq\'w"',
                                  "REDIS_URL=redis://a%20b:pw@localhost/0"])
def test_acl_refuses_such_a_user_name_from_the_env_file_in_one_line_exit_78(line, capsys, tmp_path):
    from rq_worker_service.cli import main

    env_file = tmp_path / "worker.env"
    env_file.write_text(line + "\n", encoding="utf-8")
    assert main(["acl", "--env-file", str(env_file)]) == exits.CONFIG
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "REDIS_USERNAME" in err and "--user" in err, err
    assert "pw" not in err.replace("print", "")
    assert main(["acl", "--env-file", str(env_file), "--user", "rqworker"]) == 0  # the fix the line names
    assert capsys.readouterr().out.startswith("ACL SETUSER rqworker ")


@pytest.mark.parametrize("user", ["rqworker", "rq.worker-1", "app_rq", "svc:rq", "rq@app", "RQ9"])
def test_acl_prints_a_plain_user_name_as_it_is_in_both_forms(user, capsys):
    from rq_worker_service.cli import main

    assert main(["acl", "--env-file", os.devnull, "--user", user]) == 0
    line = capsys.readouterr().out.strip()
    assert shlex.split(line)[:3] == ["ACL", "SETUSER", user] and line.split()[2] == user
    assert main(["acl", "--env-file", os.devnull, "--user", user, "--allow-client-kill"]) == 0
    assert capsys.readouterr().out.strip().endswith("+info +client|list +client|kill")


def test_no_primary_from_the_sentinels_is_one_short_line_without_secrets():
    from redis.sentinel import MasterNotFoundError

    from rq_worker_service.connection import SentinelManager

    target = load_settings({"REDIS_SENTINELS": "127.0.0.1:1,127.0.0.1:2", "REDIS_SENTINEL_MASTER": "m",
                            "REDIS_SENTINEL_PASSWORD": "s3cret", "REDIS_PASSWORD": "pw-secret"}).redis
    manager = make_connection(target).connection_pool.sentinel_manager
    started = time.monotonic()
    with pytest.raises(MasterNotFoundError) as caught:
        manager.discover_master("m")
    assert time.monotonic() - started < 1  # no retries of each unreachable sentinel
    assert str(caught.value) == "no sentinel answered for 'm' (tried 127.0.0.1:1, 127.0.0.1:2)"

    class Answering:  # a sentinel that answers but knows no healthy primary (failing over)
        connection_pool = type("Pool", (), {"connection_kwargs": {"host": "10.0.0.1", "port": 26379}})()

        def sentinel_masters(self):
            return {}

    manager = SentinelManager([("10.0.0.1", 26379)])
    manager.sentinels = [Answering()]
    with pytest.raises(MasterNotFoundError, match=r"^the sentinels \(10.0.0.1:26379\) know no healthy primary"):
        manager.discover_master("m")


def test_handoff_applies_to_plain_pools_only():
    from redis.connection import ConnectionPool, SSLConnection, UnixDomainSocketConnection
    from redis.sentinel import Sentinel, SentinelConnectionPool

    from rq_worker_service.handoff import applies

    assert applies(ConnectionPool(host="127.0.0.1"))
    assert applies(ConnectionPool(connection_class=UnixDomainSocketConnection, path="/run/redis.sock"))
    assert not applies(ConnectionPool(connection_class=SSLConnection, host="127.0.0.1"))  # TLS state would be copied
    assert not applies(SentinelConnectionPool("mymaster", Sentinel([("127.0.0.1", 26379)])))


def test_redis_py_still_works_as_the_handoff_expects():
    """What ``handoff`` relies on in redis-py: a pool's reset() and its lists, and a disconnect()
    that does not shut a socket down in a process other than the one that owns it."""
    import inspect

    from redis.connection import AbstractConnection, ConnectionPool

    pool = ConnectionPool(host="127.0.0.1")
    pool.reset()
    assert pool._available_connections == [] and pool._created_connections == 0
    assert "os.getpid() == self.pid" in inspect.getsource(AbstractConnection.disconnect)
    assert "connection.pid == self.pid" in inspect.getsource(ConnectionPool.owns_connection)


def test_a_moved_slot_is_recognised_however_redis_py_raises_it():
    from redis._parsers.base import BaseParser

    cluster = load_settings({"REDIS_URL": "redis://db:6379/0", "REDIS_CLUSTER": "yes",
                             "RQ_KEY_PREFIX": "{app}"}).redis
    moved = BaseParser.parse_error("MOVED 1999 10.0.0.2:6379")  # redis-py strips the word: "1999 10.0.0.2:6379"
    for exc in (moved, BaseParser.parse_error("ASK 1999 10.0.0.2:6379"), BaseParser.parse_error("TRYAGAIN x"),
                redis.exceptions.ResponseError("MOVED 1999 10.0.0.2:6379")):
        assert slot_moved(cluster, exc), exc
    assert not slot_moved(cluster, redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    assert not slot_moved(TARGET, moved)  # not a cluster: not ours to explain
    assert "RQ_KEY_PREFIX={app} from this node (MOVED 1999 10.0.0.2:6379);" in slot_moved_message("{app}", moved)
