"""Uplink batch format v1: columnar, typed, delta-encoded, byte-shuffled, zstd. No I/O.

The normative description, with a worked example, is docs/batch-format-v1.md; golden vectors are
in tests/golden/. In short, one MQTT message carries one batch:

    header  msgpack map, uncompressed, so a consumer can name a batch it cannot decode:
            {"v": 1, "gw": str, "seq": int, "boot": int, "created": int ms, "dropped": int,
             "n": points in the batch, "z": "zstd", "body": bin}
    body    zstd frame of a msgpack array [t0, layout, sids, ts, columns, strings(, tq)]
            t0      int, ms since the Unix epoch; every timestamp is an offset from it
            layout  [[type, series, samples, ts_mode], ...], one entry per *group*: series of
                    one value type sampled at identical instants (one Modbus request reads
                    many points at once), in the encoder's order (ours: by first series id).
                    type: 1 f32, 2 f64, 3 i64, 4 u64, 5 bool, 6 str
            sids    bin: every group's series ids, ascending within a group, concatenated; each
                    minus the one before it (the first minus 0); zigzag; uint64 LE; shuffled
            ts      bin: every group's timestamps, concatenated, as int64 offsets from t0,
                    transformed per group by ts_mode, zigzag, uint64 LE, byte-shuffled:
                    0  delta of delta along time ([a0, a1 - a0, (a2 - a1) - (a1 - a0), ...])
                    1  element-wise minus the previous group's timestamps (same sample count):
                       requests polled one after another differ by a few ms
            columns [[type, bin], ...]: for each type, the value matrices of its groups (series x
                    samples, row-major) in group order, encoded per type:
                    numeric  f32/f64 IEEE bits, i64 two's complement, u64 as is, as w-bit
                             words; a sample minus the series' previous one, a series' first
                             minus the first of the row above (the top row's minus 0), modulo
                             2^w, read as signed, zigzag; bin = shuffled firsts of every row,
                             then shuffled rest
                    bool     packed 8 to a byte, the first in the top bit (numpy.packbits order)
                    str      uint32 LE indexes into ``strings``, byte-shuffled
            strings [str]: the batch's string dictionary (sorted), or []
            tq      bin, present only when some timestamp is not good: one byte per entry of
                    ``ts`` (same order), its time quality: 0 good, 1 corrected (stamped before
                    the gateway's clock was trusted, re-timed by the offset measured when it
                    became trusted), 2 uncertain (could not be corrected: the wall clock's
                    best guess). Absent: every timestamp is good.

Byte-shuffling (w-byte words -> w planes: all first bytes, then all second bytes, ...) puts the
bytes that rarely change (high bytes of differences) next to each other, where zstd removes
them. Everything is lossless, bit for bit: a float whose 64 bits survive a round trip through
float32 travels as float32, any other as float64, so ±inf, -0.0, subnormals and NaN (sign and
payload) arrive as they left (docs/batch-format-v1.md §2 says what a consumer gets).

The optional header field ``dropped_why`` ({reason: count}, part of ``dropped``) says why some of
the dropped readings were lost; :func:`unencodable` says why a value cannot travel at all.

Series ids refer to the dictionary in the gateway's retained birth message (device, point, unit,
type). The format does not need it to decode: :func:`decode_batch` returns series ids.
"""

from __future__ import annotations

import itertools
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import zstandard

__all__ = [
    "FORMAT_VERSION",
    "TQ_CORRECTED",
    "TQ_GOOD",
    "TQ_NAMES",
    "TQ_UNCERTAIN",
    "Batch",
    "BatchDecodeError",
    "BatchHeader",
    "Point",
    "Reading",
    "decode_batch",
    "decode_header",
    "encode_batch",
    "unencodable",
]

FORMAT_VERSION = 1

Value = int | float | bool | str

F32, F64, I64, U64, BOOL, STR = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {F32: "f32", F64: "f64", I64: "i64", U64: "u64", BOOL: "bool", STR: "str"}

#: Decoder limits: a hostile or broken payload cannot make the decoder allocate without bound.
MAX_POINTS = 5_000_000
MAX_BODY_BYTES = 256 * 1024 * 1024

_ZSTD_LEVEL = (
    19  # batches are small: level 19 costs ~0.5 us per point more than 9, 2.5 % fewer bytes
)
_I64_MIN, _I64_MAX, _U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


class BatchDecodeError(ValueError):
    """The bytes are not a valid batch (the sender sent garbage). ``header`` is set when the
    header decoded, so the batch can still be named (gateway, seq) in the report."""

    def __init__(self, message: str, header: BatchHeader | None = None):
        self.header = header
        super().__init__(message)


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
    if len(raw) != count * width:
        raise BatchDecodeError(f"column holds {len(raw)} bytes, expected {count * width}")
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
    """Signed -> unsigned (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...), for values of ``bits`` bits."""
    mask, top = (1 << bits) - 1, bits - 1
    return [((v << 1) ^ (v >> top)) & mask for v in values]


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


def unencodable(value: object) -> str | None:
    """Why ``value`` cannot travel in a batch, in words; None if it can.

    A batch carries bool, int from -2**63 to 2**64 - 1, float (any of its 2**64 bit patterns)
    and str (valid Unicode). Anything else, None included, has no column.
    """
    if type(value) is float or type(value) is bool:
        return None  # every bit pattern travels (f32 or f64); the fast path of a seal
    if value is None:
        return "no value (None)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string that is not valid Unicode"
        return None
    try:
        _value_type(value)  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return None


def _dd(a: list[int]) -> list[int]:
    """Delta of delta from an offset 0 and a delta 0 before ``a0``:
    [a0, a1 - 2*a0, (a2 - a1) - (a1 - a0), ...] (docs/batch-format-v1.md §2, ts_mode 0)."""
    out, prev, prev_d = [], 0, 0
    for v in a:
        d = v - prev
        out.append(d - prev_d)
        prev, prev_d = v, d
    return out


def _undd(dd: list[int]) -> list[int]:
    out, v, d = [], 0, 0
    for x in dd:
        d += x
        v += d
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
    """Eight booleans to a byte, the first in the most significant bit (numpy.packbits)."""
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
) -> bytes:
    """Encode points ``(sid, ts_ms, value)`` into one batch. ``header.points`` is filled in."""
    # Per series: its timestamps and its values, as two lists (no tuple per sample: a batch
    # of thousands of points is encoded on a 1 GB device).
    per_series: dict[int, tuple[list[int], list[Value], list[int]]] = {}
    any_tq = False
    for p in points:
        sid = p[0]
        lists = per_series.get(sid)
        if lists is None:
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
    # Split each series into runs of one value type, then group runs with identical instants
    # (and identical time qualities: a quality belongs to a timestamp).
    groups: dict[tuple[int, tuple[int, ...], tuple[int, ...]], list[tuple[int, list[Value]]]]
    groups = {}
    t0 = min((min(s[0]) for s in per_series.values()), default=header.created_ms)
    for sid, (times, values, quals) in per_series.items():
        if any(b < a for a, b in itertools.pairwise(times)):
            order = sorted(range(len(times)), key=times.__getitem__)
            times = [times[i] for i in order]
            values = [values[i] for i in order]
            quals = [quals[i] for i in order]
        start = 0
        run_kind = _value_type(values[0])
        for i in range(1, len(values) + 1):
            kind = _value_type(values[i]) if i < len(values) else None
            if kind != run_kind:
                key = (run_kind, tuple(times[start:i]), tuple(quals[start:i]) if any_tq else ())
                groups.setdefault(key, []).append((sid, values[start:i]))
                start, run_kind = i, kind  # type: ignore[assignment]
    # Groups in series-id order: a device's requests sit side by side, so ids step by one and
    # each group's timestamps differ little from the group before it.
    for members in groups.values():
        members.sort(key=lambda m: m[0])
    ordered = sorted(groups.items(), key=lambda g: (g[1][0][0], g[0][1][0], g[0][0], g[0][2]))
    words = sorted(
        {
            str(v)
            for (kind, _, _), members in ordered
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
    for (kind, ts, quals), members in ordered:
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
    for kind, flat in sorted(parts.items()):
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
    body = zstandard.ZstdCompressor(level=level).compress(
        msgpack.packb(body_doc, use_bin_type=True)
    )
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


def _field(doc: dict[Any, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise BatchDecodeError(f"batch header has no {key!r} field")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BatchDecodeError(f"batch header field {key!r} has type {type(value).__name__}")
    return value


_HEADER_KEYS = frozenset(
    {"v", "gw", "seq", "boot", "created", "dropped", "n", "z", "body", "part", "dropped_why"}
)


def _part(doc: dict[Any, Any]) -> tuple[int, ...]:
    raw = doc.get("part", [])
    if (
        not isinstance(raw, list)
        or len(raw) > 64
        or not all(type(x) is int and x in (1, 2) for x in raw)
    ):
        raise BatchDecodeError(f"bad part path {raw!r}")
    return tuple(raw)


def _dropped_why(doc: dict[Any, Any]) -> dict[str, int]:
    raw = doc.get("dropped_why", {})
    if (
        not isinstance(raw, dict)
        or len(raw) > 64
        or not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in raw.items())
    ):
        raise BatchDecodeError(f"bad dropped_why {raw!r}")
    return raw


def decode_header(payload: bytes) -> tuple[BatchHeader, bytes]:
    """Decode the uncompressed header; returns it and the compressed body."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BatchDecodeError(f"not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise BatchDecodeError(f"batch is a {type(doc).__name__}, not a map")
    version = _field(doc, "v", int)
    if version != FORMAT_VERSION:
        raise BatchDecodeError(f"unsupported batch format version {version}")
    header = BatchHeader(
        gateway=_field(doc, "gw", str),
        seq=_field(doc, "seq", int),
        boot=_field(doc, "boot", int),
        created_ms=_field(doc, "created", int),
        dropped=_field(doc, "dropped", int),
        points=_field(doc, "n", int),
        part=_part(doc),
        version=version,
        extra={k: v for k, v in doc.items() if k not in _HEADER_KEYS},
        dropped_why=_dropped_why(doc),
    )
    if header.seq < 0 or header.dropped < 0 or not 0 <= header.points <= MAX_POINTS:
        raise BatchDecodeError("negative seq or dropped, or impossible point count", header)
    if sum(header.dropped_why.values()) > header.dropped:
        raise BatchDecodeError("dropped_why counts more than dropped", header)
    if _field(doc, "z", str) != "zstd":
        raise BatchDecodeError(f"unknown compression {doc['z']!r}", header)
    return header, _field(doc, "body", bytes)


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate one batch; raise :class:`BatchDecodeError` on anything malformed."""
    header, body = decode_header(payload)
    try:
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_BODY_BYTES)
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise BatchDecodeError(f"body does not decompress or decode: {exc}", header) from None
    try:
        return Batch(header, _decode_body(doc, header))
    except BatchDecodeError as exc:
        raise BatchDecodeError(str(exc), header) from None
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise BatchDecodeError(f"malformed body: {exc}", header) from None


def _decode_body(doc: Any, header: BatchHeader) -> tuple[Point, ...]:
    if not (isinstance(doc, list) and len(doc) in (6, 7)):
        raise BatchDecodeError("body is not [t0, layout, sids, ts, columns, strings(, tq)]")
    t0, layout, sid_raw, ts_raw, columns, strings = doc[:6]
    tq_raw = doc[6] if len(doc) == 7 else None
    if tq_raw is not None and not isinstance(tq_raw, bytes):
        raise BatchDecodeError("time quality field is not bin")
    if (
        type(t0) is not int
        or not isinstance(layout, list)
        or not isinstance(sid_raw, bytes)
        or not isinstance(ts_raw, bytes)
        or not isinstance(columns, list)
        or not isinstance(strings, list)
        or not all(isinstance(w, str) for w in strings)
    ):
        raise BatchDecodeError("body fields have the wrong types")
    n_series = n_ts = 0
    per_type: dict[int, int] = {}
    rows_per_type: dict[int, int] = {}
    for entry in layout:
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and all(type(x) is int for x in entry)
            and entry[0] in TYPE_NAMES
            and entry[1] > 0
            and entry[2] > 0
            and entry[3] in (0, 1)
        ):
            raise BatchDecodeError(f"bad layout entry {entry!r}")
        kind, rows, n, _ = entry
        n_series += rows
        n_ts += n
        per_type[kind] = per_type.get(kind, 0) + rows * n
        rows_per_type[kind] = rows_per_type.get(kind, 0) + rows
    if sum(per_type.values()) != header.points:
        raise BatchDecodeError(
            f"layout holds {sum(per_type.values())} points, header says {header.points}"
        )
    sids = []
    acc = 0
    for d in _unzigzag(_unshuffle(sid_raw, 8, n_series)):
        acc += d
        sids.append(acc)
    ts_all = _unzigzag(_unshuffle(ts_raw, 8, n_ts))
    if tq_raw is not None and (len(tq_raw) != n_ts or max(tq_raw, default=0) not in TQ_NAMES):
        raise BatchDecodeError("time quality field has the wrong length or an unknown quality")
    flats: dict[int, list[int]] = {}
    first_flats: dict[int, list[int]] = {}
    for kind, count in per_type.items():
        raw = next(
            (c[1] for c in columns if isinstance(c, list) and len(c) == 2 and c[0] == kind), None
        )
        if not isinstance(raw, bytes):
            raise BatchDecodeError(f"no column for type {TYPE_NAMES[kind]}")
        if kind == BOOL:
            if len(raw) != (count + 7) // 8:
                raise BatchDecodeError("bool column has the wrong length")
            flats[kind] = _unpackbits(raw, count)
        elif kind == STR:
            flats[kind] = _unshuffle(raw, 4, count)
        else:
            width = _NUMERIC[kind] // 8
            n_first = rows_per_type[kind]
            split = n_first * width
            first_flats[kind] = _unshuffle(raw[:split], width, n_first)
            flats[kind] = _unshuffle(raw[split:], width, count - n_first)
    out: list[Point] = []
    at_sid = at_ts = 0
    at_col = dict.fromkeys(per_type, 0)
    at_first = dict.fromkeys(per_type, 0)
    prev: list[int] | None = None
    for kind, rows, n, mode in layout:
        chunk = ts_all[at_ts : at_ts + n]
        if mode == 1:
            if prev is None or len(prev) != n:
                raise BatchDecodeError("ts_mode 1 without a previous group of the same length")
            a = [x + y for x, y in zip(chunk, prev, strict=True)]
        else:
            a = _undd(chunk)
        prev = a
        quals = tq_raw[at_ts : at_ts + n] if tq_raw is not None else bytes(n)
        at_ts += n
        ts = [x + t0 for x in a]
        if kind in _NUMERIC:
            first = first_flats[kind][at_first[kind] : at_first[kind] + rows]
            at_first[kind] += rows
            rest = flats[kind][at_col[kind] : at_col[kind] + rows * (n - 1)]
            at_col[kind] += rows * (n - 1)
            values = _from_words(kind, _decode_numeric(first, rest, rows, n, _NUMERIC[kind]))
        else:
            flat = flats[kind][at_col[kind] : at_col[kind] + rows * n]
            at_col[kind] += rows * n
            if kind == BOOL:
                values = [[bool(b) for b in flat[r * n : (r + 1) * n]] for r in range(rows)]
            else:
                if flat and max(flat) >= len(strings):
                    raise BatchDecodeError("string index past the dictionary")
                values = [[strings[i] for i in flat[r * n : (r + 1) * n]] for r in range(rows)]
        for sid, row in zip(sids[at_sid : at_sid + rows], values, strict=True):
            out.extend(Point(sid, t, v, q) for t, v, q in zip(ts, row, quals, strict=True))
        at_sid += rows
    return tuple(out)
