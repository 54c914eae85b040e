"""Uplink batch format v1: columnar, typed, delta-encoded, byte-shuffled, zstd. No I/O.

The normative description is docs/batch-format-v1.md (contract v1.1): every rule, every check a
decoder makes and the error code it gives, a worked example. The golden vectors in tests/golden/
pin each rule; this module is the reference implementation and must agree with both. In short,
one MQTT message carries one batch:

    header  msgpack map, uncompressed, so a consumer can name a batch it cannot decode:
            {"v": 1, "gw": str, "seq": int, "boot": int, "created": int ms, "dropped": int,
             "n": points in the batch, "z": "zstd", "body": bin(, "part", "dropped_why")}
    body    one zstd frame (content size declared, nothing after it, at most 64 MiB
            decompressed) of a msgpack array [t0, layout, sids, ts, columns, strings(, tq)]
            t0      int64, ms since the Unix epoch; every timestamp is an offset from it
            layout  [[type, series, samples, ts_mode], ...], one entry per *group*: series of
                    one value type sampled at identical instants (one Modbus request reads
                    many points at once). type: 1 f32, 2 f64, 3 i64, 4 u64, 5 bool, 6 str
            sids    bin: every group's series ids, strictly ascending within a group, each minus
                    the one before it across groups (the first minus 0), zigzag, uint64 LE,
                    byte-shuffled
            ts      bin: every group's timestamps as int64 offsets from t0, per group either
                    0  delta of delta from an offset 0 and a delta 0: [a0, a1 - 2*a0, ...]
                    1  minus the previous group's offsets (same sample count)
                    zigzag, uint64 LE, byte-shuffled; all arithmetic wraps modulo 2**64
            columns [[type, bin], ...] in ascending type order, one per type used: numeric
                    words predicted (previous sample; a row's first from the row above),
                    zigzag, firsts then rest, each byte-shuffled; bool bits packed first bit
                    high; str uint32 LE indexes into ``strings``, byte-shuffled
            strings [str]: the batch's string dictionary
            tq      bin, one time quality byte per timestamp (0 good, 1 corrected, 2 uncertain)

Everything is lossless, bit for bit: a float whose 64 bits survive a round trip through
float32 travels as float32, any other as float64, so ±inf, -0.0, subnormals and NaN (sign and
payload) arrive as they left. :func:`decode_batch` gives Python values; :func:`decode_batch_wire`
gives what travelled (the column type and, for a float, its IEEE word), as the golden vectors
list it. A malformed batch raises :class:`BatchDecodeError` with the spec's error ``code``, and
with the gateway and seq whenever the header gives them.

Series ids refer to the dictionary in the gateway's retained birth message (device, point, unit,
type). The format does not need it to decode: the decoders return series ids.
"""

from __future__ import annotations

import itertools
import reprlib
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import zstandard

__all__ = [
    "ERRORS",
    "FORMAT_VERSION",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_POINTS",
    "TQ_CORRECTED",
    "TQ_GOOD",
    "TQ_NAMES",
    "TQ_UNCERTAIN",
    "TYPE_NAMES",
    "Batch",
    "BatchDecodeError",
    "BatchHeader",
    "BatchTooLarge",
    "Point",
    "Reading",
    "WireBatch",
    "WirePoint",
    "decode_batch",
    "decode_batch_wire",
    "decode_header",
    "encode_batch",
    "unencodable",
]

FORMAT_VERSION = 1

Value = int | float | bool | str

F32, F64, I64, U64, BOOL, STR = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {F32: "f32", F64: "f64", I64: "i64", U64: "u64", BOOL: "bool", STR: "str"}

#: The largest batch (docs/batch-format-v1.md §5): every decoder accepts up to these and refuses
#: more, and an encoder never builds more. 1,000,000 points is the gateway's largest
#: ``mqtt.batch_max_readings``; the body of such a batch stays under 32 MiB decompressed even
#: with one group per point, so 64 MiB leaves room for strings.
MAX_POINTS = 1_000_000
MAX_BODY_BYTES = 64 * 1024 * 1024

_ZSTD_LEVEL = (
    19  # batches are small: level 19 costs ~0.5 us per point more than 9, 2.5 % fewer bytes
)
_I64_MIN, _I64_MAX, _U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

#: What each error code of a malformed batch means (docs/batch-format-v1.md §6). Every decoder
#: of the contract gives the same code for the same batch (tests/golden/m_*.json).
ERRORS = {
    "not_msgpack": "the payload is not exactly one msgpack value",
    "bad_header": "the header is not a map of the required keys with their types and ranges",
    "unsupported_version": "the header's v is not 1",
    "unsupported_compression": "the header's z is not zstd",
    "too_many_points": "the header's n is above the largest batch",
    "bad_zstd": "the body is not one whole zstd frame",
    "zstd_no_content_size": "the zstd frame does not declare its content size",
    "zstd_trailing_bytes": "bytes follow the zstd frame",
    "body_too_large": "the body's content size is above the largest batch",
    "bad_body": "the body is not one msgpack array of the six or seven fields with their types",
    "bad_layout": "a layout entry is not [type, series, samples, ts_mode] in range",
    "points_mismatch": "the layout's points do not add up to the header's n",
    "bad_sids": "sids does not hold one word per series row",
    "sids_not_ascending": "the series ids of a group are not strictly ascending",
    "bad_ts": "ts does not hold one word per timestamp",
    "bad_ts_mode": "a ts_mode 1 group has no previous group with as many samples",
    "bad_tq": "tq does not hold one known quality per timestamp",
    "bad_columns": "a column entry is not [type, bin]",
    "column_order": "column entries are not in ascending type order",
    "column_twice": "two column entries have the same type",
    "column_unused": "a column entry has a type no group uses",
    "column_missing": "a type some group uses has no column entry",
    "column_size": "a column does not hold exactly the bytes its groups need",
    "bool_padding": "the padding bits after the last bool are not 0",
    "string_index": "a str index is past the end of the dictionary",
}


class BatchDecodeError(ValueError):
    """The bytes are not a valid batch (the sender sent garbage): skip it and report it.

    ``code`` names the rule the batch breaks (:data:`ERRORS`, docs/batch-format-v1.md §6).
    ``gateway`` and ``seq`` are set whenever the header gave them (it is a msgpack map with a
    str ``gw`` and an int ``seq`` in range), so the batch can be named in the report even when
    the rest of the header is wrong; ``header`` is set when the whole header decoded.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        header: BatchHeader | None = None,
        gateway: str | None = None,
        seq: int | None = None,
    ):
        assert code in ERRORS, code
        super().__init__(message)
        self.code = code
        self.header = header
        self.gateway = header.gateway if header is not None else gateway
        self.seq = header.seq if header is not None else seq


class BatchTooLarge(ValueError):
    """The points given would make a batch above the largest a decoder accepts (more than
    :data:`MAX_POINTS` points or a body above :data:`MAX_BODY_BYTES`): seal fewer."""


#: Time quality of a timestamp (see edge/shared/clock.py); PENDING never leaves the gateway.
TQ_GOOD, TQ_CORRECTED, TQ_UNCERTAIN = 0, 1, 2
TQ_NAMES = {TQ_GOOD: "good", TQ_CORRECTED: "corrected", TQ_UNCERTAIN: "uncertain"}


class Reading(NamedTuple):
    """A point resolved through the birth dictionary: what a batch means to an integrator.

    ``tq`` is the time quality. ``boot_ms`` is the gateway's own boot-time stamp of a reading
    whose wall-clock time is not trusted yet; it never travels in a batch (always None there).
    """

    device: str
    point: str
    ts_ms: int
    value: Value
    tq: int = TQ_GOOD
    boot_ms: int | None = None


class Point(NamedTuple):
    """One value of one series at one instant (series ids come from the birth dictionary)."""

    sid: int
    ts_ms: int
    value: Value
    tq: int = TQ_GOOD


class WirePoint(NamedTuple):
    """A point as it travelled: ``type`` is its column (f32, f64, i64, u64, bool, str) and
    ``value`` for f32 / f64 the IEEE 754 word as an unsigned int (32 / 64 bits), else the value.
    This is what the golden vectors list (docs/batch-format-v1.md §7)."""

    sid: int
    ts_ms: int
    type: str
    value: int | bool | str
    tq: int = TQ_GOOD


@dataclass(frozen=True, slots=True)
class BatchHeader:
    gateway: str
    seq: int
    boot: int
    created_ms: int
    dropped: int = 0
    points: int = 0
    #: A batch too large for the broker is split in halves that keep its seq: the path of
    #: halvings, () for a whole batch, (1,) / (2,) for its halves, (2, 1) for a half of a half.
    part: tuple[int, ...] = ()
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: Why some of ``dropped`` were lost: reason -> count (each count is part of ``dropped``;
    #: reasons not listed: evicted by the full policy or lost in a damaged buffer file).
    dropped_why: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Batch:
    header: BatchHeader
    points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class WireBatch:
    header: BatchHeader
    points: tuple[WirePoint, ...]


# --------------------------------------------------------------------------- helpers


_M64, _M32 = (1 << 64) - 1, (1 << 32) - 1
_TYPECODE = {4: "I", 8: "Q"}
_SWAP = sys.byteorder == "big"  # the wire is little-endian
assert array("I").itemsize == 4 and array("Q").itemsize == 8


def _shuffle(words: list[int], width: int) -> bytes:
    """Byte-shuffle unsigned ``width``-byte words: all first bytes, then all second bytes, ..."""
    if not words:
        return b""
    a = array(_TYPECODE[width], words)
    if _SWAP:
        a.byteswap()
    raw = a.tobytes()
    return b"".join(raw[i::width] for i in range(width))


def _unshuffle(raw: bytes, width: int, count: int) -> list[int]:
    """The inverse of :func:`_shuffle`; ``raw`` holds exactly ``count`` words (checked before)."""
    if count == 0:
        return []
    out = bytearray(len(raw))
    for i in range(width):
        out[i::width] = raw[i * count : (i + 1) * count]
    a = array(_TYPECODE[width])
    a.frombytes(bytes(out))
    if _SWAP:
        a.byteswap()
    return a.tolist()


def _zigzag(values: list[int], bits: int = 64) -> list[int]:
    """Signed -> unsigned (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...), for values of ``bits`` bits.
    A value outside the signed range is first reduced modulo 2**bits (arithmetic wraps)."""
    mask, top, half = (1 << bits) - 1, bits - 1, 1 << (bits - 1)
    out = []
    for v in values:
        if not -half <= v < half:
            v = ((v + half) & mask) - half
        out.append(((v << 1) ^ (v >> top)) & mask)
    return out


def _unzigzag(values: list[int]) -> list[int]:
    return [(u >> 1) ^ -(u & 1) for u in values]


def _signed(u: int, bits: int) -> int:
    return u - (1 << bits) if u >> (bits - 1) else u


def _value_type(v: Value) -> int:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        if _I64_MIN <= v <= _I64_MAX:
            return I64
        if 0 <= v <= _U64_MAX:
            return U64
        raise ValueError(f"integer {v} does not fit 64 bits")
    if isinstance(v, float):
        try:
            as_f32 = _F32.unpack(_F32.pack(v))[0]
        except OverflowError:
            return F64
        if as_f32 == v:  # equal floats have equal bits, -0.0 too (float32 keeps the sign)
            return F32
        if v != v:  # NaN: float32 only if its sign and payload come back whole
            return F32 if _F64.pack(as_f32) == _F64.pack(v) else F64
        return F64
    if isinstance(v, str):
        return STR
    raise ValueError(f"unsupported value type {type(v).__name__}")


_F32, _F64 = struct.Struct("<f"), struct.Struct("<d")

#: The longest str value that fits a batch of its own (the rest of a one-point body is < 100 B).
MAX_STRING_BYTES = MAX_BODY_BYTES - 1024


def unencodable(value: object) -> str | None:
    """Why ``value`` cannot travel in a batch, in words; None if it can.

    A batch carries bool, int from -2**63 to 2**64 - 1, float (any of its 2**64 bit patterns)
    and str (valid Unicode, at most :data:`MAX_STRING_BYTES` of UTF-8). Anything else, None
    included, has no column.
    """
    if type(value) is float or type(value) is bool:
        return None  # every bit pattern travels (f32 or f64); the fast path of a seal
    if value is None:
        return "no value (None)"
    if isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "a string that is not valid Unicode"
        if size > MAX_STRING_BYTES:
            return f"a string of {size} bytes, more than a batch carries ({MAX_STRING_BYTES})"
        return None
    try:
        _value_type(value)  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return None


def _dd(a: list[int]) -> list[int]:
    """Delta of delta from an offset 0 and a delta 0 before ``a0`` (docs/batch-format-v1.md
    §2.5, ts_mode 0): [a0, a1 - 2*a0, (a2 - a1) - (a1 - a0), ...], to be wrapped by _zigzag."""
    out, prev, prev_d = [], 0, 0
    for v in a:
        d = v - prev
        out.append(d - prev_d)
        prev, prev_d = v, d
    return out


def _undd(dd: list[int]) -> list[int]:
    """Two running sums modulo 2**64 (unsigned words; the caller reads them as signed)."""
    out, v, d = [], 0, 0
    for x in dd:
        d = (d + x) & _M64
        v = (v + d) & _M64
        out.append(v)
    return out


#: Numeric types: the width in bits of the word their values travel as.
_NUMERIC = {F32: 32, F64: 64, I64: 64, U64: 64}
_AS_FLOAT = {F32: ("f", "I"), F64: ("d", "Q")}


def _words(kind: int, m: list[list[Value]]) -> list[list[int]]:
    """A group's values (series x samples) as unsigned words: IEEE bits or two's complement."""
    if kind in _AS_FLOAT:
        ftype, utype = _AS_FLOAT[kind]
        out = []
        for row in m:
            w = array(utype)
            w.frombytes(array(ftype, row).tobytes())
            out.append(w.tolist())
        return out
    if kind == I64:
        return [[int(v) & _M64 for v in row] for row in m]
    return [[int(v) for v in row] for row in m]  # U64


def _from_words(kind: int, rows: list[list[int]]) -> list[list[Value]]:
    if kind in _AS_FLOAT:
        ftype, utype = _AS_FLOAT[kind]
        out = []
        for row in rows:
            f = array(ftype)
            f.frombytes(array(utype, row).tobytes())
            out.append(f.tolist())
        return out
    if kind == I64:
        return [[_signed(v, 64) for v in row] for row in rows]
    return rows


def _encode_numeric(w: list[list[int]], bits: int) -> tuple[list[int], list[int]]:
    """A group's word matrix as (firsts, rest): every sample minus the same series' previous
    sample; a series' first sample minus the first sample of the series above it in the group
    (neighbours such as L1/L2/L3 are alike), the top one minus 0. All modulo the word size, read
    as signed, zigzagged."""
    mask = (1 << bits) - 1
    firsts, rest = [], []
    above = 0
    for row in w:
        firsts.append(_signed((row[0] - above) & mask, bits))
        above = row[0]
        prev = row[0]
        for v in row[1:]:
            rest.append(_signed((v - prev) & mask, bits))
            prev = v
    return _zigzag(firsts, bits), _zigzag(rest, bits)


def _decode_numeric(
    firsts: list[int], rest: list[int], rows: int, n: int, bits: int
) -> list[list[int]]:
    mask = (1 << bits) - 1
    out, above, at = [], 0, 0
    deltas = _unzigzag(rest)
    for f in _unzigzag(firsts):
        v = (above + f) & mask
        above = v
        row = [v]
        for d in deltas[at : at + n - 1]:
            v = (v + d) & mask
            row.append(v)
        at += n - 1
        out.append(row)
    return out


def _packbits(bits: list[bool]) -> bytes:
    """Eight booleans to a byte, the first in the most significant bit; the last byte's unused
    low bits are 0 (docs/batch-format-v1.md §2.7.2)."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def _unpackbits(raw: bytes, count: int) -> list[int]:
    return [(raw[i >> 3] >> (7 - (i & 7))) & 1 for i in range(count)]


# --------------------------------------------------------------------------- encode


def encode_batch(
    header: BatchHeader,
    points: Iterable[Point | tuple[int, int, Value]],
    *,
    level: int = _ZSTD_LEVEL,
    t0: int | None = None,
) -> bytes:
    """Encode points ``(sid, ts_ms, value[, tq])`` into one batch. ``header.points`` is filled in.

    ``t0`` is the base of the timestamp offsets, by default the earliest timestamp; any int64
    gives the same points back (offsets may be negative, and their arithmetic wraps).
    Raises ValueError for a point no batch can carry (:func:`unencodable`, a series id or
    timestamp beyond int64, an unknown time quality) and :class:`BatchTooLarge` for more points
    or a larger body than a decoder accepts.
    """
    # Per series: its timestamps and its values, as two lists (no tuple per sample: a batch
    # of thousands of points is encoded on a 1 GB device).
    per_series: dict[int, tuple[list[int], list[Value], list[int]]] = {}
    any_tq = False
    for p in points:
        sid = p[0]
        lists = per_series.get(sid)
        if lists is None:
            if not _I64_MIN <= sid <= _I64_MAX:
                raise ValueError(f"series id {sid} does not fit int64")
            lists = per_series[int(sid)] = ([], [], [])
        lists[0].append(int(p[1]))
        lists[1].append(p[2])
        tq = p[3] if len(p) > 3 else TQ_GOOD
        if tq:
            if tq not in TQ_NAMES:
                raise ValueError(f"time quality {tq} cannot travel in a batch")
            any_tq = True
        lists[2].append(tq)
    total = sum(len(v[0]) for v in per_series.values())
    if total > MAX_POINTS:
        raise BatchTooLarge(f"{total} points, more than a batch carries ({MAX_POINTS})")
    for times, _, _ in per_series.values():
        if not _I64_MIN <= min(times) <= max(times) <= _I64_MAX:
            raise ValueError("a timestamp does not fit int64")
    # Split each series into runs of one value type, then group runs with identical instants
    # (and identical time qualities: a quality belongs to a timestamp). A series is in a group
    # once (its ids are strictly ascending, §2.4): a repeat of a run (the same times again, as
    # a series whose type alternates at repeated times has) goes to a group of its own, ``k``.
    groups: dict[tuple[int, tuple[int, ...], tuple[int, ...], int], list[tuple[int, list[Value]]]]
    groups = {}
    if t0 is None:
        t0 = min((min(s[0]) for s in per_series.values()), default=header.created_ms)
    elif not _I64_MIN <= t0 <= _I64_MAX:
        raise ValueError(f"t0 {t0} does not fit int64")
    for sid, (times, values, quals) in per_series.items():
        if any(b < a for a, b in itertools.pairwise(times)):
            order = sorted(range(len(times)), key=times.__getitem__)
            times = [times[i] for i in order]
            values = [values[i] for i in order]
            quals = [quals[i] for i in order]
        start = 0
        run_kind = _value_type(values[0])
        repeats: dict[tuple[int, tuple[int, ...], tuple[int, ...]], int] = {}
        for i in range(1, len(values) + 1):
            kind = _value_type(values[i]) if i < len(values) else None
            if kind != run_kind:
                key = (run_kind, tuple(times[start:i]), tuple(quals[start:i]) if any_tq else ())
                k = repeats[key] = repeats.get(key, -1) + 1
                groups.setdefault((*key, k), []).append((sid, values[start:i]))
                start, run_kind = i, kind  # type: ignore[assignment]
    # Groups in series-id order: a device's requests sit side by side, so ids step by one and
    # each group's timestamps differ little from the group before it.
    for members in groups.values():
        members.sort(key=lambda m: m[0])
    ordered = sorted(
        groups.items(), key=lambda g: (g[1][0][0], g[0][1][0], g[0][0], g[0][2], g[0][3])
    )
    words = sorted(
        {
            str(v)
            for (kind, _, _, _), members in ordered
            if kind == STR
            for _, vals in members
            for v in vals
        }
    )
    strings = {w: i for i, w in enumerate(words)}
    layout: list[list[int]] = []
    sids: list[int] = []
    ts_parts: list[int] = []
    firsts: dict[int, list[int]] = {}
    parts: dict[int, list[int]] = {}
    prev_ts: list[int] | None = None
    tq_all: list[int] = []
    for (kind, ts, quals, _), members in ordered:
        tq_all.extend(quals)
        sids.extend(m[0] for m in members)
        a = [t - t0 for t in ts]
        own = _dd(a)
        mode = 0
        if prev_ts is not None and len(prev_ts) == len(a):
            rel = [x - y for x, y in zip(a, prev_ts, strict=True)]
            if sum(map(abs, rel)) <= sum(map(abs, own)):
                mode, own = 1, rel
        ts_parts.extend(own)
        prev_ts = a
        layout.append([kind, len(members), len(ts), mode])
        values = [m[1] for m in members]
        if kind in _NUMERIC:
            first, rest = _encode_numeric(_words(kind, values), _NUMERIC[kind])
            firsts.setdefault(kind, []).extend(first)
            parts.setdefault(kind, []).extend(rest)
        elif kind == BOOL:
            parts.setdefault(kind, []).extend(bool(v) for r in values for v in r)
        else:  # STR
            parts.setdefault(kind, []).extend(strings[v] for r in values for v in r)
    columns = []
    for kind, flat in sorted(parts.items()):  # ascending type order, one entry per type used
        if kind == BOOL:
            raw = _packbits(flat)
        elif kind == STR:
            raw = _shuffle(flat, 4)
        else:
            width = _NUMERIC[kind] // 8
            raw = _shuffle(firsts[kind], width) + _shuffle(flat, width)
        columns.append([kind, raw])
    sid_deltas = [b - a for a, b in zip([0, *sids], sids, strict=False)]
    body_doc = [
        t0,
        layout,
        _shuffle(_zigzag(sid_deltas), 8),
        _shuffle(_zigzag(ts_parts), 8),
        columns,
        words,
    ]
    if any_tq:
        body_doc.append(bytes(tq_all))
    raw_body = msgpack.packb(body_doc, use_bin_type=True)
    if len(raw_body) > MAX_BODY_BYTES:
        raise BatchTooLarge(
            f"a body of {len(raw_body)} bytes, more than a batch carries ({MAX_BODY_BYTES})"
        )
    # One frame with its content size (the library's default), no checksum: §2.1.
    body = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw_body)
    doc = {
        "v": FORMAT_VERSION,
        "gw": header.gateway,
        "seq": header.seq,
        "boot": header.boot,
        "created": header.created_ms,
        "dropped": header.dropped,
        "n": total,
        "z": "zstd",
        "body": body,
    }
    if header.part:
        doc["part"] = list(header.part)
    why = {k: v for k, v in header.dropped_why.items() if v}
    if why:
        if sum(why.values()) > header.dropped or min(why.values()) < 0:
            raise ValueError(f"dropped_why {why} does not fit within dropped={header.dropped}")
        doc["dropped_why"] = why
    return msgpack.packb(doc, use_bin_type=True)


# --------------------------------------------------------------------------- decode
#
# docs/batch-format-v1.md §6 lists the checks and their codes; the comments below cite it.


class _Pairs(list):  # type: ignore[type-arg]
    """A msgpack map as its (key, value) pairs in order, so a repeated key or a key that is not
    a str can be seen (a dict would keep the last silently, as most msgpack libraries do)."""


def _plain(v: Any) -> Any:
    """An unknown header value with its maps as dicts (last key wins), for ``extra``."""
    if isinstance(v, _Pairs):
        out = {}
        for k, x in v:
            try:
                out[k] = _plain(x)
            except TypeError:  # an unhashable key (an array): nothing a reader could look up
                pass
        return out
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(v: Any) -> str:
    """A value of a malformed batch for an error message: short, whatever its size."""
    return _REPR.repr(_plain(v))


#: The deepest nesting of arrays and maps a payload or a body may have (docs/batch-format-v1.md
#: §0): the payload's map or the body's array is depth 1, an array or map in it depth 2, ...
#: A gateway's header has depth 2 and its body 3; 32 is msgpack-c's default limit, so every
#: msgpack library reads that deep, and a recursive reader stays far from its stack's end.
MAX_DEPTH = 32


def _ext(code: int, data: bytes) -> Any:
    """An ext value (only an unknown header key may hold one): opaque, a reserved type code
    (-128 to -2) included. Type -1, msgpack's timestamp, never gets here: msgpack checks it
    (4, 8 or 12 bytes, nanoseconds below 10**9), as §0 requires."""
    return msgpack.ExtType(code, data) if code >= 0 else (code, data)


def _depth_over(doc: Any, limit: int) -> bool:
    """True when arrays and maps in ``doc`` nest deeper than ``limit`` (§0), found level by
    level without recursion; a level of scalars only is seen at C speed (a body's million
    layout entries cost one pass over their ints)."""
    level = [doc] if type(doc) is list or type(doc) is _Pairs else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        kinds = set(map(type, _elements(level)))
        if list not in kinds and _Pairs not in kinds:
            return False
        level = [x for x in _elements(level) if type(x) is list or type(x) is _Pairs]
    return False


def _elements(containers: list[Any]) -> Iterable[Any]:
    """The elements of arrays and the keys and values of maps, one after the other."""
    return itertools.chain.from_iterable(
        itertools.chain.from_iterable(c) if type(c) is _Pairs else c for c in containers
    )


def _why(exc: Exception) -> str:
    """Why msgpack refused bytes, in words (its StackError says nothing)."""
    if isinstance(exc, msgpack.exceptions.StackError):
        return f"arrays and maps nested more than {MAX_DEPTH} deep"
    return str(exc) or type(exc).__name__


def _unpack(raw: bytes) -> Any:
    """Exactly one msgpack value as §0 defines it (maps as :class:`_Pairs`); ValueError when
    the bytes are not one, or nest deeper than :data:`MAX_DEPTH`."""
    doc = msgpack.unpackb(
        raw, raw=False, strict_map_key=False, object_pairs_hook=_Pairs, ext_hook=_ext
    )
    if _depth_over(doc, MAX_DEPTH):
        raise ValueError(f"arrays and maps nested more than {MAX_DEPTH} deep")
    return doc


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _str_map(pairs: _Pairs, what: str, fail) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if type(k) is not str:
            raise fail("bad_header", f"{what} has a key that is not a str ({k!r})")
        if k in out:
            raise fail("bad_header", f"{what} has the key {k!r} twice")
        out[k] = v
    return out


#: The header's required keys (§1): the check each value must pass, in words for the error.
_REQUIRED: tuple[tuple[str, Any, str], ...] = (
    ("gw", lambda v: type(v) is str, "a str"),
    ("seq", lambda v: _int_in(v, 0, _I64_MAX), "an int from 0 to 2**63-1"),
    ("boot", lambda v: _int_in(v, 1, _I64_MAX), "an int from 1 to 2**63-1"),
    ("created", lambda v: _int_in(v, _I64_MIN, _I64_MAX), "an int64"),
    ("dropped", lambda v: _int_in(v, 0, _I64_MAX), "an int from 0 to 2**63-1"),
    ("n", lambda v: _int_in(v, 0, _U64_MAX), "an int from 0"),
    ("z", lambda v: type(v) is str, "a str"),
    ("body", lambda v: type(v) is bytes, "a bin"),
)
_KNOWN = frozenset({"v", "part", "dropped_why"} | {k for k, _, _ in _REQUIRED})


def decode_header(payload: bytes) -> tuple[BatchHeader, bytes]:
    """Decode and check the uncompressed header (§1, §6 stage 1); returns it and the zstd body.
    Raises :class:`BatchDecodeError`."""
    try:
        doc = _unpack(payload)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BatchDecodeError("not_msgpack", f"not one msgpack value: {_why(exc)}") from None
    if not isinstance(doc, _Pairs):
        raise BatchDecodeError("bad_header", f"batch is a {_kind(doc)}, not a map")
    # The batch's name, if the header gives it, goes with every error below.
    named = {k: v for k, v in doc if type(k) is str and k in ("gw", "seq")}
    gateway = named.get("gw") if type(named.get("gw")) is str else None
    seq = named.get("seq") if _int_in(named.get("seq"), 0, _I64_MAX) else None

    def fail(code: str, message: str) -> BatchDecodeError:
        return BatchDecodeError(code, message, gateway=gateway, seq=seq)

    fields = _str_map(doc, "the header", fail)
    version = fields.get("v")
    if type(version) is not int:
        raise fail("bad_header", "the header has no int field 'v'")
    if version != FORMAT_VERSION:
        raise fail("unsupported_version", f"unsupported batch format version {version}")
    for key, ok, words in _REQUIRED:
        if key not in fields:
            raise fail("bad_header", f"the header has no {key!r} field")
        if not ok(fields[key]):
            raise fail("bad_header", f"header field {key!r} is {fields[key]!r}, not {words}")
    part = fields.get("part", None)
    if "part" in fields and not (
        type(part) is list
        and 1 <= len(part) <= 64
        and all(x in (1, 2) and type(x) is int for x in part)
    ):
        raise fail("bad_header", f"header field 'part' is {_show(part)}, not a path of 1s and 2s")
    why: dict[str, int] = {}
    if "dropped_why" in fields:
        raw = fields["dropped_why"]
        if not isinstance(raw, _Pairs) or len(raw) > 64:
            raise fail(
                "bad_header", "header field 'dropped_why' is not a map of at most 64 reasons"
            )
        why = _str_map(raw, "'dropped_why'", fail)
        if not all(_int_in(v, 0, _I64_MAX) for v in why.values()):
            raise fail("bad_header", f"'dropped_why' counts are not ints from 0: {_show(raw)}")
        if sum(why.values()) > fields["dropped"]:
            raise fail("bad_header", "'dropped_why' counts more than 'dropped'")
    if fields["z"] != "zstd":
        raise fail("unsupported_compression", f"unknown compression {fields['z']!r}")
    if fields["n"] > MAX_POINTS:
        raise fail("too_many_points", f"{fields['n']} points, more than {MAX_POINTS}")
    header = BatchHeader(
        gateway=fields["gw"],
        seq=fields["seq"],
        boot=fields["boot"],
        created_ms=fields["created"],
        dropped=fields["dropped"],
        points=fields["n"],
        part=tuple(part or ()),
        version=version,
        extra={k: _plain(v) for k, v in fields.items() if k not in _KNOWN},
        dropped_why=why,
    )
    return header, fields["body"]


def _kind(v: Any) -> str:
    if isinstance(v, _Pairs):
        return "map"
    return {list: "array", bytes: "bin", str: "str", bool: "bool", int: "int", float: "float"}.get(
        type(v), type(v).__name__
    )


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_frame(body: bytes) -> tuple[int | None, int]:
    """A zstd frame's declared content size (None: not declared) and its length in bytes,
    walked from its header and block headers (RFC 8878 §3.1.1) without decompressing.
    Raises ValueError when ``body`` does not start with one whole frame."""
    if body[:4] != _ZSTD_MAGIC:
        raise ValueError("no zstd frame magic number (28 b5 2f fd)")
    if len(body) < 5:
        raise ValueError("the frame header is cut short")
    fhd = body[4]
    fcs_flag, single, checksum, did_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:
        raise ValueError("the frame header's reserved bit is set")
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if len(body) < at + fcs_size:
        raise ValueError("the frame header is cut short")
    size = None
    if fcs_size:
        size = int.from_bytes(body[at : at + fcs_size], "little") + (256 if fcs_size == 2 else 0)
        if size == 0:
            raise ValueError("the frame declares a content size of 0 (a body is never empty)")
    at += fcs_size
    while True:
        if len(body) < at + 3:
            raise ValueError("the frame is cut short (no last block)")
        bh = int.from_bytes(body[at : at + 3], "little")
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            raise ValueError("a block of the reserved type")
        at += 3 + (1 if btype == 1 else bsize)
        if last:
            break
    at += 4 if checksum else 0
    if len(body) < at:
        raise ValueError("the frame is cut short")
    return size, at


def _decompress(body: bytes, fail) -> bytes:
    """§2.1: exactly one zstd frame, its content size declared and at most MAX_BODY_BYTES.
    Checked in the order of §6 stage 2: the frame's bytes (R10), R11, R12, R13, and only then
    decompression (R10: without error, to exactly the declared size)."""
    try:
        size, length = _zstd_frame(body)
    except ValueError as exc:
        raise fail("bad_zstd", f"the body is not a zstd frame: {exc}") from None
    if size is None:
        raise fail("zstd_no_content_size", "the zstd frame does not declare its content size")
    if size > MAX_BODY_BYTES:
        raise fail("body_too_large", f"a body of {size} bytes, more than {MAX_BODY_BYTES}")
    if length != len(body):
        raise fail("zstd_trailing_bytes", f"{len(body) - length} bytes after the zstd frame")
    try:
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise fail("bad_zstd", f"the zstd frame does not decompress: {exc}") from None
    if len(raw) != size:
        raise fail("bad_zstd", f"the zstd frame gives {len(raw)} bytes, not the {size} declared")
    return raw


def decode_batch(payload: bytes) -> Batch:
    """Decode and check one batch into Python values (an f32 widened to a float, bit for bit).
    Raises :class:`BatchDecodeError` on anything malformed (docs/batch-format-v1.md §6)."""
    header, groups = _decode(payload)
    out: list[Point] = []
    for kind, sids, ts, quals, rows in groups:
        values = _from_words(kind, rows) if kind in _AS_FLOAT else rows
        for sid, row in zip(sids, values, strict=True):
            out.extend(Point(sid, t, v, q) for t, v, q in zip(ts, row, quals, strict=True))
    return Batch(header, tuple(out))


def decode_batch_wire(payload: bytes) -> WireBatch:
    """Decode and check one batch into the points as they travelled (:class:`WirePoint`: the
    column type, and a float's IEEE word), in the order of §2.6. Raises as :func:`decode_batch`."""
    header, groups = _decode(payload)
    out: list[WirePoint] = []
    for kind, sids, ts, quals, rows in groups:
        name = TYPE_NAMES[kind]
        for sid, row in zip(sids, rows, strict=True):
            out.extend(
                WirePoint(sid, t, name, v, q) for t, v, q in zip(ts, row, quals, strict=True)
            )
    return WireBatch(header, tuple(out))


_Group = tuple[int, list[int], list[int], bytes, list[list[Any]]]


def _decode(payload: bytes) -> tuple[BatchHeader, list[_Group]]:
    header, body = decode_header(payload)

    def fail(code: str, message: str) -> BatchDecodeError:
        return BatchDecodeError(code, message, header=header)

    raw = _decompress(body, fail)
    try:
        doc = _unpack(raw)
    except Exception as exc:
        raise fail("bad_body", f"the body is not one msgpack value: {_why(exc)}") from None
    return header, _decode_body(doc, header, fail)


def _decode_body(doc: Any, header: BatchHeader, fail) -> list[_Group]:
    # §2.2: [t0, layout, sids, ts, columns, strings(, tq)] with their msgpack types
    if type(doc) is not list or len(doc) not in (6, 7):
        raise fail(
            "bad_body", "the body is not an array [t0, layout, sids, ts, columns, strings(, tq)]"
        )
    t0, layout, sid_raw, ts_raw, columns, strings = doc[:6]
    tq_raw = doc[6] if len(doc) == 7 else None
    expect = (
        ("t0", t0, _int_in(t0, _I64_MIN, _I64_MAX), "an int64"),
        ("layout", layout, type(layout) is list, "an array"),
        ("sids", sid_raw, type(sid_raw) is bytes, "a bin"),
        ("ts", ts_raw, type(ts_raw) is bytes, "a bin"),
        ("columns", columns, type(columns) is list, "an array"),
        (
            "strings",
            strings,
            type(strings) is list and all(type(w) is str for w in strings),
            "an array of str",
        ),
        ("tq", tq_raw, tq_raw is None or type(tq_raw) is bytes, "a bin"),
    )
    for name, value, ok, words in expect:
        if not ok:
            raise fail("bad_body", f"body field {name} is a {_kind(value)}, not {words}")
    # §2.3 layout
    n_series = n_ts = 0
    cells: dict[int, int] = {}  # type -> points of its groups
    rows_of: dict[int, int] = {}  # type -> series rows of its groups
    for entry in layout:
        if not (
            type(entry) is list
            and len(entry) == 4
            and all(type(x) is int for x in entry)
            and entry[0] in TYPE_NAMES
            and 1 <= entry[1] <= MAX_POINTS
            and 1 <= entry[2] <= MAX_POINTS
            and entry[3] in (0, 1)
        ):
            raise fail("bad_layout", f"bad layout entry {_show(entry)}")
        kind, rows, n, _ = entry
        n_series += rows
        n_ts += n
        cells[kind] = cells.get(kind, 0) + rows * n
        rows_of[kind] = rows_of.get(kind, 0) + rows
    if sum(cells.values()) != header.points:
        raise fail(
            "points_mismatch",
            f"the layout holds {sum(cells.values())} points, n says {header.points}",
        )
    # §2.4 sids, §2.5 ts and tq
    if len(sid_raw) != 8 * n_series:
        raise fail("bad_sids", f"sids holds {len(sid_raw)} bytes, not 8 x {n_series} series rows")
    if len(ts_raw) != 8 * n_ts:
        raise fail("bad_ts", f"ts holds {len(ts_raw)} bytes, not 8 x {n_ts} timestamps")
    if tq_raw is not None and (len(tq_raw) != n_ts or max(tq_raw, default=0) not in TQ_NAMES):
        raise fail(
            "bad_tq",
            f"the time quality field tq holds {len(tq_raw)} bytes for {n_ts} timestamps, "
            "or a quality above 2",
        )
    # §6 stages 5 and 6: within a stage, the rules in rule-number order, each over the whole
    # batch (every column entry, every group) before the next; the first that fails names it.
    # §2.7 columns: [type, bin] entries in ascending type order, one per type used, no other
    for entry in columns:  # R25
        if not (
            type(entry) is list
            and len(entry) == 2
            and type(entry[0]) is int
            and type(entry[1]) is bytes
        ):
            raise fail("bad_columns", f"a column entry is {_show(entry)}, not [type, bin]")
    kinds = [entry[0] for entry in columns]
    for a, b in itertools.pairwise(kinds):  # R26
        if b < a:
            raise fail("column_order", f"column type {b} after type {a}")
    for a, b in itertools.pairwise(kinds):  # R27
        if b == a:
            raise fail("column_twice", f"two columns of type {TYPE_NAMES.get(b, b)}")
    for kind in kinds:  # R28
        if kind not in cells:
            raise fail(
                "column_unused",
                f"a column of type {TYPE_NAMES.get(kind, kind)}, which no group has",
            )
    col: dict[int, bytes] = {entry[0]: entry[1] for entry in columns}
    for kind in cells:  # R29
        if kind not in col:
            raise fail("column_missing", f"no column for type {TYPE_NAMES[kind]}")
    for kind, count in cells.items():  # R30
        raw = col[kind]
        if kind == BOOL:
            need = (count + 7) // 8
        elif kind == STR:
            need = 4 * count
        else:
            need = _NUMERIC[kind] // 8 * count
        if len(raw) != need:
            raise fail(
                "column_size", f"the {TYPE_NAMES[kind]} column holds {len(raw)} bytes, not {need}"
            )
    # Stage 6, the contents (every size is known good). R18: series ids, one running sum
    # modulo 2**64 across groups (§2.4), strictly ascending within each group.
    sid_words = _unzigzag(_unshuffle(sid_raw, 8, n_series))
    group_sids: list[list[int]] = []
    acc = 0
    at = 0
    for i, (_, rows, _, _) in enumerate(layout):
        sids = []
        for d in sid_words[at : at + rows]:
            acc = (acc + d) & _M64
            sids.append(_signed(acc, 64))
        at += rows
        if any(b <= a for a, b in itertools.pairwise(sids)):
            raise fail(
                "sids_not_ascending",
                f"group {i + 1}'s series ids {_REPR.repr(sids)} are not strictly ascending",
            )
        group_sids.append(sids)
    # R21: a ts_mode 1 group follows a group of as many samples (§2.5); offsets modulo 2**64.
    for i, (_, _, n, mode) in enumerate(layout):
        if mode == 1 and (i == 0 or layout[i - 1][2] != n):
            raise fail(
                "bad_ts_mode",
                f"group {i + 1} has ts_mode 1 but "
                + (
                    "is the first"
                    if i == 0
                    else f"the group before has {layout[i - 1][2]} samples, not {n}"
                ),
            )
    ts_words = _unshuffle(ts_raw, 8, n_ts)  # zigzag is undone below, modulo 2**64
    group_ts: list[list[int]] = []
    prev: list[int] = []  # the previous group's offsets, unsigned 64-bit
    at = 0
    for _, _, n, mode in layout:
        chunk = [(u >> 1) ^ -(u & 1) for u in ts_words[at : at + n]]
        at += n
        if mode == 1:
            a = [(x + y) & _M64 for x, y in zip(chunk, prev, strict=True)]
        else:
            a = _undd(chunk)
        prev = a
        group_ts.append([_signed((t0 + x) & _M64, 64) for x in a])
    # R32 bool padding, then R33 str indexes; the numeric words need no check.
    flats: dict[int, list[int]] = {}
    firsts: dict[int, list[int]] = {}
    if BOOL in cells:
        raw, count = col[BOOL], cells[BOOL]
        if count % 8 and raw[-1] & (0xFF >> (count % 8)):
            raise fail("bool_padding", "the bool column's padding bits are not 0")
        flats[BOOL] = _unpackbits(raw, count)
    if STR in cells:
        flats[STR] = idx = _unshuffle(col[STR], 4, cells[STR])
        if idx and max(idx) >= len(strings):
            raise fail("string_index", f"str index {max(idx)} past a dictionary of {len(strings)}")
    for kind in cells.keys() & _NUMERIC.keys():
        width = _NUMERIC[kind] // 8
        split = rows_of[kind] * width
        firsts[kind] = _unshuffle(col[kind][:split], width, rows_of[kind])
        flats[kind] = _unshuffle(col[kind][split:], width, cells[kind] - rows_of[kind])
    quals_all = tq_raw if tq_raw is not None else bytes(n_ts)
    out: list[_Group] = []
    at_ts = 0
    at_col = dict.fromkeys(cells, 0)
    at_first = dict.fromkeys(cells, 0)
    for (kind, rows, n, _), sids, ts in zip(layout, group_sids, group_ts, strict=True):
        quals = quals_all[at_ts : at_ts + n]
        at_ts += n
        if kind in _NUMERIC:
            first = firsts[kind][at_first[kind] : at_first[kind] + rows]
            at_first[kind] += rows
            rest = flats[kind][at_col[kind] : at_col[kind] + rows * (n - 1)]
            at_col[kind] += rows * (n - 1)
            words = _decode_numeric(first, rest, rows, n, _NUMERIC[kind])
            values: list[list[Any]] = (
                [[_signed(v, 64) for v in r] for r in words] if kind == I64 else words
            )
        else:
            flat = flats[kind][at_col[kind] : at_col[kind] + rows * n]
            at_col[kind] += rows * n
            if kind == BOOL:
                values = [[bool(b) for b in flat[r * n : (r + 1) * n]] for r in range(rows)]
            else:
                values = [[strings[k] for k in flat[r * n : (r + 1) * n]] for r in range(rows)]
        out.append((kind, sids, ts, quals, values))
    return out
