"""Run rq's own test suite against our worker classes and compare with the expected differences.

    .venv/bin/python tests/rq_suite/run_suite.py        # as root: exit 0 when only expected.txt differs

rq's sdist ships its tests; we fetch the sdist of the rq version installed here (so the suite and
the code under test always match, and raising the pin brings the new suite), keep its ``tests/``
and run them with ``rq_suite_plugin`` substituting our classes. rq's tests talk to Redis at
``localhost:6379`` (hard-coded in several places), so the run happens in a network namespace of its
own (``unshare --net``, hence root) with a private redis-server on that port: nothing on the host
is touched and no host port is needed.

The whole suite runs, rq's slow tests (``RUN_SLOW_TESTS_TOO``: the shutdown tests, warm and cold,
a horse dying mid-job) and its TLS tests (``RUN_SSL_TESTS``) included: the namespace's redis-server
also listens with TLS on port 9736, where rq's CI puts stunnel in front of the same server, with a
throwaway certificate made by openssl for the run (rq's tests do not verify it). The namespace has
a /tmp of its own as well, since rq's tests leave sentinel files at fixed paths there.

It runs twice at once: with our classes, and with rq's own (``RQ_SUITE_STOCK``), each in parts
(``PARTS``), each part in a namespace of its own. The verdict: a test that fails with
our classes and is not in ``expected.txt`` is a new difference, unless it passes on a second run
(flaky here) or fails with rq's own classes too in either run (this machine's); both are reported
as such. A test listed in ``expected.txt`` that passes (twice) means a difference has gone and the
list must shrink; a test that runs with rq's classes but is skipped or missing with ours (or the
other way round), or a slow or TLS test skipped in either, means the two did not run the same
suite. Each fails the run. Each entry of ``expected.txt`` carries its reason and the passage of
our documentation that tells operators about it; a missing passage fails the run too.
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
TLS_PORT = 9736
"""rq's TLS tests connect here (``tests.find_empty_redis_database(ssl=True)``), to the same server."""
SUITE_TIMEOUT = 600
"""Seconds for a run of the suite (≈1.5 min here in parts, a minute of it one test waiting out rq's
60 s hard-kill grace); past it the namespaces and all in them are killed."""
PARTS = [["tests/test_worker.py::WorkerShutdownTestCase"],
         ["tests/test_cli.py", "tests/test_scheduler.py"],
         ["tests/test_job_dependency.py", "tests/test_spawn_worker.py", "tests/test_commands.py"],
         ["tests/test_worker.py::TestWorker"]]
"""rq's suite sleeps far more than it computes (≈25 s of CPU in ≈290 s), so each run is split in
parts, each in a namespace of its own, all at once (both runs side by side): these groups, and the
rest of the suite (``--deselect`` of them). The longest part bounds the run: rq's shutdown tests
(≈75 s here, a minute of it one test waiting out rq's 60 s hard-kill grace) go alone."""
MUST_RUN = ("slow", "ssl_test")
"""rq's markers of the tests it skips unless asked: a skip of one of these means the run lost them."""


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


def start_pytest(suite: Path, tests: list[str], stock: bool, report: Path) -> subprocess.Popen:
    """Start pytest on ``tests`` (node ids, paths, ``--deselect`` options) inside namespaces of their own;
    outcomes go to ``report``."""
    env = dict(os.environ, RQ_SUITE_REPORT=str(report), PYTHONPATH=str(HERE), RUN_SLOW_TESTS_TOO="1",
               RUN_SSL_TESTS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RQ_SUITE_STOCK", None)
    if stock:
        env["RQ_SUITE_STOCK"] = "1"
    # A PID namespace too: if a test leaves a process behind, everything dies with the namespace.
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--",
           sys.executable, __file__, "--inside", str(suite), *tests]
    return subprocess.Popen(cmd, env=env)


def run_pytest(suite: Path, runs: dict[str, tuple[list[str], bool]]) -> tuple[dict[str, dict[str, dict]], set[str]]:
    """Run each of ``runs`` (name → tests, stock) at the same time; returns name → node id → outcome
    record (``outcome``, ``markers``, ``reason`` of a skip), and every test id the runs collected
    (deselected ones included)."""
    with tempfile.TemporaryDirectory(dir=CACHE) as reports:  # not in /tmp: each namespace has its own
        started = {name: start_pytest(suite, tests, stock, Path(reports) / f"{name}.jsonl")
                   for name, (tests, stock) in runs.items()}
        deadline = time.monotonic() + SUITE_TIMEOUT
        for name, proc in started.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # unshare's child dies with it (--kill-child), and the namespace with that
                proc.wait()
                print(f"rq's suite ({name}) did not finish within {SUITE_TIMEOUT}s (a test hung); its processes "
                      f"were killed")
        results: dict[str, dict[str, dict]] = {}
        seen: set[str] = set()
        for name in runs:
            listed = Path(reports) / f"{name}.jsonl.collected"
            seen.update(listed.read_text().splitlines() if listed.exists() else ())
            outcomes: dict[str, dict] = {}
            report = Path(reports) / f"{name}.jsonl"
            for line in report.read_text().splitlines() if report.exists() else []:
                entry = json.loads(line)
                if outcomes.get(entry["test"], {}).get("outcome") != "failed":
                    outcomes[entry["test"]] = entry
            results[name] = outcomes
    return results, seen


def parts(suite: Path) -> list[list[str]]:
    """pytest's arguments for the parts of the suite: together every test, each test once."""
    groups = [[part for part in group if (suite / part.split("::")[0]).is_file()] for group in PARTS]
    groups = [group for group in groups if group]
    # --deselect matches prefixes: a class's "::" keeps TestWorker from taking TestWorkerSubprocess along.
    return [*groups, ["tests", *(f"--deselect={part}{'::' if '::' in part else ''}" for group in groups
                                 for part in group)]]



def run_whole_suite(suite: Path) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """Every part with our classes and with rq's, all at once; returns ``ours`` and ``stock``
    records, and a problem for each part that ran no test (a part of PARTS rq renamed) and for each
    test that the parts together left out (the rest part collects the whole suite)."""
    runs = {f"{side}-{n}": (args, side == "stock") for side in ("ours", "stock")
            for n, args in enumerate(parts(suite), 1)}
    results, seen = run_pytest(suite, runs)
    problems = [f"{name} ran no test (was a part of {PARTS} renamed in rq {version('rq')}?)"
                for name, records in results.items() if not records]
    for side in ("ours", "stock"):
        ran = {test for name, records in results.items() if name.startswith(side) for test in records}
        problems += [f"collected but run in no part ({side}): {test}" for test in sorted(seen - ran)]
    merged: dict[str, dict[str, dict]] = {"ours": {}, "stock": {}}
    for name, records in results.items():
        merged[name.split("-")[0]].update(records)
    return merged, problems


def outcomes_of(records: dict[str, dict]) -> dict[str, str]:
    """Node id → ``passed``, ``failed`` or ``skipped``."""
    return {test: record["outcome"] for test, record in records.items()}


def not_the_same_suite(ours: dict[str, dict], stock: dict[str, dict]) -> list[str]:
    """Tests that ran (passed or failed) in one run but were skipped or missing in the other, and
    slow or TLS tests skipped in either: the two runs must be the same whole suite."""
    ran = {name: {t for t, r in records.items() if r["outcome"] != "skipped"}
           for name, records in (("our classes", ours), ("rq's classes", stock))}
    problems = []
    for this, other in (("rq's classes", "our classes"), ("our classes", "rq's classes")):
        records = ours if other == "our classes" else stock
        for test in sorted(ran[this] - ran[other]):
            how = f"skipped ({records[test].get('reason')})" if test in records else "not collected"
            problems.append(f"run with {this} but {how} with {other}: {test}")
    for name, records in (("our classes", ours), ("rq's classes", stock)):
        for test, record in sorted(records.items()):
            if record["outcome"] == "skipped" and set(record.get("markers", ())) & set(MUST_RUN):
                problems.append(f"{'/'.join(record['markers'])} test skipped with {name} ({record.get('reason')}): "
                                f"{test}")
    return problems


def tls_certificate(workdir: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for the namespace's redis-server (rq's tests do not verify it)."""
    cert, key = workdir / "redis.crt", workdir / "redis.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def private_tmp() -> None:
    """A /tmp of the namespace's own (rq's tests leave files at fixed paths there) that still shows
    what this run is made of when it lies in the host's /tmp: a checkout there (a CI clone may be),
    its virtualenv, the Python running us. Each such top directory is bound back from the host's."""
    tops = set()
    for path in (ROOT, Path(sys.prefix), Path(sys.executable).resolve(), *map(Path, sys.path)):
        if path.is_absolute() and path.parts[:2] == ("/", "tmp") and len(path.parts) > 2:
            tops.add(path.parts[2])
    host_tmp = CACHE / "host-tmp"  # a mount point only: the namespace's mounts end with it
    host_tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", "/tmp", str(host_tmp)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "rq-suite-tmp", "/tmp"], check=True)
    for top in sorted(tops):
        (Path("/tmp") / top).mkdir()
        subprocess.run(["mount", "--bind", str(host_tmp / top), f"/tmp/{top}"], check=True)


def inside(suite: Path, tests: list[str]) -> int:
    """In the new namespaces: loopback up, a /tmp of our own, a private redis-server on 6379 (and with
    TLS on 9736), then pytest."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    private_tmp()
    with tempfile.TemporaryDirectory() as workdir:
        cert, key = tls_certificate(Path(workdir))
        redis = subprocess.Popen(["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", workdir, "--tls-port", str(TLS_PORT),
                                  "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                  "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"],
                                 stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(PORT), "ping"], capture_output=True).stdout != b"PONG\n":
                if time.monotonic() > deadline or redis.poll() is not None:
                    raise SystemExit("the private redis-server did not start")
                time.sleep(0.1)
            pytest = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                                       "-p", "rq_suite_plugin", "-W", "ignore", *tests], cwd=suite)
            while True:  # this is the namespace's PID 1: it reaps the orphans as init would, or they stay
                pid, status = os.wait()  # zombies that rq's tests see as alive (test_work_horse_force_death)
                if pid == pytest.pid:
                    return os.waitstatus_to_exitcode(status)
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
    first, empty = run_whole_suite(suite)
    took = time.monotonic() - started
    ours, stock = outcomes_of(first["ours"]), outcomes_of(first["stock"])
    for name, outcomes in (("our", ours), ("rq's", stock)):
        if len(outcomes) < 100:
            raise SystemExit(f"rq's suite with {name} classes ran only {len(outcomes)} tests: see the output above")
    problems += empty + not_the_same_suite(first["ours"], first["stock"])
    failed = {t for t, outcome in ours.items() if outcome == "failed"}
    listed = {e.test for e in expected}

    new = sorted(failed - listed)
    gone = sorted(t for t in listed - failed if ours.get(t) == "passed")
    # Again, with rq's own classes beside: rq's tests with tight timing margins (its worker pool's) fail
    # now and then under load with either classes, and a failure of rq's in either run clears ours.
    reruns = {"ours": (new + gone, False), **({"stock": (new, True)} if new else {})}
    second = run_pytest(suite, reruns)[0] if new or gone else {}
    again, stock_again = outcomes_of(second.get("ours", {})), outcomes_of(second.get("stock", {}))
    for test in new:  # ours failed again and rq's own classes pass: a real new difference
        if again.get(test) != "failed":
            print(f"flaky here (failed once with our classes, then passed): {test}")
        elif "failed" in (stock.get(test), stock_again.get(test)):
            print(f"fails with rq's own classes too, so not ours (this machine's): {test}")
        else:
            problems.append(f"NEW difference from rq (fails with our classes, passes with rq's): {test}")
    problems += [f"expected difference no longer there (passes with our classes): {t}; remove it from "
                 f"tests/rq_suite/expected.txt and its documentation" for t in gone if again.get(t) == "passed"]
    problems += [f"expected difference not run at all (renamed or removed in rq {version('rq')}?): {t}"
                 for t in sorted(listed - set(ours))]

    for name, outcomes in (("our", ours), ("rq's own", stock)):
        counts = {o: sum(1 for v in outcomes.values() if v == o) for o in ("passed", "failed", "skipped")}
        of_them = f" ({len(failed & listed)} of them expected)" if name == "our" else ""
        print(f"rq {version('rq')}'s own suite with {name} classes: {counts['passed']} passed, {counts['failed']} "
              f"failed{of_them}, {counts['skipped']} skipped")
    print(f"rq {version('rq')}'s own suite: both runs, in parts side by side, took {took:.0f}s")
    for e in expected:
        if e.test in failed:
            print(f"  expected: {e.test}: {e.reason}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
