"""The e2e app and the package installed as an operator would, in a booted sandbox; and the
test-side control (``ctl.py``) that enqueues and reports jobs. Plain functions, without pytest,
so that the benchmarks set up their sandboxes the same way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "app"
PASSWORD = "e2e-Redis-pa55word"
PY = "/usr/lib/rq-worker-service/bin/python3"


def build_deb(release: str) -> Path:
    """The package for ``release``, built from this checkout by packaging/build-deb."""
    out = subprocess.run(["packaging/build-deb", "--release", release], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"packaging/build-deb failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return ROOT / out.stdout.strip().splitlines()[-1]


def install(box: Sandbox, deb: Path) -> None:
    """``apt-get install ./<deb>`` unattended. An edited worker.env is kept when a newer package ships a
    changed template (new variables), as unattended-upgrades does; the template lands beside it as
    worker.env.dpkg-dist. Without these options apt would ask, and fail without a terminal."""
    box.copy_in(deb, f"/root/{deb.name}")
    box.run(["apt-get", "install", "-y", "-o", "Dpkg::Options::=--force-confdef", "-o",
             "Dpkg::Options::=--force-confold", f"/root/{deb.name}"], timeout=300)


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


def ctl(box: Sandbox, *args: str):
    out = box.run([PY, "/srv/e2e-app/ctl.py", *args]).stdout.strip()
    return json.loads(out) if out else None


def jobs(box: Sandbox, ids: list[str]) -> dict:
    if len(ids) > 50:
        box.write("/tmp/ids.json", json.dumps(ids))
        return ctl(box, "jobs", "--file", "/tmp/ids.json")
    return ctl(box, "jobs", *ids)
