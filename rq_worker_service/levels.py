"""Nagios-style verdict levels and the ``W[,C]`` thresholds of ``status --check``.

Kept free of rq imports: ``status``'s command line parses thresholds before it has read the
configuration, and rq fixes its key prefix (RQ_KEY_PREFIX) when it is first imported.
"""

from __future__ import annotations

from dataclasses import dataclass

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
BY_NAME = {name: level for level, name in LEVELS.items()}


@dataclass(frozen=True)
class Threshold:
    """``W`` or ``W,C``: a warning level and an optional critical one."""

    warning: float
    critical: float | None = None

    @classmethod
    def parse(cls, text: str) -> Threshold:
        parts = text.split(",")
        if len(parts) > 2:
            raise ValueError(text)
        values = [float(p) for p in parts]
        return cls(values[0], values[1] if len(values) == 2 else None)

    def __str__(self) -> str:
        """The ``W[,C]`` text ``parse`` reads back."""
        return f"{self.warning:g}" + (f",{self.critical:g}" if self.critical is not None else "")

    def level_above(self, value: float) -> int:
        if self.critical is not None and value > self.critical:
            return CRITICAL
        return WARNING if value > self.warning else OK

    def level_below(self, value: float) -> int:
        if self.critical is not None and value < self.critical:
            return CRITICAL
        return WARNING if value < self.warning else OK
