"""Command line: ``rq-worker-service <command>``.

Every operator mistake ends in one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, exits, keys
from .levels import UNKNOWN, Threshold
from .variables import VARIABLES, Variable, boolean

DESCRIPTION = "Run RQ workers as systemd services, and inspect them."
DEFAULT_ENV_FILE = "/etc/rq-worker/worker.env"
THRESHOLDS = ("max_queued", "max_age", "max_failed", "min_workers", "max_heartbeat_age")
"""The ``status`` options that are ``Threshold``s, named as ``status.judge.evaluate`` takes them."""


def one_line(text: str) -> str:
    """``text`` with every character a terminal would not show as itself (newlines, controls, the
    surrogates that stand for bytes that are not UTF-8) escaped: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Parser(argparse.ArgumentParser):
    """argparse's, except that a usage error is one line (the problem and where help is), not the
    usage block: the same shape as every other error of these commands."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        """``--flag=--`` is the value '--': Python 3.11's argparse dropped it and handed the command an
        empty list instead of a string (a traceback further on); 3.12 fixed it the same way."""
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


class CommandError(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]+(?::[A-Za-z0-9_-]+)?")
"""A job id as rq 3 accepts it (``rq.job.JOB_ID_PATTERN``; a unit test pins the two together), or rq's
``JOB_ID:EXECUTION_ID`` as its started registries hold them. rq raised ValueError for any other."""


def job_id(text: str) -> str:
    if not _JOB_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a job id: letters, digits, _ and - (as rq makes "
                                         "them), e.g. 5f3c1e0a-…; status --json lists them")
    return text


def queue_name(text: str) -> str:
    """A queue a worker can be told to listen to (RQ_QUEUES): Redis keys are UTF-8, and a name with blanks
    or commas cannot be written in RQ_QUEUES."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a queue name in UTF-8 text") from None
    if not text or any(c.isspace() or c == "," for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one queue name, without blanks or commas, "
                                         "e.g. default") from None
    return text


def path(text: str) -> str:
    """A file's path: an empty one would be the working directory."""
    if not text:
        raise argparse.ArgumentTypeError("'': expected a file's path")
    return text


def _flag_help(var: Variable) -> str:
    """A flag's help: what it does, its default and the variable it overrides (dramatiq's habit)."""
    return f"{var.help} (default: {var.doc_default}) [{var.name}]".replace("%", "%%")


def opposite_flag(flag: str) -> str:
    """The flag that turns a boolean flag's variable off again: --with-X/--without-X, --disable-X/--enable-X."""
    for on, off in (("--with-", "--without-"), ("--disable-", "--enable-")):
        if flag.startswith(on):
            return off + flag[len(on):]
    raise ValueError(f"{flag}: a boolean flag starts with --with- or --disable-")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run one worker in the foreground (what rq-worker@<i>.service starts)",
        description="Run one RQ worker until SIGTERM (warm shutdown), SIGHUP (reload) or SIGINT. "
                    "Flags override the environment variables named in brackets; a flag accepts exactly "
                    "what its variable does.")
    p.add_argument("queue_args", nargs="*", metavar="QUEUE", help="queues in priority order, as --queues [RQ_QUEUES]")
    for var in VARIABLES:
        if var.flag is None:
            continue
        if var.parse is boolean:
            p.add_argument(var.flag, dest=var.field, action="store_true", default=None, help=_flag_help(var))
            p.add_argument(opposite_flag(var.flag), dest=var.field, action="store_false",
                           help=f"the opposite of {var.flag}")
            continue
        names = [var.short, var.flag] if var.short else [var.flag]
        p.add_argument(*names, dest=var.field or var.flag.lstrip("-"), metavar=var.metavar, help=_flag_help(var))
    p.add_argument("-n", "--name", help="worker name (default: <hostname>.rq-worker@<instance>); it must be "
                   "stable for crash recovery to find the previous run's jobs")
    p.add_argument("--env-file", action="append", default=[], metavar="PATH", type=path,
                   help="environment file to (re)apply at start and on every reload; the unit passes "
                        "/etc/rq-worker/worker.env and worker-<instance>.env (default: none)")
    p.add_argument("--check", action="store_true",
                   help="only read and validate the configuration and build what run builds before it "
                        "connects (files, flags, the app's virtualenv, the Redis client, the queues), print one "
                        "line and exit 0, or 78 with the error; connects to nothing. "
                        "The unit's ExecReload= runs it first, so an invalid file fails the reload and the "
                        "worker keeps running (default: off)")


def _add_autoscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "autoscale", help="start and stop rq-worker@ instances to follow the backlog (what "
                          "rq-worker-autoscale.service runs)",
        description="Every RQ_AUTOSCALE_INTERVAL, look at the queues and this host's rq-worker@ instances and "
                    "start or (warm-)stop instances through systemd's D-Bus API, within RQ_AUTOSCALE_MIN and "
                    "RQ_AUTOSCALE_MAX. Settings: the RQ_AUTOSCALE_* variables. Runs until SIGTERM; the "
                    "instances keep running.")
    p.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH", type=path,
                   help=f"the workers' environment file, read for Redis and RQ_AUTOSCALE_* (default: "
                        f"{DEFAULT_ENV_FILE})")


def _add_cron(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cron", help="run the periodic jobs of RQ_CRON_CONFIG, once across hosts (what rq-cron.service runs)",
        description="Run the cron scheduler: the schedule named by RQ_CRON_CONFIG (rq cron's own format), imported "
                    "as the workers import jobs. On every host one scheduler holds a lease in Redis and enqueues "
                    "each slot exactly once; the others stand by and take over within two RQ_CRON_LEASE_PERIODs. "
                    "Runs until SIGTERM (which releases the lease); SIGHUP reloads the schedule.")
    p.add_argument("--env-file", action="append", default=[], metavar="PATH", type=path,
                   help="environment file to apply at start and on every reload, later ones winning; the unit passes "
                        f"{DEFAULT_ENV_FILE} and /etc/rq-worker/cron.env (default: {DEFAULT_ENV_FILE})")
    p.add_argument("--check", action="store_true",
                   help="only read and validate the configuration and import the schedule, print one line and exit "
                        "0, or 78 with the error; connects to nothing. The unit's ExecReload= runs it first, so a "
                        "schedule that does not load fails the reload and the running one goes on (default: off)")
    _add_cron_list(p)


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--url", help="Redis URL (default: REDIS_URL, as the workers use it)")
    p.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH", type=path,
                   help=f"read the workers' settings from PATH (default {DEFAULT_ENV_FILE}); the environment "
                        "and .env in the working directory are read too, and the environment wins")


def _threshold(fewer_is_worse: bool = False) -> Callable[[str], Threshold]:
    """argparse's type for a ``W[,C]`` option; its refusal names the option and what it expects."""

    def parse(text: str) -> Threshold:
        try:
            return Threshold.parse(text, fewer_is_worse=fewer_is_worse)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="queues, workers and stuck jobs; a health check for monitoring",
        description="Show queues (length, oldest job, registries), workers (unit, pid, job, heartbeat) and "
                    "abandoned jobs, under a one-line verdict. With --check, exit 0 OK, 1 WARNING, 2 CRITICAL, "
                    "3 UNKNOWN, as Nagios/Icinga plugins do. Thresholds are W or W,C (warning, critical).")
    _connection_options(p)
    p.add_argument("-q", "--queue", action="append", dest="queues", metavar="NAME", type=queue_name,
                   help="only this queue (repeatable; default: every queue in Redis)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    p.add_argument("-o", "--output", metavar="FILE", type=path,
                   help="write to FILE atomically (for node_exporter's textfile collector) instead of stdout")
    p.add_argument("--check", action="store_true", help="exit with the verdict's status (0/1/2/3)")
    p.add_argument("--max-queued", type=_threshold(), metavar="W[,C]",
                   help="queued jobs, all queues together; past C, also jobs queued where no live "
                        "worker listens")
    p.add_argument("--max-age", type=_threshold(), metavar="W[,C]", help="seconds the oldest queued job waits")
    p.add_argument("--max-failed", type=_threshold(), metavar="W[,C]", help="failed jobs, all queues together")
    p.add_argument("--min-workers", type=_threshold(fewer_is_worse=True), metavar="W[,C]", help="live workers")
    p.add_argument("--max-heartbeat-age", type=_threshold(), metavar="W[,C]",
                   help="seconds since any worker's last heartbeat")
    p.add_argument("--key-prefix", metavar="PREFIX",
                   help="only this RQ_KEY_PREFIX (default: RQ_KEY_PREFIX and every one set in the "
                        "<env file>-<instance>.env files beside --env-file, each in its own section; "
                        "--prometheus: RQ_KEY_PREFIX only)")


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job", help="one job: status, call, times, retries, worker, traceback",
                       description="Show one job: status, queue, function and (truncated) arguments, times, "
                                   "retries left, worker and the last failure's traceback.")
    _connection_options(p)
    p.add_argument("job_id", metavar="JOB_ID", type=job_id)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("failed", help="the failed jobs: when, queue, function, the exception's last line",
                       description="List the failed jobs of every queue (or of the --queue ones), newest first: "
                                   "when each failed, its queue, id and function, the last line of its "
                                   "traceback and its worker. `job ID` shows one whole; `requeue` sends them "
                                   "back.")
    _connection_options(p)
    p.add_argument("-q", "--queue", action="append", dest="queues", metavar="NAME", type=queue_name,
                   help="only this queue (repeatable; default: every queue in Redis)")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                   help="at most N jobs, the newest (default: 100)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("requeue", help="send failed jobs back to their queue",
                       description="Requeue failed jobs: the given ids, or with --queue every failed job of a "
                                   "queue. --dry-run lists what would be requeued.")
    _connection_options(p)
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", type=job_id)
    p.add_argument("--queue", metavar="NAME", type=queue_name, help="every failed job of this queue")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list the jobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("cleanup", help="run registry maintenance now",
                       description="Do now what a worker's maintenance does: expire registries, fail or "
                                   "retry started jobs whose worker is gone, drop dead workers.")
    _connection_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more, e.g. 100")
    return value


def _add_acl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("acl", help="print the least-privilege Redis ACL rule for the workers and these commands",
                       description="Print an ACL SETUSER command granting exactly what workers, these commands and "
                                   "the enqueue helper need: the keys and channels under RQ_KEY_PREFIX, data "
                                   "commands without @dangerous ones, the service's scripts, INFO and TIME; "
                                   "nothing that acts on the whole server. Replace YOUR-PASSWORD; connects to "
                                   "nothing.")
    p.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH", type=path,
                   help=f"read RQ_KEY_PREFIX and REDIS_USERNAME from PATH too (default {DEFAULT_ENV_FILE})")
    p.add_argument("--user", type=_acl_user, help="the ACL user name (default: REDIS_USERNAME, or rqworker)")
    p.add_argument("--rule", action="store_true", help="only the rule, for a users.acl file or your own tooling")
    p.add_argument("--allow-client-kill", action="store_true",
                   help="also grant CLIENT LIST and CLIENT KILL, which act on every client of the server: "
                        "a fencer then closes a lost worker's connections at once (README: ACL users)")


def _acl_user(value: str) -> str:
    from .acl import bad_user_name

    problem = bad_user_name(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rq-worker-service", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_run(sub)
    _add_status(sub)
    _add_jobs(sub)
    _add_acl(sub)
    _add_autoscale(sub)
    _add_cron(sub)
    return parser


def check_env_file(name: str) -> Path:
    """``--env-file``: the default may be missing or unreadable (the caller is not in group rq-worker, or the
    package is not installed here); a file given by hand must be one this user can read."""
    env_file = Path(name)
    try:
        is_dir = env_file.is_dir()
    except OSError as exc:  # a name too long, …: is_dir() lets these through
        raise CommandError(f"cannot read --env-file {name} ({exc.strerror}): give a readable file",
                           exits.CONFIG) from None
    if is_dir:
        raise CommandError(f"--env-file {name} is a directory: give the workers' environment file, e.g. "
                           f"{DEFAULT_ENV_FILE}", exits.CONFIG)
    if name != DEFAULT_ENV_FILE and not os.access(env_file, os.R_OK):
        raise CommandError(f"cannot read --env-file {name}: give a readable file", exits.CONFIG)
    return env_file


def _settings(args: argparse.Namespace):
    """The workers' configuration as seen from a shell: environment > .env > the env file."""
    from .config import ConfigError, load_settings
    from .envfiles import commands_environment
    from .secret_env import environment

    env_file = check_env_file(args.env_file)
    environment.receive()  # a ``status`` per key prefix hands its children the password this way
    try:
        settings = load_settings(commands_environment(env_file, Path.cwd() / ".env", environment),
                                 {"url": args.url})
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None
    keys.export(settings.key_prefix)  # the commands import rq only after this
    return settings


def _classes(settings):
    """The app's serializer and job and queue classes (RQ_SERIALIZER, …), imported from the app as the
    worker imports them, so that the commands read its jobs as it does; CommandError (78) if they do not."""
    from .appimport import extend_import_path
    from .classes import app_classes
    from .config import ConfigError

    try:
        extend_import_path(settings)
        return app_classes(settings)
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None


def _connect(args: argparse.Namespace, settings=None):
    """A Redis client that answered PING, or CommandError with a one-line reason."""
    from .connection import REDIS_ERRORS, RedisAuthError, RedisNoSuchDatabase, make_connection, ping, unreachable

    settings = settings or _settings(args)
    try:
        connection = make_connection(settings.redis, settings.key_prefix)
        ping(connection, settings.redis)
    except RedisAuthError as exc:
        raise CommandError(f"{exc}{_unread(args)}", exits.NOPERM) from None
    except RedisNoSuchDatabase as exc:
        raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None
    except REDIS_ERRORS as exc:
        raise CommandError(f"{unreachable(settings.redis, exc)}{_unread(args)}", exits.UNAVAILABLE) from None
    return connection, settings


def _unread(args: argparse.Namespace) -> str:
    """Why Redis may have refused or not been found: the default env file, which ``check_env_file`` lets
    pass unread when this user may not read it, holds the workers' URL and password. "" when it was read."""
    name = getattr(args, "env_file", None)
    if name != DEFAULT_ENV_FILE or not os.path.exists(name) or os.access(name, os.R_OK):
        return ""
    return f"; {name} was not read (this user may not: run as root or as a member of group rq-worker)"


def write_output(text: str, path: str | None) -> None:
    """To stdout, or atomically to ``path`` (a reader never sees a half-written file)."""
    if path is None:
        sys.stdout.write(text)
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", exits.CANT_CREATE) from None


def _instance_prefixes(args: argparse.Namespace, own: str) -> list[str]:
    """``own`` and every other RQ_KEY_PREFIX the instance files beside the env file set."""
    from .config import ConfigError
    from .envfiles import read_values

    env_file = Path(args.env_file)
    prefixes = [own]
    for path in sorted(env_file.parent.glob(f"{env_file.stem}-*.env")):
        if not os.access(path, os.R_OK):
            continue  # an instance file we may not read: its workers' own status shows them
        try:
            value = (read_values(path) or {}).get(keys.VARIABLE)
        except ConfigError as exc:  # not UTF-8 (or gone unreadable since): its workers cannot start either
            raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None
        if not value or not value.strip():
            continue  # not set there: its workers use the env file's
        try:
            prefix = keys.from_environment({keys.VARIABLE: value})
        except ConfigError as exc:
            raise CommandError(f"configuration error in {path}: {exc}", exits.CONFIG) from None
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _status_per_prefix(args: argparse.Namespace, prefixes: list[str]) -> int:
    """One ``status --json`` per prefix (rq's prefix is fixed once rq is imported), shown in sections."""
    from .secret_env import SecretEnvironment, handover
    from .status.render import render_json_per_prefix, render_text_per_prefix
    from .status.report import report_from_dict

    # The children get a password (--url's, or the shell's REDIS_PASSWORD) through an inherited descriptor,
    # never on their command line or in their environment; --url becomes their REDIS_URL, which wins there.
    child_env = SecretEnvironment(dict(os.environ))
    child_env.absorb()
    if args.url:
        child_env["REDIS_URL"] = args.url
    # --flag=value: a value that starts with - (a prefix may) is not taken for an option
    argv = ["status", "--json", f"--env-file={args.env_file}"]
    argv += [f"--queue={queue}" for queue in args.queues or []]
    for name in THRESHOLDS:
        if getattr(args, name) is not None:
            argv.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    reports = []
    for prefix in prefixes:
        secrets = handover(child_env.private, child_env.public)  # one per child: each reads it from the start
        try:
            out = subprocess.run([sys.executable, "-m", "rq_worker_service", *argv, f"--key-prefix={prefix}"],
                                 capture_output=True, text=True, timeout=120, env=dict(child_env.public),
                                 pass_fds=() if secrets is None else (secrets,))
        finally:
            if secrets is not None:
                os.close(secrets)
        if out.returncode != 0:
            raise CommandError(f"key prefix {prefix}: {out.stderr.strip()}", out.returncode)
        reports.append(report_from_dict(json.loads(out.stdout)))
    write_output(render_json_per_prefix(reports) if args.json else render_text_per_prefix(reports), args.output)
    return max(r.level for r in reports) if args.check else 0


def _key_prefix(raw: str) -> str:
    """``--key-prefix``, through RQ_KEY_PREFIX's own parser: a prefix rq would refuse at its import (empty,
    blanks, other characters) is one configuration error naming the flag."""
    from .config import ConfigError, parse_value
    from .variables import BY_NAME

    try:
        return parse_value(BY_NAME[keys.VARIABLE], raw, "--key-prefix")
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None


def _cron_lease_period(args: argparse.Namespace) -> int:
    """RQ_CRON_LEASE_PERIOD as rq-cron.service reads it (cron.env beside --env-file wins over it), for the
    periodic jobs' figures; after ``_settings`` (it imports rq)."""
    from .config import ConfigError
    from .envfiles import commands_environment
    from .secret_env import environment
    from .status.cron import lease_period

    env_file = Path(args.env_file)
    try:
        return lease_period(env_file, commands_environment(env_file, Path.cwd() / ".env", environment))
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", exits.CONFIG) from None


def _status(args: argparse.Namespace) -> int:
    import redis

    try:
        if args.key_prefix is not None:
            keys.export(_key_prefix(args.key_prefix))  # read below as the shell's environment: it wins
        settings = _settings(args)
        prefixes = [] if args.key_prefix is not None or args.prometheus else _instance_prefixes(args,
                                                                                                settings.key_prefix)
        if len(prefixes) < 2:
            connection, settings = _connect(args, settings)
            from .status.collect import collect

            report = collect(connection, settings.redis.display, args.queues, classes=_classes(settings),
                             cron_lease_period=_cron_lease_period(args))
    except (CommandError, redis.exceptions.RedisError) as exc:
        from .status.render import render_prometheus

        if args.prometheus:
            write_output(render_prometheus(None), args.output)
            print(f"rq-worker-service: {one_line(str(exc))}", file=sys.stderr)
            return 0  # rq_up 0 is the signal; a failing timer unit would only add noise
        if args.check:
            print(f"UNKNOWN: {one_line(str(exc))}")
            return UNKNOWN
        from .acl import denied

        refused = denied(exc)
        if refused:
            raise CommandError(refused, exits.NOPERM) from None
        raise CommandError(str(exc), getattr(exc, "status", exits.UNAVAILABLE)) from None
    if len(prefixes) > 1:
        return _status_per_prefix(args, prefixes)
    from .status.judge import evaluate
    from .status.render import render_json, render_prometheus, render_text

    evaluate(report, **{name: getattr(args, name) for name in THRESHOLDS})
    if args.prometheus:
        write_output(render_prometheus(report), args.output)
    elif args.json:
        write_output(render_json(report), args.output)
    else:
        write_output(render_text(report), args.output)
    return report.level if args.check else 0


def _job(args: argparse.Namespace) -> int:
    connection, settings = _connect(args)
    from .jobs import JobsError, describe, render_job

    try:
        info = describe(connection, args.job_id, classes=_classes(settings))
    except JobsError as exc:
        raise CommandError(str(exc), exits.LOOP_ERROR) from None
    sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n" if args.json else render_job(info))
    return 0


def _failed(args: argparse.Namespace) -> int:
    connection, settings = _connect(args)
    from .jobs import JobsError, failed_jobs, render_failed

    try:
        rows = failed_jobs(connection, args.queues, args.limit, classes=_classes(settings))
    except JobsError as exc:
        raise CommandError(str(exc), exits.LOOP_ERROR) from None
    sys.stdout.write(json.dumps(rows) + "\n" if args.json else render_failed(rows))
    return 0


def _requeue(args: argparse.Namespace) -> int:
    if bool(args.job_ids) == bool(args.queue):
        raise CommandError("give either job ids or --queue NAME (every failed job of that queue)", exits.USAGE)
    connection, settings = _connect(args)
    from .jobs import JobsError, requeue

    try:
        done = requeue(connection, args.job_ids, args.queue, args.dry_run, classes=_classes(settings))
    except JobsError as exc:
        raise CommandError(str(exc), exits.LOOP_ERROR) from None
    if args.json:
        print(json.dumps([{"job_id": r.job_id, "queue": r.queue} for r in done]))
    else:
        verb = "would requeue" if args.dry_run else "requeued"
        for r in done:
            print(f"{verb} {r.job_id} on {r.queue}")
        print(f"{len(done)} job(s) {verb}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    connection, settings = _connect(args)
    from .jobs import cleanup

    report = cleanup(connection, classes=_classes(settings))
    if args.json:
        print(json.dumps(report))
    else:
        for queue, c in sorted(report.items()):
            print(f"{queue}: started {c['started_before']} -> {c['started_after']}, "
                  f"failed {c['failed_before']} -> {c['failed_after']}")
    return 0


def _acl(args: argparse.Namespace) -> int:
    from .acl import bad_user_name, rule, setuser

    args.url = None
    settings = _settings(args)
    allow = args.allow_client_kill
    if args.rule:
        print(rule(settings.key_prefix, allow_client_kill=allow))
        return 0
    user = args.user or settings.redis.username or "rqworker"
    problem = bad_user_name(user)
    if problem:  # (--user is checked by argparse: this one is REDIS_USERNAME, or the user in REDIS_URL)
        raise CommandError(f"REDIS_USERNAME (or the user in REDIS_URL): {problem}; or name the user to print "
                           "with --user", exits.CONFIG)
    print(setuser(user, settings.key_prefix, allow_client_kill=allow))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .secret_env import environment, scrub

    if args.check:
        environment.receive()  # the secrets a recycle's check is handed, as a re-execution is (``startcheck``)
    else:
        scrub()  # first: a secret in the environment this process was started with must not stay there
        from .startup import early

        early.install()  # first: until the worker's own handlers exist, a stop or reload is recorded, not fatal
    from .config import ConfigError

    try:
        keys.prepare_environment()  # rq refuses a bad prefix at its import, with a traceback: one line instead
    except ConfigError as exc:
        import errno

        from . import journal
        from .notify import Notifier

        journal.setup_logging("INFO")
        return Notifier().fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    from .process import forget_left, mark_left
    from .service import run

    queues = [*args.queue_args, *([args.queues] if args.queues else [])]
    overrides = {var.field: getattr(args, var.field) for var in VARIABLES if var.flag and var.field}
    overrides.update(queues=",".join(queues) or None, url=args.url, name=args.name)
    if args.check:  # (ExecReload='s, beside the running worker: its marks are not this process's)
        return run(overrides, env_files=args.env_file, check_only=True)
    from .preload import preload

    preload()  # before any job: an upgrade may replace these files under the running worker
    forget_left()
    status = run(overrides, env_files=args.env_file)
    mark_left()  # the unit's ExecStopPost= tells this way out from a job that ended the process
    return status


def _autoscale(args: argparse.Namespace) -> int:
    from .autoscaler import run

    check_env_file(args.env_file)
    return run(args.env_file)


def _cron(args: argparse.Namespace) -> int:
    """The scheduler (``cron.scheduler``); rq's key prefix settled from the env files before rq's import."""
    from .config import ConfigError
    from .envfiles import refresh_environment
    from .secret_env import environment, scrub

    if getattr(args, "cron_command", None) == "list":
        return _cron_list(args)
    if args.check:
        environment.receive()  # as ``run --check``: the secrets a caller hands over this way
    else:
        scrub()  # first: a secret in the environment this process was started with must not stay there
    env_files = args.env_file or [DEFAULT_ENV_FILE]
    try:
        keys.prepare_environment(environment)
        refresh_environment(env_files, Path.cwd() / ".env", environment)
        keys.export(keys.from_environment(environment))  # rq reads it at its first import, just below
    except ConfigError as exc:
        import errno
        import logging

        from . import journal
        from .notify import Notifier

        journal.setup_logging("INFO")
        if args.check:
            logging.getLogger("rq_worker_service.cron").error("configuration error: %s", exc)
            return exits.CONFIG
        return Notifier().fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    from .cron.scheduler import run

    return run(env_files, check_only=args.check)


# ---- `cron list`: a subcommand of `cron` (``_add_cron`` adds it, ``_cron`` hands it here) ------------------


def _add_cron_list(cron: argparse.ArgumentParser) -> None:
    sub = cron.add_subparsers(dest="cron_command", metavar="[list]")  # optional: without it, the scheduler runs
    p = sub.add_parser("list", help="the periodic jobs: schedule, next run, last slot and job, lease holder",
                       description="List each cron job of the schedule the lease holder runs: queue, cron string "
                                   "or interval and time zone, catch-up policy, next run, last slot enqueued and "
                                   "its job's outcome, totals; who holds the lease, the running schedulers and "
                                   "the last hand-overs. Read from Redis; options go after `list`.")
    _connection_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _cron_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    connection, settings = _connect(args)
    from .status.cron import collect_cron, server_time
    from .status.render import cron_lines
    from .status.report import CronInfo

    period = _cron_lease_period(args)
    now = server_time(connection)
    info = collect_cron(connection, now, period, classes=_classes(settings)) or CronInfo(
        lease_period=period, holder=None, token=None, lease_left=None, leaderless_for=None)
    if args.json:
        sys.stdout.write(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
        return 0
    lines = cron_lines(info, now)
    if not info.jobs:
        lines.append("no cron jobs registered: rq-cron.service has not run a schedule with this RQ_KEY_PREFIX")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# ---- end of `cron list` ----------------------------------------------------------------------------------


COMMANDS = {"run": _run, "status": _status, "job": _job, "failed": _failed, "requeue": _requeue, "cleanup": _cleanup,
            "acl": _acl, "autoscale": _autoscale, "cron": _cron}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CommandError as exc:
        print(f"rq-worker-service: {one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except Exception as exc:  # a refused command surfaces wherever the command first needs it
        from .acl import denied

        message = denied(exc)
        if message is None:
            raise
        print(f"rq-worker-service: {message}", file=sys.stderr)
        return exits.NOPERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
