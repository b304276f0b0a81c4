"""A generated bad-input corpus over the whole variable table (``tests/badinput.py``), in process.

The property, for any environment drawn: either ``run --check`` passes and what ``run`` does next
does not fail for a configuration reason (its connect fails only as an outage does: nothing listens;
its worker is built), or the check refuses it in one line that names the variable, shows no secret
and no raw undecodable byte: the line ``run`` then exits 78 with. ``run --check`` and ``run`` share
``configure``: files, ``load_settings``, then ``prepare``; this calls the last two directly.

Seed: the ``ci`` profile (tests/conftest.py) is derandomized, so every run draws the same examples; a
failure prints the falsifying environment and a ``@reproduce_failure`` blob to paste above the test.
To look further: ``pytest tests/unit/test_bad_input_corpus.py --hypothesis-profile=explore`` (random,
more examples; a failure prints ``--hypothesis-seed=N`` to replay it).
"""

from __future__ import annotations

import re
import sys

import fakeredis
from badinput import SECRET, environments, loopback, valid_environments
from hypothesis import HealthCheck, given, settings

from rq_worker_service.config import ConfigError, load_settings
from rq_worker_service.connection import REDIS_ERRORS, RedisAuthError, make_connection, ping
from rq_worker_service.notify import Notifier
from rq_worker_service.prepare import prepare
from rq_worker_service.service import build_worker
from rq_worker_service.variables import BY_NAME

NAMED = (*BY_NAME, "credential redis-password")
COMPANIONS = {
    "REDIS_PORT": ("REDIS_HOST",),  # the split form is refused as the URL it makes
    "REDIS_DB": ("REDIS_HOST",),
    "REDIS_SENTINELS": ("REDIS_SENTINEL_MASTER",),  # "required with REDIS_SENTINELS"
    "REDIS_CLUSTER": ("RQ_KEY_PREFIX",),  # "a hash tag … when REDIS_CLUSTER is on"
    "REDIS_SSL_KEYFILE": ("REDIS_SSL_CERTFILE",),
}
"""A refusal may name the variable to change rather than the one drawn: the one it goes with."""


def assert_one_clean_line(message: str, env: dict[str, str]) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert SECRET not in message, message
    assert message.isprintable(), message  # lone surrogates would break the journal's and stderr's encoding
    named = re.match(r"[^=:]+", message)
    assert named and named[0] in NAMED, f"the line names no variable: {message}"
    assert named[0] in env or any(named[0] in COMPANIONS.get(name, ()) for name in env), (
        f"{message} (drawn: {sorted(env)})")


def passes_and_starts_as_run_would(env: dict[str, str]) -> None:
    """What ``run`` does after the check, short of the loop: connect (nothing listens: an outage, never
    a TypeError/ValueError/UnicodeError) and build the worker (on fakeredis, a Redis that answers).
    ``prepare`` puts the drawn RQ_APP_PATH on the import path (the app's classes import from there):
    taken off again, so that no draw changes what this process imports."""
    import_path = list(sys.path)
    try:
        prepared = prepare(load_settings(env))
    finally:
        sys.path[:] = import_path
    settings_ = prepared.settings
    if loopback(settings_.redis):  # ("2" is the address 0.0.0.2: a connect there may wait for its timeout)
        try:
            ping(make_connection(settings_.redis, settings_.key_prefix, settings_.name), settings_.redis)
        except (*REDIS_ERRORS, RedisAuthError):
            pass
    worker = build_worker(prepared, fakeredis.FakeRedis(), Notifier())
    assert worker.name == settings_.name


@settings(deadline=1000, suppress_health_check=[HealthCheck.too_slow])  # max_examples: the profile's
@given(environments())
def test_the_check_refuses_in_one_line_or_the_start_does_not_fail_on_configuration(env):
    try:
        passes_and_starts_as_run_would(env)
    except ConfigError as exc:
        assert_one_clean_line(str(exc), env)


@settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(valid_environments())
def test_what_is_valid_passes_the_check_and_starts(env):
    """The other half: a check that refused everything would satisfy the rule above. Every variable
    valid (unix:// URLs included, which redis-py's keepalive options once broke) passes."""
    passes_and_starts_as_run_would(env)
