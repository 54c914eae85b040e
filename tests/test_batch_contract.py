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

import pytest
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
