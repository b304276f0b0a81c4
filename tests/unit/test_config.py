from __future__ import annotations

import importlib.metadata
import os
import socket
import sys

import pytest

from rq_worker_service.config import ConfigError, load_settings, mask_url, worker_name


def load(**env):
    return load_settings({k: str(v) for k, v in env.items()})


def test_defaults():
    s = load()
    assert s.redis.url == "redis://localhost:6379/0"
    assert s.queues == ("default",)
    assert s.instance == "default"
    assert s.name == f"{socket.gethostname()}.rq-worker@default"
    assert (s.worker_class, s.with_scheduler, s.log_level) == ("fork", True, "INFO")
    assert (s.shutdown_timeout, s.retry_max, s.retry_delay, s.result_ttl) == (600.0, 3, 60, 500)
    assert s.job_timeout is None and s.failure_ttl is None


def test_queues_in_priority_order_and_flags_override_env():
    assert load(RQ_QUEUES=" high, default ,low").queues == ("high", "default", "low")
    s = load_settings({"RQ_QUEUES": "a", "RQ_WORKER_CLASS": "simple"},
                      {"queues": "x,y", "worker_class": "spawn", "instance": "3"})
    assert s.queues == ("x", "y")
    assert s.worker_class == "spawn"
    assert s.name.endswith(".rq-worker@3")


def test_worker_name_is_stable_per_host_and_instance():
    assert worker_name("2", "web1") == "web1.rq-worker@2"
    assert load(RQ_WORKER_INSTANCE="7").name == load(RQ_WORKER_INSTANCE="7").name


def test_split_redis_form_builds_url():
    s = load(REDIS_HOST="10.0.0.5", REDIS_PORT="6380", REDIS_DB="1", REDIS_PASSWORD="pw")
    assert s.redis.display == "redis://:***@10.0.0.5:6380/1"
    assert s.redis.password == "pw"
    assert "pw" in s.redis.url  # the real URL carries it for redis-py …
    assert "pw" not in repr(s)  # … but no repr or display does


def test_url_wins_over_split_form_with_a_warning():
    s = load(REDIS_URL="redis://h:1/2", REDIS_HOST="other")
    assert s.redis.display == "redis://h:1/2"
    assert s.warnings == ("REDIS_URL is set, so REDIS_HOST is ignored",)


def test_password_sources_in_order(tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    assert load(REDIS_URL="redis://:inurl@h/0").redis.password == "inurl"
    assert load(REDIS_URL="redis://:inurl@h/0", REDIS_PASSWORD="var").redis.password == "var"
    assert load(REDIS_PASSWORD="var", REDIS_PASSWORD_FILE=pw_file).redis.password == "from-file"
    (creds / "redis-password").write_text("cred")
    assert load(REDIS_PASSWORD_FILE=pw_file, CREDENTIALS_DIRECTORY=creds).redis.password == "cred"


def test_sentinel_password_sources_in_order_as_redis_password(tmp_path):
    sentinel = dict(REDIS_SENTINELS="a:1", REDIS_SENTINEL_MASTER="m")
    pw_file = tmp_path / "spw"
    pw_file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    assert load(**sentinel, REDIS_SENTINEL_PASSWORD="var").redis.sentinels.password == "var"
    assert load(**sentinel, REDIS_SENTINEL_PASSWORD="var",
                REDIS_SENTINEL_PASSWORD_FILE=pw_file).redis.sentinels.password == "from-file"
    (creds / "redis-password").write_text("not-the-sentinels")
    assert load(**sentinel, REDIS_SENTINEL_PASSWORD_FILE=pw_file,
                CREDENTIALS_DIRECTORY=creds).redis.sentinels.password == "from-file"
    (creds / "redis-sentinel-password").write_text("cred\n")
    settings = load(**sentinel, REDIS_SENTINEL_PASSWORD_FILE=pw_file, CREDENTIALS_DIRECTORY=creds)
    assert (settings.redis.sentinels.password, settings.redis.password) == ("cred", "not-the-sentinels")
    with pytest.raises(ConfigError, match="^REDIS_SENTINEL_PASSWORD_FILE='/no/file' is invalid: expected a "
                       "readable file holding the Sentinel password"):
        load(**sentinel, REDIS_SENTINEL_PASSWORD_FILE="/no/file")


def test_special_characters_in_password_survive_the_url():
    s = load(REDIS_URL="rediss://user@h:6380/0", REDIS_PASSWORD="p@ss:w/rd#1")
    import redis

    kwargs = redis.connection.parse_url(s.redis.url)
    assert kwargs["password"] == "p@ss:w/rd#1"
    assert kwargs["username"] == "user"
    assert s.redis.display == "rediss://user:***@h:6380/0"


def test_unix_socket_url():
    s = load(REDIS_URL="unix:///run/redis/redis.sock?db=2")
    assert s.redis.display == "unix:///run/redis/redis.sock?db=2"


@pytest.mark.parametrize("env, variable", [
    ({"REDIS_URL": "http://h:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://h:99999/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://:/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://h:6379/x"}, "REDIS_URL"),
    ({"REDIS_URL": "unix://"}, "REDIS_URL"),
    ({"REDIS_PORT": "abc"}, "REDIS_PORT"),
    ({"REDIS_PORT": "70000"}, "REDIS_PORT"),
    ({"REDIS_DB": "-1"}, "REDIS_DB"),
    ({"REDIS_HOST": "redis://h"}, "REDIS_HOST"),
    ({"REDIS_PASSWORD_FILE": "/nonexistent/pw"}, "REDIS_PASSWORD_FILE"),
    ({"RQ_QUEUES": "a,,b"}, "RQ_QUEUES"),
    ({"RQ_QUEUES": "a,a"}, "RQ_QUEUES"),
    ({"RQ_QUEUES": "a b"}, "RQ_QUEUES"),
    ({"RQ_APP_PATH": "/nonexistent/app"}, "RQ_APP_PATH"),
    ({"RQ_APP_VIRTUALENV": "/nonexistent/venv"}, "RQ_APP_VIRTUALENV"),
    ({"RQ_WORKER_CLASS": "thread"}, "RQ_WORKER_CLASS"),
    ({"RQ_JOB_TIMEOUT": "0"}, "RQ_JOB_TIMEOUT"),
    ({"RQ_JOB_TIMEOUT": "1h"}, "RQ_JOB_TIMEOUT"),
    ({"RQ_RESULT_TTL": "-5"}, "RQ_RESULT_TTL"),
    ({"RQ_FAILURE_TTL": "0"}, "RQ_FAILURE_TTL"),
    ({"RQ_WITH_SCHEDULER": "maybe"}, "RQ_WITH_SCHEDULER"),
    ({"RQ_LOG_LEVEL": "verbose"}, "RQ_LOG_LEVEL"),
    ({"RQ_SHUTDOWN_TIMEOUT": "0"}, "RQ_SHUTDOWN_TIMEOUT"),
    ({"RQ_SHUTDOWN_TIMEOUT": "soon"}, "RQ_SHUTDOWN_TIMEOUT"),
    ({"RQ_JOB_RETRY_MAX": "-1"}, "RQ_JOB_RETRY_MAX"),
    ({"RQ_JOB_RETRY_DELAY": "1.5"}, "RQ_JOB_RETRY_DELAY"),
    ({"RQ_REDIS_STARTUP_WAIT": "-3"}, "RQ_REDIS_STARTUP_WAIT"),
    ({"RQ_WORKER_INSTANCE": "a/b"}, "RQ_WORKER_INSTANCE"),
    ({"RQ_SHUTDOWN_TIMEOUT": "inf"}, "RQ_SHUTDOWN_TIMEOUT"),
    ({"RQ_REDIS_STARTUP_WAIT": "nan"}, "RQ_REDIS_STARTUP_WAIT"),
])
def test_each_bad_value_names_variable_and_expectation(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(f"{variable}={env[next(iter(env))]!r} is invalid: expected "), message
    assert "\n" not in message


@pytest.mark.parametrize("overrides, flag", [
    ({"shutdown_timeout": "inf"}, "--shutdown-timeout"),
    ({"shutdown_timeout": "0"}, "--shutdown-timeout"),
    ({"worker_class": "threads"}, "--worker-class"),
    ({"log_level": "loud"}, "--log-level"),
    ({"queues": "a,,b"}, "--queues"),
    ({"instance": "a/b"}, "--instance"),
    ({"name": "a b"}, "--name"),
])
def test_flags_go_through_their_variables_parser(overrides, flag):
    """A flag accepts exactly what its variable accepts (``--shutdown-timeout inf`` used to pass)."""
    with pytest.raises(ConfigError) as info:
        load_settings({}, overrides)
    assert str(info.value).startswith(f"{flag}=")


def test_flag_values_win_over_the_environment():
    s = load_settings({"RQ_SHUTDOWN_TIMEOUT": "5", "RQ_WITH_SCHEDULER": "yes"},
                      {"shutdown_timeout": "7.5", "with_scheduler": False, "log_level": "debug"})
    assert (s.shutdown_timeout, s.with_scheduler, s.log_level) == (7.5, False, "DEBUG")


def test_bad_url_message_masks_password():
    with pytest.raises(ConfigError) as info:
        load(REDIS_URL="http://u:hunter2@h:6379")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_virtualenv_of_other_python_is_rejected(tmp_path):
    (tmp_path / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    with pytest.raises(ConfigError, match="python3.9"):
        load(RQ_APP_VIRTUALENV=tmp_path)
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / "lib" / minor / "site-packages").mkdir(parents=True)
    assert load(RQ_APP_VIRTUALENV=tmp_path).app_virtualenv == str(tmp_path)


def test_boolean_and_special_values():
    assert load(RQ_WITH_SCHEDULER="off").with_scheduler is False
    assert load(RQ_JOB_TIMEOUT="-1").job_timeout == -1
    assert load(RQ_RESULT_TTL="0").result_ttl == 0
    assert load(RQ_JOB_RETRY_MAX="0").retry_max == 0
    assert load(RQ_LOG_LEVEL="debug").log_level == "DEBUG"
    assert load(RQ_QUEUES="  ").queues == ("default",)  # blank means unset, as in systemd units


@pytest.mark.parametrize("url, masked", [
    ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:secret@h/0", "redis://user:***@h/0"),
    ("redis://user@h/0", "redis://user@h/0"),
    ("redis://h/0", "redis://h/0"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_unreadable_credential_is_one_line_error(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-password").write_text("x")
    creds.chmod(0)
    try:
        if os.access(creds / "redis-password", os.R_OK):
            pytest.skip("running with CAP_DAC_OVERRIDE: permissions are not enforced")
        with pytest.raises(ConfigError, match="credential redis-password=.* this service's user can read"):
            load(CREDENTIALS_DIRECTORY=creds)
    finally:
        creds.chmod(0o700)


def test_unreadable_credential_errors_do_not_traceback(tmp_path, monkeypatch):
    from pathlib import Path

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(ConfigError, match="Permission denied"):
        load(CREDENTIALS_DIRECTORY=tmp_path)


def test_credentials_directory_that_systemd_did_not_set_up_is_an_error(tmp_path):
    """Seen under systemd 257 in a namespace sandbox: the variable is set, the directory is absent.
    Falling back to REDIS_PASSWORD would hide that LoadCredential= did not work."""
    missing = tmp_path / "run" / "credentials" / "rq-worker@1.service"
    with pytest.raises(ConfigError, match="credential redis-password=.* does not exist in this service"):
        load(CREDENTIALS_DIRECTORY=missing, REDIS_PASSWORD="fallback")
    missing.mkdir(parents=True)  # present but without our credential (the unit loads others): fall back
    assert load(CREDENTIALS_DIRECTORY=missing, REDIS_PASSWORD="fallback").redis.password == "fallback"


def _venv_with_rq(root, version: str):
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    info = site / f"rq-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rq\nVersion: {version}\n")
    return root


def test_an_app_virtualenv_on_another_rq_major_is_refused_naming_both_versions(tmp_path):
    ours = importlib.metadata.version("rq")
    other = f"{int(ours.split('.')[0]) - 1}.12.0"
    with pytest.raises(ConfigError) as info:
        load(RQ_APP_VIRTUALENV=_venv_with_rq(tmp_path / "old", other))
    message = str(info.value)
    assert f"rq {other}" in message and f"rq {ours}" in message and "\n" not in message
    assert load(RQ_APP_VIRTUALENV=_venv_with_rq(tmp_path / "same", ours.split(".")[0] + ".9.9")).app_virtualenv


@pytest.mark.parametrize("env, named", [
    ({"RQ_KEY_PREFIX": "app%s"}, "RQ_KEY_PREFIX='app%s' is invalid"),
    ({"REDIS_CLUSTER": "yes"}, "RQ_KEY_PREFIX='rq' is invalid: expected a hash tag such as {reports}"),
    ({"REDIS_CLUSTER": "yes", "RQ_KEY_PREFIX": "reports"}, "RQ_KEY_PREFIX='reports' is invalid"),
    ({"REDIS_CLUSTER": "yes", "RQ_KEY_PREFIX": "{r}", "REDIS_URL": "unix:///run/redis.sock"}, "REDIS_CLUSTER"),
    ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER='maybe' is invalid"),
])
def test_cluster_and_key_prefix_mistakes_are_one_line(env, named):
    with pytest.raises(ConfigError) as info:
        load(**env)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_cluster_settings():
    s = load(REDIS_CLUSTER="yes", RQ_KEY_PREFIX="{reports}", REDIS_URL="redis://:pw@node1:7000/0")
    assert s.redis.cluster and s.key_prefix == "{reports}"
    assert load().key_prefix == "rq" and not load().redis.cluster


def test_unknown_variables_give_one_warning_with_the_closest_name():
    s = load(RQ_SHUTDOWN_TIMOUT="30", REDIS_PASWORD="x", REDIS_CACHE_URL="redis://cache/1", RQ_JOB_ID="j1",
             RQ_WORKER_SERVICE_REEXEC="1", RQ_BANANA="1")
    assert list(s.warnings) == ["unknown variables, ignored: REDIS_PASWORD (did you mean REDIS_PASSWORD?), RQ_BANANA, "
                                "RQ_SHUTDOWN_TIMOUT (did you mean RQ_SHUTDOWN_TIMEOUT?)"]
    assert "x" not in s.warnings[0].replace("did you mean", "").replace("REDIS_", "")  # names only, never values
    assert load().warnings == ()


def test_rq_app_dir_is_an_existing_absolute_directory_and_the_default_import_path(tmp_path):
    assert load(RQ_APP_DIR=tmp_path).app_path == (str(tmp_path),)
    assert load(RQ_APP_DIR=tmp_path, RQ_APP_PATH=tmp_path / "..").app_path == (str(tmp_path / ".."),)
    with pytest.raises(ConfigError, match="RQ_APP_DIR='relative/dir' is invalid: expected an absolute path"):
        load(RQ_APP_DIR="relative/dir")
    with pytest.raises(ConfigError, match="expected an existing directory"):
        load(RQ_APP_DIR=tmp_path / "missing")


# -- Sentinel and TLS -------------------------------------------------------------------------


def test_sentinels_with_defaults_db_and_login_from_the_url():
    s = load(REDIS_SENTINELS="10.0.0.1:26379, sentinel-b ,[::1]:26380", REDIS_SENTINEL_MASTER="mymaster",
             REDIS_URL="redis://app:pw@mymaster/2", REDIS_SENTINEL_PASSWORD="spw")
    sentinels = s.redis.sentinels
    assert sentinels.addresses == (("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380))
    assert (sentinels.master, sentinels.password, sentinels.ssl) == ("mymaster", "spw", False)
    assert (s.redis.username, s.redis.password) == ("app", "pw")
    assert s.redis.display == "mymaster via sentinels 10.0.0.1:26379,sentinel-b:26379,::1:26380 (db 2)"
    assert "spw" not in repr(s.redis) and "pw" not in s.redis.display
    assert s.warnings == ()


@pytest.mark.parametrize("env, message", [
    ({"REDIS_SENTINELS": "a:1"}, "REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS"),
    ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER: set, but REDIS_SENTINELS is not"),
    ({"REDIS_SENTINELS": "a:x", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS='a:x' is invalid: expected a comma"),
    ({"REDIS_SENTINELS": "a:1,,b:2", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS='a:1,,b:2' is invalid"),
    ({"REDIS_SENTINELS": "a:70000", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS='a:70000' is invalid"),
    ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "yes"},
     "REDIS_CLUSTER='yes' is invalid: expected either REDIS_CLUSTER or REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "unix:///run/redis.sock"},
     "a redis:// or rediss:// URL with REDIS_SENTINELS"),
    ({"REDIS_SSL_CA_CERTS": "/etc/hostname"}, "REDIS_SSL_CA_CERTS: set, but the connection is not TLS"),
    ({"REDIS_URL": "rediss://h/0", "REDIS_SSL_CA_CERTS": "/nonexistent.crt"},
     "REDIS_SSL_CA_CERTS='/nonexistent.crt' is invalid: expected an existing file"),
    ({"REDIS_URL": "rediss://h/0", "REDIS_SSL_KEYFILE": "/etc/hostname"},
     "REDIS_SSL_KEYFILE: set without REDIS_SSL_CERTFILE"),
    ({"REDIS_URL": "rediss://h/0", "REDIS_SSL_CERT_REQS": "maybe"},
     "REDIS_SSL_CERT_REQS='maybe' is invalid: expected one of required, optional, none"),
    ({"RQ_ENQUEUE_WAIT_REPLICAS": "-1"}, "RQ_ENQUEUE_WAIT_REPLICAS='-1' is invalid"),
])
def test_bad_sentinel_and_tls_settings_are_one_line(env, message):
    with pytest.raises(ConfigError) as caught:
        load(**env)
    assert message in str(caught.value)


def test_a_sentinel_password_is_never_shown_even_when_refused():
    with pytest.raises(ConfigError) as caught:
        load(REDIS_SENTINELS="a:1", REDIS_SENTINEL_PASSWORD="s3cret-sentinel")
    assert "s3cret-sentinel" not in str(caught.value)


def test_with_sentinels_the_url_host_and_split_host_are_not_used_and_say_so():
    s = load(REDIS_SENTINELS="a:1", REDIS_SENTINEL_MASTER="m", REDIS_URL="redis://old-primary:6379/0")
    assert s.warnings == ("REDIS_SENTINELS is set, so REDIS_URL's host old-primary is not used: the sentinels name "
                          "the primary of m",)
    s = load(REDIS_SENTINELS="a:1", REDIS_SENTINEL_MASTER="m", REDIS_HOST="old", REDIS_DB="3")
    assert s.warnings == ("REDIS_SENTINELS is set, so REDIS_HOST and REDIS_PORT are not used (REDIS_DB is)",)
    assert s.redis.display.endswith("(db 3)")


def test_tls_options_go_to_redis_py_only_for_tls():
    s = load(REDIS_URL="rediss://h:6380/0", REDIS_SSL_CA_CERTS="/etc/hostname", REDIS_SSL_CERT_REQS="none")
    assert dict(s.redis.tls) == {"ssl_ca_certs": "/etc/hostname", "ssl_cert_reqs": "none"}
    assert dict(load(REDIS_URL="rediss://h:6380/0").redis.tls) == {"ssl_cert_reqs": "required"}
    assert load().redis.tls == ()
    s = load(REDIS_SENTINELS="a:1", REDIS_SENTINEL_MASTER="m", REDIS_SENTINEL_SSL="yes",
             REDIS_SSL_CA_CERTS="/etc/hostname")
    assert s.redis.sentinels.ssl and dict(s.redis.tls)["ssl_ca_certs"] == "/etc/hostname"


def test_run_refuses_a_password_in_its_url_flag_which_ps_shows():
    from rq_worker_service.service import configure

    for url in ("redis://:pw-in-argv@h/0", "redis://h/0?password=pw-in-argv"):
        with pytest.raises(ConfigError) as caught:
            configure({"url": url}, [])
        assert "--url: holds a password" in str(caught.value) and "REDIS_PASSWORD_FILE" in str(caught.value)
        assert "pw-in-argv" not in str(caught.value)
