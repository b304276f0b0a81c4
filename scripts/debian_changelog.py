"""debian/changelog from CHANGELOG.md: one entry per version section, newest first.

``apt changelog rq-worker-service`` and /usr/share/doc/rq-worker-service/changelog.Debian.gz then list
every version the package has had, as CHANGELOG.md does (a single generated entry named only the
version being built). Each entry points at its section of changelog.gz, which is CHANGELOG.md itself:
one text, two indexes, so the two cannot drift apart. dpkg takes the package's version from the top
entry, so the top section must be pyproject.toml's version; a malformed heading or an order that
would make dpkg see a downgrade fails the build in one line.

Usage (packaging/build-deb runs it):
    python3 scripts/debian_changelog.py --release bookworm --tag deb12 [--version V] > debian/changelog
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAINTAINER = "rq-worker-service maintainers <maintainers@rq-worker-service.invalid>"
HEADING = re.compile(r"## (?P<version>\d+\.\d+\.\d+) — (?P<date>unreleased|\d{4}-\d{2}-\d{2})")
"""A version section of CHANGELOG.md: ``## 0.2.0 — 2026-11-30`` or ``## 0.3.0 — unreleased``."""


class ChangelogError(ValueError):
    """CHANGELOG.md cannot become debian/changelog; the message names the line and the fix."""


@dataclass(frozen=True)
class Section:
    version: str
    date: dt.date | None
    """None: unreleased (dated by the build, SOURCE_DATE_EPOCH)."""


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def sections(text: str) -> list[Section]:
    """The version sections of CHANGELOG.md, checked: every ``## `` heading well formed, versions
    strictly descending, dates real and not increasing, only the top one unreleased."""
    found: list[Section] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("## "):
            continue
        match = HEADING.fullmatch(line.rstrip())
        if match is None:
            raise ChangelogError(f"CHANGELOG.md line {number}: {line!r} is not a version heading: "
                                 f"write '## X.Y.Z — YYYY-MM-DD' (or '— unreleased' for the top one)")
        date: dt.date | None = None
        if match["date"] != "unreleased":
            try:
                date = dt.date.fromisoformat(match["date"])
            except ValueError:
                raise ChangelogError(f"CHANGELOG.md line {number}: {match['date']} is not a date: "
                                     f"write YYYY-MM-DD") from None
        section = Section(match["version"], date)
        if found:
            newer = found[-1]
            if version_key(section.version) >= version_key(newer.version):
                raise ChangelogError(f"CHANGELOG.md line {number}: {section.version} follows {newer.version}: "
                                     f"sections go newest first, each version once")
            if date is None:
                raise ChangelogError(f"CHANGELOG.md line {number}: {section.version} is unreleased under a newer "
                                     f"version: only the top section may be unreleased, date this one")
            if newer.date is not None and date > newer.date:
                raise ChangelogError(f"CHANGELOG.md line {number}: {section.version} is dated after "
                                     f"{newer.version} ({newer.date}): fix the dates")
        found.append(section)
    if not found:
        raise ChangelogError("CHANGELOG.md has no '## X.Y.Z — YYYY-MM-DD' section: add one for this version")
    return found


def debian_changelog(text: str, project_version: str, release: str, tag: str, built: dt.datetime,
                     version: str | None = None) -> str:
    """debian/changelog for ``release``: versions ``<X.Y.Z>+<tag>``, the unreleased top one dated
    ``built``, the released ones at midnight UTC of their day. ``version`` (build-deb --version, for
    test builds) renames the top entry only."""
    found = sections(text)
    if found[0].version != project_version:
        raise ChangelogError(f"CHANGELOG.md's newest section is {found[0].version}, pyproject.toml says "
                             f"{project_version}: add '## {project_version} — unreleased' at the top")
    entries = []
    for index, section in enumerate(found):
        name = version if index == 0 and version else section.version
        when = built if section.date is None else dt.datetime.combine(section.date, dt.time(), dt.UTC)
        state = "unreleased when built" if section.date is None else f"released {section.date.isoformat()}"
        entries.append(
            f"rq-worker-service ({name}+{tag}) {release}; urgency=medium\n\n"
            f"  * Version {section.version}, {state}: the changes are listed under\n"
            f"    \"{section.version}\" in /usr/share/doc/rq-worker-service/changelog.gz.\n\n"
            f" -- {MAINTAINER}  {email.utils.format_datetime(when)}\n")
    return "\n".join(entries)


def project_version(pyproject: Path) -> str:
    with pyproject.open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def build_time() -> dt.datetime:
    """SOURCE_DATE_EPOCH (reproducible builds; build-deb sets it from the last commit), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return dt.datetime.fromtimestamp(int(epoch) if epoch else dt.datetime.now().timestamp(), dt.UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="the distribution of every entry (bookworm, trixie…)")
    parser.add_argument("--tag", required=True, help="the release tag appended to each version (deb12, deb13…)")
    parser.add_argument("--version", help="the top entry's version instead of pyproject's (a test build)")
    parser.add_argument("--changelog", type=Path, default=ROOT / "CHANGELOG.md")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    try:
        text = debian_changelog(args.changelog.read_text(encoding="utf-8"), project_version(args.pyproject),
                                args.release, args.tag, build_time(), args.version)
    except ChangelogError as exc:
        print(f"debian_changelog: {exc}", file=sys.stderr)
        return 65
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
