"""Uplink batch format v1: columnar, typed, delta-encoded, byte-shuffled, zstd. No I/O.

The normative description, with a worked example, is docs/batch-format-v1.md; golden vectors are
in tests/golden/. In short, one MQTT message carries one batch:

    header  msgpack map, uncompressed, so a consumer can name a batch it cannot decode:
            {"v": 1, "gw": str, "seq": int, "boot": int, "created": int ms, "dropped": int,
             "n": points in the batch, "z": "zstd", "body": bin}
    body    zstd frame of a msgpack array [t0, layout, sids, ts, columns, strings]
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
                    bool     numpy.packbits (big bit order) of the concatenation
                    str      uint32 LE indexes into ``strings``, byte-shuffled
            strings [str]: the batch's string dictionary (sorted), or []

Byte-shuffling (w-byte words -> w planes: all first bytes, then all second bytes, ...) puts the
bytes that rarely change (high bytes of differences) next to each other, where zstd removes
them. Everything is lossless: a float that is exactly a float32 travels as float32 bit for bit,
any other float as float64; ±inf survive; NaN stays NaN (its payload bits are not kept).

Series ids refer to the dictionary in the gateway's retained birth message (device, point, unit,
type). The format does not need it to decode: :func:`decode_batch` returns series ids.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import numpy as np
import zstandard

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "BatchDecodeError",
    "BatchHeader",
    "Point",
    "Reading",
    "decode_batch",
    "decode_header",
    "encode_batch",
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


class Reading(NamedTuple):
    """A point resolved through the birth dictionary: what a batch means to an integrator."""

    device: str
    point: str
    ts_ms: int
    value: Value


class Point(NamedTuple):
    """One value of one series at one instant (series ids come from the birth dictionary)."""

    sid: int
    ts_ms: int
    value: Value


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


@dataclass(frozen=True, slots=True)
class Batch:
    header: BatchHeader
    points: tuple[Point, ...]


# --------------------------------------------------------------------------- helpers


def _shuffle(a: np.ndarray) -> bytes:
    """Byte-shuffle an array of fixed-width little-endian words."""
    width = a.dtype.itemsize
    if a.size == 0:
        return b""
    return (
        a.astype(a.dtype.newbyteorder("<"), copy=False)
        .view(np.uint8)
        .reshape(-1, width)
        .T.tobytes()
    )


def _unshuffle(raw: bytes, dtype: str, count: int) -> np.ndarray:
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != count * dt.itemsize:
        raise BatchDecodeError(f"column holds {len(raw)} bytes, expected {count * dt.itemsize}")
    if count == 0:
        return np.zeros(0, dtype=dt)
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dt.itemsize, count)
    return planes.T.copy().view(dt).reshape(count)


def _zigzag(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int64)
    return ((a << 1) ^ (a >> 63)).view(np.uint64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    u = u.astype(np.uint64)
    return ((u >> np.uint64(1)).view(np.int64)) ^ -((u & np.uint64(1)).view(np.int64))


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
        if math.isnan(v):
            return F32
        try:
            as_f32 = struct.unpack("<f", struct.pack("<f", v))[0]
        except OverflowError:
            return F64
        return F32 if as_f32 == v else F64
    if isinstance(v, str):
        return STR
    raise ValueError(f"unsupported value type {type(v).__name__}")


def _dd(a: np.ndarray) -> np.ndarray:
    d = np.diff(a, prepend=0)
    return np.diff(d, prepend=0)


def _undd(dd: np.ndarray) -> np.ndarray:
    return np.cumsum(np.cumsum(dd))


#: Numeric types: the unsigned word their values travel as, and how a value becomes that word.
_NUMERIC = {F32: np.uint32, F64: np.uint64, I64: np.uint64, U64: np.uint64}
_AS_FLOAT = {F32: "<f4", F64: "<f8"}
_SIGNED = {np.uint32: np.int32, np.uint64: np.int64}


def _words(kind: int, m: list[list[Value]]) -> np.ndarray:
    """A group's values (series x samples) as unsigned words: IEEE bits or two's complement."""
    if kind in _AS_FLOAT:
        return np.asarray(m, dtype=_AS_FLOAT[kind]).view(_NUMERIC[kind])
    if kind == I64:
        return np.asarray(m, dtype=np.int64).view(np.uint64)
    return np.asarray([[int(v) for v in r] for r in m], dtype=np.uint64)  # U64


def _from_words(kind: int, w: np.ndarray) -> list[list[Value]]:
    if kind in _AS_FLOAT:
        return w.view(_AS_FLOAT[kind]).tolist()
    if kind == I64:
        return w.view(np.int64).tolist()
    return w.tolist()


def _zz_words(d: np.ndarray) -> np.ndarray:
    """Wrapped differences (unsigned words) read as signed, zigzagged, back to the word size."""
    return _zigzag(d.view(_SIGNED[d.dtype.type]).astype(np.int64)).astype(d.dtype)


def _unzz_words(z: np.ndarray, word: type) -> np.ndarray:
    return _unzigzag(z.astype(np.uint64)).astype(_SIGNED[word]).view(word)


def _encode_numeric(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A group's word matrix as (firsts, rest): every sample minus the same series' previous
    sample; a series' first sample minus the first sample of the series above it in the group
    (neighbours such as L1/L2/L3 are alike), the top one minus 0. All modulo the word size."""
    d = w.copy()
    d[:, 1:] = w[:, 1:] - w[:, :-1]
    d[1:, 0] = w[1:, 0] - w[:-1, 0]
    return _zz_words(d[:, 0]), _zz_words(d[:, 1:]).reshape(-1)


def _decode_numeric(firsts: np.ndarray, rest: np.ndarray, rows: int, n: int) -> np.ndarray:
    word = firsts.dtype.type
    d = np.empty((rows, n), dtype=word)
    d[:, 0] = _unzz_words(firsts, word)
    d[:, 1:] = _unzz_words(rest, word).reshape(rows, n - 1)
    with np.errstate(over="ignore"):
        d[:, 0] = np.cumsum(d[:, 0], dtype=word)
        return np.cumsum(d, axis=1, dtype=word)


# --------------------------------------------------------------------------- encode


def encode_batch(
    header: BatchHeader,
    points: Iterable[Point | tuple[int, int, Value]],
    *,
    level: int = _ZSTD_LEVEL,
) -> bytes:
    """Encode points ``(sid, ts_ms, value)`` into one batch. ``header.points`` is filled in."""
    per_series: dict[int, list[tuple[int, Value]]] = {}
    for sid, ts, value in points:
        per_series.setdefault(int(sid), []).append((int(ts), value))
    total = sum(len(v) for v in per_series.values())
    # Split each series into runs of one value type, then group runs with identical instants.
    groups: dict[tuple[int, tuple[int, ...]], list[tuple[int, list[Value]]]] = {}
    t0 = min((ts for s in per_series.values() for ts, _ in s), default=header.created_ms)
    for sid, samples in per_series.items():
        samples.sort(key=lambda p: p[0])
        run_kind: int | None = None
        run: list[tuple[int, Value]] = []
        for ts, value in [*samples, (0, None)]:  # sentinel flushes the last run
            kind = _value_type(value) if value is not None else None
            if run and kind != run_kind:
                key = (run_kind, tuple(t for t, _ in run))
                groups.setdefault(key, []).append((sid, [v for _, v in run]))  # type: ignore[arg-type]
                run = []
            run_kind = kind
            if value is not None:
                run.append((ts, value))
    # Groups in series-id order: a device's requests sit side by side, so ids step by one and
    # each group's timestamps differ little from the group before it.
    for members in groups.values():
        members.sort(key=lambda m: m[0])
    ordered = sorted(groups.items(), key=lambda g: (g[1][0][0], g[0][1][0], g[0][0]))
    words = sorted(
        {
            str(v)
            for (kind, _), members in ordered
            if kind == STR
            for _, vals in members
            for v in vals
        }
    )
    strings = {w: i for i, w in enumerate(words)}
    layout: list[list[int]] = []
    sids: list[int] = []
    ts_parts: list[np.ndarray] = []
    firsts: dict[int, list[np.ndarray]] = {}
    parts: dict[int, list[np.ndarray]] = {}
    prev_ts: np.ndarray | None = None
    for (kind, ts), members in ordered:
        sids.extend(m[0] for m in members)
        a = np.asarray(ts, dtype=np.int64) - t0
        own = _dd(a)
        mode = 0
        if prev_ts is not None and len(prev_ts) == len(a):
            rel = a - prev_ts
            if np.abs(rel).sum() <= np.abs(own).sum():
                mode, own = 1, rel
        ts_parts.append(own)
        prev_ts = a
        layout.append([kind, len(members), len(ts), mode])
        values = [m[1] for m in members]
        if kind in _NUMERIC:
            first, rest = _encode_numeric(_words(kind, values))
            firsts.setdefault(kind, []).append(first)
            parts.setdefault(kind, []).append(rest)
        elif kind == BOOL:
            parts.setdefault(kind, []).append(np.asarray(values, dtype=bool).reshape(-1))
        else:  # STR
            idx = [[strings[v] for v in r] for r in values]
            parts.setdefault(kind, []).append(np.asarray(idx, dtype=np.uint32).reshape(-1))
    sid_arr = np.asarray(sids, dtype=np.int64)
    columns = []
    for kind, arrs in sorted(parts.items()):
        if kind == BOOL:
            raw = np.packbits(np.concatenate(arrs)).tobytes()
        elif kind == STR:
            raw = _shuffle(np.concatenate(arrs))
        else:
            raw = _shuffle(np.concatenate(firsts[kind])) + _shuffle(np.concatenate(arrs))
        columns.append([kind, raw])
    body_doc = [
        t0,
        layout,
        _shuffle(_zigzag(np.diff(sid_arr, prepend=0))) if sids else b"",
        _shuffle(_zigzag(np.concatenate(ts_parts))) if ts_parts else b"",
        columns,
        words,
    ]
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
    return msgpack.packb(doc, use_bin_type=True)


# --------------------------------------------------------------------------- decode


def _field(doc: dict[Any, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise BatchDecodeError(f"batch header has no {key!r} field")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BatchDecodeError(f"batch header field {key!r} has type {type(value).__name__}")
    return value


_HEADER_KEYS = frozenset({"v", "gw", "seq", "boot", "created", "dropped", "n", "z", "body", "part"})


def _part(doc: dict[Any, Any]) -> tuple[int, ...]:
    raw = doc.get("part", [])
    if (
        not isinstance(raw, list)
        or len(raw) > 64
        or not all(type(x) is int and x in (1, 2) for x in raw)
    ):
        raise BatchDecodeError(f"bad part path {raw!r}")
    return tuple(raw)


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
    )
    if header.seq < 0 or header.dropped < 0 or not 0 <= header.points <= MAX_POINTS:
        raise BatchDecodeError("negative seq or dropped, or impossible point count", header)
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
    if not (isinstance(doc, list) and len(doc) == 6):
        raise BatchDecodeError("body is not [t0, layout, sids, ts, columns, strings]")
    t0, layout, sid_raw, ts_raw, columns, strings = doc
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
    sids = np.cumsum(_unzigzag(_unshuffle(sid_raw, "u8", n_series))).tolist()
    ts_all = _unzigzag(_unshuffle(ts_raw, "u8", n_ts))
    flats: dict[int, np.ndarray] = {}
    first_flats: dict[int, np.ndarray] = {}
    for kind, count in per_type.items():
        raw = next(
            (c[1] for c in columns if isinstance(c, list) and len(c) == 2 and c[0] == kind), None
        )
        if not isinstance(raw, bytes):
            raise BatchDecodeError(f"no column for type {TYPE_NAMES[kind]}")
        if kind == BOOL:
            if len(raw) != (count + 7) // 8:
                raise BatchDecodeError("bool column has the wrong length")
            flats[kind] = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count)
        elif kind == STR:
            flats[kind] = _unshuffle(raw, "u4", count)
        else:
            word = np.dtype(_NUMERIC[kind])
            n_first = rows_per_type[kind]
            split = n_first * word.itemsize
            first_flats[kind] = _unshuffle(raw[:split], word.str, n_first)
            flats[kind] = _unshuffle(raw[split:], word.str, count - n_first)
    out: list[Point] = []
    at_sid = at_ts = 0
    at_col = dict.fromkeys(per_type, 0)
    at_first = dict.fromkeys(per_type, 0)
    prev: np.ndarray | None = None
    for kind, rows, n, mode in layout:
        chunk = ts_all[at_ts : at_ts + n]
        if mode == 1:
            if prev is None or len(prev) != n:
                raise BatchDecodeError("ts_mode 1 without a previous group of the same length")
            a = chunk + prev
        else:
            a = _undd(chunk)
        prev = a
        at_ts += n
        ts = (a + t0).tolist()
        if kind in _NUMERIC:
            first = first_flats[kind][at_first[kind] : at_first[kind] + rows]
            at_first[kind] += rows
            rest = flats[kind][at_col[kind] : at_col[kind] + rows * (n - 1)]
            at_col[kind] += rows * (n - 1)
            values = _from_words(kind, _decode_numeric(first, rest, rows, n))
        else:
            flat = flats[kind][at_col[kind] : at_col[kind] + rows * n]
            at_col[kind] += rows * n
            if kind == BOOL:
                values = flat.astype(bool).reshape(rows, n).tolist()
            else:
                if flat.size and int(flat.max()) >= len(strings):
                    raise BatchDecodeError("string index past the dictionary")
                values = [[strings[i] for i in r] for r in flat.reshape(rows, n).tolist()]
        for sid, row in zip(sids[at_sid : at_sid + rows], values, strict=True):
            out.extend(Point(sid, t, v) for t, v in zip(ts, row, strict=True))
        at_sid += rows
    return tuple(out)
