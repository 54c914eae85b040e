"""Platform commands over a real Mosquitto: answered, refused, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time

import aiomqtt
import pytest

from edge.agent.poller import DevicePoller
from edge.config import ConfigError, parse_config
from edge.fieldbus.modbus_tcp import ModbusExceptionResponse, ModbusTcpLink
from edge.platform.consumer import BatchConsumer
from simulators import serve_modbus_tcp, sim_unit
from tests.conftest import gateway_yaml, wait_until
from tests.test_system import start_gateway, stop

CMD = "city/v1/test/gw-test/cmd"
RES = "city/v1/test/gw-test/cmd/res"


class Platform:
    """The platform side: send a command, wait for the reply with the same id."""

    def __init__(self, port: int) -> None:
        self.client = aiomqtt.Client("127.0.0.1", port)
        self.replies: dict[object, dict] = {}
        self.births = 0

    async def __aenter__(self) -> Platform:
        await self.client.__aenter__()
        await self.client.subscribe(RES, qos=1)
        await self.client.subscribe("city/v1/test/gw-test/birth", qos=1)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.client.messages:
            if str(msg.topic).endswith("/birth"):
                self.births += 1
                continue
            doc = json.loads(msg.payload)
            self.replies[doc["id"]] = doc

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await self.client.__aexit__(None, None, None)

    async def send(self, payload: bytes | dict, reply_id: object) -> dict:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await self.client.publish(CMD, raw, qos=1)
        await wait_until(lambda: reply_id in self.replies, 10, what=f"reply {reply_id!r}")
        return self.replies.pop(reply_id)


@pytest.mark.system
async def test_commands__answered_refused_and_never_a_crash(mosquitto, sim_sdm630, tmp_path):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port
    )
    gateway, task = await start_gateway(tmp_path, text)
    await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 1, 15, what="a batch")
    async with Platform(mosquitto.port) as platform:
        await wait_until(lambda: platform.births >= 1, 5, what="the retained birth")
        ping = await platform.send({"id": "p1", "cmd": "ping"}, "p1")
        assert ping["ok"] and ping["result"]["pong"] and ping["result"]["boot"] == 1

        births = platform.births
        reb = await platform.send({"id": 2, "cmd": "rebirth"}, 2)
        assert reb["ok"] and reb["result"]["series"] == 16  # 2 x (6 points + 2 health series)
        await wait_until(lambda: platform.births > births, 5, what="a new birth")

        ok = await platform.send(
            {
                "id": "s1",
                "cmd": "set_poll_interval",
                "args": {"device": "meter-1", "poll_interval_s": 2},
            },
            "s1",
        )
        assert ok["ok"] and ok["result"] == {
            "device": "meter-1",
            "poll_interval_s": 2.0,
            "was": 0.5,
        }
        assert gateway.pollers[0].interval_s == 2.0

        refused = {
            "s2": {
                "id": "s2",
                "cmd": "set_poll_interval",
                "args": {"device": "meter-1", "poll_interval_s": 0.01},
            },
            "s3": {
                "id": "s3",
                "cmd": "set_poll_interval",
                "args": {"device": "meter-9", "poll_interval_s": 5},
            },
            "w1": {
                "id": "w1",
                "cmd": "write",
                "args": {"device": "meter-1", "point": "voltage_l1", "value": 1},
            },
            "u1": {"id": "u1", "cmd": "reboot"},
            "a1": {"id": "a1", "cmd": "ping", "args": [1, 2]},
        }
        codes = {}
        for rid, req in refused.items():
            reply = await platform.send(req, rid)
            assert reply["ok"] is False
            codes[rid] = reply["error"]["code"]
        assert codes == {
            "s2": "bad_args",
            "s3": "unknown_device",
            "w1": "not_allowed",
            "u1": "unknown_command",
            "a1": "bad_args",
        }

        # Garbage a request id cannot even be read from: answered with id null.
        for junk in (b"\xff\xfe not json", b"[1, 2, 3]", b'{"cmd": "ping"}', b"x" * 5000):
            reply = await platform.send(junk, None)
            assert reply["ok"] is False
            assert reply["error"]["code"] in ("bad_request", "too_large")

        sent = gateway.forwarder.stats.batches_sent
        await wait_until(
            lambda: gateway.forwarder.stats.batches_sent > sent,
            10,
            what="batches still flowing after hostile commands",
        )
    await stop(task)
    assert task.done() and gateway.forwarder.stats.sessions == 1  # never reconnected


def test_commands__allow_list_is_checked_at_load():
    base = gateway_yaml(buffer="b.sqlite", broker_port=1883, sim_port=5020)
    text = (
        base + "commands:\n  writable:\n    - {device: meter-1, point: voltage_l1}\n"
        "    - {device: meter-7, point: x}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml")
    msg = str(info.value)
    assert "point 'voltage_l1' is not writable in its profile" in msg
    assert "commands.writable: no device 'meter-7'" in msg


NIGHT = 1_763_816_400.0  # 2025-11-22 20:00 in Hanoi: dark, contactors closed, dim at 100 %


def cabinet_yaml(port: int, unit: int = 5) -> str:
    return f"""
  - id: cabinet-1
    profile: street_light_cabinet
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: {unit}}}
    poll_interval_s: 0.3
    timeout_ms: 300
    retries: 0
commands:
  writable:
    - {{device: cabinet-1, point: relay_segment_1}}
    - {{device: cabinet-1, point: dim_level_segment_2}}
"""


@pytest.fixture
async def cabinet():
    start = time.monotonic()
    unit = sim_unit(
        "street_light_cabinet", 5, seed="cab", clock=lambda: NIGHT + time.monotonic() - start
    )
    server = await serve_modbus_tcp([unit])
    yield server, unit
    await server.close()


async def test_poller__cabinet_relay_and_dim_writes_are_applied_read_back_and_bounded(
    tmp_path, cabinet
):
    server, unit = cabinet
    text = gateway_yaml(buffer=tmp_path / "b.sqlite", broker_port=1883, sim_port=1, units=())
    loaded = parse_config(text + cabinet_yaml(server.port))
    dev = loaded.config.devices[0]
    link = ModbusTcpLink("127.0.0.1", server.port)
    poller = DevicePoller(dev, loaded.plans[dev.id], link, asyncio.Queue())
    try:
        assert await poller.write("relay_segment_1", False) is False  # FC 05, read back FC 01
        assert await poller.write("dim_level_segment_2", 30) == 30  # FC 16, read back FC 03
        assert unit.writes == 2
        assert unit.commanded == {"relay_segment_1": False, "dim_level_segment_2": 30}
        assert await link.read(5, 1, 0, 4, timeout_s=1, retries=0) == [0, 1, 1, 1]
        with pytest.raises(ValueError, match=r"accepts 0\.\.100, not 150"):
            await poller.write("dim_level_segment_2", 150)
        with pytest.raises(ValueError, match="not writable"):
            await poller.write("photocell_dark", True)
        # The device itself refuses what the gateway would never send (exception 03 / 02).
        with pytest.raises(ModbusExceptionResponse, match="exception 0x03"):
            await link.write(5, 1, [150], timeout_s=1, retries=0)
        with pytest.raises(ModbusExceptionResponse, match="exception 0x02"):
            await link.write(5, 6, [1], timeout_s=1, retries=0)
        assert unit.commanded["dim_level_segment_2"] == 30
    finally:
        await link.close()


@pytest.mark.system
async def test_commands__platform_switches_a_segment_off_and_the_meter_sees_it(
    mosquitto, tmp_path, cabinet
):
    server, unit = cabinet
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=1, units=()
    )
    _gateway, task = await start_gateway(tmp_path, text + cabinet_yaml(server.port))
    readings: list = []
    consumer = BatchConsumer(
        f"mqtt://127.0.0.1:{mosquitto.port}",
        on_batch=lambda d: readings.extend(d.readings),
        report=io.StringIO(),
    )
    consuming = asyncio.create_task(consumer.run())

    def latest(point: str):
        values = [r for r in readings if r.point == point]
        return values[-1] if values else None

    try:
        await wait_until(lambda: latest("relay_segment_1") is not None, 15, what="cabinet data")
        assert latest("relay_segment_1").value is True  # night: automatic mode closed it
        power_before = latest("total_power").value
        async with Platform(mosquitto.port) as platform:
            off = {"device": "cabinet-1", "point": "relay_segment_1", "value": False}
            reply = await platform.send({"id": "r1", "cmd": "write", "args": off}, "r1")
            assert reply == {"id": "r1", "ok": True, "result": off}
            dim = {"device": "cabinet-1", "point": "dim_level_segment_2", "value": 30}
            reply = await platform.send({"id": "d1", "cmd": "write", "args": dim}, "d1")
            assert reply["ok"] and reply["result"]["value"] == 30
            refused = {
                "d2": {**dim, "value": 150},  # outside the device's range
                "r2": {**off, "value": "off"},  # a switch takes true / false
                "r3": {**off, "point": "relay_segment_2"},  # not allow-listed
            }
            codes = {}
            for rid, args in refused.items():
                reply = await platform.send({"id": rid, "cmd": "write", "args": args}, rid)
                codes[rid] = reply["error"]["code"]
            assert codes == {"d2": "bad_args", "r2": "bad_args", "r3": "not_allowed"}
        written_at = time.time_ns() // 1_000_000
        await wait_until(
            lambda: (r := latest("total_power")) is not None and r.ts_ms > written_at + 1500,
            15,
            what="readings after the writes",
        )
        assert latest("relay_segment_1").value is False
        assert latest("dim_level_segment_2").value == 30
        assert latest("total_power").value < power_before * 0.9  # the load went off the meter
        assert unit.writes == 2  # the refused writes never reached the device
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await stop(task)
