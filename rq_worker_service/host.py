"""Which machine, and which boot of it, this process runs on.

A worker's name says its host name, and recovery judged a predecessor by that name and its pid;
but cloned VMs and containers share host names, and a pid means something only on one machine
during one boot. So each worker records the machine id (systemd's, or D-Bus's on systems without
it) and the kernel's boot id beside its pid, and a restarted instance reads them back
(``recovery.recover_predecessor``): another machine's record is never rescued, and a record from an
earlier boot of this machine is dead whatever its pid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class HostIdentity:
    """This machine and this boot of it; an empty string where it is unknown (then nothing is judged on it)."""

    machine_id: str
    boot_id: str

    def fields(self) -> dict[str, str]:
        """The fields recorded in the worker's hash and its fencing member record: the known ones."""
        return {name: value for name, value in (("machine_id", self.machine_id), ("boot_id", self.boot_id)) if value}


def _first_line(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def identity() -> HostIdentity:
    """Read the machine id (a first boot's "uninitialized" counts as unknown) and the boot id."""
    machine = next((m for m in map(_first_line, MACHINE_ID_FILES) if m and m != "uninitialized"), "")
    return HostIdentity(machine_id=machine, boot_id=_first_line(BOOT_ID_FILE))
