"""Moving an existing app onto the package, as README's "Moving an app" section tells an operator.

The app of the guide this product grew from: /srv/reportapp, owned by its own user, with its own
``.env`` (the split ``REDIS_HOST/PORT/DB=1/PASSWORD`` form and app settings), its own virtualenv,
jobs on ``report_analysis`` with ``Retry(max=3, interval=60)`` that read files relative to the app
and write reports into an output directory the app reads back. The package needs only
``RQ_APP_DIR``, ``RQ_APP_VIRTUALENV`` and ``RQ_QUEUES`` (plus ``ReadWritePaths=`` for the output).
"""

from __future__ import annotations

import json

import pytest
from conftest import PASSWORD, PY, install, systemctl, wait_for
from sandbox import Sandbox

APP = "/srv/reportapp"
TASKS = """\
import os

import reportlib  # from the app's virtualenv


def process_report_analysis(report_id):
    with open("settings/threshold.txt") as f:  # relative to the app's directory
        threshold = int(f.read())
    path = f"output/report_{report_id}.txt"
    with open(path, "w") as f:
        f.write(reportlib.render(report_id, threshold, os.environ["APP_MODE"]))
    return path
"""
ENQUEUE = f"""\
from rq import Queue, Retry
from redis import Redis
queue = Queue("report_analysis", connection=Redis(db=1, password={PASSWORD!r}))
print(queue.enqueue("app.tasks.process_report_analysis", 7, job_id="report_analysis_7",
                    retry=Retry(max=3, interval=60)).id)
"""
JOB_STATUS = f"""\
from rq.job import Job
from redis import Redis
print(Job.fetch("report_analysis_7", connection=Redis(db=1, password={PASSWORD!r})).get_status().value)
"""


def app_site(box: Sandbox) -> str:
    return box.run(f"ls -d {APP}/.venv/lib/python3*/site-packages").stdout.strip()


def rq_dist_info(box: Sandbox, site: str, version: str) -> None:
    box.run(f"rm -rf {site}/rq-*.dist-info && mkdir -p {site}/rq-{version}.dist-info")
    box.write(f"{site}/rq-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: rq\nVersion: {version}\n")


@pytest.fixture(scope="module")
def app_box(rootfs, deb):
    with Sandbox(rootfs) as box:
        install(box, deb)
        box.run(f"echo 'requirepass {PASSWORD}' >> /etc/redis/redis.conf && systemctl restart redis-server")
        # the app as it was: its user, code, settings, .env and virtualenv
        box.run(["useradd", "--system", "--home-dir", APP, "reportapp"])
        box.write(f"{APP}/app/__init__.py", "")
        box.write(f"{APP}/app/tasks.py", TASKS)
        box.write(f"{APP}/settings/threshold.txt", "21\n")
        box.write(f"{APP}/.env", f"REDIS_HOST=localhost\nREDIS_PORT=6379\nREDIS_DB=1\nREDIS_PASSWORD={PASSWORD}\n"
                  "APP_MODE=production\n", mode=0o640)
        box.run(["python3", "-m", "venv", "--without-pip", f"{APP}/.venv"])
        site = app_site(box)
        box.write(f"{site}/reportlib.py", "def render(report_id, threshold, mode):\n"
                  "    return f'report {report_id}: threshold {threshold} ({mode})'\n")
        rq_dist_info(box, site, "3.0.0")  # what `pip install rq` gives the app today
        box.run(f"chown -R reportapp:reportapp {APP}")
        # README's steps: the .env readable by the workers' group, an output directory shared back
        box.run(["chgrp", "rq-worker", f"{APP}/.env"])
        box.run(f"install -d -o rq-worker -g reportapp -m 2750 {APP}/output")
        with box.path("/etc/rq-worker/worker.env").open("a") as f:
            f.write(f"\nRQ_APP_DIR={APP}\nRQ_APP_VIRTUALENV={APP}/.venv\nRQ_QUEUES=report_analysis\n")
        box.write("/etc/systemd/system/rq-worker@.service.d/output.conf",
                  f"[Service]\nReadWritePaths={APP}/output\n")
        systemctl(box, "daemon-reload")
        yield box


def test_the_app_moves_with_three_variables_and_a_writable_output_directory(app_box):
    box = app_box
    systemctl(box, "start", "rq-worker@1", "rq-worker@2")
    box.run([PY, "-c", ENQUEUE])  # the app enqueues as it always did: db 1, its password
    try:
        wait_for(lambda: box.run([PY, "-c", JOB_STATUS]).stdout.strip() == "finished", 30, "the app's job to run")
    except AssertionError:
        journal = box.run(["journalctl", "-u", "rq-worker@*", "-o", "cat", "--no-pager", "-n", "60"]).stdout
        raise AssertionError(f"the app's job did not finish; the workers' journal:\n{journal}") from None
    report = box.run(["stat", "-c", "%U:%G %a", f"{APP}/output/report_7.txt"]).stdout.split()
    assert report == ["rq-worker:reportapp", "640"], report  # the app's group reads it back
    text = box.run(["runuser", "-u", "reportapp", "--", "cat", f"{APP}/output/report_7.txt"]).stdout
    assert text == "report 7: threshold 21 (production)"
    # status as root from /, with no settings of its own: it sees the workers' database
    status = box.run("cd / && rq-worker-service status --check --json", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["redis"].endswith("localhost:6379/1"), report["redis"]
    assert {q["name"]: q["finished"] for q in report["queues"]} == {"report_analysis": 1}
    assert sorted(w["queues"] for w in report["workers"]) == [["report_analysis"], ["report_analysis"]]
    systemctl(box, "stop", "rq-worker@1", "rq-worker@2")


def test_an_app_virtualenv_on_rq_2_and_an_unreadable_env_are_one_line_each(app_box):
    box = app_box
    since = "@" + box.run(["date", "+%s"]).stdout.strip()
    log = ["journalctl", "-u", "rq-worker@1", "--since", since, "-p", "err", "-o", "cat", "--no-pager"]
    rq_dist_info(box, app_site(box), "2.12.0")
    try:
        systemctl(box, "start", "rq-worker@1", check=False)
        wait_for(lambda: box.show("rq-worker@1", "ActiveState")["ActiveState"] == "failed", 15, "the refusal")
        assert box.show("rq-worker@1", "ExecMainStatus")["ExecMainStatus"] == "78"
        errors = box.run(log).stdout
        assert "has rq 2.12.0, but this package runs rq 3." in errors, errors
    finally:
        rq_dist_info(box, app_site(box), "3.0.0")
        systemctl(box, "reset-failed", "rq-worker@1", check=False)
    box.run(["chmod", "600", f"{APP}/.env"])
    try:
        systemctl(box, "start", "rq-worker@1", check=False)
        wait_for(lambda: box.show("rq-worker@1", "ActiveState")["ActiveState"] == "failed", 15, "the config error")
        assert box.show("rq-worker@1", "NRestarts")["NRestarts"] == "0"
        assert f"{APP}/.env: cannot read it (Permission denied)" in box.run(log).stdout
    finally:
        box.run(["chmod", "640", f"{APP}/.env"])
        systemctl(box, "reset-failed", "rq-worker@1", check=False)
