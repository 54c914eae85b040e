"""Contract suite for every device profile, and polling against the simulators over loopback."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import pytest

from edge.agent.poller import DevicePoller
from edge.config import parse_config
from edge.fieldbus.modbus_tcp import ModbusExceptionResponse, ModbusTcpLink, ModbusTimeout
from edge.fieldbus.rtu import RtuLink
from edge.plan import compile_plan
from edge.profiles import get_profile, modbus_profiles
from edge.shared.health import BAD_POINTS, STATUS_POINT
from simulators import serve_modbus_tcp, sim_unit
from simulators.energy_meter import EnergyMeterModel
from simulators.rtu_line import serve_rtu
from tests.conftest import gateway_yaml, wait_until

ALL = sorted(modbus_profiles())


@pytest.mark.parametrize("name", ALL)
async def test_profile_contract__simulator_answers_every_planned_request(name):
    profile = get_profile(name)
    unit = sim_unit(profile, 7, seed=1)
    server = await serve_modbus_tcp([unit])
    link = ModbusTcpLink("127.0.0.1", server.port)
    try:
        for req in compile_plan(profile).requests:
            regs = await link.read(
                7, req.function_code, req.address, req.count, timeout_s=1, retries=0
            )
            for point, value in req.decode(regs):
                assert isinstance(value, bool) or math.isfinite(value)
                assert value == unit.served(point.name)[-1]
    finally:
        await link.close()
        await server.close()


@pytest.mark.parametrize("name", ALL)
async def test_profile_contract__simulator_answers_every_planned_request_on_rs485(name):
    profile = get_profile(name)
    unit = sim_unit(profile, 7, seed=1)
    line = await serve_rtu([unit], profile.default_line, turnaround_s=0.002)
    link = RtuLink(line.path, profile.default_line)
    try:
        for req in compile_plan(profile).requests:
            regs = await link.read(
                7, req.function_code, req.address, req.count, timeout_s=1, retries=0
            )
            for point, value in req.decode(regs):
                assert value == unit.served(point.name)[-1]
        assert link.stats.garbage_bytes == 0 and link.stats.crc_errors == 0
    finally:
        await link.close()
        await line.close()


@pytest.mark.parametrize("name", ALL)
def test_profile_contract__a_sample_config_loads(name):
    text = f"""
gateway: {{id: g}}
devices:
  - {{id: d, profile: {name}, transport: {{type: modbus_tcp, host: 127.0.0.1, unit: 1}}}}
"""
    loaded = parse_config(text)
    assert loaded.plans["d"].point_count == len(get_profile(name).points)


@pytest.mark.parametrize("name", ALL)
def test_profile_contract__model_serves_every_point(name):
    profile = get_profile(name)
    values = sim_unit(profile, 1, seed=3).model_values()
    assert set(profile.point_names) <= set(values)


def test_energy_model__plausible_values_and_counters_only_grow():
    t = [1_763_800_000.0]
    model = EnergyMeterModel(seed=5, clock=lambda: t[0])
    last = model.sample()
    for _ in range(500):
        t[0] += 37.0
        v = model.sample()
        for ph in (1, 2, 3):
            assert 215 < v[f"voltage_l{ph}"] < 240
        assert 49.8 < v["frequency"] < 50.2
        assert 0.8 <= v["total_power_factor"] <= 1.0
        for counter in ("import_energy", "total_energy", "import_reactive_energy"):
            assert v[counter] >= last[counter]
        last = v
    assert last["import_energy"] > model.sample()["import_energy"] - 1e-9  # no jump back


async def test_simulator__enforces_eastron_request_rules(sim_sdm630):
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    try:
        with pytest.raises(ModbusExceptionResponse) as odd:
            await link.read(1, 4, 0, 3, timeout_s=1, retries=0)
        assert odd.value.code == 3
        with pytest.raises(ModbusExceptionResponse) as unmapped:
            await link.read(1, 4, 0x0200, 2, timeout_s=1, retries=0)
        assert unmapped.value.code == 2
        with pytest.raises(ModbusExceptionResponse) as holding:
            await link.read(1, 3, 0, 2, timeout_s=1, retries=0)
        assert holding.value.code == 2
    finally:
        await link.close()


def _device(unit: int, port: int, interval: float = 0.2):
    """One SDM630 with all its points, 100 ms timeout, no retries."""
    text = gateway_yaml(
        buffer=Path("unused.sqlite"),
        broker_port=1883,
        sim_port=port,
        units=(unit,),
        poll_interval_s=interval,
        timeout_ms=100,
        points=None,
    )
    loaded = parse_config(text)
    dev = loaded.config.devices[0]
    return dev, loaded.plans[dev.id]


async def test_poller__readings_equal_what_the_simulator_served(sim_sdm630):
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    queue: asyncio.Queue = asyncio.Queue()
    dev, plan = _device(1, sim_sdm630.port)
    poller = DevicePoller(dev, plan, link, queue)
    for i in range(3):
        readings = await poller.poll_once()
        # 56 points; the first poll also reports the device online and all its points good
        assert len(readings) == (58 if i == 0 else 56)
    unit = sim_sdm630.units[1]
    while not queue.empty():
        for r in queue.get_nowait():
            if r.point == STATUS_POINT:
                assert r.value == "online"
                continue
            if r.point == BAD_POINTS:
                assert r.value == ""
                continue
            assert r.value in unit.served(r.point), r
    await link.close()


@pytest.mark.slow
async def test_poller__silent_unit_is_logged_once_and_the_other_keeps_its_rate(sim_sdm630, caplog):
    """One dead meter behind a shared bridge: counted, logged once, neighbour unaffected."""
    caplog.set_level(logging.DEBUG, logger="edge.agent.poller")
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    queue: asyncio.Queue = asyncio.Queue()
    pollers = [DevicePoller(*_device(u, sim_sdm630.port, 0.5), link, queue) for u in (1, 2)]
    sim_sdm630.silent_units.add(2)
    started = time.monotonic()
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    await asyncio.sleep(3.2)
    sim_sdm630.silent_units.clear()
    # The next probe (at most 2 s away, plus jitter) finds it back.
    await wait_until(lambda: pollers[1].status == "online", 5, what="meter-2 back online")
    elapsed = time.monotonic() - started
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The silent unit did not cost the shared connection: it was opened once and stayed up.
    assert link.connected and link.connects == 1
    await link.close()
    healthy, dead = pollers[0].stats, pollers[1].stats
    # 0.5 s schedule: the healthy meter kept its rate (no overruns) even though the dead one
    # cost 5 x 100 ms in its first cycle on the shared connection.
    assert healthy.polls >= int(elapsed / 0.5) and healthy.request_errors == 0
    assert healthy.overruns == 0
    # The dead meter's first cycle costs its 5 requests x 100 ms; then the breaker opens and
    # only one request probes it, every 1 s, then 2 s: a dead device costs one timeout per
    # probe period. Every failure is counted as a timeout.
    assert 6 <= dead.request_errors <= 8
    assert dead.probes >= 1 and dead.skipped >= 1
    assert dead.errors_by_kind == {"ModbusTimeout": dead.request_errors}
    assert dead.readings > 0  # and it recovered once the unit answered again
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "meter-2" in r.message]
    assert len(errors) == 1, [r.message for r in errors]
    assert any("meter-2 recovered" in r.message for r in caplog.records)
    # Health changes are readings too, in order. The silent meter starts offline and ends
    # online (through "degraded" when it came back in the middle of a cycle).
    statuses = {"meter-1": [], "meter-2": []}
    while not queue.empty():
        for r in queue.get_nowait():
            if r.point == STATUS_POINT:
                statuses[r.device].append(r.value)
    assert statuses["meter-1"] == ["online"]
    assert statuses["meter-2"][0] == "offline" and statuses["meter-2"][-1] == "online"
    assert set(statuses["meter-2"]) <= {"offline", "degraded", "online"}


async def test_link__refused_connection_backs_off_without_blocking():
    from edge.fieldbus.modbus_tcp import LinkDown
    from edge.uplink.broker import free_port

    link = ModbusTcpLink("127.0.0.1", free_port(), backoff_min_s=0.5)
    with pytest.raises(LinkDown, match="refused"):
        await link.read(1, 4, 0, 2, timeout_s=0.2, retries=0)
    with pytest.raises(LinkDown, match="next attempt"):
        await link.read(1, 4, 0, 2, timeout_s=0.2, retries=0)
    assert link.connect_failures == 1
    await link.close()


async def test_link__timeout_is_explicit_not_pymodbus_default(sim_sdm630):
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    sim_sdm630.silent_units.add(1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ModbusTimeout):
        await link.read(1, 4, 0, 2, timeout_s=0.15, retries=1)
    assert loop.time() - t0 < 1.5  # 2 x 0.15 s, far from pymodbus's 3 s x 4 default
    await link.close()


async def test_link__a_late_answer_is_recognised_by_its_transaction_id(sim_sdm630):
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    try:
        sim_sdm630.delay_s = 0.3
        with pytest.raises(ModbusTimeout):
            await link.read(1, 4, 0x0046, 2, timeout_s=0.1, retries=0)  # frequency, too slow
        sim_sdm630.delay_s = 0.0
        regs = await link.read(1, 4, 0x0000, 2, timeout_s=1.0, retries=0)  # voltage now
        assert link.stale_answers == 1  # the frequency answer came first and was dropped
        volts = compile_plan(get_profile("eastron_sdm630"), ["voltage_l1"]).requests[0]
        [(_, value)] = volts.decode(regs)
        assert 200 < value < 260 and link.connects == 1
    finally:
        await link.close()
