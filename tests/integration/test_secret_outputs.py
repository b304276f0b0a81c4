"""A password given as ``?password=`` in REDIS_URL (redis-py logs in with it) logs in and is shown in
no output (issue 26, item 2); a job's secret arguments reach no log line with
RQ_DISABLE_JOB_DESC_LOGGING (item 5). Against a real redis-server that requires the password."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from helpers import JOBS_DIR, RedisServer, free_port, wait_until
from rq import Queue
from rq.job import Job, JobStatus

SECRET = "Qu3ry-s3cret"
ARGUMENT = "Arg-t0ken"


@pytest.fixture(scope="module")
def secured():
    server = RedisServer(password=SECRET).start()
    yield server
    server.cleanup()


@pytest.fixture
def client(secured):
    connection = secured.client()
    connection.flushall()
    yield connection
    connection.close()


def query_url(server: RedisServer, password: str = SECRET) -> str:
    return f"redis://127.0.0.1:{server.port}/0?password={password}"


def command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``rq-worker-service ARGS`` with only ``env`` for configuration (no --url: REDIS_URL, as the unit)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_"))}
    full.update(env, PYTHONPATH=str(JOBS_DIR), RQ_APP_PATH=str(JOBS_DIR))
    files = [] if args[0] == "run" else ["--env-file", os.devnull]  # not the host's /etc/rq-worker/worker.env
    return subprocess.run([sys.executable, "-m", "rq_worker_service", *args, *files], capture_output=True, text=True,
                          env=full, timeout=60)


def test_run_check_shows_the_url_masked(secured):
    out = command("run", "--check", env={"REDIS_URL": query_url(secured)})
    assert out.returncode == 0, out.stderr
    assert f"on Redis redis://:***@127.0.0.1:{secured.port}/0" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_the_worker_logs_in_with_the_query_password_and_shows_it_nowhere(start_worker, notify, secured, client):
    worker = start_worker("1", notify=notify, url=query_url(secured), env={"RQ_LOG_LEVEL": "DEBUG"})
    notify.wait_for("READY=1")
    job = Queue(connection=client).enqueue("os.path.isfile", "x")
    wait_until(lambda: Job.fetch(job.id, connection=client).get_status() == JobStatus.FINISHED, 10, what="job")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    out = worker.output()
    assert f"Starting worker {socket.gethostname()}.rq-worker@1 (fork) for queues default on Redis " \
           f"redis://:***@127.0.0.1:{secured.port}/0" in out
    assert SECRET not in out
    assert notify.lines("STATUS=") and not [line for line in notify.lines() if SECRET in line]


def test_status_text_json_and_prometheus_show_no_password(secured, client):
    env = {"REDIS_URL": query_url(secured)}
    text = command("status", env=env)
    assert text.returncode == 0, text.stderr
    assert f"redis://:***@127.0.0.1:{secured.port}/0" in text.stdout
    as_json = command("status", "--json", env=env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["redis"] == f"redis://:***@127.0.0.1:{secured.port}/0"
    prometheus = command("status", "--prometheus", env=env)
    assert prometheus.returncode == 0 and "rq_up 1" in prometheus.stdout
    for out in (text, as_json, prometheus):
        assert SECRET not in out.stdout + out.stderr


def test_a_wrong_query_password_exits_77_without_showing_it(secured):
    wrong = "wrong-" + SECRET
    for args in (("run",), ("status",)):
        out = command(*args, env={"REDIS_URL": query_url(secured, wrong)})
        assert out.returncode == 77 and "refused the login" in out.stderr, out.stderr
        assert SECRET not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_redis_is_named_without_the_password(start_worker, notify):
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    status = command("status", env={"REDIS_URL": url})
    assert status.returncode == 69 and "cannot reach Redis at redis://:***@127.0.0.1" in status.stderr
    worker = start_worker("1", notify=notify, url=url, env={"RQ_REDIS_STARTUP_WAIT": "1"})
    assert worker.wait(20) == 69
    assert "cannot reach Redis at redis://:***@127.0.0.1" in worker.output()
    assert notify.lines("STATUS=waiting for Redis at redis://:***@127.0.0.1")
    for text in (status.stdout + status.stderr, worker.output(), *notify.lines()):
        assert SECRET not in text


@pytest.mark.parametrize("url", [f"redis://127.0.0.1:1/x?password={SECRET}",
                                 f"http://127.0.0.1:1/0?username=admin&password={SECRET}"])
def test_configuration_errors_show_no_password(url):
    for args in (("run",), ("run", "--check"), ("status",)):
        out = command(*args, env={"REDIS_URL": url})
        assert out.returncode == 78 and "REDIS_URL=" in out.stderr, out.stderr
        assert SECRET not in out.stdout + out.stderr and "admin" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["fork", "spawn", "simple"])
@pytest.mark.parametrize("disabled", ["no", "yes"])
def test_a_jobs_secret_arguments_reach_no_log_line(start_worker, notify, rconn, kind, disabled):
    """One job that succeeds and one that fails, each called with a secret: with the setting on, the
    worker's and its horse's output (what the journal gets) has it nowhere; off, rq's lines show it."""
    worker = start_worker("1", notify=notify, env={"RQ_WORKER_CLASS": kind, "RQ_DISABLE_JOB_DESC_LOGGING": disabled})
    notify.wait_for("READY=1")
    queue = Queue(connection=rconn)
    done = queue.enqueue("os.path.isfile", ARGUMENT)
    failed = queue.enqueue("time.sleep", ARGUMENT)  # its TypeError does not repeat the argument
    wait_until(lambda: (Job.fetch(done.id, connection=rconn).get_status(), Job.fetch(failed.id, connection=rconn)
                        .get_status()) == (JobStatus.FINISHED, JobStatus.FAILED), 20, what="both jobs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    out = worker.output()
    assert done.id in out and failed.id in out and "time.sleep" in out
    shown = [line for line in out.splitlines() if ARGUMENT in line]
    if disabled == "yes":
        assert not shown
    else:  # the picked-up lines (worker), and the completion line, written where the job ran (the horse)
        assert len([line for line in shown if "Successfully completed" in line]) == 1, shown
        assert len(shown) >= 3, shown


@pytest.mark.parametrize("source", ["--url", "REDIS_PASSWORD"])
def test_status_per_key_prefix_hands_its_children_the_password_off_their_command_line(secured, tmp_path,
                                                                                      monkeypatch, source):
    """``status`` with instances on two key prefixes runs one child per prefix: --url's password went on
    each child's command line (``ps`` shows it to every user), and a shell's REDIS_PASSWORD into its
    environment. Now both reach the children through an inherited descriptor, and they still log in."""
    from rq_worker_service import cli

    (tmp_path / "worker.env").write_text("")
    (tmp_path / "worker-1.env").write_text("RQ_KEY_PREFIX={a}\n")
    (tmp_path / "worker-2.env").write_text("RQ_KEY_PREFIX={b}\n")
    for name in [k for k in os.environ if k.startswith(("RQ_", "REDIS_"))]:
        monkeypatch.delenv(name)
    url = query_url(secured)
    if source == "REDIS_PASSWORD":
        url = url.split("?")[0]
        monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("PYTHONPATH", str(JOBS_DIR))
    monkeypatch.chdir(tmp_path)
    children: list[tuple[list[str], dict[str, str]]] = []
    run = subprocess.run

    def recorded(argv, **kwargs):
        children.append((list(argv), dict(kwargs.get("env") or os.environ)))
        return run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", recorded)
    out = tmp_path / "status.json"
    status = cli.main(["status", "--json", "--url", url, "--env-file", str(tmp_path / "worker.env"),
                       "-o", str(out)])
    assert status == 0
    assert [section["key_prefix"] for section in json.loads(out.read_text())["prefixes"]] == ["rq", "{a}", "{b}"]
    assert len(children) == 3
    for argv, env in children:
        assert SECRET not in " ".join(argv), argv
        assert not [k for k, v in env.items() if SECRET in v], env
