"""debian/changelog is generated from CHANGELOG.md (scripts/debian_changelog.py): every version, in an
order dpkg agrees with, and package versions where Debian 13 sorts above Debian 12."""

from __future__ import annotations

import datetime as dt
import email.utils
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rq_worker_service import __version__

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("debian_changelog", ROOT / "scripts" / "debian_changelog.py")
assert _spec and _spec.loader
debian_changelog = importlib.util.module_from_spec(_spec)
sys.modules["debian_changelog"] = debian_changelog
_spec.loader.exec_module(debian_changelog)

CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
BUILT = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
ENTRY = re.compile(r"^rq-worker-service \((?P<version>[^)]+)\) (?P<release>\w+); urgency=medium$", re.M)
TRAILER = re.compile(r"^ -- (?P<who>.+?)  (?P<date>.+)$", re.M)
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg --compare-versions needs dpkg (Debian)")


def dpkg_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def test_changelog_md_sections_parse_newest_first_with_pyprojects_version_on_top():
    found = debian_changelog.sections(CHANGELOG)
    assert found[0].version == __version__ == debian_changelog.project_version(ROOT / "pyproject.toml")
    keys = [debian_changelog.version_key(s.version) for s in found]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    assert {"0.1.0", "0.2.0"} <= {s.version for s in found}
    assert all(s.date is not None for s in found[1:]), "only the top section may be unreleased"
    assert len(found) == CHANGELOG.count("\n## ")


def test_one_debian_entry_per_section_with_its_date():
    text = debian_changelog.debian_changelog(CHANGELOG, __version__, "trixie", "deb13", BUILT)
    found = debian_changelog.sections(CHANGELOG)
    entries = ENTRY.findall(text)
    assert entries == [(f"{s.version}+deb13", "trixie") for s in found]
    dates = [email.utils.parsedate_to_datetime(m["date"]) for m in TRAILER.finditer(text)]
    assert len(dates) == len(found)
    for section, date in zip(found, dates, strict=True):
        assert date == (BUILT if section.date is None else dt.datetime.combine(section.date, dt.time(),
                                                                                dt.UTC))
    for m in TRAILER.finditer(text):  # the weekday dpkg and lintian check is the date's own
        assert email.utils.format_datetime(email.utils.parsedate_to_datetime(m["date"])) == m["date"]
    body = [line for line in text.splitlines() if line.startswith("  ")]
    assert body and max(map(len, body)) <= 80, "lintian: debian-changelog-line-too-long"


def test_a_test_build_renames_the_top_entry_only():
    text = debian_changelog.debian_changelog(CHANGELOG, __version__, "bookworm", "deb12", BUILT, "9.9.9")
    versions = [v for v, _ in ENTRY.findall(text)]
    assert versions[0] == "9.9.9+deb12" and versions[1:] == [
        f"{s.version}+deb12" for s in debian_changelog.sections(CHANGELOG)[1:]]


@pytest.mark.parametrize(("text", "names"), [
    ("## 0.3.0 — unreleased\n## 0.2 — 2026-11-30\n", ["line 2", "'## 0.2 — 2026-11-30'", "X.Y.Z"]),
    ("## 0.3.0 - unreleased\n", ["line 1", "X.Y.Z"]),
    ("## 0.3.0 — unreleased\n## 0.2.0 — 2026-02-30\n", ["line 2", "2026-02-30 is not a date"]),
    ("## 0.3.0 — unreleased\n## 0.3.0 — 2026-11-30\n", ["line 2", "0.3.0 follows 0.3.0"]),
    ("## 0.2.0 — 2026-11-30\n## 0.3.0 — 2026-11-28\n", ["line 2", "0.3.0 follows 0.2.0", "newest first"]),
    ("## 0.3.0 — unreleased\n## 0.2.0 — unreleased\n", ["line 2", "only the top section"]),
    ("## 0.3.0 — 2026-11-28\n## 0.2.0 — 2026-11-30\n", ["line 2", "dated after 0.3.0"]),
    ("# Changelog\n", ["no '## X.Y.Z"]),
])
def test_a_malformed_changelog_fails_in_one_line(text, names):
    with pytest.raises(debian_changelog.ChangelogError) as failed:
        debian_changelog.sections(text)
    message = str(failed.value)
    assert "\n" not in message and all(name in message for name in names), message


def test_a_top_section_other_than_pyprojects_version_fails(tmp_path, capsys):
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## 0.2.0 — 2026-11-30\n\n- a change\n", encoding="utf-8")
    code = debian_changelog.main(["--release", "trixie", "--tag", "deb13", "--changelog", str(changelog)])
    out = capsys.readouterr()
    assert code == 65 and out.out == ""
    assert out.err.count("\n") == 1 and f"add '## {__version__} — unreleased' at the top" in out.err, out.err


@needs_dpkg
def test_dpkg_sees_the_entries_strictly_descending():
    for release, tag in (("bookworm", "deb12"), ("trixie", "deb13")):
        text = debian_changelog.debian_changelog(CHANGELOG, __version__, release, tag, BUILT)
        versions = [v for v, _ in ENTRY.findall(text)]
        assert all(dpkg_gt(a, b) for a, b in zip(versions, versions[1:], strict=False)), versions


@needs_dpkg
@pytest.mark.parametrize(("newer", "older"), [
    ("0.3.0+deb13", "0.3.0+deb12"),  # the same version: Debian 13's package replaces Debian 12's on dist-upgrade
    ("0.3.0+deb12", "0.2.0+deb13"),  # a newer version still built for 12 upgrades a dist-upgraded older one
    ("0.3.0+e2e1+deb12", "0.3.0+deb13"),  # packaging/repack-deb's test versions upgrade the built one
])
def test_package_versions_sort_across_releases(newer, older):
    assert dpkg_gt(newer, older) and not dpkg_gt(older, newer)
