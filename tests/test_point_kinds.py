"""Every kind of point a profile can declare, end to end (docs/profile-format.md).

One profile uses every feature: the four byte orders at 32 and 64 bits, scale and offset, fields
of bits sharing a register, enumerations, ASCII strings, SunSpec scale factors (one in the same
request, one in another), counters, writable scaled and enumerated points. Our simulator serves
it over TCP (and RS-485); the gateway's poller reads it; pymodbus reads the same registers and
decodes them on its own, so a byte order we got backwards on both sides cannot pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import pytest
from pymodbus.client import AsyncModbusTcpClient

from devices import Point, Profile, ProfileError, RegisterType
from devices.profile import Kind, bit
from edge.agent.poller import DevicePoller
from edge.config import parse_config
from edge.fieldbus.modbus_tcp import ModbusTcpLink
from edge.fieldbus.rtu import RtuLink
from edge.plan import CycleDecoder, compile_plan
from edge.profiles import shipped_profiles
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.birth import Birth, SeriesInfo
from protocols.modbus import ByteOrder, DataType, WordOrder
from protocols.modbus_frame import LineTiming
from simulators import serve_modbus_tcp
from simulators.modbus_device import ProfileSimUnit
from simulators.rtu_line import serve_rtu

_IN, _H = RegisterType.INPUT, RegisterType.HOLDING
F32, F64 = DataType.FLOAT32, DataType.FLOAT64
I16, U16, I32, U32, I64, U64 = (
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
)

KINDS = Profile(
    name="test_every_point_kind",
    vendor="test",
    model="every point kind",
    readable_ranges={_IN: ((0, 43), (100, 101)), _H: ((0, 4),)},
    points=(
        Point("v_abcd", 0, F32, "V", byte_order=ByteOrder.ABCD),
        Point("v_cdab", 2, F32, "V", byte_order=ByteOrder.CDAB),
        Point("v_badc", 4, F32, "V", byte_order=ByteOrder.BADC),
        Point("v_dcba", 6, F32, "V", byte_order=ByteOrder.DCBA),
        Point("current", 8, I32, "A", scale=0.001, byte_order=ByteOrder.CDAB),
        Point(
            "energy",
            10,
            U32,
            "kWh",
            scale=0.01,
            byte_order=ByteOrder.DCBA,
            kind=Kind.COUNTER,
            wrap=2**32 * 0.01,
        ),
        Point("pulses", 12, U64, "", byte_order=ByteOrder.CDAB, kind=Kind.COUNTER, wrap=2**64),
        Point("offset_count", 16, I64, "Wh", offset=-1000, byte_order=ByteOrder.BADC),
        Point("frequency", 20, F64, "Hz", byte_order=ByteOrder.DCBA),
        Point("temperature", 24, I16, "°C", scale=0.1, offset=-40),
        Point("pressure", 25, U16, "hPa", scale=0.1, byte_order=ByteOrder.BADC),
        Point("serial_number", 26, DataType.STRING, length=8),
        Point("firmware", 34, DataType.STRING, length=4, byte_order=ByteOrder.BADC),
        Point("run_state", 38, U16, labels={0: "stopped", 1: "running", 2: "fault"}),
        Point("W", 40, I16, "W", scale_register="W_SF"),  # its factor is in another request
        Point("A", 41, U16, "A", scale_register="A_SF"),  # its factor comes after it
        Point("A_SF", 42, I16),
        Point("W_SF", 100, I16),
        Point("alarm", 0, DataType.BOOL, register_type=_H, bits=(0, 0)),
        Point("door_open", 0, DataType.BOOL, register_type=_H, bits=(1, 1)),
        Point(
            "mode",
            0,
            U16,
            register_type=_H,
            bits=(4, 6),
            labels={0: "off", 1: "auto", 2: "manual"},
        ),
        Point("fault", 0, DataType.BOOL, register_type=_H, bits=(15, 15)),
        Point(
            "setpoint",
            1,
            I16,
            "°C",
            register_type=_H,
            scale=0.5,
            offset=-20,
            writable=True,
            limits=(-10.0, 60.0),
        ),
        Point(
            "operating_mode",
            2,
            U16,
            register_type=_H,
            writable=True,
            labels={0: "off", 1: "eco", 2: "boost"},
        ),
        Point("swapped_flag", 3, DataType.BOOL, register_type=_H, bits=(8, 8), byte_order="BADC"),
        bit("relay", 0, RegisterType.COIL, writable=True),
        bit("tamper", 0, RegisterType.DISCRETE),
    ),
)

VALUES: dict[str, float | int | bool | str] = {
    "v_abcd": 230.2,
    "v_cdab": 231.7,
    "v_badc": 229.9,
    "v_dcba": -0.125,
    "current": -12.345,
    "energy": 31422.56,
    "pulses": 2**63 + 12345,
    "offset_count": -(2**40),
    "frequency": 49.98123456789,
    "temperature": 31.4,
    "pressure": 1013.2,
    "serial_number": "SN-2025-000417",
    "firmware": "V1.2",
    "run_state": 2,
    "W": 123.4,  # 1234 x 10^W_SF
    "W_SF": -1,
    "A": 0.57,  # 57 x 10^A_SF
    "A_SF": -2,
    "alarm": True,
    "door_open": False,
    "mode": 2,
    "fault": True,
    "setpoint": 22.5,
    "operating_mode": 1,
    "swapped_flag": True,
    "relay": True,
    "tamper": False,
}


@pytest.fixture
def kinds(monkeypatch):
    """KINDS as a profile the gateway knows (as a user profile will be)."""
    monkeypatch.setitem(shipped_profiles(), KINDS.name, KINDS)
    return KINDS


def _config(port: int) -> str:
    return f"""
gateway: {{id: g}}
devices:
  - id: kinds
    profile: {KINDS.name}
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 3}}
    timeout_ms: 500
    retries: 0
"""


async def _poller(port: int):
    loaded = parse_config(_config(port))
    dev = loaded.config.devices[0]
    link = ModbusTcpLink("127.0.0.1", port)
    return DevicePoller(dev, loaded.plans[dev.id], link, asyncio.Queue()), link


def _same(got: object, want: object, dtype: DataType) -> bool:
    if isinstance(want, str) or isinstance(want, bool):
        return got == want
    if dtype is F32:
        return math.isclose(got, want, rel_tol=1e-6)  # type: ignore[arg-type]
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)  # type: ignore[arg-type]


def _swap(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def pymodbus_decode(point: Point, regs: list[int], sf: int | None) -> float | int | bool | str:
    """The point's value from its registers, by pymodbus's converters: our code only swaps the
    bytes inside registers for BADC / DCBA (pymodbus chooses the word order only)."""
    c = AsyncModbusTcpClient
    order = ByteOrder(point.byte_order)
    if order.byte_swap:
        regs = _swap(regs)
    if point.dtype is DataType.STRING:
        return str(c.convert_from_registers(regs, c.DATATYPE.STRING)).rstrip(" ")
    if point.bits is not None:
        word = int(c.convert_from_registers(regs, c.DATATYPE.UINT16))  # type: ignore[arg-type]
        first, last = point.bits
        field = (word >> first) & ((1 << (last - first + 1)) - 1)
        return bool(field) if point.dtype is DataType.BOOL else field
    word_order = "little" if order.word_order is WordOrder.LITTLE else "big"
    raw = c.convert_from_registers(regs, c.DATATYPE[point.dtype.upper()], word_order=word_order)
    scale = point.scale * (10.0**sf if sf is not None else 1)
    if scale == 1 and point.offset == 0:
        return raw  # type: ignore[return-value]
    return raw * scale + point.offset  # type: ignore[operator]


async def test_point_kinds__simulator_poller_and_pymodbus_agree_on_every_kind(kinds):
    unit = ProfileSimUnit(kinds, 3, lambda: VALUES)
    server = await serve_modbus_tcp([unit])
    poller, link = await _poller(server.port)
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port)
    try:
        readings = {r.point: r.value for r in await poller.poll_once()}
        assert readings.pop(STATUS_POINT) == "online" and readings.pop(BAD_POINTS) == ""
        assert set(readings) == set(kinds.point_names)
        for name, value in readings.items():
            p = kinds.point(name)
            assert value == unit.served(name)[-1], name  # what the wire carried, exactly
            assert _same(value, VALUES[name], p.dtype), (name, value, VALUES[name])
            assert type(value) is type(unit.served(name)[-1])
        # Integers stay integers; scaled and offset-by-fraction values are floats; text is text.
        assert readings["pulses"] == 2**63 + 12345 and readings["offset_count"] == -(2**40)
        assert readings["run_state"] == 2 and readings["mode"] == 2  # the number, not the label
        assert readings["serial_number"] == "SN-2025-000417" and readings["firmware"] == "V1.2"
        assert readings["W"] == pytest.approx(123.4) and readings["A"] == pytest.approx(0.57)

        await client.connect()
        readers = {
            RegisterType.INPUT: client.read_input_registers,
            RegisterType.HOLDING: client.read_holding_registers,
            RegisterType.COIL: client.read_coils,
            RegisterType.DISCRETE: client.read_discrete_inputs,
        }
        factors = {n: int(VALUES[n]) for n in ("W_SF", "A_SF")}
        for p in kinds.points:
            rr = await readers[p.register_type](p.address, count=p.count, device_id=3)
            assert not rr.isError(), (p.name, rr)
            if p.register_type.is_bits:
                theirs: object = bool(rr.bits[0])
            else:
                sf = factors.get(p.scale_register) if p.scale_register else None
                theirs = pymodbus_decode(p, list(rr.registers), sf)
            assert _same(readings[p.name], theirs, p.dtype), (p.name, readings[p.name], theirs)
    finally:
        client.close()
        await link.close()
        await server.close()


def test_point_kinds__fields_of_bits_travel_in_one_request_and_scale_factors_come_along(kinds):
    plan = compile_plan(kinds, max_gap_registers=0)
    status = [r for r in plan.requests if r.register_type is _H and r.address == 0]
    assert len(status) == 1 and {"alarm", "door_open", "mode", "fault"} <= {
        p.name for p in status[0].points
    }
    # Asking for W alone reads W_SF too, in every plan; A brings A_SF.
    only = compile_plan(kinds, ["W", "A"])
    assert sorted(p.name for r in only.requests for p in r.points) == ["A", "A_SF", "W", "W_SF"]
    assert only.scale_names == {"W_SF", "A_SF"}


def test_cycle_decoder__a_point_waits_for_its_scale_factor_and_is_unresolved_without_it(kinds):
    plan = compile_plan(kinds, ["W"])
    w_req = next(r for r in plan.requests if any(p.name == "W" for p in r.points))
    sf_req = next(r for r in plan.requests if any(p.name == "W_SF" for p in r.points))
    assert w_req is not sf_req
    cycle: CycleDecoder[str] = CycleDecoder(plan.scale_names)
    done, failed = cycle.feed(w_req, [1234] * w_req.count, "t1")
    assert done == [] and failed == []  # waiting for W_SF
    done, failed = cycle.feed(sf_req, [0xFFFE], "t2")  # -2
    assert [(t, p.name, v) for t, p, v in done] == [("t2", "W_SF", -2), ("t1", "W", 12.34)]
    assert cycle.unresolved() == []
    # A cycle that never reads the factor leaves the point unresolved, not decoded stale.
    cycle = CycleDecoder(plan.scale_names)
    assert cycle.feed(w_req, [1234] * w_req.count, "t3") == ([], [])
    ((p, why),) = cycle.unresolved()
    assert p.name == "W" and "'W_SF' was not read" in why
    # "Not implemented" (0x8000) or a factor outside -10..10 gives no value.
    cycle = CycleDecoder(plan.scale_names)
    cycle.feed(w_req, [1234] * w_req.count, "t4")
    done, failed = cycle.feed(sf_req, [0x8000], "t5")
    assert [p.name for _, p, _ in done] == ["W_SF"]
    assert [p.name for p, _ in failed] == ["W"] and "does not implement" in failed[0][1]


async def test_poller__a_scale_factor_the_device_does_not_implement_makes_its_point_bad_once(
    kinds, caplog
):
    caplog.set_level(logging.DEBUG, logger="edge.agent.poller")
    values = dict(VALUES)
    unit = ProfileSimUnit(kinds, 3, lambda: values)
    server = await serve_modbus_tcp([unit])
    poller, link = await _poller(server.port)
    try:
        await poller.poll_once()
        values["W_SF"] = -32768
        for _ in range(3):
            readings = {r.point: r.value for r in await poller.poll_once()}
        assert "W" not in readings and poller.bad_points == "W"
        assert poller.stats.undecodable == 3
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "point W gives no value" in errors[0].getMessage()
        assert "does not implement" in errors[0].getMessage()
        values["W_SF"] = 0
        readings = {r.point: r.value for r in await poller.poll_once()}
        assert readings["W"] == 123 and readings[BAD_POINTS] == ""  # 123.4 W in whole watts
        assert any(
            r.levelno == logging.INFO and "point W gives values again" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await link.close()
        await server.close()


async def test_poller__scaled_and_enumerated_writes_are_inverted_checked_and_read_back(kinds):
    values = dict(VALUES)
    unit = ProfileSimUnit(kinds, 3, lambda: values)
    server = await serve_modbus_tcp([unit])
    poller, link = await _poller(server.port)
    try:
        # 25.5 °C = (25.5 + 20) / 0.5 = 91 in the register.
        assert await poller.write("setpoint", 25.5) == 25.5
        assert await link.read(3, 3, 1, 1, timeout_s=1, retries=0) == [91]
        assert await poller.write("operating_mode", 2) == 2
        assert unit.commanded == {"setpoint": 25.5, "operating_mode": 2}
        with pytest.raises(ValueError, match=r"whole steps of 0\.5 °C: 25\.3 is not one"):
            await poller.write("setpoint", 25.3)
        with pytest.raises(ValueError, match=r"accepts -10\.\.60, not 61"):
            await poller.write("setpoint", 61)
        with pytest.raises(ValueError, match=r"takes one of 0 \(off\), 1 \(eco\), 2 \(boost\)"):
            await poller.write("operating_mode", 5)
        with pytest.raises(ValueError, match="not writable"):
            await poller.write("mode", 1)
        assert unit.writes == 2
    finally:
        await link.close()
        await server.close()


async def test_point_kinds__every_kind_reads_back_over_rs485(kinds):
    unit = ProfileSimUnit(kinds, 3, lambda: VALUES)
    timing = LineTiming(115200, "N", 1)
    line = await serve_rtu([unit], timing, turnaround_s=0.002)
    link = RtuLink(line.path, timing)
    plan = compile_plan(kinds)
    cycle: CycleDecoder[None] = CycleDecoder(plan.scale_names)
    got = {}
    try:
        for req in plan.requests:
            regs = await link.read(
                3, req.function_code, req.address, req.count, timeout_s=1, retries=0
            )
            done, failed = cycle.feed(req, regs, None)
            assert failed == []
            got |= {p.name: v for _, p, v in done}
        assert cycle.unresolved() == []
        assert got == {n: unit.served(n)[-1] for n in kinds.point_names}
    finally:
        await link.close()
        await line.close()


# ------------------------------------------------------------------ what a profile refuses


def _pt(**kw) -> Point:
    base: dict = {"name": "p", "address": 0, "dtype": U16}
    return Point(**(base | kw))


REFUSED = [
    ({"dtype": DataType.BOOL, "bits": (40, 40)}, r"bits 40\.\.40: a register has bits 0\.\.15"),
    ({"bits": (5, 3)}, "the first not after the last"),
    ({"dtype": DataType.BOOL}, r"a bool in a register is one of its bits: give bits \(n, n\)"),
    ({"dtype": DataType.BOOL, "bits": (1, 2)}, "a bool is one bit"),
    ({"dtype": F32, "bits": (0, 1)}, "bits of a register are a bool or a uint16"),
    ({"dtype": DataType.BOOL, "register_type": RegisterType.COIL, "bits": (0, 0)}, "one bit"),
    ({"dtype": U16, "register_type": RegisterType.COIL}, "coils and discrete inputs are bool"),
    (
        {"bits": (0, 3), "register_type": _H, "writable": True},
        "bits of a register cannot be written: setting them needs a read-modify-write",
    ),
    ({"dtype": DataType.STRING}, "a string needs a length"),
    ({"dtype": DataType.STRING, "length": 4, "scale": 0.1}, "a string takes no scale"),
    ({"length": 2}, "length is for strings"),
    ({"dtype": F32, "labels": {0: "off"}}, "labels name integer values"),
    ({"labels": {0: "off"}, "scale": 0.1}, "labels name raw values"),
    ({"labels": {70000: "big"}}, r"label value 70000 is not a uint16 value \(0\.\.65535\)"),
    ({"bits": (0, 1), "labels": {4: "x"}}, r"label value 4 is not a uint16 value \(0\.\.3\)"),
    ({"labels": {1: " "}}, "non-empty text"),
    ({"scale": 0.0}, "other than 0"),
    ({"offset": math.inf}, "finite"),
    ({"wrap": 65536}, r"wrap is for counters \(kind: counter\)"),
    ({"kind": Kind.COUNTER, "wrap": -1}, "positive"),
    ({"dtype": DataType.BOOL, "bits": (0, 0), "kind": Kind.COUNTER}, "a bool takes no"),
    ({"scale_register": "p"}, "names the point itself"),
    (
        {"scale_register": "sf", "register_type": _H, "writable": True},
        "a point scaled by another register cannot be written",
    ),
    ({"unit": "kwh"}, r"unit 'kwh' is not a known symbol; write 'kWh'"),
    ({"unit": "VAr"}, "write 'var'"),
    ({"unit": "furlong"}, "unit table in docs/profile-format.md"),
    (
        {"dtype": F32, "word_order": WordOrder.LITTLE, "byte_order": ByteOrder.BADC},
        "word_order little contradicts byte_order BADC",
    ),
    ({"writable": True}, "writable but not a coil or holding register"),
]


@pytest.mark.parametrize(("kw", "message"), REFUSED)
def test_point__a_contradictory_declaration_is_refused_with_its_reason(kw, message):
    with pytest.raises(ProfileError, match=message):
        _pt(**kw)


def _profile(*points: Point) -> Profile:
    return Profile(name="t", vendor="t", model="t", points=points)


def test_profile__fields_of_bits_may_share_a_register_but_not_a_bit():
    a = _pt(name="a", dtype=DataType.BOOL, bits=(0, 0))
    b = _pt(name="b", bits=(1, 4))
    c = _pt(name="c", dtype=DataType.BOOL, bits=(15, 15))
    assert len(_profile(a, b, c).points) == 3
    with pytest.raises(ProfileError, match="'b' and 'd' overlap: both take bits of input"):
        _profile(a, b, _pt(name="d", bits=(4, 5)))
    with pytest.raises(ProfileError, match="'a' and 'w' overlap"):
        _profile(a, _pt(name="w"))  # a whole register over a field of it
    with pytest.raises(ProfileError, match="'f' and 'a' overlap"):
        _profile(
            _pt(name="f", dtype=F32), _pt(name="a", dtype=DataType.BOOL, address=1, bits=(0, 0))
        )
    with pytest.raises(ProfileError, match="different orders"):
        _profile(a, _pt(name="s", bits=(2, 2), byte_order=ByteOrder.BADC))
    # The same bits of the same address in another table are another register.
    other = _pt(name="h", dtype=DataType.BOOL, bits=(0, 0), register_type=_H)
    assert len(_profile(a, other).points) == 2


def test_profile__a_scale_register_must_be_a_plain_int16_point_of_the_profile():
    w = _pt(name="W", dtype=I16, scale_register="W_SF")
    assert _profile(w, _pt(name="W_SF", address=1, dtype=I16)).point("W").scale_register == "W_SF"
    with pytest.raises(ProfileError, match="'W_SF' is not a point of this profile"):
        _profile(w)
    with pytest.raises(ProfileError, match="must be a plain int16 point"):
        _profile(w, _pt(name="W_SF", address=1, dtype=U16))
    with pytest.raises(ProfileError, match="must be a plain int16 point"):
        _profile(w, _pt(name="W_SF", address=1, dtype=I16, scale=0.1))


def test_point__word_order_is_an_alias_of_byte_order():
    little = _pt(dtype=F32, word_order=WordOrder.LITTLE)
    assert little.byte_order is ByteOrder.CDAB and little == _pt(dtype=F32, byte_order="CDAB")
    assert _pt(dtype=F32, byte_order=ByteOrder.DCBA).word_order is WordOrder.LITTLE
    assert _pt(dtype=F32).word_order is WordOrder.BIG


# ------------------------------------------------------------------ what the birth tells


async def _birth_of_running_gateway(kinds, tmp_path, extra: str = "", wait_for: str = ""):
    from edge.agent.gateway import Gateway
    from edge.uplink.broker import free_port

    unit = ProfileSimUnit(kinds, 3, lambda: VALUES)
    server = await serve_modbus_tcp([unit])
    text = f"""
gateway: {{id: g, site: s}}
buffer: {{path: {tmp_path / "b.sqlite"}, commit_interval_ms: 50}}
mqtt: {{url: "mqtt://127.0.0.1:{free_port()}"}}
devices:
  - id: kinds
    profile: {kinds.name}
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {server.port}, unit: 3}}
    poll_interval_s: 0.2
    timeout_ms: 150
    retries: 0
{extra}"""
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)

        async def named() -> set[str]:
            return {p for _, _, p in await gateway.buffer.series()}

        for _ in range(200):
            have = await named()
            if "serial_number" in have and (not wait_for or wait_for in have):
                break
            await asyncio.sleep(0.05)
        return await gateway.birth()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


async def test_birth__every_point_tells_its_kind_and_counters_and_enumerations_say_more(
    kinds, tmp_path
):
    birth = await _birth_of_running_gateway(kinds, tmp_path)
    by_point = {s.point: s for s in birth.series}
    assert by_point["energy"].entry()[5:] == ["counter", {"wrap": 42949672.96}]
    assert by_point["pulses"].entry()[5:] == ["counter", {"wrap": 2**64}]
    sid = by_point["v_abcd"].sid
    assert by_point["v_abcd"].entry() == [sid, "kinds", "v_abcd", "V", "float32", "gauge"]
    assert by_point["run_state"].entry()[3:] == [
        "",
        "uint16",
        "gauge",
        {"labels": {"0": "stopped", "1": "running", "2": "fault"}},
    ]
    assert by_point["serial_number"].type == "string" and by_point["temperature"].unit == "°C"
    assert by_point[STATUS_POINT].entry()[3:] == ["", "status"]  # health series: no kind
    # What a consumer decodes is what the gateway meant; one reading five entries still can.
    again = {s.point: s for s in Birth.decode(birth.encode()).series}
    assert again == by_point
    assert again["mode"].labels == {0: "off", 1: "auto", 2: "manual"}
    old = [[7, "m", "voltage", "V", "float32"]]
    assert SeriesInfo.from_entry(old[0]) == SeriesInfo(7, "m", "voltage", "V", "float32")


@pytest.mark.slow
async def test_birth__window_aggregates_keep_a_counters_kind_where_they_are_its_values(
    kinds, tmp_path
):
    rule = (
        "    processing:\n"
        "      - {points: [energy], window_s: 1, aggregates: [last, mean, count]}\n"
    )
    birth = await _birth_of_running_gateway(kinds, tmp_path, rule, wait_for="energy.count")
    by_point = {s.point: s for s in birth.series}
    assert by_point["energy.last"].entry()[3:] == [
        "kWh",
        "uint32",
        "counter",
        {"wrap": 42949672.96},
    ]
    assert by_point["energy.mean"].entry()[3:] == ["kWh", "float64", "gauge"]
    assert by_point["energy.count"].entry()[3:] == ["", "int64", "gauge"]


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_shipped_profiles__energy_registers_are_counters_and_counters_accumulate(name):
    energy = {"Wh", "kWh", "MWh", "varh", "kvarh", "Mvarh", "VAh", "kVAh"}
    # Besides energy, a counter is an amount that adds up: rain depth, pulses or bucket tips
    # (no unit), running time, volume (docs/profile-format.md §11).
    adds_up = energy | {"mm", "", "s", "min", "h", "d", "mL", "L", "m³"}
    for p in shipped_profiles()[name].points:
        if p.unit in energy:
            assert p.kind is Kind.COUNTER, p.name
        if p.kind is Kind.COUNTER:
            assert p.unit in adds_up, p.name


def test_docs__the_unit_table_is_the_list_profiles_are_checked_against():
    import re
    from pathlib import Path

    from devices.units import UNITS

    doc = (Path(__file__).parent.parent / "docs" / "profile-format.md").read_text()
    table = doc.split("<!-- units: begin -->")[1].split("<!-- units: end -->")[0]
    documented = {}
    for row in table.strip().splitlines()[2:]:
        symbols, codes = (re.findall(r"`([^`]*)`", c) for c in row.split(" | ")[:2])
        assert len(symbols) == len(codes), row
        documented |= {s.strip('"'): c for s, c in zip(symbols, codes, strict=True)}
    assert documented == {s: code for s, (code, _) in UNITS.items()}


@pytest.mark.system
async def test_probe__reads_a_string_and_a_byte_swapped_float():
    import sys

    unit = ProfileSimUnit(KINDS, 3, lambda: VALUES)
    server = await serve_modbus_tcp([unit])

    async def probe(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "probe", "--tcp", f"127.0.0.1:{server.port}",
            "--unit", "3", "--fc", "4", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return out.decode().splitlines()[-1]

    try:
        assert await probe("--address", "26", "--type", "string", "--count", "8") == (
            "  @0x001a string: 'SN-2025-000417'"
        )
        line = await probe("--address", "4", "--type", "float32", "--byte-order", "BADC")
        assert float(line.split(": ")[-1]) == pytest.approx(229.9, rel=1e-6)
    finally:
        await server.close()


def test_split_request__fields_of_one_register_stay_in_one_part():
    """A device that refuses a request reading through a gap gets the runs without the gap;
    two fields of one register are one run (read once), not two."""
    from edge.plan import split_request

    gappy = Profile(
        name="g",
        vendor="t",
        model="t",
        readable_ranges={_H: ((0, 10),)},
        points=(
            Point("a", 0, DataType.BOOL, register_type=_H, bits=(0, 0)),
            Point("b", 0, U16, register_type=_H, bits=(1, 3)),
            Point("c", 5, U16, register_type=_H),
        ),
    )
    (req,) = compile_plan(gappy).requests
    assert (req.address, req.count) == (0, 6)
    first, second = split_request(gappy, req)
    assert (first.address, first.count, [p.name for p in first.points]) == (0, 1, ["a", "b"])
    assert (second.address, second.count) == (5, 1)


async def test_poller__a_device_serving_none_of_its_points_stays_degraded_and_says_why(caplog):
    """A map read one register off (1-based, or 40001 written as an address) makes the device
    answer exception 02 everywhere: every point leaves the plan. It used to go back to 'online'
    and send nothing; now it stays degraded, all points bad, with one ERROR naming the likely
    cause and the fix (address_base / address_offset)."""
    served = Profile(
        name="acme_two_floats",
        vendor="Acme",
        model="T2",
        points=(
            Point("a", 0, DataType.FLOAT32, register_type=RegisterType.HOLDING),
            Point("b", 2, DataType.FLOAT32, register_type=RegisterType.HOLDING),
        ),
    )
    one_off = Profile(  # the same map as a technician copied it from a 4xxxx table
        name="acme_two_floats_40001",
        vendor="Acme",
        model="T2",
        points=(
            Point("a", 40001, DataType.FLOAT32, register_type=RegisterType.HOLDING),
            Point("b", 40003, DataType.FLOAT32, register_type=RegisterType.HOLDING),
        ),
    )
    unit = ProfileSimUnit(served, 3, lambda: {"a": 1.5, "b": 2.5})
    server = await serve_modbus_tcp([unit])
    loaded = parse_config(_config(server.port).replace(KINDS.name, "eastron_sdm120"))
    dev = loaded.config.devices[0]
    link = ModbusTcpLink("127.0.0.1", server.port)
    poller = DevicePoller(dev, compile_plan(one_off), link, asyncio.Queue())
    try:
        with caplog.at_level(logging.INFO, logger="edge.agent.poller"):
            sent: dict[str, object] = {}
            for _ in range(4):
                sent.update({r.point: r.value for r in await poller.poll_once()})
    finally:
        await link.close()
        await server.close()
    assert sent == {STATUS_POINT: "degraded", BAD_POINTS: "all"}
    assert poller.status == "degraded" and poller.requests == []
    [hint] = [r.getMessage() for r in caplog.records if "serves none" in r.getMessage()]
    assert "serves none of the 2 points" in hint and "ERROR" in caplog.text
    assert "address_base" in hint and "address_offset" in hint
    assert "recovered" not in caplog.text  # nothing is read: it never recovered
