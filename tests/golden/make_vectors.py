"""Write the golden vectors of docs/batch-format-v1.md §7 (then commit them):

    PYTHONPATH=. python tests/golden/make_vectors.py            # every .json, a .bin if new
    PYTHONPATH=. python tests/golden/make_vectors.py --force X  # rewrite X.bin (say why)

A vector is NAME.bin (a batch as it goes on the wire) and NAME.json (what it decodes to, or, in
malformed/, the error it must give). A .bin, once committed, is fixed: a decoder in any language
must decode it to its .json forever, so this script writes a .bin only when it is missing, and
SHA256SUMS lists them all (tests/test_batch_contract.py checks it).

Most valid vectors are made by the reference encoder from the points listed here, and the .json
is checked against those points (not only against the reference decoder). The others are built
by hand (msgpack and zstd directly, see ``raw_*``) because the reference encoder never makes them
but the spec allows them (negative offsets, a tq of all zeros, an unsorted dictionary) or forbids
them (every malformed vector: one fault each, named by the error code it must give).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from protocols.batch import MAX_BODY_BYTES, MAX_POINTS, BatchHeader, Point, encode_batch
from tests.batch_decoders import disagreements, expected_point, python_decoder

HERE = Path(__file__).parent
MALFORMED = HERE / "malformed"
T = 1_763_800_000_000
I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def f32(hexbits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(hexbits))[0]


def f64(hexbits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(hexbits))[0]


# --------------------------------------------------------------------------- by the encoder

#: name -> (about, rules, header, points, t0 or None). Points are (sid, ts_ms, value[, tq]).
ENCODED: dict[str, tuple[str, list[str], BatchHeader, list[Point], int | None]] = {
    "meter_two_polls": (
        "The worked example of §8: two SDM630 requests polled twice, float32 and float64.",
        ["R14", "R20", "R21", "R24", "R31", "R34"],
        BatchHeader("hk-cab-0142", 41, 3, T + 2100),
        [
            Point(1, T, f32("43663334")),
            Point(2, T, f32("4365E666")),
            Point(3, T, f32("42480000")),
            Point(1, T + 1000, f32("43663852")),
            Point(2, T + 1000, f32("4365E148")),
            Point(3, T + 1000, f32("42480A3D")),
            Point(10, T + 4, 31422.5625),
            Point(10, T + 1004, 31422.5664),
        ],
        None,
    ),
    "all_types": (
        "Every column type once, with the awkward values.",
        ["R4", "R26", "R31", "R32", "R33", "R34"],
        BatchHeader("gw-types", 1, 1, T, dropped=12),
        [
            Point(1, T, float("nan")),
            Point(1, T + 1, float("inf")),
            Point(1, T + 2, -0.0),
            Point(2, T, 0.1),
            Point(3, T, -(2**63)),
            Point(3, T + 5, 2**63 - 1),
            Point(4, T, 2**64 - 1),
            Point(5, T, True),
            Point(5, T + 7, False),
            Point(6, T, "bật"),
            Point(6, T + 9, "tắt"),
        ],
        None,
    ),
    "late_group": (
        "Groups whose first sample is not at t0 (read 4 and 9 ms after the first request), "
        "polled a different number of times, so ts_mode 0: the second word is a1 - 2*a0.",
        ["R20", "R24"],
        BatchHeader("hk-cab-0142", 42, 3, T + 3100),
        [
            *(Point(1, T + k * 1000, f32("43663334")) for k in range(3)),
            *(Point(10, T + 4 + k * 1000, 31422.5625 + k) for k in range(2)),
            *(Point(11, T + 9 + k * 1001, k) for k in range(3)),
        ],
        None,
    ),
    "empty_dropped": (
        "No points, only a report of 500 readings lost at the gateway.",
        ["R4", "R14", "R16"],
        BatchHeader("gw-empty", 9, 2, T, dropped=500),
        [],
        None,
    ),
    "ts_modes_late_start": (
        "Multi-sample groups in both ts_modes whose first offset is not 0; ts_mode 1 groups "
        "follow a group of another type (f32 then i64, f64 then u64).",
        ["R20", "R21", "R24", "R31"],
        BatchHeader("hk-cab-0150", 7, 2, T + 4000),
        [
            *(
                Point(sid, T + t, f32("43663334") + sid + k)
                for k, t in enumerate((37, 1040, 2036, 3041))
                for sid in (1, 2, 3)
            ),
            *(
                Point(sid, T + t, 100 * sid - k)
                for k, t in enumerate((41, 1043, 2039, 3046))
                for sid in (4, 5)
            ),
            Point(6, T + 500, 0.1),
            Point(6, T + 700, 0.2),
            Point(7, T + 502, 2**64 - 5),
            Point(7, T + 701, 2**63 + 1),
        ],
        None,
    ),
    "negative_offsets": (
        "t0 after some of the timestamps: offsets below 0, in ts_mode 0 and ts_mode 1.",
        ["R20", "R21", "R22"],
        BatchHeader("gw-neg", 3, 1, T + 30_000),
        [
            *(Point(1, T + t, 1.5 * k) for k, t in enumerate((0, 1000, 2000, 20_000))),
            *(Point(2, T + t, k) for k, t in enumerate((3, 1004, 2002, 20_001))),
            Point(3, T - 5000, True),
        ],
        T + 10_000,
    ),
    "wrap_int64": (
        "Arithmetic modulo 2**64: timestamps at both ends of int64 (the second word of the "
        "delta of delta overflows), series ids at both ends with a difference that wraps.",
        ["R17", "R20", "R21", "R22"],
        BatchHeader("gw-wrap", 5, 1, 0),
        [
            Point(I64_MIN, I64_MIN, 1),
            Point(I64_MIN, I64_MAX, 2),
            Point(I64_MAX, I64_MIN, 3),
            Point(I64_MAX, I64_MAX, 4),
            Point(-1, -1, 5),
        ],
        0,
    ),
    "numeric_wrap": (
        "Value predictions that wrap: i64 and u64 at their ends, f32 and f64 words whose "
        "differences overflow 32 and 64 bits, and a first sample predicted from the row above.",
        ["R31", "R34"],
        BatchHeader("gw-words", 6, 1, T),
        [
            *(Point(1, T + k, v) for k, v in enumerate((I64_MIN, I64_MAX, I64_MIN))),
            *(Point(2, T + k, v) for k, v in enumerate((I64_MAX, -1, 0))),
            *(Point(3, T + 10 + k, v) for k, v in enumerate((U64_MAX, 2**63, U64_MAX))),
            *(Point(4, T + 10 + k, v) for k, v in enumerate((2**63, U64_MAX, 2**63 + 7))),
            *(
                Point(5, T + 20 + k, f32(h))
                for k, h in enumerate(("7f7fffff", "ff7fffff", "00000000", "ffffffff"))
            ),
            *(
                Point(6, T + 30 + k, f64(h))
                for k, h in enumerate(("7fefffffffffffff", "ffefffffffffffff", "0000000000000001"))
            ),
        ],
        None,
    ),
    "values": (
        "The values a meter can serve: u64 above 2**63, NaN with sign and payload (f32 and "
        "f64, a signalling f64 NaN), infinities, -0.0, subnormals, empty, multibyte, astral "
        "and 70,000-character strings, and bools whose rows cross byte boundaries.",
        ["R31", "R32", "R33", "R34"],
        BatchHeader("gw-values", 11, 4, T + 60_000),
        [
            *(Point(1, T + k, v) for k, v in enumerate((2**63, U64_MAX, 12345678901234567890))),
            *(Point(2, T + k, v) for k, v in enumerate((-1, 0, I64_MAX))),
            *(
                Point(3, T + k, f32(h))
                for k, h in enumerate(
                    (
                        "7fc00000",
                        "ffc12345",
                        "7f800000",
                        "ff800000",
                        "80000000",
                        "00000001",
                        "007fffff",
                        "43663334",
                    )
                )
            ),
            *(
                Point(4, T + k, f64(h))
                for k, h in enumerate(
                    ("7ff8000000000001", "7ff0000000000001", "0000000000000001", "3fb999999999999a")
                )
            ),
            *(Point(sid, T + k, (sid + k) % 2 == 0) for sid in (20, 21, 22) for k in range(3)),
            *(Point(23, T + 100 + k, k % 3 == 0) for k in range(5)),
            Point(30, T, ""),
            Point(30, T + 1, "bật"),
            Point(30, T + 2, "🚦 đèn giao thông"),
            Point(30, T + 3, "Hà Nội " * 10_000),
            Point(31, T, ""),
        ],
        None,
    ),
    "time_qualities": (
        "Time qualities good, corrected and uncertain in one batch: one byte per timestamp.",
        ["R23"],
        BatchHeader("gw-clock", 12, 2, T + 9000),
        [
            Point(1, T, 230.0, 0),
            Point(1, T + 1000, 230.5, 1),
            Point(1, T + 2000, 231.0, 2),
            Point(2, T, 50.0, 0),
            Point(2, T + 1000, 50.5, 1),
            Point(2, T + 2000, 51.0, 2),
            Point(3, T + 5, 7, 2),
            Point(3, T + 1005, 8, 2),
        ],
        None,
    ),
    "sid_deltas_across_groups": (
        "Series id differences run across group boundaries (9 then 2: -7); one series in two "
        "groups (its type changed from f32 to i64).",
        ["R17", "R24"],
        BatchHeader("gw-sids", 13, 1, T + 5000),
        [
            Point(1, T, 1.0),
            Point(9, T, 9.0),
            Point(1, T + 1000, 1.25),
            Point(9, T + 1000, 9.25),
            Point(2, T + 400, 2.0),
            Point(5, T, 5.0),
            Point(5, T + 1000, 6),
        ],
        None,
    ),
    "split_part_1": (
        "Part [1] of a batch split for the broker's size: it carries the whole batch's dropped "
        "and dropped_why; created is the whole batch's.",
        ["R5", "R6", "R35"],
        BatchHeader("gw-split", 20, 2, T + 30_000, 7, part=(1,), dropped_why={"unencodable": 2}),
        [Point(1, T + k * 1000, 230.0 + k) for k in range(3)],
        None,
    ),
    "split_part_2_1": (
        "Part [2, 1] of the same batch: dropped 0, no dropped_why, its own n.",
        ["R5", "R35"],
        BatchHeader("gw-split", 20, 2, T + 30_000, 0, part=(2, 1)),
        [Point(1, T + k * 1000, 230.0 + k) for k in range(3, 5)],
        None,
    ),
    "split_part_2_2": (
        "Part [2, 2] of the same batch.",
        ["R5", "R35"],
        BatchHeader("gw-split", 20, 2, T + 30_000, 0, part=(2, 2)),
        [Point(1, T + k * 1000, 230.0 + k) for k in range(5, 8)],
        None,
    ),
}


def encoded(name: str) -> tuple[bytes, dict[str, Any]]:
    about, rules, header, points, t0 = ENCODED[name]
    path = HERE / f"{name}.bin"
    payload = path.read_bytes() if path.exists() else encode_batch(header, points, t0=t0)
    [doc] = python_decoder([payload])
    want = sorted(expected_point(*p) for p in points)
    assert sorted(doc["points"]) == want, f"{name}: the decoder does not give the points"
    return payload, {"about": about, "rules": rules, **doc}


# --------------------------------------------------------------------------- by hand


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


class _Raw(bytes):
    """Bytes that are already msgpack, put in a map as they are."""


def pack_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map from pairs, so a key can repeat or be of any type (pack cannot)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(pack(k) + (v if isinstance(v, _Raw) else pack(v)) for k, v in pairs)


def zstd(raw: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=content_size).compress(raw)


def header_pairs(payload: bytes) -> list[tuple[str, Any]]:
    return list(msgpack.unpackb(payload, raw=False).items())


def body_doc(payload: bytes) -> list[Any]:
    head = msgpack.unpackb(payload, raw=False)
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(head["body"]), raw=False)


def rebuild(
    payload: bytes,
    *,
    doc: list[Any] | None = None,
    raw: bytes | None = None,
    body: bytes | None = None,
    change: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    pairs: list[tuple[Any, Any]] | None = None,
) -> bytes:
    """``payload`` with its body replaced (a body document, raw msgpack bytes to compress, or
    the compressed bytes) and header keys changed, dropped or given outright as pairs."""
    if doc is not None:
        raw = pack(doc)
    if raw is not None:
        body = zstd(raw)
    if pairs is None:
        pairs = [(k, v) for k, v in header_pairs(payload) if k not in drop]
        if body is not None:
            pairs = [(k, body if k == "body" else v) for k, v in pairs]
        for key, value in (change or {}).items():
            if any(k == key for k, _ in pairs):
                pairs = [(k, value if k == key else v) for k, v in pairs]
            else:
                pairs.append((key, value))
    return pack_map(pairs)


def shuffled(words: list[int], width: int) -> bytes:
    raw = b"".join(w.to_bytes(width, "little") for w in words)
    return b"".join(raw[i::width] for i in range(width))


def zigzag(v: int, bits: int = 64) -> int:
    return ((v << 1) ^ (v >> (bits - 1))) & ((1 << bits) - 1)


def _base() -> bytes:
    """The batch every malformed vector breaks in one place: f32 3 x 2 (ts_mode 0), i64 1 x 2
    (ts_mode 1), bool 1 x 3, str 1 x 2, with time qualities."""
    return encode_batch(
        BatchHeader("gw-bad", 77, 5, T + 9000, 3),
        [
            *(Point(sid, T + k * 1000, 230.0 + sid + k, k) for sid in (1, 2, 3) for k in range(2)),
            *(Point(4, T + 3 + k * 1000, 40 + k, k) for k in range(2)),
            *(Point(5, T + 500 + k * 100, k != 1) for k in range(3)),
            *(Point(6, T + 700 + k * 10, ("on", "off")[k]) for k in range(2)),
        ],
    )


BASE = _base()
assert [e[3] for e in body_doc(BASE)[1]] == [0, 1, 0, 0], "the base needs both ts_modes"


def edit(fn: Callable[[list[Any]], None]) -> list[Any]:
    doc = body_doc(BASE)
    fn(doc)
    return doc


def _tq_all_good() -> tuple[bytes, dict[str, Any]]:
    header = BatchHeader("gw-tq", 14, 1, T + 2000)
    points = [Point(1, T, 1.0), Point(1, T + 1000, 2.0), Point(2, T + 3, 3)]
    plain = encode_batch(header, points)
    doc = body_doc(plain)
    doc.append(bytes(sum(e[2] for e in doc[1])))
    payload = rebuild(plain, doc=doc)
    [got] = python_decoder([payload])
    assert sorted(got["points"]) == sorted(expected_point(*p) for p in points)
    return payload, got


def _strings_unsorted() -> tuple[bytes, dict[str, Any]]:
    # One str group, series 8 and 9 x 3 samples; the dictionary unsorted, with an unused entry.
    strings = ["zebra", "", "alpha", "unused"]
    idx = [[0, 1, 2], [2, 2, 0]]
    doc = [
        T,
        [[6, 2, 3, 0]],
        shuffled([zigzag(8), zigzag(1)], 8),
        shuffled([zigzag(0), zigzag(1000), zigzag(0)], 8),
        [[6, shuffled([i for row in idx for i in row], 4)]],
        strings,
    ]
    head = [("v", 1), ("gw", "gw-dict"), ("seq", 15), ("boot", 1), ("created", T + 3000)]
    payload = pack_map([*head, ("dropped", 0), ("n", 6), ("z", "zstd"), ("body", zstd(pack(doc)))])
    [got] = python_decoder([payload])
    want = [
        [str(sid), str(T + t), "str", strings[i], 0]
        for sid, row in zip((8, 9), idx, strict=True)
        for t, i in zip((0, 1000, 2000), row, strict=True)
    ]
    assert got["points"] == want
    return payload, got


def _unknown_header_keys() -> tuple[bytes, dict[str, Any]]:
    points = [Point(1, T, 1.0)]
    plain = encode_batch(BatchHeader("gw-future", 16, 1, T), points)
    future = {"nested": [1, 2.5, None, {"k": b"\x00"}], "ts": msgpack.ExtType(5, b"abc")}
    payload = rebuild(plain, change={"future": future, "zz": True})
    [got] = python_decoder([payload])
    assert got["points"] == [expected_point(*points[0])]
    return payload, got


def nested(arrays: int) -> _Raw:
    """``arrays`` arrays, each the one element of the one before, around a nil: depth ``arrays``."""
    return _Raw(b"\x91" * arrays + b"\xc0")


#: Ext values §0 allows in an unknown header key: msgpack timestamps (ext -1) of 4, 8 and 12
#: bytes (the 64-bit one with 999,999,999 ns, the 96-bit one -5 s) and a reserved type (-18).
EXT_VALUES = _Raw(
    b"\x94"
    + b"\xd6\xff\x00\x00\x00\x01"
    + b"\xd7\xff"
    + ((999_999_999 << 34) | 5).to_bytes(8, "big")
    + b"\xc7\x0c\xff"
    + (999_999_999).to_bytes(4, "big")
    + (-5).to_bytes(8, "big", signed=True)
    + b"\xd4\xee\x00"
)


def _unknown_header_keys_deep() -> tuple[bytes, dict[str, Any]]:
    points = [Point(1, T, 1.0)]
    plain = encode_batch(BatchHeader("gw-future", 19, 1, T), points)
    payload = rebuild(
        plain, pairs=[*header_pairs(plain), ("deep", nested(31)), ("ext", EXT_VALUES)]
    )
    [got] = python_decoder([payload])
    assert got["points"] == [expected_point(*points[0])]
    return payload, got


def pack_wide(obj: Any) -> bytes:
    """msgpack with every int in its widest form (uint 64 or int 64), as some encoders write."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, bytes, float)):
        return pack(obj)
    if isinstance(obj, int):
        return (b"\xcf" if obj >= 0 else b"\xd3") + obj.to_bytes(8, "big", signed=obj < 0)
    if isinstance(obj, list):
        return b"\xdd" + len(obj).to_bytes(4, "big") + b"".join(map(pack_wide, obj))
    if isinstance(obj, dict):
        items = b"".join(pack_wide(k) + pack_wide(v) for k, v in obj.items())
        return b"\xdf" + len(obj).to_bytes(4, "big") + items
    raise TypeError(type(obj))


def _wide_ints() -> tuple[bytes, dict[str, Any]]:
    points = [Point(1, T, 1.5), Point(1, T + 1000, 2.5), Point(2, T + 4, 7), Point(3, T, True)]
    plain = encode_batch(BatchHeader("gw-wide", 18, 2, T + 2000, 1), points)
    head = msgpack.unpackb(plain, raw=False)
    head["body"] = zstd(pack_wide(body_doc(plain)))
    head["dropped_why"] = {}
    payload = pack_wide(head)
    [got] = python_decoder([payload])
    assert sorted(got["points"]) == sorted(expected_point(*p) for p in points)
    return payload, got


LARGEST_ROWS = 1000  # the largest layout: 1000 bool groups of 1 series x 1000 samples


def _largest() -> tuple[bytes, dict[str, Any]]:
    """n = MAX_POINTS and a body of exactly MAX_BODY_BYTES: 1000 bool groups of one series x
    1000 samples (series 1..1000, each group ts_mode 1 on the one before it but the first),
    padded to the byte with an unused dictionary entry."""
    rows = LARGEST_ROWS
    assert rows * rows == MAX_POINTS
    layout = [[5, 1, rows, 1 if g else 0] for g in range(rows)]
    ts = [zigzag(1000 if k == 1 else 0) for k in range(rows)]  # 0, 1000, 2000, ...
    ts += [zigzag(1)] * rows * (rows - 1)  # each group 1 ms after the one before
    pattern = bytes([0b10010010, 0b01001001, 0b00100100])  # every third bit set
    bits = (pattern * (rows * rows // 24 + 1))[: rows * rows // 8]
    doc = [T, layout, shuffled([zigzag(1)] * rows, 8), shuffled(ts, 8), [[5, bits]], ["", ""]]
    # The padding string replaces an empty one (1 byte) and needs a str32 header (5 bytes).
    doc[5][1] = "x" * (MAX_BODY_BYTES - len(pack(doc)) + 1 - 5)
    raw = pack(doc)
    assert len(raw) == MAX_BODY_BYTES, len(raw)
    head = [("v", 1), ("gw", "gw-largest"), ("seq", 17), ("boot", 1), ("created", T + 999_999)]
    payload = pack_map(
        [*head, ("dropped", 0), ("n", MAX_POINTS), ("z", "zstd"), ("body", zstd(raw))]
    )
    [got] = python_decoder([payload])
    pts = got.pop("points")
    assert len(pts) == MAX_POINTS
    at = [0, 1, 2, 999, 1000, 1001, 123_456, 999_998, 999_999]
    for i in at:
        g, k = divmod(i, rows)
        bit = (i % 3) == 0
        assert pts[i] == [str(g + 1), str(T + k * 1000 + g), "bool", bit, 0], (i, pts[i])
    got["point_count"] = MAX_POINTS
    got["points_at"] = [[i, pts[i]] for i in at]
    return payload, got


HAND: dict[str, tuple[str, list[str], Callable[[], tuple[bytes, dict[str, Any]]]]] = {
    "tq_all_good": (
        "A tq present although every quality is good (0): allowed.",
        ["R23"],
        _tq_all_good,
    ),
    "strings_unsorted": (
        "A dictionary neither sorted nor all used: a decoder relies on neither.",
        ["R33"],
        _strings_unsorted,
    ),
    "unknown_header_keys": (
        "Header keys the format does not know, with values of any msgpack type: ignored.",
        ["R9"],
        _unknown_header_keys,
    ),
    "unknown_header_keys_deep": (
        "Unknown header keys at the limits of §0: arrays nested 31 deep in the header's map "
        "(depth 32, the deepest allowed), msgpack timestamps of 4, 8 and 12 bytes and an ext of "
        "the reserved type -18: ignored.",
        ["R1", "R9"],
        _unknown_header_keys_deep,
    ),
    "wide_ints": (
        "Every int in its widest msgpack form (uint 64 / int 64, 32-bit array and map "
        "lengths), and an empty dropped_why: both allowed.",
        ["R4", "R6", "R15"],
        _wide_ints,
    ),
    "largest": (
        "The largest batch a decoder must accept: n = 1,000,000 points in 1000 groups, a body "
        "of exactly 64 MiB (67,108,864 bytes) decompressed.",
        ["R8", "R12", "R16", "R21", "R32"],
        _largest,
    ),
}

# --------------------------------------------------------------------------- malformed


def _too_large() -> bytes:
    """BASE's body with a third, unused dictionary entry that makes it MAX_BODY_BYTES + 1."""
    doc = body_doc(BASE)
    doc[5].append("")
    doc[5][2] = "x" * (MAX_BODY_BYTES + 1 - len(pack(doc)) + 1 - 5)
    raw = pack(doc)
    assert len(raw) == MAX_BODY_BYTES + 1
    return raw


#: name -> (about, rules, error code, payload builder). Each breaks BASE in one place.
BAD: dict[str, tuple[str, list[str], str, Callable[[], bytes]]] = {
    "not_msgpack": ("A byte msgpack never uses.", ["R1"], "not_msgpack", lambda: b"\xc1"),
    "header_then_more": (
        "A whole batch, then one more byte.",
        ["R1"],
        "not_msgpack",
        lambda: BASE + b"\x00",
    ),
    "header_invalid_utf8": (
        "gw is a msgpack str that is not UTF-8.",
        ["R1"],
        "not_msgpack",
        lambda: BASE.replace(b"\xa6gw-bad", b"\xa6gw-\xff\xfe\xfd"),
    ),
    "header_not_map": ("The payload is an array.", ["R2"], "bad_header", lambda: pack([1, 2])),
    "header_key_not_str": (
        "A header key that is an int.",
        ["R2"],
        "bad_header",
        lambda: rebuild(BASE, pairs=[*header_pairs(BASE), (1, 1)]),
    ),
    "header_key_twice": (
        "The key boot twice.",
        ["R2"],
        "bad_header",
        lambda: rebuild(BASE, pairs=[*header_pairs(BASE), ("boot", 5)]),
    ),
    "header_no_boot": ("No boot.", ["R4"], "bad_header", lambda: rebuild(BASE, drop=("boot",))),
    "header_boot_zero": (
        "boot 0.",
        ["R4"],
        "bad_header",
        lambda: rebuild(BASE, change={"boot": 0}),
    ),
    "header_seq_negative": (
        "seq -1 (so the batch has a gateway but no seq to name it by).",
        ["R4"],
        "bad_header",
        lambda: rebuild(BASE, change={"seq": -1}),
    ),
    "header_seq_float": (
        "seq 77.0, a msgpack float where an int is required.",
        ["R4"],
        "bad_header",
        lambda: rebuild(BASE, change={"seq": 77.0}),
    ),
    "header_created_bool": (
        "created true, a msgpack bool where an int is required.",
        ["R4"],
        "bad_header",
        lambda: rebuild(BASE, change={"created": True}),
    ),
    "header_body_str": (
        "body a msgpack str, not a bin.",
        ["R4"],
        "bad_header",
        lambda: rebuild(BASE, change={"body": "zstd"}),
    ),
    "header_n_missing": ("No n.", ["R4"], "bad_header", lambda: rebuild(BASE, drop=("n",))),
    "header_part_3": (
        "A part path with a 3.",
        ["R5"],
        "bad_header",
        lambda: rebuild(BASE, change={"part": [1, 3]}),
    ),
    "header_part_empty": (
        "An empty part path.",
        ["R5"],
        "bad_header",
        lambda: rebuild(BASE, change={"part": []}),
    ),
    "header_dropped_why_negative": (
        "A dropped_why count below 0.",
        ["R6"],
        "bad_header",
        lambda: rebuild(BASE, change={"dropped_why": {"unencodable": -1}}),
    ),
    "header_dropped_why_key_twice": (
        "A dropped_why with the same reason twice.",
        ["R6"],
        "bad_header",
        lambda: rebuild(
            BASE,
            pairs=[
                *header_pairs(BASE),
                ("dropped_why", _Raw(pack_map([("unencodable", 1), ("unencodable", 1)]))),
            ],
        ),
    ),
    "header_dropped_why_over": (
        "dropped_why counts more than dropped (3).",
        ["R6"],
        "bad_header",
        lambda: rebuild(BASE, change={"dropped_why": {"unencodable": 2, "other": 2}}),
    ),
    "version_2": (
        "v 2, the rest a good version-1 batch.",
        ["R3"],
        "unsupported_version",
        lambda: rebuild(BASE, change={"v": 2}),
    ),
    "compression_gzip": (
        "z gzip.",
        ["R7"],
        "unsupported_compression",
        lambda: rebuild(BASE, change={"z": "gzip"}),
    ),
    "too_many_points": (
        "n = 1,000,001 (the layout says 13: n is checked first).",
        ["R8"],
        "too_many_points",
        lambda: rebuild(BASE, change={"n": MAX_POINTS + 1}),
    ),
    "zstd_not_a_frame": (
        "A body that is not zstd.",
        ["R10"],
        "bad_zstd",
        lambda: rebuild(BASE, body=b"not zstd at all"),
    ),
    "zstd_skippable_frame": (
        "A skippable frame (magic 0x184D2A50) before the frame.",
        ["R10"],
        "bad_zstd",
        lambda: rebuild(
            BASE,
            body=b"\x50\x2a\x4d\x18\x04\x00\x00\x00skip" + zstd(pack(body_doc(BASE))),
        ),
    ),
    "zstd_cut_short": (
        "The frame without its last 3 bytes.",
        ["R10"],
        "bad_zstd",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE)))[:-3]),
    ),
    "zstd_wrong_content_size": (
        "A frame that declares one byte more than it holds.",
        ["R10", "R11"],
        "bad_zstd",
        lambda: rebuild(BASE, body=_declare_plus_one(zstd(pack(body_doc(BASE))))),
    ),
    "zstd_no_content_size": (
        "A frame that does not declare its content size.",
        ["R11"],
        "zstd_no_content_size",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE)), content_size=False)),
    ),
    "zstd_then_more": (
        "One byte after the frame.",
        ["R13"],
        "zstd_trailing_bytes",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE))) + b"\x00"),
    ),
    "zstd_two_frames": (
        "A second frame after the first.",
        ["R13"],
        "zstd_trailing_bytes",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE))) + zstd(b"\x90")),
    ),
    "body_too_large": (
        "A body of 64 MiB + 1 byte (a long string in the dictionary).",
        ["R12"],
        "body_too_large",
        lambda: rebuild(BASE, raw=_too_large()),
    ),
    "body_not_array": (
        "The body is a map.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, raw=pack({"t0": T})),
    ),
    "body_five_fields": (
        "The body without strings.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, doc=body_doc(BASE)[:5]),
    ),
    "body_then_more": (
        "The body array, then one more msgpack value.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, raw=pack(body_doc(BASE)) + b"\xc0"),
    ),
    "body_t0_float": (
        "t0 a msgpack float.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(0, float(T)))),
    ),
    "body_t0_beyond_int64": (
        "t0 = 2**63 (a uint64).",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(0, 2**63))),
    ),
    "body_sids_array": (
        "sids an array, not a bin.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(2, list(d[2])))),
    ),
    "body_string_not_str": (
        "An int in the dictionary.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, doc=edit(lambda d: d[5].append(3))),
    ),
    "body_string_invalid_utf8": (
        "A dictionary str that is not UTF-8.",
        ["R14"],
        "bad_body",
        lambda: rebuild(BASE, raw=pack(body_doc(BASE)).replace(b"\xa3off", b"\xa3o\xc0\xaf")),
    ),
    "layout_type_7": (
        "The str group of type 7 (so its column is unused too, a later stage).",
        ["R15"],
        "bad_layout",
        lambda: rebuild(BASE, doc=edit(lambda d: d[1][3].__setitem__(0, 7))),
    ),
    "layout_no_samples": (
        "A group of 0 samples (n adjusted).",
        ["R15"],
        "bad_layout",
        lambda: rebuild(BASE, change={"n": 11}, doc=edit(lambda d: d[1][3].__setitem__(2, 0))),
    ),
    "layout_ts_mode_2": (
        "A group of ts_mode 2.",
        ["R15"],
        "bad_layout",
        lambda: rebuild(BASE, doc=edit(lambda d: d[1][0].__setitem__(3, 2))),
    ),
    "layout_entry_short": (
        "A layout entry of three ints.",
        ["R15"],
        "bad_layout",
        lambda: rebuild(BASE, doc=edit(lambda d: d[1][0].pop())),
    ),
    "points_mismatch": (
        "n 14, the layout 13.",
        ["R16"],
        "points_mismatch",
        lambda: rebuild(BASE, change={"n": 14}),
    ),
    "sids_short": (
        "sids one byte short.",
        ["R17"],
        "bad_sids",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(2, d[2][:-1]))),
    ),
    "sids_descending": (
        "Series ids 1, 3, 2 in a group.",
        ["R18"],
        "sids_not_ascending",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(2, _sids([1, 3, 2, 4, 5, 6])))),
    ),
    "sids_repeated": (
        "Series ids 1, 2, 2 in a group.",
        ["R18"],
        "sids_not_ascending",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(2, _sids([1, 2, 2, 4, 5, 6])))),
    ),
    "ts_short": (
        "ts 8 bytes short.",
        ["R19"],
        "bad_ts",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(3, d[3][:-8]))),
    ),
    "ts_mode_1_first": (
        "The first group in ts_mode 1.",
        ["R21"],
        "bad_ts_mode",
        lambda: rebuild(BASE, doc=edit(lambda d: d[1][0].__setitem__(3, 1))),
    ),
    "ts_mode_1_other_samples": (
        "A ts_mode 1 group (str, 2 samples) after a group of 3 samples (bool).",
        ["R21"],
        "bad_ts_mode",
        lambda: rebuild(BASE, doc=edit(lambda d: d[1][3].__setitem__(3, 1))),
    ),
    "tq_short": (
        "tq one byte short.",
        ["R23"],
        "bad_tq",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(6, d[6][:-1]))),
    ),
    "tq_quality_3": (
        "A time quality of 3.",
        ["R23"],
        "bad_tq",
        lambda: rebuild(BASE, doc=edit(lambda d: d.__setitem__(6, d[6][:-1] + b"\x03"))),
    ),
    "column_not_pair": (
        "A column entry of three elements.",
        ["R25"],
        "bad_columns",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][0].append(b""))),
    ),
    "column_order": (
        "The i64 column before the f32 column.",
        ["R26"],
        "column_order",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].insert(0, d[4].pop(1)))),
    ),
    "column_twice": (
        "The f32 column twice, both of the right size.",
        ["R27"],
        "column_twice",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].insert(1, list(d[4][0])))),
    ),
    "column_unused_f64": (
        "An empty f64 column, which no group has.",
        ["R28"],
        "column_unused",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].insert(1, [2, b""]))),
    ),
    "column_unknown_type": (
        "A column of type 7 at the end.",
        ["R28"],
        "column_unused",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].append([7, b""]))),
    ),
    "column_type_0": (
        "A column of type 0 first (a type code outside 1-6).",
        ["R28"],
        "column_unused",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].insert(0, [0, b""]))),
    ),
    "column_missing": (
        "No bool column.",
        ["R29"],
        "column_missing",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4].pop(2))),
    ),
    "column_size_f32": (
        "The f32 column one byte long.",
        ["R30"],
        "column_size",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][0].__setitem__(1, d[4][0][1] + b"\x00"))),
    ),
    "column_size_bool": (
        "The bool column one byte long.",
        ["R30", "R32"],
        "column_size",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][2].__setitem__(1, d[4][2][1] + b"\x00"))),
    ),
    "column_size_str": (
        "The str column one byte short.",
        ["R30", "R33"],
        "column_size",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][3].__setitem__(1, d[4][3][1][:-1]))),
    ),
    "bool_padding": (
        "A padding bit set after the three bools (0b101 then 1 in bit 4).",
        ["R32"],
        "bool_padding",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][2].__setitem__(1, b"\xb0"))),
    ),
    "string_index": (
        "A str index 2 into a dictionary of two.",
        ["R33"],
        "string_index",
        lambda: rebuild(BASE, doc=edit(lambda d: d[4][3].__setitem__(1, shuffled([2, 0], 4)))),
    ),
    # Contract v1.1, settled when the second decoder (protocols/js) was compared with ours:
    # nesting (§0), a frame declaring 0 bytes (R10), and the order of checks within a stage (§6).
    "header_nested_33_deep": (
        "An unknown header key holding arrays nested 32 deep: with the header's map, depth 33 "
        "(§0 allows 32), however the rest looks.",
        ["R1", "R9"],
        "not_msgpack",
        lambda: rebuild(BASE, pairs=[*header_pairs(BASE), ("deep", nested(32))]),
    ),
    "header_timestamp_2_bytes": (
        "An unknown header key holding an ext of type -1 (a msgpack timestamp) of 2 bytes, which "
        "is no timestamp (§0).",
        ["R1", "R9"],
        "not_msgpack",
        lambda: rebuild(BASE, pairs=[*header_pairs(BASE), ("ts", _Raw(b"\xd5\xff\x00\x01"))]),
    ),
    "body_nested_33_deep": (
        "A layout entry whose ts_mode is arrays nested 30 deep: depth 33 in the body (§0), so "
        "bad_body (R14), not bad_layout (R15).",
        ["R14", "R15"],
        "bad_body",
        lambda: rebuild(
            BASE,
            raw=pack(body_doc(BASE)).replace(
                b"\x94\x01\x03\x02\x00", b"\x94\x01\x03\x02" + nested(30), 1
            ),
        ),
    ),
    "zstd_declares_0_bytes_with_content": (
        "A frame declaring 0 bytes whose raw block holds the body.",
        ["R10"],
        "bad_zstd",
        lambda: rebuild(BASE, body=raw_frame(pack(body_doc(BASE)), declare=0)),
    ),
    "zstd_declares_0_bytes_empty": (
        "A whole frame declaring 0 bytes, with one raw block of 0 bytes: no body is empty.",
        ["R10"],
        "bad_zstd",
        lambda: rebuild(BASE, body=raw_frame(b"", size_bytes=1)),
    ),
    "zstd_no_content_size_cut_short": (
        "A frame without its content size and without its last 3 bytes: the frame's bytes "
        "(R10) are checked before R11.",
        ["R10", "R11"],
        "bad_zstd",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE)), content_size=False)[:-3]),
    ),
    "zstd_too_large_cut_short": (
        "A frame declaring 64 MiB + 1 byte whose raw block is cut short: R10 before R12.",
        ["R10", "R12"],
        "bad_zstd",
        lambda: rebuild(
            BASE,
            body=raw_frame(pack(body_doc(BASE)), declare=MAX_BODY_BYTES + 1, size_bytes=4)[:-1],
        ),
    ),
    "zstd_no_content_size_then_more": (
        "A frame without its content size, then one byte: R11 before R13.",
        ["R11", "R13"],
        "zstd_no_content_size",
        lambda: rebuild(BASE, body=zstd(pack(body_doc(BASE)), content_size=False) + b"\x00"),
    ),
    "columns_out_of_order_and_twice": (
        "The f32 column twice, then an empty f64 column last: R26 (order) before R27 (twice), "
        "over all the entries.",
        ["R26", "R27"],
        "column_order",
        lambda: rebuild(
            BASE, doc=edit(lambda d: (d[4].insert(1, list(d[4][0])), d[4].append([2, b""])))
        ),
    ),
    "columns_twice_and_unused": (
        "A column of type 0 first, and the str column twice at the end: R27 (twice) before "
        "R28 (unused), over all the entries.",
        ["R27", "R28"],
        "column_twice",
        lambda: rebuild(
            BASE, doc=edit(lambda d: (d[4].insert(0, [0, b""]), d[4].append(list(d[4][-1]))))
        ),
    ),
    "sids_descending_after_ts_mode_fault": (
        "Group 1 in ts_mode 1 (R21), then ids 2, 4, 3 in group 2 (R18): within stage 6 the "
        "rules go in rule-number order over all the groups, so R18.",
        ["R18", "R21"],
        "sids_not_ascending",
        lambda: _stage6_sids_after_ts_mode(),
    ),
    "ts_mode_1_first_and_bool_padding": (
        "The first group in ts_mode 1 (R21) and a bool padding bit set (R32): R21.",
        ["R21", "R32"],
        "bad_ts_mode",
        lambda: rebuild(
            BASE,
            doc=edit(lambda d: (d[1][0].__setitem__(3, 1), d[4][2].__setitem__(1, b"\xb0"))),
        ),
    ),
    "bool_padding_and_string_index": (
        "A bool padding bit set (R32) and a str index past the dictionary (R33): R32.",
        ["R32", "R33"],
        "bool_padding",
        lambda: rebuild(
            BASE,
            doc=edit(
                lambda d: (
                    d[4][2].__setitem__(1, b"\xb0"),
                    d[4][3].__setitem__(1, shuffled([2, 0], 4)),
                )
            ),
        ),
    ),
}


def raw_frame(content: bytes, *, declare: int | None = None, size_bytes: int = 8) -> bytes:
    """One zstd frame of one raw block (RFC 8878), single segment, declaring ``declare`` bytes
    (the content's length by default) in a content size field of ``size_bytes`` (1, 4 or 8)."""
    flag = {1: 0, 4: 2, 8: 3}[size_bytes]
    declared = len(content) if declare is None else declare
    block = (1 | len(content) << 3).to_bytes(3, "little")
    return (
        _ZSTD_MAGIC
        + bytes([flag << 6 | 0x20])
        + declared.to_bytes(size_bytes, "little")
        + block
        + content
    )


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _stage6_sids_after_ts_mode() -> bytes:
    """Group 1 (series 1) in ts_mode 1, so it breaks R21; group 2 (series 2-4) with ids 2, 4, 3,
    so it breaks R18. Rule-number order: R18 first, whatever the group."""
    base = encode_batch(
        BatchHeader("gw-bad", 78, 5, T + 9000),
        [
            *(Point(1, T + k * 1000, 1.0 + k) for k in range(2)),
            *(Point(sid, T + 5 + k * 1000, 230.0 + sid) for sid in (2, 3, 4) for k in range(2)),
        ],
    )
    doc = body_doc(base)
    assert [e[:3] for e in doc[1]] == [[1, 1, 2], [1, 3, 2]], doc[1]
    doc[1][0][3] = 1
    doc[2] = _sids([1, 2, 4, 3])
    return rebuild(base, doc=doc)


def _sids(ids: list[int]) -> bytes:
    return shuffled([zigzag(b - a) for a, b in zip([0, *ids], ids, strict=False)], 8)


def _declare_plus_one(frame: bytes) -> bytes:
    """The frame with its declared content size one more (a 1-, 2- or 4-byte field)."""
    fhd = frame[4]
    single = (fhd >> 5) & 1
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    value = int.from_bytes(frame[at : at + size], "little") + 1
    return frame[:at] + value.to_bytes(size, "little") + frame[at + size :]


# --------------------------------------------------------------------------- write


def golden_text(doc: dict[str, Any]) -> str:
    """The .json text: one key a line, one point a line (plain JSON, UTF-8)."""

    def one(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)

    lines = []
    for key, value in doc.items():
        if key in ("points", "points_at"):
            inner = ",\n".join(f"  {one(p)}" for p in value)
            lines.append(f" {one(key)}: [\n{inner}\n ]" if value else f" {one(key)}: []")
        else:
            lines.append(f" {one(key)}: {one(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == doc
    return text


def write(folder: Path, name: str, payload: bytes, doc: dict[str, Any], force: bool) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.bin"
    if force or not path.exists():
        path.write_bytes(payload)
    elif path.read_bytes() != payload:
        # A committed vector never changes (another zstd may compress differently): its .json
        # must still hold for its own bytes.
        [got] = python_decoder([path.read_bytes()])
        wrong = disagreements(doc, got)
        if wrong:
            sys.exit(f"{path} does not decode to the new {name}.json: {wrong[:3]}")
    (folder / f"{name}.json").write_text(golden_text(doc))
    print(f"{folder.name}/{name}: {len(payload)} bytes")


def main() -> None:
    args = sys.argv[1:]
    force = "--force" in args
    only = {a for a in args if a != "--force"}
    for name in ENCODED:
        if not only or name in only:
            payload, doc = encoded(name)
            write(HERE, name, payload, doc, force)
    for name, (about, rules, make) in HAND.items():
        if not only or name in only:
            payload, got = make()
            write(HERE, name, payload, {"about": about, "rules": rules, **got}, force)
    for name, (about, rules, code, make) in BAD.items():
        if not only or name in only:
            payload = make()
            [got] = python_decoder([payload])
            assert got.get("error") == code, f"{name}: {got} is not {code}"
            doc = {"about": about, "rules": rules, **got}
            write(MALFORMED, name, payload, doc, force)
    # SHA256SUMS only grows: its lines stay as they are, a new .bin is appended.
    sums_path = HERE / "SHA256SUMS"
    sums = sums_path.read_text().splitlines() if sums_path.exists() else []
    listed = {line.split("  ", 1)[1] for line in sums}
    sums += [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(HERE)}"
        for p in sorted([*HERE.glob("*.bin"), *MALFORMED.glob("*.bin")])
        if str(p.relative_to(HERE)) not in listed
    ]
    sums_path.write_text("\n".join(sums) + "\n")


if __name__ == "__main__":
    main()
