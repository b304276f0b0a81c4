"""Upgrading from the last package built on rq 2.12 to this one (rq 3) keeps every job.

The old package is built from the last commit on rq 2.12 (tests/e2e/released.py: cached, so it is
built once per machine and release). Jobs are left in each state under the old package (a job
running through the upgrade, queued, scheduled, failed); after ``apt-get install`` of this package
they run, or stay failed and can be requeued, under rq 3. The operator's edited worker.env, a conffile
of 0.1.0, passes to this package's keeping with no question: kept byte for byte, mode and owner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_conffile_retired, ctl, install, jobs, operator_env, provision, systemctl, wait_for
from released import released_deb
from sandbox import Sandbox


@pytest.fixture(scope="module")
def rq2_deb(release) -> Path:
    """The 0.1.0 package of this release: the last one bundling rq 2.12."""
    return released_deb("0.1.0", release)


def ctl_ids(box: Sandbox, *args: str) -> list[str]:
    return ctl(box, "enqueue", *args)


def bundled_rq(box: Sandbox) -> str:
    return box.run(["/usr/lib/rq-worker-service/bin/python3", "-c", "import rq; print(rq.__version__)"]).stdout.strip()


# rq 2 → 3 data is rq's and ours; test_apt_repository upgrades a conffile package on each release.
@pytest.mark.release_independent
def test_jobs_left_under_the_rq2_package_run_after_upgrading_to_rq3(rootfs, rq2_deb, deb):
    with Sandbox(rootfs) as box:
        provision(box, rq2_deb)
        assert bundled_rq(box).startswith("2."), "the old package must bundle rq 2"
        systemctl(box, "start", "rq-worker@1")
        ctl_ids(box, "failing_job", "--id", "old-failed")
        wait_for(lambda: jobs(box, ["old-failed"])["old-failed"]["status"] == "failed", 20, "the failing job to fail")
        ctl_ids(box, "sleep_job", "15", "--id", "old-running")  # (longer than apt takes)
        wait_for(lambda: jobs(box, ["old-running"])["old-running"]["status"] == "started", 20, "the job to start")
        queued = ctl_ids(box, "quick_job", "1", "--id", "old-queued", "--count", "3")
        ctl_ids(box, "quick_job", "2", "--id", "old-scheduled", "--in", "25")
        assert {j["status"] for j in jobs(box, queued).values()} == {"queued"}
        assert jobs(box, ["old-scheduled"])["old-scheduled"]["status"] == "scheduled"

        edited = operator_env(box)
        assert b"REDIS_PASSWORD=" in edited.data and edited.stat == "640 root:rq-worker", edited

        before = box.show("rq-worker@1", "MainPID", "NRestarts")
        install(box, deb)  # plain apt-get install -y ./…deb, no terminal, while @1 runs a job: asks nothing

        # From 0.1.x the worker cannot re-execute into this version (rq 2's, postinst's REEXEC_FROM):
        # postinst queued a warm restart instead, said so, and returned without waiting for the job.
        assert jobs(box, ["old-running"])["old-running"]["status"] == "started", "apt waited for the job"
        said = box.run(["journalctl", "-t", "rq-worker-service.postinst", "-o", "cat", "--no-pager"]).stdout
        assert "rq-worker@1.service: restarting on" in said and "re-exec cannot carry over" in said, said
        assert bundled_rq(box).startswith("3."), "the new package must bundle rq 3"
        assert operator_env(box) == edited, "the operator's worker.env, its bytes, mode and owner, must be kept"
        assert_conffile_retired(box)
        wait_for(lambda: jobs(box, ["old-running"])["old-running"]["status"] == "finished", 30, "the running job")
        running = jobs(box, ["old-running"])["old-running"]
        assert running["executions"] == 1, running
        wait_for(lambda: box.show("rq-worker@1", "ActiveState")["ActiveState"] == "active", 30, "the restart")
        after = box.show("rq-worker@1", "MainPID", "NRestarts")
        assert after["MainPID"] != before["MainPID"] and after["NRestarts"] == before["NRestarts"], (before, after)
        wait_for(lambda: all(j["status"] == "finished" for j in jobs(box, queued).values()), 30,
                 "the jobs queued under rq 2 to run under rq 3")
        assert all(j["executions"] == 1 for j in jobs(box, queued).values())
        wait_for(lambda: jobs(box, ["old-scheduled"])["old-scheduled"]["status"] == "finished", 60,
                 "the job scheduled under rq 2 to run when due")
        failed = jobs(box, ["old-failed"])["old-failed"]
        assert failed["status"] == "failed" and "this job always fails" in failed["last_error"], failed
        shown = box.run(["rq-worker-service", "job", "old-failed"]).stdout
        assert "failed" in shown and "this job always fails" in shown, shown
        box.run(["rq-worker-service", "requeue", "old-failed"])
        wait_for(lambda: jobs(box, ["old-failed"])["old-failed"]["executions"] == 2, 20,
                 "the failed job, requeued under rq 3, to run again")
