"""The batch decoders under test, behind one interface, and the golden JSON form they answer in.

A *decoder* here is a function from a list of payloads (MQTT messages on ``.../data``) to one
document per payload in the golden JSON form of docs/batch-format-v1.md §7:

    {"header": {...}, "points": [[sid, ts_ms, type, value, tq], ...]}   a batch
    {"error": code, "gw": str | None, "seq": int | None}                 a malformed batch

Every decoder of the contract is listed in :data:`DECODERS`; the golden-vector test, the
property test and the capture test from a real gateway run each decoder in it and compare
reading by reading (series, time, value bit for bit, time quality). A decoder in another
language joins by adding a function that runs it on the payloads (one process for the list).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from protocols.batch import BatchDecodeError, WirePoint, decode_batch_wire

__all__ = [
    "DECODERS",
    "disagreements",
    "expected_point",
    "point_json",
    "python_decoder",
    "readings",
    "wire_type",
]

Decoder = Callable[[list[bytes]], list[dict[str, Any]]]


def point_json(p: WirePoint) -> list[Any]:
    """A point in the golden form: [sid, ts_ms, type, value, tq], 64-bit integers as decimal
    strings, a float as its IEEE word in hex (8 digits for f32, 16 for f64)."""
    if p.type == "f32":
        value: Any = f"{p.value:08x}"
    elif p.type == "f64":
        value = f"{p.value:016x}"
    elif p.type in ("i64", "u64"):
        value = str(p.value)
    else:
        value = p.value
    return [str(p.sid), str(p.ts_ms), p.type, value, p.tq]


def python_decoder(payloads: list[bytes]) -> list[dict[str, Any]]:
    """protocols/batch.py, the reference decoder."""
    out = []
    for payload in payloads:
        try:
            batch = decode_batch_wire(payload)
        except BatchDecodeError as exc:
            out.append({"error": exc.code, "gw": exc.gateway, "seq": exc.seq})
            continue
        h = batch.header
        out.append(
            {
                "header": {
                    "v": h.version,
                    "gw": h.gateway,
                    "seq": h.seq,
                    "boot": h.boot,
                    "created": h.created_ms,
                    "dropped": h.dropped,
                    "n": h.points,
                    "part": list(h.part),
                    "dropped_why": dict(h.dropped_why),
                },
                "points": [point_json(p) for p in batch.points],
            }
        )
    return out


#: Every decoder the contract's tests run. (The JavaScript decoder joins here.)
DECODERS: dict[str, Decoder] = {"python": python_decoder}


def readings(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A decoded batch as (gw, seq, part, sid, ts_ms, type, value, tq) per reading, in order."""
    h = doc["header"]
    return [(h["gw"], h["seq"], tuple(h["part"]), *p) for p in doc["points"]]


_F32 = struct.Struct("<f")


def wire_type(value: object) -> tuple[str, Any]:
    """The column a value travels in and its golden form, by the spec's rules (§2.7, §2.9)
    rather than by protocols/batch.py: a float goes as f32 when its 64 bits survive a round
    trip through float32, else as f64."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return ("i64" if value < 2**63 else "u64"), str(value)
    if isinstance(value, float):
        bits64 = struct.pack("<d", value)
        try:
            narrow = _F32.pack(value)
        except OverflowError:
            narrow = None
        if narrow is not None and struct.pack("<d", _F32.unpack(narrow)[0]) == bits64:
            return "f32", narrow[::-1].hex()
        return "f64", bits64[::-1].hex()
    if isinstance(value, str):
        return "str", value
    raise TypeError(f"no column for {type(value).__name__}")


def expected_point(sid: int, ts_ms: int, value: object, tq: int = 0) -> list[Any]:
    """What a decoder must give for a point the gateway sealed, in the golden form."""
    kind, v = wire_type(value)
    return [str(sid), str(ts_ms), kind, v, tq]


def disagreements(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """How a decoder's document differs from a golden .json, in words ([] when it agrees).

    A valid vector's header and points must be equal, points in order; the largest vectors list
    ``point_count`` and some ``points_at`` [index, point] instead of every point. A malformed
    vector's ``error``, ``gw`` and ``seq`` must be equal."""
    if "error" in expected:
        want = {k: expected[k] for k in ("error", "gw", "seq")}
        have = {k: got.get(k) for k in ("error", "gw", "seq")}
        return [] if want == have else [f"expected {want}, got {have}"]
    if "error" in got:
        return [f"expected a batch, got error {got['error']} (gw {got['gw']}, seq {got['seq']})"]
    out = []
    if got["header"] != expected["header"]:
        out.append(f"header {got['header']} is not {expected['header']}")
    points = got["points"]
    if "points" in expected:
        want_points = expected["points"]
        if len(points) != len(want_points):
            out.append(f"{len(points)} points, expected {len(want_points)}")
        pairs = enumerate(zip(points, want_points, strict=False))
        bad = [(i, g, w) for i, (g, w) in pairs if g != w]
        out += [f"point {i}: {g} is not {w}" for i, g, w in bad[:5]]
    else:
        if len(points) != expected["point_count"]:
            out.append(f"{len(points)} points, expected {expected['point_count']}")
        for i, w in expected["points_at"]:
            if i >= len(points) or points[i] != w:
                out.append(f"point {i}: {points[i] if i < len(points) else None} is not {w}")
    return out
