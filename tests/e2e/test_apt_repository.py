"""Servers take new versions from the APT repository packaging/build-repo makes: `apt-get upgrade` and
unattended-upgrades, while a long job runs, neither wait for the job nor ask a question.

One host per release (the suite, Python, apt and unattended-upgrades are the release's): the released
0.2.0 package installed from the repository, served over HTTP on the host's loopback and verified by
apt with the repository's keyring (signed-by, never trusted=yes). Then this checkout's package is
published into the repository and taken with `apt-get update && apt-get upgrade -y`, and a newer one
(the same package repacked) with `unattended-upgrade` and an origins pattern for the repository; both
without a terminal and without --force-conf* options, while instance 1 runs a long job and instance 2
is idle and jobs keep being enqueued. apt returns while the job still runs; the job runs exactly once,
the jobs enqueued meanwhile once each, and systemd restarts no instance (NRestarts unchanged).

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

JOB_SECONDS = int(os.environ.get("RQWS_E2E_APT_JOB_SECONDS", "20"))
"""The long job running through each upgrade. It must outlast apt (seconds once upgrades no longer
wait for it) with room for a slow CI machine."""
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


def through_a_running_job(box: Sandbox, release: str, step: str, command: str, version: str) -> dict:
    """Run ``command`` (an upgrade to ``version``) while one instance runs a JOB_SECONDS job and jobs keep
    being enqueued; check what the issue asks and return the figures. ``step`` names the jobs."""
    job = f"{step}-long"
    ctl(box, "enqueue", "sleep_job", str(JOB_SECONDS), "--id", job)
    wait_for(lambda: jobs(box, [job])[job]["status"] == "started", 20, "the long job to start")
    systemctl(box, "start", "rq-worker@1", "rq-worker@2")  # 1 has the job (started first), 2 is idle
    wait_for(lambda: settled(box), 30, "both instances to be ready")
    before = restarts(box)
    streamed: list[list[str]] = []
    stream = threading.Thread(target=lambda: streamed.append(ctl(
        box, "stream", "0.2", "--every", "0.5", "--for", str(STREAM_SECONDS), "--id", f"{step}-queued")))
    stream.start()
    start = time.time()
    out = unattended(box, command, timeout=JOB_SECONDS + 300)
    returned = time.time()
    long_job = jobs(box, [job])[job]
    stream.join()
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"{command} exited {out.returncode}:\n{output[-4000:]}"
    assert not [p for p in PROMPTS if p in output], f"{command} met a question:\n{output[-4000:]}"
    assert package(box) == f"ii {version}", (package(box), output[-4000:])
    assert long_job["status"] == "started", (
        f"{command} returned {returned - start:.1f} s after it started, when the long job was {long_job['status']}: "
        f"apt waited for the job\n{output[-3000:]}")

    wait_for(lambda: jobs(box, [job])[job]["status"] == "finished", JOB_SECONDS + 60, "the long job to finish")
    assert jobs(box, [job])[job]["executions"] == 1, jobs(box, [job])
    queued = streamed[0]
    wait_for(lambda: all(j["status"] == "finished" for j in jobs(box, queued).values()), 60,
             "the jobs enqueued during the upgrade to run")
    states = jobs(box, queued)
    assert all(j["executions"] == 1 for j in states.values()), states
    wait_for(lambda: settled(box), 60, "both instances to be on the new code")
    assert restarts(box) == before, "systemd restarted an instance during the upgrade"

    ended = {e["id"]: e["t"] for e in ctl(box, "trace") if e["event"] == "end"}
    during = [i for i in queued if start <= states[i]["enqueued_at"] <= returned]
    return {"release": release, "command": command, "wall": returned - start, "job": JOB_SECONDS,
            "queued during": len(during), "ran before return": sum(ended[i] <= returned for i in during),
            "NRestarts": before}


def record(figures: dict) -> None:
    line = (f"{figures['release']} `{figures['command']}`: returned after {figures['wall']:.1f} s with a "
            f"{figures['job']} s job running; {figures['queued during']} jobs enqueued meanwhile, "
            f"{figures['ran before return']} of them ran before it returned; NRestarts {figures['NRestarts']} "
            "before and after")
    print(line)
    path = ROOT / "build" / f"e2e-apt-repository-{figures['release']}.txt"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


@pytest.fixture(scope="module")
def newer_deb(deb) -> Path:
    return repack_deb(deb, NEWER)


def test_apt_upgrade_and_unattended_upgrade_from_the_repository_during_a_running_job(
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
        out = unattended(box, "apt-get update && apt-get install -y rq-worker-service", timeout=300)
        assert out.returncode == 0 and "W:" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert package(box) == f"ii {dpkg_version(old)}"
        configure(box)
        systemctl(box, "start", "rq-worker@1")
        ctl(box, "flush")

        publish(box, tmp_path, deb)
        apt = through_a_running_job(box, release, "apt", "apt-get update && apt-get upgrade -y",
                                    dpkg_version(deb))
        record(apt)

        publish(box, tmp_path, newer_deb)
        box.write("/etc/apt/apt.conf.d/52rq-worker-service", ORIGINS)
        update = unattended(box, "apt-get update", timeout=120)
        assert update.returncode == 0 and "W:" not in update.stdout + update.stderr, update.stdout + update.stderr
        systemctl(box, "stop", "rq-worker@2")  # instance 1 takes the long job; 2 is started idle
        uu = through_a_running_job(box, release, "uu", "unattended-upgrade -v", dpkg_version(newer_deb))
        record(uu)
        log = box.run(["cat", "/var/log/unattended-upgrades/unattended-upgrades.log"]).stdout
        assert "Packages that will be upgraded: rq-worker-service" in log, log[-3000:]


def dpkg_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()
