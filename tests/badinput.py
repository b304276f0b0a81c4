"""The bad-input corpus over the variable table (``variables.VARIABLES``), as hypothesis strategies.

``environments(...)`` draws a few variables at a time, each either a value of its own kind (valid,
at or past its bounds) or one of the values every kind gets wrong: empty, blanks, bytes that are not
UTF-8 (as Python hands them on: lone surrogates), huge, negative, nan/inf, wrong type, non-ASCII
digits. REDIS_URL gets odd schemes, hosts, ports, databases and query parameters; REDIS_SENTINELS
malformed lists. Every host that can pass is loopback, and every port unused (no URL is drawn
without a port), so that nothing drawn resolves a name or reaches a Redis.

Used by tests/unit/test_bad_input_corpus.py (in process, the bulk) and
tests/integration/test_bad_input.py (a few real ``run`` processes).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from helpers import free_port
from hypothesis import strategies as st

from rq_worker_service.config import RedisTarget
from rq_worker_service.variables import MAX_SECONDS, VARIABLES, Variable, boolean

SECRET = "Tr0ub4dor-s3cret"
"""In every password drawn; never in a line the service prints."""

UNUSED_PORT = free_port()

EXCLUDED = {
    "RQ_KEY_PREFIX",  # TODO(lead): remove after merging cliargs (it fixes RQ_KEY_PREFIX's parser)
    "RQ_REDIS_STARTUP_WAIT",  # a process drawing 1e9 would wait that long; the processes get a short one
}

EVERY_KIND_WRONG = [
    "", " ", "\t", "  1  ", "\udcff", "caf\udcc3", "-1", "0", "-0", "1", "2", "1.5", "-3.5", "1e400", "-1e400",
    "nan", "inf", "-inf", "1e308", "99999999999999999", "9" * 5000, str(MAX_SECONDS), str(MAX_SECONDS + 1), "0x10",
    "1_000", "²", "٣", "yes", "no", "maybe", "a,b", ",", "a,,b", "a b", "x" * 300, "\x00", "a\nb", "%s", "{tag}",
    "default", "/", "/nonexistent", "relative/dir", "localhost", "h:1", "[::1]:1",
]

_DIRS = Path(tempfile.mkdtemp(prefix="rqws-corpus-"))
atexit.register(shutil.rmtree, _DIRS, True)
(_DIRS / "not-utf8").write_bytes(SECRET.encode() + b"\xff\n")
(_DIRS / "password").write_text(SECRET + "\n")
(_DIRS / "not-pem").write_text("not a certificate\n")
(_DIRS / "rqws_corpus_app.py").write_text("""
import rq, redis
from rq.job import Job
from rq.queue import Queue
class MyJob(Job): pass
class MyQueue(Queue): pass
class MyRedis(redis.Redis): pass
class MyWorker(rq.Worker): pass
class MySimpleWorker(rq.SimpleWorker): pass
class MySerializer:
    dumps = staticmethod(rq.serializers.JSONSerializer.dumps)
    loads = staticmethod(rq.serializers.JSONSerializer.loads)
NOT_A_CLASS = 1
""")
(_DIRS / "rqws_corpus_broken.py").write_text("raise RuntimeError('the app module fails at import')\n")
CORPUS_APP = "rqws_corpus_app"
"""A module of the app's classes (RQ_JOB_CLASS …), importable when RQ_APP_PATH names ``_DIRS``."""
CLASSES = {
    "RQ_JOB_CLASS": ["rq.job.Job", f"{CORPUS_APP}.MyJob"],
    "RQ_QUEUE_CLASS": ["rq.queue.Queue", f"{CORPUS_APP}.MyQueue"],
    "RQ_CONNECTION_CLASS": ["redis.Redis", "redis.client.Redis", f"{CORPUS_APP}.MyRedis"],
    "RQ_WORKER_CLASS": ["fork", "simple", "spawn", "SPAWN", "rq.worker.SimpleWorker", "rq.worker.SpawnWorker",
                        "rq.worker.RoundRobinWorker", f"{CORPUS_APP}.MyWorker", f"{CORPUS_APP}.MySimpleWorker"],
    "RQ_SERIALIZER": ["pickle", "json", "JSON", "rq.serializers.JSONSerializer", "rq.serializers.DefaultSerializer",
                      f"{CORPUS_APP}.MySerializer"],
}
"""Values of the app-class variables: the first of each always imports (rq's own), the rest with RQ_APP_PATH."""
WRONG_CLASSES = ["rq.queue.Queue", "rq.job.Job", "redis.Redis", "rq.worker.BaseWorker", "rq.worker.HerokuWorker",
                 "rq.serializers", "rq.Worker.work", f"{CORPUS_APP}.NOT_A_CLASS", f"{CORPUS_APP}.Absent",
                 "rqws_corpus_broken.X", "nomodule.X", "os.path.join", "x..y", ".x", "x.", "1a.b", "thread",
                 "a.b-c", "é.x"]
PATHS = [str(_DIRS), str(_DIRS / "not-utf8"), str(_DIRS / "password"), str(_DIRS / "not-pem"),
         str(_DIRS / "absent"), "/nonexistent", "relative", "/", f"{_DIRS}:{_DIRS}", f"{_DIRS}::"]

APP = "rqws_corpus_app"
"""A package of the app's, in ``_DIRS`` (on RQ_APP_PATH), for the dotted paths that import from the app."""
(_DIRS / APP).mkdir()
(_DIRS / APP / "__init__.py").write_text("")
(_DIRS / APP / "handlers.py").write_text(
    "def report(job, exc_type, exc_value, traceback):\n    return None\n\n\n"
    "class Reporter:\n    @staticmethod\n    def report(job, *exc_info):\n        return False\n\n\n"
    "NOT_CALLABLE = 3\nlam = lambda job, *exc_info: None  # noqa: E731\n")
(_DIRS / APP / "rq_settings.py").write_text("QUEUES = ['elsewhere']\nREDIS_URL = 'redis://127.0.0.1:1/0'\n")
(_DIRS / APP / "broken.py").write_text("raise RuntimeError('the app cannot start here')\n")
(_DIRS / APP / "missing_dep.py").write_text("import rqws_corpus_no_such_dependency  # noqa: F401\n")
(_DIRS / APP / "exits.py").write_text("import sys\nsys.exit('no settings')\n")
(_DIRS / APP / "syntax.py").write_text("def (:\n")
APP_OBJECTS = [f"{APP}.handlers.report", f"{APP}.handlers.Reporter.report", f"{APP}.handlers.NOT_CALLABLE",
               f"{APP}.handlers.lam", f"{APP}.handlers.nope", f"{APP}.nope.report", "rqws_corpus_nope.report",
               f"{APP}.broken.report", f"{APP}.missing_dep.report", f"{APP}.exits.report", f"{APP}.syntax.report",
               f"{APP}.handlers.report,{APP}.handlers.Reporter.report", f"{APP}.handlers.report {APP}.handlers.report",
               f"{APP}.handlers", APP, "report", f"{APP}.handlers.report,", f"{APP}..report", f"{APP}.handlers.ré"]
APP_MODULES = [f"{APP}.rq_settings", f"{APP}.broken", f"{APP}.missing_dep", f"{APP}.exits", f"{APP}.syntax",
               f"{APP}.nope", "rqws_corpus_nope", f"{APP}.handlers.report", f"{APP}.", f"{APP}/rq_settings.py"]
APP_VARIABLES = ("RQ_EXCEPTION_HANDLERS", "RQ_SETTINGS_MODULE")

GOOD_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
BAD_HOSTS = ["", "a" * 64, "h\udcff", "a..b", "é", "h h", "h%20"]
GOOD_PORTS = [f":{UNUSED_PORT}"]
BAD_PORTS = [":0", ":65536", ":abc", ":²", ":-1"]
GOOD_DATABASES = ["", "/", "/0", "/15"]
BAD_DATABASES = ["/abc", "/²", "/-1", "/99999999999999999999", "/1/2"]
QUERY_NAMES = ["db", "socket_timeout", "socket_connect_timeout", "health_check_interval", "retry_on_timeout",
               "ssl_check_hostname", "protocol", "username", "foo", "client_name", "decode_responses",
               "max_connections", "ssl_cert_reqs", "retry_on_error", "socket_keepalive", "encoding", "timeout",
               "password", "ssl_password"]
QUERY_VALUES = ["", "0", "1", "2", "3", "-1", "abc", "nan", "inf", "1e300", "2.5", "yes", "\udcff", "%ff", "required"]


def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Three draws in four from ``good``: a URL gets past its first part often enough to test the rest."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


def _url() -> st.SearchStrategy[str]:
    userinfo = st.sampled_from(["", "", f":{SECRET}@", f"u:{SECRET}@", "u@", f"u:{SECRET}\udcff@"])
    secret_pair = st.sampled_from([("password", SECRET), ("pass%77ord", SECRET), ("ssl_password", SECRET)])
    pair = st.one_of(st.tuples(st.sampled_from(QUERY_NAMES), st.sampled_from(QUERY_VALUES)), secret_pair)
    query = st.lists(pair, max_size=3).map(
        lambda pairs: ("?" + "&".join(f"{name}={value}" for name, value in pairs)) if pairs else "")
    tcp = st.builds(lambda scheme, user, host, port, db, q: f"{scheme}://{user}{host}{port}{db}{q}",
                    _mostly(["redis", "rediss"], ["http", "REDIS", "redis+sentinel", ""]), userinfo,
                    _mostly(GOOD_HOSTS, BAD_HOSTS), _mostly(GOOD_PORTS, BAD_PORTS),
                    _mostly(GOOD_DATABASES, BAD_DATABASES), query)
    unix = st.builds(lambda path, q: f"unix://{path}{q}", _mostly([f"{_DIRS}/absent.sock"], ["", "relative",
                                                                                              "/x\udcff.sock"]), query)
    return st.one_of(tcp, tcp, unix, st.sampled_from(EVERY_KIND_WRONG))


def _sentinels() -> st.SearchStrategy[str]:
    item = st.builds(lambda host, port: f"{host}{port}", _mostly(GOOD_HOSTS, BAD_HOSTS + ["a/b"]),
                     _mostly(GOOD_PORTS, BAD_PORTS))
    return st.one_of(st.lists(item, min_size=1, max_size=3).map(",".join), st.sampled_from(EVERY_KIND_WRONG))


def _own_kind(var: Variable) -> st.SearchStrategy[str]:
    """Values of the variable's own kind, most of them valid, so that draws get past the first error."""
    name = var.name
    if name == "REDIS_URL":
        return _url()
    if name == "REDIS_SENTINELS":
        return _sentinels()
    if name in ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"):
        return st.sampled_from([SECRET, f" {SECRET} ", SECRET + "\udcff", SECRET + "\n", SECRET + "%"])
    if name in ("REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE", "RQ_APP_DIR", "RQ_APP_PATH",
                "RQ_APP_VIRTUALENV") or name.startswith(
            "REDIS_SSL_") and name != "REDIS_SSL_CERT_REQS":
        return st.sampled_from(PATHS)
    if name == "REDIS_PORT":  # only ports where nothing listens: a ping elsewhere could hang on a stranger
        return st.sampled_from([str(UNUSED_PORT), "0", "65536", "-1", "abc", "²", " 1 "])
    if name == "REDIS_HOST":
        return st.sampled_from(["127.0.0.1", "localhost", "a" * 64, "h:1", "é", "a..b"])
    if name in CLASSES:
        return st.sampled_from(CLASSES[name] + WRONG_CLASSES)
    if var.parse is boolean:
        return st.sampled_from(["yes", "no", "1", "0", "on", "TRUE", "maybe"])
    if name == "RQ_MAX_MEMORY":
        return st.sampled_from(["512M", "2G", "1536MiB", "1m", "1048576", "1048575", "0M", "1023K", "1025T", "2 G",
                                "512MB", "-1G", "1.5G", "G", "9" * 30 + "T", "12X"])
    if isinstance(var.default, (int, float)) and not isinstance(var.default, bool) or var.field in (
            "job_timeout", "failure_ttl", "max_jobs", "max_idle_time", "job_monitoring_interval"):
        numbers = st.one_of(st.integers(-2, 10**20), st.floats(allow_nan=True, allow_infinity=True))
        return st.one_of(numbers.map(str), st.sampled_from([str(MAX_SECONDS), str(MAX_SECONDS + 1), "-1", "1"]))
    if name == "RQ_EXCEPTION_HANDLERS":
        return st.sampled_from(APP_OBJECTS)
    if name == "RQ_SETTINGS_MODULE":
        return st.sampled_from(APP_MODULES)
    if name == "RQ_QUEUES" or name == "RQ_AUTOSCALE_QUEUES":
        return st.sampled_from(["default", "high,default,low", "a,a", "caf\udcc3", "é,ü", "a\x07", "a b", " a , b "])
    if name == "RQ_DEQUEUE_STRATEGY":  # rq's three, and near misses of them
        return st.sampled_from(["default", "round_robin", "random", "ROUND_ROBIN", "round-robin", "roundrobin",
                                "rr", "random,default"])
    examples = [value for value in (var.example, var.default if isinstance(var.default, str) else None) if value]
    return st.one_of(st.sampled_from(examples or ["x"]), st.text(max_size=12))


def value_of(var: Variable) -> st.SearchStrategy[str]:
    wrong = [value for value in EVERY_KIND_WRONG if not (var.name == "REDIS_PORT" and value.strip().isdigit())]
    return st.one_of(_own_kind(var), _own_kind(var), st.sampled_from(wrong))


DRAWN = [var for var in VARIABLES if var.name not in EXCLUDED]


@st.composite
def environments(draw: st.DrawFn, max_variables: int = 4) -> dict[str, str]:
    """A few variables of the table, each with a drawn value."""
    chosen = draw(st.lists(st.sampled_from(DRAWN), min_size=1, max_size=max_variables, unique_by=lambda v: v.name))
    env = {var.name: draw(value_of(var)) for var in chosen}
    if "REDIS_SENTINELS" in env and draw(st.booleans()):
        env["REDIS_SENTINEL_MASTER"] = draw(st.sampled_from(["mymaster", "", "a b"]))
    if "REDIS_URL" not in env and "REDIS_HOST" not in env:
        env["REDIS_URL"] = f"redis://127.0.0.1:{UNUSED_PORT}/0"  # nothing drawn reaches a Redis
    if "REDIS_HOST" in env and "REDIS_PORT" not in env:
        env["REDIS_PORT"] = str(UNUSED_PORT)
    if any(name in env for name in APP_VARIABLES) and "RQ_APP_DIR" not in env:
        env.setdefault("RQ_APP_PATH", str(_DIRS))  # the app's package (a drawn path may hide it: refused then)
    return env


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback(target: RedisTarget) -> bool:
    """Whether everything ``target`` connects to is on this host (drawn values such as "2" are the
    address 0.0.0.2, where a connect may wait out its timeout)."""
    if target.sentinels:
        return all(host in LOOPBACK for host, _ in target.sentinels.addresses)
    parts = urlsplit(target.url)
    return parts.scheme == "unix" or parts.hostname in LOOPBACK


VALID_QUERY = ["db=1", "socket_timeout=2.5", "socket_connect_timeout=1", "health_check_interval=0",
               "retry_on_timeout=yes", "protocol=2", "protocol=3", "username=u"]


def _valid_url() -> st.SearchStrategy[str]:
    query = st.lists(st.sampled_from(VALID_QUERY), max_size=3, unique_by=lambda q: q.split("=")[0]).map(
        lambda items: ("?" + "&".join(items)) if items else "")
    tcp = st.builds(lambda scheme, user, host, db, q: f"{scheme}://{user}{host}:{UNUSED_PORT}{db}{q}",
                    st.sampled_from(["redis", "rediss"]), st.sampled_from(["", f":{SECRET}@", f"u:{SECRET}@"]),
                    st.sampled_from(["127.0.0.1", "localhost", "[::1]"]), st.sampled_from(["", "/0", "/15"]), query)
    unix = st.builds(lambda q: f"unix://{_DIRS}/absent.sock{q}", query)
    return st.one_of(tcp, unix)


def _valid(var: Variable) -> st.SearchStrategy[str]:
    """A value ``var`` accepts, of those the corpus draws (paths and URLs: ones that exist or parse)."""
    name = var.name
    if name == "REDIS_URL":
        return _valid_url()
    if name == "REDIS_HOST":
        return st.sampled_from(["127.0.0.1", "localhost"])
    if name in ("REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE"):
        return st.just(str(_DIRS / "password"))
    if name in ("RQ_APP_DIR", "RQ_APP_PATH"):
        return st.just(str(_DIRS))
    if name == "RQ_EXCEPTION_HANDLERS":
        return st.sampled_from(APP_OBJECTS[:2] + APP_OBJECTS[11:12])
    if name == "RQ_SETTINGS_MODULE":
        return st.just(APP_MODULES[0])
    if var.secret:
        return st.sampled_from([SECRET, f" {SECRET} ", SECRET + "%"])
    if name in CLASSES:  # rq's own, which import without RQ_APP_PATH
        return st.sampled_from([value for value in CLASSES[name] if not value.startswith(CORPUS_APP)])

    def accepted(value: str) -> bool:
        try:
            value.encode("utf-8")
            var.parse(value)
        except ValueError:  # (UnicodeEncodeError is one)
            return False
        return "\x00" not in value

    return _own_kind(var).filter(lambda value: value.strip() != "" and accepted(value.strip()))


VALID_DRAWN = [var for var in DRAWN if var.name not in (
    "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER",  # drawn together, below
    "REDIS_CLUSTER",  # needs a hash-tag RQ_KEY_PREFIX (excluded) and a reachable seed
    "RQ_APP_VIRTUALENV", "REDIS_SSL_CA_CERTS", "REDIS_SSL_CERTFILE", "REDIS_SSL_KEYFILE", "REDIS_SSL_CERT_REQS")]


@st.composite
def valid_environments(draw: st.DrawFn) -> dict[str, str]:
    """Environments every variable of which is valid, alone and together: the check must pass them."""
    chosen = draw(st.lists(st.sampled_from(VALID_DRAWN), min_size=1, max_size=5, unique_by=lambda v: v.name))
    env = {var.name: draw(_valid(var)) for var in chosen}
    env.setdefault("REDIS_URL", f"redis://127.0.0.1:{UNUSED_PORT}/0")
    if any(name in env for name in APP_VARIABLES):
        env.setdefault("RQ_APP_PATH", str(_DIRS))
    if "REDIS_HOST" in env:
        env["REDIS_PORT"] = str(UNUSED_PORT)
    if not env["REDIS_URL"].startswith("unix:") and draw(st.booleans()):
        env["REDIS_SENTINELS"] = draw(st.sampled_from([f"127.0.0.1:{UNUSED_PORT}",
                                                       f"localhost:{UNUSED_PORT},[::1]:{UNUSED_PORT}"]))
        env["REDIS_SENTINEL_MASTER"] = "mymaster"
    return env
