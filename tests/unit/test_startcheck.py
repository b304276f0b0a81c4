"""``startcheck``: a recycle's ``run --check`` in a fresh process, the re-execution's command line and
environment, the secrets handed over and never in its environment, a bound, ticks and a stop meanwhile."""

from __future__ import annotations

import sys
import time

from rq_worker_service.startcheck import check_command, problem_line, start_problem, time_limit

CHILD = [sys.executable, "-c"]


def ask(code: str, environ=None, secrets=None, limit: float = 20.0, interrupted=lambda: False):
    ticks: list[float] = []
    problem = start_problem([*CHILD, code], environ or {"PATH": "/usr/bin:/bin"}, secrets or {}, limit,
                            lambda: ticks.append(time.monotonic()), interrupted)
    return problem, ticks


def test_the_command_is_the_re_execution_s_with_check_after_run():
    assert check_command(["/usr/bin/python3", "/usr/bin/rq-worker-service", "run", "--instance", "1", "q"],
                         ["/usr/bin/rq-worker-service", "run", "--instance", "1", "q"]) == [
        sys.executable, "/usr/bin/rq-worker-service", "run", "--check", "--instance", "1", "q"]
    assert check_command(["python", "-X", "dev", "-m", "rq_worker_service", "run", "--", "q"],
                         ["/x/rq_worker_service/__main__.py", "run", "--", "q"]) == [
        sys.executable, "-X", "dev", "-m", "rq_worker_service", "run", "--check", "--", "q"]


def test_the_bound_is_half_the_watchdog_period():
    assert (time_limit(30.0), time_limit(None), time_limit(600.0)) == (15.0, 30.0, 30.0)


def test_a_passing_check_is_none_and_a_refusal_its_one_line():
    assert ask("pass") == (None, [])
    problem, _ = ask("import sys; print('2026-11-30 16:00:00,000 INFO    x: y', file=sys.stderr); "
                     "print('2026-11-30 16:00:00,001 ERROR   rq_worker_service: configuration error: RQ_X=1 is "
                     "invalid', file=sys.stderr); sys.exit(78)")
    assert problem == "configuration error: RQ_X=1 is invalid"


def test_a_crash_or_a_signal_says_how_with_the_last_line_and_no_secret():
    assert problem_line(1, b"Traceback (most recent call last):\n  ...\nValueError: bad s3cret here\n",
                        {"REDIS_PASSWORD": "s3cret"}) == "run --check exited with status 1: ValueError: bad *** here"
    assert problem_line(-9, b"", {}) == "run --check was killed by signal 9"


def test_the_secrets_are_handed_over_never_in_the_environment_nor_the_systemd_variables():
    code = ("import os, sys; from rq_worker_service.secret_env import environment; environment.receive(); "
            "leaked = [k for k, v in os.environ.items() if 's3cret' in v or k.startswith(('NOTIFY_', 'WATCHDOG_'))]; "
            "sys.exit(0 if environment.get('REDIS_PASSWORD') == 's3cret' and not leaked else 3)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1"}
    assert ask(code, env, {"REDIS_PASSWORD": "s3cret"}) == (None, [])
    assert ask(code, env, {})[0] == "run --check exited with status 3"  # (it can fail)


def test_a_slow_check_ticks_and_a_hung_one_is_bounded():
    problem, ticks = ask("import time; time.sleep(0.7)")
    assert problem is None and len(ticks) >= 2, ticks
    started = time.monotonic()
    problem, ticks = ask("import time; time.sleep(30)", limit=1.0)
    assert time.monotonic() - started < 5
    assert problem is not None and problem.startswith("run --check did not finish within 1s"), problem
    assert len(ticks) >= 3


def test_a_stop_meanwhile_ends_it_without_a_problem():
    started = time.monotonic()
    problem, _ = ask("import time; time.sleep(30)", interrupted=lambda: time.monotonic() - started > 0.5)
    assert problem is None and time.monotonic() - started < 5


def test_a_check_that_cannot_start_says_so():
    problem = start_problem(["/nonexistent/python", "x"], {}, {"REDIS_PASSWORD": "s3cret"}, 5.0, lambda: None,
                            lambda: False)
    assert problem == "cannot start run --check (/nonexistent/python: No such file or directory)"
