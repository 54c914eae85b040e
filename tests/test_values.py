"""Values that are not ordinary numbers (issue 15, case 1).

A meter that serves NaN, ±inf, -0.0 or a subnormal must reach the consumer bit for bit, through
the whole path: buffer -> seal -> batch bytes -> decode. The kind: every value a device profile,
a serial sensor or a processing aggregate can produce survives that path (the property test
below), and a reading no batch can carry (a NULL left by an older gateway version, a value of a
type the format has no column for) is set aside, counted and reported in ``dropped``: it never
blocks the readings behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import struct
import tempfile
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge.agent.gateway import Gateway
from edge.agent.processing import Processor, aggregate
from edge.config import parse_config
from edge.fieldbus.uart_sensor import PROTOCOLS
from edge.plan import compile_plan
from edge.platform.consumer import BatchConsumer, float_bits, reading_json
from edge.profiles import get_profile, modbus_profiles
from edge.store.buffer import Buffer
from edge.uplink.broker import free_port
from protocols import pms5003 as pms
from protocols import sds011 as sds
from protocols.batch import (
    BatchDecodeError,
    BatchHeader,
    Point,
    Reading,
    decode_batch,
    encode_batch,
)
from protocols.birth import Birth, SeriesInfo
from protocols.modbus import ByteOrder, DataType, ModbusValueError, decode_value, register_count
from simulators import EnergyMeterModel, ProfileSimUnit, serve_modbus_tcp
from tests.conftest import gateway_yaml, wait_until

T = 1_763_800_000_000
BIG = 512 * 1024 * 1024


def f32(hexbits: str) -> float:
    """The float a gateway holds for a float32 register pair (big-endian word order)."""
    return struct.unpack(">f", bytes.fromhex(hexbits))[0]


def f64(hexbits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(hexbits))[0]


def ident(v: object) -> tuple[str, object]:
    """A value's identity, bit for bit: its type and, for a float, its 64 bits (NaN != NaN, and
    0.0 == -0.0, so floats are never compared by value here)."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, float):
        return ("float", struct.pack(">d", v).hex())
    if isinstance(v, int):
        return ("int", v)
    return (type(v).__name__, v)


def key(r: Reading) -> tuple:
    return (r.device, r.point, r.ts_ms, r.tq, ident(r.value))


# --------------------------------------------------------------------------- what profiles produce

#: Float32 bit patterns a meter may serve: quiet NaN, negative NaN with payload, signalling NaN,
#: ±inf, ±0, the smallest and largest subnormals, the largest finite float32.
SPECIAL32 = [
    0x7FC00000, 0xFFC12345, 0x7F800001, 0x7FA00001, 0x7F800000, 0xFF800000, 0x00000000,
    0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x43663334,
]  # fmt: skip
#: 64-bit patterns: float64 specials (NaN payloads a float32 cannot hold, signalling NaN,
#: subnormals) and the integer extremes of int64 / uint64.
SPECIAL64 = [
    0x7FF8000000000000, 0x7FF0000000000001, 0xFFF8000000000001, 0x7FF0000000000000,
    0xFFF0000000000000, 0x8000000000000000, 0x0000000000000001, 0x000FFFFFFFFFFFFF,
    0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x0000000000000000,
]  # fmt: skip
SPECIAL16 = [0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80]
SCALES = sorted(
    {1.0, 0.1, 0.01, 0.001} | {p.scale for pr in modbus_profiles().values() for p in pr.points}
)


@st.composite
def register_values(draw) -> float | int | bool | str:
    """Any data type of protocols/modbus.py, any byte order, any scale a profile uses, with or
    without an offset, a field of bits, from any register contents (the special patterns drawn
    often); a string from any registers (bytes that are not ASCII included)."""
    dtype = draw(st.sampled_from(list(DataType)))
    order = draw(st.sampled_from(list(ByteOrder)))
    if dtype is DataType.STRING:
        words = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8))
        return decode_value(words, dtype, order)
    if dtype is DataType.BOOL:
        if draw(st.booleans()):
            return decode_value([draw(st.integers(0, 1))], dtype)
        at = draw(st.integers(0, 15))
        return decode_value([draw(st.integers(0, 0xFFFF))], dtype, order, bits=(at, at))
    if dtype is DataType.UINT16 and draw(st.booleans()):
        first = draw(st.integers(0, 15))
        bits = (first, draw(st.integers(first, 15)))
        return decode_value([draw(st.integers(0, 0xFFFF))], dtype, order, bits=bits)
    n = register_count(dtype)
    width = 16 * n
    specials = {16: SPECIAL16, 32: SPECIAL32, 64: SPECIAL64}[width]
    bits = draw(st.one_of(st.sampled_from(specials), st.integers(0, 2**width - 1)))
    words = [(bits >> (16 * (n - 1 - i))) & 0xFFFF for i in range(n)]
    return decode_value(
        words,
        dtype,
        order,
        scale=draw(st.sampled_from(SCALES)),
        offset=draw(st.sampled_from([0.0, 0.0, -40.0, 273.15])),
    )


_PLANS = [
    (name, req) for name, prof in modbus_profiles().items() for req in compile_plan(prof).requests
]


@st.composite
def profile_readings(draw) -> list[tuple[str, str, object]]:
    """One read request of a real profile, its registers anything a device could answer, decoded
    by the gateway's own plan."""
    name, req = draw(st.sampled_from(_PLANS))
    if req.register_type.is_bits:
        words = draw(st.lists(st.integers(0, 1), min_size=req.count, max_size=req.count))
    else:
        word = st.one_of(st.sampled_from(SPECIAL16), st.integers(0, 0xFFFF))
        words = draw(st.lists(word, min_size=req.count, max_size=req.count))
    try:
        return [(name, p.name, v) for p, v in req.decode(words)]
    except ModbusValueError:  # a SunSpec scale factor out of range: the point is bad, never sent
        assume(False)
        raise


@st.composite
def sensor_readings(draw) -> list[tuple[str, str, object]]:
    """A PMS5003 or SDS011 frame with any field values, decoded as the gateway does."""
    if draw(st.booleans()):
        fields = draw(st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12))
        frame = pms.decode_frame(pms.encode_frame(pms.PmsFrame(*fields, 0x97, 0)))
        values = PROTOCOLS["pms5003"]().values(frame)
        return [("pms5003", k, v) for k, v in values.items()]
    pm25, pm10 = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    raw = sds.encode_reading(sds.SdsReading(pm25 / 10, pm10 / 10, 0x1234))
    values = PROTOCOLS["sds011"]().values(sds.decode_frame(raw))
    return [("sds011", k, v) for k, v in values.items()]


any_float32 = st.one_of(st.sampled_from(SPECIAL32), st.integers(0, 2**32 - 1)).map(
    lambda b: f32(f"{b:08x}")
)
any_float64 = st.one_of(st.sampled_from(SPECIAL64), st.integers(0, 2**64 - 1)).map(
    lambda b: f64(f"{b:016x}")
)
window_value = st.one_of(any_float32, st.floats(), st.integers(-(2**31), 2**32))

#: One value as the gateway may hand it to the buffer: from registers, from a real profile's
#: plan, from a serial sensor, a window aggregate, a health string, the integer extremes.
VALUES = st.one_of(
    register_values(),
    profile_readings().map(lambda rs: rs[0][2]),
    sensor_readings().map(lambda rs: rs[0][2]),
    any_float32,
    any_float64,
    st.tuples(
        st.lists(window_value, min_size=1, max_size=6),
        st.sampled_from(["mean", "min", "max", "first", "last", "count", "p50", "p95", "p5"]),
    ).map(lambda a: aggregate(*a)),
    st.sampled_from([-(2**63), 2**63 - 1, 2**63, 2**64 - 1, 0, -1, True, False]),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.sampled_from(["online", "degraded", "offline", "", "all", "voltage_l1,current_l1"]),
    st.text(max_size=12),
)

#: Values no batch can carry (a profile bug, or what an older version left in the file).
UNENCODABLE = st.sampled_from(
    [None, b"\x00raw", 2**64, -(2**63) - 1, "\ud800", 1 + 2j, [1.0], {"v": 1}]
)


def drain(buf: Buffer, max_readings: int) -> tuple[list[Reading], list[BatchHeader]]:
    """Seal until nothing is left, as the forwarder does; decode every batch from its bytes and
    name its series as a consumer would (through the buffer's series table, i.e. the birth)."""
    names = {sid: (d, p) for sid, d, p in buf.series()}
    got: list[Reading] = []
    headers: list[BatchHeader] = []
    while (batch := buf.seal("gw", max_readings)) is not None:
        decoded = decode_batch(batch.payload)
        headers.append(decoded.header)
        got += [Reading(*names[p.sid], p.ts_ms, p.value, p.tq) for p in decoded.points]
        assert buf.ack(batch.seq)
    return got, headers


# --------------------------------------------------------------------------- the property


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_buffer__every_value_a_profile_decodes_reaches_the_consumer_bit_for_bit(data):
    values = data.draw(st.lists(VALUES, min_size=1, max_size=40), label="values")
    bad = data.draw(st.lists(UNENCODABLE, max_size=4), label="unencodable")
    rows = [(v, True) for v in values]
    for b in bad:  # anywhere: first, in the middle, last
        rows.insert(data.draw(st.integers(0, len(rows))), (b, False))
    readings = [
        Reading(
            f"dev-{i % 3}",
            f"p{data.draw(st.integers(0, 4))}",
            T + data.draw(st.integers(-5_000, 5_000)),
            v,
            data.draw(st.sampled_from([0, 0, 1, 2])),  # good, corrected, uncertain
        )
        for i, (v, _) in enumerate(rows)
    ]
    sent = [r for r, (_, ok) in zip(readings, rows, strict=True) if ok]
    cut = data.draw(st.integers(0, len(readings)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.sqlite"
        buf = Buffer(path, max_bytes=BIG)
        assert buf.append(readings[:cut]) + buf.append(readings[cut:]) == len(readings)
        if data.draw(st.booleans(), label="restart before sealing"):
            buf.close()
            buf = Buffer(path, max_bytes=BIG)
        got, headers = drain(buf, data.draw(st.integers(1, 50), label="max_readings"))
        stats = buf.stats()
        buf.close()
    assert Counter(map(key, got)) == Counter(map(key, sent))
    assert sum(h.dropped for h in headers) == len(bad)
    assert sum(h.dropped_why.get("unencodable", 0) for h in headers) == len(bad)
    assert stats.unencodable_total == len(bad) and stats.pending_readings == 0


# --------------------------------------------------------------------------- the cases


METER_SPECIALS = {
    "voltage_l1": "7fc00000",  # the meter's NaN
    "voltage_l2": "7f800000",  # +inf
    "voltage_l3": "ff800000",  # -inf
    "current_l1": "80000000",  # -0.0
    "current_l2": "00000001",  # the smallest subnormal
    "current_l3": "ffc12345",  # a negative NaN with a payload
}


def test_buffer__nan_inf_negative_zero_and_subnormals_seal_bit_for_bit(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    sent = [Reading("meter-1", p, T, f32(h)) for p, h in METER_SPECIALS.items()]
    sent += [
        Reading("meter-1", "f64_nan_payload", T, f64("7ff0000000000001")),  # signalling, f64
        Reading("meter-1", "f64_subnormal", T, f64("0000000000000001")),
    ]
    buf.append(sent)
    got, [header] = drain(buf, 100)
    assert Counter(map(key, got)) == Counter(map(key, sent))
    assert header.dropped == 0
    by_point = {r.point: r.value for r in got}
    for point, bits in METER_SPECIALS.items():
        assert struct.pack(">f", by_point[point]).hex() == bits


def old_buffer_with_null_rows(path: Path, device: str = "meter-1") -> list[Reading]:
    """A buffer file as the old code left it: good rows, then NaN readings stored as SQL NULL
    (inserted here directly with sqlite3), then more good rows. Returns the good readings."""
    good = [Reading(device, "voltage_l1", T + i * 1000, 230.0 + i) for i in range(6)]
    buf = Buffer(path, max_bytes=BIG)
    buf.append(good[:3])
    buf.close()
    db = sqlite3.connect(path)
    sid = db.execute(
        "SELECT id FROM series WHERE device = ? AND point = 'voltage_l1'", (device,)
    ).fetchone()[0]
    db.executemany(
        "INSERT INTO readings (series, ts_ms, value) VALUES (?, ?, NULL)",
        [(sid, T + 3500), (sid, T + 3600)],
    )
    db.commit()
    db.close()
    buf = Buffer(path, max_bytes=BIG)
    buf.append(good[3:])
    buf.close()
    return good


def test_buffer__null_rows_left_by_an_older_version_are_set_aside_and_the_rest_sealed(
    tmp_path, caplog
):
    path = tmp_path / "b.sqlite"
    good = old_buffer_with_null_rows(path)
    buf = Buffer(path, max_bytes=BIG)  # a restart on the old file
    caplog.set_level(logging.DEBUG, logger="edge.store.buffer")
    first = buf.seal("gw", 4)  # three good rows and the first NULL
    rest, headers = drain(buf, 2)  # the second NULL, alone in front of the last three
    assert first is not None
    assert [(r.ts_ms, r.value) for r in decode_batch(first.payload).points] == [
        (r.ts_ms, r.value) for r in good[:3]
    ]
    assert [(r.ts_ms, r.value) for r in rest] == [(r.ts_ms, r.value) for r in good[3:]]
    h1 = decode_batch(first.payload).header
    assert (h1.dropped, h1.dropped_why) == (1, {"unencodable": 1})
    assert sum(h.dropped for h in headers) == 1
    assert buf.stats().unencodable_total == 2 and buf.pending() == 0
    said = [r for r in caplog.records if "cannot go into any batch" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.ERROR, logging.DEBUG]  # once, then quietly
    assert "NaN stored by an older gateway version" in said[0].getMessage()
    assert "meter-1.voltage_l1" in said[0].getMessage()


def test_buffer__a_split_batch_keeps_the_dropped_reasons_in_its_first_half(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    buf.append([Reading("m", "p", T, None), *(Reading("m", "p", T + i, float(i)) for i in (1, 2))])
    batch = buf.seal("gw", 10)
    assert batch is not None
    one, two = (decode_batch(b.payload).header for b in buf.split(batch.seq))
    assert (one.dropped, one.dropped_why) == (1, {"unencodable": 1})
    assert (two.dropped, two.dropped_why) == (0, {})


def test_batch_codec__a_float64_nan_payload_travels_as_float64_bit_for_bit():
    header = BatchHeader("gw", 1, 1, T)
    nans = ["7ff0000000000001", "fff8000000000001", "7ff80000deadbeef", "7ff8000020000000"]
    out = decode_batch(encode_batch(header, [Point(1, T + i, f64(b)) for i, b in enumerate(nans)]))
    assert [struct.pack(">d", p.value).hex() for p in out.points] == nans


def test_batch_codec__dropped_why_round_trips_and_a_bad_one_is_malformed():
    header = BatchHeader("gw", 1, 1, T, dropped=5, dropped_why={"unencodable": 2})
    assert decode_batch(encode_batch(header, [])).header.dropped_why == {"unencodable": 2}
    assert decode_batch(encode_batch(BatchHeader("gw", 1, 1, T), [])).header.dropped_why == {}
    import msgpack

    doc = msgpack.unpackb(encode_batch(header, []))
    for bad in ({"unencodable": 9}, {"unencodable": -1}, ["unencodable"], {"x": "2"}):
        doc["dropped_why"] = bad
        with pytest.raises(BatchDecodeError):
            decode_batch(msgpack.packb(doc))


def test_processing__deadband_reports_a_point_going_nan_and_coming_back_at_once():
    cfg = parse_config(
        """gateway: {id: g}
devices:
  - id: m
    profile: eastron_sdm120
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 502, unit: 1}
    poll_interval_s: 1
    timeout_ms: 300
    processing:
      - {points: [voltage], deadband: 1.0, heartbeat_s: 3600}
"""
    ).config
    proc = Processor(cfg.devices, {"m": ["voltage"]})
    nan, other_nan = f32("7fc00000"), f32("ffc12345")
    series = [230.0, nan, nan, 230.2, float("inf"), float("inf"), 230.3, other_nan, nan]
    out = proc.process([Reading("m", "voltage", T + i, v) for i, v in enumerate(series)])
    # 230 -> NaN: reported; the same NaN: not; NaN -> 230.2: reported; inf: reported, again: not;
    # inf -> 230.3: reported; a NaN with other bits: reported; back to the first NaN: reported.
    assert [r.ts_ms - T for r in out] == [0, 1, 3, 4, 6, 7, 8]


def test_processing__window_aggregates_over_nan_and_inf_are_ieee_and_print_no_warning():
    nan, inf = f32("7fc00000"), float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(aggregate([230.0, nan, 231.0], "mean"))
        assert math.isnan(aggregate([230.0, nan], "max")) and math.isnan(aggregate([nan], "p95"))
        assert math.isnan(aggregate([inf, -inf], "mean"))
        assert aggregate([1.0, 2.0, inf], "p95") == inf  # numpy alone says NaN here
        assert aggregate([-inf, 1.0, 2.0], "p5") == -inf
        assert aggregate([inf, inf], "p50") == inf
        assert aggregate([1.0, 2.0, 3.0], "p50") == 2.0
        assert aggregate([230.0, nan], "count") == 2


def test_consumer__json_lines_name_nan_and_inf_and_keep_the_nan_bits():
    h = BatchHeader("gw", 3, 1, T)

    def line(v: float) -> dict:
        return json.loads(reading_json(h, Reading("m", "voltage", T, v)))

    assert line(f32("7fc00000"))["value"] == "NaN" and line(f32("7fc00000"))["bits"] == "7fc00000"
    assert line(f32("ffc12345"))["bits"] == "ffc12345"
    assert line(f64("7ff0000000000001"))["bits"] == "7ff0000000000001"
    assert line(float("inf"))["value"] == "Infinity" and line(float("inf"))["bits"] == "7f800000"
    assert line(float("-inf"))["value"] == "-Infinity"
    assert math.copysign(1.0, line(-0.0)["value"]) == -1.0
    assert line(f32("00000001"))["value"] == f32("00000001")
    assert float_bits(230.25) == "43664000" and float_bits(0.1) == "3fb999999999999a"


def test_consumer__reports_readings_set_aside_at_the_gateway_with_the_reason(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    buf.append([Reading("m", "v", T, 1.0), Reading("m", "v", T + 1, None)])
    batch = buf.seal("gw", 10)
    assert batch is not None
    series = tuple(SeriesInfo(sid, d, p, "", "") for sid, d, p in buf.series())
    birth = Birth("gw", "site", 1, "test", T, 2, (), series)
    report = tmp_path / "report.txt"
    with report.open("w") as out:
        consumer = BatchConsumer("mqtt://127.0.0.1:1", report=out)
        consumer.handle("city/v1/site/gw/birth", birth.encode())
        delivery = consumer.handle("city/v1/site/gw/data", batch.payload)
        summary = consumer.summary()
    assert delivery is not None and [r.value for r in delivery.readings] == [1.0]
    tally = consumer.tallies["gw"]
    assert (tally.dropped_reported, tally.dropped_why) == (1, {"unencodable": 1})
    assert "1 values no batch can carry, set aside" in report.read_text()
    assert "values no batch can carry, set aside: 1" in summary[0]


# --------------------------------------------------------------------------- a real meter


def meter_serving_specials(unit_id: int = 1) -> ProfileSimUnit:
    """An SDM630 whose registers for some points hold NaN, ±inf, -0.0, a subnormal."""
    model = EnergyMeterModel(phases=3, peak_kw=15.0, seed=7)

    def sample() -> dict[str, float]:
        return model.sample() | {p: f32(h) for p, h in METER_SPECIALS.items()}

    return ProfileSimUnit(get_profile("eastron_sdm630"), unit_id, sample)


POINTS = "[" + ", ".join([*METER_SPECIALS, "frequency"]) + "]"


async def run_gateway(text: str, tmp_path: Path, until) -> Gateway:
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        await wait_until(lambda: until(gateway) or task.done(), 20, what="the gateway")
        assert not task.done(), f"the gateway stopped: {task.exception()!r}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return gateway


def served_bits(unit: ProfileSimUnit, point: str) -> set[str]:
    return {struct.pack(">d", v).hex() for v in unit.served(point)}


async def test_gateway__meter_registers_holding_nan_and_inf_are_buffered_and_sealed_bit_for_bit(
    tmp_path,
):
    unit = meter_serving_specials()
    server = await serve_modbus_tcp([unit])
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=free_port(),  # no broker: the readings stay in the buffer file
            sim_port=server.port,
            units=(1,),
            poll_interval_s=0.25,
            points=POINTS,
        )
        gateway = await run_gateway(
            text, tmp_path, lambda g: g.writer_stats.accepted >= 3 * len(METER_SPECIALS)
        )
    finally:
        await server.close()
    assert gateway.writer_stats.accepted > 0
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)  # as the next `edge run` would
    got, headers = drain(buf, 7)
    assert sum(h.dropped for h in headers) == 0
    for point, bits in METER_SPECIALS.items():
        values = [r.value for r in got if r.point == point]
        assert values, f"no {point} readings"
        assert {struct.pack(">f", v).hex() for v in values} == {bits}
        assert {struct.pack(">d", v).hex() for v in values} <= served_bits(unit, point)


@pytest.mark.system
async def test_pipeline__a_meter_serving_nan_and_inf_reaches_the_consumer_bit_for_bit(
    mosquitto, tmp_path
):
    from tests.test_system import Collector

    unit = meter_serving_specials()
    server = await serve_modbus_tcp([unit])
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=server.port,
        units=(1,),
        poll_interval_s=0.2,
        points=POINTS,
    )
    try:
        async with Collector(mosquitto.url) as col:

            def arrived(_: Gateway) -> bool:
                return all(sum(r.point == p for r in col.readings) >= 3 for p in METER_SPECIALS)

            await run_gateway(text, tmp_path, arrived)
    finally:
        await server.close()
    for point, bits in METER_SPECIALS.items():
        values = [r.value for r in col.readings if r.point == point]
        assert {struct.pack(">f", v).hex() for v in values} == {bits}, point
        assert {struct.pack(">d", v).hex() for v in values} <= served_bits(unit, point)
    nan = next(r for r in col.readings if r.point == "voltage_l1")
    line = json.loads(reading_json(col.batches[0].header, nan))
    assert (line["value"], line["bits"]) == ("NaN", "7fc00000")
    assert col.tally().dropped_reported == 0


@pytest.mark.system
async def test_gateway__an_old_buffer_with_null_rows_is_forwarded_on_start(mosquitto, tmp_path):
    from tests.test_system import Collector

    good = old_buffer_with_null_rows(tmp_path / "b.sqlite")
    unit = meter_serving_specials()
    server = await serve_modbus_tcp([unit])
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=server.port,
        units=(1,),
        poll_interval_s=0.2,
        points=POINTS,
    )
    old = {(r.ts_ms, r.value) for r in good}
    try:
        async with Collector(mosquitto.url) as col:

            def forwarded(_: Gateway) -> bool:
                held = {(r.ts_ms, r.value) for r in col.readings if r.point == "voltage_l1"}
                fresh = any(r.point == "voltage_l2" for r in col.readings)
                return old <= held and fresh

            await run_gateway(text, tmp_path, forwarded)
    finally:
        await server.close()
    tally = col.tally()
    assert (tally.dropped_reported, tally.dropped_why) == (2, {"unencodable": 2})
    assert tally.tracker.missing() == []
    db = sqlite3.connect(tmp_path / "b.sqlite")
    counted = db.execute("SELECT value FROM meta WHERE key = 'unencodable_total'").fetchone()
    db.close()
    assert counted == (2,)


async def test_status__a_meter_serving_nan_and_inf_gives_strict_json_and_counts_set_asides(
    tmp_path,
):
    """The page's /status.json stays strict JSON (no bare NaN, which browsers refuse) while a
    meter serves NaN and infinities; /metrics counts the readings set aside at seal."""
    unit = meter_serving_specials()
    server = await serve_modbus_tcp([unit])
    page = free_port()
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=free_port(),
            sim_port=server.port,
            units=(1,),
            poll_interval_s=0.25,
            points=POINTS,
        ).replace("devices:", f"status: {{listen: '127.0.0.1:{page}'}}\ndevices:", 1)
        gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
        task = asyncio.create_task(gateway.run())
        try:
            await asyncio.wait_for(gateway.started.wait(), 10)
            await wait_until(lambda: gateway.writer_stats.accepted >= 14, 20, what="readings")

            def get(path: str) -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{page}{path}", timeout=5) as r:
                    return r.read().decode()

            def refuse(constant: str) -> None:
                raise AssertionError(f"/status.json holds a bare {constant}")

            state = json.loads(await asyncio.to_thread(get, "/status.json"), parse_constant=refuse)
            values = state["devices"][0]["values"]
            assert values["voltage_l1"] == "NaN" and values["voltage_l2"] == "Infinity"
            assert values["voltage_l3"] == "-Infinity" and values["current_l3"] == "NaN"
            assert state["buffer"]["unencodable_total"] == 0
            metrics = await asyncio.to_thread(get, "/metrics")
            assert 'edge_readings_dropped_total{reason="unencodable_value"} 0' in metrics
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await server.close()
