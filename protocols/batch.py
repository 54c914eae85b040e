"""Uplink batch format, version 0 (msgpack). No I/O.

One MQTT message carries one batch. Format version 0 is a msgpack map:

    key        type                      meaning
    "v"        int                       format version, 0
    "gw"       str                       gateway id
    "seq"      int >= 0                  batch sequence number, strictly increasing per gateway
                                         across restarts; a re-sent batch keeps its number
    "created"  int                       wall-clock ms when the batch was sealed
    "dropped"  int >= 0                  readings the gateway evicted (buffer full) since the
                                         previous batch: loss is stated, never silent
    "series"   [[device, point], ...]    dictionary; readings refer to it by index
    "t0"       int                       base timestamp, ms since the Unix epoch
    "si"       [int, ...]                per reading: index into "series"
    "dt"       [int, ...]                per reading: timestamp - t0, ms
    "val"      [int|float|bool|str, ...] per reading: the value as read (floats as float64)

The three per-reading arrays have equal length. Unknown keys are ignored by decoders, so
fields can be added without a version bump; removing or changing one needs a new "v".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "BatchDecodeError",
    "Reading",
    "decode_batch",
    "encode_batch",
]

FORMAT_VERSION = 0

Value = int | float | bool | str


class BatchDecodeError(ValueError):
    """The bytes are not a valid batch (the sender sent garbage): drop and count it."""


class Reading(NamedTuple):
    device: str
    point: str
    ts_ms: int
    value: Value


@dataclass(frozen=True, slots=True)
class Batch:
    gateway: str
    seq: int
    created_ms: int
    readings: tuple[Reading, ...]
    dropped: int = 0
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def encode_batch(
    gateway: str,
    seq: int,
    created_ms: int,
    readings: Iterable[Reading | Sequence[Any]],
    *,
    dropped: int = 0,
) -> bytes:
    """Encode readings ``(device, point, ts_ms, value)`` into one batch message."""
    series_index: dict[tuple[str, str], int] = {}
    si: list[int] = []
    ts: list[int] = []
    val: list[Value] = []
    for device, point, ts_ms, value in readings:
        key = (device, point)
        idx = series_index.get(key)
        if idx is None:
            idx = series_index[key] = len(series_index)
        si.append(idx)
        ts.append(int(ts_ms))
        val.append(value)
    t0 = min(ts) if ts else created_ms
    doc = {
        "v": FORMAT_VERSION,
        "gw": gateway,
        "seq": seq,
        "created": created_ms,
        "dropped": dropped,
        "series": [list(k) for k in series_index],
        "t0": t0,
        "si": si,
        "dt": [t - t0 for t in ts],
        "val": val,
    }
    return msgpack.packb(doc, use_bin_type=True)


def _require(doc: dict[Any, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise BatchDecodeError(f"batch has no {key!r} field")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise BatchDecodeError(f"batch field {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def decode_batch(payload: bytes, *, max_readings: int = 1_000_000) -> Batch:
    """Decode and validate one batch; raise :class:`BatchDecodeError` on anything malformed."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BatchDecodeError(f"not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise BatchDecodeError(f"batch is a {type(doc).__name__}, not a map")
    version = _require(doc, "v", int)
    if version != FORMAT_VERSION:
        raise BatchDecodeError(f"unsupported batch format version {version}")
    gateway = _require(doc, "gw", str)
    seq = _require(doc, "seq", int)
    created = _require(doc, "created", int)
    dropped = _require(doc, "dropped", int)
    series = _require(doc, "series", list)
    t0 = _require(doc, "t0", int)
    si = _require(doc, "si", list)
    dt = _require(doc, "dt", list)
    val = _require(doc, "val", list)
    if seq < 0 or dropped < 0:
        raise BatchDecodeError("negative seq or dropped")
    if not len(si) == len(dt) == len(val):
        raise BatchDecodeError(f"column lengths differ: si={len(si)} dt={len(dt)} val={len(val)}")
    if len(si) > max_readings:
        raise BatchDecodeError(f"{len(si)} readings exceed the limit of {max_readings}")
    names: list[tuple[str, str]] = []
    for entry in series:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not all(isinstance(x, str) for x in entry)
        ):
            raise BatchDecodeError(f"bad series entry {entry!r}")
        names.append((entry[0], entry[1]))
    readings = []
    for i, d, v in zip(si, dt, val, strict=True):
        if type(i) is not int or not 0 <= i < len(names):
            raise BatchDecodeError(f"series index {i!r} out of range")
        if type(d) is not int:
            raise BatchDecodeError(f"timestamp delta {d!r} is not an integer")
        if not isinstance(v, int | float | str):
            raise BatchDecodeError(f"value {v!r} has unsupported type {type(v).__name__}")
        device, point = names[i]
        readings.append(Reading(device, point, t0 + d, v))
    extra = {k: v for k, v in doc.items() if k not in _KNOWN}
    return Batch(gateway, seq, created, tuple(readings), dropped, version, extra)


_KNOWN = frozenset({"v", "gw", "seq", "created", "dropped", "series", "t0", "si", "dt", "val"})
