"""Configuration: environment variables (and flags) turned into validated ``Settings``.

Everything an operator can get wrong is checked here, before any connection is made, so that a
mistake ends in one line that names the variable, the bad value and what is expected, and in exit
status 78 (EX_CONFIG), which the unit lists in ``RestartPreventExitStatus=`` so that it never loops.
Secrets are masked in every message this module produces.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit's ``RestartPreventExitStatus=`` keeps systemd from looping on it."""

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
WORKER_CLASSES = ("fork", "simple", "spawn")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CREDENTIAL_NAME = "redis-password"
MASK = "***"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_SPLIT_REDIS_VARS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")


class ConfigError(Exception):
    """An operator mistake in configuration; ``str()`` is the one line we print and log."""

    def __init__(self, variable: str, value: str | None, expected: str, *, secret: bool = False) -> None:
        shown = MASK if secret and value else value
        if value is None:
            message = f"{variable}: {expected}"
        else:
            message = f"{variable}={shown!r} is invalid: expected {expected}"
        super().__init__(message)
        self.variable = variable


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in; ``display`` is safe to print, ``url`` is not."""

    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"RedisTarget({self.display!r})"


@dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs, validated. Field docs live in README's variable table."""

    redis: RedisTarget
    queues: tuple[str, ...]
    instance: str
    name: str
    app_path: tuple[str, ...] = ()
    app_virtualenv: str | None = None
    worker_class: str = "fork"
    job_timeout: int | None = None
    result_ttl: int = 500
    failure_ttl: int | None = None
    with_scheduler: bool = True
    log_level: str = "INFO"
    shutdown_timeout: float = 600.0
    retry_max: int = 3
    retry_delay: int = 60
    redis_startup_wait: float = 30.0
    warnings: tuple[str, ...] = ()


def _compose(scheme: str, userinfo: str, host: str, path: str, query: str) -> str:
    """Reassemble a URL; unlike urlunsplit it keeps ``unix:///path`` (empty host) intact."""
    return f"{scheme}://{userinfo}{host}{path}" + (f"?{query}" if query else "")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (user names are kept: they help)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return _compose(parts.scheme, f"{parts.username or ''}:{MASK}@", host, parts.path, parts.query)


def _get(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, with an empty or blank value meaning 'not set' (as in systemd units)."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int | None, *, minimum: int, allow: tuple[int, ...] = (),
         expected: str) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, expected) from None
    if value < minimum and value not in allow:
        raise ConfigError(name, raw, expected)
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, expected: str) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, expected) from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(name, raw, expected)
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(name, raw, "one of 1/0, true/false, yes/no, on/off")


def _read_secret_file(path: str, variable: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(variable, path, f"a readable file holding the Redis password ({exc.strerror})") from None


def _password(env: Mapping[str, str]) -> str | None:
    """The password from, in order: a systemd credential, REDIS_PASSWORD_FILE, REDIS_PASSWORD."""
    cred_dir = _get(env, "CREDENTIALS_DIRECTORY")
    if cred_dir:
        try:
            present = (Path(cred_dir) / CREDENTIAL_NAME).is_file()
        except OSError as exc:  # systemd set the credential up, but we may not read it
            raise ConfigError(f"credential {CREDENTIAL_NAME}", str(Path(cred_dir) / CREDENTIAL_NAME),
                              f"a credential this service's user can read ({exc.strerror})") from None
        if present:
            return _read_secret_file(str(Path(cred_dir) / CREDENTIAL_NAME), f"credential {CREDENTIAL_NAME}")
    path = _get(env, "REDIS_PASSWORD_FILE")
    if path:
        return _read_secret_file(path, "REDIS_PASSWORD_FILE")
    value = env.get("REDIS_PASSWORD")
    return value if value else None


def _check_url(url: str, variable: str) -> tuple[str, str | None, str | None]:
    """Validate a Redis URL; return it without credentials, plus the user and password it held."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        raise ConfigError(variable, mask_url(url), "a URL like redis://host:6379/0, rediss://… or "
                          "unix:///run/redis/redis.sock (port 1-65535)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(variable, mask_url(url), "a URL starting with redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(variable, mask_url(url), "unix:///path/to/redis.sock")
    else:
        if not parts.hostname:
            raise ConfigError(variable, mask_url(url), "a host name, as in redis://localhost:6379/0")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(variable, mask_url(url), "a database number after the host, as in redis://host:6379/0")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.netloc.rsplit("@", 1)[-1]
    return _compose(parts.scheme, "", host, parts.path, parts.query), username, password


def redis_target(env: Mapping[str, str], url_override: str | None = None) -> tuple[RedisTarget, list[str]]:
    """Build the Redis target from REDIS_URL or the split REDIS_HOST/PORT/DB form.

    Returns the target and warnings to log (for variables that were set but are ignored).
    """
    warnings: list[str] = []
    url = url_override or _get(env, "REDIS_URL")
    variable = "--url" if url_override else "REDIS_URL"
    if url:
        ignored = [name for name in _SPLIT_REDIS_VARS if _get(env, name)]
        if ignored:
            verb = "is" if len(ignored) == 1 else "are"
            warnings.append(f"{variable} is set, so {', '.join(ignored)} {verb} ignored")
    elif any(_get(env, name) for name in _SPLIT_REDIS_VARS):
        host = _get(env, "REDIS_HOST") or "localhost"
        port = _int(env, "REDIS_PORT", 6379, minimum=1, expected="a TCP port number from 1 to 65535")
        if port is not None and port > 65535:
            raise ConfigError("REDIS_PORT", str(port), "a TCP port number from 1 to 65535")
        db = _int(env, "REDIS_DB", 0, minimum=0, expected="a database number (0, 1, 2, …)")
        if any(c in host for c in "/@:?# "):
            raise ConfigError("REDIS_HOST", host, "a host name or IP address, without scheme or port")
        url = f"redis://{host}:{port}/{db}"
        variable = "REDIS_HOST"
    else:
        url = DEFAULT_REDIS_URL
    clean, url_user, url_password = _check_url(url, variable)
    username = _get(env, "REDIS_USERNAME") or url_user
    password = _password(env)
    if password is None:
        password = url_password
    url_with_login = clean
    if username or password:
        # Keep a URL-shaped form with the credentials for redis-py, masked wherever it is shown.
        parts = urlsplit(clean)
        userinfo = quote(username or "", safe="") + (":" + quote(password, safe="") if password else "") + "@"
        url_with_login = _compose(parts.scheme, userinfo, parts.netloc, parts.path, parts.query)
    return RedisTarget(url=url_with_login, username=username, password=password), warnings


def parse_queues(raw: str, variable: str) -> tuple[str, ...]:
    names = [q.strip() for q in raw.split(",")]
    if not names or any(not q for q in names):
        raise ConfigError(variable, raw, "a comma-separated list of queue names, e.g. 'high,default,low'")
    for q in names:
        if any(c.isspace() for c in q):
            raise ConfigError(variable, raw, "queue names without spaces")
    if len(set(names)) != len(names):
        raise ConfigError(variable, raw, "each queue name once")
    return tuple(names)


def _app_path(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "RQ_APP_PATH")
    if raw is None:
        return ()
    paths = tuple(p for p in raw.split(":") if p)
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError("RQ_APP_PATH", raw, f"existing directories separated by ':' ({p} is not a directory)")
    return paths


def virtualenv_site_packages(venv: str) -> Path:
    """The site-packages of an app virtualenv, which must match our Python's minor version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    root = Path(venv)
    if not root.is_dir():
        raise ConfigError("RQ_APP_VIRTUALENV", venv, "the directory of the app's virtualenv")
    site = root / "lib" / version / "site-packages"
    if not site.is_dir():
        found = sorted(p.name for p in (root / "lib").glob("python3*")) if (root / "lib").is_dir() else []
        raise ConfigError("RQ_APP_VIRTUALENV", venv, f"a virtualenv built for {version} "
                          f"(it has {', '.join(found) or 'no lib/python3.*'}); rebuild it with /usr/bin/python3")
    return site


def worker_name(instance: str, hostname: str | None = None) -> str:
    """Stable per host and instance, so a restarted instance finds its predecessor's record."""
    return f"{hostname or socket.gethostname()}.rq-worker@{instance}"


def load_settings(env: Mapping[str, str], overrides: Mapping[str, object] | None = None) -> Settings:
    """Validate the environment (and CLI overrides, which win) into ``Settings``.

    Raises ``ConfigError`` on the first invalid value.
    """
    o = dict(overrides or {})
    redis, warnings = redis_target(env, o.get("url"))  # type: ignore[arg-type]

    if o.get("queues"):
        queues = parse_queues(",".join(o["queues"]), "--queues")  # type: ignore[arg-type]
    else:
        queues = parse_queues(_get(env, "RQ_QUEUES") or "default", "RQ_QUEUES")

    instance = str(o.get("instance") or _get(env, "RQ_WORKER_INSTANCE") or "default")
    if not _INSTANCE_RE.match(instance):
        raise ConfigError("--instance", instance, "letters, digits and . _ - @ only")
    name = str(o.get("name") or worker_name(instance))
    if not _INSTANCE_RE.match(name):
        raise ConfigError("--name", name, "letters, digits and . _ - @ only")

    worker_class = str(o.get("worker_class") or _get(env, "RQ_WORKER_CLASS") or "fork").lower()
    if worker_class not in WORKER_CLASSES:
        variable = "--worker-class" if o.get("worker_class") else "RQ_WORKER_CLASS"
        raise ConfigError(variable, worker_class, "one of fork, simple, spawn")

    log_level = str(o.get("log_level") or _get(env, "RQ_LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        variable = "--log-level" if o.get("log_level") else "RQ_LOG_LEVEL"
        raise ConfigError(variable, log_level, "one of " + ", ".join(LOG_LEVELS))

    venv = _get(env, "RQ_APP_VIRTUALENV")
    if venv:
        virtualenv_site_packages(venv)

    with_scheduler = o["with_scheduler"] if o.get("with_scheduler") is not None else _bool(
        env, "RQ_WITH_SCHEDULER", True)
    shutdown_timeout = (float(o["shutdown_timeout"]) if o.get("shutdown_timeout") is not None  # type: ignore[arg-type]
                        else _float(env, "RQ_SHUTDOWN_TIMEOUT", 600.0, expected="seconds, a number above 0"))

    return Settings(
        redis=redis,
        queues=queues,
        instance=instance,
        name=name,
        app_path=_app_path(env),
        app_virtualenv=venv,
        worker_class=worker_class,
        job_timeout=_int(env, "RQ_JOB_TIMEOUT", None, minimum=1, allow=(-1,),
                         expected="seconds, a whole number above 0, or -1 for no limit"),
        result_ttl=_int(env, "RQ_RESULT_TTL", 500, minimum=0, allow=(-1,),  # type: ignore[arg-type]
                        expected="seconds, a whole number (0 discards results, -1 keeps them forever)"),
        failure_ttl=_int(env, "RQ_FAILURE_TTL", None, minimum=1, allow=(-1,),
                         expected="seconds, a whole number above 0, or -1 to keep failures forever"),
        with_scheduler=bool(with_scheduler),
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
        retry_max=_int(env, "RQ_JOB_RETRY_MAX", 3, minimum=0,  # type: ignore[arg-type]
                       expected="a whole number of retries, 0 or more (0 turns the default retry off)"),
        retry_delay=_int(env, "RQ_JOB_RETRY_DELAY", 60, minimum=0,  # type: ignore[arg-type]
                         expected="seconds between retries, a whole number, 0 or more"),
        redis_startup_wait=_float(env, "RQ_REDIS_STARTUP_WAIT", 30.0, expected="seconds, a number above 0"),
        warnings=tuple(warnings),
    )

