"""Write the golden vectors: python tests/golden/make_vectors.py [NAME ...] (then commit).

Each vector is NAME.bin (a batch as it goes on the wire) and NAME.json (what it decodes to:
header fields, and points as [series id, ts_ms, value], a non-finite float as {"float": repr}).
The .bin files are fixed once written: a decoder in any language must decode them to the .json.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

from protocols.batch import BatchHeader, Point, decode_batch, encode_batch

HERE = Path(__file__).parent
T = 1_763_800_000_000


def f32(hexbits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(hexbits))[0]


VECTORS = {
    # Two SDM630 requests polled twice: 230.2 V (0x43663334) and friends, float32 columns.
    "meter_two_polls": (
        BatchHeader("hk-cab-0142", 41, 3, T + 2100),
        [
            Point(1, T, f32("43663334")),
            Point(2, T, f32("4365E666")),
            Point(3, T, f32("42480000")),
            Point(1, T + 1000, f32("43663852")),
            Point(2, T + 1000, f32("4365E148")),
            Point(3, T + 1000, f32("42480A3D")),
            Point(10, T + 4, 31422.5625),
            Point(10, T + 1004, 31422.5664),
        ],
    ),
    # Every column type once, with the awkward values.
    "all_types": (
        BatchHeader("gw-types", 1, 1, T, dropped=12),
        [
            Point(1, T, float("nan")),
            Point(1, T + 1, float("inf")),
            Point(1, T + 2, -0.0),
            Point(2, T, 0.1),
            Point(3, T, -(2**63)),
            Point(3, T + 5, 2**63 - 1),
            Point(4, T, 2**64 - 1),
            Point(5, T, True),
            Point(5, T + 7, False),
            Point(6, T, "bật"),
            Point(6, T + 9, "tắt"),
        ],
    ),
    # Groups whose first sample is not at t0 (requests read 4 and 9 ms after the first one) and
    # whose neighbour has another number of samples (so ts_mode 0): the second word of the delta
    # of delta is a1 - 2*a0 there (docs/batch-format-v1.md §2).
    "late_group": (
        BatchHeader("hk-cab-0142", 42, 3, T + 3100),
        [
            *(Point(1, T + k * 1000, f32("43663334")) for k in range(3)),
            *(Point(10, T + 4 + k * 1000, 31422.5625 + k) for k in range(2)),
            *(Point(11, T + 9 + k * 1001, k) for k in range(3)),
        ],
    ),
    # Nothing but an eviction report.
    "empty_dropped": (BatchHeader("gw-empty", 9, 2, T, dropped=500), []),
}


def as_json(v):
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    return v


def main() -> None:
    only = set(sys.argv[1:])  # names to write; the vectors already committed never change
    for name, (header, points) in VECTORS.items():
        if only and name not in only:
            continue
        payload = encode_batch(header, points)
        batch = decode_batch(payload)
        (HERE / f"{name}.bin").write_bytes(payload)
        doc = {
            "header": {
                "gateway": header.gateway,
                "seq": header.seq,
                "boot": header.boot,
                "created_ms": header.created_ms,
                "dropped": header.dropped,
            },
            "points": [[p.sid, p.ts_ms, as_json(p.value)] for p in batch.points],
        }
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"{name}: {len(payload)} bytes, {len(points)} points")


if __name__ == "__main__":
    main()
