"""What a consumer does with the contract (docs/batch-format-v1.md §2.9, §4, §6): malformed
batches named by gateway and seq and not counted missing, `dropped` counted once however many
copies and parts arrive, and `edge consume` output (JSON lines, CSV) that reads back to every
value bit for bit, NaN and infinities included."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import struct
import sys
from pathlib import Path

import aiomqtt
import pytest

from edge.platform.consumer import CSV_COLUMNS, BatchConsumer, reading_csv, reading_json
from protocols.batch import BatchHeader, Point, Reading, encode_batch
from protocols.birth import Birth, SeriesInfo

ROOT = Path(__file__).resolve().parent.parent
MALFORMED = ROOT / "tests" / "golden" / "malformed"
T = 1_763_800_000_000
TOPIC = "city/v1/s/gw-bad/data"


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def f64(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def batch(seq: int, *, part: tuple[int, ...] = (), dropped: int = 0, n: int = 1) -> bytes:
    header = BatchHeader("gw-bad", seq, 5, T, dropped, part=part)
    return encode_batch(header, [Point(1, T + seq * 100 + i, 1.0) for i in range(n)])


# --------------------------------------------------------------------------- malformed batches


@pytest.mark.parametrize(
    "name",
    [
        "version_2",
        "header_no_boot",
        "header_part_3",
        "header_dropped_why_negative",
        "zstd_no_content_size",
        "sids_descending",
        "column_twice",
        "column_unused_f64",
        "zstd_then_more",
    ],
)
def test_consumer__a_malformed_batch_is_named_by_gateway_and_seq_and_not_counted_missing(name):
    report = io.StringIO()
    c = BatchConsumer("mqtt://127.0.0.1:1", report=report)
    assert c.handle(TOPIC, batch(76)) is not None
    assert c.handle(TOPIC, (MALFORMED / f"{name}.bin").read_bytes()) is None  # seq 77
    assert c.handle(TOPIC, batch(78)) is not None
    text = report.getvalue()
    assert f"bad batch on {TOPIC} (gateway gw-bad, batch 77): " in text, text
    assert "missing" not in text, text  # 77 arrived, malformed: not a gap
    tally = c.tallies["gw-bad"]
    assert tally.tracker.missing() == [] and tally.malformed == 1 and c.bad_payloads == 1
    [line] = c.summary()[:1]
    assert "missing: none, malformed: 1," in line, line


def test_consumer__a_malformed_batch_without_a_name_is_only_an_undecodable_message():
    report = io.StringIO()
    c = BatchConsumer("mqtt://127.0.0.1:1", report=report)
    assert c.handle(TOPIC, batch(1)) is not None
    for name in ("not_msgpack", "header_not_map", "header_invalid_utf8"):
        assert c.handle(TOPIC, (MALFORMED / f"{name}.bin").read_bytes()) is None
    assert c.handle(TOPIC, batch(3)) is not None
    text = report.getvalue()
    assert text.count(f"bad batch on {TOPIC}: ") == 3, text
    assert "missing batch 2 (got 3)" in text  # nothing said which batch the junk was
    assert c.bad_payloads == 3 and c.tallies["gw-bad"].malformed == 0


def test_consumer__a_seq_without_a_gateway_or_a_gateway_without_a_seq_is_named_by_what_it_has():
    report = io.StringIO()
    c = BatchConsumer("mqtt://127.0.0.1:1", report=report)
    c.handle(TOPIC, (MALFORMED / "header_seq_negative.bin").read_bytes())
    assert f"bad batch on {TOPIC} (gateway gw-bad): " in report.getvalue()
    assert c.tallies["gw-bad"].malformed == 1 and c.tallies["gw-bad"].tracker.missing() == []


def test_consumer__a_good_copy_after_a_malformed_one_is_delivered_once():
    c = BatchConsumer("mqtt://127.0.0.1:1", report=io.StringIO())
    c.handle(TOPIC, (MALFORMED / "column_twice.bin").read_bytes())  # gw-bad 77, malformed
    assert c.handle(TOPIC, batch(77)) is not None  # a good copy: never delivered before
    assert c.handle(TOPIC, batch(77)) is None  # a repeat of it
    c.handle(TOPIC, (MALFORMED / "column_twice.bin").read_bytes())  # late junk: no re-delivery
    assert c.handle(TOPIC, batch(77)) is None
    assert c.tallies["gw-bad"].readings == 1


def test_consumer__dropped_is_counted_once_however_many_copies_and_parts_arrive():
    """Part [1] carries the whole batch's dropped (§4); repeats of it, the whole batch after its
    parts, and parts after the whole, even when duplicates are kept, add nothing."""
    c = BatchConsumer("mqtt://127.0.0.1:1", report=io.StringIO(), keep_duplicates=True)
    sent = [
        batch(5, part=(1,), dropped=7, n=2),
        batch(5, part=(1,), dropped=7, n=2),  # re-sent after a lost PUBACK
        batch(5, part=(2,), n=2),
        batch(5, dropped=7, n=4),  # the whole, delivered before the split after all
        batch(6, dropped=3),
        batch(6, dropped=3),
        batch(6, part=(1,), dropped=3),
    ]
    for payload in sent:
        c.handle(TOPIC, payload)
    assert c.tallies["gw-bad"].dropped_reported == 7 + 3


# --------------------------------------------------------------------------- output


SPECIAL = [
    f32(0x7FC00000),  # quiet NaN of a float32 register
    f32(0xFFC12345),  # negative NaN with a payload
    f64(0x7FF8000000000001),  # float64 NaN whose payload a float32 cannot hold
    float("inf"),
    float("-inf"),
    f64(0x7FEFFFFFFFFFFFFF),  # the largest finite double: a number
    -0.0,
    5e-324,
    f32(0x00000001),
    0.1,
    230.0,
    2**64 - 1,
    -(2**63),
    True,
    "NaN",  # str readings whose text is a float's name
    "Infinity",
    "",
]


def read_json_value(doc: dict) -> object:
    """The documented rule (§2.9): a line with bits is a float with those IEEE bits."""
    bits = doc.get("bits")
    if bits is None:
        return doc["value"]
    return f32(int(bits, 16)) if len(bits) == 8 else f64(int(bits, 16))


def read_csv_value(row: dict) -> str | float:
    if row["bits"]:
        bits = row["bits"]
        return f32(int(bits, 16)) if len(bits) == 8 else f64(int(bits, 16))
    return row["value"]


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


def test_consumer__json_lines_read_back_to_every_value_bit_for_bit():
    h = BatchHeader("gw", 3, 1, T)
    lines = [json.loads(reading_json(h, Reading("m", "p", T, v, 1))) for v in SPECIAL]
    for value, doc in zip(SPECIAL, lines, strict=True):
        assert same(read_json_value(doc), value), (value, doc)
        assert doc["time"] == "corrected"
    names = [d["value"] for d in lines[:5]]
    assert names == ["NaN", "NaN", "NaN", "Infinity", "-Infinity"]
    assert [d["bits"] for d in lines[:5]] == [
        "7fc00000",
        "ffc12345",
        "7ff8000000000001",
        "7f800000",
        "ff800000",
    ]
    assert "bits" not in lines[-2] and "bits" not in lines[-3]  # the strings stay strings


def test_consumer__csv_reads_back_nan_and_infinities_bit_for_bit_and_tells_them_from_text():
    h = BatchHeader("gw", 3, 1, T)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for v in SPECIAL:
        w.writerow(reading_csv(h, Reading("m", "p", T, v, 2)))
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    for value, row in zip(SPECIAL, rows, strict=True):
        assert row["time"] == "uncertain"
        if isinstance(value, float):
            got = read_csv_value(row)
            got = got if isinstance(got, float) else float(got)
            assert same(got, value), (value, row)
        else:
            assert row["bits"] == "" and row["value"] == str(value)
    assert [r["value"] for r in rows[:5]] == ["NaN", "NaN", "NaN", "Infinity", "-Infinity"]


@pytest.mark.system
async def test_consume_cli__json_lines_and_csv_keep_nan_and_infinities_distinct(mosquitto):
    """`edge consume --format jsonl` and `--format csv` on a real broker: NaN (with payload),
    +inf, -inf and the strings "NaN", "Infinity" all come out distinct and read back exact."""
    values = SPECIAL
    procs = {}
    for fmt in ("jsonl", "csv"):
        procs[fmt] = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "edge", "consume", "--broker", mosquitto.url),
            *("--duration", "6", "--client-id", f"out-{fmt}", "--format", fmt),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
    series = tuple(SeriesInfo(i + 1, "m", f"p{i}", "", "float32") for i in range(len(values)))
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await asyncio.sleep(2.5)  # both subscribed
        birth = Birth("gw-x", "s", 1, "test", 0, 1, (), series)
        await client.publish("city/v1/s/gw-x/birth", birth.encode(), qos=1, retain=True)
        points = [Point(i + 1, T, v) for i, v in enumerate(values)]
        payload = encode_batch(BatchHeader("gw-x", 1, 1, T), points)
        await client.publish("city/v1/s/gw-x/data", payload, qos=1)
    outs = {}
    for fmt, proc in procs.items():
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        outs[fmt] = out.decode()
    by_point = {d["point"]: d for d in map(json.loads, outs["jsonl"].splitlines())}
    rows = {r["point"]: r for r in csv.DictReader(io.StringIO(outs["csv"]))}
    assert len(by_point) == len(rows) == len(values)
    for i, value in enumerate(values):
        assert same(read_json_value(by_point[f"p{i}"]), value), (value, by_point[f"p{i}"])
        if isinstance(value, float) and rows[f"p{i}"]["bits"]:
            assert same(read_csv_value(rows[f"p{i}"]), value)
        elif isinstance(value, float):
            assert same(float(rows[f"p{i}"]["value"]), value)
        else:
            assert rows[f"p{i}"]["bits"] == ""


def test_consumer__a_batch_or_birth_naming_another_gateway_than_its_topic_is_not_trusted():
    """As in the store (tests/test_pgstore.py): gateway B's topic carries B's messages only."""
    report = io.StringIO()
    c = BatchConsumer("mqtt://127.0.0.1:1", report=report)
    other = TOPIC.replace("/gw-bad/", "/gw-other/")
    assert c.handle(other, batch(5)) is None
    birth = Birth("gw-bad", "hk", 5, "0.1", T, 1, (), (SeriesInfo(1, "m", "p", "V", "float32"),))
    c.handle(other.replace("/data", "/birth"), birth.encode())
    assert "gw-bad" not in c.tallies  # no batch counted, no dictionary taken
    text = report.getvalue()
    assert f"bad batch 5 on {other}: it names gateway gw-bad, not the topic's" in text
    assert "bad birth on city/v1/" in text and c.bad_payloads == 2
    assert c.handle(TOPIC, batch(5)) is not None  # on its own topic: delivered
