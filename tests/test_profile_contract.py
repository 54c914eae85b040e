"""The contract every Modbus device profile keeps, shipped or in the library (issue 19).

For each Modbus profile shipped in devices/ (``edge.profiles.modbus_profiles()``: the shipped
maps and the profile library, every ``devices/*.yaml``; serial sensors with their own UART
protocol are not Modbus and have their own tests):

* its read plans, for a LAN and for its factory serial line, stay within the device's limits:
  registers (or bits) per request, even counts, and registers outside every point only inside one
  readable range; every point is read once, with its scale factor;
* the generic simulator (simulators/modbus_device.py) answers those plans, over Modbus TCP and
  over RTU on a pseudo-terminal, without one exception;
* every point the gateway decodes (the poller over TCP, the RTU link with the factory-line plan)
  is the value the simulator was given, and what the wire carried;
* pymodbus, an independent master, reads the same registers over TCP and over RTU and decodes
  the same values with its own converters.

The values are chosen per point so that a wrong word or byte order, a wrong scale or two swapped
points cannot pass: both words of a 32-bit value are non-zero, every 64-bit word too, signed
values are negative, every point of a profile gets a different value, scale factors differ.
The RTU line runs at 115200 baud so that a profile takes well under a second; the plan it
carries is the one compiled for the device's factory line (its gaps and request sizes).
"""

from __future__ import annotations

import asyncio
import math

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from devices import Point, Profile, RegisterType
from edge.agent.poller import DevicePoller
from edge.config import parse_config
from edge.fieldbus.modbus_tcp import ModbusTcpLink
from edge.fieldbus.rtu import RtuLink
from edge.plan import CycleDecoder, LinkCost, ReadPlan, ReadRequest, compile_plan
from edge.profiles import SHIPPED_DIR, modbus_profiles
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming
from simulators import serve_modbus_tcp
from simulators.modbus_device import ProfileSimUnit
from simulators.rtu_line import serve_rtu
from tests.test_point_kinds import pymodbus_decode

Value = float | int | bool | str

PROFILES = sorted(modbus_profiles())
UNIT = 7
FAST_LINE = LineTiming(115200, "N", 1)
TURNAROUND_S = 0.02  # the gateway's default turnaround_ms, for the factory-line plan's cost

_SCALE_FACTORS = (-1, -2, 0, 1, -3)  # SunSpec exponents, a different one per scale register


def _raw(p: Point, i: int) -> int | float:
    """The ``i``-th point's raw value: non-zero in every register, negative where signed."""
    if p.bits is not None:
        return (3 * i + 1) % (1 << (p.bits[1] - p.bits[0] + 1))
    return {
        DataType.UINT16: 1000 + 37 * i,
        DataType.INT16: -(300 + 7 * i),
        DataType.UINT32: 0x0001_2345 + 0x0001_0001 * i,
        DataType.INT32: -(0x0001_2345 + 0x0001_0001 * i),
        DataType.UINT64: 0x0123_4567_89AB_CDEF + 0x0001_0001_0001_0001 * i,
        DataType.INT64: -(0x0023_4567_89AB_CDEF + 0x0001_0001_0001_0001 * i),
        DataType.FLOAT32: (1234.5 + 11.25 * i) * (-1 if i % 3 == 1 else 1),
        DataType.FLOAT64: 12345.678901234 + i,
    }[p.dtype]


def sample_values(profile: Profile) -> dict[str, Value]:
    """A value for every point of ``profile``, as its device would report it."""
    factors = {p.scale_register for p in profile.points if p.scale_register}
    values: dict[str, Value] = {}
    for p in profile.points:
        if p.name in factors:
            values[p.name] = _SCALE_FACTORS[len(values) % len(_SCALE_FACTORS)]
    for i, p in enumerate(profile.points):
        if p.name in factors:
            continue
        if p.dtype is DataType.BOOL:
            values[p.name] = i % 2 == 0
        elif p.dtype is DataType.STRING:
            values[p.name] = (f"{p.name.upper()}-{i}-" + "ABCDEFGH" * 32)[: 2 * (p.length or 0)]
        elif p.labels:
            values[p.name] = p.labels[i % len(p.labels)][0]
        else:
            raw = _raw(p, i)
            factor = p.scale
            if p.scale_register is not None:
                factor *= 10.0 ** int(values[p.scale_register])
            if isinstance(raw, int) and factor == 1 and p.offset == int(p.offset):
                values[p.name] = raw + int(p.offset)
            else:
                values[p.name] = raw * factor + p.offset
    return values


def _same(got: object, want: object, p: Point) -> bool:
    if isinstance(want, str | bool) or isinstance(got, str | bool):
        return got == want and type(got) is type(want)
    tolerance = 1e-6 if p.dtype is DataType.FLOAT32 else 1e-12
    return math.isclose(got, want, rel_tol=tolerance, abs_tol=1e-12)  # type: ignore[arg-type]


def _plans(profile: Profile) -> dict[str, ReadPlan]:
    """The plans a gateway compiles: on a LAN, and on the device's factory serial line."""
    return {
        "tcp": compile_plan(profile, cost=LinkCost.tcp(TURNAROUND_S)),
        "rtu": compile_plan(profile, cost=LinkCost.rtu(profile.default_line, TURNAROUND_S)),
    }


# ------------------------------------------------------------------ every file is a profile


def test_profile_library__every_file_in_devices_is_a_profile_of_its_name_citing_its_source():
    files = sorted(SHIPPED_DIR.glob("*.yaml"))
    assert [f.stem for f in files] == PROFILES  # none left out of the contract
    for f in files:
        profile = modbus_profiles()[f.stem]
        assert profile.source.strip(), f"{f.name} cites no source"
        assert profile.vendor.strip() and profile.model.strip(), f.name


# ------------------------------------------------------------------ the plan keeps the limits


def _check_request(profile: Profile, req: ReadRequest) -> None:
    rtype, start, end = req.register_type, req.address, req.address + req.count
    where = f"{profile.name}: {rtype} {start}+{req.count}"
    limit = profile.max_bits_per_request if rtype.is_bits else profile.max_registers_per_request
    assert 1 <= req.count <= limit, f"{where}: more than the device's {limit} per request"
    assert end <= 0x10000, where
    if profile.even_register_count and not rtype.is_bits:
        assert req.count % 2 == 0, f"{where}: the device wants even counts"
    for p in req.points:
        assert start <= p.address and p.end <= end, f"{where}: {p.name} not inside"
    mapped = {
        a for p in profile.points if p.register_type is rtype for a in range(p.address, p.end)
    }
    ranges = [tuple(r) for r in profile.readable_ranges.get(rtype, ())]
    gap: list[int] = []
    for a in [*range(start, end), None]:
        if a is not None and a not in mapped:
            gap.append(a)
            continue
        if gap:  # a run of registers no point maps: it must lie inside one readable range
            assert any(lo <= gap[0] and gap[-1] < hi for lo, hi in ranges), (
                f"{where}: reads unmapped {gap[0]}..{gap[-1]} outside every readable range"
            )
            gap = []


@pytest.mark.parametrize("name", PROFILES)
def test_profile_contract__every_plan_keeps_the_device_limits_and_reads_each_point_once(name):
    profile = modbus_profiles()[name]
    for link, plan in _plans(profile).items():
        read = [p.name for r in plan.requests for p in r.points]
        assert sorted(read) == sorted(profile.point_names), (link, name)
        for req in plan.requests:
            _check_request(profile, req)
            for p in req.points:
                assert p.register_type is req.register_type
        assert plan.point_count == len(profile.points)


# ------------------------------------------------------------------ the simulator answers it


def _gateway_config(name: str, port: int) -> str:
    return f"""
gateway: {{id: contract}}
devices:
  - id: dut
    profile: {name}
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: {UNIT}}}
    timeout_ms: 2000
    retries: 0
"""


async def _read_with_pymodbus(client, plan: ReadPlan) -> dict[str, Value]:
    """Every point of ``plan``, read and decoded by pymodbus alone (scale factors first)."""
    readers = {
        RegisterType.INPUT: client.read_input_registers,
        RegisterType.HOLDING: client.read_holding_registers,
        RegisterType.COIL: client.read_coils,
        RegisterType.DISCRETE: client.read_discrete_inputs,
    }
    answers = []
    for req in plan.requests:
        rr = await readers[req.register_type](req.address, count=req.count, device_id=UNIT)
        assert not rr.isError(), (req, rr)
        answers.append((req, list(rr.bits if req.register_type.is_bits else rr.registers)))
    factors: dict[str, int] = {}
    for req, words in answers:  # scale factors are plain int16 points
        for p in req.points:
            if p.name in plan.scale_names:
                off = p.address - req.address
                factors[p.name] = int(pymodbus_decode(p, words[off : off + 1], None))
    got: dict[str, Value] = {}
    for req, words in answers:
        for p in req.points:
            off = p.address - req.address
            if p.register_type.is_bits:
                got[p.name] = bool(words[off])
                continue
            sf = factors[p.scale_register] if p.scale_register else None
            got[p.name] = pymodbus_decode(p, words[off : off + p.count], sf)
    return got


def _check_values(profile: Profile, got: dict[str, Value], want: dict[str, Value], who: str):
    assert set(got) == set(profile.point_names), who
    for p in profile.points:
        assert _same(got[p.name], want[p.name], p), (who, p.name, got[p.name], want[p.name])


@pytest.mark.parametrize("name", PROFILES)
async def test_profile_contract__simulator_answers_the_plans_and_both_masters_decode_its_values(
    name,
):
    profile = modbus_profiles()[name]
    values = sample_values(profile)
    unit = ProfileSimUnit(profile, UNIT, lambda: values)

    # Modbus TCP: the gateway's own poller, then pymodbus, on the plan the config compiles.
    server = await serve_modbus_tcp([unit])
    loaded = parse_config(_gateway_config(name, server.port))
    dev = loaded.config.devices[0]
    link = ModbusTcpLink("127.0.0.1", server.port)
    poller = DevicePoller(dev, loaded.plans[dev.id], link, asyncio.Queue())
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port)
    try:
        readings = {r.point: r.value for r in await poller.poll_once()}
        assert readings.pop(STATUS_POINT) == "online", name
        assert readings.pop(BAD_POINTS) == "", name
        _check_values(profile, readings, values, "gateway over TCP")
        for p in profile.points:  # exactly what the wire carried
            assert readings[p.name] == unit.served(p.name)[-1], p.name
        await client.connect()
        theirs = await _read_with_pymodbus(client, loaded.plans[dev.id])
        _check_values(profile, theirs, values, "pymodbus over TCP")
    finally:
        client.close()
        await link.close()
        await server.close()

    # Modbus RTU on a pseudo-terminal: the plan for the device's factory line.
    plan = _plans(profile)["rtu"]
    line = await serve_rtu([unit], FAST_LINE, turnaround_s=0.001)
    rtu = RtuLink(line.path, FAST_LINE)
    try:
        cycle: CycleDecoder[None] = CycleDecoder(plan.scale_names)
        got: dict[str, Value] = {}
        for req in plan.requests:
            regs = await rtu.read(
                UNIT, req.function_code, req.address, req.count, timeout_s=2, retries=0
            )
            done, failed = cycle.feed(req, regs, None)
            assert failed == [], (name, failed)
            got |= {p.name: v for _, p, v in done}
        assert cycle.unresolved() == []
        _check_values(profile, got, values, "gateway over RTU")
    finally:
        await rtu.close()
    serial = AsyncModbusSerialClient(line.path, baudrate=FAST_LINE.baudrate, timeout=2, retries=0)
    try:
        assert await serial.connect(), f"pymodbus cannot open {line.path}"
        theirs = await _read_with_pymodbus(serial, plan)
        _check_values(profile, theirs, values, "pymodbus over RTU")
    finally:
        serial.close()
        await line.close()
    assert unit.exceptions == 0, f"{name}: the simulator refused {unit.exceptions} requests"
