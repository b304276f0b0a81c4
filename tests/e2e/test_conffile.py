"""/etc/rq-worker/worker.env is the operator's: no install, upgrade or reinstall asks about it or changes it.

0.1.0 and 0.2.0 shipped it as a conffile, so every new variable in the template made dpkg ask about an
edited copy, and a plain ``apt-get install -y`` without a terminal stopped there, unconfigured. Since
0.3.0 the template is /usr/share/rq-worker-service/worker.env and postinst makes /etc's copy on the first
install only. One box per release starts from the released 0.2.0 package with an edited worker.env
whose mode the operator changed, and takes it through this package's life: the upgrade, a remove and
reinstall, an operator who deletes the file (per-instance files only) and an interrupted reinstall, a
purge, and a first install after it. test_rq_upgrade.py covers the upgrade from 0.1.0; every e2e
install goes through provision.install, which fails on any question (stdin at its end) and checks ``ii``.
"""

from __future__ import annotations

import pytest
from conftest import (
    ENV,
    PASSWORD,
    TEMPLATE,
    assert_conffile_retired,
    ctl,
    install,
    jobs,
    leftovers,
    operator_env,
    provision,
    systemctl,
    wait_for,
)
from released import released_deb
from sandbox import Sandbox

# dpkg's conffile handling is the same on both releases; the upgrade from 0.2.0 without a question runs
# on every release in test_apt_repository.py and test_package.py, the one from 0.1.0 in test_rq_upgrade.py.
pytestmark = pytest.mark.release_independent


@pytest.fixture(scope="module")
def box_020(rootfs, release):
    """A booted box with the released 0.2.0 package, provisioned (worker.env edited) as an operator would."""
    with Sandbox(rootfs) as box:
        provision(box, released_deb("0.2.0", release))
        yield box


def status(box: Sandbox) -> str:
    return box.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "rq-worker-service"], check=False).stdout


def runs_a_job(box: Sandbox, instance: str, job_id: str) -> None:
    systemctl(box, "restart", f"rq-worker@{instance}")
    ctl(box, "enqueue", "quick_job", "1", "--id", job_id)
    wait_for(lambda: jobs(box, [job_id])[job_id]["status"] == "finished", 20, f"rq-worker@{instance} to run a job")


def test_upgrade_from_020_keeps_the_edited_file_and_asks_nothing(box_020, deb):
    box_020.run(["chmod", "0440", ENV])  # tighter than 0.2.0's stat override (0640): an upgrade keeps it too
    edited = operator_env(box_020)
    assert b"REDIS_PASSWORD=" in edited.data and edited.stat == "440 root:rq-worker", edited

    install(box_020, deb)  # plain apt-get install -y ./…deb, no terminal: a question would fail it

    assert operator_env(box_020) == edited, "worker.env's bytes, mode or owner changed"
    assert_conffile_retired(box_020)
    runs_a_job(box_020, "1", "after-upgrade")  # the workers read the operator's file (password, app path)


def test_remove_reinstall_delete_interrupted_unpack_purge_and_a_first_install(box_020, deb):
    edited = operator_env(box_020)
    box_020.run(["apt-get", "remove", "-y", "rq-worker-service"], input="", timeout=300)
    assert status(box_020) == "rc " and operator_env(box_020) == edited, "remove keeps the configuration"
    install(box_020, deb)
    assert operator_env(box_020) == edited, "a reinstall after remove changed worker.env"

    # The operator moves everything to per-instance files and deletes worker.env on purpose.
    box_020.write("/etc/rq-worker/worker-1.env", edited.data.decode(), mode=0o640)
    box_020.run(["chgrp", "rq-worker", "/etc/rq-worker/worker-1.env"])
    box_020.run(["rm", ENV])
    # An upgrade interrupted after the unpack, configured later. The same package again (postinst runs
    # as on an upgrade: $2 is the configured version) spares a repack (5 s a release).
    box_020.run(["dpkg", "--unpack", f"/root/{deb.name}"], input="", timeout=300)
    assert status(box_020) == "iU "
    box_020.run(["dpkg", "--configure", "-a"], input="", timeout=300)
    assert status(box_020) == "ii "
    assert not box_020.path(ENV).exists(), "an upgrade brought back the worker.env the operator deleted"
    # The unit starts without worker.env: its worker reaches Redis with worker-1.env's password.
    systemctl(box_020, "restart", "rq-worker@1")
    assert box_020.show("rq-worker@1", "ActiveState")["ActiveState"] == "active"
    cli = f"redis-cli -a '{PASSWORD}' --no-auth-warning"
    wait_for(lambda: box_020.run(f"{cli} scard rq:workers").stdout.strip() == "1", 20, "the worker to register")

    box_020.run(["apt-get", "purge", "-y", "rq-worker-service"], input="", timeout=300)
    assert not status(box_020).startswith(("ii", "rc")), status(box_020)
    assert leftovers(box_020) == [], "a purge after the transition from a conffile leaves files"
    assert box_020.run(["dpkg-statoverride", "--list", ENV], check=False).stdout == ""

    install(box_020, deb)  # the first install after a purge makes worker.env from the template
    made = operator_env(box_020)
    assert made == (box_020.path(TEMPLATE).read_bytes(), "640 root:rq-worker"), made.stat
