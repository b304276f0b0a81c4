"""Servers take new versions from the APT repository packaging/build-repo makes: `apt-get upgrade` and
unattended-upgrades, while a long job runs, neither wait for the job nor ask a question.

One host per release (the suite, Python, apt and unattended-upgrades are the release's): the released
0.2.0 package installed from the repository, served over HTTP on the host's loopback and verified by
apt with the repository's keyring (signed-by, never trusted=yes). Then this checkout's package is
published into the repository and taken with `apt-get update && apt-get upgrade -y`, then a newer one
(the same package repacked) with `unattended-upgrade` and an origins pattern for the repository; both
without a terminal and without --force-conf* options, both while instance 1 runs one long job (so the
second comes while instance 1 still waits to take the first) and instance 2 is idle, and jobs keep
being enqueued. Each returns while the job still runs; the job runs exactly once, the jobs enqueued
meanwhile once each, and systemd restarts no instance (NRestarts unchanged).

The figures (apt's wall time with the job running, the jobs enqueued during the upgrade and how many
of them ran before apt returned, NRestarts) are printed and written to build/e2e-apt-repository-*.txt;
the closing note's are measured with RQWS_E2E_APT_JOB_SECONDS=60.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, ctl, jobs, repack_deb, systemctl, wait_for
from provision import configure
from released import released_deb
from sandbox import Sandbox

from rq_worker_service import __version__

JOB_SECONDS = int(os.environ.get("RQWS_E2E_APT_JOB_SECONDS", "25"))
"""The long job running through both upgrades. It must outlast them, with room for a slow machine: here
unattended-upgrade returned 9-11 s into it (the records say how far into the job each returned)."""
STREAM_SECONDS = 6
"""Jobs are enqueued every half second for this long from the moment apt starts."""
REPO_DIR = "/srv/apt-repo"
URL = "http://127.0.0.1:8079/"
KEYRING = "/etc/apt/keyrings/rq-worker-service-archive-keyring.gpg"
NEWER = f"{__version__}+e2e1"
"""The version unattended-upgrades takes: this checkout's package repacked (sorts above it)."""
PROMPTS = ("(Y/I/N/O/D/Z)", "conffile prompt", "end of file on stdin", "Configuration file '")
"""What dpkg or unattended-upgrades print when a package would ask a question."""

# README "From the APT repository" gives both forms; each release takes one.
SOURCES = {
    "bookworm": ("/etc/apt/sources.list.d/rq-worker-service.list",
                 f"deb [signed-by={KEYRING}] {URL} bookworm main\n"),
    "trixie": ("/etc/apt/sources.list.d/rq-worker-service.sources",
               f"Types: deb\nURIs: {URL}\nSuites: trixie\nComponents: main\nSigned-By: {KEYRING}\n"),
}
ORIGINS = ('Unattended-Upgrade::Origins-Pattern {\n'
           '    "origin=rq-worker-service,codename=${distro_codename}";\n};\n')
"""README "Upgrading": unattended-upgrades takes the repository's packages by its Release fields."""


def publish(box: Sandbox, work: Path, *debs: Path) -> None:
    """Add ``debs`` to the repository with packaging/build-repo (a throwaway key) and copy it to the
    host's web root, as a publisher would."""
    out = subprocess.run(["packaging/build-repo", "--repo", str(work / "repo"), "--test-key", str(work / "gnupg"),
                          *map(str, debs)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"packaging/build-repo failed:\n{out.stdout}\n{out.stderr}"
    shutil.copytree(work / "repo", box.path(REPO_DIR), dirs_exist_ok=True)


def unattended(box: Sandbox, command: str, timeout: float) -> subprocess.CompletedProcess:
    """``command`` as cron or a timer runs it: no terminal (its own session), stdin /dev/null."""
    return box.run(["setsid", "--wait", "sh", "-c", f"exec </dev/null; {command}"], check=False, timeout=timeout)


def package(box: Sandbox) -> str:
    """dpkg's state and version of the package, e.g. ``ii 0.3.0+deb13``."""
    return box.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", "rq-worker-service"]).stdout.replace(
        "  ", " ").strip()


def restarts(box: Sandbox) -> dict[str, str]:
    return {i: box.show(f"rq-worker@{i}", "NRestarts")["NRestarts"] for i in "12"}


def settled(box: Sandbox) -> bool:
    """Both instances active again: a reload's re-execution done (its ActiveState is ``reloading``)."""
    return all(box.show(f"rq-worker@{i}", "ActiveState")["ActiveState"] == "active" for i in "12")


def upgrade(box: Sandbox, command: str, version: str, job: str, stream_id: str) -> dict:
    """Run ``command`` (an upgrade to ``version``) as a timer would while ``job`` runs and jobs keep being
    enqueued (``stream_id``-0, -1, …): it returns at once, without a question, the package configured.
    Returns what the figures are made of; ``join`` waits for the enqueuing to end and gives the ids."""
    streamed: list[list[str]] = []
    stream = threading.Thread(target=lambda: streamed.append(ctl(
        box, "stream", "0.2", "--every", "0.5", "--for", str(STREAM_SECONDS), "--id", stream_id)))
    stream.start()
    start = time.time()
    out = unattended(box, command, timeout=JOB_SECONDS + 300)
    returned = time.time()
    long_job = jobs(box, [job])[job]
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"{command} exited {out.returncode}:\n{output[-4000:]}"
    assert not [p for p in PROMPTS if p in output], f"{command} met a question:\n{output[-4000:]}"
    assert package(box) == f"ii {version}", (package(box), output[-4000:])
    assert long_job["status"] == "started", (
        f"{command} returned {returned - start:.1f} s after it started, when the long job was {long_job['status']}: "
        f"apt waited for the job\n{output[-3000:]}")

    def join() -> list[str]:
        stream.join()
        return streamed[0]

    return {"command": command, "start": start, "returned": returned, "join": join}


def figures(box: Sandbox, release: str, run: dict, job_started: float, restarts_before: dict[str, str]) -> str:
    """The closing note's figures for one upgrade: apt's wall time, the jobs enqueued while it ran and how
    many of them had run (ended) before it returned (Redis server time, the host's clock)."""
    queued = run["join"]()
    states = jobs(box, queued)
    ended = {e["id"]: e["t"] for e in ctl(box, "trace") if e["event"] == "end"}
    during = [i for i in queued if run["start"] <= states[i]["enqueued_at"] <= run["returned"]]
    ran = sum(ended[i] <= run["returned"] for i in during)
    return (f"{release} `{run['command']}`: returned after {run['returned'] - run['start']:.1f} s, "
            f"{run['returned'] - job_started:.0f} s into a {JOB_SECONDS} s job; {len(during)} jobs enqueued "
            f"meanwhile, {ran} of them ran before it returned; "
            f"NRestarts {restarts_before} before, unchanged after")


def record(release: str, lines: list[str]) -> None:
    """Print the figures (pytest -s) and keep them in build/ for the closing note."""
    path = ROOT / "build" / f"e2e-apt-repository-{release}.txt"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        for line in lines:
            print(line)
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


@pytest.fixture(scope="module")
def newer_deb(deb) -> Path:
    return repack_deb(deb, NEWER)


def test_apt_upgrade_then_unattended_upgrade_from_the_repository_during_a_running_job(
        rootfs, release, deb, newer_deb, tmp_path):
    old = released_deb("0.2.0", release)
    with Sandbox(rootfs) as box:
        # The sandbox has no network: Debian's own sources would only fail to update; a server keeps them.
        box.run("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources")
        # Nothing but the test runs apt here (apt-daily would hold its lock at random).
        systemctl(box, "stop", "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
                  "apt-daily-upgrade.service")
        publish(box, tmp_path, old)
        box.run(["systemd-run", "--unit=apt-repo-http", "--property=Type=exec", "python3", "-m", "http.server",
                 "--bind", "127.0.0.1", "--directory", REPO_DIR, URL.rsplit(":", 1)[1].strip("/")])
        fetch = ("import sys, urllib.request; data = urllib.request.urlopen(sys.argv[1]).read(); "
                 "open(sys.argv[2], 'wb').write(data)")
        wait_for(lambda: box.run(["python3", "-c", fetch, URL + "rq-worker-service-archive-keyring.gpg", KEYRING],
                                 check=False).returncode == 0, 20, "the repository's web server")
        path, text = SOURCES[release]
        box.write(path, text)
        box.write("/etc/apt/apt.conf.d/52rq-worker-service", ORIGINS)
        out = unattended(box, "apt-get update && apt-get install -y rq-worker-service", timeout=300)
        assert out.returncode == 0 and "W:" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert package(box) == f"ii {dpkg_version(old)}"
        configure(box)

        # Instance 1 runs the long job, instance 2 is idle, through both upgrades: the second comes while
        # instance 1 still waits to take the first (a timer's run after an operator's upgrade).
        systemctl(box, "start", "rq-worker@1")
        ctl(box, "enqueue", "sleep_job", str(JOB_SECONDS), "--id", "long")
        wait_for(lambda: jobs(box, ["long"])["long"]["status"] == "started", 20, "the long job to start")
        job_started = time.time()
        systemctl(box, "start", "rq-worker@2")
        wait_for(lambda: settled(box), 30, "instance 2 to be ready")
        before = restarts(box)

        publish(box, tmp_path, deb)
        apt = upgrade(box, "apt-get update && apt-get upgrade -y", dpkg_version(deb), "long", "apt-queued")
        publish(box, tmp_path, newer_deb)
        update = unattended(box, "apt-get update", timeout=120)  # apt-daily.service's part
        assert update.returncode == 0 and "W:" not in update.stdout + update.stderr, update.stdout + update.stderr
        uu = upgrade(box, "unattended-upgrade -v", dpkg_version(newer_deb), "long", "uu-queued")
        log = box.run(["cat", "/var/log/unattended-upgrades/unattended-upgrades.log"]).stdout
        assert "Packages that will be upgraded: rq-worker-service" in log, log[-3000:]

        wait_for(lambda: jobs(box, ["long"])["long"]["status"] == "finished", JOB_SECONDS + 60,
                 "the long job to finish")
        assert jobs(box, ["long"])["long"]["executions"] == 1, jobs(box, ["long"])
        queued = apt["join"]() + uu["join"]()
        wait_for(lambda: all(j["status"] == "finished" for j in jobs(box, queued).values()), 60,
                 "the jobs enqueued during the upgrades to run")
        assert all(j["executions"] == 1 for j in jobs(box, queued).values()), jobs(box, queued)
        wait_for(lambda: settled(box), 60, "both instances to be on the new code")
        assert restarts(box) == before, "systemd restarted an instance during the upgrades"
        record(release, [figures(box, release, run, job_started, before) for run in (apt, uu)])


def dpkg_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()
