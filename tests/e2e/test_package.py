"""Package life cycle under systemd: upgrade from the released 0.2.0 while a job runs, then purge."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import PASSWORD, PY, ctl, install, jobs, reset, systemctl, wait_for
from released import released_deb

from rq_worker_service import __version__

LONG_JOB = float(os.environ.get("RQWS_E2E_UPGRADE_JOB", "20"))
"""Seconds of the job that runs through the upgrade: apt must return long before it ends (issue 28
measured with 60 s: RQWS_E2E_UPGRADE_JOB=60)."""


def main_pid(box, unit):
    return int(box.show(unit, "MainPID")["MainPID"])


def downgrade_to(box, deb: Path) -> None:
    """The box (provisioned with this checkout's package) back to a released one, nothing running."""
    box.copy_in(deb, f"/root/{deb.name}")
    box.run(["dpkg", "-i", "--force-confold", f"/root/{deb.name}"], timeout=300)


def journal_of(box, unit: str, since: str) -> str:
    return box.run(["journalctl", "-u", unit, "--since", since, "-o", "cat", "--no-pager"]).stdout


@pytest.mark.release_independent  # test_apt_repository.py upgrades from 0.2.0 under a running job on every release
def test_upgrade_from_0_2_0_reloads_instances_without_waiting_for_the_job(box, release, deb):
    """apt returns while a long job runs; the idle instance re-executes on the new code at once, the
    busy one after its job, both with the same PID and no restart; every job runs once."""
    reset(box)
    downgrade_to(box, released_deb("0.2.0", release))
    systemctl(box, "start", "rq-worker@1")
    ctl(box, "enqueue", "sleep_job", str(LONG_JOB), "--id", "upgrade-job")
    wait_for(lambda: jobs(box, ["upgrade-job"])["upgrade-job"]["status"] == "started", 20, "the job to start")
    systemctl(box, "start", "rq-worker@2")  # idle: the long job is instance 1's
    # A unit installed --no-start (the metrics timer, the autoscaler): debhelper's preinst stopped it on
    # every upgrade, and nothing started it again, unless --no-stop-on-upgrade.
    systemctl(box, "start", "rq-worker-metrics.timer")
    before = {i: box.show(f"rq-worker@{i}", "MainPID", "NRestarts") for i in "12"}
    since = box.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()

    enqueued: list[str] = []
    done = threading.Event()

    def enqueue_during_the_upgrade() -> None:  # dpkg replaces ctl's interpreter meanwhile: a failure skips one
        n = 0
        while not done.is_set():
            n += 1
            if box.run([PY, "/srv/e2e-app/ctl.py", "enqueue", "quick_job", str(n), "--id", f"during-{n}"],
                       check=False).returncode == 0:
                enqueued.append(f"during-{n}")
            time.sleep(0.5)

    feeder = threading.Thread(target=enqueue_during_the_upgrade)
    feeder.start()
    t0 = time.monotonic()
    try:
        install(box, deb)  # apt-get install ./rq-worker-service_<this version>.deb, as an operator would
    finally:
        apt_seconds = time.monotonic() - t0
        done.set()
        feeder.join()
    at_return = jobs(box, ["upgrade-job", *enqueued])
    ran_before_return = sum(1 for i in enqueued if at_return[i]["status"] == "finished")
    print(f"\n{release}: apt took {apt_seconds:.1f}s with a {LONG_JOB:g}s job running; {ran_before_return} of "
          f"{len(enqueued)} jobs enqueued during the upgrade ran before it returned")
    assert at_return["upgrade-job"]["status"] == "started", at_return["upgrade-job"]  # apt did not wait for it
    assert enqueued, "no job could be enqueued during the upgrade"
    assert box.run(["rq-worker-service", "--version"]).stdout.strip() == f"rq-worker-service {__version__}"

    # The idle instance: re-executed at once on the new code, same PID.
    wait_for(lambda: "Reloaded worker" in journal_of(box, "rq-worker@2", since), 30, "instance 2 to reload")
    # The busy one: after its job, same PID.
    wait_for(lambda: jobs(box, ["upgrade-job"])["upgrade-job"]["status"] == "finished", LONG_JOB + 30, "the job")
    wait_for(lambda: "Reloaded worker" in journal_of(box, "rq-worker@1", since), 30, "instance 1 to reload")
    log1 = journal_of(box, "rq-worker@1", since)
    assert log1.index("e2e job done") < log1.index("Re-executing in place"), log1
    for i in "12":
        shown = box.show(f"rq-worker@{i}", "ActiveState", "MainPID", "NRestarts")
        assert shown == {"ActiveState": "active", **before[i]}, (i, shown)  # same PID, NRestarts unchanged
        print(f"{release}: rq-worker@{i} NRestarts {before[i]['NRestarts']} → {shown['NRestarts']}, "
              f"PID {before[i]['MainPID']} → {shown['MainPID']}")
    wait_for(lambda: all(j["status"] == "finished" for j in jobs(box, enqueued).values()), 30, "the queued jobs")
    after = jobs(box, ["upgrade-job", *enqueued])
    assert {i: j["executions"] for i, j in after.items() if j["executions"] != 1} == {}, after
    assert box.show("rq-worker@3", "ActiveState")["ActiveState"] == "inactive"  # not running: not started
    assert box.show("rq-worker-metrics.timer", "ActiveState")["ActiveState"] == "active", "the upgrade stopped it"
    systemctl(box, "stop", "rq-worker-metrics.timer")
    assert box.run(["stat", "-c", "%a %U:%G", "/etc/rq-worker/worker.env"]).stdout.strip() == "640 root:rq-worker"


def test_purge_stops_instances_warm_and_leaves_nothing(box):
    reset(box)
    systemctl(box, "enable", "--now", "rq-worker@1")
    box.write("/etc/rq-worker/worker-1.env", "RQ_QUEUES=default\nRQ_SHUTDOWN_TIMEOUT=45\n")
    ctl(box, "enqueue", "sleep_job", "4", "--id", "purge-job")
    wait_for(lambda: jobs(box, ["purge-job"])["purge-job"]["status"] == "started", 10, "the job to start")
    said = box.run(["apt-get", "purge", "-y", "rq-worker-service"], timeout=300).stdout
    # prerm says how long the warm stop may wait, as the instance's own file sets it
    line = next((x for x in said.splitlines() if x.strip().startswith("rq-worker@1.service:")), "")
    assert "a stop waits up to 45s" in line, said
    assert box.show("rq-worker@1", "ActiveState")["ActiveState"] in ("inactive", "")
    # redis-server is still there; the worker finished the job before the package went away.
    cli = f"redis-cli -a '{PASSWORD}' --no-auth-warning"
    assert box.run(f"{cli} get executions:purge-job").stdout.strip() == "1"
    assert box.run(f"{cli} hget rq:job:purge-job status").stdout.strip() == "finished"
    status = box.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "rq-worker-service"], check=False).stdout
    assert not status.startswith(("ii", "rc")), status
    leftovers = box.run(
        "find /etc /opt /usr /lib/systemd /var/lib -xdev \\( -name '*rq-worker*' -o -name '*rq_worker*' \\) "
        "! -path '/etc/systemd/system/rq-worker@.service.d*' "
        "! -path '/etc/systemd/system/rq-worker-autoscale.service.d*' -print").stdout.split()
    assert leftovers == [], leftovers
