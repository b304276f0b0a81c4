"""sd_notify messages to systemd (through ``sdnotify``), and the watchdog interval systemd asked for.

Only the process systemd started may talk: the unit uses ``NotifyAccess=main``, so a message from a
work horse would be dropped anyway, and sending one from a forked child would be a bug. Every send
is therefore guarded by the pid the notifier was created in. Outside systemd (no ``NOTIFY_SOCKET``)
every method is a cheap no-op, so the daemon runs the same in a terminal.

STATUS= updates that follow each job go through ``status_soon``: systemd turns every STATUS= into
a D-Bus PropertiesChanged signal, and PID 1, dbus-daemon and logind each wake for it. Measured under
systemd with two updates per no-op job, that was ≈0.4 ms of their CPU per job, a sixth of a simple
worker's whole cost; a background thread now sends at most one such update per STATUS_INTERVAL,
rendered when it is sent, so `systemctl status` is never more than that behind.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import sdnotify

log = logging.getLogger("rq_worker_service")

SEND_TIMEOUT = 1.0
STATUS_INTERVAL = 1.0
"""Seconds between two STATUS= updates sent by ``status_soon``."""


class Notifier:
    """One process's channel to systemd's notification socket."""

    def __init__(self) -> None:
        env = os.environ  # sdnotify itself reads NOTIFY_SOCKET from os.environ
        self._pid = os.getpid()
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._channel = sdnotify.SystemdNotifier() if self.enabled else None
        if self._channel is not None and self._channel.socket is not None:
            # A datagram queue that nobody drains blocks the sender; never let it hang the main loop.
            self._channel.socket.settimeout(SEND_TIMEOUT)
        self.watchdog_usec = _watchdog_usec(env, self._pid)
        self._last_status: str | None = None
        self._lock = threading.Lock()  # one sender at a time, so an older text never follows a newer one
        self._render: Callable[[], str] | None = None
        self._due = threading.Event()
        self._sender: threading.Thread | None = None
        self.interval = STATUS_INTERVAL

    @property
    def watchdog_seconds(self) -> float | None:
        """systemd's WatchdogSec= for this process, or None when no watchdog is armed."""
        return self.watchdog_usec / 1_000_000 if self.watchdog_usec else None

    @property
    def _ours(self) -> bool:
        """A channel, in the process it was opened in (not a work horse forked from it)."""
        return self._channel is not None and os.getpid() == self._pid

    def send(self, *fields: str, status: str | None = None) -> None:
        """Send ``fields`` (and STATUS=``status``, remembered as the last one sent) in one message."""
        if not self._ours:
            return
        if status is not None:
            fields += (f"STATUS={status}",)
        with self._lock:
            if status is not None:
                self._last_status = status
                self._render = None  # a pending ``status_soon`` is older than this
            self._channel.notify(_wire(fields))  # type: ignore[union-attr]

    def status(self, text: str) -> None:
        """Set STATUS= (what `systemctl status` shows) now; repeated texts are not resent."""
        if text != self._last_status:
            self.send(status=text)

    def status_soon(self, render: Callable[[], str]) -> None:
        """Set STATUS= to what ``render()`` returns within STATUS_INTERVAL (for the updates around
        each job: a stream of short jobs sends one per interval, not two per job)."""
        if not self._ours:
            return
        self._render = render
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_soon, name="status", daemon=True)
            self._sender.start()
        self._due.set()

    def _send_soon(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            render = self._render
            if render is not None:
                text = render()  # outside the lock: an immediate send need not wait for it
                with self._lock:
                    if self._render is render:  # else an immediate send superseded it meanwhile
                        self._render = None
                        if text != self._last_status:
                            self._last_status = text
                            self._channel.notify(_wire([f"STATUS={text}"]))  # type: ignore[union-attr]
            time.sleep(self.interval)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"MAINPID={os.getpid()}", status=status)

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", status=status)

    def reloading(self, status: str) -> None:
        # MONOTONIC_USEC is what Type=notify-reload (systemd ≥ 253) wants; older systemd ignores it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", status=status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd to wait ``seconds`` longer for the current start/stop before it gives up."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def error(self, status: str, errno: int) -> None:
        self.send(f"ERRNO={errno}", status=status)

    def fail(self, message: str, exit_status: int, errno: int) -> int:
        """Give up with one line: to the log (err priority) and to ``systemctl status`` (STATUS=,
        ERRNO=). Returns ``exit_status``, for the caller to exit with."""
        log.error("%s", message)
        self.error(message, errno)
        return exit_status


def _wire(fields: Sequence[str]) -> str:
    """sdnotify encodes as Latin-1, systemd reads UTF-8: the text whose Latin-1 bytes are the UTF-8."""
    return "\n".join(fields).encode("utf-8").decode("latin-1")


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC applies to us only when WATCHDOG_PID is unset or names this process."""
    raw = env.get("WATCHDOG_USEC")
    owner = env.get("WATCHDOG_PID")
    if not raw or (owner and owner != str(pid)):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None
