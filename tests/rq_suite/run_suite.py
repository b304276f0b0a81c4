"""Run rq's own test suite against our worker classes and compare with the expected differences.

    .venv/bin/python tests/rq_suite/run_suite.py        # as root: exit 0 when only expected.txt differs

rq's sdist ships its tests; we fetch the sdist of the rq version installed here (so the suite and
the code under test always match, and raising the pin brings the new suite), keep its ``tests/``
and run them with ``rq_suite_plugin`` substituting our classes. rq's tests talk to Redis at
``localhost:6379`` (hard-coded in several places), so the run happens in a network namespace of its
own (``unshare --net``, hence root) with a private redis-server on that port: nothing on the host
is touched and no host port is needed.

Included: every test of rq's suite but those rq itself marks slow (``RUN_SLOW_TESTS_TOO``: minutes
of sleeping through the same code paths) or SSL (needs a TLS proxy rq's CI sets up); ≈90 s here.

The verdict: a test that fails with our classes and is not in ``expected.txt`` is a new
difference, unless it also fails with rq's own classes on a re-run (then it is this machine's, and
is reported as such); a test listed in ``expected.txt`` that passes (twice) means a difference has
gone and the list must shrink. Either fails the run. Each entry of ``expected.txt`` carries its
reason and the passage of our documentation that tells operators about it; a missing passage
fails the run too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = Path(os.environ.get("RQ_SUITE_CACHE", "/var/cache/rq-worker-service-rq-suite" if os.geteuid() == 0
                            else ROOT / ".cache" / "rq-suite"))
"""Where the sdist's tests are kept: a fresh CI clone on the same machine finds them again."""
PORT = 6379
SUITE_TIMEOUT = 600
"""Seconds for one run of the suite (≈90 s here); past it the namespace and all in it are killed."""


@dataclass(frozen=True)
class Expected:
    test: str
    reason: str
    doc: str
    passage: str


def load_expected(path: Path = HERE / "expected.txt") -> list[Expected]:
    """``test | reason | file: passage`` per line; ``#`` comments and blank lines are skipped."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) != 3 or ": " not in parts[2]:
            raise SystemExit(f"{path}:{number}: expected 'test | reason | file: passage'")
        doc, passage = parts[2].split(": ", 1)
        entries.append(Expected(parts[0], parts[1], doc, passage))
    return entries


def undocumented(entries: list[Expected]) -> list[str]:
    """Entries whose documentation passage is not (or no longer) in the named file."""
    missing = []
    for e in entries:
        doc = ROOT / e.doc
        if not doc.is_file() or e.passage not in " ".join(doc.read_text().split()):
            missing.append(f"{e.test}: passage not found in {e.doc}: {e.passage!r}")
    return missing


def suite_dir() -> Path:
    """rq's ``tests/`` for the installed rq, from its sdist (downloaded once, then cached)."""
    rq_version = version("rq")
    target = CACHE / f"rq-{rq_version}"
    if (target / "tests" / "__init__.py").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-binary", ":all:", "--no-deps", f"rq=={rq_version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("rq-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            members = archive.getmembers()
            if any(m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir())
                   for m in members):
                raise SystemExit(f"{sdist.name}: unexpected paths or file types in the archive")
            archive.extractall(tmp, members=members)
        unpacked = Path(tmp) / f"rq-{rq_version}"
        shutil.rmtree(unpacked / "rq")  # test the installed rq, not the sdist's copy
        unpacked.rename(target)
    return target


def run_pytest(suite: Path, tests: list[str], stock: bool) -> dict[str, str]:
    """Run ``tests`` (node ids, or ``["tests"]``) inside the namespace; returns node id → outcome."""
    report = Path(tempfile.mkstemp(prefix="rq-suite-", suffix=".jsonl")[1])
    env = dict(os.environ, RQ_SUITE_REPORT=str(report), PYTHONPATH=str(HERE),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RUN_SLOW_TESTS_TOO", None)
    env.pop("RUN_SSL_TESTS", None)
    if stock:
        env["RQ_SUITE_STOCK"] = "1"
    # A PID namespace too: if a test leaves a process behind, everything dies with the namespace.
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--",
           sys.executable, __file__, "--inside", str(suite), *tests]
    try:
        subprocess.run(cmd, env=env, check=False, timeout=SUITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"rq's suite did not finish within {SUITE_TIMEOUT}s (a test hung); its processes were killed")
    outcomes: dict[str, str] = {}
    for line in report.read_text().splitlines():
        entry = json.loads(line)
        if outcomes.get(entry["test"]) != "failed":
            outcomes[entry["test"]] = entry["outcome"]
    report.unlink()
    return outcomes


def inside(suite: Path, tests: list[str]) -> int:
    """In the new network namespace: loopback up, a private redis-server on 6379, then pytest."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory() as workdir:
        redis = subprocess.Popen(["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(PORT), "ping"], capture_output=True).stdout != b"PONG\n":
                if time.monotonic() > deadline:
                    raise SystemExit("the private redis-server did not start")
                time.sleep(0.1)
            return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "-p", "rq_suite_plugin", "-W", "ignore", *tests], cwd=suite).returncode
        finally:
            redis.terminate()
            redis.wait(10)


def main() -> int:
    if sys.argv[1:2] == ["--inside"]:
        return inside(Path(sys.argv[2]), sys.argv[3:])
    expected = load_expected()
    problems = undocumented(expected)
    suite = suite_dir()
    started = time.monotonic()
    ours = run_pytest(suite, ["tests"], stock=False)
    if len(ours) < 100:
        raise SystemExit(f"rq's suite ran only {len(ours)} tests: see the output above")
    failed = {t for t, outcome in ours.items() if outcome == "failed"}
    listed = {e.test for e in expected}

    new = sorted(failed - listed)
    if new:  # ours failed again and rq's own classes pass: a real new difference
        again = run_pytest(suite, new, stock=False)
        stock = run_pytest(suite, new, stock=True)
        for test in new:
            if again.get(test) != "failed":
                print(f"flaky here (failed once with our classes, then passed): {test}")
            elif stock.get(test) == "failed":
                print(f"fails with rq's own classes too, so not ours (this machine's): {test}")
            else:
                problems.append(f"NEW difference from rq (fails with our classes, passes with rq's): {test}")
    gone = sorted(t for t in listed - failed if ours.get(t) == "passed")
    if gone:
        again = run_pytest(suite, gone, stock=False)
        problems += [f"expected difference no longer there (passes with our classes): {t}; remove it from "
                     f"tests/rq_suite/expected.txt and its documentation" for t in gone if again.get(t) == "passed"]
    problems += [f"expected difference not run at all (renamed or removed in rq {version('rq')}?): {t}"
                 for t in sorted(listed - set(ours))]

    counts = {o: sum(1 for v in ours.values() if v == o) for o in ("passed", "failed", "skipped")}
    took = time.monotonic() - started
    print(f"rq {version('rq')}'s own suite with our classes: {counts['passed']} passed, {counts['failed']} failed "
          f"({len(failed & listed)} of them expected), {counts['skipped']} skipped in {took:.0f}s")
    for e in expected:
        if e.test in failed:
            print(f"  expected: {e.test}: {e.reason}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
