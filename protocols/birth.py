"""The birth message (JSON): who the gateway is and what its series ids mean. No I/O.

Published retained on ``<prefix>/<site>/<gateway>/birth`` at every connection, before any batch
that refers to a series it lists. Series ids are persistent: an id is never reused for another
(device, point), so a batch from an earlier boot still resolves through the newest birth.

    {"v": 1, "gateway": str, "site": str, "boot": int, "software": str, "started_ms": int,
     "next_seq": int, "devices": [{"id", "profile", "vendor", "model", "endpoint", "unit",
     "poll_interval_s"}], "series": [[sid, device, point, unit, type], ...], ...}

``type`` is the profile's register data type (float32, uint16, ...). Unknown keys are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from protocols.batch import Batch, Reading

__all__ = ["BIRTH_VERSION", "Birth", "BirthError", "SeriesInfo"]

BIRTH_VERSION = 1


class BirthError(ValueError):
    """The bytes are not a valid birth message."""


class SeriesInfo(NamedTuple):
    sid: int
    device: str
    point: str
    unit: str
    type: str


@dataclass(frozen=True)
class Birth:
    gateway: str
    site: str
    boot: int
    software: str
    started_ms: int
    next_seq: int
    devices: tuple[dict[str, Any], ...]
    series: tuple[SeriesInfo, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def encode(self) -> bytes:
        doc = {
            "v": BIRTH_VERSION,
            "gateway": self.gateway,
            "site": self.site,
            "boot": self.boot,
            "software": self.software,
            "started_ms": self.started_ms,
            "next_seq": self.next_seq,
            "devices": list(self.devices),
            "series": [list(s) for s in self.series],
            **self.extra,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Birth:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BirthError(f"birth is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("v") != BIRTH_VERSION:
            raise BirthError("birth is not a version-1 object")
        try:
            series = tuple(
                SeriesInfo(int(s[0]), str(s[1]), str(s[2]), str(s[3]), str(s[4]))
                for s in doc["series"]
            )
            known = {
                "v",
                "gateway",
                "site",
                "boot",
                "software",
                "started_ms",
                "next_seq",
                "devices",
                "series",
            }
            return cls(
                gateway=str(doc["gateway"]),
                site=str(doc["site"]),
                boot=int(doc["boot"]),
                software=str(doc["software"]),
                started_ms=int(doc["started_ms"]),
                next_seq=int(doc["next_seq"]),
                devices=tuple(dict(d) for d in doc["devices"]),
                series=series,
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BirthError(f"birth is malformed: {exc!r}") from None

    def index(self) -> dict[int, SeriesInfo]:
        return {s.sid: s for s in self.series}


def resolve(batch: Batch, series: dict[int, SeriesInfo]) -> tuple[list[Reading], set[int]]:
    """Readings of ``batch`` named through a birth's series index; also the unknown ids."""
    out: list[Reading] = []
    unknown: set[int] = set()
    for p in batch.points:
        info = series.get(p.sid)
        if info is None:
            unknown.add(p.sid)
            out.append(Reading("?", f"#{p.sid}", p.ts_ms, p.value, p.tq))
        else:
            out.append(Reading(info.device, info.point, p.ts_ms, p.value, p.tq))
    return out, unknown
