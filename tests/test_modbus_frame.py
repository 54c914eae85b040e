"""Modbus frames: worked frames from the reference, and properties of the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.modbus_frame import (
    MAX_READ_BITS,
    MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
    ExceptionCode,
    FrameError,
    Function,
    LineTiming,
    MbapStream,
    Request,
    RequestError,
    crc16,
    decode_request,
    decode_response,
    decode_rtu,
    encode_exception,
    encode_mbap,
    encode_request,
    encode_response,
    encode_rtu,
    read_frame_sizes,
    rtu_request_length,
    rtu_response_length,
)

# device-protocols.md §1.5 (Eastron worked frames, CRCs recomputed there)
WORKED = [
    (Request(Function.READ_INPUT_REGISTERS, 0x0000, 2), "01 04 00 00 00 02 71 CB"),
    (Request(Function.READ_INPUT_REGISTERS, 0x0048, 2), "01 04 00 48 00 02 F1 DD"),
    (Request(Function.READ_INPUT_REGISTERS, 0x000C, 2), "01 04 00 0C 00 02 B1 C8"),
    (Request(Function.READ_INPUT_REGISTERS, 0x0046, 2), "01 04 00 46 00 02 90 1E"),
    (Request(Function.READ_INPUT_REGISTERS, 0x0156, 2), "01 04 01 56 00 02 90 27"),
    (Request(Function.READ_INPUT_REGISTERS, 0x0000, 80), "01 04 00 00 00 50 F0 36"),
    (
        Request(Function.WRITE_MULTIPLE_REGISTERS, 0x001C, 2, (0x4000, 0x0000)),
        "01 10 00 1C 00 02 04 40 00 00 00 E7 36",
    ),
    (
        Request(Function.WRITE_MULTIPLE_REGISTERS, 0x0014, 2, (0x4000, 0x0000)),
        "01 10 00 14 00 02 04 40 00 00 00 E6 90",
    ),
]


@pytest.mark.parametrize(("req", "wire"), WORKED)
def test_rtu__worked_request_frames_match_the_reference(req, wire):
    frame = encode_rtu(1, encode_request(req))
    assert frame == bytes.fromhex(wire)
    assert rtu_request_length(frame) == len(frame)
    assert decode_request(decode_rtu(frame)[1]) == req


def test_rtu__worked_reply_230_2_volts():
    req = Request(Function.READ_INPUT_REGISTERS, 0, 2)
    frame = bytes.fromhex("01 04 04 43 66 33 34 1B 38")
    assert encode_rtu(1, encode_response(req, [0x4366, 0x3334])) == frame
    assert rtu_response_length(frame[:3], req) == 9
    unit, pdu = decode_rtu(frame)
    assert unit == 1 and decode_response(req, pdu).values == (0x4366, 0x3334)


def test_rtu__exception_reply_is_five_bytes_and_decodes():
    req = Request(Function.READ_INPUT_REGISTERS, 0x1000, 2)
    frame = encode_rtu(1, encode_exception(4, ExceptionCode.ILLEGAL_DATA_ADDRESS))
    assert len(frame) == 5 and frame[:3] == bytes([1, 0x84, 2])
    assert rtu_response_length(frame[:2], req) == 5
    assert decode_response(req, decode_rtu(frame)[1]).exception == 2


def test_crc16__known_value():
    assert crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value


def test_rtu__a_single_corrupted_byte_is_always_caught():
    frame = bytes.fromhex("01 04 04 43 66 33 34 1B 38")
    for i in range(len(frame)):
        for flip in (1, 0x80, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= flip
            with pytest.raises(FrameError):
                decode_rtu(bytes(bad))


def test_response__mismatches_are_frame_errors():
    req = Request(Function.READ_HOLDING_REGISTERS, 10, 2)
    with pytest.raises(FrameError, match="function 4"):
        decode_response(req, bytes([4, 4, 0, 1, 0, 2]))
    with pytest.raises(FrameError, match="byte count"):
        decode_response(req, bytes([3, 2, 0, 1]))
    write = Request(Function.WRITE_SINGLE_COIL, 7, 1, (True,))
    with pytest.raises(FrameError, match="echo"):
        decode_response(write, bytes([5, 0, 7, 0, 0]))


def test_request__servers_get_the_exception_code_to_answer():
    with pytest.raises(RequestError) as info:
        decode_request(bytes([0x2B, 0x0E, 1, 0]))
    assert info.value.code is ExceptionCode.ILLEGAL_FUNCTION
    with pytest.raises(RequestError) as info:
        decode_request(bytes([3, 0, 0, 0, 126]))
    assert info.value.code is ExceptionCode.ILLEGAL_DATA_VALUE
    with pytest.raises(RequestError) as info:
        decode_request(bytes([5, 0, 0, 0x12, 0x34]))  # coil value must be 0000 or FF00
    assert info.value.code is ExceptionCode.ILLEGAL_DATA_VALUE


# --------------------------------------------------------------------------- properties

addresses = st.integers(0, 0xFFFF)


@st.composite
def requests(draw):
    f = draw(st.sampled_from(list(Function)))
    if f in (1, 2, 3, 4):
        limit = MAX_READ_BITS if f in (1, 2) else 125
        n = draw(st.integers(1, limit))
        return Request(f, draw(st.integers(0, 0x10000 - n)), n)
    if f == 5:
        return Request(f, draw(addresses), 1, (draw(st.booleans()),))
    if f == 6:
        return Request(f, draw(addresses), 1, (draw(st.integers(0, 0xFFFF)),))
    if f == 15:
        vals = tuple(draw(st.lists(st.booleans(), min_size=1, max_size=MAX_WRITE_BITS)))
    else:
        vals = tuple(
            draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=MAX_WRITE_REGISTERS))
        )
    return Request(f, draw(st.integers(0, 0x10000 - len(vals))), len(vals), vals)


def response_values(draw, req):
    if req.function in (1, 2):
        return draw(st.lists(st.booleans(), min_size=req.count, max_size=req.count))
    if req.function in (3, 4):
        return draw(st.lists(st.integers(0, 0xFFFF), min_size=req.count, max_size=req.count))
    return []


@given(requests(), st.integers(1, 247))
def test_request__round_trips_and_rtu_length_is_known_from_the_header(req, unit):
    frame = encode_rtu(unit, encode_request(req))
    for cut in range(len(frame) + 1):
        n = rtu_request_length(frame[:cut])
        assert n is None or n == len(frame)
    assert decode_rtu(frame) == (unit, encode_request(req))
    assert decode_request(decode_rtu(frame)[1]) == req


@given(requests(), st.data())
def test_response__round_trips_and_rtu_length_is_known_from_the_header(req, data):
    values = response_values(data.draw, req)
    pdu = encode_response(req, values)
    frame = encode_rtu(9, pdu)
    for cut in range(len(frame) + 1):
        n = rtu_response_length(frame[:cut], req)
        assert n is None or n == len(frame)
    got = decode_response(req, decode_rtu(frame)[1])
    assert got.exception is None and list(got.values) == [
        bool(v) if req.is_bits else v for v in values
    ]


@given(st.binary(max_size=300))
def test_request__garbage_raises_only_frame_errors(pdu):
    try:
        decode_request(pdu)
    except FrameError:
        pass


@given(requests(), st.binary(max_size=300))
def test_response__garbage_raises_only_frame_errors(req, pdu):
    try:
        decode_response(req, pdu)
    except FrameError:
        pass


@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255), st.binary(min_size=1, max_size=253)),
        max_size=8,
    ),
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_mbap__any_chunking_yields_the_frames_in_order(frames, cuts):
    stream = b"".join(encode_mbap(t, u, p) for t, u, p in frames)
    parser, got, at, i = MbapStream(), [], 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += parser.feed(stream[at : at + step])
        at += step
        i += 1
    assert got == frames


def test_mbap__a_header_that_is_not_modbus_is_refused():
    with pytest.raises(FrameError, match="protocol 7"):
        MbapStream().feed(bytes([0, 1, 0, 7, 0, 6, 1, 3, 0, 0, 0, 1]))


def test_line_timing__matches_the_reference_tables():
    # device-protocols.md §6.1 (11-bit characters, 10-bit in brackets) and §6.4
    assert LineTiming(9600, "E").char_s == pytest.approx(1.146e-3, abs=1e-6)
    assert LineTiming(9600, "N").char_s == pytest.approx(1.042e-3, abs=1e-6)
    assert LineTiming(9600, "N", 2).t35_s == pytest.approx(4.01e-3, abs=1e-5)
    assert LineTiming(115200, "E").t35_s == 0.00175
    line = LineTiming(9600, "E")
    req, resp = read_frame_sizes(4, 80)
    assert (req, resp) == (8, 165)
    assert line.transaction_s(req, resp, 0.020) == pytest.approx(0.226, abs=0.001)
    assert read_frame_sizes(1, 4) == (8, 6)
    with pytest.raises(ValueError):
        LineTiming(9600, "X")


def test_request__a_read_past_the_last_address_names_the_address_not_the_count():
    """A float32 at 65535 was refused as "count 2 out of range 1..125": a wrong reason."""
    with pytest.raises(ValueError, match="from address 65535 runs past the last address 65535"):
        encode_request(Request(Function.READ_INPUT_REGISTERS, 65535, 2))
    with pytest.raises(ValueError, match=r"count 126 out of range 1\.\.125"):
        encode_request(Request(Function.READ_INPUT_REGISTERS, 0, 126))
    assert encode_request(Request(Function.READ_INPUT_REGISTERS, 65534, 2))
