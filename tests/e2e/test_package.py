"""Package life cycle under systemd: upgrade while a job runs, then purge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PASSWORD, ctl, install, jobs, repack_deb, reset, systemctl, wait_for

from rq_worker_service import __version__

UPGRADE_VERSION = f"{__version__}+e2e1"
"""A newer package of this very version, for the upgrade test."""


@pytest.fixture(scope="module")
def upgrade_deb(release, deb) -> Path:
    """The release's package repacked as UPGRADE_VERSION: the same files and maintainer scripts, which
    are what an upgrade runs (RQWS_E2E_UPGRADE_DEB_<RELEASE> names another one)."""
    prebuilt = os.environ.get(f"RQWS_E2E_UPGRADE_DEB_{release.upper()}")
    return Path(prebuilt) if prebuilt else repack_deb(deb, UPGRADE_VERSION)


def main_pid(box, unit):
    return int(box.show(unit, "MainPID")["MainPID"])


def test_upgrade_restarts_running_instances_without_cutting_the_job(box, upgrade_deb):
    reset(box)
    systemctl(box, "start", "rq-worker@1", "rq-worker@2")
    before = {i: main_pid(box, f"rq-worker@{i}") for i in "12"}
    ctl(box, "enqueue", "sleep_job", "8", "--id", "upgrade-job")
    wait_for(lambda: jobs(box, ["upgrade-job"])["upgrade-job"]["status"] == "started", 10, "the job to start")
    install(box, upgrade_deb)  # apt-get install ./rq-worker-service_<newer>.deb, as an operator would
    job = jobs(box, ["upgrade-job"])["upgrade-job"]
    assert job["status"] == "finished" and job["executions"] == 1, job
    for i in "12":
        assert box.show(f"rq-worker@{i}", "ActiveState")["ActiveState"] == "active"
        assert main_pid(box, f"rq-worker@{i}") not in (0, before[i]), "instance was not restarted"
    assert box.show("rq-worker@3", "ActiveState")["ActiveState"] == "inactive"  # not running: not started
    assert box.run(["rq-worker-service", "--version"]).stdout.strip() == f"rq-worker-service {UPGRADE_VERSION}"
    assert "REDIS_PASSWORD=" in box.run(["cat", "/etc/rq-worker/worker.env"]).stdout  # conffile kept
    stat = box.run(["stat", "-c", "%a %U:%G", "/etc/rq-worker/worker.env"]).stdout.strip()
    assert stat == "640 root:rq-worker"


def test_purge_stops_instances_warm_and_leaves_nothing(box):
    reset(box)
    systemctl(box, "enable", "--now", "rq-worker@1")
    box.write("/etc/rq-worker/worker-1.env", "RQ_QUEUES=default\n")
    ctl(box, "enqueue", "sleep_job", "4", "--id", "purge-job")
    wait_for(lambda: jobs(box, ["purge-job"])["purge-job"]["status"] == "started", 10, "the job to start")
    box.run(["apt-get", "purge", "-y", "rq-worker-service"], timeout=300)
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
