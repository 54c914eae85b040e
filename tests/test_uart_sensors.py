"""PMS5003 / SDS011 drivers against their simulators on pseudo-terminals."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from devices import get_profile
from edge.config import parse_config
from edge.poller import STATUS_POINT
from edge.uart_sensor import SensorPoller
from simulators.particulate import Pms5003Sim, Sds011Sim
from tests.conftest import wait_until


def sensor(path, profile: str, *, interval: float, warmup: float, mode: str = "passive"):
    text = f"""gateway: {{id: g}}
devices:
  - id: pm
    profile: {profile}
    transport: {{type: uart, port: {path}}}
    poll_interval_s: {interval}
    timeout_ms: 200
    retries: 1
    mode: {mode}
    warmup_s: {warmup}
"""
    dev = parse_config(text).config.devices[0]
    queue: asyncio.Queue = asyncio.Queue()
    return SensorPoller(dev, get_profile(profile), queue), queue


def drain(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.extend(queue.get_nowait())
    return out


async def run_for(poller: SensorPoller, seconds: float) -> None:
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.slow
async def test_pms5003__passive_duty_cycle_sleeps_between_samples_at_the_cadence(tmp_path):
    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=1, warmup_s=0.5).start()
    poller, queue = sensor(sim.path, "plantower_pms5003", interval=2.0, warmup=0.5)
    assert poller.duty_cycling
    started = time.monotonic()
    try:
        task = asyncio.create_task(poller.run())
        await wait_until(lambda: poller.stats.samples >= 1, 5, what="a first sample")
        await asyncio.sleep(0.5)
        assert not sim.laser.awake  # asleep between samples
        await wait_until(lambda: poller.stats.samples >= 4, 10, what="four samples")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await sim.close()
    elapsed = time.monotonic() - started
    readings = [r for r in drain(queue) if r.point == "pm2_5"]
    gaps = [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(readings)]
    assert all(1800 <= g <= 2300 for g in gaps), gaps  # one sample every 2 s
    assert all(5 <= r.value <= 600 for r in readings)  # Hanoi air, fan at speed
    # The laser ran for the warm-ups and the reads only: well under half the time.
    assert sim.laser_on_s < 0.45 * elapsed, (sim.laser_on_s, elapsed)
    assert sim.laser.wakes >= 3 and poller.stats.wakes >= 3


@pytest.mark.slow
async def test_sds011__active_mode_reports_the_newest_frame_each_interval(tmp_path):
    sim = await Sds011Sim(tmp_path / "ttySDS", seed=2, warmup_s=0, interval_s=0.25).start()
    poller, queue = sensor(sim.path, "novafitness_sds011", interval=1.0, warmup=0, mode="active")
    try:
        await run_for(poller, 3.6)
    finally:
        await sim.close()
    readings = drain(queue)
    pm = [r for r in readings if r.point == "pm2_5"]
    assert 3 <= len(pm) <= 4 and all(isinstance(r.value, float) for r in pm)
    assert [r.value for r in readings if r.point == STATUS_POINT] == ["online"]
    assert sim.frames_sent >= 10  # it streamed; we reported one per interval


async def test_sds011__passive_query_mode(tmp_path):
    sim = await Sds011Sim(tmp_path / "ttySDS", seed=3, warmup_s=0).start()
    poller, queue = sensor(sim.path, "novafitness_sds011", interval=0.5, warmup=0)
    try:
        await run_for(poller, 2.2)
    finally:
        await sim.close()
    assert sim.query_mode and poller.stats.samples >= 3
    assert {r.point for r in drain(queue)} >= {"pm2_5", "pm10"}


@pytest.mark.slow
async def test_uart__unplugged_adapter_is_reported_as_a_gap_and_reopened(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.uart_sensor")
    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=4, warmup_s=0).start()
    poller, queue = sensor(sim.path, "plantower_pms5003", interval=0.5, warmup=0)
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.stats.samples >= 2, 5, what="samples")
        sim.unplug()
        await wait_until(lambda: poller.status == "offline", 5, what="the gap noticed")
        await asyncio.sleep(1.5)  # reopen attempts back off while the path is gone
        sim.replug()
        await wait_until(lambda: poller.status == "online", 10, what="back online")
        samples = poller.stats.samples
        await wait_until(lambda: poller.stats.samples >= samples + 2, 5, what="samples again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.close()
    statuses = [r.value for r in drain(queue) if r.point == STATUS_POINT]
    assert statuses == ["online", "offline", "online"]
    assert poller.stats.port_losses == 1 and poller.stats.opens == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once, not at every reopen attempt


@pytest.mark.slow
async def test_uart__corrupt_frames_are_counted_and_skipped(tmp_path):
    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=5, warmup_s=0).start()
    sim.bad_checksum_every = 2
    sim.garbage_bytes = 5
    poller, queue = sensor(sim.path, "plantower_pms5003", interval=0.5, warmup=0)
    try:
        await run_for(poller, 3.0)
    finally:
        await sim.close()
    assert poller.stats.samples >= 3  # a retry fetched a good frame
    assert poller.stats.bad_frames >= 2 and poller.stats.skipped_bytes > 0
    assert all(5 <= r.value <= 600 for r in drain(queue) if r.point == "pm2_5")


@pytest.mark.slow
async def test_uart__a_sensor_that_answers_nothing_is_offline_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.uart_sensor")
    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=6, warmup_s=0).start()
    sim.handle_input = lambda: None  # deaf: the sensor's RX wire is broken
    poller, queue = sensor(sim.path, "plantower_pms5003", interval=0.5, warmup=0)
    sim.active = False
    try:
        await run_for(poller, 3.0)
    finally:
        await sim.close()
    statuses = [r.value for r in drain(queue) if r.point == STATUS_POINT]
    assert statuses == ["offline"] and poller.stats.timeouts >= 3
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


@pytest.mark.parametrize("profile", ["plantower_pms5003", "novafitness_sds011"])
def test_uart__a_modbus_transport_for_a_serial_sensor_is_a_config_error(profile):
    from edge.config import ConfigError

    text = f"""gateway: {{id: g}}
devices:
  - id: pm
    profile: {profile}
    transport: {{type: modbus_rtu, port: /dev/ttyUSB0}}
"""
    with pytest.raises(ConfigError, match=r"serial sensor .* use transport type uart"):
        parse_config(text, "x.yaml")
