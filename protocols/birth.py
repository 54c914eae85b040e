"""The birth message (JSON): who the gateway is and what its series ids mean. No I/O.

Published retained on ``<prefix>/<site>/<gateway>/birth`` at every connection, before any batch
that refers to a series it lists. Series ids are persistent: an id is never reused for another
(device, point), so a batch from an earlier boot still resolves through the newest birth.

    {"v": 1, "gateway": str, "site": str, "boot": int, "software": str, "started_ms": int,
     "next_seq": int, "devices": [{"id", "profile", "vendor", "model", "endpoint", "unit",
     "poll_interval_s"}], "series": [[sid, device, point, unit, type], ...], ...}

``type`` is the profile's register data type (float32, uint16, string, ...). Unknown keys are
ignored.

A series of a device's point may carry two more entries (added in 0.1, so consumers that read
five ignore them): ``kind``, how to aggregate it (``"gauge"``: a level, average it; ``"counter"``:
it only grows, take differences), and an object with what only some points have, written only
when there is something in it:

    [sid, device, point, unit, type, kind]
    [sid, device, point, unit, type, kind, {"wrap": 4294967296, "labels": {"0": "off", ...}}]

``wrap`` is a counter's modulus in its unit (after it the count starts again from 0);
``labels`` name the values of an enumeration (the value travels as the number; keys are the
numbers as JSON strings). Unknown keys in that object are ignored. Health series (``_status``,
``_bad_points``) and births from older gateways have no kind.

A birth larger than the broker takes (its Maximum Packet Size) goes out in **parts**
(:func:`split_birth`): each part is itself a version-1 birth with every header field, a slice of
``devices`` and of ``series`` (in order), and ``"part": {"index": i, "count": n, "id": hex}``;
only part 1 carries the other keys (``signing_key``, ``meters``, ...). ``id`` is the first 16
hex digits of the SHA-256 of the whole birth's encoding, the same in every part of one birth.
:func:`join_birth_parts` puts the whole birth back together (docs/asyncapi.yaml, birthPart).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from protocols.batch import Batch, Reading

__all__ = [
    "BIRTH_VERSION",
    "Birth",
    "BirthError",
    "BirthPart",
    "BirthTooLarge",
    "SeriesInfo",
    "birth_part",
    "join_birth_parts",
    "split_birth",
]

BIRTH_VERSION = 1


class BirthError(ValueError):
    """The bytes are not a valid birth message."""


class BirthTooLarge(ValueError):
    """The birth cannot be cut into parts of at most ``limit`` bytes: the header (with the
    other keys of part 1) or one device or series entry alone is larger."""

    def __init__(self, size: int, limit: int, what: str) -> None:
        super().__init__(
            f"the birth ({size} bytes) cannot be sent in parts of {limit} bytes: {what}"
        )
        self.size, self.limit, self.what = size, limit, what


class BirthPart(NamedTuple):
    """Where a part sits in its birth: ``index`` 1..``count``; ``id`` names the whole birth."""

    index: int
    count: int
    id: str


class SeriesInfo(NamedTuple):
    """What one series id means (see the module docstring for the wire form)."""

    sid: int
    device: str
    point: str
    unit: str
    type: str
    kind: str = ""  # "gauge" / "counter" for a device's point; "" where it does not apply
    wrap: float | None = None  # a counter's modulus, in its unit
    labels: dict[int, str] | None = None  # an enumeration's value -> label

    def entry(self) -> list[Any]:
        """The birth's array for this series: five entries, six with a kind, seven with more."""
        out: list[Any] = [self.sid, self.device, self.point, self.unit, self.type]
        if self.kind:
            out.append(self.kind)
            more: dict[str, Any] = {}
            if self.wrap is not None:
                more["wrap"] = int(self.wrap) if float(self.wrap).is_integer() else self.wrap
            if self.labels:
                more["labels"] = {str(k): v for k, v in self.labels.items()}
            if more:
                out.append(more)
        return out

    @classmethod
    def from_entry(cls, s: list[Any]) -> SeriesInfo:
        kind = str(s[5]) if len(s) > 5 else ""
        more = s[6] if len(s) > 6 and isinstance(s[6], dict) else {}
        wrap = more.get("wrap")
        labels = more.get("labels")
        if labels is not None and not isinstance(labels, dict):
            raise TypeError(f"series {s[0]!r}: labels must be an object")
        return cls(
            int(s[0]),
            str(s[1]),
            str(s[2]),
            str(s[3]),
            str(s[4]),
            kind,
            None if wrap is None else float(wrap),
            None if not labels else {int(k): str(v) for k, v in labels.items()},
        )


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
        return _dumps(self._doc(self.devices, self.series, self.extra))

    def _doc(self, devices: Iterable[Any], series: Iterable[Any], extra: dict[str, Any]) -> dict:
        return {
            "v": BIRTH_VERSION,
            "gateway": self.gateway,
            "site": self.site,
            "boot": self.boot,
            "software": self.software,
            "started_ms": self.started_ms,
            "next_seq": self.next_seq,
            "devices": list(devices),
            "series": [s.entry() for s in series],
            **extra,
        }

    @classmethod
    def decode(cls, payload: bytes) -> Birth:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BirthError(f"birth is not JSON: {exc}") from None
        except RecursionError:
            raise BirthError("birth is not a birth: JSON nested too deeply to read") from None
        if not isinstance(doc, dict) or doc.get("v") != BIRTH_VERSION:
            raise BirthError("birth is not a version-1 object")
        try:
            # JSON may escape a lone UTF-16 surrogate ("\ud800"), which is no text: no
            # database or UTF-8 consumer can keep it.
            json.dumps(doc, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BirthError("birth holds a lone UTF-16 surrogate escape: not text") from None
        except RecursionError:
            raise BirthError("birth is not a birth: JSON nested too deeply to read") from None
        try:
            series = tuple(SeriesInfo.from_entry(s) for s in doc["series"])
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
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise BirthError(f"birth is malformed: {exc!r}") from None

    def index(self) -> dict[int, SeriesInfo]:
        return {s.sid: s for s in self.series}

    def signing_public_key(self) -> bytes | None:
        """The gateway's Ed25519 public key (32 bytes) from ``signing_key``
        (``{"alg": "ed25519", "public": <base64>}``, docs/meter-link-v1.md §5), or None when
        the birth announces none. Raises BirthError naming what is wrong with one that is
        there but unusable (another algorithm, not base64, not 32 bytes)."""
        key = self.extra.get("signing_key")
        if key is None:
            return None
        try:
            if key["alg"] != "ed25519":
                raise ValueError(f"algorithm {key['alg']!r}")
            public = base64.b64decode(key["public"], validate=True)
            if len(public) != 32:
                raise ValueError(f"a {len(public)}-byte public key")
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise BirthError(str(exc)) from None
        return public


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


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


#: The widest ``part`` field a birth can carry: sizes are planned with it, then the real one is
#: written (never longer).
_PART_PLACEHOLDER = {"index": 99_999, "count": 99_999, "id": "0" * 16}


def split_birth(birth: Birth, max_bytes: int) -> list[bytes]:
    """The birth as payloads of at most ``max_bytes`` bytes each: ``[birth.encode()]`` when it
    fits, else parts (see the module docstring), greedily filled in order.

    Raises :class:`BirthTooLarge` when even a part holding one entry would be larger.
    """
    whole = birth.encode()
    if len(whole) <= max_bytes:
        return [whole]
    pid = hashlib.sha256(whole).hexdigest()[:16]
    items: list[tuple[str, Any]] = [("devices", d) for d in birth.devices]
    items += [("series", s) for s in birth.series]
    sizes = [len(_dumps(obj.entry() if kind == "series" else obj)) for kind, obj in items]
    first = len(_dumps(birth._doc((), (), {"part": _PART_PLACEHOLDER, **birth.extra})))
    other = len(_dumps(birth._doc((), (), {"part": _PART_PLACEHOLDER})))
    if first > max_bytes:
        raise BirthTooLarge(len(whole), max_bytes, f"its header alone takes {first} bytes")
    parts: list[dict[str, list[Any]]] = []
    current: dict[str, list[Any]] = {"devices": [], "series": []}
    used = first
    for (kind, obj), size in zip(items, sizes, strict=True):
        add = size + (1 if current[kind] else 0)  # a comma before every entry but the first
        if used + add > max_bytes and (current["devices"] or current["series"]):
            parts.append(current)
            current = {"devices": [], "series": []}
            used, add = other, size
        if used + add > max_bytes:
            raise BirthTooLarge(
                len(whole), max_bytes, f"one {kind} entry alone needs {other + size} bytes"
            )
        current[kind].append(obj)
        used += add
    parts.append(current)
    count = len(parts)
    if count > _PART_PLACEHOLDER["count"]:
        raise BirthTooLarge(len(whole), max_bytes, f"it would take {count} parts")
    out = []
    for index, part in enumerate(parts, 1):
        extra = {"part": {"index": index, "count": count, "id": pid}}
        if index == 1:
            extra.update(birth.extra)
        payload = _dumps(birth._doc(part["devices"], part["series"], extra))
        assert len(payload) <= max_bytes, (len(payload), max_bytes)  # planned with the widest
        out.append(payload)
    return out


def birth_part(birth: Birth) -> BirthPart | None:
    """The ``part`` field of a decoded birth, or None for a whole birth.

    Raises :class:`BirthError` when it is present but malformed.
    """
    raw = birth.extra.get("part")
    if raw is None:
        return None
    try:
        part = BirthPart(int(raw["index"]), int(raw["count"]), str(raw["id"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BirthError(f"birth part field is malformed: {exc!r}") from None
    if not 1 <= part.index <= part.count <= _PART_PLACEHOLDER["count"]:
        raise BirthError(f"birth part {part.index} of {part.count} is out of range")
    return part


def join_birth_parts(parts: Iterable[Birth]) -> Birth:
    """The whole birth from all of its parts, in any order. Raises :class:`BirthError` when a
    part is missing, repeated, or belongs to another birth."""
    by_index: dict[int, Birth] = {}
    ids = set()
    counts = set()
    for p in parts:
        info = birth_part(p)
        if info is None:
            raise BirthError("a whole birth is not a part")
        if info.index in by_index:
            raise BirthError(f"birth part {info.index} given twice")
        by_index[info.index] = p
        ids.add(info.id)
        counts.add(info.count)
    if len(ids) != 1 or len(counts) != 1:
        raise BirthError("the parts belong to different births")
    count = counts.pop()
    if sorted(by_index) != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(by_index))
        raise BirthError(f"birth parts {missing} of {count} are missing")
    ordered = [by_index[i] for i in range(1, count + 1)]
    head = ordered[0]
    return Birth(
        gateway=head.gateway,
        site=head.site,
        boot=head.boot,
        software=head.software,
        started_ms=head.started_ms,
        next_seq=head.next_seq,
        devices=tuple(d for p in ordered for d in p.devices),
        series=tuple(s for p in ordered for s in p.series),
        extra={k: v for k, v in head.extra.items() if k != "part"},
    )
