"""Field-bus faults real cabinets have (issue 15, cases 4-7): a value never lands on the wrong
point, an answer to any try of a request counts, a bridge's "no device" is no answer, and a
bridge that drops every connection is not hammered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time

import pytest

from edge.agent.gateway import Gateway
from edge.agent.poller import DevicePoller
from edge.config import ConfigError, parse_config
from edge.fieldbus.link import ModbusGatewayNoAnswer, ModbusTimeout
from edge.fieldbus.modbus_tcp import ModbusTcpLink
from edge.fieldbus.rtu import RtuLink
from edge.ops.status import StatusServer
from edge.shared.health import BAD_POINTS, STATUS_POINT
from edge.uplink.broker import free_port
from protocols.modbus_frame import LineTiming
from simulators import sim_unit
from simulators.rtu_line import serve_rtu
from tests.conftest import gateway_yaml

LINE = LineTiming(9600, "N", 1)
# voltage_l1 (0x0000) and current_l1 (0x0006): two float32 reads of the same size, never merged.
SAME_SIZE = "[voltage_l1, current_l1]"


def rtu_device(
    dev_id: str, path: str, unit: int, *, timeout_ms: int, retries: int, extra="", poll_s=1.0
):
    return f"""
  - id: {dev_id}
    profile: eastron_sdm630
    transport: {{type: modbus_rtu, port: {path}, baudrate: 9600, unit: {unit}{extra}}}
    poll_interval_s: {poll_s}
    timeout_ms: {timeout_ms}
    retries: {retries}
    points: {SAME_SIZE}
    max_gap_registers: 0
"""


def rtu_config(*devices: str) -> str:
    return "gateway: {id: gw-late}\ndevices:" + "".join(devices)


def wrong_values(readings, unit) -> list[tuple[str, object]]:
    """Readings whose value the simulated unit never served for that point."""
    return [
        (r.point, r.value)
        for r in readings
        if r.point not in (STATUS_POINT, BAD_POINTS) and r.value not in unit.served(r.point)
    ]


async def test_rtu__a_late_answer_to_one_request_never_becomes_the_answer_to_the_next():
    meter = sim_unit("eastron_sdm630", 1, seed="late")
    sim = await serve_rtu([meter], LINE, unit_turnaround_s={1: 0.45})  # 300 ms timeout below
    loaded = parse_config(rtu_config(rtu_device("m1", sim.path, 1, timeout_ms=300, retries=0)))
    plan = loaded.plans["m1"]
    assert [r.count for r in plan.requests] == [2, 2]
    link = RtuLink(sim.path, LINE)
    poller = DevicePoller(loaded.config.devices[0], plan, link, asyncio.Queue())
    try:
        readings = await poller.poll_once()
    finally:
        await link.close()
        await sim.close()
    # Before: current_l1 read the late voltage answer (about 230 "A"), online-looking.
    assert wrong_values(readings, meter) == []
    values = {r.point: r.value for r in readings}
    assert "current_l1" not in values and "voltage_l1" not in values
    assert values[STATUS_POINT] == "offline" and values[BAD_POINTS] == "all"
    # Both late answers arrived inside the late-answer window: discarded and counted.
    assert link.stats.late_answers >= 1 and link.stats.late_bytes >= 9
    assert link.stats.late_wait_s > 0


async def test_rtu__a_unit_slower_than_twice_its_timeout_is_held_off_by_late_answer_ms(tmp_path):
    # Timeout 200 ms, answers after 550 ms: the default window (200 ms) ends before the late
    # answer comes; the line's late_answer_ms (1 s) covers it. Built as the gateway builds it.
    meter = sim_unit("eastron_sdm630", 1, seed="slower")
    sim = await serve_rtu([meter], LINE, unit_turnaround_s={1: 0.55})
    text = rtu_config(
        rtu_device(
            "m1", sim.path, 1, timeout_ms=200, retries=0, extra=", late_answer_ms: 1000", poll_s=2
        )
    )
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    [poller] = gateway.pollers
    [[link]] = gateway.links.values()
    await gateway.buffer.open()
    try:
        readings = await poller.poll_once()  # type: ignore[union-attr]
        metrics = await StatusServer(gateway, "127.0.0.1", 0, None).metrics()
    finally:
        await gateway.buffer.close()
        await link.close()
        await sim.close()
    assert wrong_values(readings, meter) == []
    assert {r.point: r.value for r in readings}[STATUS_POINT] == "offline"
    assert link.late_answer_s == 1.0 and link.stats.late_answers >= 1
    # voltage_l1's late answer held current_l1's request back; current_l1's is still awaited
    late = [m for m in metrics.splitlines() if m.startswith("edge_line_late_answers_total{")]
    assert late == [f'edge_line_late_answers_total{{line="modbus_rtu://{sim.path}"}} 1']


def test_config__late_answer_ms_is_one_setting_per_line():
    text = rtu_config(
        rtu_device(
            "a", "/dev/ttyUSB0", 1, timeout_ms=300, retries=0, extra=", late_answer_ms: 600"
        ),
        rtu_device("b", "/dev/ttyUSB0", 2, timeout_ms=300, retries=0),
    )
    with pytest.raises(ConfigError, match="has late_answer_ms 600 ms for 'a'; one line has one"):
        parse_config(text, "line.yaml")


@pytest.mark.slow
async def test_rtu__answers_around_the_timeout_with_retries_never_land_on_another_point(caplog):
    """A unit answering sometimes just in time, sometimes just late, with a retry, next to a
    healthy unit on the same line asked for same-sized registers: every value is the one served
    for its point, and the line time the late-answer window costs is shown."""
    slow = sim_unit("eastron_sdm630", 1, seed="slow")
    fast = sim_unit("eastron_sdm630", 2, seed="fast")
    # unit 1 starts answering 230-390 ms after the request (300 ms timeout); unit 2 in 50-210 ms
    sim = await serve_rtu(
        [slow, fast], LINE, turnaround_s=0.05, jitter_s=0.16, unit_turnaround_s={1: 0.23}, seed=4
    )
    loaded = parse_config(
        rtu_config(
            rtu_device("slow", sim.path, 1, timeout_ms=300, retries=1, poll_s=1.5),
            rtu_device("fast", sim.path, 2, timeout_ms=300, retries=1, poll_s=1.5),
        )
    )
    link = RtuLink(sim.path, LINE)
    queues = {d.id: asyncio.Queue() for d in loaded.config.devices}
    pollers = [
        DevicePoller(d, loaded.plans[d.id], link, queues[d.id]) for d in loaded.config.devices
    ]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        await asyncio.sleep(8.0)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.close()
        await sim.close()
    got: dict[str, list] = {dev_id: [] for dev_id in queues}
    for dev_id, q in queues.items():
        while not q.empty():
            got[dev_id] += q.get_nowait()
    assert wrong_values(got["slow"], slow) == [] and wrong_values(got["fast"], fast) == []
    in_time = [r for r in got["slow"] if r.point == "current_l1"]
    assert in_time, "some answers of the slow unit came in time and were taken"
    assert {r.value for r in got["fast"] if r.point == STATUS_POINT} == {"online"}
    s = link.stats
    # a late answer to a first try is the retry's answer; one to a last try is discarded
    assert s.late_taken + s.late_answers >= 1
    print(
        f"late answers {s.late_taken} taken by the retry, {s.late_answers} ({s.late_bytes} "
        f"bytes) discarded; the line was held "
        f"{s.late_wait_s:.2f} s for them, of {s.busy_s:.2f} s busy in {s.transactions} "
        f"transactions and {s.timeouts} timeouts"
    )
    assert 0 < s.late_wait_s < s.busy_s


# ----------------------------------------------------------------------------- Modbus TCP retries


def tcp_device(
    dev_id: str, port: int, unit: int, *, timeout_ms: int, retries: int, points: str, every_s=1.0
):
    return f"""
  - id: {dev_id}
    profile: eastron_sdm630
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: {unit}}}
    poll_interval_s: {every_s}
    timeout_ms: {timeout_ms}
    retries: {retries}
    points: {points}
"""


async def test_modbus_tcp__an_answer_to_the_first_try_arriving_during_the_retry_counts(
    sim_sdm630,
):
    text = "gateway: {id: gw-tcp}\ndevices:" + tcp_device(
        "m1", sim_sdm630.port, 1, timeout_ms=300, retries=1, points="[voltage_l1, voltage_l2]"
    )
    loaded = parse_config(text)
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    poller = DevicePoller(loaded.config.devices[0], loaded.plans["m1"], link, asyncio.Queue())
    meter = sim_sdm630.units[1]
    try:
        sim_sdm630.delay_s = 0.35  # the device answers in 350 ms; the timeout is 300 ms
        first = {r.point: r.value for r in await poller.poll_once()}
        assert first[STATUS_POINT] == "online" and first[BAD_POINTS] == ""
        assert first["voltage_l1"] in meter.served("voltage_l1")
        assert first["voltage_l2"] in meter.served("voltage_l2")
        assert link.stale_answers == 0
        # The answer to the retry comes later still; a later request throws it away, counted.
        await asyncio.sleep(0.6)
        sim_sdm630.delay_s = 0.0
        regs = await link.read(1, 4, 0x0046, 2, timeout_s=1.0, retries=0)  # frequency
        assert link.stale_answers == 1
        hz = struct.unpack(">f", struct.pack(">HH", *regs))[0]
        assert 45 < hz < 55 and link.connects == 1
    finally:
        await link.close()


# ------------------------------------------------------------------ a bridge reporting "no device"


@pytest.mark.parametrize("code", [0x0A, 0x0B])
async def test_poller__a_bridge_reporting_an_absent_unit_is_offline_and_backs_off(sim_sdm630, code):
    # Unit 9 is not behind the bridge (the simulator answers 0x0B, as bridges do); unit 2 is
    # there but its path is configured away (0x0A).
    unit = 9 if code == 0x0B else 2
    if code == 0x0A:
        sim_sdm630.exception_units[2] = 0x0A
    points = "[voltage_l1, frequency, import_energy]"
    text = "gateway: {id: gw-br}\ndevices:" + tcp_device(
        "ghost", sim_sdm630.port, unit, timeout_ms=100, retries=1, points=points, every_s=0.2
    )
    loaded = parse_config(text + "    max_gap_registers: 0\n")
    plan = loaded.plans["ghost"]
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    queue: asyncio.Queue = asyncio.Queue()
    poller = DevicePoller(loaded.config.devices[0], plan, link, queue)
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(2.0)  # 10 cycles at 0.2 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()
    s = poller.stats
    statuses = []
    while not queue.empty():
        statuses += [r.value for r in queue.get_nowait() if r.point == STATUS_POINT]
    assert statuses == ["offline"] and poller.bad_points == "all"
    # one full cycle, then single-request probes every 0.4, 0.8, 1.6 s (at full rate: 10 x 3)
    assert s.requests <= len(plan.requests) + 4, s
    assert s.skipped >= 4 and s.errors_by_kind == {"ModbusGatewayNoAnswer": s.request_errors}
    assert f"exception {code:#04x}" in s.last_error and "no answer" in s.last_error


async def test_link__a_gateway_exception_is_no_answer_not_a_refusal(sim_sdm630):
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    try:
        with pytest.raises(ModbusGatewayNoAnswer) as info:
            await link.read(9, 4, 0, 2, timeout_s=0.5, retries=0)
        assert info.value.code == 0x0B
    finally:
        await link.close()


# ------------------------------------------------ a bridge that accepts and resets every connection


class ResettingBridge:
    """Accepts every TCP connection and resets it at once (SO_LINGER 0): a bridge whose serial
    side is broken, or that has no free client slot."""

    def __init__(self) -> None:
        self.accepted: list[float] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ResettingBridge:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 2])
async def test_modbus_tcp__a_bridge_that_resets_every_connection_is_not_hammered(
    tmp_path, connections
):
    bridge = await ResettingBridge().start()
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=free_port(),
        sim_port=bridge.port,
        units=tuple(range(1, 9)),
        poll_interval_s=0.2,
    )
    for u in range(1, 9):
        text = text.replace(f"unit: {u}}}", f"unit: {u}, max_connections: {connections}}}")
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    [links] = gateway.links.values()
    assert len(links) == connections and len(gateway.pollers) == 8
    tasks = [asyncio.create_task(p.run()) for p in gateway.pollers]  # type: ignore[union-attr]

    async def drain() -> None:
        while True:
            await gateway.queue.get()

    drainer = asyncio.create_task(drain())
    try:
        await asyncio.sleep(4.0)
    finally:
        for t in [*tasks, drainer]:
            t.cancel()
        await asyncio.gather(*tasks, drainer, return_exceptions=True)
        for link in links:
            await link.close()
        await bridge.close()
    at = bridge.accepted
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Before: every accept reset the backoff; all 8 devices connected within milliseconds.
    # Now one backoff for the endpoint, doubling from 0.5 s (±20 %): 0, ~0.5, ~1.5, ~3.5 s.
    assert 1 <= len(at) <= 5, gaps
    assert min(gaps, default=1.0) >= 0.35, gaps
    assert all(p.status == "offline" for p in gateway.pollers)


async def test_rtu__a_late_answer_arriving_while_the_next_request_is_sent_is_not_its_answer():
    # At 1200 baud a read request is on the wire for 67 ms. With no late-answer window, unit 1's
    # late voltage answer starts about 28 ms into the next request (same unit, same size): the
    # slave cannot have heard that request yet, so those bytes are not its answer.
    slow_line = LineTiming(1200, "N", 1)
    meter = sim_unit("eastron_sdm630", 1, seed="collide")
    sim = await serve_rtu([meter], slow_line, unit_turnaround_s={1: 0.22}, jitter_s=0.0)
    link = RtuLink(sim.path, slow_line, late_answer_s=0.0)
    values: list[float] = []
    try:
        for address in (0x0000, 0x0006, 0x0000, 0x0006):  # voltage_l1, current_l1, ...
            with contextlib.suppress(ModbusTimeout):
                regs = await link.read(1, 4, address, 2, timeout_s=0.2, retries=0)
                values.append(struct.unpack(">f", struct.pack(">HH", *regs))[0])
    finally:
        await link.close()
        await sim.close()
    assert values == []  # every answer is late; none is taken for a later request
    assert link.stats.late_bytes > 0


async def test_rtu__a_late_answer_to_an_earlier_try_of_the_same_request_is_its_answer():
    # Unit 1 answers every request after 450 ms; timeout 300 ms, two retries. Each try's answer
    # comes in the late-answer window before the next try of the same request is sent: it is
    # that request's answer (as a TCP answer to an earlier try is), not a reason to send the
    # try again and call a device that answers every request offline.
    meter = sim_unit("eastron_sdm630", 1, seed="retry-late")
    sim = await serve_rtu([meter], LINE, unit_turnaround_s={1: 0.45}, jitter_s=0.0)
    loaded = parse_config(
        rtu_config(rtu_device("m1", sim.path, 1, timeout_ms=300, retries=2, poll_s=2))
    )
    link = RtuLink(sim.path, LINE)
    poller = DevicePoller(loaded.config.devices[0], loaded.plans["m1"], link, asyncio.Queue())
    try:
        readings = await poller.poll_once()
    finally:
        await link.close()
        await sim.close()
    assert wrong_values(readings, meter) == []
    values = {r.point: r.value for r in readings}
    assert values[STATUS_POINT] == "online" and values[BAD_POINTS] == ""
    assert {"voltage_l1", "current_l1"} <= values.keys()
    # each request was sent once: its answer ended the window, no retry went out
    assert link.stats.timeouts == 0 and link.stats.late_bytes == 0
    assert link.stats.late_taken == 2


@pytest.mark.parametrize("code", [0x0A, 0x0B])
async def test_poller__a_bridge_that_misses_its_unit_now_and_then_is_retried_like_a_silent_unit(
    sim_sdm630, code
):
    # The bridge's RTU side loses every other exchange with unit 1 and says so with 0x0A /
    # 0x0B. That is no answer, like a timeout, so the device's retry is spent on it as on a
    # timeout, and the retry's answer is read: online, every point, never a value of another.
    answer = sim_sdm630.answer
    calls = itertools.count()

    def flaky(unit: int, pdu: bytes) -> bytes | None:
        reply = answer(unit, pdu)
        return bytes([pdu[0] | 0x80, code]) if next(calls) % 2 == 0 else reply

    sim_sdm630.answer = flaky
    text = "gateway: {id: gw-flaky}\ndevices:" + tcp_device(
        "m1", sim_sdm630.port, 1, timeout_ms=300, retries=1, points=SAME_SIZE
    )
    loaded = parse_config(text + "    max_gap_registers: 0\n")
    link = ModbusTcpLink("127.0.0.1", sim_sdm630.port)
    poller = DevicePoller(loaded.config.devices[0], loaded.plans["m1"], link, asyncio.Queue())
    meter = sim_sdm630.units[1]
    try:
        readings = await poller.poll_once()
    finally:
        await link.close()
    assert wrong_values(readings, meter) == []
    values = {r.point: r.value for r in readings}
    assert values[STATUS_POINT] == "online" and values[BAD_POINTS] == ""
    assert {"voltage_l1", "current_l1"} <= values.keys()


async def test_rtu__a_line_that_is_never_quiet_fails_the_request_in_its_timeout_not_never():
    # A floating (unbiased) RS-485 pair, or a device streaming unasked, keeps bytes coming with
    # gaps shorter than t3.5 (29 ms at 1200 baud). The master must not wait forever for
    # silence: the request fails within its timeout, so the devices are reported offline
    # instead of keeping their last status with no readings.
    import os
    import pty
    import threading
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    path = os.ttyname(slave)
    stop = threading.Event()

    def noise() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.write(master, b"\x00\xff")
            time.sleep(0.005)

    thread = threading.Thread(target=noise, daemon=True)
    thread.start()
    slow_line = LineTiming(1200, "N", 1)
    link = RtuLink(path, slow_line)
    try:
        async with asyncio.timeout(10.0):  # before: no answer and no error, ever
            with pytest.raises(ModbusTimeout, match="never quiet"):
                await link.read(1, 4, 0, 2, timeout_s=0.3, retries=1)
    finally:
        stop.set()
        thread.join()
        await link.close()
        os.close(master)
        os.close(slave)
    assert link.stats.timeouts == 1 and link.stats.never_quiet == 2 and link.stats.stale_bytes > 0
