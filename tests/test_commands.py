"""Platform commands over a real Mosquitto: answered, refused, never a crash."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from devices import Point, Profile, RegisterType
from edge.config import ConfigError, parse_config
from edge.modbus_adapter import ModbusTcpLink
from edge.poller import DevicePoller
from protocols.modbus import DataType
from simulators import ProfileSimUnit, serve_modbus_tcp
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
        assert reb["ok"] and reb["result"]["series"] == 14  # 2 x (6 points + health)
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
    assert "point 'voltage_l1' is not a writable register" in msg
    assert "commands.writable: no device 'meter-7'" in msg


DIMMER = Profile(
    name="test_dimmer",
    vendor="test",
    model="dimmer",
    points=(
        Point(
            "dim_level",
            0x0010,
            DataType.UINT16,
            "%",
            register_type=RegisterType.HOLDING,
            writable=True,
        ),
        Point("lamp_power", 0x0000, DataType.FLOAT32, "W"),
    ),
)


async def test_poller__write_is_applied_and_read_back(tmp_path):
    unit = ProfileSimUnit(DIMMER, 3, lambda: {"lamp_power": 120.0})
    server = await serve_modbus_tcp([unit])
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=1883,
        sim_port=server.port,
        units=(3,),
        points=None,
    )
    dev = parse_config(text).config.devices[0]
    link = ModbusTcpLink("127.0.0.1", server.port)
    # A poller for the dimmer: the config's profile name is irrelevant to write(); patch it.
    poller = DevicePoller(
        dev.model_copy(update={"profile": "test_dimmer"}), None, link, asyncio.Queue()
    )
    import devices

    devices.profiles()["test_dimmer"] = DIMMER
    try:
        assert await poller.write("dim_level", 40) == 40
        assert unit.writes == 1
        regs = await link.read(3, 3, 0x0010, 1, timeout_s=1, retries=0)
        assert regs == [40]
        with pytest.raises(ValueError, match="not writable"):
            await poller.write("lamp_power", 1.0)
        with pytest.raises(ValueError, match="does not fit"):
            await poller.write("dim_level", 70000)
    finally:
        del devices.profiles()["test_dimmer"]
        await link.close()
        await server.close()
