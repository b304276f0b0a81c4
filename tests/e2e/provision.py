"""The e2e app and the package installed as an operator would, in a booted sandbox; and the
test-side control (``ctl.py``) that enqueues and reports jobs. Plain functions, without pytest,
so that the benchmarks set up their sandboxes the same way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import NamedTuple

from sandbox import Sandbox

from rq_worker_service.variables import env_file_text

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "app"
PASSWORD = "e2e-Redis-pa55word"
PY = "/usr/lib/rq-worker-service/bin/python3"
ENV = "/etc/rq-worker/worker.env"
TEMPLATE = "/usr/share/rq-worker-service/worker.env"


def build_deb(release: str) -> Path:
    """The package for ``release``, built from this checkout by packaging/build-deb."""
    out = subprocess.run(["packaging/build-deb", "--release", release], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"packaging/build-deb failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return ROOT / out.stdout.strip().splitlines()[-1]


def install(box: Sandbox, deb: Path) -> None:
    """``apt-get install -y ./<deb>`` as an operator or a script would: no ``--force-conf*`` option, no
    DEBIAN_FRONTEND, stdin at its end (no terminal). A question from dpkg (a conffile prompt) would read
    that end and fail the install, so every e2e test proves an install or upgrade asks nothing; and
    the package must be left configured (``ii``)."""
    box.copy_in(deb, f"/root/{deb.name}")
    box.run(["apt-get", "install", "-y", f"/root/{deb.name}"], timeout=300, input="")
    package = box.run(["dpkg-deb", "-f", f"/root/{deb.name}", "Package"]).stdout.strip()
    status = box.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package]).stdout
    assert status == "ii ", f"{deb.name} left {package} {status!r} after apt-get install, not configured (ii)"


def provision(sandbox: Sandbox, deb: Path) -> None:
    """The package installed as an operator would, the e2e app, and Redis with a password."""
    install(sandbox, deb)
    configure(sandbox)


def configure(sandbox: Sandbox) -> None:
    """On a host with the package installed (from a file or a repository): the e2e app, and Redis with
    a password in the operator's worker.env."""
    for name in ("e2ejobs.py", "ctl.py"):
        sandbox.copy_in(APP / name, f"/srv/e2e-app/{name}")
    sandbox.run(f"echo 'requirepass {PASSWORD}' >> /etc/redis/redis.conf && systemctl restart redis-server")
    with sandbox.path("/etc/rq-worker/worker.env").open("a") as f:
        f.write(f"\n# e2e\nREDIS_PASSWORD={PASSWORD}\nRQ_APP_PATH=/srv/e2e-app\n")


class EnvFile(NamedTuple):
    data: bytes
    stat: str
    """``<octal mode> <owner>:<group>``"""


def operator_env(box: Sandbox) -> EnvFile:
    """/etc/rq-worker/worker.env as it is: its bytes, mode and owner."""
    return EnvFile(box.path(ENV).read_bytes(), box.run(["stat", "-c", "%a %U:%G", ENV]).stdout.strip())


def assert_conffile_retired(box: Sandbox) -> None:
    """After an upgrade from a package that shipped worker.env as a conffile (0.1.0, 0.2.0): dpkg left
    the file to the operator (its status lists it as obsolete, so that a purge removes it), put nothing
    beside it, the stat override of those versions is gone, and the template is this build's."""
    conffiles = box.run(["dpkg-query", "-W", "-f=${Conffiles}\n", "rq-worker-service"]).stdout.split("\n")
    assert any(line.split()[:1] == [ENV] and line.split()[2:] == ["obsolete"] for line in conffiles), conffiles
    assert box.run(["ls", "-A", "/etc/rq-worker"]).stdout.split() == ["worker.env"], "nothing beside worker.env"
    assert box.run(["dpkg-statoverride", "--list", ENV], check=False).stdout == "", "0.2.0's stat override left"
    assert box.path(TEMPLATE).read_text() == env_file_text(), "the template is not this build's"
    assert box.run(["stat", "-c", "%a %U:%G", TEMPLATE]).stdout.strip() == "644 root:root"


def leftovers(box: Sandbox) -> list[str]:
    """Files of the package left after a purge (the e2e sandbox's own drop-ins aside)."""
    return box.run(
        "find /etc /opt /usr /lib/systemd /var/lib -xdev \\( -name '*rq-worker*' -o -name '*rq_worker*' \\) "
        "! -path '/etc/systemd/system/rq-worker@.service.d*' "
        "! -path '/etc/systemd/system/rq-worker-autoscale.service.d*' -print").stdout.split()


def ctl(box: Sandbox, *args: str):
    out = box.run([PY, "/srv/e2e-app/ctl.py", *args]).stdout.strip()
    return json.loads(out) if out else None


def jobs(box: Sandbox, ids: list[str]) -> dict:
    if len(ids) > 50:
        box.write("/tmp/ids.json", json.dumps(ids))
        return ctl(box, "jobs", "--file", "/tmp/ids.json")
    return ctl(box, "jobs", *ids)
