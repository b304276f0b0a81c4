"""Configuration: environment variables (and flags) turned into validated ``Settings``.

Everything an operator can get wrong is checked here, before any connection is made, so that a
mistake ends in one line that names the variable, the bad value and what is expected, and in exit
status 78 (EX_CONFIG), which the unit lists in ``RestartPreventExitStatus=`` so that it never loops.
Which variables exist, their defaults and parsers are declared once, in ``variables``; a flag of
``run`` goes through the same parser as its variable. Secrets are masked in every message.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, unquote_plus, urlsplit

from .variables import (
    BY_NAME,
    DEFAULT_REDIS_URL,
    HASH_TAG_RE,
    INTERNAL_PREFIX,
    MAX_SECONDS,
    NOT_CONFIGURATION,
    VARIABLES,
    Invalid,
    Parser,
    Variable,
    boolean,
    choice,
    identifier,
    seconds,
    site_packages,
    text,
    whole,
)

CREDENTIAL_NAME = "redis-password"
SENTINEL_CREDENTIAL_NAME = "redis-sentinel-password"
MASK = "***"
_SPLIT_REDIS_VARS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")


class ConfigError(Exception):
    """An operator mistake in configuration; ``str()`` is the one line we print and log."""

    def __init__(self, variable: str, value: str | None, expected: str, *, secret: bool = False) -> None:
        shown = MASK if secret and value else value
        if value is None:
            message = f"{variable}: {expected}"
        else:
            message = f"{variable}={shown!r} is invalid: expected {expected}"
        super().__init__(_one_line(message))
        self.variable = variable


def _one_line(text: str) -> str:
    """``text`` with what is not printable escaped as Python would (a path or file name in a message
    may hold a newline or an undecodable byte): one line, which any log and terminal can take."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Sentinels:
    """Redis Sentinel: whom to ask for the primary of ``master`` (REDIS_SENTINEL_*)."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False

    @property
    def display(self) -> str:
        return f"{self.master} via sentinels " + ",".join(f"{host}:{port}" for host, port in self.addresses)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in; ``display`` is safe to print, ``url`` is not."""

    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cluster: bool = False
    """``url`` is a seed node of a Redis Cluster (REDIS_CLUSTER)."""
    sentinels: Sentinels | None = None
    """The primary is found through these; ``url`` then gives only db, scheme (TLS) and login."""
    tls: tuple[tuple[str, str], ...] = ()
    """redis-py's ``ssl_*`` keyword arguments from REDIS_SSL_* (for rediss:// and TLS sentinels)."""

    @property
    def display(self) -> str:
        if self.sentinels:
            db = urlsplit(self.url).path.lstrip("/") or "0"
            return f"{self.sentinels.display} (db {db})"
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"RedisTarget({self.display!r})"


@dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs, validated. What each field means: ``variables.VARIABLES``."""

    redis: RedisTarget
    queues: tuple[str, ...]
    instance: str
    name: str
    app_dir: str | None
    app_path: tuple[str, ...]
    app_virtualenv: str | None
    worker_class: str
    """fork, simple, spawn, or a dotted path to the app's own worker class (``worker_classes.service_class``)."""
    prefork: bool | None
    """Fork the next horse while a job runs (``prefork``; None: auto, only while CPU is idle); our fork class only."""
    serializer: str
    """pickle, json or a dotted path; these four are imported from the app by ``classes``."""
    job_class: str | None
    queue_class: str | None
    connection_class: str | None
    job_timeout: int | None
    result_ttl: int
    failure_ttl: int | None
    with_scheduler: bool
    log_level: str
    disable_job_desc_logging: bool
    exception_handlers: tuple[str, ...]
    disable_default_exception_handler: bool
    settings_module: str | None
    shutdown_timeout: float
    max_jobs: int | None
    max_memory: int | None
    max_idle_time: int | None
    worker_ttl: int
    maintenance_interval: int
    job_monitoring_interval: int | None
    retry_max: int
    retry_delay: int
    redis_startup_wait: float
    key_prefix: str
    enqueue_wait_replicas: int
    enqueue_wait_timeout: float
    dequeue_strategy: str = "default"
    warnings: tuple[str, ...] = ()


def _compose(scheme: str, userinfo: str, host: str, path: str, query: str) -> str:
    """Reassemble a URL; unlike urlunsplit it keeps ``unix:///path`` (empty host) intact."""
    return f"{scheme}://{userinfo}{host}{path}" + (f"?{query}" if query else "")


LOGIN_QUERY_KEYS = ("username", "password")
"""Query keys redis-py logs in with (``redis.connection.parse_url`` hands every query value to the
connection as a keyword; a login in the userinfo wins over these)."""


def _secret_query_key(key: str) -> bool:
    """Whether a query value is masked: the login keys and any key naming a password (redis-py's
    ``ssl_password`` unlocks the client key), in any case, the key decoded as redis-py decodes it."""
    name = unquote_plus(key).lower()
    return name == "username" or "password" in name


def mask_url(url: str) -> str:
    """Return ``url`` with every secret replaced by ``***``: the userinfo's password, and the values of
    ``password=``, ``username=`` (and other password keys) in the query. A user name in the userinfo is
    kept: it helps, and ``acl`` prints it anyway. What redis-py ignores is masked whole: the fragment
    and a query item without ``=`` (both most likely the rest of a password with a raw ``#`` or ``&``).

    An ``@`` after the authority means a password with a raw ``/``, ``?`` or ``#`` (urlsplit ends the
    authority there, and would show its first part as the host): everything up to the last ``@`` is
    masked then."""
    try:
        parts = urlsplit(url)
        if "@" in url and "@" not in parts.netloc:
            start, last = url.find("://"), url.rfind("@")
            if not 0 <= start < last:
                return MASK
            url = url[:start + 3] + MASK + url[last:]
            parts = urlsplit(url)
            if "@" not in parts.netloc:
                return MASK
    except ValueError:
        return MASK
    pairs = [pair.partition("=") for pair in parts.query.split("&")] if parts.query else []
    secret_pairs = [_secret_query_key(key) if sep else bool(key) for key, sep, _ in pairs]
    if parts.password is None and not any(secret_pairs) and not parts.fragment:
        return url  # nothing to hide: as given (a URL put back together could read differently: no scheme, say)
    login, at, host = parts.netloc.rpartition("@")
    if parts.password is not None:
        login = f"{parts.username or ''}:{MASK}"
    query = "&".join((f"{key}={MASK}" if sep else MASK) if secret else f"{key}{sep}{value}"
                     for (key, sep, value), secret in zip(pairs, secret_pairs, strict=True))
    fragment = f"#{MASK}" if parts.fragment else ""
    return _compose(parts.scheme, login + at, host, parts.path, query) + fragment


def mask_webhook_url(url: str) -> str:
    """Return a job's webhook URL with all but its scheme and host replaced by ``***``: such URLs carry
    their secret anywhere (a token in the query, a key in the path as chat services' incoming webhooks
    do, a login in the userinfo), so nothing past the host is shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    login = f"{MASK}@" if "@" in parts.netloc else ""
    host = f"[{host}]" if ":" in host else host
    rest = f"/{MASK}" if parts.path.strip("/") or parts.query or parts.fragment else parts.path
    return f"{parts.scheme}://{login}{host}{port}{rest}"


def _login_from_query(query: str) -> tuple[dict[str, str], str]:
    """The ``username``/``password`` values of a URL's query as redis-py reads them (``parse_qs``:
    keys and values decoded, blank values dropped, the first of repeated keys used), and the query
    without them, so that they reach a display nowhere."""
    values = {key: found[0] for key, found in parse_qs(query).items() if key in LOGIN_QUERY_KEYS}
    rest = [pair for pair in query.split("&") if unquote_plus(pair.partition("=")[0]) not in LOGIN_QUERY_KEYS]
    return values, "&".join(rest)


def utf8(variable: str, value: str, *, secret: bool = False) -> str:
    """``value``, refused unless it is UTF-8 text. Python hands bytes that are not (an EnvironmentFile
    or a command line may carry any) on as lone surrogates, which every check here lets pass and
    which fail only when redis-py encodes them: at the start, with a traceback."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(variable, mask_url(value), "UTF-8 text (the value holds bytes that are not UTF-8)",
                          secret=secret) from None
    if "\x00" in value:  # only a .env can carry one; the environment and every path refuse it (ValueError)
        raise ConfigError(variable, mask_url(value), "text without NUL characters", secret=secret)
    return value


def _get(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, with an empty or blank value meaning 'not set' (as in systemd units)."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return utf8(name, value.strip(), secret=name in BY_NAME and BY_NAME[name].secret)


_ADDRESS_VARIABLES = ("REDIS_HOST", "REDIS_SENTINELS")
"""They name hosts: an ``@`` in one is a login written there by mistake (``user:password@host``, a
sentinel URL), which their parsers refuse; the error shows each such item through ``mask_url``."""


def _shown(var: Variable, raw: str) -> str:
    if var.name not in _ADDRESS_VARIABLES:
        return raw
    return ",".join(mask_url(item) if "@" in item else item for item in raw.split(","))


def parse_value(var: Variable, raw: str, label: str | None = None) -> Any:
    """``raw`` through ``var``'s parser; a refusal becomes a ConfigError naming ``label`` (the flag
    the value came from) or the variable."""
    try:
        return var.parse(utf8(label or var.name, raw, secret=var.secret))
    except Invalid as exc:
        raise ConfigError(label or var.name, _shown(var, raw), str(exc), secret=var.secret) from None


def read(env: Mapping[str, str], name: str) -> Any:
    """Variable ``name`` from ``env``, parsed, or its declared default when unset."""
    var = BY_NAME[name]
    raw = _get(env, name)
    return var.default if raw is None else parse_value(var, raw)


def _read_secret_file(path: str, variable: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(variable, path, f"a readable file holding the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(variable, path, f"a file holding the {what} as UTF-8 text") from None


def _secret(env: Mapping[str, str], credential_name: str, variable: str, what: str) -> str | None:
    """A password from, in order: the systemd credential ``credential_name``, ``<variable>_FILE``,
    ``variable``. The same precedence for Redis's password and the sentinels'."""
    cred_dir = _get(env, "CREDENTIALS_DIRECTORY")
    if cred_dir:
        credential = Path(cred_dir) / credential_name
        try:
            present = credential.is_file()
            vanished = not present and not Path(cred_dir).is_dir()
        except OSError as exc:  # systemd set the credential up, but we may not read it
            raise ConfigError(f"credential {credential_name}", str(credential),
                              f"a credential this service's user can read ({exc.strerror})") from None
        if vanished:  # systemd named a directory it did not set up: falling back would hide that
            raise ConfigError(f"credential {credential_name}", str(credential),
                              "a credential directory systemd has set up (CREDENTIALS_DIRECTORY names one "
                              "that does not exist in this service)")
        if present:
            return _read_secret_file(str(credential), f"credential {credential_name}", what)
    path = _get(env, f"{variable}_FILE")
    if path:
        return _read_secret_file(path, f"{variable}_FILE", what)
    return _get_secret(env, variable)


def _get_secret(env: Mapping[str, str], name: str) -> str | None:
    """A password variable: not stripped (a password may end in a space), but UTF-8 like every value."""
    value = env.get(name)
    return utf8(name, value, secret=True) if value else None


def _password(env: Mapping[str, str]) -> str | None:
    """The Redis password from a systemd credential, REDIS_PASSWORD_FILE or REDIS_PASSWORD (``_secret``)."""
    return _secret(env, CREDENTIAL_NAME, "REDIS_PASSWORD", "Redis password")


def _check_url(url: str, variable: str) -> tuple[str, str | None, str | None]:
    """Validate a Redis URL; return it without credentials, plus the user and password it held (in
    the userinfo, or else as ``?username=``/``?password=``: redis-py's precedence)."""
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
        if db and not (db.isascii() and db.isdigit() and int(db) <= MAX_SECONDS):
            raise ConfigError(variable, mask_url(url), "a database number after the host, as in redis://host:6379/0")
    from_query, query = _login_from_query(parts.query)
    username = unquote(parts.username) if parts.username else from_query.get("username")
    password = unquote(parts.password) if parts.password else from_query.get("password")
    host = parts.netloc.rsplit("@", 1)[-1]
    return _compose(parts.scheme, "", host, parts.path, query), username, password


_URL_OPTIONS: dict[str, Parser] = {
    "db": whole(0, "a database number (0, 1, 2, …)"),
    "username": text,
    "password": text,
    "socket_timeout": seconds(),
    "socket_connect_timeout": seconds(),
    "health_check_interval": whole(0, "seconds, a whole number, 0 or more"),
    "retry_on_timeout": boolean,
    "protocol": choice("2", "3"),
}
"""The query parameters of REDIS_URL a worker takes, with what each must be. redis-py takes more, and
any name as a keyword argument of its connections, most of them only when it connects: an unknown
name, ``retry_on_error=x`` or ``decode_responses=1`` passed the check and then failed the start or
broke rq; ``client_name`` would hide a worker's connections from fencing, and ``ssl_*`` would
silently override the REDIS_SSL_* variables."""


def _check_url_options(url: str, variable: str) -> None:
    """The URL's host and query as redis-py will read them, refused here instead of at the connect."""
    from redis import ConnectionPool

    parts = urlsplit(url)
    if parts.hostname:
        try:
            parts.hostname.encode("idna")  # what the resolver will do with it
        except UnicodeError:
            raise ConfigError(variable, mask_url(url), "a host name whose labels (between dots) are 1 to 63 "
                              "characters") from None
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_OPTIONS:
            raise ConfigError(variable, mask_url(url), f"only these query parameters: {', '.join(_URL_OPTIONS)} "
                              f"(not {name!r}; TLS settings are the REDIS_SSL_* variables)")
        if name in seen:
            raise ConfigError(variable, mask_url(url), f"each query parameter once ({name!r} is repeated)")
        seen.add(name)
        if value:
            try:
                _URL_OPTIONS[name](value)
            except Invalid as exc:
                raise ConfigError(variable, mask_url(url), f"{name}= to be {exc}") from None
    try:
        ConnectionPool.from_url(url)  # redis-py's own parser (builds a pool; connects to nothing)
    except ValueError as exc:
        raise ConfigError(variable, mask_url(url), f"a URL redis-py takes ({exc})") from None


def redis_target(env: Mapping[str, str], url_override: str | None = None) -> tuple[RedisTarget, list[str]]:
    """Build the Redis target from REDIS_URL or the split REDIS_HOST/PORT/DB form.

    Returns the target and warnings to log (for variables that were set but are ignored).
    """
    warnings: list[str] = []
    url = utf8("--url", url_override) if url_override else _get(env, "REDIS_URL")
    variable = "--url" if url_override else "REDIS_URL"
    if url:
        ignored = [name for name in _SPLIT_REDIS_VARS if _get(env, name)]
        if ignored:
            verb = "is" if len(ignored) == 1 else "are"
            warnings.append(f"{variable} is set, so {', '.join(ignored)} {verb} ignored")
    elif any(_get(env, name) for name in _SPLIT_REDIS_VARS):
        url = f"redis://{read(env, 'REDIS_HOST')}:{read(env, 'REDIS_PORT')}/{read(env, 'REDIS_DB')}"
        variable = "REDIS_HOST"
    else:
        url = DEFAULT_REDIS_URL
    clean, url_user, url_password = _check_url(url, variable)
    _check_url_options(clean, variable)
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
    cluster = read(env, "REDIS_CLUSTER")
    scheme = urlsplit(clean).scheme
    if cluster and scheme == "unix":
        raise ConfigError("REDIS_CLUSTER", "yes", "a redis:// or rediss:// REDIS_URL: a cluster is reached over TCP")
    sentinels = _sentinels(env, variable, url, scheme, cluster, warnings)
    tls = _tls(env, scheme == "rediss" or bool(sentinels and sentinels.ssl))
    return RedisTarget(url=url_with_login, username=username, password=password, cluster=cluster,
                       sentinels=sentinels, tls=tls), warnings


def _sentinels(env: Mapping[str, str], variable: str, url: str, scheme: str, cluster: bool,
               warnings: list[str]) -> Sentinels | None:
    """REDIS_SENTINELS and its companions, checked together: half a Sentinel setup is an error."""
    addresses = read(env, "REDIS_SENTINELS")
    master = read(env, "REDIS_SENTINEL_MASTER")
    if not addresses:
        if master:
            raise ConfigError("REDIS_SENTINEL_MASTER", None, "set, but REDIS_SENTINELS is not: set the sentinels "
                              "to ask for it (host:port,host:port), or remove it")
        return None
    if not master:
        raise ConfigError("REDIS_SENTINEL_MASTER", None, "required with REDIS_SENTINELS: the name the sentinels "
                          "monitor the primary under (sentinel monitor NAME … in sentinel.conf)")
    if cluster:
        raise ConfigError("REDIS_CLUSTER", "yes", "either REDIS_CLUSTER or REDIS_SENTINELS, not both")
    if scheme == "unix":
        raise ConfigError(variable, mask_url(url), "a redis:// or rediss:// URL with REDIS_SENTINELS: the sentinels "
                          "name the primary's host and port, a socket path cannot follow it")
    host = urlsplit(url).hostname
    if variable != "REDIS_HOST" and url != DEFAULT_REDIS_URL and host not in (master, "localhost"):
        warnings.append(f"REDIS_SENTINELS is set, so {variable}'s host {host} is not used: the sentinels name the "
                        f"primary of {master}")
    if variable == "REDIS_HOST" and (_get(env, "REDIS_HOST") or _get(env, "REDIS_PORT")):
        warnings.append("REDIS_SENTINELS is set, so REDIS_HOST and REDIS_PORT are not used (REDIS_DB is)")
    password = _secret(env, SENTINEL_CREDENTIAL_NAME, "REDIS_SENTINEL_PASSWORD", "Sentinel password")
    return Sentinels(addresses=addresses, master=master, username=_get(env, "REDIS_SENTINEL_USERNAME"),
                     password=password, ssl=read(env, "REDIS_SENTINEL_SSL"))


_TLS_VARIABLES = {"REDIS_SSL_CA_CERTS": "ssl_ca_certs", "REDIS_SSL_CERTFILE": "ssl_certfile",
                  "REDIS_SSL_KEYFILE": "ssl_keyfile", "REDIS_SSL_CERT_REQS": "ssl_cert_reqs"}


def _tls(env: Mapping[str, str], tls: bool) -> tuple[tuple[str, str], ...]:
    """redis-py's ssl_* arguments; a REDIS_SSL_* setting without TLS is refused, since the operator
    believes the link is encrypted and checked when it is not."""
    given = [name for name in _TLS_VARIABLES if _get(env, name)]
    if given and not tls:
        raise ConfigError(given[0], None, "set, but the connection is not TLS: use a rediss:// REDIS_URL "
                          "(or REDIS_SENTINEL_SSL=yes for the sentinels), or remove it")
    if not tls:
        return ()
    if _get(env, "REDIS_SSL_KEYFILE") and not _get(env, "REDIS_SSL_CERTFILE"):
        raise ConfigError("REDIS_SSL_KEYFILE", None, "set without REDIS_SSL_CERTFILE: set both (the client "
                          "certificate and its key)")
    values = {arg: read(env, name) for name, arg in _TLS_VARIABLES.items()}  # each file checked once
    return tuple((arg, str(value)) for arg, value in values.items() if value is not None)


def virtualenv_site_packages(venv: str) -> Path:
    """The site-packages of RQ_APP_VIRTUALENV (validated again: the directory may have changed)."""
    try:
        return site_packages(venv)
    except Invalid as exc:
        raise ConfigError("RQ_APP_VIRTUALENV", venv, str(exc)) from None


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning for ``RQ_*`` names we do not know (a typo is otherwise silently ignored), each
    with the closest known name. ``REDIS_*`` names only when close to one of ours: apps keep their
    own (``REDIS_CACHE_URL``) in the same ``.env``."""
    found = []
    for key in sorted(env):
        if key in BY_NAME or key in NOT_CONFIGURATION or key.startswith(INTERNAL_PREFIX):
            continue
        if not key.startswith(("RQ_", "REDIS_")):
            continue
        close = difflib.get_close_matches(key, list(BY_NAME), n=1, cutoff=0.8)
        if key.startswith("RQ_") or close:
            found.append(key + (f" (did you mean {close[0]}?)" if close else ""))
    return [f"unknown variables, ignored: {', '.join(found)}"] if found else []


def check_app_rq(venv: str) -> None:
    """Refuse an app virtualenv whose rq is of another major version than the one we run.

    The app enqueues with its rq and our worker runs jobs with ours; across a major version they
    disagree on what is kept in Redis (rq 3: dependents pass through READY_TO_ENQUEUE, rate limits
    are enforced by workers, workers keep no ``current_job``), and nothing would say so.
    """
    ours = metadata.version("rq")
    site = str(virtualenv_site_packages(venv))
    theirs = [d.version for d in metadata.distributions(path=[site]) if (d.metadata["Name"] or "").lower() == "rq"]
    if theirs and theirs[0].split(".")[0] != ours.split(".")[0]:
        major = ours.split(".")[0]
        raise ConfigError("RQ_APP_VIRTUALENV", None, (
            f"the app's virtualenv {venv} has rq {theirs[0]}, but this package runs rq {ours}; an app and its "
            f"workers must share rq's major version (each keeps jobs in Redis its own way). Upgrade the app "
            f"(pip install 'rq>={major},<{int(major) + 1}' in {venv}) or install rq-worker-service 0.1 (rq 2.12)"))


def worker_name(instance: str, hostname: str | None = None) -> str:
    """Stable per host and instance, so a restarted instance finds its predecessor's record."""
    return f"{hostname or socket.gethostname()}.rq-worker@{instance}"


def load_settings(env: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Validate the environment, and the flags of ``run`` (which win), into ``Settings``.

    ``overrides`` maps a ``Settings`` field to the raw text of its flag (``None``: not given); the
    text goes through the variable's own parser, so a flag accepts exactly what the variable does.
    ``url`` and ``name`` are flag-only; ``with_scheduler`` is already a bool. Raises ``ConfigError``
    on the first invalid value.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    redis, warnings = redis_target(env, given.get("url"))
    values: dict[str, Any] = {}
    for var in VARIABLES:
        if var.field is None:
            continue
        raw = given.get(var.field)
        if raw is None:
            values[var.field] = read(env, var.name)
        elif isinstance(raw, bool):
            values[var.field] = raw
        else:
            values[var.field] = parse_value(var, str(raw), var.flag)
    if not values["app_path"] and values["app_dir"]:
        values["app_path"] = (values["app_dir"],)  # the app's modules import from its own directory
    if values.get("app_virtualenv"):
        check_app_rq(values["app_virtualenv"])
    if redis.cluster and not HASH_TAG_RE.search(values["key_prefix"]):
        raise ConfigError("RQ_KEY_PREFIX", values["key_prefix"], "a hash tag such as {reports} when REDIS_CLUSTER "
                          "is on: every key of one prefix must live in one cluster slot")
    warnings += unknown_variables(env)
    name = given.get("name") or worker_name(values["instance"])
    try:
        identifier(name)
    except Invalid as exc:
        raise ConfigError("--name", name, str(exc)) from None
    return Settings(redis=redis, name=name, warnings=tuple(warnings), **values)
