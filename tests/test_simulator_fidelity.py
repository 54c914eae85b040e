"""The simulators behave like the hardware, as an independent Modbus master sees them.

Case 12 of issue 15: a pty line that kept an answer for the next program to open it, writes
past the mapped registers that were accepted, broadcast writes that nobody applied, and a meter
whose maximum demand read below its demand. The master here is deliberately not the gateway's
RtuLink: a raw file descriptor, no flush when it opens the port (as libmodbus connects).
"""

from __future__ import annotations

import asyncio
import os
import termios
import time
import tty

import pytest

from devices import Profile
from edge.plan import compile_plan
from edge.profiles import get_profile, modbus_profiles
from protocols.modbus_frame import (
    Function,
    LineTiming,
    Request,
    decode_response,
    decode_rtu,
    encode_request,
    encode_rtu,
)
from simulators import sim_unit
from simulators.rtu_line import serve_rtu

LINE = LineTiming(9600, "N", 1)


class RawMaster:
    """A Modbus RTU master on a raw file descriptor: 9600 8N1, no flush when it opens."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)  # TCSAFLUSH would flush: this master does not
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B9600
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def send(self, unit: int, req: Request) -> None:
        os.write(self.fd, encode_rtu(unit, encode_request(req)))

    async def receive(self, within_s: float = 0.5, silence_s: float = 0.03) -> bytes:
        """What arrives within ``within_s``, ended by ``silence_s`` of quiet after a byte."""
        got = bytearray()
        deadline = time.monotonic() + within_s
        last = None
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 512)
            except BlockingIOError:
                chunk = b""
            if chunk:
                got += chunk
                last = time.monotonic()
            elif last is not None and time.monotonic() - last > silence_s:
                break
            await asyncio.sleep(0.002)
        return bytes(got)

    async def ask(self, unit: int, req: Request):
        """Send ``req`` and read its answer as masters do: as many bytes as the answer has."""
        self.send(unit, req)
        if req.is_read:
            per = (req.count + 7) // 8 if req.function <= 2 else 2 * req.count
            size = 5 + per
        else:
            size = 8  # a write's echo
        raw = await self.receive_exactly(size)
        got_unit, pdu = decode_rtu(raw)
        assert got_unit == unit
        return decode_response(req, pdu)

    async def receive_exactly(self, size: int, within_s: float = 0.5) -> bytes:
        got = bytearray()
        deadline = time.monotonic() + within_s
        while len(got) < size and time.monotonic() < deadline:
            try:
                got += os.read(self.fd, size - len(got))
            except BlockingIOError:
                await asyncio.sleep(0.002)
            if len(got) >= 2 and got[1] & 0x80:
                size = 5  # an exception answer
        assert len(got) == size, f"{len(got)} of {size} bytes within {within_s} s"
        return bytes(got)

    def close(self) -> None:
        os.close(self.fd)


def _float32(words: tuple[int, ...]) -> float:
    import struct

    return struct.unpack(">f", struct.pack(">HH", *words))[0]


# --------------------------------------------------------------------------- a) close flush


async def test_rtu_line__an_answer_unread_when_the_master_closed_is_not_given_to_the_next_opener():
    meter = sim_unit("eastron_sdm630", 1, seed=1)
    line = await serve_rtu([meter], LINE, turnaround_s=0.005)
    try:
        first = RawMaster(line.path)
        first.send(1, Request(Function.READ_INPUT_REGISTERS, 0x0000, 2))  # voltage_l1
        await asyncio.sleep(0.2)  # its answer is on the line by now; nobody reads it
        first.close()
        await asyncio.sleep(0.05)  # the next program starts
        second = RawMaster(line.path)
        try:
            answer = await second.ask(1, Request(Function.READ_INPUT_REGISTERS, 0x0046, 2))
        finally:
            second.close()
        hz = _float32(answer.values)
        assert 49.5 < hz < 50.5, f"{hz} is not a frequency"  # not the voltage asked for before
        await asyncio.sleep(0.05)
        assert hz == meter.served("frequency")[-1]
        assert line.port.discarded_bytes == 9  # the voltage answer, lost as on a real adapter
    finally:
        await line.close()


# --------------------------------------------------------------------------- d) meter physics


def _is_meter_model(name: str) -> bool:
    """Whether the profile names the energy-meter behaviour model (devices/*.yaml ``simulate:``);
    a profile naming none gets values from its hints, which promise no physics between points."""
    profile = get_profile(name)
    return (
        getattr(profile, "simulate", None) is not None and profile.simulate.model == "energy_meter"
    )


METERS = sorted(
    n
    for n in modbus_profiles()
    if any("energy" in p for p in get_profile(n).point_names) and _is_meter_model(n)
)
PHASES = ("l1", "l2", "l3")
F32 = 2.0**-23  # float32 relative precision: the wire rounds every value to it


def _close(a: float, b: float, *parts: float, slack: float = 0.0) -> bool:
    scale = max(abs(a), abs(b), *(abs(p) for p in parts), 1e-9)
    return abs(a - b) <= 4 * F32 * scale * (1 + len(parts)) + slack


def register_steps(profile: Profile, values: dict[str, float]) -> dict[str, float]:
    """Each integer point's step (its scale, times 10^sf for a SunSpec scale factor): the
    resolution a meter rounds the register to."""
    steps = {}
    for p in profile.points:
        if p.dtype.is_integer and p.bits is None:
            sf = values.get(p.scale_register, 0) if p.scale_register else 0
            steps[p.name] = abs(p.scale) * 10.0 ** int(sf)
    return steps


def meter_invariant_violations(
    v: dict[str, float], before: dict[str, float] | None, steps: dict[str, float] | None = None
) -> list[str]:
    """The physical rules a meter's points keep, found by their names in the profile, each to
    within float32 precision and half a register ``steps`` of each point it compares:

    * ``max_X`` >= ``X`` (a maximum demand is never below the demand), and never falls;
    * ``X_min`` <= ``X_avg`` <= ``X_max`` where all three exist;
    * an energy counter (``*energy*``) never falls;
    * ``total_X`` = ``import_X`` + ``export_X`` for energies (reference §1.3), and
      ``total_power_demand`` = import - export demand (Eastron's note, §1.3);
    * a three-phase total (``total_X``, ``X_sum``, or ``X`` itself for energies) is the sum of
      ``X_l1..3``, and ``X_avg`` their mean, for additive quantities;
    * |power factor| <= 1 and apparent power >= |active power|, phase by phase.
    """
    bad: list[str] = []

    def half(*names: str) -> float:  # the rounding of these registers, at most
        return sum((steps or {}).get(n, 0.0) for n in names) / 2

    for name, value in v.items():
        base = name.removeprefix("max_")
        if base != name and base in v:
            if value < v[base]:
                bad.append(f"{name} {value} < {base} {v[base]}")
            if before is not None and value < before[name]:
                bad.append(f"{name} fell from {before[name]} to {value}")
        if name.endswith("_max") and f"{name[:-4]}_min" in v:
            low, avg = v[f"{name[:-4]}_min"], v.get(f"{name[:-4]}_avg", value)
            if not low <= avg <= value:
                bad.append(f"{name[:-4]}: min {low} avg {avg} max {value}")
        if "energy" in name and before is not None and value < before[name]:
            bad.append(f"counter {name} fell from {before[name]} to {value}")
        if name.startswith("total_") and "energy" in name:
            rest = name.removeprefix("total_")
            imp, exp_ = v.get(f"import_{rest}"), v.get(f"export_{rest}")
            slack = half(name, f"import_{rest}", f"export_{rest}")
            if (
                imp is not None
                and exp_ is not None
                and not _close(value, imp + exp_, imp, exp_, slack=slack)
            ):
                bad.append(f"{name} {value} != import {imp} + export {exp_}")
    if {"total_power_demand", "import_power_demand", "export_power_demand"} <= set(v):
        imp, exp_ = v["import_power_demand"], v["export_power_demand"]
        slack = half("total_power_demand", "import_power_demand", "export_power_demand")
        if not _close(v["total_power_demand"], imp - exp_, imp, exp_, slack=slack):
            bad.append(f"total_power_demand {v['total_power_demand']} != {imp} - {exp_}")
    for name in v:
        if not name.endswith("_l1"):
            continue
        quantity = name[:-3]
        parts = [v.get(f"{quantity}_{ph}") for ph in PHASES]
        if any(p is None for p in parts):
            continue
        additive = ("power" in quantity and "factor" not in quantity) or "energy" in quantity
        additive = additive or quantity == "current"
        sums = [f"total_{quantity}", f"{quantity}_sum"] + (
            [quantity] if "energy" in quantity else []
        )
        for total in sums:
            slack = half(total, *(f"{quantity}_{ph}" for ph in PHASES))
            if additive and total in v and not _close(v[total], sum(parts), *parts, slack=slack):
                bad.append(f"{total} {v[total]} != sum of phases {sum(parts)}")
        slack = half(f"{quantity}_avg") + half(*(f"{quantity}_{ph}" for ph in PHASES)) / 3
        avg = v.get(f"{quantity}_avg")
        if avg is not None and not _close(avg, sum(parts) / 3, *parts, slack=slack):
            bad.append(f"{quantity}_avg {v[f'{quantity}_avg']} != mean of phases")
    for suffix in ("", *(f"_{ph}" for ph in PHASES)):
        pf = v.get(f"power_factor{suffix}")
        if pf is not None and abs(pf) > 1.0:
            bad.append(f"power_factor{suffix} {pf}")
        p, s = v.get(f"power{suffix}"), v.get(f"apparent_power{suffix}")
        slack = half(f"power{suffix}", f"apparent_power{suffix}")
        if p is not None and s is not None and s < abs(p) * (1 - 4 * F32) - slack:
            bad.append(f"apparent_power{suffix} {s} < |power{suffix}| {abs(p)}")
    return bad


@pytest.mark.parametrize("name", METERS)
def test_meter_contract__max_demand_totals_and_counters_keep_their_physics_over_hours(name):
    """Three simulated hours across the evening peak (load rises, then falls, so a demand comes
    down from its maximum), every point read as the gateway reads it: through the profile's
    plan and the wire encoding."""
    profile = get_profile(name)
    t = [1_763_805_600.0]  # 17:00 in Hanoi
    unit = sim_unit(profile, 1, seed=42, clock=lambda: t[0])
    plan = compile_plan(profile)
    before = None
    for _ in range(3 * 360):
        values: dict[str, float] = {}
        for req in plan.requests:
            regs = unit.read(req.function_code, req.address, req.count)
            assert not isinstance(regs, int), f"exception {regs} to {req}"
            values.update((p.name, v) for p, v in req.decode(regs))
        for p in profile.points:  # a power factor in percent (SunSpec) as the ratio it is
            if "power_factor" in p.name and p.unit == "%":
                values[p.name] /= 100.0
        bad = meter_invariant_violations(values, before, register_steps(profile, values))
        assert not bad, f"at +{t[0] - 1_763_805_600:.0f} s: {bad}"
        before = values
        t[0] += 10.0


# --------------------------------------------------------------------------- b) writes

F = Function
WRITES_REFUSED = [
    # (unit, request, exception, why): 4 = the cabinet, 1 = an SDM630, 12 = a URM14
    (4, Request(F.WRITE_MULTIPLE_REGISTERS, 0, 7, (50, 50, 50, 50, 0, 0, 9)), 2, "past the map"),
    (4, Request(F.WRITE_MULTIPLE_COILS, 2, 3, (1, 1, 1)), 2, "coils past the map"),
    (4, Request(F.WRITE_SINGLE_COIL, 4, 1, (1,)), 2, "only a discrete input is there"),
    (4, Request(F.WRITE_SINGLE_REGISTER, 6, 1, (1,)), 2, "an unmapped register"),
    (1, Request(F.WRITE_MULTIPLE_REGISTERS, 0, 2, (0x4366, 0x3334)), 2, "input table only"),
    (12, Request(F.WRITE_SINGLE_REGISTER, 5, 1, (1234,)), 2, "a read-only register"),
    (4, Request(F.WRITE_MULTIPLE_REGISTERS, 0, 4, (50, 101, 50, 50)), 3, "a value over 100 %"),
    (4, Request(F.WRITE_SINGLE_REGISTER, 4, 1, (500,)), 3, "an offset over 120 min"),
]


@pytest.fixture
async def mixed_line():
    units = [
        sim_unit("eastron_sdm630", 1, seed=1),
        sim_unit("street_light_cabinet", 4, seed=4),
        sim_unit("dfrobot_urm14", 12, seed=12),
    ]
    line = await serve_rtu(units, LINE, turnaround_s=0.005)
    yield line
    await line.close()


@pytest.mark.parametrize(
    ("unit", "req", "code", "why"), WRITES_REFUSED, ids=[w[3] for w in WRITES_REFUSED]
)
async def test_simulator__a_write_outside_the_writable_map_is_refused_whole(
    mixed_line, unit, req, code, why
):
    master = RawMaster(mixed_line.path)
    try:
        answer = await master.ask(unit, req)
    finally:
        master.close()
    assert answer.exception == code, why
    target = mixed_line.units[unit]
    assert target.writes == 0 and target.commanded == {}  # nothing of it was applied


async def test_simulator__a_write_of_whole_writable_points_is_applied_and_echoed(mixed_line):
    master = RawMaster(mixed_line.path)
    try:
        dims = Request(F.WRITE_MULTIPLE_REGISTERS, 0, 6, (10, 20, 30, 40, 0xFFF6, 15))
        echo = await master.ask(4, dims)
        relay = await master.ask(4, Request(F.WRITE_SINGLE_COIL, 3, 1, (0,)))
        back = await master.ask(4, Request(F.READ_HOLDING_REGISTERS, 0, 6))
    finally:
        master.close()
    assert echo.exception is None and relay.exception is None
    assert back.values == (10, 20, 30, 40, 0xFFF6, 15)
    commanded = mixed_line.units[4].commanded
    assert commanded["dusk_offset_min"] == -10  # int16 0xFFF6
    assert commanded["dim_level_segment_4"] == 40 and commanded["relay_segment_4"] == 0


# --------------------------------------------------------------------------- c) broadcast


async def test_rtu_line__a_broadcast_write_is_applied_by_every_unit_and_answered_by_none():
    cabinets = [sim_unit("street_light_cabinet", u, seed=u) for u in (4, 5, 6)]
    meter = sim_unit("eastron_sdm630", 1, seed=1)  # has no such register: refuses, silently
    line = await serve_rtu([meter, *cabinets], LINE, turnaround_s=0.005)
    line.no_broadcast_units.add(6)  # a device documented to ignore broadcasts
    master = RawMaster(line.path)
    try:
        master.send(0, Request(F.WRITE_MULTIPLE_REGISTERS, 0, 2, (25, 35)))
        assert await master.receive(within_s=0.3) == b""  # nobody answers a broadcast
        master.send(0, Request(F.WRITE_SINGLE_COIL, 0, 1, (0,)))
        assert await master.receive(within_s=0.3) == b""
        master.send(0, Request(F.READ_HOLDING_REGISTERS, 0, 2))  # a read: ignored
        assert await master.receive(within_s=0.3) == b""
        back = {u: await master.ask(u, Request(F.READ_HOLDING_REGISTERS, 0, 2)) for u in (4, 5)}
    finally:
        master.close()
        await line.close()
    for cabinet in cabinets[:2]:
        assert back[cabinet.unit_id].values == (25, 35)
        assert cabinet.commanded == {
            "dim_level_segment_1": 25,
            "dim_level_segment_2": 35,
            "relay_segment_1": 0,
        }
    assert cabinets[2].commanded == {} and meter.writes == 0
    assert (line.broadcasts, line.ignored_broadcasts, line.answered) == (2, 1, 2)
