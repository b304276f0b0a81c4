"""Many servers on one Redis, under real systemd: a frozen worker, a frozen host, a cut link and a host
killed outright, each while jobs keep arriving. Two booted sandboxes (hosts rqws-a and rqws-b, each
with its own machine id and network namespace) are joined by a veth pair; Redis runs on rqws-a and
rqws-b's workers reach it over the link. Every job and every execution is counted (``traced_job``
records host and Redis server time of each start and end).

The first test proves the shipped period: the unit as shipped (WatchdogSec=30s: a member is lost
31 s after its last beat), and the issue's bound, a frozen worker's job done within 45 s. The
others are about what happens once a member is lost, not about when: they run with WatchdogSec=6s
in a drop-in (a member is lost 7 s after its last beat; systemd's abort 2 s later), and their bounds
are the shipped ones scaled down alike: a frozen busy worker's job re-run within WatchdogSec +
TimeoutAbortSec + RestartSec + 10 s (+ its duration), a lost host's jobs re-run within two periods
+ 10 s; always none lost, and duplicates only of jobs that were running on the lost host.

The cron scenario (issue 29) runs rq-cron.service on both hosts with a 3 s lease period: its holder frozen,
then killed, taken over each time within two lease periods, and every slot enqueued exactly once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from conftest import APP, PASSWORD, ctl, install, jobs, provision, systemctl, wait_for
from sandbox import Sandbox, link

A, B = "rqws-a", "rqws-b"
INSTANCES = ("rq-worker@1", "rq-worker@2")
SHIPPED_BOUND = 45
"""The issue's bound for the shipped WatchdogSec=30s: a frozen idle worker's job done within 45 s."""
WATCHDOG, ABORT, RESTART = 6, 2, 5
"""The short WatchdogSec= and TimeoutAbortSec= of the other tests, and the shipped RestartSec=."""
PERIOD = WATCHDOG + 1
"""A member is lost a watchdog period (three ticks) after a fencer first saw its last beat (within a
tick of it), by the fencer's clock; the second is slack."""
RERUN_BOUND = 2 * PERIOD + 10
"""A lost host's jobs re-run within this (the shipped 60 s for a 31 s period, scaled)."""
WATCHDOG_DROPIN = "/etc/systemd/system/rq-worker@.service.d/e2e-watchdog.conf"

pytestmark = pytest.mark.release_independent  # fencing between two hosts is Redis and our code, not the release


@pytest.fixture(scope="module")
def hosts(rootfs, deb):
    with Sandbox(rootfs, hostname=A) as a, Sandbox(rootfs, hostname=B) as b:
        addr_a, _ = link(a, b)
        provision(a, deb)
        a.run(f"sed -i 's/^bind .*/bind 127.0.0.1 {addr_a}/' /etc/redis/redis.conf && systemctl restart redis-server")
        install(b, deb)
        b.run("systemctl disable --now redis-server")
        for name in ("e2ejobs.py", "ctl.py"):
            b.copy_in(APP / name, f"/srv/e2e-app/{name}")
        with b.path("/etc/rq-worker/worker.env").open("a") as f:
            f.write(f"\nREDIS_URL=redis://{addr_a}:6379/0\nREDIS_PASSWORD={PASSWORD}\nRQ_APP_PATH=/srv/e2e-app\n")
        ctl(a, "flush")
        yield a, b


def short_watchdog(*boxes: Sandbox) -> None:
    """WatchdogSec=6s on these hosts' instances (stopped first: the period is read at start)."""
    for box in boxes:
        systemctl(box, "stop", "rq-worker@*.service", check=False)
        box.write(WATCHDOG_DROPIN, f"[Service]\nWatchdogSec={WATCHDOG}s\nTimeoutAbortSec={ABORT}s\n")
        systemctl(box, "daemon-reload")
        systemctl(box, "reset-failed", check=False)


def redis_cli(box: Sandbox, *args: str) -> str:
    return box.run(["redis-cli", "-a", PASSWORD, "--no-auth-warning", *args]).stdout


def main_pid(box: Sandbox, unit: str) -> int:
    return int(box.show(unit, "MainPID")["MainPID"])


def blocked_in_pop(box: Sandbox, worker: str) -> bool:
    return any(f"name={worker} " in line and "cmd=blmove" in line
               for line in redis_cli(box, "CLIENT", "LIST").splitlines())


def finished(box: Sandbox, ids: list[str]) -> bool:
    return all(j["status"] == "finished" for j in jobs(box, ids).values())


def test_frozen_idle_worker_job_done_within_45s(hosts):
    """The issue's measurement, under the shipped unit (WatchdogSec=30s): one idle instance, its main
    process frozen in the blocking pop, then one short job. Redis hands the job to the frozen pop;
    the watchdog replaces the process and the new one puts the job back at once (it was 154 s: two
    maintenance sightings a minute apart)."""
    a, _ = hosts
    assert not a.path(WATCHDOG_DROPIN).exists()
    systemctl(a, "start", "rq-worker@1")
    assert a.show("rq-worker@1", "WatchdogUSec")["WatchdogUSec"] in ("30s", "30000000")
    wait_for(lambda: blocked_in_pop(a, f"{A}.rq-worker@1"), 30, "rq-worker@1 to block in its pop")
    a.run(["kill", "-STOP", str(main_pid(a, "rq-worker@1"))])
    frozen_at = time.monotonic()
    [job] = ctl(a, "enqueue", "quick_job", "7", "--id", "frozen-idle")
    wait_for(lambda: finished(a, [job]), 60, "the job to be done")
    took = time.monotonic() - frozen_at
    print(f"frozen idle worker: job done {took:.1f}s after the freeze")
    assert took <= SHIPPED_BOUND
    assert jobs(a, [job])[job]["executions"] == 1
    assert a.run("journalctl -u rq-worker@1 -g 'which did not start it' -o cat", check=False).stdout.strip()


def test_frozen_busy_worker_job_rerun_within_the_watchdog_plus_its_duration(hosts):
    """Main process and work horse frozen mid-job: the watchdog aborts the instance, and the restarted
    one re-queues the job at once (the predecessor had gone silent: no retry interval)."""
    a, _ = hosts
    short_watchdog(a)
    systemctl(a, "start", "rq-worker@1")
    [job] = ctl(a, "enqueue", "sleep_job", "5", "--id", "frozen-busy")
    wait_for(lambda: jobs(a, [job])[job]["status"] == "started", 30, "the job to start")
    systemctl(a, "kill", "--signal=SIGSTOP", "rq-worker@1")
    frozen_at = time.monotonic()
    wait_for(lambda: finished(a, [job]) and jobs(a, [job])[job]["executions"] == 2, 80, "the job to be re-run")
    took = time.monotonic() - frozen_at
    bound = WATCHDOG + ABORT + RESTART + 10
    print(f"frozen busy worker: job re-run and done {took:.1f}s after the freeze (job: 5 s; WatchdogSec={WATCHDOG}s)")
    assert took <= bound + 5


JOB, EVERY = 1, 0.25
"""The stream: a 1 s job every 0.25 s, as many as four instances run. The job stays shorter than a tick
(WatchdogSec/3 = 2 s), as the shipped unit's 3 s jobs were against its 10 s tick: a member looks for
lost members only in a tick of its main loop, and the ticks while a job runs put the next one off, so
members that only ever run jobs longer than a tick do not fence (not what these tests are about)."""


def stream_during(a: Sandbox, label: str, fault, seconds: float = 20, fault_after: float = 6):
    """Enqueue a JOB s traced job every EVERY s for ``seconds``; ``fault()`` after ``fault_after`` s.
    Returns (job ids, Redis server time of the fault)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        ids=ctl(a, "stream", str(JOB), "--every", str(EVERY), "--for", str(seconds), "--id", label)))
    thread.start()
    time.sleep(fault_after)
    fault_at = ctl(a, "now")
    fault()
    thread.join(seconds + 60)
    return result["ids"], fault_at


LANDS = 1.0
"""Seconds after ``fault_at`` is read within which the fault has landed (``b.close`` tears a host down)."""


def check_stream(a: Sandbox, ids: list[str], fault_at: float, label: str) -> None:
    """Every job done; re-runs only of jobs that were running on B at the fault, within 60 s of it."""
    wait_for(lambda: finished(a, ids), 150, f"every {label} job to be done")
    trace = [e for e in ctl(a, "trace") if e["id"].startswith(f"{label}-")]
    starts: dict[str, list[dict]] = {}
    ends: dict[str, list[dict]] = {}
    for event in trace:
        (starts if event["event"] == "start" else ends).setdefault(event["id"], []).append(event)
    # The fault lands a moment after ``fault_at`` is read (within LANDS, as ``late_on_b`` allows below):
    # a job B finished in that moment recorded its end, one B started in it was cut by the fault.
    # Allowed to run twice: whatever B was running when the fault landed; must run again: what B
    # started and never finished.
    on_b = {job for job, s in starts.items()
            if any(e["host"] == B and e["t"] < fault_at + LANDS for e in s)
            and not any(e["host"] == B and e["t"] < fault_at for e in ends.get(job, []))}
    held = {job for job in on_b if not any(e["host"] == B for e in ends.get(job, []))}
    counts = jobs(a, ids)
    assert all(c["status"] == "finished" for c in counts.values())
    twice = {job for job, c in counts.items() if c["executions"] > 1}
    assert twice <= on_b, f"re-run though not running on the lost host: {sorted(twice - on_b)}"
    rerun_after = [min(e["t"] for e in starts[job] if e["host"] == A and e["t"] >= fault_at) - fault_at
                   for job in held]
    late_on_b = [e for e in trace if e["host"] == B and e["event"] == "start" and e["t"] > fault_at + LANDS]
    print(f"{label}: {len(ids)} jobs, {sum(c['executions'] for c in counts.values())} executions, "
          f"{len(held)} held by {B} at the fault, re-run after {sorted(round(r, 1) for r in rerun_after)} s")
    assert held, "the fault came while no job ran on the lost host: nothing was tested"
    assert max(rerun_after) <= RERUN_BOUND
    assert not late_on_b, f"{B} started jobs after it was lost: {late_on_b}"
    status = a.run(["rq-worker-service", "status"], check=False).stdout
    assert "Fenced workers" in status and B in status, status
    fenced = a.run("journalctl -u 'rq-worker@*' -o cat -g 'Fenced worker'", check=False).stdout
    assert f"Fenced worker {B}.rq-worker@" in fenced
    job = sorted(held)[0]
    rescued = a.run(["journalctl", "-o", "cat", f"RQ_JOB_ID={job}"], check=False).stdout
    assert "Rescued job" in rescued, rescued


def all_working(a: Sandbox, b: Sandbox) -> None:
    """Both hosts' instances active (with the short watchdog) and members, and A's members beating long
    enough to fence."""
    short_watchdog(a, b)
    for box in (a, b):
        systemctl(box, "start", *INSTANCES)
    wait_for(lambda: all(box.show(u, "ActiveState")["ActiveState"] == "active" for box in (a, b) for u in INSTANCES)
             and len(ctl(a, "members")) == 4, 120, "four live members")
    since = min(float(a.show(u, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]) / 1e6
                for u in INSTANCES)
    uptime = float(a.run("cut -d' ' -f1 /proc/uptime").stdout)
    time.sleep(max(0.0, PERIOD + 2 - (uptime - since)))
    redis_cli(a, "DEL", "trace")


def test_frozen_host(hosts):
    a, b = hosts
    all_working(a, b)
    since = int(time.time())
    ids, fault_at = stream_during(a, "freeze", lambda: b.freeze(True))
    try:
        check_stream(a, ids, fault_at, "freeze")
    finally:
        b.freeze(False)
    rejoined(a, b, "the thaw", since)


def rejoined(a: Sandbox, b: Sandbox, after: str, since: int) -> None:
    """B's instances are members again, and know they had been fenced: each either noticed the fence
    at its next beat (exit 75) or was replaced by its watchdog while Redis was out of reach."""
    wait_for(lambda: len(ctl(a, "members")) == 4, 120, f"{B}'s workers to rejoin after {after}")
    log = b.run(f"journalctl -S @{since} -u 'rq-worker@*' -o cat -g 'had been fenced by'", check=False).stdout
    assert f"had been fenced by {A}.rq-worker@" in log, log


def test_link_cut(hosts):
    a, b = hosts
    all_working(a, b)
    end_b = b.run("ip -o link show type veth | cut -d: -f2 | cut -d@ -f1").stdout.strip()
    since = int(time.time())
    ids, fault_at = stream_during(a, "cut", lambda: b.run(["ip", "link", "set", end_b, "down"]))
    try:
        check_stream(a, ids, fault_at, "cut")
    finally:
        b.run(["ip", "link", "set", end_b, "up"])
    rejoined(a, b, "the link is back", since)


CRON_PERIOD = 3
"""RQ_CRON_LEASE_PERIOD of the cron scenario (cron.env): a takeover within 2 × 3 s."""
TAKEOVER_SLACK = 1.0
"""Seconds the measured takeover may exceed 2 lease periods: the test polls the lease every 0.2 s, each
poll a redis-cli started in the sandbox (≈ 50 ms), and reads the fault's time just after the signal."""
CRON_QUEUE = "cron-e2e"
CRON_ENTRIES = {"every-10s": 10, "every-minute": 60}
"""The e2e app's schedule (app/cron_schedule.py): name → seconds between slots (the 10 s interval's slots
lie on the epoch's 10 s grid, the minute cron string's on whole UTC minutes)."""
CRON_WINDOW = 66
"""Seconds from the schedulers' start to the count: past the freeze and the kill (≈50 s), and over a
minute, so that the per-minute entry has a slot in it however the window falls on the clock."""
ENQUEUE_LAG = 2.0
"""Seconds after a slot by which its job is enqueued while a scheduler holds the lease."""


def cron_job_id(name: str, slot: int) -> str:
    """The CONTRACT's deterministic job id, computed here independently of the package's code."""
    stamp = datetime.fromtimestamp(slot, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"cron-{hashlib.sha256(name.encode()).hexdigest()[:12]}-{stamp}"


def lease(a: Sandbox) -> tuple[int, str] | None:
    raw = redis_cli(a, "GET", "rq:service:cron:lease").strip()
    if not raw:
        return None
    token, holder = raw.split(" ", 1)
    return int(token), holder


def host_of(holder: str, a: Sandbox, b: Sandbox) -> Sandbox:
    return {A: a, B: b}[holder.rsplit(":", 1)[0]]


def taken_over(a: Sandbox, token: int) -> tuple[int, str]:
    """Polls until a holder with a newer token than ``token`` holds the lease (raises after 30 s)."""
    return wait_for(lambda: (lambda held: held if held and held[0] > token else None)(lease(a)), 30,
                    f"a scheduler to take the lease over from token {token}", interval=0.2)


def slots_between(every: int, after: float, until: float) -> list[int]:
    """The slots of a schedule with ``every`` s between them (on the epoch grid) in (after, until]."""
    return list(range(int(after) // every * every + every, int(until) + 1, every))


def test_cron_each_slot_once_through_a_freeze_and_a_kill(hosts):
    """rq-cron.service enabled on both hosts (lease period 3 s): a 10 s interval job and a per-minute cron
    job into a queue no worker listens to, so the queue holds every enqueue. The lease holder frozen: the
    other host takes over within two lease periods; thawed, the ex-holder enqueues nothing. The new holder
    killed (SIGKILL): taken over again. At the end every slot of the ``CRON_WINDOW`` is in the queue exactly
    once (by its deterministic id), and nothing else; the journal and ``status`` show the hand-overs; with
    both schedulers stopped, ``status --check`` warns after two lease periods."""
    a, b = hosts
    t_start = time.monotonic()
    for box in (a, b):
        box.copy_in(APP / "cron_schedule.py", "/srv/e2e-app/cron_schedule.py")
        box.write("/etc/rq-worker/cron.env", f"RQ_CRON_CONFIG=/srv/e2e-app/cron_schedule.py\n"
                                             f"RQ_CRON_LEASE_PERIOD={CRON_PERIOD}\n", mode=0o640)
        box.run(["chown", "root:rq-worker", "/etc/rq-worker/cron.env"])
        # The sandbox cannot nest user namespaces (as sandbox.SANDBOX_FILES does for the other units; here, so
        # that the cached root file systems stay valid).
        box.write("/etc/systemd/system/rq-cron.service.d/e2e-sandbox.conf", "[Service]\nPrivateUsers=no\n")
        systemctl(box, "daemon-reload")
    redis_cli(a, "DEL", f"rq:queue:{CRON_QUEUE}")
    since = int(time.time())
    started_at = ctl(a, "now")
    try:
        for box in (a, b):  # Type=notify: returns once its first lease attempt is done (A's first: it leads)
            started = systemctl(box, "enable", "--now", "rq-cron", check=False)
            assert started.returncode == 0, box.run("journalctl -u rq-cron -o cat -n 40", check=False).stdout
        ready_at = ctl(a, "now")
        token1, first = lease(a)
        assert first == f"{A}:{main_pid(a, 'rq-cron')}", "A started first: it holds the lease"
        assert "leader (token" in a.show("rq-cron", "StatusText")["StatusText"]
        assert "standby" in b.show("rq-cron", "StatusText")["StatusText"]

        # 1. The holder's main process frozen (Redis, on the same host, is not).
        time.sleep(12)
        frozen_pid = main_pid(a, "rq-cron")
        a.run(["kill", "-STOP", str(frozen_pid)])
        frozen_at = ctl(a, "now")
        token2, second = taken_over(a, token1)
        took = ctl(a, "now") - frozen_at
        print(f"\nfrozen holder {first}: {second} took over (token {token2}) {took:.1f}s after the freeze")
        assert second.startswith(f"{B}:")
        assert took <= 2 * CRON_PERIOD + TAKEOVER_SLACK
        time.sleep(8)
        thawed_at = int(time.time())
        a.run(["kill", "-CONT", str(frozen_pid)])
        time.sleep(2 * CRON_PERIOD)
        assert lease(a) == (token2, second), "the thawed ex-holder took the lease back"
        log = a.run(f"journalctl -q -u rq-cron -S @{thawed_at} -o json _PID={frozen_pid}", check=False).stdout
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        enqueues = [r for r in records if "RQ_JOB_ID" in r and r.get("MESSAGE", "").startswith("Enqueued ")]
        assert not enqueues, f"the thawed ex-holder enqueued: {[r['RQ_JOB_ID'] for r in enqueues]}"

        # 2. The new holder killed outright: the thawed one, standby now, takes over.
        time.sleep(4)
        systemctl(b, "kill", "--signal=SIGKILL", "rq-cron")
        killed_at = ctl(a, "now")
        token3, third = taken_over(a, token2)
        took_again = ctl(a, "now") - killed_at
        print(f"killed holder {second}: {third} took over (token {token3}) {took_again:.1f}s after the kill")
        assert took_again <= 2 * CRON_PERIOD + TAKEOVER_SLACK

        # 3. The window runs on to CRON_WINDOW; then every slot in it is in the queue once, and nothing else.
        time.sleep(max(0.0, started_at + CRON_WINDOW - ctl(a, "now")))
        end_at = ctl(a, "now")
        time.sleep(ENQUEUE_LAG)
        counts = Counter(redis_cli(a, "LRANGE", f"rq:queue:{CRON_QUEUE}", "0", "-1").split())
        checked_at = ctl(a, "now")
        twice = {job: n for job, n in counts.items() if n > 1}
        assert not twice, f"enqueued more than once: {twice}"
        allowed = set()
        for name, every in CRON_ENTRIES.items():
            # A never-seen interval entry fires its latest grid slot at once (between the first start and its
            # READY); a never-seen cron entry waits for its next slot.
            fresh = every if name == "every-10s" else 0
            must = [cron_job_id(name, s) for s in slots_between(every, ready_at - fresh, end_at)]
            may = {cron_job_id(name, s) for s in slots_between(every, started_at - fresh, checked_at)}
            missing = [job for job in must if job not in counts]
            assert not missing, f"{name}: slots never enqueued: {missing}"
            allowed |= may
            print(f"{name}: {sum(1 for job in counts if job in may)} slots enqueued, once each")
        assert set(counts) <= allowed, f"enqueued though no slot of the window: {sorted(set(counts) - allowed)}"

        # 4. The hand-overs, in the journal of the host that took over and in status.
        for box, token, previous in ((b, token2, first), (a, token3, second)):
            log = box.run(f"journalctl -u rq-cron -S @{since} -o cat", check=False).stdout
            assert f"Took over the cron lease (token {token}) from {previous}" in log, log[-3000:]
        enqueued_by_a = a.run(f"journalctl -q -u rq-cron -S @{since} -o cat RQ_CRON_JOB=every-10s", check=False).stdout
        assert "Enqueued every-10s" in enqueued_by_a  # (the wording the thawed ex-holder's check looks for)
        status = a.run(["rq-worker-service", "status"], check=False).stdout
        assert f"lease held by {third} (token {token3}" in status, status
        assert f"{third} took the lease (token {token3}) from {second}" in status, status
        assert f"{second} took the lease (token {token2}) from {first}" in status, status
        listed = json.loads(a.run(["rq-worker-service", "cron", "list", "--json"]).stdout)
        assert sorted(j["name"] for j in listed["jobs"]) == sorted(CRON_ENTRIES) and listed["holder"] == third

        # 5. Every scheduler stopped: past two lease periods (cron.env's, as status reads it), --check warns.
        leaderless = "cron jobs registered and no scheduler has held the lease"
        assert leaderless not in status
        for box in (a, b):
            systemctl(box, "stop", "rq-cron")
        time.sleep(2 * CRON_PERIOD + 1)
        check = a.run(["rq-worker-service", "status", "--check"], check=False)
        assert check.returncode >= 1 and leaderless in check.stdout.splitlines()[0], check.stdout
        print(f"cron scenario: {time.monotonic() - t_start:.0f}s")
    finally:
        for box in (a, b):
            systemctl(box, "disable", "--now", "rq-cron", check=False)
            systemctl(box, "reset-failed", "rq-cron", check=False)
        redis_cli(a, "DEL", f"rq:queue:{CRON_QUEUE}", "rq:service:cron:jobs", "rq:service:cron:schedulers",
                  "rq:service:cron:lease")


def test_host_killed(hosts):
    a, b = hosts
    all_working(a, b)
    ids, fault_at = stream_during(a, "killed", b.close)
    check_stream(a, ids, fault_at, "killed")
    assert set(ctl(a, "members")) == {f"{A}.{u}" for u in INSTANCES}

