"""``run --check`` builds what ``run`` builds before it connects: what passes it cannot fail the start.

Each case below passed the check (the unit's ExecReload= guard) and then failed ``run`` with a
traceback and exit 1, which Restart=on-failure repeats every 5 s for ever (issue 26).
"""

from __future__ import annotations

import pytest
import redis

from rq_worker_service import cli
from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.connection import make_connection
from rq_worker_service.prepare import prepare
from rq_worker_service.variables import MAX_SECONDS

SECRET = "Tr0ub4dor-s3cret"


def refused(env: dict[str, str], overrides: dict | None = None) -> str:
    """The one line ``run --check`` and ``run`` end with for ``env``."""
    with pytest.raises(ConfigError) as info:
        prepare(load_settings(env, overrides))
    message = str(info.value)
    assert "\n" not in message and SECRET not in message, message
    return message


@pytest.mark.parametrize("url, named", [
    ("redis://h:6379/0?socket_timeout=abc", "socket_timeout="),  # redis-py: ValueError at from_url
    ("unix:///run/redis.sock?db=abc", "db="),
    ("redis://h/0?socket_timeout=nan", "socket_timeout="),  # redis-py takes it; settimeout() does not
    ("redis://h/0?socket_connect_timeout=1e300", "socket_connect_timeout="),  # OverflowError at connect
    ("redis://h/0?no_such_option=1", "'no_such_option'"),  # TypeError when the connection is made
    ("redis://h/0?retry_on_error=x", "'retry_on_error'"),  # a list of characters, TypeError at an error
    ("redis://h/0?decode_responses=1", "'decode_responses'"),  # rq needs bytes
    ("redis://h/0?client_name=x", "'client_name'"),  # would hide the worker's connections from fencing
    ("rediss://h/0?ssl_cert_reqs=none", "'ssl_cert_reqs'"),  # would override REDIS_SSL_CERT_REQS silently
    ("rediss://h/0?ssl_check_hostname=no", "'ssl_check_hostname'"),  # the same; a TypeError without TLS
    ("redis://h/0?db=1&db=2", "'db' is repeated"),
    ("redis://h/0?protocol=4", "protocol="),  # redis-py: ConnectionError at connect, waited out as an outage
    (f"redis://:{SECRET}@h/0?health_check_interval=-1", "health_check_interval="),
    ("redis://h/²", "a database number"),  # isdigit() but not int(): db 0 silently, a crash under Sentinel
    ("redis://h/99999999999999999999", "a database number"),
    ("redis://" + "a" * 64 + ".example/0", "labels"),  # UnicodeError from the resolver, inside redis-py
])
def test_url_options_redis_py_refuses_or_misreads_are_refused_by_the_check(url, named):
    message = refused({"REDIS_URL": url})
    assert message.startswith("REDIS_URL=") and named in message, message


def test_url_options_a_worker_takes_pass_and_reach_redis_py():
    settings = load_settings({"REDIS_URL": "unix:///run/redis.sock?db=3&socket_timeout=2.5"})
    prepare(settings)
    kwargs = make_connection(settings.redis, offline=True).connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["socket_timeout"], kwargs["path"]) == (3, 2.5, "/run/redis.sock")


def test_a_unix_socket_url_makes_a_connection_redis_py_accepts(tmp_path):
    """redis-py's Unix socket connection takes no TCP keepalive options: every unix:// URL failed the
    start with a TypeError at the first connect."""
    settings = load_settings({"REDIS_URL": f"unix://{tmp_path}/absent.sock"})
    prepare(settings)
    with pytest.raises(redis.exceptions.ConnectionError):  # an outage, waited out: not a TypeError
        make_connection(settings.redis).ping()


def test_the_status_command_refuses_a_bad_url_in_one_line(capsys, tmp_path, monkeypatch):
    """``status`` read the same URL and crashed in redis-py's parser with a traceback."""
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "RQ_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "worker.env"
    env_file.write_text("")
    for url in ("redis://127.0.0.1:1/0?socket_timeout=abc", "unix:///x.sock?db=abc"):
        assert cli.main(["status", "--url", url, "--env-file", str(env_file)]) == 78
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--url=" in err and "Traceback" not in err, err


@pytest.mark.parametrize("env, variable", [
    ({"RQ_QUEUES": "default,caf\udcc3"}, "RQ_QUEUES"),  # non-UTF-8 bytes from an EnvironmentFile
    ({"RQ_QUEUES": "a\x07b"}, "RQ_QUEUES"),
    ({"REDIS_USERNAME": "us\udcffer"}, "REDIS_USERNAME"),
    ({"REDIS_URL": "redis://h\udcff/0"}, "REDIS_URL"),
    ({"REDIS_PASSWORD": SECRET + "\udcff"}, "REDIS_PASSWORD"),
    ({"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_PASSWORD": SECRET + "\udcff"},
     "REDIS_SENTINEL_PASSWORD"),
])
def test_values_that_are_not_utf8_text_are_refused_and_secrets_stay_masked(env, variable):
    message = refused(env)
    assert message.startswith(f"{variable}="), message
    assert "\udcff" not in message and "\udcc3" not in message  # printable as it is: logging cannot fail on it


def test_a_flag_that_is_not_utf8_is_refused_under_its_name():
    assert refused({}, {"queues": "a\udcff"}).startswith("--queues=")
    assert refused({}, {"url": "unix:///r\udcff.sock"}).startswith("--url=")  # passed: a crash at the connect


def test_a_password_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(SECRET.encode() + b"\xff\n")
    assert refused({"REDIS_PASSWORD_FILE": str(path)}).startswith("REDIS_PASSWORD_FILE=")


@pytest.mark.parametrize("variable", [
    "RQ_RESULT_TTL", "RQ_FAILURE_TTL", "RQ_JOB_TIMEOUT", "RQ_JOB_RETRY_DELAY", "RQ_JOB_RETRY_MAX",
    "RQ_ENQUEUE_WAIT_REPLICAS", "RQ_SHUTDOWN_TIMEOUT", "RQ_ENQUEUE_WAIT_TIMEOUT", "RQ_REDIS_STARTUP_WAIT",
    "REDIS_DB", "RQ_AUTOSCALE_MAX", "RQ_AUTOSCALE_MAX_WAIT",
])
def test_every_count_and_duration_has_an_upper_bound(variable):
    """RQ_RESULT_TTL=99999999999999999 passed; Redis refused its EXPIRE, and every job that succeeded
    was recorded FAILED. The bound is in the message; the bound itself passes."""
    from rq_worker_service.config import read

    assert read({variable: str(MAX_SECONDS)}, variable) == MAX_SECONDS
    with pytest.raises(ConfigError) as info:
        read({variable: "99999999999999999"}, variable)
    assert str(MAX_SECONDS) in str(info.value)


@pytest.mark.parametrize("sentinels", ["a:²", "a:٣", "b:26379," + "x" * 64 + ":26379"])
def test_sentinel_lists_redis_py_cannot_use_are_refused(sentinels):
    """``'²'.isdigit()`` is true and ``int('²')`` raises: a ValueError traceback in the check itself."""
    message = refused({"REDIS_SENTINELS": sentinels, "REDIS_SENTINEL_MASTER": "m"})
    assert message.startswith("REDIS_SENTINELS="), message



@pytest.mark.parametrize("url", [f"redis://u:{SECRET}\udcff@127.0.0.1:1/0", f"://:{SECRET}@127.0.0.1:1/0",
                                 f"redis:/:{SECRET}@h/0"])
def test_a_url_refused_before_it_could_be_parsed_shows_no_password(url):
    """Found by the corpus: a URL that is not UTF-8 was shown as it was, and one whose scheme is missing
    or malformed has no netloc for mask_url to find the password in."""
    message = refused({"REDIS_URL": url})
    assert message.startswith("REDIS_URL="), message


@pytest.mark.parametrize("variable", ["RQ_APP_PATH", "RQ_APP_DIR", "RQ_APP_VIRTUALENV", "REDIS_SSL_CA_CERTS",
                                      "REDIS_PASSWORD_FILE"])
@pytest.mark.parametrize("path", ["/" + "x" * 300, "/a\x00b", "/a\nb"])
def test_a_path_the_system_cannot_look_up_is_one_line(variable, path):
    """Found by the corpus: Path.is_dir() raises OSError for a name too long (ENAMETOOLONG) and
    ValueError for a NUL; a newline in the path made the message two lines."""
    message = refused({variable: path, "REDIS_URL": "rediss://h:1/0"})
    assert message.startswith(f"{variable}="), message
