"""Operator mistakes end in one line and the right exit status; the password is never shown."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import RedisServer, free_port, wait_until
from rq import Queue
from rq.job import Job, JobStatus
from testjobs import environ_job, sleep_job

SECRET = "Tr0ub4dor-s3cret"


@pytest.mark.parametrize("env, fragment", [
    ({"RQ_QUEUES": "a,,b"}, "RQ_QUEUES='a,,b' is invalid"),
    ({"RQ_WORKER_CLASS": "threads"}, "RQ_WORKER_CLASS='threads' is invalid: expected fork, simple, spawn, or a dotted"),
    ({"RQ_SHUTDOWN_TIMEOUT": "-1"}, "RQ_SHUTDOWN_TIMEOUT='-1' is invalid"),
    ({"RQ_APP_PATH": "/no/such/dir"}, "RQ_APP_PATH='/no/such/dir' is invalid"),
    ({"REDIS_URL": f"http://:{SECRET}@h:1/0"}, "REDIS_URL='http://:***@h:1/0' is invalid"),
    ({"RQ_JOB_RETRY_MAX": "many"}, "RQ_JOB_RETRY_MAX='many' is invalid"),
    ({"RQ_KEY_PREFIX": "app%s"}, "RQ_KEY_PREFIX='app%s' is invalid"),  # rq's import would raise first
])
def test_bad_config_exits_78_with_one_line(start_worker, notify, env, fragment):
    worker = start_worker("1", notify=notify, env=env)
    assert worker.wait(15) == 78
    out = worker.output()
    assert fragment in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    assert SECRET not in out
    assert notify.wait_for("ERRNO=22")
    assert fragment in notify.wait_for("STATUS=")


@pytest.fixture(scope="module")
def secured_redis():
    server = RedisServer(password=SECRET).start()
    yield server
    server.cleanup()


def test_wrong_password_exits_77_without_showing_it(start_worker, notify, secured_redis):
    url = secured_redis.url.replace(SECRET, "wrong-" + SECRET)
    worker = start_worker("1", notify=notify, url=url)
    assert worker.wait(15) == 77
    out = worker.output()
    assert "refused the login" in out and "REDIS_PASSWORD" in out
    assert SECRET not in out and "Traceback" not in out
    assert all(SECRET not in line for line in notify.lines())


def test_password_from_file_works_and_never_appears(start_worker, notify, secured_redis, tmp_path):
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(SECRET + "\n")
    url = secured_redis.url.replace(f":{SECRET}@", "")
    worker = start_worker("1", notify=notify, url=url, env={"REDIS_PASSWORD_FILE": str(pw_file),
                                                            "RQ_LOG_LEVEL": "DEBUG"})
    notify.wait_for("READY=1")
    client = secured_redis.client()
    job = Queue(connection=client).enqueue(sleep_job, 0.2, job_id="pw-job")
    wait_until(lambda: Job.fetch(job.id, connection=client).get_status() == JobStatus.FINISHED, 10, what="job")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert SECRET not in worker.output()
    assert all(SECRET not in line for line in notify.lines())


def test_job_log_lines_carry_the_job_id(start_worker, notify, rconn):
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    job = Queue(connection=rconn).enqueue(sleep_job, 0.1, "tagged", job_id="log-job")
    wait_until(lambda: Job.fetch(job.id, connection=rconn).get_status() == JobStatus.FINISHED, 10, what="job")
    worker.signal(signal.SIGTERM)
    worker.wait(10)
    lines = [line for line in worker.output().splitlines() if "sleep_job tagged starting" in line]
    assert lines and lines[0].endswith("[job log-job]")


def test_a_key_prefix_from_the_working_directorys_env_file_applies(start_worker, notify, rconn, tmp_path):
    """rq reads RQ_KEY_PREFIX when imported, before ``run`` reads .env: run re-executes itself once."""
    (tmp_path / ".env").write_text("RQ_KEY_PREFIX=myapp\n")
    worker = start_worker("1", notify=notify)
    notify.wait_for("READY=1")
    assert rconn.exists("myapp:worker:" + worker.output().split("Ready: worker ")[1].split()[0])
    assert not rconn.keys("rq:*")
    assert "Reloaded worker" not in worker.output(), "a start that re-imports rq is not a reload"


def test_rq_app_dir_the_worker_runs_in_the_app_with_its_env_and_modules(start_worker, notify, rconn, tmp_path):
    """An app moved from `python worker.py`: its directory, its .env, its modules, its relative paths."""
    app = tmp_path / "reportapp"
    (app / "app").mkdir(parents=True)
    (app / "app" / "__init__.py").write_text("")
    (app / "app" / "tasks.py").write_text(
        "import os\n"
        "def analyse(n):\n"
        "    with open('settings/threshold.txt') as f:\n"  # relative to the app's directory
        "        return f'{os.getcwd()} {os.environ[\"APP_MODE\"]} {int(f.read()) * n}'\n")
    (app / "settings").mkdir()
    (app / "settings" / "threshold.txt").write_text("21\n")
    (app / ".env").write_text("APP_MODE=production\nRQ_QUEUES=report_analysis\n")
    worker = start_worker("1", notify=notify, env={"RQ_APP_DIR": str(app), "RQ_APP_PATH": ""})
    notify.wait_for("READY=1")
    assert "report_analysis" in notify.wait_for("STATUS=")
    job = Queue("report_analysis", connection=rconn).enqueue("app.tasks.analyse", 2)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, what="the app's job to run")
    assert job.return_value() == f"{app} production 42"
    assert worker.proc is not None and worker.proc.poll() is None


DECOYS = {name: f"decoy-{name}-s3cret" for name in ("url", "env", "envfile", "sentinel", "file-url", "file-var")}
"""Passwords some source holds but precedence passes over: they must not appear either."""


def _proc_text(pid: int) -> str:
    return "".join(Path(f"/proc/{pid}/{name}").read_bytes().decode("latin-1") for name in ("environ", "cmdline"))


@pytest.mark.parametrize("worker_class", ["fork", "spawn", "simple"])
def test_no_secret_in_any_process_environment_or_command_line(start_worker, secured_redis, tmp_path, worker_class):
    """Every source at once, decoys where precedence passes a source over: the worker, the horse and a
    subprocess of the job start with, and hold, no password in their environment or command line.
    The spawn horse logs in with what its worker handed over, never with its environment."""
    address = f"127.0.0.1:{secured_redis.port}/0"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-password").write_text(SECRET + "\n")
    (tmp_path / "cred.env").write_text(f"REDIS_SENTINEL_PASSWORD={DECOYS['sentinel']}\n"
                                       f"REDIS_PASSWORD={DECOYS['envfile']}\n")
    (tmp_path / "password").write_text(SECRET + "\n")
    (tmp_path / "file.env").write_text(f"REDIS_URL=redis://:{DECOYS['file-url']}@{address}\n"
                                       f"REDIS_PASSWORD_FILE={tmp_path / 'password'}\n"
                                       f"REDIS_PASSWORD={DECOYS['file-var']}\n")
    sources = {  # instance: (REDIS_URL in the environment, more environment, --env-file)
        "cred": (f"redis://:{DECOYS['url']}@{address}",
                 {"REDIS_PASSWORD": DECOYS["env"], "CREDENTIALS_DIRECTORY": str(creds)}, "cred.env"),
        "file": (f"redis://{address}", {"REDIS_SENTINEL_PASSWORD": DECOYS["sentinel"]}, "file.env"),
        "query": (f"redis://{address}?password={SECRET}", {}, None),
    }
    workers = {}
    for instance, (url, env, env_file) in sources.items():
        args = ["--queues", instance] + (["--env-file", str(tmp_path / env_file)] if env_file else [])
        workers[instance] = start_worker(instance, url=url, env={**env, "RQ_WORKER_CLASS": worker_class}, args=args)
    client = secured_redis.client()
    jobs = {instance: Queue(instance, connection=client).enqueue(environ_job) for instance in workers}
    for instance, job in jobs.items():
        wait_until(lambda j=job: j.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED), 30,
                   what=f"the {instance} worker's job")
        assert job.get_status() == JobStatus.FINISHED, f"{instance}: {job.latest_result().exc_string}"
    for instance, worker in workers.items():
        seen = {"worker": _proc_text(worker.pid), "job and its subprocess": jobs[instance].return_value()}
        if instance != "query":  # a ?password= URL in the log lines: masking's own tests
            seen["log"] = worker.output()
        for secret in (SECRET, *DECOYS.values()):
            for where, text in seen.items():
                assert secret not in text, f"{worker_class} worker {instance}: a password in the {where}"


def test_a_reload_keeps_the_password_it_was_started_with_and_out_of_the_environment(start_worker, notify,
                                                                                    secured_redis):
    """The environment it started with is gone after the start-up's re-execution: a reload's
    re-execution hands the password over the same way, and the worker logs in again with it."""
    worker = start_worker("1", notify=notify, url=secured_redis.url, env={"REDIS_PASSWORD": SECRET})
    notify.wait_for("READY=1")
    worker.signal(signal.SIGHUP)
    wait_until(lambda: "Reloaded worker" in worker.output(), 15, what="the reload")
    job = Queue(connection=secured_redis.client()).enqueue(environ_job)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, what="a job after the reload")
    for where, text in {"worker": _proc_text(worker.pid), "job": job.return_value(), "log": worker.output()}.items():
        assert SECRET not in text, f"the password in the {where}"


SENTINEL_SECRET = "S3ntinel-s3cret"


@pytest.fixture
def secured_sentinel(secured_redis, tmp_path):
    """One sentinel with its own password, watching ``secured_redis`` as ``mymaster``."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass {SENTINEL_SECRET}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {secured_redis.port} 1\n"
                    f"sentinel auth-pass mymaster {SECRET}\n")
    binary = shutil.which("redis-sentinel") or "redis-server"
    proc = subprocess.Popen([binary, str(conf)] + (["--sentinel"] if binary == "redis-server" else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, password=SENTINEL_SECRET, socket_timeout=2)
    wait_until(lambda: _answers(client), 10, what="the sentinel to answer")
    yield port
    proc.kill()
    proc.wait(10)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.sentinel_get_master_addr_by_name("mymaster"))
    except redis.exceptions.RedisError:
        return False


@pytest.mark.parametrize("worker_class", ["fork", "spawn", "simple"])
def test_the_sentinels_password_from_its_file_reaches_no_environment(start_worker, secured_redis, secured_sentinel,
                                                                       tmp_path, worker_class):
    """REDIS_SENTINEL_PASSWORD_FILE logs in to the sentinels (the spawn horse with what its worker
    handed over), and neither password is in any process's environment or command line."""
    (tmp_path / "sentinel-password").write_text(SENTINEL_SECRET + "\n")
    env = {"REDIS_SENTINELS": f"127.0.0.1:{secured_sentinel}", "REDIS_SENTINEL_MASTER": "mymaster",
           "REDIS_SENTINEL_PASSWORD_FILE": str(tmp_path / "sentinel-password"), "RQ_WORKER_CLASS": worker_class}
    worker = start_worker("1", url=f"redis://:{SECRET}@mymaster/0", env=env)
    job = Queue(connection=secured_redis.client()).enqueue(environ_job)
    wait_until(lambda: job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED), 30, what="the job")
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    for where, text in {"worker": _proc_text(worker.pid), "job": job.return_value(), "log": worker.output()}.items():
        assert SECRET not in text and SENTINEL_SECRET not in text, f"{worker_class}: a password in the {where}"
