"""protocols/: register codec and batch codec, with vectors from the reference and properties."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.batch import BatchDecodeError, BatchHeader, Point, decode_batch, encode_batch
from protocols.modbus import (
    DataType,
    ModbusValueError,
    WordOrder,
    decode_value,
    encode_value,
    register_count,
)

# Worked frames, ../shared/reference/device-protocols.md §1.5: reply 01 04 04 43 66 33 34 1B 38.
VECTORS = [
    # (registers, dtype, word order, value)
    (
        [0x4366, 0x3334],
        DataType.FLOAT32,
        WordOrder.BIG,
        struct.unpack(">f", bytes.fromhex("43663334"))[0],
    ),
    (
        [0x3334, 0x4366],
        DataType.FLOAT32,
        WordOrder.LITTLE,
        struct.unpack(">f", bytes.fromhex("43663334"))[0],
    ),
    ([0x4000, 0x0000], DataType.FLOAT32, WordOrder.BIG, 2.0),  # the baud-rate write, §1.5
    ([0xFFFF], DataType.INT16, WordOrder.BIG, -1),
    ([0xFFFF], DataType.UINT16, WordOrder.BIG, 65535),
    ([0x0001, 0x0000], DataType.UINT32, WordOrder.BIG, 65536),
    ([0x0000, 0x0001], DataType.UINT32, WordOrder.LITTLE, 65536),
    ([0xFFFF, 0xFFFE], DataType.INT32, WordOrder.BIG, -2),
]


@pytest.mark.parametrize(("regs", "dtype", "order", "value"), VECTORS)
def test_register_codec__reference_vectors_decode_and_encode(regs, dtype, order, value):
    assert decode_value(regs, dtype, order) == value
    assert encode_value(value, dtype, order) == regs


def test_register_codec__eastron_voltage_vector_is_230_2_volts():
    assert decode_value([0x4366, 0x3334], DataType.FLOAT32) == pytest.approx(230.2, abs=1e-4)


def test_register_codec__wrong_register_count_is_a_value_error():
    with pytest.raises(ModbusValueError):
        decode_value([1], DataType.FLOAT32)
    with pytest.raises(ModbusValueError):
        decode_value([0x10000], DataType.UINT16)


def test_register_codec__bits_are_bools_and_nothing_else():
    assert decode_value([1], DataType.BOOL) is True
    assert encode_value(False, DataType.BOOL) == [0]
    with pytest.raises(ModbusValueError):
        encode_value(2, DataType.BOOL)
    with pytest.raises(ModbusValueError):
        decode_value([0xFF00], DataType.BOOL)


def test_register_codec__out_of_range_value_is_a_value_error():
    with pytest.raises(ModbusValueError):
        encode_value(70000, DataType.UINT16)
    with pytest.raises(ModbusValueError):
        encode_value(float("nan"), DataType.INT32)


@given(
    st.sampled_from(list(DataType)),
    st.sampled_from(list(WordOrder)),
    st.booleans(),
    st.data(),
)
def test_register_codec__any_registers_round_trip(dtype, order, swap, data):
    word = st.integers(0, 1) if dtype is DataType.BOOL else st.integers(0, 0xFFFF)
    regs = data.draw(st.lists(word, min_size=register_count(dtype), max_size=register_count(dtype)))
    value = decode_value(regs, dtype, order, byte_swap=swap)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payload bits are not canonical
    assert encode_value(value, dtype, order, byte_swap=swap) == regs


# ----------------------------------------------------------------------------- batches

HEADER = BatchHeader("gw-1", 7, 3, 1_700_000_000_000, dropped=2)
ts_st = st.integers(1_600_000_000_000, 1_900_000_000_000)
f32 = st.floats(width=32, allow_nan=True)
values_st = st.one_of(
    f32,
    st.floats(allow_nan=True),  # float64 (exact float32s travel as f32)
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=8),
)
# Generating many typed series is slow on a loaded, shared machine: that is not a failure.
CODEC = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None
)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def assert_round_trip(points):
    payload = encode_batch(HEADER, points)
    batch = decode_batch(payload)
    assert batch.header.gateway == "gw-1" and batch.header.seq == 7
    assert batch.header.boot == 3 and batch.header.dropped == 2
    assert batch.header.points == len(points)
    key = lambda p: (p.sid, p.ts_ms)  # noqa: E731
    got, want = sorted(batch.points, key=key), sorted(points, key=key)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.sid, g.ts_ms) == (w.sid, w.ts_ms)
        assert same(w.value, g.value), (w, g)
    return payload


@st.composite
def point_sets(draw):
    """Series with unique timestamps each; one value type per series or mixed."""
    out = []
    for sid in draw(st.lists(st.integers(0, 10_000), unique=True, max_size=6)):
        times = draw(st.lists(ts_st, unique=True, max_size=10))
        kind = draw(st.sampled_from(["f32", "any"]))
        for t in times:
            v = draw(f32 if kind == "f32" else values_st)
            out.append(Point(sid, t, v))
    return out


@CODEC
@given(point_sets())
def test_batch_codec__round_trip_is_lossless_for_every_column_type(points):
    assert_round_trip(points)


def exact_f32(v: float) -> bool:
    try:
        return struct.unpack("<f", struct.pack("<f", v))[0] == v
    except OverflowError:
        return False


TYPED = {
    "f32": f32,
    "f64": st.floats(allow_nan=False).filter(lambda v: not exact_f32(v)),
    "i64": st.integers(-(2**63), 2**63 - 1),
    "u64": st.integers(2**63, 2**64 - 1),
    "bool": st.booleans(),
    "str": st.text(max_size=4),
}


@st.composite
def polled_groups(draw):
    """Requests as the gateway sees them: several series of one type read at the same instants,
    so groups have many rows (the neighbour prediction of first samples and its wrap-around)."""
    out, sid = [], 0
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(sorted(TYPED)))
        times = draw(st.lists(ts_st, unique=True, min_size=1, max_size=6))
        for _ in range(draw(st.integers(1, 5))):
            sid += draw(st.integers(1, 3))
            out.extend(Point(sid, t, draw(TYPED[kind])) for t in times)
    return out


@CODEC
@given(polled_groups())
def test_batch_codec__round_trip_is_lossless_for_groups_polled_together(points):
    assert_round_trip(points)


@pytest.mark.parametrize(
    "points",
    [
        [],  # empty: a batch that only reports evictions
        [Point(1, 1_700_000_000_000, 230.2)],  # one row
        [Point(1, 5, float("nan")), Point(1, 6, float("inf")), Point(1, 7, float("-inf"))],
        [Point(2, 5, -0.0), Point(2, 6, 0.0), Point(3, 5, 1e300), Point(3, 6, 5e-324)],
        [Point(4, 1, 2**64 - 1), Point(4, 2, 0), Point(4, 3, 2**63), Point(5, 1, -(2**63))],
        [Point(6, 1, True), Point(6, 2, False), Point(6, 3, True)],
        [Point(7, 1, "on"), Point(7, 2, ""), Point(7, 3, "tắt")],  # Vietnamese survives
        [Point(8, 1, 1), Point(8, 2, 1.5), Point(8, 3, "x"), Point(8, 4, True)],  # mixed
    ],
    ids=["empty", "one-row", "nan-inf", "signed-zero-f64", "u64-i64", "bool", "str", "mixed"],
)
def test_batch_codec__edge_cases_round_trip(points):
    assert_round_trip(points)


def test_batch_codec__float32_values_travel_as_float32_bit_for_bit():
    value = decode_value([0x4366, 0x3334], DataType.FLOAT32)  # 230.2 as a meter sends it
    [p] = decode_batch(encode_batch(HEADER, [Point(1, 0, value)])).points
    assert struct.pack(">f", p.value) == bytes.fromhex("43663334")


@given(st.binary(max_size=300))
def test_batch_codec__garbage_raises_only_batch_decode_error(data):
    try:
        decode_batch(data)
    except BatchDecodeError:
        pass


@CODEC
@given(st.data())
def test_batch_codec__corrupted_payloads_raise_only_batch_decode_error(data):
    points = data.draw(point_sets())
    payload = bytearray(encode_batch(HEADER, points))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    try:
        decode_batch(bytes(payload))
    except BatchDecodeError:
        pass


def test_batch_codec__broken_body_still_names_the_batch():
    payload = bytearray(encode_batch(HEADER, [Point(1, 1, 1.0)]))
    payload[-2] ^= 0xFF
    with pytest.raises(BatchDecodeError) as info:
        decode_batch(bytes(payload))
    assert info.value.header is not None and info.value.header.seq == 7


def test_batch_codec__unknown_version_is_rejected_and_unknown_header_fields_kept():
    doc = msgpack.unpackb(encode_batch(HEADER, []))
    doc["future"] = 1
    assert decode_batch(msgpack.packb(doc)).header.extra == {"future": 1}
    doc["v"] = 99
    with pytest.raises(BatchDecodeError, match="version 99"):
        decode_batch(msgpack.packb(doc))


# The golden vectors (tests/golden/) are checked against every decoder in test_batch_contract.py.


def test_birth__round_trip_and_malformed_births_are_rejected():
    from protocols.birth import Birth, BirthError, SeriesInfo

    birth = Birth(
        "gw",
        "site",
        4,
        "hanoi-edge 0.1.0",
        1,
        42,
        ({"id": "m1", "profile": "eastron_sdm630"},),
        (SeriesInfo(1, "m1", "voltage_l1", "V", "float32"),),
    )
    assert Birth.decode(birth.encode()) == birth
    for bad in (b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "series": [[1]]}'):
        with pytest.raises(BirthError):
            Birth.decode(bad)


def test_consumer__split_parts_are_deduplicated_against_the_whole_and_each_other():
    import io

    from edge.platform.consumer import BatchConsumer

    c = BatchConsumer("mqtt://127.0.0.1:1", report=io.StringIO())

    def send(seq, part=(), n=1):
        header = BatchHeader("gw", seq, 1, 0, part=part)
        return c.handle(
            "city/v1/s/gw/data",
            encode_batch(header, [Point(1, seq * 10 + i, 1.0) for i in range(n)]),
        )

    assert send(1) is not None
    assert send(1, (1,)) is None  # the whole was delivered before it was split
    assert send(2, (1,)) is not None and send(2, (2, 1)) is not None
    assert send(2, (2, 1)) is None  # a repeated part
    assert send(2, (2,)) is None  # contains a part already delivered
    assert send(2) is None  # the whole, after its parts
    assert send(2, (2, 2)) is not None
    assert c.tallies["gw"].tracker.missing() == []
