"""Fixtures for the e2e layer: the built .deb, the cached rootfs, a booted sandbox with it installed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import wait_until
from provision import (
    APP,
    ENV,
    PASSWORD,
    PY,
    ROOT,
    TEMPLATE,
    assert_conffile_retired,
    build_deb,
    ctl,
    install,
    jobs,
    leftovers,
    operator_env,
    provision,
)
from sandbox import RELEASES as BOOTABLE
from sandbox import Sandbox, ensure_rootfs, missing_prerequisites

# The tests import these from here, beside the fixtures.
__all__ = ["APP", "ENV", "PASSWORD", "PY", "ROOT", "TEMPLATE", "assert_conffile_retired", "build_deb", "ctl", "install",
           "jobs", "leftovers", "operator_env", "provision"]

_reason = missing_prerequisites()

RELEASES = os.environ.get("RQWS_E2E_RELEASES", " ".join(BOOTABLE)).split()
"""The releases the e2e tests boot, each with that release's package (default: all)."""
FULL = os.environ.get("RQWS_E2E_FULL") == "1"
"""Run the release-independent modules on every release too (the full matrix)."""
NEWEST = max(RELEASES, key=lambda r: list(BOOTABLE).index(r) if r in BOOTABLE else -1)
"""Where a release-independent module runs unless FULL: the newest release selected."""


def pytest_report_header(config):
    independent = "every release" if FULL else f"{NEWEST} only (RQWS_E2E_FULL=1: every release)"
    return f"e2e releases: {' '.join(RELEASES)}; release-independent modules: {independent}"


def pytest_itemcollected(item):
    if "tests/e2e/" in str(item.fspath):
        item.add_marker(pytest.mark.e2e)
        if _reason:
            item.add_marker(pytest.mark.skip(reason=_reason))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Drop release-independent runs on the other releases, and run the e2e layer last (after pytest
    grouped it by release), so that scripts/test's package builds in the background overlap the others."""
    keep, e2e, dropped = [], [], []
    for item in items:
        if "tests/e2e/" not in str(item.fspath):
            keep.append(item)
            continue
        release = getattr(item, "callspec", None) and item.callspec.params.get("release")
        if release and release != NEWEST and not FULL and item.get_closest_marker("release_independent"):
            dropped.append(item)
        else:
            e2e.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep + e2e


@pytest.fixture(scope="session", params=RELEASES)
def release(request) -> str:
    return request.param


def prebuilt_deb(path: Path, release: str, timeout: float = 1800) -> Path:
    """A package built elsewhere. While ``<path>.building`` exists it is still being built (scripts/test
    builds in the background while the other layers run): wait; a failed build left ``<path>.log``."""
    pending = Path(f"{path}.building")
    deadline = time.monotonic() + timeout
    while pending.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if path.is_file():
        return path
    log = Path(f"{path}.log")
    detail = log.read_text(errors="replace")[-3000:] if log.exists() else "no log"
    raise RuntimeError(f"RQWS_E2E_DEB_{release.upper()}={path}: no package there; its build:\n{detail}")


@pytest.fixture(scope="session")
def deb(release) -> Path:
    """The freshly built package for the release (RQWS_E2E_DEB_<RELEASE> names a prebuilt one)."""
    prebuilt = os.environ.get(f"RQWS_E2E_DEB_{release.upper()}")
    return prebuilt_deb(Path(prebuilt), release) if prebuilt else build_deb(release)


def page_deb_beside(deb: Path) -> Path:
    """Where the Cockpit page's package lies beside ``deb``: build-deb writes
    cockpit-rq-worker-service_<version>_all.deb next to rq-worker-service_<version>_<arch>.deb, and
    scripts/lib/e2e_debs.sh links cockpit-rq-worker-service_<release>.deb next to rq-worker-service_<release>.deb."""
    parts = deb.name.removesuffix(".deb").split("_")
    if len(parts) == 3:
        parts[2] = "all"
    return deb.with_name("cockpit-" + "_".join(parts) + ".deb")


@pytest.fixture(scope="session")
def cockpit_deb(deb, release) -> Path:
    """The Cockpit page's package built with ``deb`` (RQWS_E2E_COCKPIT_DEB_<RELEASE> names another one)."""
    named = os.environ.get(f"RQWS_E2E_COCKPIT_DEB_{release.upper()}")
    path = Path(named) if named else page_deb_beside(deb)
    if not path.is_file():
        raise RuntimeError(f"no cockpit-rq-worker-service package at {path}: packaging/build-deb makes it beside "
                           f"{deb}, or name one with RQWS_E2E_COCKPIT_DEB_{release.upper()}")
    return path


def repack_deb(deb: Path, version: str) -> Path:
    """``deb`` as version ``version`` (packaging/repack-deb): the same files, maintainer scripts and
    units, for tests that need a newer package (an upgrade) without building one again."""
    out = subprocess.run(["packaging/repack-deb", str(deb), version, str(ROOT / "build" / "e2e-repacked")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"packaging/repack-deb failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rootfs(release) -> Path:
    return ensure_rootfs(release)


@pytest.fixture(scope="module")
def box(rootfs, deb):
    """A booted sandbox with the package installed as an operator would, and Redis with a password."""
    with Sandbox(rootfs) as sandbox:
        provision(sandbox, deb)
        yield sandbox
        cgroups, directory = list(sandbox.cgroups), str(sandbox.dir)
    assert not any(p.exists() for p in cgroups), "sandbox cgroups left behind"
    assert directory not in Path("/proc/self/mountinfo").read_text(), "sandbox mounts left behind"
    assert not Path(directory).exists(), "sandbox files left behind"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    return wait_until(predicate, timeout, interval=interval, what=what)


def systemctl(box: Sandbox, *args: str, check: bool = True):
    return box.run(["systemctl", *args], check=check)


def reset(box: Sandbox, *extra_dropin: str) -> None:
    """Between tests: all instances stopped and reset, our drop-in replaced, Redis empty."""
    systemctl(box, "stop", "rq-worker@*.service", check=False)
    systemctl(box, "reset-failed", check=False)
    dropin = "/etc/systemd/system/rq-worker@.service.d/e2e-test.conf"
    if extra_dropin:
        box.write(dropin, "[Service]\n" + "\n".join(extra_dropin) + "\n")
    else:
        box.run(["rm", "-f", dropin])
    systemctl(box, "daemon-reload")
    ctl(box, "flush")
