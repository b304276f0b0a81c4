"""Stock rq's failover pause under rq's documented unit, beside the installed package's: how long new
work waits after Redis Sentinel elects a new primary.

One booted sandbox (the e2e sandbox: Debian with systemd as PID 1) holds Debian's Redis units: a
primary, a replica and three sentinels (``tests/e2e/sentinel.py``, as ``tests/e2e/test_redis_ha.py``
sets them up). ``rq-worker@1`` and ``@2`` from the package take queue ``default`` through
REDIS_SENTINELS; stock ``rq worker`` (``rqworker@1``: rq's documented unit, rq's own SENTINEL
setting, the rq the package bundles) takes ``stock``. Each side has the same backlog per worker
(ten 0.5 s jobs) when the fault comes: ``SENTINEL FAILOVER``, or the primary's process killed
and kept down. The pause is the time from the election to the end of a probe job queued on the new
primary right after it (in Redis time). Stock rq's reconnection backs off up to a minute, or never
comes (after a kill its unit hits the start limit): it is waited for up to ``--wait`` seconds.

    .venv/bin/python bench/failover.py [--release trixie] [--deb dist/…deb] [--rounds 1] [--wait 120]

(root: it boots the sandbox; without ``--deb`` it builds the package.) Not run in CI: the e2e test
checks the package's own bound (≤ 10 s); this measures the comparison for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests")]
import sentinel  # noqa: E402
import stock_rq  # noqa: E402
from helpers import wait_until  # noqa: E402
from provision import PASSWORD, build_deb, ctl, jobs, provision  # noqa: E402
from sandbox import Sandbox, ensure_rootfs  # noqa: E402

OURS, STOCK = ("rq-worker@1", "rq-worker@2"), "rqworker@1"
STOCK_UNIT = stock_rq.documented_unit("/srv/e2e-app", "/usr/local/bin/rq worker -c stocksettings stock")


def set_up(box: Sandbox, deb: Path) -> None:
    """The package, the Sentinel set-up, and stock rq under its documented unit with rq's SENTINEL."""
    provision(box, deb)
    sentinel.set_up_sentinel(box)
    box.write("/srv/e2e-app/stocksettings.py", (
        f"SENTINEL = {{'INSTANCES': {[('127.0.0.1', p) for p in sentinel.SENTINEL_PORTS.values()]!r}, "
        f"'MASTER_NAME': 'mymaster', 'PASSWORD': {PASSWORD!r}, 'DB': 0}}\n"))
    stock_rq.install(box, STOCK_UNIT)
    sentinel.systemctl(box, "daemon-reload")


def one_fault(box: Sandbox, fault: str, label: str, wait: float) -> dict[str, float | None]:
    """Both sides with a backlog, the fault, then each side's pause (None: not within ``wait``)."""
    sentinel.systemctl(box, "reset-failed", check=False)
    sentinel.systemctl(box, "start", *OURS, STOCK)
    wait_until(lambda: sentinel.unit(box, STOCK, "ActiveState") == "active", 30, what="stock rq to start")
    wait_until(lambda: sentinel.replica_in_sync(box), 60, interval=0.5, what="the replica to be in sync")
    old = sentinel.primary_port(box)
    ctl(box, "enqueue", "traced_job", "0.5", "--count", "20", "--id", f"{label}-before")
    ctl(box, "enqueue", "traced_job", "0.5", "--count", "10", "--id", f"{label}-stock-before", "--queue", "stock")
    time.sleep(1)  # replicated
    faulted = ctl(box, "now")
    old_unit = sentinel.inject(box, fault, old)
    _, elected = sentinel.wait_for_election(box, old)
    probes = ctl(box, "enqueue", "traced_job", "0", "--id", f"{label}-probe")
    probes += ctl(box, "enqueue", "traced_job", "0", "--id", f"{label}-stock-probe", "--queue", "stock")
    pauses: dict[str, float | None] = {"elected": elected - faulted}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not all(sentinel.probe_end(box, p) for p in probes):
        time.sleep(1)
    for side, probe in zip(("ours", "stock"), probes, strict=True):
        end = sentinel.probe_end(box, probe)
        pauses[side] = end - elected if end else None
    if pauses["ours"] is None:
        raise SystemExit(f"{fault}: the package's probe did not run within {wait:.0f} s: "
                         f"{jobs(box, probes[:1])}")
    sentinel.systemctl(box, "stop", *OURS, STOCK)
    sentinel.restore(box, fault, old_unit)
    return pauses


def text(value: float | None, wait: float) -> str:
    return f"{value:.1f} s" if value is not None else f"not within {wait:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", help="Debian release to boot (default: trixie)")
    parser.add_argument("--deb", help="a built package (default: build one with packaging/build-deb)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both faults (default: 1)")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for stock rq's probe (default 120)")
    args = parser.parse_args()
    deb = Path(args.deb) if args.deb else build_deb(args.release)
    rows = []
    with Sandbox(ensure_rootfs(args.release)) as box:
        set_up(box, deb)
        for r in range(args.rounds):
            for fault in sentinel.FAULTS:
                pauses = one_fault(box, fault, f"r{r}-{fault}", args.wait)
                print(f"  round {r + 1}: {fault}: elected {pauses['elected']:.1f} s after the fault; ours "
                      f"{text(pauses['ours'], args.wait)}, stock rq {text(pauses['stock'], args.wait)}", flush=True)
                rows.append((fault, pauses))
    print(f"\n{args.release}, sentinels' down-after {sentinel.DOWN_AFTER_MS / 1000:.0f} s; a job queued on the new "
          "primary at the election, done after:\n")
    print("| fault | elected after | rq-worker-service | stock rq under its documented unit |\n|---|---|---|---|")
    for fault, pauses in rows:
        print(f"| {fault} | {pauses['elected']:.1f} s | {text(pauses['ours'], args.wait)} | "
              f"{text(pauses['stock'], args.wait)} |")


if __name__ == "__main__":
    main()
