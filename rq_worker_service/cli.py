"""Command line: ``rq-worker-service <command>``.

Every operator mistake ends in one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

DESCRIPTION = "Run RQ workers as systemd services, and inspect them."


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run one worker in the foreground (what rq-worker@<i>.service starts)",
        description="Run one RQ worker until SIGTERM (warm shutdown), SIGHUP (reload) or SIGINT. "
                    "Flags override the environment variables named in brackets.")
    p.add_argument("queues", nargs="*", metavar="QUEUE", help="queues in priority order [RQ_QUEUES]")
    p.add_argument("-q", "--queues", dest="queue_list", metavar="Q1,Q2", help="comma-separated queues [RQ_QUEUES]")
    p.add_argument("-u", "--url", help="Redis URL: redis://, rediss:// or unix:// [REDIS_URL]")
    p.add_argument("-i", "--instance", help="instance name, e.g. the systemd %%i [RQ_WORKER_INSTANCE]")
    p.add_argument("-n", "--name", help="worker name (default <hostname>.rq-worker@<instance>)")
    p.add_argument("-w", "--worker-class", choices=("fork", "simple", "spawn"), help="[RQ_WORKER_CLASS]")
    p.add_argument("-l", "--log-level", help="DEBUG, INFO, WARNING, ERROR [RQ_LOG_LEVEL]")
    p.add_argument("--with-scheduler", dest="with_scheduler", action="store_true", default=None,
                   help="run rq's scheduler for Retry intervals and enqueue_in [RQ_WITH_SCHEDULER]")
    p.add_argument("--without-scheduler", dest="with_scheduler", action="store_false")
    p.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                   help="how long a stop waits for the running job [RQ_SHUTDOWN_TIMEOUT]")
    p.add_argument("--env-file", action="append", default=[], metavar="PATH",
                   help="environment file to (re)apply at start and on every reload; the unit passes its "
                        "EnvironmentFile= paths")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rq-worker-service", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_run(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from .service import run

    queues = list(args.queues)
    if args.queue_list:
        queues += [q for q in args.queue_list.split(",")]
    overrides = {
        "queues": queues or None,
        "url": args.url,
        "instance": args.instance,
        "name": args.name,
        "worker_class": args.worker_class,
        "log_level": args.log_level,
        "with_scheduler": args.with_scheduler,
        "shutdown_timeout": args.shutdown_timeout,
    }
    if args.shutdown_timeout is not None and not args.shutdown_timeout > 0:
        print("rq-worker-service: --shutdown-timeout must be a number of seconds above 0", file=sys.stderr)
        return 64
    return run(overrides, env_files=args.env_file)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    raise AssertionError(args.command)
