"""The suite's own layout: ``scripts/test`` collects every layer in one pytest session (rootdir-less
``rootdir/tests`` imports, no packages), where two test modules with one basename stop the whole run
at collection. A helper running one layer alone does not see it; this test does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_module_basenames_are_unique_across_the_layers():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1], (
        "test modules share a basename; rename one (pytest cannot import both in one session)")
