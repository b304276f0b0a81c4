"""``rq-worker-service cron`` against a real redis-server, stock rq 3's ``rq cron`` as the oracle in the same test:
two stock schedulers enqueue each slot twice and one of ours per host enqueues it once; a restart of stock fires an
interval job again and ours does not; a leader frozen (SIGSTOP) past its lease or killed (SIGKILL) is replaced
within two lease periods, the frozen one enqueues nothing once it wakes, and no slot is doubled or lost.

Lease period 3 s (the least allowed), misfire grace 10 s, a 1–2 s interval job: the file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import ACL_PASSWORD, JOBS_DIR, RQ_CLI, wait_until
from rq import Queue
from rq.job import Job

from rq_worker_service import keys

PERIOD = 3
GRACE = 10
QUEUE = "cron"


def write_config(tmp_path: Path, interval: int, name: str = "tick") -> Path:
    """A schedule in rq cron's own format: the same file for stock rq and for ours."""
    path = tmp_path / f"cron_config_{name}.py"
    path.write_text("from rq import cron\nfrom testjobs import quick_job\n\n"
                    f"cron.register(quick_job, {QUEUE!r}, args=(1,), interval={interval}, name={name!r})\n")
    return path


class Scheduler:
    """A process of ``rq-worker-service cron`` (ours) or ``rq cron`` (stock), its output in a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log.parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        status = self.proc.wait(15)
        self._log.close()
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def schedulers(redis_server, rconn, tmp_path):
    """Start ours (``ours(config)``) and stock rq's (``stock(config)``); all are killed at teardown."""
    started: list[Scheduler] = []
    env_file = tmp_path / "worker.env"
    env_file.write_text(f"REDIS_URL={redis_server.url}\nRQ_APP_PATH={JOBS_DIR}\nRQ_CRON_LEASE_PERIOD={PERIOD}\n"
                        f"RQ_CRON_MISFIRE_GRACE={GRACE}\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "NOTIFY_", "WATCHDOG_"))}
    base["PYTHONUNBUFFERED"] = "1"

    class Start:
        @staticmethod
        def ours(config: Path, notify=None, url: str | None = None) -> Scheduler:
            cron_env = tmp_path / f"cron-{len(started)}.env"  # (read after worker.env: its values win)
            cron_env.write_text(f"RQ_CRON_CONFIG={config}\n" + (f"REDIS_URL={url}\n" if url else ""))
            env = dict(base, NOTIFY_SOCKET=notify.path) if notify else base
            proc = Scheduler([sys.executable, "-m", "rq_worker_service", "cron", "--env-file", str(env_file),
                              "--env-file", str(cron_env)], env, tmp_path / f"ours-{len(started)}.log")
            started.append(proc)
            return proc

        @staticmethod
        def stock(config: Path) -> Scheduler:
            proc = Scheduler([RQ_CLI, "cron", "--url", redis_server.url, "--path", str(JOBS_DIR), str(config)], base,
                             tmp_path / f"stock-{len(started)}.log")
            started.append(proc)
            return proc

    yield Start
    for proc in started:
        proc.kill()


def jobs(rconn) -> list[Job]:
    queue = Queue(QUEUE, connection=rconn)
    return [job for job in Job.fetch_many(queue.get_job_ids(), connection=rconn) if job is not None]


def slot_of(job: Job) -> int:
    """The slot in our job id (``cron-<hash>-YYYYmmddTHHMMSSZ``), as epoch seconds."""
    from datetime import UTC, datetime

    return int(datetime.strptime(job.id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())


def leader(rconn) -> tuple[int, int] | None:
    """(token, pid) of the lease holder, or None."""
    value = rconn.get(keys.cron_lease())
    if value is None:
        return None
    token, holder = value.decode().split(" ", 1)
    return int(token), int(holder.rsplit(":", 1)[1])


def holder_pid(rconn) -> int | None:
    held = leader(rconn)
    return held[1] if held else None


def assert_each_slot_once(rconn, interval: int, since: int | None = None) -> list[int]:
    """No slot twice in the queue (the same id pushed twice would show), and none missing between the first and
    the last; returns the slots."""
    ids = Queue(QUEUE, connection=rconn).get_job_ids()
    doubled = [jid for jid, n in Counter(ids).items() if n > 1]
    assert not doubled, f"enqueued twice: {doubled}"
    slots = sorted(slot_of(job) for job in jobs(rconn))
    if since is not None:
        slots = [s for s in slots if s >= since]
    assert slots == list(range(slots[0], slots[-1] + 1, interval)), f"a slot is missing: {slots}"
    return slots


def test_two_stock_schedulers_enqueue_each_slot_twice_two_of_ours_once(schedulers, rconn, tmp_path):
    config = write_config(tmp_path, interval=2)
    a, b = schedulers.stock(config), schedulers.stock(config)
    wait_until(lambda: len(jobs(rconn)) >= 6, 20, what="stock rq's schedulers to enqueue")
    a.kill()
    b.kill()
    stock = sorted(job.enqueued_at.timestamp() for job in jobs(rconn))
    # Each stock scheduler fires at its own start and every 2 s after: two jobs for each slot, a moment apart.
    pairs = list(zip(stock[::2], stock[1::2], strict=False))
    assert len(stock) >= 6 and all(second - first < 1.0 for first, second in pairs), stock
    rconn.flushall()

    ours = [schedulers.ours(config), schedulers.ours(config)]
    wait_until(lambda: len(jobs(rconn)) >= 4, 20, what="our schedulers to enqueue")
    time.sleep(2)
    slots = assert_each_slot_once(rconn, interval=2)
    assert len(slots) >= 4
    holder = leader(rconn)
    assert holder is not None and holder[1] in {p.pid for p in ours}
    for proc in ours:
        assert proc.stop() == 0, proc.output()
    assert rconn.get(keys.cron_lease()) is None, "a stop releases the lease"
    assert rconn.hlen(keys.cron_schedulers()) == 0, "a stop leaves the schedulers' list"
    enqueued = sum(p.output().count("Enqueued tick") for p in ours)
    assert enqueued == len(slots), "each slot was enqueued by one scheduler"


def test_a_restart_fires_stock_s_interval_job_again_and_not_ours(schedulers, rconn, tmp_path, notify):
    config = write_config(tmp_path, interval=3600, name="hourly")
    for _ in range(2):
        stock = schedulers.stock(config)
        wait_until(lambda stock=stock: stock.output().count("Enqueued job"), 20, what="stock rq's scheduler to enqueue")
        stock.stop()
    assert len(jobs(rconn)) == 2, "stock rq fires an interval job again at each start"
    rconn.flushall()

    first = time.time()
    for restart in range(2):
        ours = schedulers.ours(config, notify=notify)
        wait_until(lambda: leader(rconn), 20, what="our scheduler to take the lease")
        wait_until(lambda: rconn.hexists(keys.cron_last(), "hourly"), 10, what="the slot to be handled")
        status = notify.wait_for("STATUS=leader", contains=f"(token {restart + 1}): next hourly at ")
        assert ours.stop() == 0, ours.output()
        assert ("Enqueued hourly" in ours.output()) == (restart == 0), ours.output()
    said = notify.lines()
    assert said.count("READY=1") == 2 and said.count("STOPPING=1") == 2, said
    assert status.endswith(" UTC")
    hour = int(first) // 3600 * 3600
    expected = {hour} | ({hour + 3600} if time.time() >= hour + 3600 else set())  # (an hour may begin meanwhile)
    assert {slot_of(job) for job in jobs(rconn)} == expected


def test_a_frozen_or_killed_leader_is_replaced_within_two_lease_periods(schedulers, rconn, tmp_path):
    config = write_config(tmp_path, interval=1)
    first = schedulers.ours(config)
    wait_until(lambda: leader(rconn), 20, what="the first scheduler to take the lease")
    second = schedulers.ours(config)
    wait_until(lambda: rconn.hlen(keys.cron_schedulers()) == 2, 20, what="the second scheduler to stand by")
    procs = {p.pid: p for p in (first, second)}
    token, pid = leader(rconn)
    assert pid == first.pid

    # Frozen: the lease lapses, the standby takes it, and the woken ex-leader enqueues nothing.
    time.sleep(2)
    first.signal(signal.SIGSTOP)
    frozen_at = time.time()
    wait_until(lambda: holder_pid(rconn) == second.pid, 2 * PERIOD + 1, what="the standby to take over")
    took = json.loads(rconn.lindex(keys.cron_handovers(), 0))
    assert took["holder"].endswith(f":{second.pid}") and took["token"] == token + 1
    assert took["previous"].endswith(f":{first.pid}")
    frozen_takeover = took["at"] - frozen_at
    assert frozen_takeover <= 2 * PERIOD
    time.sleep(2)
    woken_from = len(first.output())
    first.signal(signal.SIGCONT)
    wait_until(lambda: "Lost the cron lease" in first.output()[woken_from:], 10, what="the woken one to see it lost")
    time.sleep(2)
    assert "Enqueued" not in first.output()[woken_from:], "the woken ex-leader enqueued on a lease it lost"

    # Killed: the other takes over within the bound again.
    second.signal(signal.SIGKILL)
    killed_at = time.time()
    wait_until(lambda: holder_pid(rconn) == first.pid, 2 * PERIOD + 1, what="the first to take over again")
    killed_takeover = json.loads(rconn.lindex(keys.cron_handovers(), 0))["at"] - killed_at
    assert killed_takeover <= 2 * PERIOD
    time.sleep(2)
    assert first.stop() == 0

    slots = assert_each_slot_once(rconn, interval=1)
    assert slots[-1] - slots[0] >= 10
    enqueued = sum(p.output().count("Enqueued tick") for p in procs.values())
    assert enqueued <= len(slots)  # (a line may die with the killed one after its EXEC, never one too many)
    print(f"takeover after SIGSTOP {frozen_takeover:.2f}s, after SIGKILL {killed_takeover:.2f}s "
          f"(bound {2 * PERIOD}s)")


def test_under_the_acl_rule_it_enqueues_and_refused_credentials_are_77(schedulers, rconn, tmp_path, acl_user):
    """The least-privilege rule (``rq-worker-service acl``) covers the scheduler's keys, scripts and rq's cron
    records; a wrong password is one line and exit 77, never shown."""
    url = acl_user("cron")
    ours = schedulers.ours(write_config(tmp_path, interval=3600, name="hourly"), url=url)
    wait_until(lambda: jobs(rconn), 20, what="the job enqueued under the ACL user")
    assert ours.stop() == 0, ours.output()
    assert rconn.acl_log() == [], "the rule refused the scheduler something"
    refused = schedulers.ours(write_config(tmp_path, interval=60), url=url.replace(f":{ACL_PASSWORD}@", ":wr0ng-pw@"))
    assert refused.proc.wait(20) == 77
    errors = [line for line in refused.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "refused the login" in errors[0], refused.output()
    assert "wr0ng-pw" not in refused.output()


def test_a_stop_while_waiting_for_redis_ends_the_start_at_once(schedulers, tmp_path):
    """Not after RQ_REDIS_STARTUP_WAIT (30 s): systemd's stop would wait that long for nothing."""
    from helpers import free_port

    ours = schedulers.ours(write_config(tmp_path, interval=60), url=f"redis://127.0.0.1:{free_port()}/0")
    wait_until(lambda: "waiting for Redis" in ours.output(), 20, what="the start to wait for Redis")
    stopped = time.monotonic()
    ours.signal(signal.SIGTERM)
    assert ours.proc.wait(10) == 0, ours.output()
    assert time.monotonic() - stopped < 3
    assert "Stopped while waiting for Redis" in ours.output()
