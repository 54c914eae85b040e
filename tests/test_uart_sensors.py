"""PMS5003 / SDS011 drivers against their simulators on pseudo-terminals."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from edge.config import parse_config
from edge.fieldbus.uart_sensor import SensorPoller
from edge.profiles import get_profile
from edge.shared.health import STATUS_POINT
from protocols import pms5003 as pms
from protocols import sds011 as sds
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
    caplog.set_level(logging.INFO, logger="edge.fieldbus.uart_sensor")
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
    caplog.set_level(logging.INFO, logger="edge.fieldbus.uart_sensor")
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


# --------------------------------------------------------------------------- a power blip

SENSORS = [
    pytest.param(Pms5003Sim, "plantower_pms5003", pms.decode_frame, id="pms5003"),
    pytest.param(Sds011Sim, "novafitness_sds011", sds.decode_frame, id="sds011"),
]


def _in_passive_mode(sim) -> bool:
    return not sim.active if isinstance(sim, Pms5003Sim) else sim.query_mode


async def _collect(queue: asyncio.Queue, into: list) -> None:
    """Each batch the poller emits, with the wall time it was emitted."""
    while True:
        batch = await queue.get()
        into.append((time.time(), batch))


def _assert_each_value_is_from_after_its_request(sim, poller, emitted, since, decode) -> int:
    """Each sample emitted after ``since`` came from a frame the sensor sent after the read
    request of that sample, and is stamped with that frame's time. Returns how many."""
    frames = [(t, decode(raw)) for t, raw in sim.sent]
    requests = sorted(sim.read_requests)
    checked = 0
    for emitted_at, batch in emitted:
        values = [r for r in batch if r.point in poller.points]
        if not values or emitted_at < since:
            continue
        # the frame it came from: the one with these values, sent closest to the reading's time
        ts = values[0].ts_ms / 1000
        matching = [
            (t, f) for t, f in frames if all(getattr(f, r.point) == r.value for r in values)
        ]
        assert matching, values
        sent_at, _ = min(matching, key=lambda tf: abs(tf[0] - ts))
        request = max(q for q in requests if q <= emitted_at)  # the read of this sample
        assert sent_at >= request, f"a frame {request - sent_at:.2f} s older than its request"
        assert request - 0.01 <= ts <= emitted_at + 0.01  # stamped when its frame came
        checked += 1
    return checked


@pytest.mark.slow
@pytest.mark.parametrize(("sim_cls", "profile", "decode"), SENSORS)
async def test_uart_sensor__power_blip_back_to_active_mode_no_value_older_than_its_request(
    tmp_path, caplog, sim_cls, profile, decode
):
    """After a power blip the sensor streams (active mode, its power-on default) while the
    gateway polls it passively. Every value reported is from a frame that arrived after the
    read request of its sample, stamped with that frame's time; the sensor is put back into
    passive mode (counted, logged once) and the frames it streamed meanwhile are counted stale."""
    caplog.set_level(logging.DEBUG, logger="edge.fieldbus.uart_sensor")
    sim = await sim_cls(tmp_path / "ttyPM", seed=8, warmup_s=0, interval_s=0.25).start()
    poller, queue = sensor(sim.path, profile, interval=1.0, warmup=0)
    assert not poller.duty_cycling
    emitted: list = []
    collector = asyncio.create_task(_collect(queue, emitted))
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.stats.samples >= 2, 10, what="samples before the blip")
        assert _in_passive_mode(sim)
        blip_at = time.time()
        sim.power_blip()
        assert not _in_passive_mode(sim)  # streaming now, every 0.25 s
        await wait_until(lambda: poller.stats.samples >= 8, 20, what="samples after the blip")
    finally:
        task.cancel()
        collector.cancel()
        await asyncio.gather(task, collector, return_exceptions=True)
        await sim.close()

    assert _assert_each_value_is_from_after_its_request(sim, poller, emitted, blip_at, decode) >= 5
    assert _in_passive_mode(sim)  # put back into passive mode
    assert poller.stats.mode_resets >= 1 and poller.stats.stale_frames >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without being asked" in warnings[0].getMessage()
    assert any("keeps passive mode again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_pms5003__power_blip_while_duty_cycled_asleep_is_put_back_to_passive_and_sleep(
    tmp_path, caplog
):
    """Duty cycling: the blip wakes the sensor between samples and it streams while the
    gateway believes it asleep. The next cycle finds it out (counted, logged once), puts it
    back into passive mode, takes a fresh answer and puts it to sleep again."""
    caplog.set_level(logging.INFO, logger="edge.fieldbus.uart_sensor")
    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=9, warmup_s=0.5, interval_s=0.25).start()
    poller, queue = sensor(sim.path, "plantower_pms5003", interval=2.0, warmup=0.5)
    assert poller.duty_cycling
    emitted: list = []
    collector = asyncio.create_task(_collect(queue, emitted))
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.stats.samples >= 1, 10, what="a first sample")
        await wait_until(lambda: not sim.laser.awake, 5, what="asleep between samples")
        blip_at = time.time()
        sim.power_blip()
        assert sim.laser.awake and sim.active
        await wait_until(lambda: poller.stats.samples >= 4, 15, what="samples after the blip")
        await wait_until(lambda: not sim.laser.awake, 5, what="asleep again")
    finally:
        task.cancel()
        collector.cancel()
        await asyncio.gather(task, collector, return_exceptions=True)
        await sim.close()
    assert (
        _assert_each_value_is_from_after_its_request(
            sim, poller, emitted, blip_at, pms.decode_frame
        )
        >= 3
    )
    assert not sim.active  # passive again
    assert poller.stats.mode_resets == 1 and poller.stats.stale_frames >= 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without being asked" in warnings[0].getMessage()


@pytest.mark.slow
async def test_sds011__active_mode_sensor_that_stops_streaming_gets_the_active_command_again(
    tmp_path, caplog
):
    """Configured for active mode, the sensor comes back from a power cut in query mode (a
    setting it kept): it streams nothing. The gateway counts the missed sample, sends the
    active-mode command again (counted, logged once) and reports again."""
    caplog.set_level(logging.INFO, logger="edge.fieldbus.uart_sensor")
    sim = await Sds011Sim(tmp_path / "ttySDS", seed=10, warmup_s=0, interval_s=0.25).start()
    poller, queue = sensor(sim.path, "novafitness_sds011", interval=1.0, warmup=0, mode="active")
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.stats.samples >= 2, 10, what="samples")
        sim.query_mode = True
        await wait_until(lambda: poller.stats.mode_resets >= 1, 10, what="the mode resent")
        samples = poller.stats.samples
        await wait_until(lambda: poller.stats.samples >= samples + 2, 10, what="samples again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.close()
    assert not sim.query_mode and poller.stats.mode_resets == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "streams nothing" in warnings[0].getMessage()
    assert any("keeps active mode again" in r.getMessage() for r in caplog.records)
    statuses = [r.value for r in drain(queue) if r.point == STATUS_POINT]
    assert statuses == ["online", "offline", "online"]  # one sample missed, said once


@pytest.mark.system
@pytest.mark.slow
async def test_gateway__a_blipped_sensor_shows_its_stale_frames_and_mode_resets_in_metrics(
    mosquitto, tmp_path
):
    from edge.agent.gateway import Gateway
    from edge.ops.status import StatusServer

    sim = await Pms5003Sim(tmp_path / "ttyPM", seed=11, warmup_s=0, interval_s=0.25).start()
    text = f"""
gateway: {{id: gw-pm, site: test}}
buffer: {{path: {tmp_path / "buffer.sqlite"}, commit_interval_ms: 100}}
mqtt: {{url: "mqtt://127.0.0.1:{mosquitto.port}", publish_timeout_s: 2}}
devices:
  - id: pm
    profile: plantower_pms5003
    transport: {{type: uart, port: {sim.path}}}
    poll_interval_s: 1.0
    timeout_ms: 200
    warmup_s: 0
"""
    gateway = Gateway(parse_config(text, "pm.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        [poller] = gateway.pollers
        await wait_until(lambda: poller.stats.samples >= 1, 10, what="a sample")
        sim.power_blip()
        await wait_until(lambda: poller.stats.mode_resets >= 1, 10, what="the mode reset")
        metrics = await StatusServer(gateway, "127.0.0.1", 0, None).metrics()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.close()
    assert 'edge_sensor_mode_resets_total{device="pm"} 1' in metrics
    [stale] = [ln for ln in metrics.splitlines() if ln.startswith("edge_sensor_stale_frames_total")]
    assert (
        stale.startswith('edge_sensor_stale_frames_total{device="pm"}')
        and int(stale.split()[1]) >= 1
    )
