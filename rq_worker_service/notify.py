"""sd_notify messages to systemd (through ``sdnotify``), and the watchdog interval systemd asked for.

Only the process systemd started may talk: the unit uses ``NotifyAccess=main``, so a message from a
work horse would be dropped anyway, and sending one from a forked child would be a bug. Every send
is therefore guarded by the pid the notifier was created in. Outside systemd (no ``NOTIFY_SOCKET``)
every method is a cheap no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import sdnotify

log = logging.getLogger("rq_worker_service")

SEND_TIMEOUT = 1.0


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

    @property
    def watchdog_seconds(self) -> float | None:
        """systemd's WatchdogSec= for this process, or None when no watchdog is armed."""
        return self.watchdog_usec / 1_000_000 if self.watchdog_usec else None

    def send(self, *fields: str) -> None:
        if self._channel is None or os.getpid() != self._pid:
            return
        # sdnotify encodes as Latin-1, systemd reads UTF-8: hand it text whose Latin-1 bytes are UTF-8.
        self._channel.notify("\n".join(fields).encode("utf-8").decode("latin-1"))

    def status(self, text: str) -> None:
        """Set STATUS= (what `systemctl status` shows); repeated texts are not resent."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        # MONOTONIC_USEC is what Type=notify-reload (systemd ≥ 253) wants; older systemd ignores it.
        self._last_status = status
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd to wait ``seconds`` longer for the current start/stop before it gives up."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def error(self, status: str, errno: int) -> None:
        self._last_status = status
        self.send(f"STATUS={status}", f"ERRNO={errno}")

    def fail(self, message: str, exit_status: int, errno: int) -> int:
        """Give up with one line: to the log (err priority) and to ``systemctl status`` (STATUS=,
        ERRNO=). Returns ``exit_status``, for the caller to exit with."""
        log.error("%s", message)
        self.error(message, errno)
        return exit_status


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
