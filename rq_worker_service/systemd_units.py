"""systemd's D-Bus API, as the autoscaler needs it: list rq-worker@ instances, start and stop them.

Over the bus, not by running ``systemctl``: the same calls systemctl makes, with systemd's own
errors, authorised for the autoscaler's non-root user by polkit (the package's rule grants it
start and stop of rq-worker@*.service and nothing else). jeepney speaks D-Bus in pure Python: no
C library to build into the package's environment, and a blocking API that fits one loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jeepney import AuthenticationError, DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from .autoscale import RUNNING_STATES, unit_name

PATTERN = "rq-worker@*.service"
INSTANCE_RE = re.compile(r"^rq-worker@([1-9][0-9]{0,5})\.service$")
POLKIT = "org.freedesktop.PolicyKit1"
UNKNOWN = 2**64 - 1
"""systemd's "not known / no limit" for memory properties (UINT64_MAX)."""
TIMEOUT = 10.0
RESTART_JOBS = frozenset({"restart", "try-restart", "start", "reload-or-start"})
"""Job types queued on a stopping unit that bring it back (``systemctl restart``, a start after stop)."""

MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                      interface="org.freedesktop.systemd1.Manager")
BUS = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")


class UnitsError(Exception):
    """systemd (or the bus) refused or failed a call; ``str()`` is one line for the journal."""


@dataclass(frozen=True)
class UnitState:
    """One loaded rq-worker@<number>.service."""

    number: int
    active_state: str
    path: str
    memory: int | None = None
    restarting: bool = False
    """Stopping only to start again (a restart or a start is queued): still counts as running."""


class Units:
    """A connection to the system bus, reopened when it breaks (dbus-daemon restarts)."""

    def __init__(self) -> None:
        self._bus: DBusConnection | None = None
        self._slice: str | None = None
        """The object path of the instances' slice, once known (it does not change while loaded)."""

    def _call(self, address: DBusAddress, method: str, signature: str | None = None, body: tuple = ()) -> tuple:
        message = new_method_call(address, method, signature, body)
        try:
            if self._bus is None:
                self._bus = open_dbus_connection(bus="SYSTEM")
            reply = self._bus.send_and_get_reply(message, timeout=TIMEOUT)
        except (OSError, TimeoutError, AuthenticationError) as exc:
            self.close()
            raise UnitsError(f"the system bus did not answer {method} ({exc}); is dbus running?") from None
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "error")
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise UnitsError(f"{method}: {name}: {detail}".rstrip(": "))
        return reply.body

    def close(self) -> None:
        self._slice = None  # systemd may have been re-executed: ask again
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def instances(self) -> list[UnitState]:
        """The numbered instances systemd has loaded (running, starting, stopping or failed), with the
        memory each uses; an instance that was stopped is no longer loaded, or inactive."""
        (units,) = self._call(MANAGER, "ListUnitsByPatterns", "asas", ([], [PATTERN]))
        found = []
        for name, _desc, _load, active, _sub, _following, path, _job_id, job_type, _job_path in units:
            match = INSTANCE_RE.match(name)
            if match:
                memory = self._memory(path) if active in RUNNING_STATES else None
                restarting = active == "deactivating" and job_type in RESTART_JOBS
                found.append(UnitState(int(match.group(1)), active, path, memory, restarting))
        return sorted(found, key=lambda u: u.number)

    def _property(self, path: str, interface: str, name: str):
        address = DBusAddress(path, bus_name=MANAGER.bus_name, interface=interface)
        try:
            ((_signature, value),) = self._call(address.with_interface("org.freedesktop.DBus.Properties"), "Get",
                                                "ss", (interface, name))
        except UnitsError:
            return None  # an older systemd without the property, or the unit just went away
        return value

    def _memory(self, path: str) -> int | None:
        value = self._property(path, "org.freedesktop.systemd1.Service", "MemoryCurrent")
        return None if value in (None, UNKNOWN) else int(value)

    def slice_memory_available(self, number: int) -> int | None:
        """What the instances' slice may still use under MemoryMax=/MemoryHigh= of it and its parents
        (systemd's MemoryAvailable); None when nothing limits it or systemd does not say."""
        if self._slice is None:
            try:
                (path,) = self._call(MANAGER, "LoadUnit", "s", (unit_name(number),))
                slice_name = self._property(path, "org.freedesktop.systemd1.Service", "Slice")
                if not slice_name:
                    return None
                (self._slice,) = self._call(MANAGER, "LoadUnit", "s", (slice_name,))
            except UnitsError:
                return None
        value = self._property(self._slice, "org.freedesktop.systemd1.Slice", "MemoryAvailable")
        return None if value in (None, UNKNOWN) else int(value)

    def start(self, number: int) -> None:
        self._call(MANAGER, "StartUnit", "ss", (unit_name(number), "replace"))

    def stop(self, number: int) -> None:
        self._call(MANAGER, "StopUnit", "ss", (unit_name(number), "replace"))

    def polkit_present(self) -> bool:
        """polkitd runs or can be started by the bus: without it systemd allows root alone."""
        (running,) = self._call(BUS, "NameHasOwner", "s", (POLKIT,))
        if running:
            return True
        (activatable,) = self._call(BUS, "ListActivatableNames")
        return POLKIT in activatable

