"""Review of issue 31's fewer Redis commands per job: the registration as one script
(``Held.register``), rq's per-pop suspension look without its beat, the remembered worker state, the end's
last_heartbeat left to the end's save, the horse's connection without CLIENT SETINFO.

A ``sitecustomize`` in a tmp directory (on the worker's PYTHONPATH) acts on the registration script's
EVALSHA at the connection level, below redis-py's own retry (``Redis._send_command_parse_response``):

* ``R31_LOSE=<file>``: the file holds a count; while it is > 0, each EVALSHA of the registration script is
  sent and its reply read (Redis has run it), then the connection is closed and ConnectionError raised (a
  reply lost with the link), the count decremented; the service resends it once;
* ``R31_FREEZE=<file>``: once (the file removed), the worker stops itself (SIGSTOP) just before the
  registration's EVALSHA goes out;
* ``R31_SCRIPT=end``: the same faults on the script that writes a returned job's end (``ending``) instead;
* ``R31_RESEND=<file>``: while the count in the file is > 0, the script is run and its reply read, then sent
  again and the second reply returned (a driver that resends after a lost reply), the count decremented;
* ``R31_CUT_FAILURE=<file>``: once (the file removed), the transaction that records a job's failure (rq's
  ``handle_job_failure``: its status ``failed``) meets a dropped link instead of being sent.
"""

from __future__ import annotations

import json
import signal
import socket
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
from helpers import app_package, app_package_env, wait_until
from rq import Queue
from rq.registry import StartedJobRegistry
from testjobs import quick_job

from rq_worker_service.keys import held as held_key

SITECUSTOMIZE = textwrap.dedent('''
    import os

    if os.environ.get("R31_CUT_FAILURE"):
        import redis
        from redis.client import Pipeline

        _execute = Pipeline.execute

        def _cut_failure(self, *args, **kwargs):
            path = os.environ["R31_CUT_FAILURE"]
            failing = any(a[:1] == ("HSET",) and "failed" in a for a, _ in self.command_stack)
            if failing and os.path.exists(path):
                os.remove(path)
                self.reset()
                raise redis.exceptions.ConnectionError("r31: link dropped as the failure is recorded")
            return _execute(self, *args, **kwargs)

        Pipeline.execute = _cut_failure

    if any(os.environ.get(v) for v in ("R31_LOSE", "R31_FREEZE", "R31_RESEND")):
        import hashlib
        import signal

        import redis
        from redis.client import Redis

        from rq_worker_service import ending
        from rq_worker_service import held as held_module

        _SOURCES = ((ending._END,) if os.environ.get("R31_SCRIPT") == "end"
                    else (held_module._REGISTER, held_module._REGISTER_READ_FIRST))
        _SHAS = {hashlib.sha1(source.encode()).hexdigest() for source in _SOURCES}
        original = Redis._send_command_parse_response

        def _take(var):
            path = os.environ.get(var)
            if not path or not os.path.exists(path):
                return False
            return path

        def patched(self, conn, command_name, *args, **options):
            sha = args[1] if command_name == "EVALSHA" and len(args) > 1 else None
            sha = sha.decode() if isinstance(sha, bytes) else sha
            if sha not in _SHAS:
                return original(self, conn, command_name, *args, **options)
            path = _take("R31_FREEZE")
            if path:  # SIGSTOP right before the registration goes out
                os.remove(path)
                os.kill(os.getpid(), signal.SIGSTOP)
            for var in ("R31_LOSE", "R31_RESEND"):
                path = _take(var)
                left = int(open(path).read() or 0) if path else 0
                if left > 0:
                    with open(path, "w") as f:
                        f.write(str(left - 1))
                    conn.send_command(*args)
                    conn.read_response()  # Redis ran it
                    if var == "R31_LOSE":
                        conn.disconnect()
                        raise redis.exceptions.ConnectionError("r31: reply lost with the link")
                    # R31_RESEND: the driver sends it again, below
            return original(self, conn, command_name, *args, **options)

        Redis._send_command_parse_response = patched
''')

APP = textwrap.dedent('''
    import time


    def slow_fail(seconds):
        time.sleep(seconds)
        raise RuntimeError("fails on purpose after a while")


    def slow_ok(seconds):
        time.sleep(seconds)
        return "ok"
''')


def our_name(instance: str) -> str:
    return f"{socket.gethostname()}.rq-worker@{instance}"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return app_package(tmp_path, "r31app", APP, SITECUSTOMIZE)


def env_for(app_dir: Path, **env: str) -> dict[str, str]:
    return app_package_env(app_dir, **{"RQ_JOB_RETRY_DELAY": "0", **env})


def state(rconn, instance: str) -> bytes | None:
    return rconn.hget(f"rq:worker:{our_name(instance)}", "state")


def assert_ran_once_and_clean(rconn, queue: Queue, job_id: str, instance: str) -> None:
    wait_until(lambda: rconn.hget(f"rq:job:{job_id}", "status") == b"finished", 40, what=f"job {job_id} finished")
    time.sleep(0.5)
    assert rconn.get(f"executions:{job_id}") == b"1", "run twice (or never)"
    assert StartedJobRegistry(queue.name, connection=rconn).get_job_ids() == []
    assert rconn.lrange(held_key(our_name(instance)), 0, -1) == []
    assert job_id not in queue.get_job_ids()


# -- point 1: the registration script under lost replies ------------------------------------------------------------

@pytest.mark.parametrize("cls", ["fork", "simple"])
@pytest.mark.parametrize("lost", [2, 5], ids=["resend-lost-too", "lost-over-cycles"])
def test_registration_reply_lost(cls, lost, app_dir, start_worker, rconn, tmp_path):
    """The script runs, its reply is lost ``lost`` times (redis-py's own retry does not resend here: the pool
    from a URL has none). 1: the service's resend answers 0 (not held) and the new execution exists: registered.
    2: the resend's reply is lost too: ``job_lost``, the rescue once Redis answers ("registered but never
    started: put back"), and the job is taken again. 5: that twice over, then once more. Run once, nothing left."""
    queue = Queue(f"lost-{cls}-{lost}", connection=rconn)
    arm = tmp_path / f"lose-{cls}-{lost}"
    arm.write_text("0")
    worker = start_worker("l", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls, R31_LOSE=str(arm)))
    warm = queue.enqueue(quick_job, 0)
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the worker up")
    arm.write_text(str(lost))
    job = queue.enqueue(quick_job, 1)
    assert_ran_once_and_clean(rconn, queue, job.id, "l")
    assert arm.read_text() == "0", "the fault did not fire as often as armed"
    wait_until(lambda: state(rconn, "l") == b"idle", 10, what="rq's worker state idle again")
    after = queue.enqueue(quick_job, 2)  # the worker goes on
    assert_ran_once_and_clean(rconn, queue, after.id, "l")
    assert worker.proc.poll() is None


@pytest.mark.parametrize("cls", ["fork", "simple"])
@pytest.mark.parametrize("fault", ["lost", "resent"])
def test_the_end_is_written_once_when_its_scripts_reply_is_lost_or_it_is_sent_again(cls, fault, app_dir,
                                                                                     start_worker, rconn, tmp_path):
    """The end of a job that returned is one script (``ending``). Its reply lost: the horse exits 1 and its
    worker finds the job finished (fork), or the rescue finds the end recorded (simple). Sent again by the
    driver after it ran: the StartedJobRegistry entry it removed first stops the second run. Either way
    the job ran once and has one result, the worker counted it once, and the worker goes on."""
    queue = Queue(f"end-{cls}-{fault}", connection=rconn)
    arm = tmp_path / f"end-{cls}-{fault}"
    arm.write_text("0")
    variable = "R31_LOSE" if fault == "lost" else "R31_RESEND"
    worker = start_worker("e", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls, R31_SCRIPT="end",
                                           **{variable: str(arm)}))
    warm = queue.enqueue(quick_job, 0)
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the worker up")
    arm.write_text("1")
    job = queue.enqueue(quick_job, 1)
    assert_ran_once_and_clean(rconn, queue, job.id, "e")
    assert arm.read_text() == "0", "the fault did not fire"
    assert rconn.xlen(f"rq:results:{job.id}") == 1, "a second result"
    wait_until(lambda: rconn.hget(f"rq:worker:{our_name('e')}", "successful_job_count") == b"2", 10,
               what="the worker's count of successful jobs: 2")
    after = queue.enqueue(quick_job, 2)
    assert_ran_once_and_clean(rconn, queue, after.id, "e")
    assert rconn.hget(f"rq:worker:{our_name('e')}", "successful_job_count") == b"3"
    output = worker.output()
    assert "Traceback" not in output, output[-3000:]
    assert worker.proc.poll() is None


@pytest.mark.parametrize("cls", ["fork", "simple"])
def test_a_failure_that_could_not_be_recorded_is_not_left_started(cls, app_dir, start_worker, rconn, tmp_path):
    """rq logs "failed to persist failure of job" with a traceback and goes on, leaving the job STARTED in
    its StartedJobRegistry for its abandoned-job cleanup. The IDLE write that came next used to meet the
    outage and report it; it now waits for an empty pop. The Redis error is raised again after rq's step
    (``persisted``): one warning, and the job is retried as interrupted (a horse that exits 1; a simple
    worker's rescue), then fails as it does every time, with no traceback of the Redis error logged."""
    queue = Queue(f"failcut-{cls}", connection=rconn)
    arm = tmp_path / f"failcut-{cls}"
    worker = start_worker("f", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls,
                                           RQ_JOB_RETRY_MAX="1", R31_CUT_FAILURE=str(arm)))
    warm = queue.enqueue(quick_job, 0)
    wait_until(lambda: rconn.hget(warm.key, "status") == b"finished", 20, what="the worker up")
    arm.touch()
    job = queue.enqueue("r31app.slow_fail", 0.1)
    wait_until(lambda: rconn.hget(job.key, "status") == b"failed", 40, what="the job failed in the end")
    assert not arm.exists(), "the fault did not fire"
    output = worker.output()
    assert "Lost Redis while recording the failure of job" in output, output[-3000:]
    assert "failed to persist" not in output and "redis.exceptions" not in output, output[-3000:]
    assert StartedJobRegistry(queue.name, connection=rconn).get_job_ids() == []
    assert worker.proc.poll() is None


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


FAST = {"WATCHDOG_USEC": "3000000", "RQ_WITH_SCHEDULER": "no"}


# -- point 3: rq's worker state after errors -----------------------------------------------------------------------

def test_state_is_idle_after_a_not_held_registration_and_after_jobs(app_dir, start_worker, rconn, tmp_path):
    """Between jobs the worker's rq state is idle (``rq info``), also after a registration lost twice over."""
    queue = Queue("state", connection=rconn)
    arm = tmp_path / "lose"
    arm.write_text("0")
    start_worker("s", env=env_for(app_dir, RQ_QUEUES=queue.name, R31_LOSE=str(arm)))
    for i in range(3):
        job = queue.enqueue(quick_job, i)
        wait_until(lambda key=job.key: rconn.hget(key, "status") == b"finished", 20, what="job finished")
        wait_until(lambda: state(rconn, "s") == b"idle", 5, what="idle after a job")
    arm.write_text("8")
    job = queue.enqueue(quick_job, 9)
    assert_ran_once_and_clean(rconn, queue, job.id, "s")
    wait_until(lambda: state(rconn, "s") == b"idle", 10, what="idle after the lost registration")


# -- point 4: the job's last_heartbeat and ended_at at its end, against stock rq ------------------------------------

def _times(rconn, job_id: str) -> dict[str, datetime | None]:
    raw = rconn.hgetall(f"rq:job:{job_id}")
    out = {}
    for field in ("started_at", "ended_at", "last_heartbeat"):
        v = raw.get(field.encode())
        out[field] = datetime.fromisoformat(v.decode().replace("Z", "+00:00")) if v else None
    out["status"] = raw.get(b"status")
    return out


@pytest.mark.parametrize("disable_default_handler", [False, True], ids=["default-handler", "no-default-handler"])
def test_last_heartbeat_at_a_failed_jobs_end_as_stock_rq(disable_default_handler, app_dir, start_worker, stock_rq,
                                                         rconn):
    """A job that fails after 1.5 s, no retry. Stock rq's ``handle_execution_ended`` HSETs last_heartbeat at the
    end; the change leaves it to the end's save. With RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER (rq's -d) there is
    no save on that path (``handle_job_failure`` skips ``_handle_failure``; only HSET status): last_heartbeat
    stays at the start."""
    ours, stock = Queue("hb-ours", connection=rconn), Queue("hb-stock", connection=rconn)
    env = env_for(app_dir, RQ_QUEUES=ours.name)
    if disable_default_handler:
        env["RQ_DISABLE_DEFAULT_EXCEPTION_HANDLER"] = "1"
    start_worker("h", env=env)
    args = ["--burst", "--path", str(app_dir), stock.name] + (["-d"] if disable_default_handler else [])
    a = ours.enqueue("r31app.slow_fail", 1.5, retry=None)
    b = stock.enqueue("r31app.slow_fail", 1.5, retry=None)
    proc = stock_rq("stock-hb", *args)
    wait_until(lambda: rconn.hget(a.key, "status") == b"failed", 30, what="ours failed")
    wait_until(lambda: rconn.hget(b.key, "status") == b"failed", 30, what="stock failed")
    proc.wait(30)
    t_ours, t_stock = _times(rconn, a.id), _times(rconn, b.id)
    lag_stock = (t_stock["last_heartbeat"] - t_stock["started_at"]).total_seconds()
    lag_ours = (t_ours["last_heartbeat"] - t_ours["started_at"]).total_seconds()
    assert lag_stock >= 1.4, t_stock
    assert lag_ours >= 1.4, f"last_heartbeat left at the job's start (stock rq writes the end's): ours {t_ours}, " \
                            f"stock {t_stock}"
    assert (t_ours["ended_at"] is None) == (t_stock["ended_at"] is None), (t_ours, t_stock)


@pytest.mark.parametrize("cls", ["fork", "simple"])
def test_last_heartbeat_at_a_successful_end(cls, app_dir, start_worker, rconn):
    queue = Queue(f"hb-ok-{cls}", connection=rconn)
    start_worker("o", env=env_for(app_dir, RQ_QUEUES=queue.name, RQ_WORKER_CLASS=cls))
    job = queue.enqueue("r31app.slow_ok", 1.5)
    wait_until(lambda: rconn.hget(job.key, "status") == b"finished", 30, what="finished")
    t = _times(rconn, job.id)
    assert (t["last_heartbeat"] - t["started_at"]).total_seconds() >= 1.4, t
    assert t["ended_at"] is not None and t["ended_at"] >= t["started_at"], t


# -- point 5: the horse's connection without CLIENT SETINFO -----------------------------------------------------------
# (no test: ``driver_info=None`` needs redis-py >= 7.2; the service already needs redis.utils.SENTINEL, which
# only later versions have: on redis-py 6.4.0 and 7.2.0 it fails to import before any job. Not this change's.)


# -- point 1 under Redis Cluster: a reshard that begins between the pop and the registration ------------------------

def test_a_reshard_beginning_between_the_pop_and_the_registration_ends_the_worker_with_one_line(app_dir, start_worker,
                                                                                                 tmp_path):
    """The prefix's slot starts to migrate (MIGRATING/IMPORTING, no key moved yet) while the worker is between
    its pop and its registration. Documented (operations.md): ASK, TRYAGAIN while the keys move end the worker
    with one line and exit 69. Before the change the registration's MULTI got ASK for the new execution key
    (AskError: exit 69). Now the script's declared keys (held list, fenced marks) are local, so it runs, and its
    first write, to the new execution's key (undeclared, not local in a migrating slot), is refused by Redis
    inside the script: "Script attempted to access a non local key in a cluster node", a plain ResponseError
    that ``slot_moved`` does not know. The job is not lost (held, put back at the restart)."""
    from helpers import RedisCluster
    from redis.crc import key_slot
    from test_cluster import enqueue as cluster_enqueue
    from test_cluster import env_for as cluster_env
    from test_cluster import executions as cluster_executions
    from test_cluster import status_of

    cluster = RedisCluster(3).start()
    try:
        prefix = "{r31mig}"
        owner = cluster.owner(prefix)
        target = next(n for n in cluster.nodes if n.port != owner.port)
        # the fencing marks exist (some worker of this prefix was fenced once): both declared keys are local
        owner.client().hset(f"{prefix}:service:fenced", "r31-some-old-worker", json.dumps({"by": "r31", "at": 0}))
        arm = tmp_path / "freeze"
        env = {**cluster_env(prefix, owner.port, "mig"), **env_for(app_dir, R31_FREEZE=str(arm))}
        env.pop("RQ_JOB_RETRY_DELAY", None)
        worker = start_worker("mig", url=f"redis://127.0.0.1:{owner.port}/0", env=env)
        wait_until(lambda: "Ready: worker" in worker.output(), 20, what="the worker ready")
        arm.touch()
        job = cluster_enqueue(env, func="testjobs.quick_job", args=[1], queue="mig", id="mig-job")
        wait_until(lambda: _stopped(worker.pid), 15, what="the worker frozen before its registration")
        slot = key_slot(prefix.encode())
        source_id, target_id = owner.client().cluster("MYID"), target.client().cluster("MYID")
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        owner.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        worker.signal(signal.SIGCONT)
        code = worker.wait(20)
        output = worker.output()
        for node in (owner, target):  # the reshard is called off
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        start_worker("mig", url=f"redis://127.0.0.1:{owner.port}/0", env=cluster_env(prefix, owner.port, "mig"))
        wait_until(lambda: status_of(cluster, prefix, job) == "finished", 30, what="the job run after the restart")
        assert cluster_executions(cluster, prefix, job) == 1
        assert code == 69 and "Traceback" not in output, f"exit {code}:\n{output[-3000:]}"
    finally:
        cluster.cleanup()
