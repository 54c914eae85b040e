"""The meter link codec (protocols/meterlink.py): worked vectors from docs/meter-link-v1.md,
whole / byte at a time / in garbage, every message round trip, and fuzzing that never crashes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols.meterlink import (
    MAX_PAYLOAD,
    CmdNak,
    Enable,
    Frame,
    FrameDecoder,
    FrameError,
    Idle,
    MeterStatus,
    Method,
    MsgType,
    Nak,
    NakReason,
    Occupancy,
    PayloadError,
    Payment,
    Receipt,
    SessionEnd,
    SessionStart,
    Tariff,
    TariffBlock,
    TimeSync,
    canonical_bytes,
    decode_message,
    encode_frame,
    encode_message,
)

# docs/meter-link-v1.md §6, worked frames.
POLL_ADDR_3_ACK_41 = bytes.fromhex("a5 10 03 01 00000029 0000 2a48".replace(" ", ""))
PAYMENT_FRAME = bytes.fromhex(
    "a5 11 03 12 0000002a 002b"
    "96 a9 532d30332d30303031 a9 542d30332d30303031 cd 7530 03"
    "cf 0000019351ba8ac0 cf 0000019351ba8ea8"
    "c3cf".replace(" ", "")
)
PAYMENT = Payment(
    "S-03-0001", "T-03-0001", 30_000, Method.BANK_QR, 1_732_243_000_000, 1_732_243_001_000
)


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/MODBUS bit by bit, independent of the codec's table."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_vectors__poll_and_payment_encode_to_the_documented_bytes():
    for frame in (POLL_ADDR_3_ACK_41, PAYMENT_FRAME):
        assert crc16_bitwise(frame[:-2]).to_bytes(2, "little") == frame[-2:]
    assert encode_frame(Frame(3, MsgType.POLL, 41)) == POLL_ADDR_3_ACK_41
    payload = encode_message(PAYMENT)
    assert encode_frame(Frame(3, MsgType.PAYMENT, 42, payload, from_meter=True)) == PAYMENT_FRAME


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_vectors__decode_whole_or_in_pieces(chunk):
    stream = POLL_ADDR_3_ACK_41 + PAYMENT_FRAME
    d = FrameDecoder()
    if chunk is None:
        frames = d.feed(stream)
    else:
        frames = [f for i in range(0, len(stream), chunk) for f in d.feed(stream[i : i + chunk])]
    assert [(f.address, f.type, f.seq, f.from_meter) for f in frames] == [
        (3, MsgType.POLL, 41, False),
        (3, MsgType.PAYMENT, 42, True),
    ]
    assert decode_message(frames[1].type, frames[1].payload) == PAYMENT
    assert d.pending == 0 and d.garbage_bytes == 0 and d.crc_errors == 0


def test_vectors__garbage_and_a_damaged_frame_are_counted_and_skipped():
    damaged = bytearray(PAYMENT_FRAME)
    damaged[20] ^= 0x40
    d = FrameDecoder()
    frames = d.feed(b"\x00\xff\xa5junk" + bytes(damaged) + POLL_ADDR_3_ACK_41 + b"\x00" * 1100)
    assert [f.type for f in frames] == [MsgType.POLL]
    assert d.crc_errors == 1 and d.garbage_bytes > 0


def test_vectors__oversize_length_is_refused_without_waiting_for_it():
    head = bytes.fromhex("a5 11 03 12 00000001".replace(" ", "")) + (MAX_PAYLOAD + 1).to_bytes(2)
    d = FrameDecoder()
    assert d.feed(head + POLL_ADDR_3_ACK_41) == [Frame(3, MsgType.POLL, 41)]
    assert d.oversize == 1


def test_encode__refuses_what_cannot_be_framed():
    with pytest.raises(FrameError):
        encode_frame(Frame(3, MsgType.PAYMENT, 2**32))
    with pytest.raises(FrameError):
        encode_frame(Frame(3, MsgType.PAYMENT, 1, b"x" * (MAX_PAYLOAD + 1)))


MESSAGES = [
    SessionStart("S1", "HK-LTK-01", "B07", "29A-123.45", "car", "rfid", 1_732_243_000_000),
    SessionStart("S2", "HK-PD-02", None, "29B1-678.90", "motorbike", "qr", 1),
    SessionEnd("S1", 1_732_250_000_000),
    PAYMENT,
    Receipt(
        "T-03-0001", "receipt", "01BLP0-001", "AB-24E", 17, 5, "M1-24-ABCD", "0101234567", 30000, 0
    ),
    MeterStatus(87, 40, False, True, 123),
    Occupancy("B07", True, 99),
    Idle(1_732_243_000_000),
    TimeSync(1_732_243_000_000),
    Enable(False),
    Tariff(3, (TariffBlock(0, 360, 60, 30_000, 0), TariffBlock(1, 1080, 720, 8_000, 1))),
    Nak(NakReason.BUSY),
    CmdNak(NakReason.BAD_COMMAND),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages__round_trip(msg):
    assert decode_message(msg.TYPE, encode_message(msg)) == msg


@pytest.mark.parametrize(
    ("mtype", "payload", "why"),
    [
        (MsgType.PAYMENT, b"\xc1", "not msgpack"),
        (MsgType.PAYMENT, msgpack.packb({"a": 1}), "not an array"),
        (MsgType.PAYMENT, msgpack.packb(["S", "T", 1, 3, 1]), "5 fields"),
        (MsgType.PAYMENT, msgpack.packb(["S", "T", -1, 3, 1, 1]), "amount_vnd"),
        (MsgType.PAYMENT, msgpack.packb(["S", "T", True, 3, 1, 1]), "amount_vnd"),
        (MsgType.PAYMENT, msgpack.packb(["S", "T" * 65, 1, 3, 1, 1]), "transaction_id"),
        (MsgType.STATUS, msgpack.packb([101, 1, False, False, 1]), "battery_pct"),
        (MsgType.TARIFF, msgpack.packb([1, []]), "blocks"),
        (MsgType.POLL, b"", "carries no message"),
        (MsgType.PAYMENT, msgpack.packb(["S", "T", 1, 3, 1, 1]) + b"\x00", "not msgpack"),
    ],
)
def test_messages__malformed_payloads_name_the_problem(mtype, payload, why):
    with pytest.raises(PayloadError, match=why):
        decode_message(mtype, payload)


def test_canonical_bytes__bind_meter_seq_type_and_payload():
    raw = encode_message(PAYMENT)
    base = canonical_bytes("HK-01", 42, MsgType.PAYMENT, raw)
    assert base.startswith(b"hanoi-meter-link/1\x05HK-01\x00\x00\x00\x2a\x12")
    assert base.endswith(raw)
    for other in (
        canonical_bytes("HK-02", 42, MsgType.PAYMENT, raw),
        canonical_bytes("HK-01", 43, MsgType.PAYMENT, raw),
        canonical_bytes("HK-01", 42, MsgType.RECEIPT, raw),
        canonical_bytes("HK-0", 142, MsgType.PAYMENT, raw),  # no ambiguity at the boundary
    ):
        assert other != base


frames_st = st.builds(
    Frame,
    address=st.integers(0, 255),
    type=st.integers(0, 255),
    seq=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=64),
    from_meter=st.booleans(),
)


@given(st.lists(frames_st, max_size=5), st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz__frames_survive_garbage_between_them(frames, junk):
    stream = b""
    for i, f in enumerate(frames):
        stream += (junk[i] if i < len(junk) else b"") + encode_frame(f)
    stream += b"\x00" * (MAX_PAYLOAD + 16)  # whatever a false sync claimed gets completed
    got = FrameDecoder().feed(stream)
    # A junk stretch could itself hold a valid frame only by a 1-in-65536 CRC accident.
    assume(len(got) == len(frames))
    assert got == frames


@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz__random_bytes_never_crash_the_decoder(data, chunk):
    d = FrameDecoder()
    for i in range(0, len(data), chunk):
        for f in d.feed(data[i : i + chunk]):
            assert len(f.payload) <= MAX_PAYLOAD
    assert d.pending <= len(data)


@given(st.integers(0, 255), st.binary(max_size=300))
def test_fuzz__random_payloads_raise_only_payload_error(mtype, payload):
    try:
        decode_message(mtype, payload)
    except PayloadError:
        pass


@given(
    st.sampled_from([m.TYPE for m in MESSAGES]),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=80),
        lambda inner: st.lists(inner, max_size=8),
        max_leaves=30,
    ),
)
def test_fuzz__well_formed_msgpack_of_the_wrong_shape_is_refused_cleanly(mtype, value):
    try:
        payload = msgpack.packb(value)
    except (OverflowError, ValueError):
        return
    try:
        decode_message(mtype, payload)
    except PayloadError:
        pass
