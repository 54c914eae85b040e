"""PMS5003 and SDS011 codecs: the reference's worked frames, and resynchronisation properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import pms5003 as pms
from protocols import sds011 as sds

CAPTURE = bytes.fromhex(
    "42 4d 00 1c 00 00 00 08 00 08 00 00 00 08 00 0800 d2 00 46 00 2d 00 1e 00 00 00 00 97 00 02 c5"
)
SYNTHETIC = bytes.fromhex(
    "42 4D 00 1C 00 0C 00 12 00 17 00 0C 00 12 00 1705 DC 01 C2 00 50 00 0A 00 02 00 01 97 00 03 AD"
)
SDS_FRAME = bytes.fromhex("AA C0 8C 00 94 00 BC F9 D5 AB")


def test_pms__worked_frames_decode():
    f = pms.decode_frame(SYNTHETIC)
    assert (f.pm1_0, f.pm2_5, f.pm10) == (12, 18, 23)
    assert (f.n0_3, f.n0_5, f.n1_0, f.n2_5, f.n5_0, f.n10) == (1500, 450, 80, 10, 2, 1)
    assert (f.version, f.error) == (0x97, 0)
    assert pms.encode_frame(f) == SYNTHETIC
    c = pms.decode_frame(CAPTURE)
    assert (c.pm2_5_cf1, c.pm10_cf1, c.n0_3) == (8, 8, 0xD2)


@pytest.mark.parametrize(
    ("cmd", "wire", "ack"),
    [
        (pms.PASSIVE, "42 4D E1 00 00 01 70", "42 4D 00 04 E1 00 01 74"),
        (pms.ACTIVE, "42 4D E1 00 01 01 71", "42 4D 00 04 E1 01 01 75"),
        (pms.READ, "42 4D E2 00 00 01 71", None),
        (pms.SLEEP, "42 4D E4 00 00 01 73", "42 4D 00 04 E4 00 01 77"),
        (pms.WAKE, "42 4D E4 00 01 01 74", None),
    ],
)
def test_pms__commands_and_acks_match_the_reference(cmd, wire, ack):
    assert pms.command(cmd) == bytes.fromhex(wire)
    if ack:
        assert pms.encode_ack(*cmd) == bytes.fromhex(ack)
        assert pms.decode_frame(bytes.fromhex(ack)) == pms.PmsAck(*cmd)


def test_pms__fed_whole_byte_by_byte_and_with_garbage_around():
    for stream in (SYNTHETIC, b"\x00\x42\x4d\x99" + SYNTHETIC + b"\x42\x4d\x00\x1c\x01"):
        whole = pms.PmsDecoder().feed(stream)
        assert whole == [pms.decode_frame(SYNTHETIC)]
        dec = pms.PmsDecoder()
        one = [f for b in stream for f in dec.feed(bytes([b]))]
        assert one == whole
    corrupt = bytearray(SYNTHETIC)
    corrupt[10] ^= 0xFF
    dec = pms.PmsDecoder()
    assert dec.feed(bytes(corrupt) + SYNTHETIC) == [pms.decode_frame(SYNTHETIC)]
    assert dec.bad_frames >= 1


def test_sds__worked_frame_and_commands():
    r = sds.decode_frame(SDS_FRAME)
    assert (r.pm2_5, r.pm10, r.device_id) == (14.0, 14.8, 0xF9BC)
    assert sds.encode_reading(r) == SDS_FRAME
    table = {
        sds.set_sleep(True): "AA B4 06 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 05 AB",
        sds.set_sleep(False): "AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 06 AB",
        sds.set_reporting_mode(True): "AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB",
        sds.set_reporting_mode(False): "AA B4 02 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 01 AB",
        sds.query_data(): "AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB",
        sds.set_working_period(5): "AA B4 08 01 05 00 00 00 00 00 00 00 00 00 00 FF FF 0C AB",
    }
    for got, want in table.items():
        assert got == bytes.fromhex(want)
        sub, _, dev = sds.decode_command(got)
        assert dev == 0xFFFF and sub == got[2]


def test_sds__fed_byte_by_byte_and_with_garbage():
    stream = b"\xaa\x01\xab" + SDS_FRAME + b"\xaa\xc0\x00"
    dec = sds.SdsDecoder()
    got = [f for b in stream for f in dec.feed(bytes([b]))]
    assert got == [sds.decode_frame(SDS_FRAME)]


# --------------------------------------------------------------------------- properties

pms_frames = st.builds(
    pms.PmsFrame, *[st.integers(0, 0xFFFF)] * 12, st.integers(0, 255), st.integers(0, 255)
)
sds_frames = st.builds(
    sds.SdsReading,
    st.integers(0, 0xFFFF).map(lambda v: v / 10),
    st.integers(0, 0xFFFF).map(lambda v: v / 10),
    st.integers(0, 0xFFFF),
)
CODECS = {
    "pms": (pms.PmsDecoder, pms.encode_frame, pms.decode_frame, pms_frames),
    "sds": (sds.SdsDecoder, sds.encode_reading, sds.decode_frame, sds_frames),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
@given(noise=st.binary(max_size=600), cut=st.integers(1, 64))
def test_decoders__arbitrary_noise_never_raises(codec, noise, cut):
    decoder, *_ = CODECS[codec]
    dec = decoder()
    for i in range(0, len(noise), cut):
        dec.feed(noise[i : i + cut])


@pytest.mark.parametrize("codec", sorted(CODECS))
@given(data=st.data(), cut=st.integers(1, 40))
def test_decoders__every_valid_frame_in_noise_is_recovered_in_order(codec, data, cut):
    decoder, encode, decode, frames_st = CODECS[codec]
    frames = data.draw(st.lists(frames_st, min_size=1, max_size=6))
    stream = b""
    for f in frames:
        stream += data.draw(st.binary(max_size=40)) + encode(f)
    stream += data.draw(st.binary(max_size=40))
    dec = decoder()
    got = []
    for i in range(0, len(stream), cut):
        got += dec.feed(stream[i : i + cut])
    want = [decode(encode(f)) for f in frames]
    it = iter(got)  # noise may add a chance frame; the real ones come out in order
    assert all(any(g == w for g in it) for w in want)


@given(st.binary(max_size=40))
def test_whole_frame_decoders_raise_only_their_error(raw):
    for fn, err in ((pms.decode_frame, pms.PmsError), (sds.decode_frame, sds.SdsError)):
        try:
            fn(raw)
        except err:
            pass


@pytest.mark.parametrize(
    ("decoder", "decode", "frame"),
    [(pms.PmsDecoder, pms.decode_frame, SYNTHETIC), (sds.SdsDecoder, sds.decode_frame, SDS_FRAME)],
)
def test_decoder__clear_forgets_a_partial_frame_so_the_next_is_not_glued_to_it(
    decoder, decode, frame
):
    d = decoder()
    assert d.feed(frame[:7]) == []  # the head of a frame, then the input is flushed
    assert d.clear() == 7
    assert d.feed(frame) == [decode(frame)]
    assert (d.bad_frames, d.skipped_bytes) == (0, 0)
