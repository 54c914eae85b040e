"""A broker that will not take everything: packet limits, negative PUBACKs, no MQTT 5 (issue 15,
case 10). Real Mosquitto (MQTT 5) and the embedded amqtt broker (3.1.1 only) on free ports.

What Mosquitto 2.0.11 was measured to do is in edge/uplink/client.py's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import ConfigError, parse_config
from edge.platform.consumer import BatchConsumer
from edge.profiles import get_profile
from edge.uplink.broker import EmbeddedBroker
from edge.uplink.client import publish_overhead
from protocols.batch import BatchHeader, Point, encode_batch
from protocols.birth import (
    Birth,
    BirthTooLarge,
    SeriesInfo,
    birth_part,
    join_birth_parts,
    split_birth,
)
from simulators import EnergyMeterModel, ProfileSimUnit, serve_modbus_tcp
from tests.conftest import gateway_yaml, wait_until
from tests.test_system import Collector, assert_exactly_once, drain, start_gateway, stop

LIMIT = 1500  # the broker's packet limit in these tests, bytes
DATA = "city/v1/test/gw-test/data"


# ---------------------------------------------------------------- birth parts (pure)


def _birth(n_devices: int, n_series: int, extra: dict | None = None) -> Birth:
    devices = tuple(
        {"id": f"meter-{i}", "profile": "eastron_sdm630", "endpoint": "tcp:10.0.0.7:502"}
        for i in range(n_devices)
    )
    series = tuple(
        SeriesInfo(sid, f"meter-{sid % max(1, n_devices)}", f"point_{sid}", "V", "float32")
        for sid in range(1, n_series + 1)
    )
    return Birth("gw-1", "hk", 3, "hanoi-edge 1.0", 1_763_800_000_000, 42, devices, series,
                 extra or {})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    n_devices=st.integers(0, 12),
    n_series=st.integers(0, 300),
    limit=st.integers(420, 5000),
    signed=st.booleans(),
)
def test_birth__parts_each_fit_the_limit_and_join_back_to_the_same_birth(
    n_devices, n_series, limit, signed
):
    extra = {"signing_key": {"alg": "ed25519", "public": "A" * 44}} if signed else None
    birth = _birth(n_devices, n_series, extra)
    payloads = split_birth(birth, limit)
    assert all(len(p) <= limit for p in payloads)
    if len(birth.encode()) <= limit:
        assert payloads == [birth.encode()]  # a birth that fits is sent whole, unchanged
        return
    parts = [Birth.decode(p) for p in payloads]  # each part is a version-1 birth
    infos = [birth_part(p) for p in parts]
    assert [i.index for i in infos] == list(range(1, len(parts) + 1))
    assert {i.count for i in infos} == {len(parts)} and len({i.id for i in infos}) == 1
    assert join_birth_parts(reversed(parts)) == birth
    assert join_birth_parts(reversed(parts)).encode() == birth.encode()


def test_birth__a_limit_below_one_entry_is_an_error_naming_size_and_limit():
    birth = _birth(1, 50)
    with pytest.raises(BirthTooLarge) as err:
        split_birth(birth, 150)
    assert err.value.size == len(birth.encode()) and err.value.limit == 150
    text = str(err.value)
    assert f"({len(birth.encode())} bytes)" in text and "parts of 150 bytes" in text


def test_consumer__birth_parts_name_readings_once_all_arrived_in_any_order():
    birth = _birth(2, 120)
    payloads = split_birth(birth, 1200)
    assert len(payloads) >= 3
    stale = split_birth(_birth(2, 119), 1200)[1]  # a part of an older birth, still retained
    consumer = BatchConsumer("mqtt://127.0.0.1:1", report=open(os.devnull, "w"))
    topic = "city/v1/hk/gw-1/birth"
    consumer.handle(f"{topic}/2", stale)
    for k in range(len(payloads), 1, -1):  # parts 2..n first, in reverse
        consumer.handle(f"{topic}/{k}", payloads[k - 1])
    header = BatchHeader("gw-1", 1, 3, 1_763_800_000_000, 0)
    batch = encode_batch(header, [Point(120, 1_763_800_000_000, 230.5)])
    early = consumer.handle("city/v1/hk/gw-1/data", batch)
    assert early is not None and early.readings[0].device == "?"  # part 1 not there yet
    consumer.handle(topic, payloads[0])
    assert consumer.tallies["gw-1"].birth == birth
    header2 = BatchHeader("gw-1", 2, 3, 1_763_800_001_000, 0)
    batch2 = encode_batch(header2, [Point(120, 1_763_800_001_000, 230.6)])
    late = consumer.handle("city/v1/hk/gw-1/data", batch2)
    assert late is not None
    assert (late.readings[0].device, late.readings[0].point) == ("meter-0", "point_120")
    assert consumer.handle(f"{topic}/7", b"") is None  # a deleted retained part is no message
    assert consumer.bad_payloads == 0


def test_config__mqtt_protocol_version_and_max_packet_bytes(tmp_path):
    def mqtt(lines: str):
        text = gateway_yaml(buffer=tmp_path / "b.sqlite", broker_port=1883, sim_port=502)
        return parse_config(text.replace("  keepalive_s: 5\n", "  keepalive_s: 5\n" + lines),
                            "gw.yaml", tmp_path).config.mqtt  # fmt: skip

    assert mqtt("").protocol_version == "auto" and mqtt("").max_packet_bytes is None
    assert mqtt("  protocol_version: 5\n").protocol_version == "5"
    assert mqtt('  protocol_version: "3.1.1"\n').protocol_version == "3.1.1"
    assert mqtt("  max_packet_bytes: 1500\n").max_packet_bytes == 1500
    with pytest.raises(ConfigError) as err:
        mqtt("  protocol_version: 4\n")
    assert "gw.yaml:" in str(err.value) and "protocol_version must be auto, 5 or" in str(err.value)
    with pytest.raises(ConfigError):
        mqtt("  max_packet_bytes: 100\n")


# ---------------------------------------------------------------- against real brokers


class Recorder:
    """Every message the gateway publishes, as (topic, payload bytes), from a raw subscriber."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, int]] = []
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        while True:  # across broker restarts
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", self.port) as c:
                    await c.subscribe("city/v1/#", qos=1)
                    self.ready.set()
                    async for msg in c.messages:
                        self.messages.append((str(msg.topic), len(bytes(msg.payload or b""))))
            await asyncio.sleep(0.2)

    async def __aenter__(self) -> Recorder:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def sizes(self, suffix: str) -> list[int]:
        return [n for t, n in self.messages if t.endswith(suffix)]


async def noisy_meters(units: tuple[int, ...] = (1,)):
    """SDM630s whose registers change on every read, so batches do not compress to nothing."""
    profile = get_profile("eastron_sdm630")
    return await serve_modbus_tcp(
        [ProfileSimUnit(profile, u, EnergyMeterModel(seed=u, cycle_s=0.001).sample) for u in units]
    )


def errors(caplog, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and all(w in r.getMessage() for w in words)
    ]


def assert_named(col: Collector) -> None:
    assert col.readings
    unnamed = [r for r in col.readings if r.device == "?"]
    assert not unnamed, f"{len(unnamed)} readings without a name, e.g. {unnamed[0]}"


@pytest.mark.system
async def test_forwarder__packet_limit_below_the_birth_sends_it_in_parts_and_data_flows(
    mosquitto_with, sim_sdm630, tmp_path, caplog
):
    """Mosquitto's max_packet_size (1500) is below the birth of one SDM630 with all its points
    (about 3.3 kB): the birth goes out in parts, the consumer joins them and names every
    reading, an ERROR names the limit and the size, and the session is never broken."""
    caplog.set_level(logging.INFO)
    broker = mosquitto_with(f"max_packet_size {LIMIT}")
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=broker.port,
        sim_port=sim_sdm630.port,
        units=(1,),
        points=None,
    )
    async with Recorder(broker.port) as rec, Collector(broker.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        birth = (await gateway.birth()).encode()
        assert len(birth) > 2 * LIMIT  # the case: the birth cannot go whole
        await wait_until(lambda: len(col.readings) >= 100, 20, what="readings")
        await drain(gateway, col)
        await stop(task)
    stats = gateway.forwarder.stats
    assert stats.protocol == "5" and stats.max_packet_bytes == LIMIT
    assert stats.sessions == 1 and stats.connect_failures == 0  # no reconnect loop
    assert stats.birth_parts >= 3
    tally = col.tally()
    assert tally.birth is not None and len(tally.birth.series) == len(Birth.decode(birth).series)
    assert_named(col)
    assert_exactly_once(col, gateway.writer_stats.accepted)
    sent = rec.sizes("/birth") + [n for t, n in rec.messages if "/birth/" in t]
    assert len(sent) >= 3
    assert max(sent) <= LIMIT - publish_overhead("city/v1/test/gw-test/birth/99999", v5=True)
    logged = errors(caplog, f"the birth is {len(birth)} bytes", "Maximum Packet Size")
    assert len(logged) == 1, logged  # once, naming the size and the limit


@pytest.mark.system
@pytest.mark.slow
async def test_forwarder__mqtt5_packet_limit_below_a_batch_keeps_every_batch_under_it(
    mosquitto_with, tmp_path
):
    """Batches of thousands of readings (some 3 kB and more) against max_packet_size 1500 over
    MQTT 5: every batch is sealed under the CONNACK's limit, none is refused, the session is
    never broken, and every reading arrives once."""
    broker = mosquitto_with(f"max_packet_size {LIMIT}")
    sim = await noisy_meters((1, 2))
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim.port,
            poll_interval_s=0.05,
            timeout_ms=25,
            points=None,
        )
        text = text.replace("batch_max_delay_ms: 300", "batch_max_delay_ms: 3000").replace(
            "batch_max_readings: 200", "batch_max_readings: 100000"
        )
        async with Recorder(broker.port) as rec, Collector(broker.url) as col:
            gateway, task = await start_gateway(tmp_path, text)
            await wait_until(lambda: len(col.batches) >= 4, 40, what="batches")
            await drain(gateway, col, 60)
            await stop(task)
        stats = gateway.forwarder.stats
        assert stats.sessions == 1 and stats.connect_failures == 0
        assert stats.refused == {}
        sizes = rec.sizes("/data")
        assert max(sizes) <= LIMIT - publish_overhead(DATA, v5=True)
        assert max(sizes) > LIMIT * 0.6  # cut to the limit, not to something tiny
        assert_exactly_once(col, gateway.writer_stats.accepted)
    finally:
        await sim.close()


@pytest.mark.system
@pytest.mark.slow
async def test_forwarder__puback_packet_too_large_is_not_a_delivery_and_the_batch_is_split(
    mosquitto_with, tmp_path, caplog
):
    """Mosquitto's message_size_limit announces nothing in the CONNACK; a larger QoS 1 message
    is dropped and acknowledged with PUBACK 0x95 (MQTT 5; a plain PUBACK under 3.1.1, where it
    is lost silently). The batch stays in the buffer, is split until its parts fit, every
    refusal is counted, and every reading arrives exactly once, without a reconnect."""
    caplog.set_level(logging.INFO)
    broker = mosquitto_with(f"message_size_limit {LIMIT}")
    sim = await noisy_meters((1, 2))
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim.port,
            poll_interval_s=0.05,
            timeout_ms=25,
            points=None,
        )
        text = text.replace("batch_max_delay_ms: 300", "batch_max_delay_ms: 3000").replace(
            "batch_max_readings: 200", "batch_max_readings: 100000"
        )
        async with Recorder(broker.port) as rec, Collector(broker.url) as col:
            gateway, task = await start_gateway(tmp_path, text)
            await wait_until(lambda: gateway.forwarder.stats.split_batches >= 1, 30, what="a split")
            await wait_until(lambda: len(col.batches) >= 4, 40, what="batches")
            await drain(gateway, col, 60)
            await stop(task)
        stats = gateway.forwarder.stats
        assert stats.max_packet_bytes is None  # nothing announced: learned from the refusals
        assert stats.refused.get("0x95 packet too large", 0) >= 1
        assert stats.sessions == 1 and stats.connect_failures == 0
        assert max(rec.sizes("/data")) <= LIMIT  # the broker forwarded only what it took
        assert any(b.header.part for b in col.batches)  # split parts kept their seq
        assert_exactly_once(col, gateway.writer_stats.accepted)
        assert errors(caplog, "split in two", "0x95 packet too large")
    finally:
        await sim.close()


@pytest.mark.system
@pytest.mark.slow
async def test_forwarder__puback_not_authorized_keeps_the_batch_until_the_broker_allows_it(
    mosquitto_with, sim_sdm630, tmp_path, caplog
):
    """An ACL that denies the data topic: Mosquitto answers PUBACK 0x87 (MQTT 5). No batch is
    deleted as delivered; the refusal is counted and logged at ERROR once; once the ACL allows
    the topic (SIGHUP) every reading arrives exactly once and the recovery is logged."""
    caplog.set_level(logging.INFO)
    base = "city/v1/test/gw-test"
    acl = tmp_path / "acl"
    allowed = f"topic read #\ntopic readwrite {base}/status\ntopic readwrite {base}/birth\n"
    acl.write_text(allowed)
    broker = mosquitto_with(f"acl_file {acl}")
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=broker.port, sim_port=sim_sdm630.port
    )
    async with Collector(broker.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        stats = gateway.forwarder.stats
        await wait_until(lambda: gateway.writer_stats.accepted >= 40, 20, what="readings")
        await asyncio.sleep(3)  # some ten batch delays
        assert stats.batches_sent == 0 and col.batches == []  # nothing taken for delivered
        assert gateway.buffer.sync.stats().outbox_batches >= 1  # kept, not deleted
        assert stats.refused.get("0x87 not authorized", 0) >= 2  # each refusal counted
        if gateway.status_page is not None:  # and shown (its port may be taken on a dev box)
            metrics = await gateway.status_page.metrics()
            assert 'edge_uplink_refused_total{reason="0x87 not authorized"}' in metrics
        assert len(errors(caplog, "0x87 not authorized", f"{base}/data")) == 1
        acl.write_text(allowed + f"topic write {base}/data\n")
        broker.reload()
        await wait_until(lambda: len(col.readings) >= 40, 30, what="readings after the ACL")
        await drain(gateway, col)
        await stop(task)
    assert_exactly_once(col, gateway.writer_stats.accepted)
    assert stats.sessions == 1
    assert any(f"takes messages on {base}/data again" in r.getMessage() for r in caplog.records)
    assert len(errors(caplog, "0x87 not authorized")) == 1


@pytest.mark.system
async def test_forwarder__broker_without_mqtt5_falls_back_to_3_1_1_with_one_warning(
    sim_sdm630, tmp_path, caplog
):
    """The embedded amqtt broker speaks only MQTT 3.1.1 (CONNACK 0x84 to MQTT 5): one WARNING
    says so and names the risk, data flows over 3.1.1, and mqtt.max_packet_bytes keeps every
    message (the birth in parts) under the configured limit. A reconnect does not log again."""
    caplog.set_level(logging.INFO)
    broker = await EmbeddedBroker().start()
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim_sdm630.port,
            units=(1,),
            points=None,
            extra_mqtt=f"  max_packet_bytes: {LIMIT}",
        )
        async with Recorder(broker.port) as rec, Collector(broker.url) as col:
            gateway, task = await start_gateway(tmp_path, text)
            await wait_until(lambda: len(col.readings) >= 40, 20, what="readings")
            await broker.stop()  # a reconnect: 3.1.1 is remembered
            await broker.start()
            await wait_until(
                lambda: gateway.forwarder.stats.sessions >= 2, 20, what="a second session"
            )
            before = len(col.readings)
            await wait_until(lambda: len(col.readings) >= before + 40, 20, what="more readings")
            await stop(task)
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "does not speak MQTT 5" in r.getMessage()
        ]
        assert len(warned) == 1, warned
        assert "mqtt.max_packet_bytes" in warned[0] and "acknowledged like a delivered" in warned[0]
        stats = gateway.forwarder.stats
        assert stats.protocol == "3.1.1" and stats.max_packet_bytes == LIMIT
        assert stats.birth_parts >= 3
        assert max(n for t, n in rec.messages) <= LIMIT
        assert_named(col)
        assert len({(r.device, r.point, r.ts_ms) for r in col.readings}) == len(col.readings)
    finally:
        await broker.stop()


@pytest.mark.system
@pytest.mark.slow
async def test_forwarder__mqtt311_broker_that_hangs_up_on_the_birth_gets_it_in_parts(
    mosquitto_with, sim_sdm630, tmp_path, caplog
):
    """Over MQTT 3.1.1 a broker cannot announce its limit; Mosquitto closes the connection on a
    packet over max_packet_size. A birth in flight at three such breaks in a row goes out in
    parts from then on (ERROR naming its size), and data flows: no endless reconnect loop."""
    caplog.set_level(logging.INFO)
    broker = mosquitto_with(f"max_packet_size {LIMIT}")
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=broker.port,
        sim_port=sim_sdm630.port,
        units=(1,),
        points=None,
        extra_mqtt='  protocol_version: "3.1.1"',
    )
    async with Collector(broker.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        await wait_until(lambda: len(col.readings) >= 40, 45, what="readings")
        await drain(gateway, col)
        await stop(task)
    stats = gateway.forwarder.stats
    assert stats.protocol == "3.1.1" and stats.birth_parts >= 2
    assert errors(caplog, "the birth (", "in flight when 3 sessions in a row broke")
    assert_named(col)
    assert_exactly_once(col, gateway.writer_stats.accepted)


class _SwallowFirstConnect:
    """A TCP relay to the broker that lets the first connection's CONNECT go unanswered (a broker
    that was slow once) and relays every later connection; ``cut()`` drops the live ones."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.accepted = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.add(w)
        if self.accepted == 1:
            with contextlib.suppress(OSError):
                while await r.read(4096):
                    pass  # swallowed: no CONNACK ever
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers.add(uw)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut(self) -> None:
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.mark.system
async def test_forwarder__a_v5_broker_silent_once_is_tried_again_on_mqtt5(
    mosquitto, sim_sdm630, tmp_path, caplog, monkeypatch
):
    """A CONNECT that got no answer is not proof the broker lacks MQTT 5: after the fallback the
    gateway tries MQTT 5 again (every RETRY_V5_AFTER_SILENCE_S; shortened here) and stays on it,
    so the broker's refusals are seen again. One WARNING, not one per attempt."""
    import edge.uplink.forwarder

    monkeypatch.setattr(edge.uplink.forwarder, "RETRY_V5_AFTER_SILENCE_S", 1.0)
    caplog.set_level(logging.INFO)
    relay = _SwallowFirstConnect(mosquitto.port)
    port = await relay.start()
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite", broker_port=port, sim_port=sim_sdm630.port, units=(1,)
        )
        async with Collector(mosquitto.url) as col:
            gateway, task = await start_gateway(tmp_path, text)
            stats = gateway.forwarder.stats
            await wait_until(lambda: stats.protocol == "3.1.1", 20, what="the fallback")
            await wait_until(lambda: len(col.readings) >= 10, 20, what="readings over 3.1.1")
            await asyncio.sleep(1.2)  # the retry time passes
            relay.cut()  # a reconnect
            await wait_until(lambda: stats.protocol == "5", 20, what="MQTT 5 again")
            before = len(col.readings)
            await wait_until(lambda: len(col.readings) >= before + 10, 20, what="readings on 5")
            await stop(task)
        warned = [r for r in caplog.records if "does not speak MQTT 5" in r.getMessage()]
        assert len(warned) == 1 and "tried again" in warned[0].getMessage()
    finally:
        await relay.close()
