"""End to end against a real Mosquitto: simulators -> gateway -> buffer -> MQTT -> consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from edge.agent.gateway import Gateway
from edge.config import parse_config
from edge.platform.consumer import BatchConsumer, Delivery
from protocols.batch import BatchHeader, Point, decode_batch, encode_batch
from protocols.birth import Birth, SeriesInfo
from tests.conftest import Mosquitto, gateway_yaml, mosquitto_binary, password_broker, wait_until

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parent.parent


class Collector:
    """A consumer that keeps every new (de-duplicated) batch."""

    def __init__(self, url: str, client_id: str = "test-consumer") -> None:
        self.batches: list[Delivery] = []
        self.consumer = BatchConsumer(
            url, client_id=client_id, on_batch=self.batches.append, report=open(os.devnull, "w")
        )
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Collector:
        self.task = asyncio.create_task(self.consumer.run())
        await asyncio.wait_for(self.consumer.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.consumer.report.close()

    @property
    def readings(self):
        return [r for b in self.batches for r in b.readings]

    def tally(self, gw: str = "gw-test"):
        return self.consumer.tallies[gw]


async def start_gateway(tmp_path: Path, text: str) -> tuple[Gateway, asyncio.Task]:
    gateway = Gateway(parse_config(text, "test.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 10)
    return gateway, task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drain(gateway: Gateway, col: Collector, within_s: float = 30) -> None:
    """Stop polling, wait until every accepted reading was acknowledged and reached ``col``."""
    gateway.stop_polling()

    def empty() -> bool:
        s = gateway.buffer.sync.stats()
        return (
            gateway.queue.empty()
            and not gateway._holding
            and s.pending_readings == 0
            and s.outbox_batches == 0
        )

    await wait_until(empty, within_s, what="the buffer to drain")
    await wait_until(
        lambda: len(col.readings) >= gateway.writer_stats.accepted,
        20,
        what="the consumer to catch up",
    )


def assert_exactly_once(col: Collector, accepted: int) -> None:
    keys = [(r.device, r.point, r.ts_ms) for r in col.readings]
    assert len(keys) == len(set(keys)), "a reading arrived twice under different batch numbers"
    assert len(keys) == accepted
    assert col.tally().tracker.missing() == []


async def test_pipeline__readings_arrive_decoded_and_equal_to_what_the_simulator_served(
    mosquitto, sim_sdm630, tmp_path
):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port
    )
    async with Collector(mosquitto.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        await wait_until(lambda: len(col.readings) >= 60, 15, what="readings")
        await drain(gateway, col)
        await stop(task)
    assert_exactly_once(col, gateway.writer_stats.accepted)
    for r in col.readings:
        if r.point == "_status":
            assert r.value == "online"
            continue
        if r.point == "_bad_points":
            assert r.value == ""  # every point read
            continue
        unit = sim_sdm630.units[int(r.device.split("-")[1])]
        assert r.value in unit.served(r.point), f"{r} was never served by the simulator"
        if r.point.startswith("voltage"):
            assert 215 < r.value < 245
        if r.point == "frequency":
            assert 49.8 < r.value < 50.2
    # The retained status tells the platform the gateway's state and boot epoch.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
        await c.subscribe("city/v1/test/gw-test/status", qos=1)
        async with asyncio.timeout(5):
            msg = await anext(aiter(c.messages))
    # A cleanly stopped gateway says so itself (the Last Will only covers unclean exits).
    assert json.loads(msg.payload) == {"state": "offline", "gateway": "gw-test", "boot": 1}
    first = col.batches[0].header
    assert first.gateway == "gw-test" and first.seq == 1 and first.boot == 1
    assert col.tally().birth is not None and col.tally().birth.boot == 1


async def test_pipeline__broker_down_10s_then_every_reading_exactly_once(
    mosquitto, sim_sdm630, tmp_path
):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port
    )
    async with Collector(mosquitto.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        await wait_until(lambda: len(col.readings) >= 24, 15, what="first readings")
        mosquitto.stop()
        polled_before = sum(p.stats.readings for p in gateway.pollers)
        await asyncio.sleep(10)
        # Polling went on during the outage and the readings are held in the buffer.
        assert sum(p.stats.readings for p in gateway.pollers) >= polled_before + 2 * 6 * 15
        assert gateway.buffer.sync.stats().pending_readings > 100
        assert not gateway.forwarder.stats.connected
        mosquitto.start()
        await wait_until(lambda: gateway.forwarder.stats.connected, 15, what="reconnect")
        await drain(gateway, col, 30)
        await stop(task)
    assert_exactly_once(col, gateway.writer_stats.accepted)
    seqs = [b.header.seq for b in col.batches]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, and in order


async def test_gateway__sigkill_and_restart_loses_no_committed_reading(
    mosquitto, sim_sdm630, tmp_path
):
    buffer = tmp_path / "b.sqlite"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        gateway_yaml(
            buffer=buffer, broker_port=mosquitto.port, sim_port=sim_sdm630.port, poll_interval_s=0.2
        )
    )

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )

    async with Collector(mosquitto.url) as col:
        proc = spawn()
        try:
            await wait_until(lambda: len(col.readings) >= 100, 20, what="readings before kill")
            # Stall the uplink briefly so the kill lands with readings committed but unsent.
            mosquitto.stop()
            await asyncio.sleep(1.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        # Everything committed at the moment of the kill, read straight from the file.
        db = sqlite3.connect(buffer)
        committed = {
            (d, p, ts)
            for d, p, ts in db.execute(
                "SELECT s.device, s.point, r.ts_ms FROM readings r JOIN series s ON s.id = r.series"
            )
        }
        names = {sid: (d, p) for sid, d, p in db.execute("SELECT id, device, point FROM series")}
        for (payload,) in db.execute("SELECT payload FROM outbox"):
            committed |= {(*names[p.sid], p.ts_ms) for p in decode_batch(payload).points}
        next_seq = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        db.close()
        assert len(committed) > 20, "the kill should leave unsent readings behind"
        highest_before = max(b.header.seq for b in col.batches)
        mosquitto.start()
        proc = spawn()
        try:

            def delivered() -> bool:
                got = {(r.device, r.point, r.ts_ms) for r in col.readings}
                return committed <= got

            await wait_until(delivered, 30, what="the committed readings after restart")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
    assert "Traceback" not in stderr, stderr
    keys = [(r.device, r.point, r.ts_ms) for r in col.readings]
    assert len(keys) == len(set(keys)), "duplicates survived de-duplication by batch number"
    assert col.tally().tracker.missing() == []
    new = [b.header.seq for b in col.batches if b.header.seq >= next_seq]
    assert new and min(new) == next_seq > highest_before  # the sequence continues above
    assert col.tally().duplicates <= 2  # at most the batches in flight at the kill came twice


@pytest.mark.skipif(
    mosquitto_binary() is None and not os.environ.get("EDGE_REQUIRE_MOSQUITTO"),
    reason="no mosquitto binary (apt-get install mosquitto; CI does)",
)
async def test_forwarder__bad_credentials_are_reported_and_readings_accumulate(
    tmp_path, sim_sdm630, caplog
):
    broker = await asyncio.to_thread(password_broker, tmp_path, "gw-test", "right")
    try:
        caplog.set_level(logging.INFO, logger="edge")
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim_sdm630.port,
            extra_mqtt="  username: gw-test\n  password: wrong\n",
        )
        gateway, task = await start_gateway(tmp_path, text)
        await asyncio.sleep(4)
        await stop(task)
    finally:
        broker.stop()
    f = gateway.forwarder.stats
    assert f.connect_failures >= 3 and f.batches_sent == 0  # retried, never delivered
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == "edge.uplink.forwarder"
    ]
    assert len(errors) == 1, errors  # the outage is logged once, not per attempt
    assert "broker refused the connection" in errors[0]
    assert "mqtt.username" in errors[0]  # says what to fix
    assert gateway.writer_stats.accepted > 50  # polling went on into the buffer


class StallRelay:
    """A TCP relay between gateway and broker that can silently stop the broker's replies:
    the connection stays open but PUBACKs stop coming (the case that costs ThingsBoard 85 %)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.stalled = False
        self.held = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src, dst, downstream: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if downstream and self.stalled:
                        self.held += len(data)
                        continue  # swallowed: the gateway never sees the PUBACK
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r1, w2, False), pipe(r2, w1, True))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_forwarder__silent_stall_never_counts_a_batch_delivered(
    mosquitto, sim_sdm630, tmp_path
):
    relay = StallRelay(mosquitto.port)
    await relay.start()
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=relay.port, sim_port=sim_sdm630.port
    )
    async with Collector(mosquitto.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 3, 15, what="batches")
        relay.stalled = True
        sent_before = gateway.forwarder.stats.batches_sent
        await asyncio.sleep(6)  # publish_timeout_s is 2: several sessions time out meanwhile
        assert relay.held > 0
        assert gateway.forwarder.stats.batches_sent == sent_before  # nothing counted delivered
        assert gateway.forwarder.stats.publish_failures >= 1
        relay.stalled = False
        await drain(gateway, col, 30)
        await stop(task)
    await relay.close()
    # The broker did receive the stalled batches (only the acks were lost), so the re-sent
    # copies are duplicates by number, and de-duplication leaves every reading exactly once.
    assert col.tally().duplicates >= 1
    assert_exactly_once(col, gateway.writer_stats.accepted)


async def test_consume_cli__prints_readings_and_reports_duplicates_and_gaps(mosquitto):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "consume",
        "--broker",
        mosquitto.url,
        "--duration",
        "6",
        "--client-id",
        "cli-test",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    # Wait for its subscription (a persistent session), then publish seq 1, 2, 2, 4 and junk.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
        await asyncio.sleep(2)
        birth = Birth(
            "gw-x", "s", 1, "test", 0, 1, (), (SeriesInfo(7, "m", "voltage", "V", "float32"),)
        )
        await c.publish("city/v1/s/gw-x/birth", birth.encode(), qos=1, retain=True)
        for seq in (1, 2, 2, 4):
            payload = encode_batch(
                BatchHeader("gw-x", seq, 1, 0), [Point(7, 1000 + seq, 230.0 + seq)]
            )
            await c.publish("city/v1/s/gw-x/data", payload, qos=1)
        await c.publish("city/v1/s/gw-x/data", msgpack.packb({"v": 1}), qos=1)
        broken = bytearray(encode_batch(BatchHeader("gw-x", 5, 1, 0), [Point(7, 9, 1.0)]))
        broken[-3] ^= 0xFF  # the header decodes, the compressed body does not
        await c.publish("city/v1/s/gw-x/data", bytes(broken), qos=1)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert [(x["seq"], x["value"]) for x in lines] == [(1, 231.0), (2, 232.0), (4, 234.0)]
    assert lines[0] == {
        "gateway": "gw-x",
        "seq": 1,
        "device": "m",
        "point": "voltage",
        "ts_ms": 1001,
        "value": 231.0,
    }
    text = err.decode()
    assert "duplicate batch 2" in text
    assert "missing batch 3 (got 4)" in text
    assert "bad batch" in text
    assert "(gateway gw-x, batch 5)" in text  # a broken body is still named
    assert "missing: 3" in text  # the summary still lists the gap


def test_demo__runs_and_prints_plausible_values():
    res = subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--duration", "6", "--jsonl"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    rows = [r for r in lines if "device" in r]
    entries = [r for r in lines if "meter" in r]  # the parking meters' journal entries
    assert {"session_start", "status"} <= {e["type"] for e in entries}, entries[:3]
    assert all(e["seq"] >= 1 and e["site"] == "hoan-kiem" for e in entries)
    volts = [r["value"] for r in rows if r["point"] in ("voltage_l1", "voltage")]
    hz = [r["value"] for r in rows if r["point"] == "frequency"]
    assert len(volts) >= 6 and all(215 < v < 245 for v in volts)
    assert len(hz) >= 6 and all(49.8 < f < 50.2 for f in hz)
    co2 = [r["value"] for r in rows if r["device"] == "kiosk-co2" and r["point"] == "co2"]
    assert co2 and all(400 <= v <= 1500 for v in co2)  # a library profile, simulated from data
    assert "missing: none" in res.stderr


async def test_forwarder__backlog_drains_at_its_rate_while_fresh_data_goes_first(
    mosquitto, sim_sdm630, tmp_path
):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=sim_sdm630.port,
        poll_interval_s=0.2,
    )
    text = text.replace(
        "batch_max_readings: 200",
        "batch_max_readings: 24\n  drain_max_batches_per_s: 2\n  max_inflight_batches: 2",
    )
    async with Collector(mosquitto.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        loop = asyncio.get_running_loop()
        sealed: list[tuple[float, str]] = []  # the forwarder's schedule: (time, part)
        real_seal = gateway.buffer.seal

        async def seal(*args, **kw):
            batch = await real_seal(*args, **kw)
            if batch is not None:
                sealed.append((loop.time(), args[3] if len(args) > 3 else kw.get("part", "any")))
            return batch

        gateway.buffer.seal = seal
        await wait_until(lambda: len(col.readings) >= 24, 15, what="first readings")
        mosquitto.stop()
        await asyncio.sleep(6)
        assert gateway.buffer.sync.pending() >= 200  # ~6 s x 2 meters x 6 points x 5 polls/s
        mosquitto.start()
        await wait_until(lambda: gateway.forwarder.stats.connected, 15, what="reconnect")
        back_at = loop.time()
        await asyncio.sleep(3)  # polling goes on while the backlog drains
        await drain(gateway, col, 60)
        await stop(task)
    after = [(t, part) for t, part in sealed if t >= back_at - 0.5]
    live = [t for t, part in after if part == "live"]
    backlog = [t for t, part in after if part == "backlog"]
    assert len(backlog) >= 8  # the outage's readings went out as backlog batches
    # Fresh data kept flowing while the backlog drained...
    assert sum(1 for t in live if t < backlog[-1]) >= 3, (live, backlog)
    # ...and the backlog drained no faster than 2 batches/s.
    assert backlog[-1] - backlog[0] >= (len(backlog) - 1) / 2.0 * 0.95
    assert_exactly_once(col, gateway.writer_stats.accepted)


@pytest.mark.skipif(
    mosquitto_binary() is None and not os.environ.get("EDGE_REQUIRE_MOSQUITTO"),
    reason="no mosquitto binary (apt-get install mosquitto; CI does)",
)
async def test_forwarder__broker_refusing_a_batch_size_leads_to_smaller_batches(tmp_path, caplog):
    """The gateway allows 256 KiB batches; the broker only 1500-byte packets and drops the
    connection on a bigger one. The batch is split (same seq), later ones are smaller, and the
    consumer gets every reading exactly once: no endless re-send of the same batch. (MQTT 3.1.1,
    where the broker cannot announce its limit; MQTT 5: tests/test_mqtt_limits.py.)"""
    from edge.profiles import get_profile
    from simulators import EnergyMeterModel, ProfileSimUnit, serve_modbus_tcp

    # Meters whose registers change on every read, so batches do not compress to nothing.
    profile = get_profile("eastron_sdm630")
    sim = await serve_modbus_tcp(
        [ProfileSimUnit(profile, u, EnergyMeterModel(seed=u, cycle_s=0.001).sample) for u in (1, 2)]
    )
    sim_sdm630 = sim
    broker = Mosquitto(tmp_path / "mq", extra=("max_packet_size 1500",))
    broker.start()
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim_sdm630.port,
            poll_interval_s=0.05,
            timeout_ms=25,
            extra_mqtt='  protocol_version: "3.1.1"',
        )
        # About 1,900 readings per batch: some 3 KB even in format v1.
        text = text.replace("batch_max_delay_ms: 300", "batch_max_delay_ms: 8000").replace(
            "batch_max_readings: 200", "batch_max_readings: 100000"
        )
        async with Collector(broker.url) as col:
            gateway, task = await start_gateway(tmp_path, text)
            birth = (await gateway.birth()).encode()
            assert len(birth) < 1400  # the birth itself fits the broker's limit
            await wait_until(
                lambda: gateway.forwarder.stats.split_batches >= 1,
                60,
                what="the refused batch to be split",
            )
            await wait_until(
                lambda: gateway.forwarder.stats.batches_sent >= 3,
                30,
                what="batches getting through",
            )
            await drain(gateway, col, 60)
            await stop(task)
        assert_exactly_once(col, gateway.writer_stats.accepted)
        assert any(b.header.part for b in col.batches)  # the split parts kept their seq
        assert any("Split it in two" in r.getMessage() for r in caplog.records)
        assert gateway.forwarder._max_bytes < 1500
    finally:
        broker.stop()
        await sim.close()
