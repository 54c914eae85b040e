"""Modbus RTU on a simulated RS-485 line (a paced pty): timing, faults, one owner per line."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from devices import RegisterType
from edge.agent.poller import DevicePoller
from edge.config import ConfigError, parse_config
from edge.fieldbus.link import ModbusExceptionResponse, ModbusTimeout
from edge.fieldbus.rtu import RtuLink
from edge.plan import LinkCost, compile_plan
from edge.profiles import get_profile
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.modbus_frame import (
    Function,
    LineTiming,
    Request,
    encode_response,
    encode_rtu,
    read_frame_sizes,
)
from simulators import ProfileSimUnit, sim_unit
from simulators.rtu_line import serve_rtu
from tests.conftest import wait_until

LINE = LineTiming(9600, "N", 1)
FEW = "[voltage_l1, voltage_l2, voltage_l3, frequency]"


def rtu_yaml(path: str, units: list[tuple[str, str, int]], *, extra: str = "") -> str:
    devices = "".join(
        f"""
  - id: {dev_id}
    profile: {profile}
    transport: {{type: modbus_rtu, port: {path}, baudrate: 9600, unit: {unit}}}
    poll_interval_s: 1.0
    timeout_ms: 200
    retries: 0
{extra}"""
        for dev_id, profile, unit in units
    )
    return f"gateway: {{id: gw-rtu}}\ndevices:{devices}"


@pytest.fixture
async def line():
    units = [sim_unit("eastron_sdm630", u, seed=u) for u in (1, 2, 3, 4, 5)]
    sim = await serve_rtu(units, LINE)
    yield sim
    await sim.close()


async def test_rtu__transactions_take_the_wire_time_and_values_are_what_was_served(line):
    link = RtuLink(line.path, LINE)
    try:
        for count in (2, 80):
            t0 = time.monotonic()
            for _ in range(5):
                regs = await link.read(1, 4, 0, count, timeout_s=0.5, retries=0)
            per = (time.monotonic() - t0) / 5
            theory = LINE.transaction_s(*read_frame_sizes(4, count), 0.021)
            # the pty keeps wire time: never faster than the wire, and close to it
            assert theory * 0.97 < per < theory * 1.25, (count, per, theory)
        plan = compile_plan(get_profile("eastron_sdm630"), ["voltage_l1"])
        [(_, value)] = plan.requests[0].decode(regs[:2])
        assert value == line.units[1].served("voltage_l1")[-1]
    finally:
        await link.close()


async def test_rtu__garbage_before_an_answer_costs_no_retry_and_is_counted(line):
    link = RtuLink(line.path, LINE)
    try:
        line.garbage_bytes = 7
        for unit in (1, 2, 3):
            await link.read(unit, 4, 0, 2, timeout_s=0.5, retries=0)  # no retry allowed
        assert link.stats.garbage_bytes == 21 and link.stats.timeouts == 0
    finally:
        await link.close()


async def test_rtu__a_corrupted_crc_is_never_decoded_and_fails_early(line):
    link = RtuLink(line.path, LINE)
    try:
        line.corrupt_crc_units.add(2)
        t0 = time.monotonic()
        with pytest.raises(ModbusTimeout):
            await link.read(2, 4, 0, 2, timeout_s=1.0, retries=1)
        # both attempts gave up once the corrupted frame was complete, not after 1 s each
        assert time.monotonic() - t0 < 0.5
        assert link.stats.crc_errors == 2
        line.corrupt_crc_units.clear()
        assert len(await link.read(2, 4, 0, 2, timeout_s=0.5, retries=0)) == 2
    finally:
        await link.close()


async def test_rtu__exceptions_and_silence_are_told_apart(line):
    link = RtuLink(line.path, LINE)
    try:
        line.exception_units[3] = 6  # server device busy
        with pytest.raises(ModbusExceptionResponse) as busy:
            await link.read(3, 4, 0, 2, timeout_s=0.5, retries=0)
        assert busy.value.code == 6
        with pytest.raises(ModbusExceptionResponse) as unmapped:
            await link.read(1, 4, 0x0200, 2, timeout_s=0.5, retries=0)
        assert unmapped.value.code == 2
        with pytest.raises(ModbusTimeout):
            await link.read(9, 4, 0, 2, timeout_s=0.2, retries=0)  # nobody at address 9
    finally:
        await link.close()


def test_rtu__a_stray_frame_from_another_unit_is_skipped():
    req = Request(Function.READ_INPUT_REGISTERS, 0, 2)
    stray = encode_rtu(7, encode_response(req, [1, 2]))  # unit 7 answering late
    mine = encode_rtu(3, encode_response(req, [0x4366, 0x3334]))
    (start, _, response), bad_crc = RtuLink._scan(bytearray(b"\x00" + stray + mine), 3, req)
    assert response.values == (0x4366, 0x3334) and start == 1 + len(stray)
    assert not bad_crc


@pytest.mark.slow
async def test_rtu__a_silent_unit_leaves_the_other_four_within_10_percent_of_their_rate(
    line, tmp_path
):
    units = [(f"m{u}", "eastron_sdm630", u) for u in (1, 2, 3, 4, 5)]
    loaded = parse_config(rtu_yaml(line.path, units, extra=f"    points: {FEW}\n"))
    link = RtuLink(line.path, LINE)

    async def run_for(seconds: float) -> list[DevicePoller]:
        pollers = [
            DevicePoller(d, loaded.plans[d.id], link, asyncio.Queue())
            for d in loaded.config.devices
        ]
        tasks = [asyncio.create_task(p.run()) for p in pollers]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return pollers

    try:
        healthy = await run_for(6.0)
        line.silent_units.add(5)
        sick = await run_for(6.0)
    finally:
        await link.close()
    for before, after in zip(healthy[:4], sick[:4], strict=True):
        assert after.stats.polls >= 0.9 * before.stats.polls, (before.stats, after.stats)
        assert after.stats.request_errors == 0 and after.stats.overruns == 0
    dead = sick[4].stats
    # one full cycle (2 requests), then one probe per period: 1 s, 2 s, 4 s
    assert dead.request_errors <= 5 and dead.skipped >= 2


async def test_rtu__exception_02_inside_a_merged_request_is_learned_and_the_rest_still_read(
    tmp_path,
):
    # The profile claims registers 0x00-0x50 all readable, so the plan reads through the gaps
    # at 0x2C and 0x32; this meter does not serve them (exception 02).
    profile = get_profile("eastron_sdm630")
    strict = dataclasses.replace(profile, readable_ranges={})
    unit = ProfileSimUnit(strict, 1, sim_unit(profile, 1, seed=1)._model)
    sim = await serve_rtu([unit], LINE)
    text = rtu_yaml(sim.path, [("m1", "eastron_sdm630", 1)])
    text += "    points: [voltage_avg, current_avg, current_sum, total_power]\n"
    loaded = parse_config(text)
    plan = loaded.plans["m1"]
    assert len(plan.requests) == 1 and plan.requests[0].count == 12  # through the gaps
    link = RtuLink(sim.path, LINE)
    queue: asyncio.Queue = asyncio.Queue()
    poller = DevicePoller(loaded.config.devices[0], plan, link, queue)
    try:
        first = await poller.poll_once()
        names = {r.point for r in first}
        assert {"voltage_avg", "current_avg", "current_sum", "total_power"} <= names  # same cycle
        assert poller.stats.splits == 1 and len(poller.requests) == 3
        assert poller.status == "online" and poller.bad_points == ""
        again = await poller.poll_once()
        assert len(again) == 4 and poller.stats.request_errors == 0
    finally:
        await link.close()
        await sim.close()


async def test_rtu__a_point_the_device_does_not_serve_is_dropped_and_reported_bad(tmp_path):
    profile = get_profile("eastron_sdm630")
    # This meter serves no phase-3 voltage (a single-phase variant, say).
    served = dataclasses.replace(
        profile, points=tuple(p for p in profile.points if p.name != "voltage_l3")
    )
    unit = ProfileSimUnit(
        dataclasses.replace(served, readable_ranges={}), 1, sim_unit(profile, 1, seed=1)._model
    )
    sim = await serve_rtu([unit], LINE)
    text = rtu_yaml(sim.path, [("m1", "eastron_sdm630", 1)])
    text += "    points: [voltage_l1, voltage_l2, voltage_l3]\n"
    loaded = parse_config(text)
    link = RtuLink(sim.path, LINE)
    poller = DevicePoller(loaded.config.devices[0], loaded.plans["m1"], link, asyncio.Queue())
    try:
        first = {r.point: r.value for r in await poller.poll_once()}
        assert "voltage_l1" in first and "voltage_l2" in first
        assert first[BAD_POINTS] == "voltage_l3" and first[STATUS_POINT] == "degraded"
        second = {r.point: r.value for r in await poller.poll_once()}
        assert set(second) == {"voltage_l1", "voltage_l2", STATUS_POINT}  # bad list unchanged
        assert second[STATUS_POINT] == "online" and poller.unserved == {"voltage_l3"}
    finally:
        await link.close()
        await sim.close()


async def test_rtu__cabinet_relay_and_dim_writes_are_applied_and_read_back():
    cabinet = sim_unit("street_light_cabinet", 4, seed="cab")
    sim = await serve_rtu([cabinet], LINE)
    loaded = parse_config(rtu_yaml(sim.path, [("cab", "street_light_cabinet", 4)]))
    link = RtuLink(sim.path, LINE)
    poller = DevicePoller(loaded.config.devices[0], loaded.plans["cab"], link, asyncio.Queue())
    try:
        assert await poller.write("dim_level_segment_3", 45) == 45
        assert await poller.write("relay_segment_2", False) is False
        assert cabinet.commanded == {"dim_level_segment_3": 45, "relay_segment_2": False}
        readings = {r.point: r.value for r in await poller.poll_once()}
        assert readings["dim_level_segment_3"] == 45 and readings["relay_segment_2"] is False
    finally:
        await link.close()
        await sim.close()


def test_cost_model__break_even_gaps_match_the_reference_table():
    # peer-systems.md §6.2 (11-bit characters) gives break-even gaps of 14 registers at
    # 9600 / 10 ms, 32 at 9600 / 50 ms, 19 at 19200 / 10 ms and 77 at 115200 / 10 ms; the
    # table rounds 31.8 and 18.7 to nearest, a gap must cost less than the request: 31 and 18.
    cases = [(9600, 0.010, 14), (9600, 0.050, 31), (19200, 0.010, 18), (115200, 0.010, 77)]
    for baud, turnaround, gap in cases:
        cost = LinkCost.rtu(LineTiming(baud, "E"), turnaround)
        assert cost.max_gap(RegisterType.INPUT) == gap, (baud, turnaround)
    lan = LinkCost.tcp(0.02)
    assert lan.max_gap(RegisterType.INPUT) == 125


def test_config__one_serial_line_one_setting_and_one_device_per_unit():
    text = rtu_yaml("/dev/ttyUSB0", [("a", "eastron_sdm630", 1), ("b", "eastron_sdm120", 1)])
    text += """  - id: c
    profile: eastron_sdm120
    transport: {type: modbus_rtu, port: /dev/ttyUSB0, baudrate: 2400, unit: 3}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "line.yaml")
    msg = str(info.value)
    assert "line.yaml:12:" in msg and "unit 1 on modbus_rtu:///dev/ttyUSB0 is 'a' too" in msg
    assert "line.yaml:18:" in msg and "runs at 9600 N1 for 'a'; one line has one setting" in msg


async def test_rtu__unplugged_port_is_a_link_error_with_backoff():
    from edge.fieldbus.link import LinkDown

    link = RtuLink("/dev/ttyNOPE0", LINE, backoff_min_s=0.5)
    with pytest.raises(LinkDown, match="cannot open serial port"):
        await link.read(1, 4, 0, 2, timeout_s=0.1, retries=0)
    with pytest.raises(LinkDown, match="next attempt in"):
        await link.read(1, 4, 0, 2, timeout_s=0.1, retries=0)
    await wait_until(lambda: True, 0.1)
