"""The Redis secrets stay out of ``os.environ`` (which every started process inherits) and travel to
an executed program through an inherited descriptor only."""

from __future__ import annotations

import os

import pytest

from rq_worker_service.secret_env import HANDOVER_VAR, SecretEnvironment, handover, public_url, public_value


@pytest.mark.parametrize("url, public", [
    ("redis://:pw@h:1/0", "redis://h:1/0"),
    ("redis://user:pw@h:1/0", "redis://user@h:1/0"),
    ("rediss://h/0?password=pw&socket_timeout=5", "rediss://h/0?socket_timeout=5"),
    ("redis://u@h/0?ssl_password=pw", "redis://u@h/0"),
    ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2"),
])
def test_a_url_goes_public_without_its_password(url, public):
    assert public_value("REDIS_URL", url) == public


def test_what_stays_as_it_is_and_what_goes_entirely():
    assert public_value("REDIS_URL", "redis://u@h:1/0?db=1") == "redis://u@h:1/0?db=1"
    assert public_value("REDIS_PASSWORD", "pw") is None
    assert public_value("REDIS_SENTINEL_PASSWORD", "pw") is None
    assert public_value("REDIS_PASSWORD_FILE", "/etc/pw") == "/etc/pw"  # a path, not a secret
    assert public_value("REDIS_URL", "redis://:pw@[::1/0") is None  # not understood: not shown at all
    assert public_url("redis://:pw@h:1/0?password=x") == "redis://h:1/0"


def test_the_environment_reads_whole_values_and_writes_secrets_aside():
    public: dict[str, str] = {"PATH": "/bin", "REDIS_PASSWORD": "pw", "REDIS_URL": "redis://:u@h/0"}
    env = SecretEnvironment(public)
    assert env.absorb()
    assert public == {"PATH": "/bin", "REDIS_URL": "redis://h/0"}
    assert dict(env) == {"PATH": "/bin", "REDIS_PASSWORD": "pw", "REDIS_URL": "redis://:u@h/0"}
    assert not env.absorb()
    env["REDIS_URL"] = "redis://h/1"  # no password any more: public again, the old one forgotten
    assert (public["REDIS_URL"], env.private) == ("redis://h/1", {"REDIS_PASSWORD": "pw"})
    del env["REDIS_PASSWORD"]
    assert "REDIS_PASSWORD" not in env and env.private == {}
    with pytest.raises(KeyError):
        del env["REDIS_PASSWORD"]


def test_secrets_travel_in_an_inherited_descriptor_read_once():
    carrier: dict[str, str] = {}
    fd = handover({"REDIS_PASSWORD": "pw"}, carrier)
    assert fd is not None and os.get_inheritable(fd)
    assert carrier == {HANDOVER_VAR: str(fd)}
    received = SecretEnvironment(carrier)
    received.receive()
    assert (received.private, carrier) == ({"REDIS_PASSWORD": "pw"}, {})
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once read: nothing the receiver starts inherits it
    assert handover({}, carrier) is None and carrier == {}
