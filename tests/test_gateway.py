"""Gateway hand-overs: shutdown commits what was read, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

import pytest

from edge.agent.gateway import Gateway
from edge.config import ConfigError, parse_config
from edge.uplink.broker import free_port
from tests.conftest import gateway_yaml, wait_until


async def test_gateway__cancel_during_a_commit_neither_loses_nor_doubles_readings(
    sim_sdm630, tmp_path
):
    # No broker: everything stays in the buffer, so the file shows exactly what was accepted.
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=free_port(),
        sim_port=sim_sdm630.port,
        poll_interval_s=0.1,
        timeout_ms=50,
    )
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 10)
    await wait_until(lambda: gateway.writer_stats.commits >= 2, 10, what="commits")

    # Make the next commit slow on the buffer thread, and cancel the gateway in its middle.
    buf = gateway.buffer.sync
    real_append = buf.append
    in_commit = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_append(rows):
        loop.call_soon_threadsafe(in_commit.set)
        time.sleep(0.5)
        return real_append(rows)

    buf.append = slow_append
    await asyncio.wait_for(in_commit.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    polled = sum(p.stats.readings for p in gateway.pollers)
    db = sqlite3.connect(tmp_path / "b.sqlite")
    rows = db.execute("SELECT series, ts_ms FROM readings").fetchall()
    db.close()
    assert len(rows) == len(set(rows)), "a reading was committed twice"
    assert len(rows) == polled  # and every reading polled before the stop was kept


async def test_gateway__an_endpoint_gets_at_most_its_connection_limit(sim_sdm630, tmp_path):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=free_port(), sim_port=sim_sdm630.port
    )
    limited = text.replace("unit: 1}", "unit: 1, max_connections: 2}").replace(
        "unit: 2}", "unit: 2, max_connections: 2}"
    )
    gateway = Gateway(parse_config(limited, "t.yaml", tmp_path))
    [links] = gateway.links.values()
    assert len(links) == 2 and {id(p.link) for p in gateway.pollers} == {id(x) for x in links}
    for p in gateway.pollers:
        assert len(await p.poll_once()) > 0  # each device on its own connection
    assert all(link.connects == 1 for link in links)
    for link in links:
        await link.close()
    mixed = text.replace("unit: 1}", "unit: 1, max_connections: 2}")
    with pytest.raises(ConfigError, match="allows 2 connection"):
        parse_config(mixed, "t.yaml", tmp_path)


@pytest.mark.slow
async def test_gateway__processing_applies_to_modbus_devices_too(sim_sdm630, tmp_path):
    # No broker: what the processing stage produced stays in the buffer, where we read it.
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=free_port(),
        sim_port=sim_sdm630.port,
        units=(1,),
        poll_interval_s=0.2,
    )
    text += """    processing:
      - {points: [voltage_l1, voltage_l2], window_s: 1, aggregates: [mean, max, count]}
      - {points: [frequency], deadband: 100, heartbeat_s: 3600}
"""
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 10)
    await asyncio.sleep(3.5)
    birth = await gateway.birth()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    db = sqlite3.connect(tmp_path / "b.sqlite")
    rows = db.execute(
        "SELECT s.point, r.ts_ms, r.value FROM readings r JOIN series s ON s.id = r.series"
    ).fetchall()
    db.close()
    points = [p for p, _, _ in rows]
    assert "voltage_l1" not in points and "voltage_l2" not in points  # windows instead
    assert points.count("frequency") == 1  # inside the deadband: only the first went
    assert points.count("voltage_l3") >= 10  # no rule: raw
    counts = [v for p, ts, v in rows if p == "voltage_l1.count"]
    assert len(counts) >= 3 and all(1 <= c <= 6 for c in counts)  # 0.2 s polls in 1 s windows
    assert all(ts % 1000 == 0 for p, ts, _ in rows if p.endswith((".mean", ".max", ".count")))
    names = {(s.point, s.unit) for s in birth.series}
    assert ("voltage_l1.mean", "V") in names and ("voltage_l1.count", "") in names


async def test_gateway__tells_systemd_it_is_ready_and_pings_the_watchdog(
    sim_sdm630, tmp_path, monkeypatch
):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4: a ping every 0.2 s
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=free_port(), sim_port=sim_sdm630.port
    )
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 10)
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(sock.recv(256).decode())
    sock.close()
    assert messages[0] == "READY=1" or messages[1] == "READY=1"
    assert messages.count("WATCHDOG=1") >= 4 and messages[-1] == "STOPPING=1"
