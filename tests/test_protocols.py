"""protocols/: register codec and batch codec, with vectors from the reference and properties."""

from __future__ import annotations

import base64
import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.batch import BatchDecodeError, BatchHeader, Point, decode_batch, encode_batch
from protocols.modbus import (
    ByteOrder,
    DataType,
    ModbusValueError,
    WordOrder,
    decode_string,
    decode_value,
    encode_string,
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
    st.sampled_from([t for t in DataType if t is not DataType.STRING]),
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


# The byte-order table of protocols/modbus.py and docs/profile-format.md, one value per width.
F32_230_2 = struct.unpack(">f", bytes.fromhex("43663334"))[0]
BYTE_ORDER_VECTORS = [
    # (dtype, value, {order: registers})
    (
        DataType.FLOAT32,
        F32_230_2,
        {
            ByteOrder.ABCD: [0x4366, 0x3334],
            ByteOrder.CDAB: [0x3334, 0x4366],
            ByteOrder.BADC: [0x6643, 0x3433],
            ByteOrder.DCBA: [0x3433, 0x6643],
        },
    ),
    (
        DataType.INT64,
        0x0102030405060708,
        {
            ByteOrder.ABCD: [0x0102, 0x0304, 0x0506, 0x0708],
            ByteOrder.CDAB: [0x0708, 0x0506, 0x0304, 0x0102],  # Telegraf's GHEFCDAB
            ByteOrder.BADC: [0x0201, 0x0403, 0x0605, 0x0807],  # BADCFEHG
            ByteOrder.DCBA: [0x0807, 0x0605, 0x0403, 0x0201],  # HGFEDCBA
        },
    ),
    (
        DataType.UINT32,
        0x11223344,
        {
            ByteOrder.ABCD: [0x1122, 0x3344],
            ByteOrder.CDAB: [0x3344, 0x1122],
            ByteOrder.BADC: [0x2211, 0x4433],
            ByteOrder.DCBA: [0x4433, 0x2211],
        },
    ),
    (
        DataType.FLOAT64,
        1.0,  # 0x3FF0000000000000
        {
            ByteOrder.ABCD: [0x3FF0, 0, 0, 0],
            ByteOrder.CDAB: [0, 0, 0, 0x3FF0],
            ByteOrder.BADC: [0xF03F, 0, 0, 0],
            ByteOrder.DCBA: [0, 0, 0, 0xF03F],
        },
    ),
    # One register: only the byte swap applies (CDAB reads as ABCD, DCBA as BADC).
    (
        DataType.INT16,
        -2,  # 0xFFFE
        {
            ByteOrder.ABCD: [0xFFFE],
            ByteOrder.CDAB: [0xFFFE],
            ByteOrder.BADC: [0xFEFF],
            ByteOrder.DCBA: [0xFEFF],
        },
    ),
]


@pytest.mark.parametrize(
    ("dtype", "value", "order", "regs"),
    [(d, v, o, r) for d, v, table in BYTE_ORDER_VECTORS for o, r in table.items()],
)
def test_register_codec__byte_order_table_decodes_and_encodes(dtype, value, order, regs):
    assert decode_value(regs, dtype, order) == value
    assert encode_value(value, dtype, order) == regs
    # Independently of our code: the wire bytes (registers high byte first) are the value's
    # big-endian bytes A, B, C, ... in the order the name spells (for 64 bits, Telegraf's
    # spelling; for one register, only the byte swap counts).
    letters = _LETTERS[struct.calcsize(_CODE[dtype])][order]
    wire = struct.pack(f">{len(regs)}H", *regs)
    value_bytes = bytes(wire[letters.index(c)] for c in sorted(letters))
    assert struct.unpack(">" + _CODE[dtype], value_bytes)[0] == value


_LETTERS = {
    2: {"ABCD": "AB", "CDAB": "AB", "BADC": "BA", "DCBA": "BA"},
    4: {o: o for o in ("ABCD", "CDAB", "BADC", "DCBA")},
    8: {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"},
}
_CODE = {
    DataType.INT16: "h",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.INT64: "q",
    DataType.FLOAT64: "d",
}


def test_register_codec__word_order_is_an_alias_of_byte_order():
    for dtype in (DataType.FLOAT32, DataType.UINT32, DataType.INT64, DataType.FLOAT64):
        regs = [0x1234, 0x5678, 0x9ABC, 0xDEF0][: register_count(dtype)]
        assert decode_value(regs, dtype, WordOrder.BIG) == decode_value(regs, dtype, ByteOrder.ABCD)
        assert decode_value(regs, dtype, WordOrder.LITTLE) == decode_value(
            regs, dtype, ByteOrder.CDAB
        )
        assert decode_value(regs, dtype, WordOrder.BIG, byte_swap=True) == decode_value(
            regs, dtype, ByteOrder.BADC
        )
        assert decode_value(regs, dtype, WordOrder.LITTLE, byte_swap=True) == decode_value(
            regs, dtype, ByteOrder.DCBA
        )
    assert ByteOrder.of(WordOrder.LITTLE) is ByteOrder.CDAB
    assert ByteOrder.DCBA.word_order is WordOrder.LITTLE and ByteOrder.DCBA.byte_swap


NUMERIC = [t for t in DataType if t not in (DataType.BOOL, DataType.STRING)]
_INT_RANGE = {
    DataType.UINT16: (0, 0xFFFF),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
}
scales = st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 0.5, -1.0, 1e-6])
offsets = st.sampled_from([0.0, -40.0, 273.15, 1000.0, -0.5])


@given(st.sampled_from(NUMERIC), st.sampled_from(list(ByteOrder)), scales, offsets, st.data())
def test_register_codec__scaled_values_round_trip_in_every_byte_order(
    dtype, order, scale, offset, data
):
    """encode(decode(registers)) gives the registers back, for every type, order, scale and
    offset; decode(encode(value)) gives the value back within a step of the register."""
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        if scale != 1 or offset != 0:  # a scaled 64-bit integer passes through a float64
            lo, hi = max(lo, -(2**50)), min(hi, 2**50)
        raw = data.draw(st.integers(lo, hi))
        regs = encode_value(raw, dtype, order)
        value = decode_value(regs, dtype, order, scale=scale, offset=offset)
        if scale == 1 and offset.is_integer():
            assert value == raw + int(offset) and isinstance(value, int)
        else:
            assert value == pytest.approx(raw * scale + offset, rel=1e-12, abs=1e-9)
        assert encode_value(value, dtype, order, scale=scale, offset=offset) == regs
    else:
        width = 32 if dtype is DataType.FLOAT32 else 64
        raw = data.draw(st.floats(width=width, allow_nan=False, allow_infinity=False))
        if abs(raw) > 1e30:
            return  # scaling would overflow a float32: not what this property is about
        regs = encode_value(raw, dtype, order)
        value = decode_value(regs, dtype, order, scale=scale, offset=offset)
        back = encode_value(value, dtype, order, scale=scale, offset=offset)
        got = decode_value(back, dtype, order)
        # Two roundings to the type's precision, of numbers as large as raw and offset / scale.
        eps, tiny = (1e-6, 1e-44) if dtype is DataType.FLOAT32 else (1e-13, 1e-320)  # subnormals
        assert abs(got - raw) <= eps * (abs(raw) + abs(offset / scale)) + tiny


def test_register_codec__a_value_outside_the_type_after_scaling_is_refused():
    with pytest.raises(ModbusValueError, match="does not fit"):
        encode_value(6553.6, DataType.UINT16, scale=0.1)  # 65536 steps of 0.1
    with pytest.raises(ModbusValueError, match="does not fit"):
        encode_value(-41, DataType.UINT16, offset=-40)  # raw -1
    assert encode_value(-40, DataType.UINT16, offset=-40) == [0]
    assert decode_value([0], DataType.UINT16, offset=-40) == -40


@given(
    st.integers(0, 15).flatmap(lambda a: st.tuples(st.just(a), st.integers(a, 15))),
    st.sampled_from(list(ByteOrder)),
    st.data(),
)
def test_register_codec__a_field_of_bits_round_trips_and_leaves_other_bits_alone(bits, order, data):
    first, last = bits
    width = last - first + 1
    value = data.draw(st.integers(0, (1 << width) - 1))
    dtype = DataType.BOOL if width == 1 and data.draw(st.booleans()) else DataType.UINT16
    if dtype is DataType.BOOL:
        value = bool(value)
    (word,) = encode_value(value, dtype, order, bits=bits)
    # Only the field's bits are set, in the uint16 the byte order reads.
    (plain,) = encode_value(decode_value([word], DataType.UINT16, order), DataType.UINT16)
    assert plain & ~(((1 << width) - 1) << first) == 0
    noise = data.draw(st.integers(0, 0xFFFF))
    (others,) = encode_value(noise & ~(((1 << width) - 1) << first), DataType.UINT16, order)
    assert decode_value([word | others], dtype, order, bits=bits) == value


def test_register_codec__bits_vectors_and_refusals():
    assert decode_value([0b0000_0000_0010_1000], DataType.BOOL, bits=(3, 3)) is True
    assert decode_value([0b0000_0000_0010_1000], DataType.UINT16, bits=(3, 5)) == 0b101
    assert decode_value([0x0800], DataType.BOOL, ByteOrder.BADC, bits=(3, 3)) is True
    assert encode_value(True, DataType.BOOL, bits=(15, 15)) == [0x8000]
    with pytest.raises(ModbusValueError, match=r"0\.\.15"):
        decode_value([0], DataType.BOOL, bits=(40, 40))
    with pytest.raises(ModbusValueError, match="does not fit 3 bits"):
        encode_value(8, DataType.UINT16, bits=(3, 5))
    with pytest.raises(ModbusValueError, match="bool or a uint16"):
        decode_value([0, 0], DataType.UINT32, bits=(0, 1))


STRING_VECTORS = [
    # (registers, byte order, text): the first character in the high byte, or in the low byte
    ([0x534E, 0x3132, 0x3334], ByteOrder.ABCD, "SN1234"),
    ([0x4E53, 0x3231, 0x3433], ByteOrder.BADC, "SN1234"),
    ([0x534E, 0x3132, 0x3334], ByteOrder.CDAB, "SN1234"),  # word order: none for text
    ([0x4E53, 0x3231, 0x3433], ByteOrder.DCBA, "SN1234"),
    ([0x5631, 0x2E32, 0x0000, 0x0000], ByteOrder.ABCD, "V1.2"),  # NUL padding
    ([0x5631, 0x2E32, 0x2020, 0x2020], ByteOrder.ABCD, "V1.2"),  # space padding
    ([0x4142, 0x0043, 0x4400], ByteOrder.ABCD, "AB"),  # a C string ends at its NUL
    ([0x41FF, 0x0142], ByteOrder.ABCD, "A\ufffd\ufffdB"),  # not printable ASCII
    ([0x2041, 0x4243], ByteOrder.ABCD, " ABC"),  # leading spaces are the device's
]


@pytest.mark.parametrize(("regs", "order", "text"), STRING_VECTORS)
def test_string_codec__vectors_decode(regs, order, text):
    assert decode_string(regs, order) == text
    assert decode_value(regs, DataType.STRING, order) == text


@given(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.integers(1, 25),
    st.sampled_from(list(ByteOrder)),
)
def test_string_codec__printable_ascii_round_trips(text, registers, order):
    if len(text) > 2 * registers:
        with pytest.raises(ModbusValueError, match="characters"):
            encode_string(text, registers, order)
        return
    regs = encode_value(text, DataType.STRING, order, length=registers)
    assert len(regs) == registers
    assert decode_value(regs, DataType.STRING, order) == text.rstrip(" ")


def test_string_codec__text_that_is_not_printable_ascii_is_refused():
    with pytest.raises(ModbusValueError, match="not printable ASCII"):
        encode_string("Hà Nội", 4)
    with pytest.raises(ModbusValueError, match="not printable ASCII"):
        encode_string("A\0B", 4)
    with pytest.raises(ModbusValueError, match="length"):
        register_count(DataType.STRING)


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


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ({"alg": "rsa", "public": "AAAA"}, "algorithm 'rsa'"),
        ({"alg": "ed25519", "public": "not base64!"}, "base64"),
        ({"alg": "ed25519", "public": base64.b64encode(b"x" * 31).decode()}, "a 31-byte"),
        ({"alg": "ed25519"}, "public"),
        ("ed25519:AAAA", "string indices"),
    ],
)
def test_birth__an_unusable_signing_key_is_a_birth_error_naming_why(key, why):
    from protocols.birth import Birth, BirthError

    birth = Birth("gw-1", "hk", 1, "0.1", 1, 1, (), (), {"signing_key": key})
    with pytest.raises(BirthError, match=why):
        birth.signing_public_key()


def test_birth__a_signing_key_is_its_32_bytes_or_none():
    from protocols.birth import Birth

    public = bytes(range(32))
    key = {"alg": "ed25519", "public": base64.b64encode(public).decode()}
    birth = Birth("gw-1", "hk", 1, "0.1", 1, 1, (), (), {"signing_key": key})
    assert birth.signing_public_key() == public
    assert Birth("gw-1", "hk", 1, "0.1", 1, 1, (), ()).signing_public_key() is None
