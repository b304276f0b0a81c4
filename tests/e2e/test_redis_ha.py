"""Redis Sentinel under a booted systemd: the installed package follows a failover.

Inside the sandbox, Debian's own units (``sentinel.py``): a primary, a replica and three sentinels.
rq-worker@1 and @2 take queue ``default`` through REDIS_SENTINELS and have a backlog when the fault
comes. The pause is the time from the election to the end of a probe job queued on the new primary
right after it (traced_job's trace, in Redis time): how long new work waits. Stock rq's pause under
its documented unit, for comparison, is measured by ``bench/failover.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import time

import pytest
import sentinel
from conftest import ctl, jobs, provision, systemctl, wait_for
from sandbox import Sandbox
from sentinel import unit

PAUSE_TARGET = 10.0

pytestmark = pytest.mark.release_independent  # Sentinel failover is Redis and our code, not the release


@pytest.fixture(scope="module")
def ha(rootfs, deb):
    with Sandbox(rootfs) as box:
        provision(box, deb)
        sentinel.set_up_sentinel(box)
        yield box


def first_end_after(box: Sandbox, moment: float) -> float:
    """When the first job recorded its end on the current primary after ``moment``: the end of the
    pause in job processing."""
    return min((e["t"] for e in ctl(box, "trace") if e["event"] == "end" and e["t"] > moment), default=moment)


@pytest.mark.parametrize("fault", sentinel.FAULTS)
def test_the_installed_package_follows_a_failover(ha, fault):
    systemctl(ha, "start", "rq-worker@1", "rq-worker@2")
    restarts = {u: int(unit(ha, u, "NRestarts")) for u in ("rq-worker@1", "rq-worker@2")}
    wait_for(lambda: sentinel.replica_in_sync(ha), 60, "the replica to be in sync", interval=0.5)
    old = sentinel.primary_port(ha)
    before = ctl(ha, "enqueue", "traced_job", "0.5", "--count", "20", "--id", f"{fault}-before")
    time.sleep(1)  # replicated (no WAIT here: plain rq enqueues)
    old_unit = sentinel.inject(ha, fault, old)
    new, elected = sentinel.wait_for_election(ha, old)
    probe = ctl(ha, "enqueue", "traced_job", "0", "--id", f"{fault}-probe")
    after = ctl(ha, "enqueue", "traced_job", "0.2", "--count", "10", "--id", f"{fault}-after")

    ours = before + after + probe
    try:
        wait_for(lambda: all(j["status"] == "finished" for j in jobs(ha, ours).values()), 90,
                 "every job on the new primary to finish")
    except AssertionError:
        left = {k: v for k, v in jobs(ha, ours).items() if v["status"] != "finished"}
        log = ha.run(["journalctl", "-u", "rq-worker@*", "-o", "cat", "--no-pager", "-n", "80"]).stdout
        raise AssertionError(f"not finished: {left}\n{ctl(ha, 'registries')}\n{log}") from None
    pause = sentinel.probe_end(ha, probe[0]) - elected
    first = first_end_after(ha, elected) - elected
    print(f"\n{fault}: new primary :{new}; a job queued on it at the election done after {pause:.1f}s; "
          f"first job end recorded on it {first:.1f}s after")
    assert pause <= PAUSE_TARGET

    for name in ("rq-worker@1", "rq-worker@2"):
        assert int(unit(ha, name, "NRestarts")) == restarts[name], f"{name} restarted"
        assert f"primary 127.0.0.1:{new}" in unit(ha, name, "StatusText")
    journal = ha.run(["journalctl", "-u", "rq-worker@*", "-o", "cat", "--no-pager"]).stdout
    assert f"Following the new Redis primary 127.0.0.1:{new} of mymaster (was 127.0.0.1:{old})" in journal
    executions = {j["executions"] for j in jobs(ha, ours).values()}
    assert executions and min(executions) >= 1
    systemctl(ha, "stop", "rq-worker@1", "rq-worker@2")
    sentinel.restore(ha, fault, old_unit)  # back for the next test: as a replica of the new primary
