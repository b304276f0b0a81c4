"""The web console page (``cockpit/``): its data functions under Node's own test runner, and the static
rules Cockpit and the browser tests hold it to."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "cockpit"
NODE = shutil.which("node") or shutil.which("nodejs")

CONTRACT = [
    'data-tab="overview"', 'data-tab="instances"', 'data-tab="failed"', 'data-tab="job"',
    'id="tab-overview"', 'id="tab-instances"', 'id="tab-failed"', 'id="tab-job"', 'id="error"',
    'id="verdict"', 'id="queues"', 'id="workers"', 'id="autoscaler"', 'id="fencing"', 'id="instances"',
    'id="add-instance"', 'id="confirm"', 'id="confirm-ok"', 'id="confirm-cancel"', 'class="message"',
    'id="failed"', 'id="requeue-queue-name"', 'id="requeue-queue"', 'id="job-id"', 'id="job-open"',
    'id="job-detail"', 'id="job-log"',
]
"""What index.html must hold as written: the browser tests (tests/e2e) select by it (GUIDE: the CONTRACT)."""

SCRIPT_CONTRACT = [
    "dataset.ready", "dataset.refreshed", "data-queue", "data-worker", "data-host", "data-instance", "data-state",
    "data-unit", "data-active", "data-enabled", "data-job-id", "dataset.level", "dataset.following", "data-field",
    "data-action", '"start"', '"stop"', '"reload"', '"restart"', '"enable"', '"disable"', '"requeue"', '"show"',
    '"queued"', '"oldest"', '"started"', '"scheduled"', '"failed"', '"finished"', '"job"', '"func"', '"queue"',
    '"ended"', '"error"', '"status"', '"pre.traceback"', '"record"', 'dialog.showModal()', '$("confirm")',
]
"""What rq-worker.js writes into the DOM for the same tests (as attribute names, dataset keys or field names)."""


@pytest.mark.skipif(NODE is None, reason="node is not installed (Debian package nodejs; scripts/test installs it)")
def test_the_data_functions_pass_their_node_tests():
    out = subprocess.run([NODE, "--test", str(ROOT / "tests" / "unit" / "cockpit")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^# pass [1-9]", out.stdout, re.M), out.stdout  # tests ran, not an empty directory


def test_the_page_holds_every_id_and_attribute_the_browser_tests_select():
    html = (PAGE / "index.html").read_text()
    script = (PAGE / "rq-worker.js").read_text()
    assert [item for item in CONTRACT if item not in html] == []
    assert [item for item in SCRIPT_CONTRACT if item not in script] == []


def test_index_html_needs_no_unsafe_inline():
    """Cockpit's Content-Security-Policy allows scripts and styles from files only."""
    html = (PAGE / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts), scripts
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "an on…= handler attribute"
    assert not re.search(r"\sstyle\s*=", html, re.I), "a style= attribute"
    assert "<style" not in html.lower()
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", html), "something fetched from elsewhere"
    for src in re.findall(r"<script[^>]*src=\"([^\"]+)\"", html):
        assert src == "../base1/cockpit.js" or (PAGE / src).is_file(), src


def test_the_manifest_is_json_with_the_menu_entry():
    manifest = json.loads((PAGE / "manifest.json").read_text())
    entries = {**manifest.get("menu", {}), **manifest.get("tools", {})}
    assert [e["label"] for e in entries.values()] == ["RQ workers"]
    assert all((PAGE / f"{name}.html").is_file() for name in entries)
