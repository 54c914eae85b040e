"""The batch contract, docs/batch-format-v1.md (v1.1), against every decoder of it.

Every decoder in tests/batch_decoders.py must decode every golden vector to its .json and refuse
every malformed one with its error code and name (gw, seq); the vectors must pin every rule and
every error code the spec lists; and random batches from the reference encoder (any value, any
t0, int64 extremes, time qualities, split parts) must come back point for point, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.batch import ERRORS, MAX_POINTS, BatchHeader, Point, encode_batch
from tests.batch_decoders import DECODERS, disagreements, expected_point

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
MALFORMED = GOLDEN / "malformed"
SPEC = ROOT / "docs" / "batch-format-v1.md"
VALID = sorted(p.stem for p in GOLDEN.glob("*.bin"))
BAD = sorted(p.stem for p in MALFORMED.glob("*.bin"))
T = 1_763_800_000_000
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("name", VALID)
def test_batch_decoder__golden_vector_decodes_to_its_json(decoder, name):
    [got] = DECODERS[decoder]([(GOLDEN / f"{name}.bin").read_bytes()])
    assert disagreements(_json(GOLDEN / f"{name}.json"), got) == []


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("name", BAD)
def test_batch_decoder__malformed_vector_is_refused_with_its_error_code_and_name(decoder, name):
    [got] = DECODERS[decoder]([(MALFORMED / f"{name}.bin").read_bytes()])
    assert disagreements(_json(MALFORMED / f"{name}.json"), got) == []


def test_batch_spec__every_rule_and_every_error_code_is_pinned_by_a_golden_vector():
    spec = SPEC.read_text(encoding="utf-8")
    rules = re.findall(r"\*\*\[(R\d+)\]\*\*", spec)
    assert rules == [f"R{i}" for i in range(1, len(rules) + 1)], "rules numbered in order, once"
    docs = [_json(p) for p in [*GOLDEN.glob("*.json"), *MALFORMED.glob("*.json")]]
    covered = {r for d in docs for r in d["rules"]}
    assert covered == set(rules), (set(rules) - covered, covered - set(rules))
    table = spec[spec.index("## 6.") : spec.index("## 7.")]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == set(ERRORS)
    assert {d["error"] for d in docs if "error" in d} == set(ERRORS)


def test_batch_spec__a_committed_golden_vector_never_changes():
    """tests/golden/SHA256SUMS lists every .bin; make_vectors.py only ever adds to it."""
    listed = dict(
        reversed(line.split("  ", 1)) for line in (GOLDEN / "SHA256SUMS").read_text().splitlines()
    )
    files = {
        str(p.relative_to(GOLDEN)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in [*GOLDEN.glob("*.bin"), *MALFORMED.glob("*.bin")]
    }
    assert files == listed


def test_batch_decoder__a_group_not_at_t0_decodes_at_its_own_times_in_both_ts_modes():
    """The case behind contract v1.1: multi-sample groups whose first offset is not 0, in
    ts_mode 0 and ts_mode 1, read 37 ms and 41 ms after t0 (a decoder that takes the second word
    for a1 - a0 puts them 37 and 41 ms late)."""
    for decoder in DECODERS.values():
        [doc] = decoder([(GOLDEN / "ts_modes_late_start.bin").read_bytes()])
        times = {}
        for sid, ts, *_ in doc["points"]:
            times.setdefault(int(sid), []).append(int(ts) - T)
        assert times[1] == [37, 1040, 2036, 3041]  # ts_mode 0
        assert times[4] == [41, 1043, 2039, 3046]  # ts_mode 1 on the f32 group
        assert times[7] == [502, 701]  # ts_mode 1 on the f64 group


# --------------------------------------------------------------------------- random batches


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _f64(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


VALUES = st.one_of(
    st.integers(0, 2**32 - 1).map(_f32),  # any float32 word: NaN payloads, subnormals, -0.0
    st.integers(0, 2**64 - 1).map(_f64),  # any float64 word
    st.sampled_from([float("inf"), float("-inf"), -0.0, _f32(0x7FC00000)]),
    st.integers(I64_MIN, 2**64 - 1),
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["", "online", "voltage_l1,current_l2", "Hà Nội", "🚦"]),
)
TIMES = st.one_of(
    st.integers(T - 5000, T + 60_000),
    st.sampled_from([I64_MIN, I64_MAX, 0, -1]),
    st.integers(I64_MIN, I64_MAX),
)


@st.composite
def batches(draw):
    """Series polled together (groups of many rows) and alone, any value types, repeated and
    extreme times, time qualities, any t0, and a header of any part path and dropped count."""
    points: list[Point] = []
    sids = draw(st.lists(st.integers(I64_MIN, I64_MAX), min_size=1, max_size=6, unique=True))
    for _ in range(draw(st.integers(0, 4))):
        members = draw(st.lists(st.sampled_from(sids), min_size=1, max_size=4, unique=True))
        times = draw(st.lists(TIMES, min_size=1, max_size=5))
        kind = draw(VALUES)  # a request reads points of one type
        same = draw(st.booleans())
        for t in times:
            tq = draw(st.sampled_from([0, 0, 1, 2]))
            for sid in members:
                v = kind if same else draw(VALUES)
                points.append(Point(sid, t, v, tq))
    dropped = draw(st.integers(0, 2**63 - 1))
    part = tuple(draw(st.lists(st.sampled_from([1, 2]), max_size=3)))
    why = {"unencodable": dropped // 2} if dropped and draw(st.booleans()) else {}
    header = BatchHeader(
        draw(st.text(min_size=1, max_size=8)),
        draw(st.integers(0, 2**63 - 1)),
        draw(st.integers(1, 2**63 - 1)),
        draw(st.integers(I64_MIN, I64_MAX)),
        dropped,
        part=part,
        dropped_why=why,
    )
    t0 = draw(st.one_of(st.none(), st.integers(I64_MIN, I64_MAX), st.integers(T - 9999, T)))
    return header, points, t0


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batches())
def test_batch_codec__random_batches_decode_identically_in_every_decoder(batch):
    header, points, t0 = batch
    payload = encode_batch(header, points, t0=t0)
    docs = {name: decoder([payload])[0] for name, decoder in DECODERS.items()}
    want_header = {
        "v": 1,
        "gw": header.gateway,
        "seq": header.seq,
        "boot": header.boot,
        "created": header.created_ms,
        "dropped": header.dropped,
        "n": len(points),
        "part": list(header.part),
        "dropped_why": {k: v for k, v in header.dropped_why.items() if v},
    }
    want = sorted(expected_point(*p) for p in points)
    reference = docs["python"]
    for name, doc in docs.items():
        assert "error" not in doc, (name, doc)
        assert doc["header"] == want_header, name
        assert sorted(doc["points"]) == want, name  # every point, bit for bit
        assert doc == reference, name  # and in the same order (§2.6)


def test_batch_codec__the_largest_batch_is_refused_by_the_encoder_one_point_beyond():
    from protocols.batch import BatchTooLarge

    with pytest.raises(BatchTooLarge):
        encode_batch(
            BatchHeader("gw", 1, 1, T), (Point(1, T + i, True) for i in range(MAX_POINTS + 1))
        )


# --------------------------------------------------------------------------- malformed at random


def _nested(arrays: int) -> bytes:
    """``arrays`` msgpack arrays, each the one element of the one before, around a nil."""
    return b"\x91" * arrays + b"\xc0"


def _with_key(payload: bytes, key: bytes, value: bytes) -> bytes:
    """A payload whose header (a fixmap) gets one more key, its value raw msgpack."""
    assert 0x80 <= payload[0] < 0x8F
    return bytes([payload[0] + 1]) + payload[1:] + msgpack.packb(key.decode()) + value


def _body_zstd(payload: bytes, raw: bytes) -> bytes:
    head = msgpack.unpackb(payload, raw=False)
    head["body"] = zstandard.ZstdCompressor().compress(raw)
    return msgpack.packb(head, use_bin_type=True)


BASE_PAYLOAD = encode_batch(BatchHeader("gw-deep", 5, 1, T), [Point(1, T, 1.0), Point(2, T, 2.0)])


@pytest.mark.parametrize("arrays", [31, 32, 33, 100, 500, 999, 1022, 1023, 1024, 5000, 100_000])
def test_batch_decoder__nesting_deeper_than_32_gives_one_error_code_in_every_decoder(
    arrays,
):
    """§0: arrays and maps nest at most 32 deep in the payload and in the body. An unknown header
    key (R9) deeper is not_msgpack, a body deeper is bad_body (not bad_layout): never another
    exception (500 deep once raised RecursionError out of the reference decoder)."""
    header_deep = _with_key(BASE_PAYLOAD, b"zz", _nested(arrays))  # depth 1 + arrays
    raw = msgpack.packb(
        msgpack.unpackb(
            zstandard.ZstdDecompressor().decompress(msgpack.unpackb(BASE_PAYLOAD)["body"])
        )
    )
    entry = b"\x94\x01\x02\x01\x00"  # the layout entry [f32, 2 series, 1 sample, ts_mode 0]
    assert raw.count(entry) == 1
    body_deep = _body_zstd(BASE_PAYLOAD, raw.replace(entry, entry[:-1] + _nested(arrays - 2)))
    map_deep = _with_key(BASE_PAYLOAD, b"zz", b"\x81\xa1k" * arrays + b"\xc0")
    docs = {name: decoder([header_deep, body_deep, map_deep]) for name, decoder in DECODERS.items()}
    named = {"gw": "gw-deep", "seq": 5}
    if arrays < 32:  # depth 32 at most: an unknown header key is ignored, the entry is bad
        want = [docs["python"][0], {"error": "bad_layout", **named}, docs["python"][2]]
        assert "points" in docs["python"][0] and "points" in docs["python"][2]
    else:
        want = [{"error": "not_msgpack", "gw": None, "seq": None}, {"error": "bad_body", **named}]
        want.append(want[0])
    for name, got in docs.items():
        assert got == want, name


def _mutate_bytes(data: st.DataObject, payload: bytes) -> bytes:
    out = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(out)), label="at")
        op = data.draw(st.sampled_from(["set", "delete", "insert", "cut"]), label="op")
        if op == "set" and at < len(out):
            out[at] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del out[at : at + data.draw(st.integers(1, 8))]
        elif op == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at:]
    return bytes(out)


#: Raw msgpack values to plant anywhere in a header or a body: every family, ints at the edges
#: of their widths, timestamps good and bad, reserved ext types, and nesting around depth 32.
MSGPACK_VALUES = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1).map(msgpack.packb),
        st.sampled_from(
            [0, 1, -1, 2, 7, 127, 255, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
        ).map(msgpack.packb),
        st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\xca\x3f\x80\x00\x00", b"\xcb" + bytes(8)]),
        st.text(max_size=6).map(msgpack.packb),
        st.binary(max_size=9).map(lambda b: msgpack.packb(b, use_bin_type=True)),
        st.sampled_from(
            [
                b"\xd6\xff\x00\x00\x00\x01",  # timestamp 32
                b"\xd7\xff" + ((10**9) << 34).to_bytes(8, "big"),  # 10**9 ns: not a timestamp
                b"\xd5\xff\x00\x01",  # a timestamp of 2 bytes: not one
                b"\xd4\xee\x00",  # reserved type -18
                b"\xd4\x05\x00",  # application type 5
                b"\xa2\xc0\xaf",  # a str that is not UTF-8
                b"\xc1",  # never msgpack
            ]
        ),
        st.integers(28, 36).map(_nested),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: bytes([0x90 | len(xs)]) + b"".join(xs)),
        st.lists(st.tuples(kids, kids), max_size=3).map(
            lambda kv: bytes([0x80 | len(kv)]) + b"".join(k + v for k, v in kv)
        ),
    ),
    max_leaves=8,
)


class _Raw(bytes):
    """Bytes that are msgpack already."""


def _ext_raw(code: int, data: bytes) -> _Raw:
    """An ext value as it was on the wire (a reserved type code too)."""
    n = len(data)
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
    if n in fixed:
        head = fixed[n]
    else:
        head = b"\xc7" + bytes([n]) if n < 256 else b"\xc8" + n.to_bytes(2, "big")
    return _Raw(head + code.to_bytes(1, "big", signed=True) + data)


def _unpack_tree(raw: bytes) -> object:
    """msgpack as a tree: arrays as lists, maps as tuples of (key, value) pairs, ext as _Raw."""
    return msgpack.unpackb(raw, raw=False, object_pairs_hook=tuple, ext_hook=_ext_raw)


def _pack_tree(node: object) -> bytes:
    if isinstance(node, _Raw):
        return bytes(node)
    if isinstance(node, list):
        head = (
            b"\xdc" + len(node).to_bytes(2, "big") if len(node) > 15 else bytes([0x90 | len(node)])
        )
        return head + b"".join(_pack_tree(x) for x in node)
    if type(node) is tuple:  # a map, as its (key, value) pairs
        head = (
            b"\xde" + len(node).to_bytes(2, "big") if len(node) > 15 else bytes([0x80 | len(node)])
        )
        return head + b"".join(_pack_tree(k) + _pack_tree(v) for k, v in node)
    return msgpack.packb(node, use_bin_type=True)


def _plant(data: st.DataObject, tree: object) -> object:
    """``tree`` with one node replaced, removed or added (a raw msgpack value from
    MSGPACK_VALUES), somewhere along a random path from the root."""
    if type(tree) in (list, tuple) and tree and data.draw(st.integers(0, 5), label="down"):
        items = list(tree)
        at = data.draw(st.integers(0, len(items) - 1), label="child")
        if type(tree) is tuple:
            k, v = items[at]
            items[at] = (k, _plant(data, v))
            return tuple(items)
        op = data.draw(st.sampled_from(["descend"] * 4 + ["delete", "insert"]), label="edit")
        if op == "descend":
            items[at] = _plant(data, items[at])
        elif op == "delete":
            del items[at]
        else:
            items.insert(at, _Raw(data.draw(MSGPACK_VALUES)))
        return items
    if type(tree) is int and data.draw(st.booleans(), label="another int"):
        return data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, -1, 2**32, 2**63, tree + 1]))
    if type(tree) is bytes and tree and data.draw(st.booleans(), label="other bytes"):
        return _mutate_bytes(data, tree)
    return _Raw(data.draw(MSGPACK_VALUES))


def _mutate_body_bytes(data: st.DataObject, payload: bytes) -> bytes:
    """``payload`` with bytes of its body changed before it is compressed again."""
    head = _unpack_tree(payload)
    raw = _mutate_bytes(data, zstandard.ZstdDecompressor().decompress(dict(head)["body"]))
    new = zstandard.ZstdCompressor().compress(raw)
    return _pack_tree(tuple((k, new if k == "body" else v) for k, v in head))


def _mutate_tree(data: st.DataObject, payload: bytes) -> bytes:
    """The header or the body (then compressed again, with its content size) of ``payload``,
    read as a msgpack tree, with a value planted somewhere in it."""
    head = _unpack_tree(payload)
    body = dict(head)["body"]
    if data.draw(st.booleans(), label="in the body"):
        tree = _unpack_tree(zstandard.ZstdDecompressor().decompress(body))
        new = zstandard.ZstdCompressor().compress(_pack_tree(_plant(data, tree)))
        head = tuple((k, new if k == "body" else v) for k, v in head)
        return _pack_tree(head)
    return _pack_tree(_plant(data, head))


#: Payloads to mutate: the golden batches, valid and malformed, but those of 64 MiB bodies.
SEEDS = [
    p.read_bytes()
    for p in sorted([*GOLDEN.glob("*.bin"), *MALFORMED.glob("*.bin")])
    if p.stem not in ("largest", "body_too_large")
]
#: Batches whose header and body read as msgpack trees: the valid golden batches.
TREES = [p.read_bytes() for p in sorted(GOLDEN.glob("*.bin")) if p.stem != "largest"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_batch_decoder__random_and_mutated_payloads_give_the_same_error_code_in_every_decoder(data):
    """Random bytes, valid and malformed golden batches with bytes of the payload or of the body
    changed, and batches with a msgpack value planted anywhere in their header or body: the
    reference decoder raises only BatchDecodeError (python_decoder lets any other exception
    through), the JavaScript decoder answers every payload with a batch or an error code (its
    CLI exits non-zero on any other exception), and both give the same answer: the same code,
    gw and seq, or the same batch."""
    payloads = []
    for _ in range(24):
        kind = data.draw(st.sampled_from(["random", "bytes", "body", "tree", "tree"]))
        if kind == "random":
            payloads.append(data.draw(st.binary(max_size=80)))
        elif kind == "bytes":
            seed = SEEDS[data.draw(st.integers(0, len(SEEDS) - 1), label="seed")]
            payloads.append(_mutate_bytes(data, seed))
        elif kind == "body":
            seed = TREES[data.draw(st.integers(0, len(TREES) - 1), label="seed")]
            payloads.append(_mutate_body_bytes(data, seed))
        else:
            seed = TREES[data.draw(st.integers(0, len(TREES) - 1), label="seed")]
            payloads.append(_mutate_tree(data, seed))
    docs = {name: decoder(payloads) for name, decoder in DECODERS.items()}
    for i, payload in enumerate(payloads):
        reference = docs["python"][i]
        assert reference.get("error", "not_msgpack") in ERRORS
        for name, got in docs.items():
            assert got[i] == reference, (name, payload.hex())
