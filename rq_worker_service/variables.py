"""The configuration variables, each declared once: name, type, default, parser, help, flag.

Everything else is made from this table: ``config.load_settings`` (which reads and validates),
the ``run`` command's flags and their help, the commented ``/etc/rq-worker/worker.env`` the
package ships, the ENVIRONMENT section of ``rq-worker-service(8)`` and the variables table in
README.md (a unit test fails when the README's copy is stale; ``python -m
rq_worker_service.variables readme`` prints the current one).

Only the standard library is imported here: the package build runs this module with Debian's
bare python3 to write the env file and the man page.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Invalid(ValueError):
    """A value a parser refuses; ``str()`` says what is expected instead (config adds the name)."""


Parser = Callable[[str], Any]

MAX_SECONDS = 2**31 - 1
"""The most seconds (and the largest count) any variable takes: about 68 years. Each number ends in a C
call or a Redis command with a limit, and a value past one passed the check, then failed at the start
or worse, at each job (RQ_RESULT_TTL=99999999999999999: Redis refused its EXPIRE and every successful
job was recorded FAILED). The smallest of those limits is alarm(2)'s, a C int, which rq's job timeout
reaches; the others are far above it: Redis EXPIRE ≈9.2e15 s (2^63 ms less the clock), a retry's
date before year 10000 (≈2.5e11 s from now), a socket timeout ≈9.2e9 s. One bound for all of them
keeps the rule one line; -1 (forever, no limit) remains where a variable has it."""


def whole(minimum: int, expected: str, *, maximum: int = MAX_SECONDS, also: tuple[int, ...] = ()) -> Parser:
    """An integer ``>= minimum`` and ``<= maximum`` (MAX_SECONDS unless said), or one of the special
    values ``also``; ``expected`` is completed with the maximum when it is MAX_SECONDS."""
    if maximum == MAX_SECONDS:
        expected = f"{expected}, at most {MAX_SECONDS}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise Invalid(expected) from None
        if value in also:
            return value
        if value < minimum or value > maximum:
            raise Invalid(expected)
        return value

    return parse


def seconds(expected: str = f"seconds, a number above 0 and at most {MAX_SECONDS}") -> Parser:
    """A finite number of seconds above 0, at most MAX_SECONDS: ``inf`` and ``nan`` are refused,
    since every timeout is eventually added to a clock, given to a socket and told to systemd in
    microseconds."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise Invalid(expected) from None
        if not (0 < value <= MAX_SECONDS):  # (False for nan; inf is above the maximum)
            raise Invalid(expected)
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise Invalid("one of 1/0, true/false, yes/no, on/off")


def boolean_or_auto(raw: str) -> bool | None:
    """yes, no (as ``boolean``) or auto (None: the service decides as it goes)."""
    if raw.lower() == "auto":
        return None
    try:
        return boolean(raw)
    except Invalid:
        raise Invalid("auto, or one of 1/0, true/false, yes/no, on/off") from None


def choice(*values: str, normalise: Callable[[str], str] = str.lower) -> Parser:
    def parse(raw: str) -> str:
        value = normalise(raw)
        if value not in values:
            raise Invalid("one of " + ", ".join(values))
        return value

    return parse


def queue_list(raw: str) -> tuple[str, ...]:
    names = [q.strip() for q in raw.split(",")]
    if any(not q for q in names):
        raise Invalid("a comma-separated list of queue names, e.g. 'high,default,low'")
    if any(any(c.isspace() for c in q) for q in names):
        raise Invalid("queue names without spaces")
    if not all(q.isprintable() for q in names):
        raise Invalid("queue names of printable characters")
    if len(set(names)) != len(names):
        raise Invalid("each queue name once")
    return tuple(names)


_SIZE_RE = re.compile(r"^([0-9]{1,20}) ?([KMGT]?)(?:I?B)?$")
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
MEMORY_RANGE = (2**20, 2**50)
"""1M to 1024T: no Python worker runs in less than 1 MiB (a number of bytes meant as MiB is caught)."""


def memory_size(raw: str) -> int:
    """Bytes from ``512M``, ``2G``, ``1536MiB`` or plain bytes; K, M, G, T are powers of 1024, as in
    systemd's MemoryMax=, so that the two can be compared at a glance."""
    match = _SIZE_RE.match(raw.strip().upper())
    if not match:
        raise Invalid("a size such as 512M or 2G (K, M, G, T: powers of 1024)")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not MEMORY_RANGE[0] <= value <= MEMORY_RANGE[1]:
        raise Invalid("a size from 1M to 1024T, such as 512M or 2G")
    return value


_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


def identifier(raw: str) -> str:
    """An instance or worker name: it becomes part of Redis keys, unit names and journal fields."""
    if not _NAME_RE.match(raw):
        raise Invalid("letters, digits and . _ - @ only")
    return raw


_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:{}-]+")  # what rq 3 itself accepts (rq.defaults)
HASH_TAG_RE = re.compile(r"\{[^{}]+\}")
"""A Redis Cluster hash tag: only the text between the first ``{`` and ``}`` decides the slot."""


def key_prefix(raw: str) -> str:
    if not _KEY_PREFIX_RE.fullmatch(raw):
        raise Invalid("letters, digits and _ . : - { } only (rq splices the prefix into scripts), e.g. {reports}")
    return raw


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False for a path the system cannot even look up (a name too long for it,
    ENAMETOOLONG), which ``Path.is_dir`` raises as OSError: a traceback in the check itself."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where ``_is_dir`` is."""
    try:
        return path.is_file()
    except OSError:
        return False


def directories(raw: str) -> tuple[str, ...]:
    paths = tuple(p for p in raw.split(":") if p)
    for p in paths:
        if not _is_dir(Path(p)):
            raise Invalid(f"existing directories separated by ':' ({p} is not a directory)")
    return paths


def app_directory(raw: str) -> str:
    path = Path(raw)
    if not path.is_absolute():
        raise Invalid("an absolute path, e.g. /srv/myapp")
    if not _is_dir(path):
        raise Invalid("an existing directory (the app's project directory)")
    return str(path)


def site_packages(venv: str) -> Path:
    """The site-packages of an app virtualenv, which must match our Python's minor version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    root = Path(venv)
    if not _is_dir(root):
        raise Invalid("the directory of the app's virtualenv")
    site = root / "lib" / version / "site-packages"
    if not site.is_dir():
        found = sorted(p.name for p in (root / "lib").glob("python3*")) if (root / "lib").is_dir() else []
        raise Invalid(f"a virtualenv built for {version} (it has {', '.join(found) or 'no lib/python3.*'}); "
                      "rebuild it with /usr/bin/python3")
    return site


def virtualenv(raw: str) -> str:
    site_packages(raw)
    return raw


def _resolvable(name: str) -> bool:
    """Whether the resolver can take ``name``: it encodes it as IDNA, whose labels (between dots) are
    1 to 63 characters; a longer one raised UnicodeError inside redis-py's connect, a traceback."""
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def host(raw: str) -> str:
    if any(c in raw for c in "/@:?# ") or not _resolvable(raw):
        raise Invalid("a host name or IP address, without scheme or port")
    return raw


def text(raw: str) -> str:
    return raw


_DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")  # a top-level module too


def dotted(what: str, example: str) -> Parser:
    """A dotted import path (``myapp.jobs.MyJob``) to ``what``, checked for its form only: it is imported
    from the app once the app's directories are on the import path (``classes``, ``prepare``)."""

    def parse(raw: str) -> str:
        if not _DOTTED_RE.fullmatch(raw):
            raise Invalid(f"a dotted import path to {what}, e.g. {example}")
        return raw

    return parse


SERIALIZERS = ("pickle", "json")


def serializer(raw: str) -> str:
    """rq's ``--serializer``: its names pickle and json, or a dotted path to the app's own."""
    if raw.lower() in SERIALIZERS:
        return raw.lower()
    if not _DOTTED_RE.fullmatch(raw):
        raise Invalid("pickle, json, or a dotted import path to the app's serializer (a class or module with "
                      "dumps and loads, as rq's --serializer takes), e.g. myapp.rq.MsgpackSerializer")
    return raw


def worker_class(raw: str) -> str:
    """fork, simple, spawn, or a dotted path to the app's own subclass of one of rq's three."""
    if raw.lower() in WORKER_CLASSES:
        return raw.lower()
    if not _DOTTED_RE.fullmatch(raw):
        raise Invalid("fork, simple, spawn, or a dotted import path to the app's subclass of rq's Worker, "
                      "SimpleWorker or SpawnWorker, e.g. myapp.rq.MyWorker")
    return raw


def sentinel_addresses(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (port 26379 when left out): the sentinels to ask for the primary."""
    expected = "a comma-separated list of sentinels as host:port, e.g. 10.0.0.1:26379,10.0.0.2:26379"
    found = []
    for item in (part.strip() for part in raw.split(",")):
        name, _, port = item.rpartition(":") if ":" in item else (item, ":", "26379")
        if (not name or any(c in name for c in "/@?# ") or not _resolvable(name) or not port.isascii()
                or not port.isdigit() or not 0 < int(port) < 65536):
            raise Invalid(expected)
        found.append((name[1:-1] if name.startswith("[") and name.endswith("]") else name, int(port)))
    return tuple(found)


def dotted_module(raw: str) -> str:
    """A module's dotted name (``myapp.rq_settings``), imported from the app by ``prepare``."""
    if not _MODULE_RE.fullmatch(raw) or not raw.isascii():
        raise Invalid("a module's dotted name, as in myapp.rq_settings")
    return raw


def dotted_paths(raw: str) -> tuple[str, ...]:
    """Dotted paths to objects (``myapp.errors.report``), separated by commas or blanks, each once: the
    order is the order rq calls them in. Checked for their form here; imported from the app by
    ``prepare``."""
    paths = tuple(item for item in re.split(r"[\s,]+", raw) if item)
    expected = "dotted paths to the app's handlers (module.function), separated by commas, as in myapp.errors.report"
    if not paths or not all(_DOTTED_RE.fullmatch(p) and p.isascii() for p in paths):
        raise Invalid(expected)
    if len(set(paths)) != len(paths):
        raise Invalid("each handler once")
    return paths


def cron_config(raw: str) -> str:
    """rq cron's argument: a file path (``/srv/app/cron_config.py``, relative to the working directory
    when not absolute) or a module's dotted name (``myapp.cron_config``); imported by the scheduler."""
    if raw.endswith(".py") or "/" in raw:
        return raw
    return dotted_module(raw)


def time_zone(raw: str) -> str:
    """An IANA time zone (``Europe/Berlin``, ``UTC``) that this host's tz database holds: the zone a
    schedule's cron strings are read in, the same on every host whatever its own zone."""
    import zoneinfo  # stdlib; only where a zone is read, so the build's bare python3 needs no tzdata

    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # 'Europe' is a directory, a long name ENAMETOOLONG
        raise Invalid("an IANA time zone name from the tz database (tzdata), e.g. UTC or Europe/Berlin") from None
    return raw


def readable_file(raw: str) -> str:
    """A file the service can read now: a missing certificate must fail the start, not each connect."""
    path = Path(raw)
    if not _is_file(path):
        raise Invalid("an existing file (PEM)")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise Invalid(f"a file this user can read ({exc.strerror})") from None
    return raw


@dataclass(frozen=True)
class Variable:
    """One setting. ``field`` names the ``Settings`` attribute it fills; the Redis variables have
    none, because ``config.redis_target`` combines them into one target."""

    name: str
    help: str
    parse: Parser = text
    default: Any = None
    shown_default: str | None = None
    """How the docs show the default, where ``default`` alone would not say it (rq's own, none)."""
    field: str | None = None
    flag: str | None = None
    """The ``run`` flag that overrides it (``--shutdown-timeout``); parsed by the same ``parse``."""
    short: str | None = None
    metavar: str | None = None
    example: str = ""
    secret: bool = False
    """Its value is never shown, not even in an error message."""

    @property
    def doc_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "(none)"
        if isinstance(self.default, bool):
            return "yes" if self.default else "no"
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


NOT_CONFIGURATION = frozenset({"RQ_WORKER_ID", "RQ_JOB_ID", "RQ_EXECUTION_ID"})
"""Set by rq itself for a spawned work horse: not variables of ours, and not typos."""
INTERNAL_PREFIX = "RQ_WORKER_SERVICE_"
"""Variables this package sets for its own processes (re-exec markers, the spawn horse's config)."""

LONGEST_TICK = 30
"""Seconds between two ticks of a worker at most (a third of WatchdogSec=, and this without a watchdog):
each tick pings the watchdog and beats for fencing; three ticks make the fencing period."""
MIN_WORKER_TTL = 3 * LONGEST_TICK - 60
"""rq keeps a worker's key for worker_ttl + 60 s after each beat; that must cover the fencing period."""

WORKER_CLASSES = ("fork", "simple", "spawn")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEQUEUE_STRATEGIES = ("default", "round_robin", "random")
"""rq's ``DequeueStrategy`` values (``rq.worker.DequeueStrategy``; rq is not imported here)."""
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

VARIABLES: tuple[Variable, ...] = (
    Variable("REDIS_URL", "Redis to take jobs from: redis://[user[:password]@]host[:port][/db], rediss:// (TLS) "
             "or unix:///path/to/redis.sock?db=N. Takes precedence over the REDIS_HOST/PORT/DB form.",
             default=DEFAULT_REDIS_URL, flag="--url", short="-u", metavar="URL", example=DEFAULT_REDIS_URL),
    Variable("REDIS_HOST", "Split form used by many apps' .env: host name or address.", host, default="localhost"),
    Variable("REDIS_PORT", "Split form: TCP port.", whole(1, "a TCP port number from 1 to 65535", maximum=65535),
             default=6379),
    Variable("REDIS_DB", "Split form: database number.", whole(0, "a database number (0, 1, 2, …)"), default=0),
    Variable("REDIS_USERNAME", "Redis ACL user name (overrides one in REDIS_URL)."),
    Variable("REDIS_PASSWORD", "Redis password (overrides one in REDIS_URL). Never logged or shown. Prefer "
             "REDIS_PASSWORD_FILE or the credential redis-password (LoadCredential=), which take precedence "
             "in that order.", secret=True),
    Variable("REDIS_PASSWORD_FILE", "File whose first line is the Redis password."),
    Variable("REDIS_CLUSTER", "REDIS_URL names one node of a Redis Cluster: each process connects to the primary "
             "that holds RQ_KEY_PREFIX's hash slot (RQ_KEY_PREFIX must then be a hash tag such as {reports}).",
             boolean, default=False),
    Variable("REDIS_SENTINELS", "Redis Sentinel: the sentinels to ask for the primary, host:port,host:port. The "
             "workers follow a failover without a restart. REDIS_URL (or REDIS_DB) then gives only the database, "
             "TLS (rediss://) and login; its host is not used.", sentinel_addresses,
             example="10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379"),
    Variable("REDIS_SENTINEL_MASTER", "The name the sentinels monitor the primary under (sentinel monitor NAME …); "
             "required with REDIS_SENTINELS.", identifier, example="mymaster"),
    Variable("REDIS_SENTINEL_USERNAME", "ACL user name for the sentinels themselves (not for Redis)."),
    Variable("REDIS_SENTINEL_PASSWORD", "Password of the sentinels themselves (sentinel requirepass), if they "
             "have one. Never logged or shown. Prefer REDIS_SENTINEL_PASSWORD_FILE or the credential "
             "redis-sentinel-password (LoadCredential=), which take precedence in that order.", secret=True),
    Variable("REDIS_SENTINEL_PASSWORD_FILE", "File whose first line is the sentinels' password."),
    Variable("REDIS_SENTINEL_SSL", "Talk TLS to the sentinels too, with the REDIS_SSL_* files.", boolean,
             default=False),
    Variable("REDIS_SSL_CA_CERTS", "TLS (rediss://): the CA certificate(s) that signed Redis's certificate (PEM). "
             "Default: the system's trusted CAs.", readable_file, example="/etc/rq-worker/redis-ca.crt"),
    Variable("REDIS_SSL_CERTFILE", "TLS: client certificate (PEM), when Redis requires one (tls-auth-clients).",
             readable_file),
    Variable("REDIS_SSL_KEYFILE", "TLS: the client certificate's private key (PEM).", readable_file),
    Variable("REDIS_SSL_CERT_REQS", "TLS: check Redis's certificate: required (and its host name), optional, or "
             "none (no check: encrypts, but anyone in the path can pose as Redis).",
             choice("required", "optional", "none"), default="required"),
    Variable("RQ_KEY_PREFIX", "Prefix of every key rq keeps in Redis. A hash tag such as {reports} puts all of "
             "them in one cluster slot; set it per instance (worker-<instance>.env) to spread groups of queues "
             "over a cluster's shards. Apps that enqueue must use the same prefix.", key_prefix, default="rq",
             field="key_prefix"),
    Variable("RQ_QUEUES", "Queues to work on, comma-separated, highest priority first.", queue_list,
             default=("default",), field="queues", flag="--queues", short="-q", metavar="Q1,Q2",
             example="default"),
    Variable("RQ_WORKER_INSTANCE", "Instance name; the unit passes its %i as --instance. The worker is named "
             "<hostname>.rq-worker@<instance>.", identifier, default="default", field="instance",
             flag="--instance", short="-i", metavar="NAME"),
    Variable("RQ_APP_DIR", "The app's project directory: the worker runs in it (its working directory) and "
             "reads its .env, where the unit's files leave a variable unset; RQ_APP_PATH defaults to it. The "
             "operator commands read the same files.", app_directory, field="app_dir", example="/srv/myapp"),
    Variable("RQ_APP_PATH", "Directories (colon-separated) put first on the import path, so the app's job "
             "functions import, e.g. the app's project directory.", directories, default=(), shown_default="(none)",
             field="app_path", example="/srv/myapp"),
    Variable("RQ_APP_VIRTUALENV", "The app's virtualenv; its site-packages are added after the service's own. "
             "Must be built with the same Python minor version (/usr/bin/python3).", virtualenv,
             field="app_virtualenv"),
    Variable("RQ_WORKER_CLASS", "fork: each job in a forked work horse (rq's Worker); spawn: each job in a "
             "fresh interpreter; simple: jobs in the worker process itself (no isolation). Or a dotted path to the "
             "app's own subclass of rq's Worker, SpawnWorker or SimpleWorker (rq's -w), imported from the app: the "
             "service's behaviour is put in front of it, and it runs jobs as fork, spawn or simple by the rq class "
             "it derives from.", worker_class, default="fork", field="worker_class", flag="--worker-class",
             short="-w", metavar="CLASS"),
    Variable("RQ_PREFORK", "With RQ_WORKER_CLASS=fork: fork each job's horse while the previous job runs and "
             "hand it the job over a pipe, so that the fork is not on the job's path (still one fresh process per "
             "job; one more, idle, process per instance). no: fork the horse when the job is taken, as rq does; "
             "auto: no spare while less than a fifth of a CPU is idle, until two fifths are again (a spare costs "
             "some CPU, which busy CPUs shared with other work may lack).",
             boolean_or_auto, default=True, field="prefork"),
    Variable("RQ_SERIALIZER", "How jobs are serialized in Redis, as the app enqueues them (rq's --serializer): "
             "pickle, json (rq's JSONSerializer), or a dotted path to the app's serializer (a class or module with "
             "dumps and loads). Every part of the service that reads jobs uses it (recovery, status, the enqueue "
             "helper).", serializer, default="pickle", field="serializer", example="json"),
    Variable("RQ_JOB_CLASS", "Dotted path to the app's subclass of rq.job.Job (rq's --job-class), imported from "
             "the app; used wherever the service reads jobs.",
             dotted("the app's subclass of rq.job.Job", "myapp.rq.MyJob"), field="job_class", example="myapp.rq.MyJob"),
    Variable("RQ_QUEUE_CLASS", "Dotted path to the app's subclass of rq.queue.Queue (rq's --queue-class), imported "
             "from the app.", dotted("the app's subclass of rq.queue.Queue", "myapp.rq.MyQueue"), field="queue_class",
             example="myapp.rq.MyQueue"),
    Variable("RQ_CONNECTION_CLASS", "Dotted path to the app's subclass of redis.Redis (rq's --connection-class), "
             "imported from the app: the worker's Redis clients (its horses' and the enqueue helper's too) are made of "
             "it, plain, TLS, Cluster (the slot owner's client) and Sentinel alike.",
             dotted("the app's subclass of redis.Redis", "myapp.rq.MyRedis"),
             field="connection_class", example="myapp.rq.MyRedis"),
    Variable("RQ_JOB_TIMEOUT", "Timeout in seconds for jobs that carry none (-1: no limit). Jobs enqueued with "
             "plain rq already carry their queue's default; the enqueue helper uses this too.",
             whole(1, "seconds, a whole number above 0, or -1 for no limit", also=(-1,)),
             shown_default="(rq's 180 s)", field="job_timeout"),
    Variable("RQ_RESULT_TTL", "Seconds to keep a successful job's result (0: discard, -1: forever).",
             whole(0, "seconds, a whole number (0 discards results, -1 keeps them forever)", also=(-1,)),
             default=500, field="result_ttl"),
    Variable("RQ_FAILURE_TTL", "Seconds to keep failed jobs, for jobs that set none.",
             whole(1, "seconds, a whole number above 0, or -1 to keep failures forever", also=(-1,)),
             shown_default="(rq's 1 year)", field="failure_ttl"),
    Variable("RQ_WITH_SCHEDULER", "Run rq's scheduler (needed by Retry(interval=…), enqueue_in/enqueue_at). One "
             "instance holds the lock per queue; a restarted instance takes it over at once.", boolean,
             default=True, field="with_scheduler", flag="--with-scheduler"),
    Variable("RQ_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL.", choice(*LOG_LEVELS, normalise=str.upper),
             default="INFO", field="log_level", flag="--log-level", short="-l", metavar="LEVEL"),
    Variable("RQ_DISABLE_JOB_DESC_LOGGING", "Log jobs by id only. rq logs each job's call with its arguments, "
             "as in send_mail('a@example.com', token='…'), when it takes the job and when the job succeeds: turn "
             "this on when jobs get secrets as arguments (rq's --disable-job-desc-logging).", boolean, default=False,
             field="disable_job_desc_logging", flag="--disable-job-desc-logging"),
    Variable("RQ_EXCEPTION_HANDLERS", "The app's exception handlers, handler(job, exc_type, exc_value, traceback), "
             "as dotted paths separated by commas, called in this order when a job raises (rq's --exception-handler, "
             "once per handler); a handler returning False stops the chain. Imported from the app (RQ_APP_DIR, "
             "RQ_APP_PATH, RQ_APP_VIRTUALENV).", dotted_paths, default=(), shown_default="(none)",
             field="exception_handlers", example="myapp.errors.report"),
    Variable("RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER", "Leave out rq's own handler, which moves a failed job to the "
             "FailedJobRegistry (rq's --disable-default-exception-handler, -d): the job is still marked FAILED.",
             boolean, default=False, field="disable_default_exception_handler"),
    Variable("RQ_SETTINGS_MODULE", "The app's rq settings module, imported from the app before the worker takes "
             "a job, and in every spawned horse (rq's --config, -c): where an app calls sentry_sdk.init() (README: "
             "Sentry). The worker's settings are this table's: the module's REDIS_URL, QUEUES, NAME … are not "
             "read (a warning names those rq would have used).", dotted_module, field="settings_module",
             example="myapp.rq_settings"),
    Variable("RQ_DEQUEUE_STRATEGY", "The order in which the queues of RQ_QUEUES are served, as rq's "
             "--dequeue-strategy: default (in the order given, each job from the first non-empty queue), "
             "round_robin (after taking a job from a queue, that queue goes last) or random (the order shuffled "
             "after each job).", choice(*DEQUEUE_STRATEGIES), default="default", field="dequeue_strategy",
             flag="--dequeue-strategy", metavar="STRATEGY"),
    Variable("RQ_SHUTDOWN_TIMEOUT", "Seconds a stop waits for the running job. Past it the job is cut, recorded "
             "as interrupted and retried (cold shutdown).", seconds(), default=600.0, field="shutdown_timeout",
             flag="--shutdown-timeout", metavar="SECONDS"),
    Variable("RQ_MAX_JOBS", "Recycle the instance after this many jobs (rq's --max-jobs, counted as rq counts: "
             "every job taken, whatever its end). Where rq exits, the process re-executes itself in place after the "
             "job, as on a reload: same PID, no failure, no restart counted by systemd.",
             whole(1, "a number of jobs, 1 or more (leave it unset for no limit)"), shown_default="(no limit)",
             field="max_jobs", flag="--max-jobs", metavar="JOBS"),
    Variable("RQ_MAX_MEMORY", "Recycle the instance, as RQ_MAX_JOBS does, after a job during which the worker "
             "process or the job's work horse peaked above this resident memory (Celery's max-memory-per-child): "
             "512M, 2G (powers of 1024, as MemoryMax=).", memory_size,
             shown_default="(no limit)", field="max_memory", flag="--max-memory", metavar="SIZE"),
    Variable("RQ_MAX_IDLE_TIME", "Exit after this many seconds without a job (rq's --max-idle-time). The exit is "
             "a clean one (status 0), which Restart=on-failure does not restart: the instance stays inactive "
             "until started again (by hand, the autoscaler or a timer).",
             whole(1, "seconds, a whole number, 1 or more (leave it unset to never exit when idle)"),
             shown_default="(never)", field="max_idle_time", flag="--max-idle-time", metavar="SECONDS"),
    Variable("RQ_WORKER_TTL", "Seconds the worker's registration (what rq info and rq-dashboard list) outlives "
             "its last beat, less rq's 60 s of slack (rq's --worker-ttl). At least "
             f"{MIN_WORKER_TTL}: with the slack it must outlive the fencing period (three ticks, at most "
             f"{3 * LONGEST_TICK} s), or a worker that is only slow is listed as gone before it could be fenced.",
             whole(MIN_WORKER_TTL, f"seconds, a whole number, at least {MIN_WORKER_TTL} (the registration must "
                   f"outlive the fencing period of at most {3 * LONGEST_TICK} s with rq's 60 s of slack)"),
             default=420, field="worker_ttl", flag="--worker-ttl", metavar="SECONDS"),
    Variable("RQ_MAINTENANCE_INTERVAL", "Seconds between rq's registry maintenance passes (rq's "
             "--maintenance-interval, rq's own default 600): the backstop that re-queues the jobs of workers "
             "gone on other hosts, so a longer one re-queues them later.",
             whole(1, "seconds, a whole number, 1 or more"), default=60, field="maintenance_interval",
             flag="--maintenance-interval", metavar="SECONDS"),
    Variable("RQ_JOB_MONITORING_INTERVAL", "Seconds between the worker's looks at a running job (rq's "
             "--job-monitoring-interval): each renews the job's heartbeat, pings the watchdog and beats for "
             f"fencing, so it is at most a tick: a third of WatchdogSec= (at most {LONGEST_TICK} s). A longer "
             "value is refused; one longer than the unit's tick is shortened to it, with a warning.",
             whole(1, f"seconds, a whole number from 1 to {LONGEST_TICK} (a tick: the watchdog and the fencing "
                   "beat are served from each look at the job)", maximum=LONGEST_TICK),
             shown_default="(a tick)", field="job_monitoring_interval", flag="--job-monitoring-interval",
             metavar="SECONDS"),
    Variable("RQ_JOB_RETRY_MAX", "Retries given to a job without a Retry of its own when its worker dies under "
             "it (crash, kill, shutdown limit). 0 turns this default off.",
             whole(0, "a whole number of retries, 0 or more (0 turns the default retry off)"), default=3,
             field="retry_max"),
    Variable("RQ_JOB_RETRY_DELAY", "Seconds before each such default retry.",
             whole(0, "seconds between retries, a whole number, 0 or more"), default=60, field="retry_delay"),
    Variable("RQ_ENQUEUE_WAIT_REPLICAS", "The enqueue helper (rq_worker_service.client.enqueue) waits until this "
             "many replicas acknowledged each job (Redis WAIT), so that a failover cannot lose it; it raises "
             "NotReplicated when they do not within RQ_ENQUEUE_WAIT_TIMEOUT. 0: do not wait.",
             whole(0, "a number of replicas, 0 or more"), default=0, field="enqueue_wait_replicas"),
    Variable("RQ_ENQUEUE_WAIT_TIMEOUT", "Seconds the enqueue helper waits for the replicas' acknowledgement.",
             seconds(), default=1.0, field="enqueue_wait_timeout"),
    Variable("RQ_REDIS_STARTUP_WAIT", "Seconds to wait for an unreachable Redis at start before exiting (status "
             "69) so that systemd restarts the instance later.", seconds(), default=30.0,
             field="redis_startup_wait"),
    # rq-worker-autoscale.service reads these (from the same files); the workers ignore them.
    Variable("RQ_AUTOSCALE_MIN", "Autoscaler: fewest rq-worker@ instances to keep running on this host. Instances "
             "started by hand or enabled at boot count.", whole(0, "a number of instances, 0 or more"), default=1),
    Variable("RQ_AUTOSCALE_MAX", "Autoscaler: most instances it runs on this host (never more than memory allows: "
             "MemAvailable less RQ_AUTOSCALE_MEMORY_RESERVE, over the largest instance's measured memory).",
             whole(1, "a number of instances, 1 or more"), default=8),
    Variable("RQ_AUTOSCALE_QUEUES", "Autoscaler: the queues whose backlog it follows, comma-separated.",
             queue_list, shown_default="(RQ_QUEUES)", example="default"),
    Variable("RQ_AUTOSCALE_MAX_WAIT", "Autoscaler: start instances when the oldest queued job has waited this many "
             "seconds…", seconds(), default=30.0),
    Variable("RQ_AUTOSCALE_JOBS_PER_INSTANCE", "…or when more jobs than this are queued per running instance. A "
             "step starts queued ÷ this many instances, up to RQ_AUTOSCALE_MAX.",
             whole(1, "a number of jobs, 1 or more"), default=10),
    Variable("RQ_AUTOSCALE_UP_COOLDOWN", "Autoscaler: seconds between two steps up.", seconds(), default=15.0),
    Variable("RQ_AUTOSCALE_DOWN_COOLDOWN", "Autoscaler: seconds an instance must have had nothing to do (more idle "
             "instances than queued jobs) before one is stopped, and between two stops. Stops are warm and only "
             "of idle instances, highest number first.", seconds(), default=120.0),
    Variable("RQ_AUTOSCALE_STOP_OTHERS", "Autoscaler: also stop idle instances it did not start (started by hand "
             "or enabled at boot), down to RQ_AUTOSCALE_MIN.", boolean, default=False),
    Variable("RQ_AUTOSCALE_MEMORY_RESERVE", "Autoscaler: MiB of available memory never used for more instances.",
             whole(0, "MiB, a whole number, 0 or more"), default=256),
    Variable("RQ_AUTOSCALE_INTERVAL", "Autoscaler: seconds between two looks at the queues and instances.",
             seconds(), default=2.0),
    # rq-cron.service reads these (from the same files and /etc/rq-worker/cron.env); the workers ignore them.
    Variable("RQ_CRON_CONFIG", "Periodic jobs: the schedule, in rq cron's own format (a file or module calling "
             "rq.cron.register), imported with the app's RQ_APP_PATH as the workers import jobs.", cron_config,
             example="/srv/myapp/cron_config.py"),
    Variable("RQ_CRON_TIMEZONE", "Periodic jobs: the time zone the schedule's cron strings are read in, the same "
             "on every host (rq reads them in each host's local time). A job's own timezone= overrides it.",
             time_zone, default="UTC"),
    Variable("RQ_CRON_CATCH_UP", "Periodic jobs: what becomes of slots missed while no scheduler ran (longer "
             "ago than RQ_CRON_MISFIRE_GRACE): skip (rq's behaviour) or once (one job for all of them). A job's "
             "own catch_up= overrides it.", choice("skip", "once"), default="skip"),
    Variable("RQ_CRON_LEASE_PERIOD", "Periodic jobs: seconds the scheduler holding the lease keeps it without "
             "renewing it; it renews every third of it, and another host takes over within two periods of "
             "its last renewal.", whole(3, "seconds, a whole number, 3 or more"), default=10),
    Variable("RQ_CRON_MISFIRE_GRACE", "Periodic jobs: seconds a slot may be late and still be enqueued (a "
             "takeover, a restart); older missed slots follow RQ_CRON_CATCH_UP. At least two lease periods.",
             whole(1, "seconds, a whole number, 1 or more"), default=60),
)

BY_NAME = {var.name: var for var in VARIABLES}


def env_file_text() -> str:
    """The template of ``/etc/rq-worker/worker.env``: every line a comment.

    The package ships it as /usr/share/rq-worker-service/worker.env, and the first install copies it to
    /etc. It is no conffile: each version's new variables changed it, and dpkg asked about the
    operator's edited copy on upgrade, stopping unattended ones.

    The defaults live in the code. An uncommented ``REDIS_URL=redis://localhost:6379/0`` here once
    won over an app's own ``REDIS_DB=1`` from its ``.env`` while its password still applied: the
    workers waited on database 0 and nothing said so."""
    lines = [
        "# /etc/rq-worker/worker.env: settings for every rq-worker@ instance.",
        "# /etc/rq-worker/worker-<instance>.env overrides them for one instance.",
        "# After a change: systemctl reload 'rq-worker@*' (running jobs finish first).",
        "# See rq-worker-service(8) and /usr/share/doc/rq-worker-service/README.md. Upgrades never change",
        "# this file: the installed version's template, with every variable, is",
        "# /usr/share/rq-worker-service/worker.env (diff it against this file to see what is new).",
        "",
    ]
    for var in VARIABLES:
        if var.name == "RQ_WORKER_INSTANCE":
            continue  # the unit sets it from %i
        lines += [f"# {line}" for line in textwrap.wrap(var.help, 96)]
        lines.append(f"# Default: {var.doc_default}")
        lines.append(f"#{var.name}={var.example}")
        lines.append("")
    return "\n".join(lines)


def man_environment() -> str:
    """The ENVIRONMENT section for argparse-manpage's --include file (roff)."""
    out = ["[ENVIRONMENT]"]
    for var in VARIABLES:
        out += [".TP", rf"\fB{var.name}\fR (default: {var.doc_default})", var.help.replace("-", r"\-")]
    return "\n".join(out) + "\n"


def readme_table() -> str:
    """The variables table of README.md (Markdown)."""
    rows = ["| variable | default | flag of `run` | meaning |", "| --- | --- | --- | --- |"]
    for var in VARIABLES:
        flag = f"`{var.flag}`" if var.flag else ""
        default = "—" if var.doc_default == "(none)" else f"`{var.doc_default}`"
        rows.append(f"| `{var.name}` | {default} | {flag} | {var.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    outputs = {"readme": readme_table, "env": env_file_text, "man": man_environment}
    if len(sys.argv) != 2 or sys.argv[1] not in outputs:
        sys.exit(f"usage: python -m rq_worker_service.variables {{{','.join(outputs)}}}")
    print(outputs[sys.argv[1]](), end="")
