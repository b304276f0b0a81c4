"""packaging/build-repo without root or network: the suite each package lands in (from build-deb's
release tag), the signed Release files and the keyring apt verifies them with, a re-run adding a newer
package, and bad arguments refused in one line before anything is written. Tiny stand-in packages
(dpkg-deb) instead of built ones: what build-repo reads is their control fields and file names.
The installs through apt are tests/e2e/test_apt_repository.py's."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "build-repo"
TOOLS = ("dpkg-deb", "apt-ftparchive", "gpg", "gpgv")
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason=f"build-repo needs {', '.join(TOOLS)} (scripts/test installs them)")


def fake_deb(where: Path, version: str, arch: str = "amd64", package: str = "rq-worker-service") -> Path:
    """A package named like build-deb's, with one file and the fields build-repo reads."""
    tree = where / f"tree-{package}-{version}-{arch}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / f"usr/share/doc/{package}").mkdir(parents=True)
    (tree / f"usr/share/doc/{package}/version").write_text(version + "\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: tests <tests@rq-worker-service.invalid>\nDescription: stand-in\n stand-in for build-repo's test\n")
    out = where / f"{package}_{version}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True, capture_output=True)
    return out


def build_repo(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def fields(path: Path) -> dict[str, str]:
    """A Release file's or a Packages stanza's single-line fields (the last stanza wins)."""
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line and line[0] != " ")


def versions(repo: Path, suite: str, arch: str = "amd64") -> list[str]:
    text = (repo / "dists" / suite / "main" / f"binary-{arch}" / "Packages").read_text()
    return sorted(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Version: "))


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def key(tmp_path) -> Path:
    return tmp_path / "gnupg"


@needs_tools
def test_each_package_goes_to_its_releases_suite_signed_with_the_exported_key(tmp_path, repo, key):
    debs = [fake_deb(tmp_path, "0.3.0+deb12"), fake_deb(tmp_path, "0.3.0+deb13")]
    out = build_repo("--repo", repo, "--test-key", key, *debs)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(repo)
    assert versions(repo, "bookworm") == ["0.3.0+deb12"]
    assert versions(repo, "trixie") == ["0.3.0+deb13"]
    keyring = repo / "rq-worker-service-archive-keyring.gpg"
    assert keyring.read_bytes()[:1] != b"-", "the keyring is binary (apt's signed-by takes it as .gpg)"
    for suite in ("bookworm", "trixie"):
        release = fields(repo / "dists" / suite / "Release")
        assert {k: release.get(k) for k in ("Origin", "Label", "Suite", "Codename", "Architectures", "Components")} == {
            "Origin": "rq-worker-service", "Label": "rq-worker-service", "Suite": suite, "Codename": suite,
            "Architectures": "amd64", "Components": "main"}
        assert "Date" in release and "Valid-Until" not in release
        for signed in (["InRelease"], ["Release.gpg", "Release"]):
            check = subprocess.run(["gpgv", "--keyring", str(keyring), *(str(repo / "dists" / suite / f)
                                                                           for f in signed)], capture_output=True)
            assert check.returncode == 0, check.stderr
        stanza = fields(repo / "dists" / suite / "main/binary-amd64/Packages")
        assert (repo / stanza["Filename"]).is_file()


@needs_tools
def test_the_arch_all_cockpit_page_is_indexed_beside_the_main_package(tmp_path, repo, key):
    """build-deb makes two packages per release; the Cockpit page's (Architecture: all) must be in the
    binary-amd64 index apt reads, beside the main one, and not make an architecture of its own."""
    debs = [fake_deb(tmp_path, "0.3.0+deb13"), fake_deb(tmp_path, "0.3.0+deb13", "all", "cockpit-rq-worker-service")]
    out = build_repo("--repo", repo, "--test-key", key, *debs)
    assert out.returncode == 0, out.stderr
    text = (repo / "dists/trixie/main/binary-amd64/Packages").read_text()
    assert sorted(line for line in text.splitlines() if line.startswith("Package: ")) == [
        "Package: cockpit-rq-worker-service", "Package: rq-worker-service"]
    assert fields(repo / "dists/trixie/Release")["Architectures"] == "amd64"


@needs_tools
def test_a_rerun_adds_a_newer_package_beside_the_older_under_the_same_key(tmp_path, repo, key):
    assert build_repo("--repo", repo, "--test-key", key, fake_deb(tmp_path, "0.3.0+deb13")).returncode == 0
    keyring = (repo / "rq-worker-service-archive-keyring.gpg").read_bytes()
    out = build_repo("--repo", repo, "--test-key", key, fake_deb(tmp_path, "0.3.0+e2e1+deb13"))
    assert out.returncode == 0, out.stderr
    assert versions(repo, "trixie") == ["0.3.0+deb13", "0.3.0+e2e1+deb13"]
    assert (repo / "rq-worker-service-archive-keyring.gpg").read_bytes() == keyring
    assert not (repo / "dists" / "bookworm").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["dists", "pool", "rq-worker-service-archive-keyring.gpg"]


@needs_tools
def test_valid_days_writes_valid_until(tmp_path, repo, key):
    out = build_repo("--repo", repo, "--test-key", key, "--valid-days", "30", fake_deb(tmp_path, "0.3.0+deb12"))
    assert out.returncode == 0, out.stderr
    assert "Valid-Until" in fields(repo / "dists" / "bookworm" / "Release")


@needs_tools
def test_the_operators_key_is_taken_from_gnupghome(tmp_path, repo, key):
    """--key names a key in GNUPGHOME: here the one a --test-key run generated, given as the operator's."""
    assert build_repo("--repo", repo, "--test-key", key, fake_deb(tmp_path, "0.3.0+deb12")).returncode == 0
    listed = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], capture_output=True, text=True,
                            env={"GNUPGHOME": str(key), "PATH": "/usr/bin:/bin"}, check=True).stdout
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr"))
    out = subprocess.run([str(SCRIPT), "--repo", str(tmp_path / "other"), "--key", fingerprint,
                          str(fake_deb(tmp_path, "0.3.0+deb13"))], cwd=ROOT, capture_output=True, text=True,
                         env={"GNUPGHOME": str(key), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert versions(tmp_path / "other", "trixie") == ["0.3.0+deb13"]
    subprocess.run(["gpgconf", "--kill", "all"], env={"GNUPGHOME": str(key), "PATH": "/usr/bin:/bin"})


@needs_tools
def test_without_packages_it_signs_the_existing_repository_again(tmp_path, key):
    """In a checkout whose dist/ is empty: refused without a repository, re-signed (a new Date) with one."""
    checkout = tmp_path / "checkout"
    for part in ("packaging/build-repo", "scripts/lib/bootstrap.sh"):
        (checkout / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, checkout / part)
    script = str(checkout / "packaging/build-repo")
    refused = subprocess.run([script, "--test-key", str(key)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 66 and "no packages in dist/" in refused.stderr, refused.stderr
    first = subprocess.run([script, "--test-key", str(key), str(fake_deb(tmp_path, "0.3.0+deb13"))],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    release = checkout / "build/apt-repo/dists/trixie/Release"
    dated = fields(release)["Date"]
    time.sleep(1.1)
    again = subprocess.run([script, "--test-key", str(key)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert fields(release)["Date"] != dated
    assert versions(checkout / "build/apt-repo", "trixie") == ["0.3.0+deb13"]


@pytest.mark.parametrize(("args", "status", "names"), [
    (["--test-key", "{key}", "{tmp}/missing_0.3.0+deb12_amd64.deb"], 66, "is not a file"),
    (["--test-key", "{key}", "{deb11}"], 65, "+deb12, +deb13"),
    (["--test-key", "{key}", "{untagged}"], 65, "release tag"),
    (["--test-key", "{key}", "{notadeb}"], 65, "is not a Debian package"),
    (["{deb12}"], 64, "--key KEYID"),
    (["--key", "ABC", "--test-key", "{key}", "{deb12}"], 64, "not both"),
    (["--test-key", "{key}", "--valid-days", "soon", "{deb12}"], 64, "--valid-days 30"),
    (["--test-key", "{key}", "--sign", "{deb12}"], 64, "unknown argument --sign"),
    (["--test-key"], 64, "--test-key needs a value"),
])
def test_bad_arguments_get_one_line_and_write_nothing(tmp_path, repo, key, args, status, names):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    notadeb = tmp_path / "notadeb.deb"
    notadeb.write_text("not a package\n")
    paths = {"key": key, "tmp": tmp_path, "notadeb": notadeb, "deb12": fake_deb(tmp_path, "0.3.0+deb12"),
             "deb11": fake_deb(tmp_path, "0.3.0+deb11"), "untagged": fake_deb(tmp_path, "0.3.0")}
    out = build_repo("--repo", repo, *(a.format(**paths) for a in args))
    assert out.returncode == status, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build-repo: ") and names in lines[0], out.stderr
    assert not repo.exists() and not key.exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    out = subprocess.run(["shellcheck", "-x", "packaging/build-repo"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
