"""Celery 5 in the bench's sandbox, deployed as Celery's documentation deploys it under systemd
(docs.celeryq.dev, "Daemonization": ``celery.service`` running ``celery multi``, its settings in
``/etc/conf.d/celery``, a ``celery`` user, /run/celery and /var/log/celery), with Celery from PyPI.

Celery's wheels are downloaded once per Python version into /var/cache (the sandbox itself reaches no
network) and installed into /opt/celery/lib inside the sandbox (PYTHONPATH in /etc/conf.d/celery, as a
virtualenv's site-packages); ``/opt/celery/bin/celery`` runs it with Debian's python3, the interpreter
a Debian server has, linked as ``celery-python`` so that its processes are told apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from sandbox import CACHE as SANDBOX_CACHE  # noqa: E402
from sandbox import Sandbox  # noqa: E402

CELERY = "celery[redis]==5.7.0"
CACHE = SANDBOX_CACHE / "celery-wheels"
LIB = "/opt/celery/lib"
PYTHONPATH = f"{LIB}:/srv/bench"
CONF = "/etc/conf.d/celery"

UNIT = """\
# The unit from Celery's documentation (docs.celeryq.dev, Daemonization, "Usage systemd").
[Unit]
Description=Celery Service
After=network.target

[Service]
Type=forking
User=celery
Group=celery
EnvironmentFile=/etc/conf.d/celery
WorkingDirectory=/srv/bench
ExecStart=/bin/sh -c '${CELERY_BIN} -A $CELERY_APP multi start $CELERYD_NODES \\
    --pidfile=${CELERYD_PID_FILE} --logfile=${CELERYD_LOG_FILE} \\
    --loglevel="${CELERYD_LOG_LEVEL}" $CELERYD_OPTS'
ExecStop=/bin/sh -c '${CELERY_BIN} multi stopwait $CELERYD_NODES \\
    --pidfile=${CELERYD_PID_FILE} --logfile=${CELERYD_LOG_FILE} \\
    --loglevel="${CELERYD_LOG_LEVEL}"'
ExecReload=/bin/sh -c '${CELERY_BIN} -A $CELERY_APP multi restart $CELERYD_NODES \\
    --pidfile=${CELERYD_PID_FILE} --logfile=${CELERYD_LOG_FILE} \\
    --loglevel="${CELERYD_LOG_LEVEL}" $CELERYD_OPTS'
Restart=always

[Install]
WantedBy=multi-user.target
"""


def wheels(python: str) -> Path:
    """Celery's wheels for CPython ``python`` ("3.11"), downloaded once."""
    where = CACHE / python
    if not (where / ".complete").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
                        python, "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(where),
                        CELERY], check=True)
        (where / ".complete").touch()
    return where


def install(box: Sandbox) -> None:
    """Celery, the bench's app (``celeryjobs.py``, ``celery_inbox.py``) and the documented unit."""
    python = box.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels(python)),
                    "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--platform",
                    "manylinux2014_x86_64", "--target", str(box.path(LIB)), CELERY], check=True)
    # Debian's python3 under a name of its own, so that Celery's processes (``celery multi`` starts
    # each node with its own interpreter) are told apart from the bench's python3 in the CPU table.
    box.run("mkdir -p /opt/celery/bin && ln -sf /usr/bin/python3 /opt/celery/bin/celery-python")
    box.write("/opt/celery/bin/celery", "#!/opt/celery/bin/celery-python\nfrom celery.__main__ import main\nmain()\n",
              mode=0o755)
    for name in ("celeryjobs.py", "celery_inbox.py", "probes.py"):
        box.copy_in(ROOT / "bench" / name, f"/srv/bench/{name}")
    box.run("chmod -R a+rX /srv/bench /opt/celery")
    box.run("id celery >/dev/null 2>&1 || useradd --system --home-dir /var/lib/celery --shell /usr/sbin/nologin celery")
    box.write("/etc/tmpfiles.d/celery.conf", "".join(f"d {d} 0755 celery celery -\n" for d in (
        "/run/celery", "/var/log/celery", "/var/lib/celery-bench")))
    box.run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/celery.conf"])
    box.write("/etc/systemd/system/celery.service", UNIT)
    configure(box, 1, acks_late=False)
    box.run(["systemctl", "daemon-reload"])


def configure(box: Sandbox, processes: int, acks_late: bool) -> None:
    """/etc/conf.d/celery as the documentation writes it, with ``--concurrency`` = ``processes``."""
    box.write(CONF, "\n".join([
        'CELERYD_NODES="w1"', 'CELERY_BIN="/opt/celery/bin/celery"', 'CELERY_APP="celeryjobs"',
        'CELERYD_MULTI="multi"', f'CELERYD_OPTS="--concurrency={processes}"',
        'CELERYD_PID_FILE="/var/run/celery/%n.pid"', 'CELERYD_LOG_FILE="/var/log/celery/%n%I.log"',
        'CELERYD_LOG_LEVEL="INFO"',
        "# Celery's packages, where a virtualenv's site-packages would be; the bench's settings",
        f"PYTHONPATH={PYTHONPATH}", f"CELERY_BENCH_ACKS_LATE={int(acks_late)}", ""]))


def measure(box: Sandbox, processes: int, acks_late: bool, jobs: int) -> dict:
    """One drain of ``jobs`` no-op tasks by a prefork pool of ``processes`` (celery.service stopped first)."""
    box.run("systemctl stop celery.service; systemctl reset-failed celery.service", check=False)
    box.run(["redis-cli", "flushall"])
    configure(box, processes, acks_late)  # (an EnvironmentFile= is read at each start)
    out = box.run(["env", f"PYTHONPATH={PYTHONPATH}", "python3", "/srv/bench/celery_inbox.py", "measure", str(jobs)],
                  timeout=700).stdout
    result = json.loads(out)
    box.run("systemctl stop celery.service", check=False)
    if result["finished"] != jobs:
        raise SystemExit(f"celery×{processes} (acks {'late' if acks_late else 'early'}): {result['finished']} of "
                         f"{jobs} tasks ran")
    return result
