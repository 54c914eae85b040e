"""protocols/: register codec and batch codec, with vectors from the reference and properties."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.batch import BatchDecodeError, Reading, decode_batch, encode_batch
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
    regs = data.draw(
        st.lists(
            st.integers(0, 0xFFFF), min_size=register_count(dtype), max_size=register_count(dtype)
        )
    )
    value = decode_value(regs, dtype, order, byte_swap=swap)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payload bits are not canonical
    assert encode_value(value, dtype, order, byte_swap=swap) == regs


# ----------------------------------------------------------------------------- batches

names = st.text(min_size=1, max_size=12)
values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=20),
)
readings_st = st.lists(
    st.builds(Reading, names, names, st.integers(0, 2**41), values), max_size=200
)


@given(readings_st, st.integers(0, 2**63 - 1), st.integers(0, 2**31))
def test_batch_codec__round_trip_is_lossless(readings, seq, dropped):
    payload = encode_batch("gw-1", seq, 1_700_000_000_000, readings, dropped=dropped)
    batch = decode_batch(payload)
    assert batch.gateway == "gw-1"
    assert batch.seq == seq
    assert batch.dropped == dropped
    assert batch.created_ms == 1_700_000_000_000
    assert len(batch.readings) == len(readings)
    for got, want in zip(batch.readings, readings, strict=True):
        assert got == want
        assert type(got.value) is type(want.value)


def test_batch_codec__nan_and_infinity_survive():
    batch = decode_batch(
        encode_batch(
            "g", 1, 0, [Reading("d", "p", 5, float("nan")), Reading("d", "p", 6, float("-inf"))]
        )
    )
    assert math.isnan(batch.readings[0].value)
    assert batch.readings[1].value == float("-inf")


@given(st.binary(max_size=300))
def test_batch_codec__garbage_raises_only_batch_decode_error(data):
    try:
        decode_batch(data)
    except BatchDecodeError:
        pass


@given(
    st.dictionaries(
        st.sampled_from(
            ["v", "gw", "seq", "created", "dropped", "series", "t0", "si", "dt", "val", "x"]
        ),
        st.one_of(
            st.integers(-5, 5),
            st.text(max_size=3),
            st.lists(st.integers(-2, 3), max_size=4),
            st.lists(st.lists(st.text(max_size=2), max_size=3), max_size=3),
        ),
    )
)
def test_batch_codec__hostile_maps_raise_only_batch_decode_error(doc):
    try:
        decode_batch(msgpack.packb(doc))
    except BatchDecodeError:
        pass


def test_batch_codec__unknown_version_is_rejected_and_unknown_fields_kept():
    doc = msgpack.unpackb(encode_batch("g", 1, 0, []))
    doc["future"] = 1
    assert decode_batch(msgpack.packb(doc)).extra == {"future": 1}
    doc["v"] = 99
    with pytest.raises(BatchDecodeError, match="version 99"):
        decode_batch(msgpack.packb(doc))


def test_batch_codec__is_compact_over_ten_poll_cycles():
    # One batch holds many cycles, so the series dictionary (device + point names) is amortised.
    readings = [
        Reading("cabinet-main", f"point_{i}", 1_700_000_000_000 + 2000 * cycle, 230.0 + i / 7)
        for cycle in range(10)
        for i in range(56)
    ]
    payload = encode_batch("gw", 1, 1_700_000_000_000, readings)
    assert decode_batch(payload).readings == tuple(readings)
    # float64 values (9 B) dominate; issue 5's columnar v1 goes further. ThingsBoard's JSON
    # costs ~19.6 B per value (peer-thingsboard-gateway.md).
    assert len(payload) / len(readings) < 16
