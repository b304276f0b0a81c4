"""The Cockpit page (cockpit-rq-worker-service) in a real browser, on every release: headless Chromium
through Selenium against cockpit-ws inside the booted sandbox (tests/e2e/browser.py).

One booted host for the whole module, set up once: the package pair installed with the README's apt line,
two enabled instances, three jobs in a queue no worker listens on (a known queued count) and a job that
failed. The steps act through the page as an operator would (clicks, the confirmation dialog) and check
the outcome where it lives: Redis (ctl.py), systemd (systemctl) and the journal. Each step fails on a
SEVERE entry in the browser's console. Screenshots go to build/e2e-screenshots/<release>-<name>.png.
"""

from __future__ import annotations

import json
import time

import pytest
from browser import PAGE, PORT, SHELL, Browser, missing_browser, start_cockpit_ws
from conftest import ctl, jobs, systemctl, wait_for
from provision import configure
from sandbox import Sandbox

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")

HOST = "rqws-e2e"
PARKED = "parked"
"""A queue no instance listens on (they take RQ_QUEUES' default, ``default``): its count stays put."""
FAILED = "cockpit-failed"
VIEWER_PORT = PORT + 1
"""A second cockpit-ws, run as a user without administrative access."""
LEVELS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
"""``status --check``'s exit codes (monitoring plugins' convention)."""


def install_pair(box: Sandbox, *debs) -> None:
    """``apt-get install -y ./rq-worker-service_….deb ./cockpit-rq-worker-service_….deb``, the README's line
    (the page's package depends on the main one of the same version: apt resolves them together)."""
    for deb in debs:
        box.copy_in(deb, f"/root/{deb.name}")
    box.run("cd /root && apt-get install -y " + " ".join(f"./{deb.name}" for deb in debs), timeout=300, input="")
    for package in ("rq-worker-service", "cockpit-rq-worker-service"):
        status = box.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package]).stdout
        assert status == "ii ", f"{package} {status!r} after apt-get install, not configured (ii)"


def listening(box: Sandbox) -> list[str]:
    """The host's listening TCP sockets (address:port), sorted."""
    return sorted(line.split()[3] for line in box.run(["ss", "-Hltn"]).stdout.splitlines() if line.strip())


def job(box: Sandbox, job_id: str) -> dict:
    return jobs(box, [job_id])[job_id]


@pytest.fixture(scope="module")
def host(rootfs, deb, cockpit_deb, release):
    """The booted host, set up for every step, and the browser on it."""
    t0 = time.monotonic()
    with Sandbox(rootfs) as box:
        before = listening(box)
        assert f":{PORT}" not in " ".join(before), f"something listens on {PORT} in every sandbox: {before}"
        install_pair(box, deb, cockpit_deb)
        configure(box)
        systemctl(box, "enable", "--now", "rq-worker@1", "rq-worker@2")
        assert listening(box) == before, "the packages or their workers opened a port"
        ctl(box, "enqueue", "quick_job", "1", "--queue", PARKED, "--id", "parked", "--count", "3")
        ctl(box, "enqueue", "failing_job", "--id", FAILED)
        wait_for(lambda: job(box, FAILED)["status"] == "failed", 15, "the failing job to fail")
        start_cockpit_ws(box)
        with Browser(box, release) as browser:
            browser.open(PAGE)
            browser.wait_js("document.body.dataset.ready === '1'", 30, "the first status load")
            print(f"\n{release}: host booted, packages installed, page loaded in {time.monotonic() - t0:.1f}s")
            yield box, browser
    print(f"\n{release}: the Cockpit module took {time.monotonic() - t0:.1f}s")


def no_console_errors(browser: Browser) -> None:
    errors = browser.console_errors()
    assert not errors, "the browser's console has errors:\n" + "\n".join(errors)


def cell(browser: Browser, css: str) -> str | None:
    return browser.js("const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;", css)


def test_the_page_loads_and_shows_the_running_instances_and_the_queued_count(host):
    box, browser = host
    assert browser.js("return document.getElementById('error').hidden"), cell(browser, "#error")
    queued = f'#queues tbody tr[data-queue="{PARKED}"] td[data-field="queued"]'
    browser.wait_js("document.querySelector(arguments[0])?.textContent.trim() === '3'", 10,
                    "the parked queue's count of 3", queued)
    assert cell(browser, '#queues tbody tr[data-queue="default"] td[data-field="failed"]') == "1"
    verdict = box.run(["rq-worker-service", "status", "--check"], check=False)
    assert browser.js("return document.getElementById('verdict').dataset.level") == LEVELS[verdict.returncode], \
        verdict.stdout
    workers = browser.js("return [...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.worker)")
    assert sorted(workers) == [f"{HOST}.rq-worker@1", f"{HOST}.rq-worker@2"]
    browser.screenshot("overview")

    browser.tab("instances")
    rows = browser.wait_js(
        "(r => r.length ? r : null)([...document.querySelectorAll('#instances tbody tr')]"
        ".map(r => [r.dataset.unit, r.dataset.active, r.dataset.enabled]))", 10, "the instances")
    assert sorted(map(tuple, rows)) == [("rq-worker@1.service", "active", "enabled"),
                                        ("rq-worker@2.service", "active", "enabled")]
    browser.screenshot("instances")
    no_console_errors(browser)


def test_requeue_moves_a_failed_job_back_to_its_queue(host):
    box, browser = host
    assert job(box, FAILED)["executions"] == 1
    browser.tab("failed")
    row = f'#failed tbody tr[data-job-id="{FAILED}"]'
    browser.wait_js("document.querySelector(arguments[0])", 10, "the failed job's row", row)
    assert cell(browser, f'{row} td[data-field="queue"]') == "default"
    assert "failing_job" in (cell(browser, f'{row} td[data-field="func"]') or "")
    assert "this job always fails" in (cell(browser, f'{row} td[data-field="error"]') or "")
    browser.screenshot("failed")
    browser.click(f'{row} button[data-action="requeue"]')
    browser.wait_js("document.getElementById('confirm').open", 5, "the requeue confirmation")
    assert job(box, FAILED)["executions"] == 1, "requeued before the operator confirmed"
    browser.click("#confirm-ok")
    # Back in its queue, an instance ran it again (and it failed again): its second execution, in Redis.
    wait_for(lambda: (lambda j: j["executions"] == 2 and j["status"] == "failed")(job(box, FAILED)), 15,
             "the requeued job to run again")
    no_console_errors(browser)


def test_stop_asks_then_stops_the_instance_warm_after_its_running_job(host):
    box, browser = host
    ctl(box, "enqueue", "sleep_job", "5", "--id", "cockpit-stop")
    running = wait_for(lambda: (lambda j: j if j["status"] == "started" else None)(job(box, "cockpit-stop")), 10,
                       "the job to start")
    instance = running["worker"].rsplit("@", 1)[1]
    other = "2" if instance == "1" else "1"
    unit = f"rq-worker@{instance}.service"
    browser.tab("instances")
    browser.click(f'#instances tbody tr[data-unit="{unit}"] button[data-action="stop"]')
    browser.wait_js("document.getElementById('confirm').open", 5, "the stop confirmation")
    message = cell(browser, "dialog#confirm .message") or ""
    assert "finish" in message.lower(), f"the stop dialog does not say the running job finishes first: {message!r}"
    browser.screenshot("stop-confirm")
    assert box.show(unit, "ActiveState")["ActiveState"] == "active", "stopped before the operator confirmed"
    browser.click("#confirm-ok")
    # Warm: the unit waits in deactivating while the job runs on, then stops on its own.
    wait_for(lambda: box.show(unit, "ActiveState")["ActiveState"] == "deactivating", 5, f"{unit} to be stopping")
    assert job(box, "cockpit-stop")["status"] == "started", "the stop cut the running job off"
    wait_for(lambda: box.show(unit, "ActiveState")["ActiveState"] == "inactive", 15, f"{unit} to stop")
    assert box.show(unit, "Result")["Result"] == "success"
    done = job(box, "cockpit-stop")
    assert (done["status"], done["executions"]) == ("finished", 1), done
    assert box.show(f"rq-worker@{other}.service", "ActiveState")["ActiveState"] == "active"
    browser.wait_js("document.querySelector(arguments[0])?.dataset.active === 'inactive'", 10,
                    "the page to show the instance stopped", f'#instances tbody tr[data-unit="{unit}"]')
    browser.screenshot("stopped")
    no_console_errors(browser)


def test_the_job_view_shows_the_jobs_journal_records_across_its_runs(host):
    box, browser = host
    browser.tab("job")

    def journal() -> list[dict]:
        out = box.run(["journalctl", "-o", "json", "--no-pager", f"RQ_JOB_ID={FAILED}"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    records = journal()
    assert records, "the workers logged nothing for the job"
    browser.call(lambda d: d.find_element("css selector", "#job-id").send_keys(FAILED))
    browser.click("#job-open")
    browser.wait_js("document.querySelector('#job-detail [data-field=status]')?.textContent.includes('failed')", 10,
                    "the job's status")
    assert "this job always fails" in (cell(browser, "#job-detail pre.traceback") or "")
    shown = browser.wait_js(
        "(r => r.length >= arguments[0] ? r : null)([...document.querySelectorAll('#job-log li.record')]"
        ".map(li => [li.dataset.unit, li.textContent]))", 10, "the job's journal records", len(records))
    assert len(shown) == len(records), (shown, records)
    unmatched = list(shown)  # in whichever order the page lists them: each record once, by unit and message
    for record in records:
        match = next((s for s in unmatched if s[0] == record["_SYSTEMD_UNIT"] and record["MESSAGE"] in s[1]), None)
        assert match, f"the page does not show {record['_SYSTEMD_UNIT']}: {record['MESSAGE']!r}; it shows {shown}"
        unmatched.remove(match)
    assert browser.js("return document.getElementById('job-log').dataset.following") != "1", \
        "a failed job's records are followed live"
    browser.screenshot("job")

    # Its address opens it too (cockpit.location /job/<id>: the URL's fragment when the page is loaded alone).
    browser.open(f"{PAGE}#/job/cockpit-stop")
    browser.wait_js("document.body.dataset.ready === '1' && !document.getElementById('tab-job').hidden && "
                    "document.querySelector('#job-detail [data-field=status]')?.textContent.includes('finished')", 15,
                    "the job tab opened by its address")
    browser.wait_js("document.querySelectorAll('#job-log li.record').length > 0", 10, "the stopped job's records")
    no_console_errors(browser)


def test_the_job_view_follows_a_running_jobs_records_live(host):
    """Opened while the job runs, the view follows its journal: the job's last record (logged as it
    ends) is added to the page while it is still following, then the follow ends with the job. A
    MutationObserver in the page notes each record as it is added, with whether the view was following
    then, so a record that came only from the re-read after the job ended does not count. The re-read
    replaces the list only when it is whole (CI read it in between once, when it blanked the list first)."""
    box, browser = host
    ctl(box, "enqueue", "sleep_job", "6", "--id", "cockpit-live")
    wait_for(lambda: job(box, "cockpit-live")["status"] == "started", 10, "the job to start")
    browser.open(f"{PAGE}#/job/cockpit-live")
    browser.wait_js("document.getElementById('job-log').dataset.following === '1'", 10, "the view to follow the job")
    browser.js("""
        window.rqwsLive = [];
        const log = document.getElementById('job-log');
        new MutationObserver(changes => changes.forEach(change => change.addedNodes.forEach(node =>
            window.rqwsLive.push([log.dataset.following, node.textContent])))).observe(log, {childList: true});""")
    wait_for(lambda: job(box, "cockpit-live")["status"] == "finished", 15, "the job to finish")
    browser.wait_js("(log => log.dataset.following === '0' && log.dataset.read === '1')"
                    "(document.getElementById('job-log'))", 15, "the follow to end with the job and the re-read")
    live = browser.js("return window.rqwsLive")
    assert any(following == "1" and "e2e job done" in text for following, text in live), \
        f"the job's last record did not arrive while following: {live}"
    assert any("e2e job done" in text for text in browser.js(
        "return [...document.querySelectorAll('#job-log li.record')].map(li => li.textContent)"))
    no_console_errors(browser)


def test_a_user_without_administrative_access_sees_one_line_errors_and_changes_nothing(host):
    """Every action is the logged-in user's. A login that is neither root nor in group rq-worker (the
    local session's bridge runs as the user cockpit-ws runs as): the overview shows the status command's
    one-line error (worker.env is 0640) and no figure, and a restart from the page is refused by systemd
    (polkit asks for an administrator, and no one can answer): the instance keeps its process."""
    box, browser = host
    systemctl(box, "start", "rq-worker@1", "rq-worker@2")  # the stop step stopped one of them
    box.run("id viewer >/dev/null 2>&1 || useradd --create-home viewer")
    start_cockpit_ws(box, VIEWER_PORT, user="viewer")
    browser.wait_port(VIEWER_PORT)
    before = box.show("rq-worker@1.service", "MainPID", "NRestarts")
    browser.open(PAGE.replace(f":{PORT}/", f":{VIEWER_PORT}/"))
    browser.wait_js("document.body.dataset.ready === '1'", 30, "the first status load as viewer")
    error = cell(browser, "#error") or ""
    assert "/etc/rq-worker/worker.env" in error and "Traceback" not in error and "\n" not in error, error
    assert browser.js("return document.getElementById('verdict').dataset.level") == "UNKNOWN"
    assert browser.js("return document.querySelectorAll('#queues tbody tr').length") == 0
    browser.tab("instances")
    restart = '#instances tbody tr[data-unit="rq-worker@1.service"] button[data-action="restart"]'
    browser.wait_js("document.querySelector(arguments[0])", 10, "the instances, listed for anyone", restart)
    browser.click(restart)
    browser.wait_js("document.getElementById('error').textContent.includes('restart rq-worker@1.service')", 15,
                    "the refusal of the restart")
    browser.screenshot("viewer-refused")
    assert box.show("rq-worker@1.service", "MainPID", "NRestarts") == before, "a refused restart restarted"
    assert box.show("rq-worker@1.service", "ActiveState")["ActiveState"] == "active"
    no_console_errors(browser)


def test_the_page_in_cockpits_shell_for_the_readme(host):
    """What an operator sees after logging in: the page inside Cockpit's shell, with its menu entry
    (manifest.json). The screenshot <release>-shell.png is the README's. The shell's own console entries
    are Cockpit's; those of our page (its frame) fail the step."""
    box, browser = host
    systemctl(box, "start", "rq-worker@1", "rq-worker@2")  # both running, as the overview should look
    browser.console_errors()  # what came before is checked by the steps above
    seen = len(browser.console)
    browser.open(SHELL)
    frame = 'iframe[name$="rq-worker-service"]'
    browser.wait_js("document.querySelector(arguments[0])", 30, "the page's frame in the shell", frame)
    browser.call(lambda d: d.switch_to.frame(d.find_element("css selector", frame)))
    try:
        browser.wait_js("document.body && document.body.dataset.ready === '1'", 30, "the page in the shell")
    finally:
        browser.call(lambda d: d.switch_to.default_content())
    time.sleep(0.5)  # the shell's menu settles
    browser.screenshot("shell")
    browser.console_errors()
    ours = [f"{e.get('source', '')}: {e['message']}" for e in browser.console[seen:]
            if e.get("level") == "SEVERE" and "rq-worker-service" in e["message"]]
    assert not ours, "the page has console errors in the shell:\n" + "\n".join(ours)
