"""Packages of earlier releases, built from their commits, for the upgrade tests.

An upgrade runs the old package's maintainer scripts and conffiles and the old worker's code (its
re-execution, its stop) against the new package's: only a package really built from the old
commit tests that. Each is built once per machine and release (cached under the e2e cache), in a
worktree of this clone, by that commit's own packaging/build-deb.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from provision import ROOT
from sandbox import CACHE

RELEASED = {
    "0.1.0": "d2a906e90dd9720f9f51463f91a4c5871ebe496b",  # the last commit on rq 2.12
    "0.2.0": "28bb6f4dbd52edd39c51602b2da0ea47db883e64",  # rq 3.0, issue 27 landed
}
"""Version -> the commit its package was built from."""


def released_deb(version: str, release: str) -> Path:
    """The package of ``version`` for ``release`` (e.g. ``0.2.0+deb13``), built from its commit."""
    commit = RELEASED[version]
    cached = CACHE / "released-debs" / f"{version}-{commit[:12]}-{release}.deb"
    if cached.exists():
        return cached
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT).returncode != 0:
        raise RuntimeError(f"this clone lacks commit {commit} (a shallow clone?): the upgrade tests build the "
                           f"{version} package from it; clone with full history")
    work = Path(tempfile.mkdtemp(prefix=f"package-{version}-"))
    tree = work / "tree"
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        out = subprocess.run(["packaging/build-deb", "--release", release], cwd=tree, capture_output=True, text=True,
                             timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"building the {version} package failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / out.stdout.strip().splitlines()[-1], cached)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return cached
