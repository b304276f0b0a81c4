"""The autoscaler's report in Redis: written by ``autoscaler`` after every look, read by ``status`` on any host.

One class serves both sides, so that a field added to the report is written and read alike. Its
JSON keeps the names it has always had in the ``keys.autoscalers()`` hash (``min``/``max`` for the
limits, ``now`` for the hold), so that an autoscaler and a ``status`` of different versions still
read each other: keys it does not know are ignored, and a missing one makes ``from_json`` raise
(``status`` then skips the entry as another version's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from .autoscale import Limits

_WIRE_NAMES = {"minimum": "min", "maximum": "max", "holding": "now"}
"""Field name → its JSON key, where the two differ."""


@dataclass(frozen=True)
class ReportedInstance:
    """One rq-worker@<number>.service as the autoscaler last saw it."""

    number: int
    state: str
    """systemd's ActiveState (``activating`` while systemd restarts it)."""
    busy: bool
    ours: bool
    """Started by the autoscaler."""


@dataclass(frozen=True)
class AutoscalerReport:
    """What ``rq-worker-service status`` shows about one host's autoscaler."""

    host: str
    at: float
    """Wall-clock time of the report (``time.time()``): its age says whether the autoscaler still runs."""
    limits: Limits
    queues: tuple[str, ...]
    instances: tuple[ReportedInstance, ...]
    running: int
    busy: int
    queued: int | None
    """None before its first look."""
    oldest: float | None
    available: int | None
    """Bytes of memory left, as the last look saw it (None: unknown)."""
    instance_memory: int
    """The most memory one instance was seen to use (bytes)."""
    last_decision: str | None
    last_decision_at: float | None
    holding: str
    """Why it neither starts nor stops now ('' when there is nothing to say)."""

    def to_json(self) -> str:
        return json.dumps(_wire(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> AutoscalerReport:
        """Raises ValueError, KeyError or TypeError for what is not a report of this shape."""
        data = json.loads(raw)
        return cls(**{**_known(cls, data), "limits": Limits(**_known(Limits, data["limits"])),
                      "queues": tuple(data["queues"]),
                      "instances": tuple(ReportedInstance(**_known(ReportedInstance, i)) for i in data["instances"])})


def _wire(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {_WIRE_NAMES.get(f.name, f.name): _wire(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    return value


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``cls``'s fields from ``data``, by their JSON keys; keys of a newer version are left out."""
    return {f.name: data[_WIRE_NAMES.get(f.name, f.name)] for f in fields(cls)}
