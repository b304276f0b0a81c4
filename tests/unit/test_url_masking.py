"""Every form of a Redis secret redis-py accepts in a URL is masked, in one place (``config.mask_url``),
and the login it carries is read as redis-py reads it (issue 26, item 2).

What redis-py logs in with is taken from redis-py itself (``redis.connection.parse_url``), so these
tests follow it when it changes what it accepts."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import parse_url

from rq_worker_service.config import ConfigError, load_settings, mask_url


def redis_py_secrets(url: str) -> list[str]:
    """The values redis-py would send as secrets for ``url``, and a login name from its query (one in
    the userinfo is shown: it helps)."""
    try:
        kwargs = parse_url(url)
        shown_user = urlsplit(url).username
    except ValueError:
        return []
    return [str(value) for key, value in kwargs.items()
            if "password" in key.lower() or (key.lower() == "username" and not shown_user)]


MASKED = [
    # the userinfo: its password (plain, percent-encoded, with raw ':' and '@'); the user name is kept
    ("redis://:Sekr1t@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:Sekr1t@h/0", "redis://user:***@h/0"),
    ("redis://user:Sek%40r1t%3A%2F@h/0", "redis://user:***@h/0"),
    ("redis://user:Sek:r@1t@h/0", "redis://user:***@h/0"),
    ("redis://user:@h/0", "redis://user:***@h/0"),
    ("unix://:Sekr1t@/run/redis/redis.sock?db=2", "unix://:***@/run/redis/redis.sock?db=2"),
    # a raw '/', '?' or '#' ends the authority early: everything up to the last '@' is masked
    ("redis://:Sek/r1t@h/0", "redis://***@h/0"),
    ("redis://user:Sek?r1t@h/0", "redis://***@h/0"),
    ("redis://:Sek#r1t@h/0", "redis://***@h/0"),
    ("unix://:Sek/r1t@/run/redis/redis.sock", "unix://***@/run/redis/redis.sock"),
    # query values redis-py logs in with, whatever their encoding, repeated, in any case
    ("redis://h/0?password=Sekr1t", "redis://h/0?password=***"),
    ("redis://h:6379/0?username=Adm1n&password=Sekr1t&db=1", "redis://h:6379/0?username=***&password=***&db=1"),
    ("redis://h/0?password=Sekr1t&password=Sekr2t", "redis://h/0?password=***&password=***"),
    ("redis://h/0?password=&password=Sekr1t", "redis://h/0?password=***&password=***"),
    ("redis://h/0?pass%77ord=Sekr1t", "redis://h/0?pass%77ord=***"),
    ("redis://h/0?password=Sek%26r1t%3D", "redis://h/0?password=***"),
    ("redis://h/0?password=Sek+r1t", "redis://h/0?password=***"),
    ("redis://h/0?PASSWORD=Sekr1t&Username=Adm1n", "redis://h/0?PASSWORD=***&Username=***"),
    ("rediss://h/0?ssl_password=Sekr1t", "rediss://h/0?ssl_password=***"),
    ("unix:///run/redis/redis.sock?db=1&password=Sekr1t", "unix:///run/redis/redis.sock?db=1&password=***"),
    ("redis://user:Sekr1t@h/0?password=Sekr2t", "redis://user:***@h/0?password=***"),
    # a raw '&' or '#' in a query value: the rest is masked too (redis-py ignores it)
    ("redis://h/0?password=Sek&r1t&db=1", "redis://h/0?password=***&***&db=1"),
    ("redis://h/0?password=Sek#r1t", "redis://h/0?password=***#***"),
    # not URLs redis-py takes, in error messages: nothing of the password either
    ("http://:Sekr1t@h:1/0?password=Sekr2t", "http://:***@h:1/0?password=***"),
    ("redis://[::1:6379/0?password=Sekr1t", "***"),
    ("Sekr1t@localhost", "***"),
]


@pytest.mark.parametrize("url, masked", MASKED)
def test_every_secret_form_is_masked(url, masked):
    shown = mask_url(url)
    assert shown == masked
    assert "Sek" not in shown and "Adm1n" not in shown
    assert not [secret for secret in redis_py_secrets(url) if secret in shown]


@pytest.mark.parametrize("url", ["redis://h:6379/0", "redis://user@h/0", "redis://h/0?db=1&socket_timeout=5",
                                 "unix:///run/redis/redis.sock?db=1", "localhost:6379", "redis://h/0?a=1&&b=2"])
def test_a_url_without_secrets_is_shown_as_given(url):
    assert mask_url(url) == url


def test_the_masked_query_keys_cover_every_secret_redis_py_takes():
    """The connection keywords that carry a secret, found in redis-py's own signatures: a new one there
    (say a token) fails this until mask_url knows it."""
    import inspect

    from redis.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection

    names = set()
    for cls in (AbstractConnection, SSLConnection, UnixDomainSocketConnection):
        names |= set(inspect.signature(cls.__init__).parameters)
    secretish = {n for n in names if any(word in n for word in ("pass", "secret", "token", "auth", "user"))}
    assert secretish == {"username", "password", "ssl_password"}
    for name in secretish:
        assert mask_url(f"redis://h/0?{name}=Sekr1t") == f"redis://h/0?{name}=***"


LOGINS = [
    "redis://h/0?password=Sekr1t",
    "redis://h/0?username=adm&password=Sekr1t",
    "redis://adm:Sekr1t@h/0?username=other&password=Sekr2t",  # the userinfo wins, as in redis-py
    "redis://adm@h/0?password=Sekr1t",
    "redis://:@h/0?password=Sekr1t",  # an empty userinfo password does not win (redis-py: `if url.password`)
    "redis://h/0?password=Sekr1t&password=Sekr2t",  # the first
    "redis://h/0?password=&password=Sekr1t",  # blank values are dropped
    "redis://h/0?pass%77ord=Sek%26r1t",
    "redis://h/0?password=Sek+r1t",
    "unix:///run/redis/redis.sock?password=Sekr1t&db=3",
    "unix://:Sekr1t@/run/redis/redis.sock",
]


@pytest.mark.parametrize("url", LOGINS)
def test_config_reads_the_login_redis_py_would_and_never_shows_the_password(url):
    expected = parse_url(url)
    target = load_settings({"REDIS_URL": url}).redis
    assert (target.username, target.password) == (expected.get("username"), expected.get("password"))
    assert parse_url(target.url).get("password") == expected.get("password")  # what the client is built from
    assert "Sek" not in target.display and "Sek" not in repr(target)
    assert "password=" not in target.url  # the query keeps no login: it is in one place, the userinfo
    if "db=3" in url:
        assert parse_url(target.url)["db"] == 3  # the other query values stay


@pytest.mark.parametrize("env, password", [
    ({"REDIS_PASSWORD": "fromenv"}, "fromenv"),
    ({"REDIS_USERNAME": "envuser"}, "Sekr1t"),
])
def test_redis_password_and_username_win_over_the_query_as_over_the_userinfo(env, password):
    for url in ("redis://quser:Sekr1t@h/0", "redis://h/0?username=quser&password=Sekr1t"):
        target = load_settings({"REDIS_URL": url, **env}).redis
        assert target.password == password
        assert target.username == env.get("REDIS_USERNAME", "quser")
        assert parse_url(target.url).get("password") == password
        assert "Sek" not in target.display


def test_sentinels_log_in_with_the_query_password_too():
    target = load_settings({"REDIS_URL": "redis://h/2?password=Sekr1t", "REDIS_SENTINELS": "s1:26379",
                            "REDIS_SENTINEL_MASTER": "mymaster"}).redis
    assert target.password == "Sekr1t"  # connection.py passes it to master_for(); the URL's query it never reads
    assert "Sek" not in target.display and target.display.endswith("(db 2)")


@pytest.mark.parametrize("env", [
    {"REDIS_URL": "redis://h/x?password=Sekr1t"},
    {"REDIS_URL": "http://h/0?password=Sekr1t"},
    {"REDIS_URL": "redis://h:99999/0?username=Adm1n&password=Sekr1t"},
    {"REDIS_URL": "redis://:Sek/r1t@h:1/x"},
    {"REDIS_URL": "unix://?password=Sekr1t"},
    {"REDIS_URL": "unix:///run/r.sock?password=Sekr1t", "REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m"},
])
def test_configuration_errors_never_show_the_password(env):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith("REDIS_URL=") and "\n" not in message
    assert "Sek" not in message and "Adm1n" not in message


@pytest.mark.parametrize("env, shown", [
    ({"REDIS_SENTINELS": "10.0.0.1:26379,user:Sekr1t@10.0.0.2:26379", "REDIS_SENTINEL_MASTER": "m"},
     "REDIS_SENTINELS='10.0.0.1:26379,***' is invalid"),
    ({"REDIS_SENTINELS": "redis://:Sekr1t@10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "m"},
     "REDIS_SENTINELS='redis://:***@10.0.0.1:26379' is invalid"),
    ({"REDIS_HOST": ":Sekr1t@redis.local"}, "REDIS_HOST='***' is invalid"),
    ({"REDIS_HOST": "redis://u:Sekr1t@redis.local"}, "REDIS_HOST='redis://u:***@redis.local' is invalid"),
])
def test_a_login_written_into_a_host_variable_is_masked_in_its_error(env, shown):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(shown) and "Sek" not in str(info.value)


def test_a_warning_about_the_url_shows_no_password():
    s = load_settings({"REDIS_URL": "redis://other:6379/0?password=Sekr1t", "REDIS_SENTINELS": "s1",
                       "REDIS_SENTINEL_MASTER": "m", "REDIS_HOST": "x"})
    assert s.warnings and not [w for w in s.warnings if "Sek" in w]


# Generated passwords (any printable text, raw or percent-encoded) in every form: derandomized, so that
# CI runs the same examples each time (no seed to print); bounded by max_examples.
FORMS = [
    lambda pw: f"redis://user:{pw}@h:6379/0",
    lambda pw: f"redis://:{pw}@h/0?db=1",
    lambda pw: f"unix://:{pw}@/run/redis/redis.sock",
    lambda pw: f"redis://h/0?password={pw}",
    lambda pw: f"redis://h/0?username=u&password={pw}&db=1",
    lambda pw: f"unix:///run/redis/redis.sock?db=1&password={pw}",
    lambda pw: f"rediss://h/0?ssl_password={pw}",
]


@settings(derandomize=True, max_examples=400, deadline=None)
@given(form=st.sampled_from(FORMS), quoted=st.booleans(),
       rest=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=12))
def test_no_generated_password_is_ever_shown(form, quoted, rest):
    from urllib.parse import quote

    password = "Zq9" + rest  # the marker: no part of the URL around it contains it
    url = form(quote(password, safe="") if quoted else password)
    shown = mask_url(url)
    assert "Zq9" not in shown
    assert not [secret for secret in redis_py_secrets(url) if len(secret) > 2 and secret in shown]
    if quoted:  # a well-formed URL: the worker logs in with what redis-py reads, and shows none of it
        try:
            target = load_settings({"REDIS_URL": url}).redis
        except ConfigError as exc:
            assert "Zq9" not in str(exc)
            return
        assert "Zq9" not in target.display
        assert parse_url(target.url).get("password") == parse_url(url).get("password")
