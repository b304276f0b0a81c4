"""Nagios-style verdict levels and the ``W[,C]`` thresholds of ``status --check``.

Kept free of rq imports: ``status``'s command line parses thresholds before it has read the
configuration, and rq fixes its key prefix (RQ_KEY_PREFIX) when it is first imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
BY_NAME = {name: level for level, name in LEVELS.items()}


def _number(text: str) -> float:
    """One level: a finite number, 0 or more. ``nan`` compares false with everything, so a check
    given it could never fire; ``inf`` could never fire either (or, as a minimum, always would)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{text.strip()!r} is not a finite number, 0 or more")
    return value


def _text(value: float) -> str:
    """``value`` as ``parse`` reads it back exactly (``:g`` kept 6 digits: 1234567 came back 1234570)."""
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Threshold:
    """``W`` or ``W,C``: a warning level and an optional critical one."""

    warning: float
    critical: float | None = None

    @classmethod
    def parse(cls, text: str, *, fewer_is_worse: bool = False) -> Threshold:
        """``W`` or ``W,C``; raises ValueError saying what is wrong and what is expected.

        ``fewer_is_worse``: a minimum (``--min-workers``), so C must not be above W; for a maximum,
        C must not be below W. Either way round, a C on the wrong side of W hides the warning."""
        expected = "expected W or W,C: finite numbers, 0 or more, e.g. " + ("2,1" if fewer_is_worse else "300,900")
        parts = text.split(",")
        if len(parts) > 2:
            raise ValueError(f"{text!r}: {expected}")
        try:
            values = [_number(p) for p in parts]
        except ValueError:
            raise ValueError(f"{text!r}: {expected}") from None
        if len(values) == 2:
            warning, critical = values
            if fewer_is_worse and critical > warning:
                raise ValueError(f"{text!r}: the critical level C must not be above the warning level W for a "
                                 f"minimum (fewer is worse), e.g. 2,1")
            if not fewer_is_worse and critical < warning:
                raise ValueError(f"{text!r}: the critical level C must not be below the warning level W, "
                                 f"e.g. 300,900")
        return cls(values[0], values[1] if len(values) == 2 else None)

    def __str__(self) -> str:
        """The ``W[,C]`` text ``parse`` reads back."""
        return _text(self.warning) + (f",{_text(self.critical)}" if self.critical is not None else "")

    def level_above(self, value: float) -> int:
        if self.critical is not None and value > self.critical:
            return CRITICAL
        return WARNING if value > self.warning else OK

    def level_below(self, value: float) -> int:
        if self.critical is not None and value < self.critical:
            return CRITICAL
        return WARNING if value < self.warning else OK
