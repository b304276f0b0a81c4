"""Stock rq as its documentation deploys it under systemd, installed in a sandbox beside the package
so that a test or a benchmark measures both on the same box. It runs the rq the package bundles."""

from __future__ import annotations

from sandbox import Sandbox

PY = "/usr/lib/rq-worker-service/bin/python3"
UNIT = "rqworker@.service"


def documented_unit(working_directory: str, exec_start: str, *extra: str) -> str:
    """The unit from rq's documentation (python-rq.org/patterns/systemd/); ``extra`` lines go into
    [Service] before ExecStart (e.g. an EnvironmentFile= the caller uses to vary the arguments)."""
    return "\n".join([
        "# The unit from rq's documentation (python-rq.org/patterns/systemd/), for stock rq.",
        "[Unit]", "Description=RQ Worker Number %i", "After=network.target", "",
        "[Service]", "Type=simple", f"WorkingDirectory={working_directory}",
        "Environment=LANG=en_US.UTF-8", "Environment=LC_ALL=en_US.UTF-8", "Environment=LC_LANG=en_US.UTF-8",
        *extra, f"ExecStart={exec_start}", "ExecReload=/bin/kill -s HUP $MAINPID",
        "ExecStop=/bin/kill -s TERM $MAINPID", "PrivateTmp=true", "Restart=always", "",
        "[Install]", "WantedBy=multi-user.target", ""])


def install(box: Sandbox, unit_text: str) -> None:
    """``/usr/local/bin/rq`` running the package's rq, and ``rqworker@.service``."""
    box.write("/usr/local/bin/rq", f"#!{PY}\nfrom rq.cli import main\nmain()\n", mode=0o755)
    box.write(f"/etc/systemd/system/{UNIT}", unit_text)
