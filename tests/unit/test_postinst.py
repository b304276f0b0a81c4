"""postinst's upgrade branch (``move_to_new_code``) against stub systemctl/runuser: what it queues for each
instance, without a booted systemd (the e2e layer runs it for real, under a job, on both releases).

The stubs record every call; ``runuser`` (the new version's ``run --check``) drains its stdin, as a
check that reads the terminal would: the loop over the instances must not lose the rest to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTINST = ROOT / "packaging" / "debian" / "rq-worker-service.postinst"

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="postinst compares versions with dpkg")

UNITS = """\
rq-worker@1.service loaded active running RQ background-job worker 1
rq-worker@2.service loaded active running RQ background-job worker 2
rq-worker@3.service loaded activating start RQ background-job worker 3
rq-worker@4.service loaded failed failed RQ background-job worker 4
rq-worker@5.service loaded reloading reload RQ background-job worker 5
"""

STUBS = {
    "systemctl": f"""#!/bin/sh
echo "systemctl $*" >> "$CALLS"
case "$1" in
    list-units) printf '%s' '{UNITS}' ;;
    show) echo rq-worker ;;
    --quiet) case " $INACTIVE " in *" $3 "*) exit 3 ;; esac ;;  # is-active: 3 means inactive
esac
""",
    "runuser": """#!/bin/sh
cat > /dev/null  # a check that reads its stdin
echo "runuser $*" >> "$CALLS"
case "$*" in
    *"--instance 2 "*) echo "a warning first"; echo "configuration error: RQ_QUEUES='': a queue name"; exit 78 ;;
esac
echo "configuration OK"
""",
    "dpkg-query": "#!/bin/sh\necho 0.3.0+deb12\n",
    "policy-rc.d": "#!/bin/sh\nexit \"${POLICY:-0}\"\n",  # (a container's own may forbid everything)
    "logger": "#!/bin/sh\nexit 0\n",
}


def run_upgrade(tmp_path: Path, old_version: str, policy: int = 0, inactive: str = "") -> tuple[str, list[str]]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    functions = POSTINST.read_text().split("#DEBHELPER#")[0]
    script = tmp_path / "upgrade.sh"
    script.write_text(f'{functions}\nmove_to_new_code "$1"\n')
    calls = tmp_path / "calls"
    calls.touch()
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(calls), "POLICY": str(policy),
           "INACTIVE": inactive}
    out = subprocess.run(["sh", str(script), old_version], env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout, calls.read_text().splitlines()


def queued(calls: list[str]) -> list[str]:
    return [call.removeprefix("systemctl --no-block ") for call in calls if call.startswith("systemctl --no-block")]


def test_from_020_every_running_instance_gets_a_reload_even_one_the_check_run_here_refuses(tmp_path):
    said, calls = run_upgrade(tmp_path, "0.2.0+deb12")
    assert queued(calls) == ["reload rq-worker@1.service", "reload rq-worker@2.service",
                             "try-restart rq-worker@3.service", "reload rq-worker@5.service",
                             "try-restart rq-worker-autoscale.service", "try-restart rq-cron.service"]
    assert "rq-cron: restarting on 0.3.0+deb12" in said
    # The unit's own ExecReload check decides; apt's output says what the check run here found.
    assert "rq-worker@2.service: warning: the new version's check, run from here, says: configuration error: " \
           "RQ_QUEUES" in said
    assert "rq-worker@4" not in said  # failed: the operator's to start
    checks = [call for call in calls if call.startswith("runuser")]
    assert len(checks) == 3 and all(call.startswith("runuser -u rq-worker -- rq-worker-service run --check")
                                    for call in checks)


def test_from_01x_a_restart_is_queued_but_never_onto_a_configuration_the_new_version_rejects(tmp_path):
    said, calls = run_upgrade(tmp_path, "0.1.0+deb13")
    assert queued(calls) == ["restart rq-worker@1.service", "try-restart rq-worker@3.service",
                             "restart rq-worker@5.service", "try-restart rq-worker-autoscale.service",
                             "try-restart rq-cron.service"]
    assert "rq-worker@2.service: NOT restarted on 0.3.0+deb12, which rejects its configuration" in said
    assert "a re-exec cannot carry over" in said


def test_policy_rc_d_101_queues_nothing_and_says_so(tmp_path):
    said, calls = run_upgrade(tmp_path, "0.2.0+deb12", policy=101)
    assert queued(calls) == []
    assert "rq-worker@1.service: policy-rc.d forbids reload; it keeps running the old code" in said


def test_a_scheduler_or_autoscaler_that_is_not_running_is_left_alone(tmp_path):
    """Off by default: try-restart is queued only for a running one (a stopped one stays stopped)."""
    said, calls = run_upgrade(tmp_path, "0.2.0+deb12", inactive="rq-cron.service rq-worker-autoscale.service")
    assert not [call for call in queued(calls) if "rq-cron" in call or "autoscale" in call]
    assert "rq-cron" not in said and "rq-worker-autoscale" not in said
