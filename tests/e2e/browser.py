"""A headless Chromium driven by Selenium inside a booted sandbox's network namespace, and the Cockpit web
server it talks to there.

cockpit-ws runs with ``--no-tls --local-session=cockpit-bridge``: it asks for no login, so it must be
reachable from nowhere but the sandbox. It listens on the sandbox's own 127.0.0.1; the browser joins that
network namespace: every Selenium call runs on one thread that ``setns()``-ed into it (a network namespace
is per thread), so chromedriver and Chromium, its children, start there and the driver's HTTP connection
to chromedriver is made from there too. Files and processes stay the host's (Debian's chromium and
chromium-driver; scripts/test installs them).

The browser's console is collected (``goog:loggingPrefs``): the tests fail on a SEVERE entry, which is
how Chromium logs an uncaught JS error, a rejected promise left unhandled, a CSP refusal or a failed load.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sandbox import Sandbox

PORT = 9090
BASE = f"http://127.0.0.1:{PORT}"
PAGE = f"{BASE}/cockpit/@localhost/rq-worker-service/index.html"
"""The page alone, without Cockpit's shell around it (what the tests drive)."""
SHELL = f"{BASE}/rq-worker-service"
"""The page in Cockpit's shell, as an operator opens it (the README's screenshot)."""
UNIT = "e2e-cockpit-ws"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "e2e-screenshots"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def missing_browser() -> str | None:
    """A one-line reason why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"the browser tests need {path} (Debian's chromium and chromium-driver; scripts/test installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the browser tests need selenium (pip install -e '.[test]')"
    return None


def start_cockpit_ws(box: Sandbox, port: int = PORT, user: str | None = None) -> None:
    """cockpit-ws inside the sandbox, as a transient unit (systemd stops it with the sandbox). Its local
    session's bridge runs as the user cockpit-ws runs as: root, or ``user`` (a login without admin rights)."""
    ws = box.run("ls /usr/lib/cockpit/cockpit-ws /usr/libexec/cockpit-ws 2>/dev/null", check=False).stdout.split()
    assert ws, "cockpit-ws is not installed in the sandbox (tests/e2e/sandbox.py PACKAGES)"
    unit = UNIT if port == PORT else f"{UNIT}-{port}"
    box.run(["systemd-run", f"--unit={unit}", *([f"--uid={user}"] if user else []), ws[0], "--no-tls",
             "--local-session=cockpit-bridge", "--address", "127.0.0.1", "--port", str(port)])


def _enter_netns(pid: int) -> None:
    """Move the calling thread into the network namespace of ``pid`` (only this thread: setns(CLONE_NEWNET)
    is per thread); the processes it starts inherit it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the network namespace of pid {pid}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Browser:
    """One Chromium session in ``box``'s network namespace. Use ``call(fn)`` to run ``fn(driver)`` there."""

    def __init__(self, box: Sandbox, release: str) -> None:
        self.release = release
        self.console: list[dict] = []
        self.profile = Path(tempfile.mkdtemp(prefix="rqws-chromium-"))
        self._pid = box.pid1
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-browser",
                                          initializer=_enter_netns, initargs=(box.pid1,))
        self.driver: Any = None
        try:
            self.driver = self.call(self._start)
        except BaseException:
            self.close()
            raise

    # -- life cycle ---------------------------------------------------------------------------

    def _start(self, _driver: Any) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        _wait_port(PORT, 20)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={self.profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def close(self) -> None:
        if self.driver is not None:
            try:
                self.call(lambda d: d.quit())
            finally:
                self.driver = None
        self._thread.shutdown(wait=True)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], timeout: float = 120) -> T:
        """``fn(driver)`` on the browser's thread (in the sandbox's network namespace)."""
        return self._thread.submit(fn, self.driver).result(timeout)

    def open(self, url: str = PAGE) -> None:
        self.call(lambda d: d.get(url))

    def js(self, script: str, *args: Any) -> Any:
        return self.call(lambda d: d.execute_script(script, *args))

    def wait_js(self, expression: str, timeout: float, what: str, *args: Any) -> Any:
        """Poll the JS ``expression`` (it sees ``arguments``) until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(f"return ({expression});", *args)
            if value:
                return value
            if time.monotonic() > deadline:
                self.screenshot(f"timeout-{what.replace(' ', '-')[:40]}")
                raise AssertionError(f"timed out after {timeout}s waiting for {what} ({expression})")
            time.sleep(0.2)

    def click(self, css: str, attempts: int = 5) -> None:
        """A real click (Selenium's, as a user's) on the element ``css`` selects. The page redraws its tables
        on every refresh: an element replaced between finding and clicking it is found again, as a user's
        next click would hit the new one."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        for attempt in range(attempts):
            try:
                self.call(lambda d: d.find_element(By.CSS_SELECTOR, css).click())
                return
            except StaleElementReferenceException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def tab(self, name: str) -> None:
        self.click(f'nav button[data-tab="{name}"]')
        self.wait_js("document.querySelector(arguments[0]) && !document.querySelector(arguments[0]).hidden", 5,
                     f"the {name} tab to show", f"section#tab-{name}")

    def wait_port(self, port: int, timeout: float = 20) -> None:
        """Until something accepts on the sandbox's 127.0.0.1:``port``."""
        self.call(lambda _d: _wait_port(port, timeout))

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.release}-{name}.png"
        self.call(lambda d: d.save_screenshot(str(path)))
        return path

    def console_errors(self) -> list[str]:
        """The SEVERE console entries since the session started (the driver hands each entry out once)."""
        self.console += self.call(lambda d: d.get_log("browser"))
        return [f"{e.get('source', '')}: {e['message']}" for e in self.console if e.get("level") == "SEVERE"]


def _wait_port(port: int, timeout: float) -> None:
    """Until something accepts on 127.0.0.1:``port`` (of the calling thread's network namespace)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} in the sandbox (cockpit-ws, unit {UNIT})"
                                   ) from exc
            time.sleep(0.1)
