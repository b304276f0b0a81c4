"""Every fault point is reached somewhere in the package, and nothing reaches a point that is not listed.

The fault matrix (tests/integration/test_fault_matrix.py) can only throw a fault where the code calls
``faults.reached(<point>)``: a listed point that no code reaches is a step the matrix silently
never tests, and an unlisted name is a typo that never fires.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rq_worker_service import faults

PACKAGE = Path(faults.__file__).resolve().parent


def reached_in_source() -> dict[str, list[str]]:
    """Each point name passed to ``faults.reached`` in the package, with the files that pass it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in re.findall(r"""faults\.reached\(\s*["']([^"']+)["']""", path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    return found


@pytest.mark.parametrize("point", list(faults.POINTS))
def test_each_point_is_reached_somewhere(point):
    assert point in reached_in_source(), f"no code calls faults.reached({point!r}): place it after its step"


def test_nothing_reaches_an_unlisted_point():
    unlisted = {name: files for name, files in reached_in_source().items() if name not in faults.POINTS}
    assert unlisted == {}, "add these to faults.POINTS (with what has happened) or fix the name"


def test_reached_does_nothing_in_production(monkeypatch, tmp_path):
    """No variable switches a fault on in the package itself: only the test harness replaces reached()."""
    monkeypatch.setenv("RQWS_FAULT", "job.ended:kill-worker")
    monkeypatch.chdir(tmp_path)
    for point in faults.POINTS:
        assert faults.reached(point) is None
    assert list(tmp_path.iterdir()) == []
    assert not {"os", "sys", "environ", "getenv"} & set(vars(faults)), "faults.py must not read the environment"
