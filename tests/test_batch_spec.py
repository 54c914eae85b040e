"""The batch format as its spec says it: a decoder written from docs/batch-format-v1.md alone.

Outside integrators write their own decoder from the spec, not from protocols/batch.py. This one
does the same (it imports nothing of protocols/batch.py; msgpack and zstandard only), and must
agree with every golden vector and with the batches the gateway's buffer really seals, whatever
the values (NaN with its payload, ±inf, -0.0, subnormals, 64-bit integers, strings), time
qualities, dropped reasons, and groups whose first sample is not at t0 (a request read a few ms
after the first one, polled a different number of times, which is every real batch).
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.store.buffer import Buffer
from protocols.batch import Reading  # the buffer's input type; the decoder is below

GOLDEN = Path(__file__).parent / "golden"
T = 1_763_800_000_000
BIG = 512 * 1024 * 1024


class Malformed(ValueError):
    pass


# --------------------------------------------------------------------------- the spec decoder


def unshuffle(raw: bytes, width: int) -> list[int]:
    """Byte-shuffle inverse (§2.8): w planes of N bytes -> N little-endian words."""
    if len(raw) % width:
        raise Malformed(f"{len(raw)} bytes are not words of {width}")
    n = len(raw) // width
    words = bytearray(len(raw))
    for plane in range(width):
        words[plane::width] = raw[plane * n : (plane + 1) * n]
    return [int.from_bytes(words[i : i + width], "little") for i in range(0, len(words), width)]


M64 = (1 << 64) - 1


def int64(u: int) -> int:
    """A sum modulo 2**64 read as an int64 (§0)."""
    u &= M64
    return u - (1 << 64) if u >> 63 else u


def unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def spec_decode(payload: bytes) -> tuple[dict, list[tuple[int, int, str, int, int]]]:
    """Header and points ``(sid, ts_ms, type name, word or value, tq)``. A float is its IEEE
    word (f32: 32 bits, f64: 64 bits), so NaN payloads can be compared bit for bit."""
    # §0: an unknown header key may hold an ext of any type, the reserved ones (-128 to -2) too
    head = msgpack.unpackb(payload, raw=False, ext_hook=lambda code, data: (code, data))
    if head.get("v") != 1 or head.get("z") != "zstd":
        raise Malformed("not a version-1 zstd batch")
    why = head.get("dropped_why", {})
    if sum(why.values()) > head["dropped"]:
        raise Malformed("dropped_why counts more than dropped")
    raw = zstandard.ZstdDecompressor().decompress(head["body"], max_output_size=64 << 20)
    body = msgpack.unpackb(raw, raw=False)
    t0, layout, sids_raw, ts_raw, columns, strings = body[:6]
    tq = body[6] if len(body) == 7 else None
    if sum(rows * samples for _, rows, samples, _ in layout) != head["n"]:
        raise Malformed("layout does not add up to n")
    # sids: int64 differences to the previous id (the first to 0), zigzag, shuffled
    sids, acc = [], 0
    for u in unshuffle(sids_raw, 8):
        acc = int64(acc + unzigzag(u))
        sids.append(acc)
    if len(sids) != sum(g[1] for g in layout):
        raise Malformed("sids")
    # ts: per group, ts_mode 0 delta of delta (two running sums), 1 relative to the previous
    words = [unzigzag(u) for u in unshuffle(ts_raw, 8)]
    if len(words) != sum(g[2] for g in layout):
        raise Malformed("ts")
    if tq is not None and (len(tq) != len(words) or any(q not in (0, 1, 2) for q in tq)):
        raise Malformed("tq")
    group_ts, at = [], 0
    for i, (_, _, samples, mode) in enumerate(layout):
        chunk = words[at : at + samples]
        if mode == 0:
            offsets, a, d = [], 0, 0
            for x in chunk:
                d = int64(d + x)
                a = int64(a + d)
                offsets.append(a)
        else:
            if i == 0 or len(group_ts[-1]) != samples:
                raise Malformed("ts_mode 1 needs a previous group of as many samples")
            offsets = [int64(p + x) for p, x in zip(group_ts[-1], chunk, strict=True)]
        group_ts.append(offsets)
        at += samples
    # columns
    width = {1: 32, 2: 64, 3: 64, 4: 64}
    by_type = {kind: raw for kind, raw in columns}
    matrices: dict[int, list[list]] = {}
    for kind in {g[0] for g in layout}:
        groups = [i for i, g in enumerate(layout) if g[0] == kind]
        raw = by_type[kind]
        cells = sum(layout[i][1] * layout[i][2] for i in groups)
        if kind in width:
            w = width[kind]
            rows = sum(layout[i][1] for i in groups)
            if len(raw) != cells * w // 8:
                raise Malformed("numeric column size")
            firsts = iter(unshuffle(raw[: rows * w // 8], w // 8))
            rest = iter(unshuffle(raw[rows * w // 8 :], w // 8))
            mask = (1 << w) - 1
            for i in groups:
                above, matrix = 0, []
                for _ in range(layout[i][1]):
                    v = (above + unzigzag(next(firsts))) & mask
                    above, row = v, [v]
                    for _ in range(layout[i][2] - 1):
                        v = (v + unzigzag(next(rest))) & mask
                        row.append(v)
                    matrix.append(row)
                matrices[i] = matrix
        elif kind == 5:
            if len(raw) != (cells + 7) // 8:
                raise Malformed("bool column size")
            bits = iter((raw[k >> 3] >> (7 - (k & 7))) & 1 for k in range(cells))
            for i in groups:
                matrices[i] = [
                    [bool(next(bits)) for _ in range(layout[i][2])] for _ in range(layout[i][1])
                ]
        elif kind == 6:
            idx = unshuffle(raw, 4)
            if len(idx) != cells or any(k >= len(strings) for k in idx):
                raise Malformed("str column")
            it = iter(idx)
            for i in groups:
                matrices[i] = [
                    [strings[next(it)] for _ in range(layout[i][2])] for _ in range(layout[i][1])
                ]
        else:
            raise Malformed(f"type {kind}")
    names = {1: "f32", 2: "f64", 3: "i64", 4: "u64", 5: "bool", 6: "str"}
    points, at_sid, at_ts = [], 0, 0
    for i, (kind, rows, samples, _) in enumerate(layout):
        for r in range(rows):
            for s in range(samples):
                v = matrices[i][r][s]
                if kind == 3 and v >> 63:
                    v -= 1 << 64
                q = tq[at_ts + s] if tq is not None else 0
                points.append((sids[at_sid + r], int64(t0 + group_ts[i][s]), names[kind], v, q))
        at_sid += rows
        at_ts += samples
    return head, points


def as_double(kind: str, value) -> float:
    """What a consumer working in doubles gets (an f32 widened)."""
    if kind == "f32":
        return struct.unpack("<f", value.to_bytes(4, "little"))[0]
    return struct.unpack("<d", value.to_bytes(8, "little"))[0]


def double_bits(v: float) -> str:
    return struct.pack(">d", v).hex()


# --------------------------------------------------------------------------- golden vectors


def golden_form(point: tuple) -> list:
    """A point in the golden JSON form (§7)."""
    sid, ts, kind, v, q = point
    if kind == "f32":
        v = f"{v:08x}"
    elif kind == "f64":
        v = f"{v:016x}"
    elif kind in ("i64", "u64"):
        v = str(v)
    return [str(sid), str(ts), kind, v, q]


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.bin")))
def test_batch_spec__a_decoder_from_the_spec_alone_reproduces_every_golden_vector(name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    head, points = spec_decode((GOLDEN / f"{name}.bin").read_bytes())
    h = expected["header"]
    assert [head[k] for k in ("v", "gw", "seq", "boot", "created", "dropped", "n")] == [
        h[k] for k in ("v", "gw", "seq", "boot", "created", "dropped", "n")
    ]
    assert (head.get("part", []), head.get("dropped_why", {})) == (h["part"], h["dropped_why"])
    got = [golden_form(p) for p in points]
    if "points" in expected:
        assert got == expected["points"]
    else:
        assert len(got) == expected["point_count"]
        assert all(got[i] == p for i, p in expected["points_at"])


def test_batch_spec__a_group_not_at_t0_with_its_own_timestamps_decodes_by_the_spec():
    # A second request read 4 ms after the first, polled twice while the first was polled three
    # times: its timestamps are ts_mode 0 and its second word is a1 - 2*a0 (996, not 1000).
    _, points = spec_decode((GOLDEN / "late_group.bin").read_bytes())
    assert sorted(ts - T for sid, ts, *_ in points if sid == 10) == [4, 1004]
    assert sorted(ts - T for sid, ts, *_ in points if sid == 11) == [9, 1010, 2011]


# --------------------------------------------------------------------------- real batches


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def f64(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


VALUES = st.one_of(
    st.integers(0, 2**32 - 1).map(f32),  # any float32 register, NaN payloads included
    st.integers(0, 2**64 - 1).map(f64),  # any double, f64 NaN payloads included
    st.sampled_from([f32(0x7FC00000), math.inf, -math.inf, -0.0, f32(1), f64(1)]),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-(2**15), 2**16),  # int16 / uint16 registers, scaled or not
    st.booleans(),  # coils
    st.sampled_from(["online", "degraded", "offline", "", "voltage_l1,current_l2", "bật"]),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_batch_spec__batches_the_buffer_seals_decode_by_the_spec_bit_for_bit(data):
    n_dev = data.draw(st.integers(1, 3))
    readings = []
    for poll in range(data.draw(st.integers(1, 4))):
        for dev in range(n_dev):
            if data.draw(st.booleans()) and poll:
                continue  # a device polled fewer times than its neighbour
            base = T + poll * 1000 + dev * data.draw(st.integers(0, 40))  # a few ms apart
            for point in range(data.draw(st.integers(1, 4))):
                readings.append(
                    (
                        f"dev-{dev}",
                        f"p{point}",
                        base,
                        data.draw(VALUES),
                        data.draw(st.sampled_from([0, 0, 1, 2])),
                    )
                )
    bad = data.draw(st.integers(0, 2))

    with tempfile.TemporaryDirectory() as d:
        buf = Buffer(Path(d) / "b.sqlite", max_bytes=BIG)
        buf.append([Reading(*r) for r in readings])
        buf.append([Reading("dev-0", "p0", T + 5000 + i, None) for i in range(bad)])
        names = {sid: (dev, point) for sid, dev, point in buf.series()}
        got, dropped, why = [], 0, 0
        while (batch := buf.seal("gw", data.draw(st.integers(1, 40)))) is not None:
            head, points = spec_decode(batch.payload)
            dropped += head["dropped"]
            why += head.get("dropped_why", {}).get("unencodable", 0)
            got += [(*names[sid], ts, kind, v, q) for sid, ts, kind, v, q in points]
            buf.ack(batch.seq)
        buf.close()

    def sent_key(r):
        dev, point, ts, v, q = r
        if isinstance(v, float):
            return (dev, point, ts, "float", double_bits(v), q)
        return (dev, point, ts, type(v).__name__, v, q)

    def got_key(g):
        dev, point, ts, kind, v, q = g
        if kind in ("f32", "f64"):
            return (dev, point, ts, "float", double_bits(as_double(kind, v)), q)
        if kind in ("i64", "u64"):
            return (dev, point, ts, "int", v, q)
        return (dev, point, ts, type(v).__name__, v, q)

    assert Counter(map(got_key, got)) == Counter(map(sent_key, readings))
    assert (dropped, why) == (bad, bad)
    # A float32 register travels as its own f32 word: a consumer reads the device's bits.
    for g in got:
        if g[3] == "f32":
            assert struct.pack("<f", as_double("f32", g[4])) == g[4].to_bytes(4, "little")
