"""rq-cron.service as shipped: its reload checks exactly what its start reads, and it is hardened as the worker
unit is (the e2e layer measures the exposure under systemd-analyze; this keeps the two files from drifting)."""

from __future__ import annotations

import shlex
from pathlib import Path

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def directives(unit: str) -> list[tuple[str, str]]:
    lines = (SYSTEMD / unit).read_text().splitlines()
    return [(k, v) for k, _, v in (line.partition("=") for line in lines if "=" in line and not line.startswith("#"))]


def values(unit: str, key: str) -> list[str]:
    return [value for name, value in directives(unit) if name == key]


def test_the_reload_checks_the_files_the_start_reads_then_signals_the_main_process():
    [start] = values("rq-cron.service", "ExecStart")
    check, signal = values("rq-cron.service", "ExecReload")
    argv = shlex.split(start)
    assert argv[:2] == ["/usr/bin/rq-worker-service", "cron"]
    assert shlex.split(check) == [*argv[:2], "--check", *argv[2:]]
    assert argv[2:] == ["--env-file", "/etc/rq-worker/worker.env", "--env-file", "/etc/rq-worker/cron.env"]
    assert signal == "/bin/kill -HUP $MAINPID"


def test_it_is_hardened_as_the_worker_unit_and_runs_as_its_user():
    worker = set(directives("rq-worker@.service"))
    cron = set(directives("rq-cron.service"))
    kinds = ("Protect", "Private", "Restrict", "SystemCall", "Capability", "NoNewPrivileges", "Lock", "MemoryDeny",
             "RemoveIPC", "DevicePolicy", "AmbientCapabilities", "ProcSubset", "UMask", "User", "Group")
    hardening = {(k, v) for k, v in worker if k.startswith(kinds)}
    assert hardening, "nothing read from the worker unit"
    assert hardening <= cron, f"missing from rq-cron.service: {sorted(hardening - cron)}"
    assert ("Type", "notify") in cron and ("NotifyAccess", "main") in cron and ("WatchdogSec", "30s") in cron
    assert ("RestartPreventExitStatus", "77 78") in cron and ("StartLimitIntervalSec", "0") in cron
    assert ("PartOf", "rq-worker.target") in cron and ("WantedBy", "rq-worker.target") in cron
