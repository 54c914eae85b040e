"""Bytes on the wire per reading: our batch format v0 against ThingsBoard gateway JSON.

Runs the demo cabinet (configs/demo.yaml: 3 simulated meters, 88 points every 2 s) through the
real gateway and the embedded broker for --seconds, captures every data payload the broker
delivered, and sizes the same readings in ThingsBoard IoT Gateway's telemetry format
(one message per device per send: {"<device>": [{"ts": ms, "values": {...}}]}, see
../shared/reference/peer-thingsboard-gateway.md §3), side by side in one run.

    python bench/wire_bytes.py --seconds 30

Last line: RESULT readings=<n> v0_bytes_per_reading=<n> tb_json_bytes_per_reading=<n> ratio=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import aiomqtt

from edge.broker import EmbeddedBroker
from edge.config import load_config
from edge.demo import simulate_cabinet
from edge.gateway import Gateway
from protocols.batch import decode_batch

ROOT = Path(__file__).resolve().parent.parent


def thingsboard_bytes(readings) -> int:
    """Size of the same readings as ThingsBoard gateway telemetry messages."""
    per_device_ts: dict[tuple[str, int], dict[str, object]] = defaultdict(dict)
    for r in readings:
        per_device_ts[(r.device, r.ts_ms)][r.point] = r.value
    total = 0
    for (device, ts), values in per_device_ts.items():
        total += len(json.dumps({device: [{"ts": ts, "values": values}]}).encode())
    return total


async def main(seconds: float) -> None:
    loaded = load_config(ROOT / "configs/demo.yaml")
    broker = await EmbeddedBroker().start()
    with tempfile.TemporaryDirectory() as tmp:
        cabinet = await simulate_cabinet(
            loaded,
            broker_url=broker.url,
            buffer_path=Path(tmp) / "b.sqlite",
            batch_max_delay_ms=10_000,
            batch_max_readings=2000,
        )
        payloads: list[bytes] = []

        async def collect() -> None:
            async with aiomqtt.Client(broker.host, broker.port) as c:
                await c.subscribe("city/+/+/+/data", qos=1)
                async for msg in c.messages:
                    payloads.append(bytes(msg.payload))

        consumer = asyncio.create_task(collect())
        await asyncio.sleep(0.5)
        gateway = Gateway(cabinet.loaded)
        gw_task = asyncio.create_task(gateway.run())
        await asyncio.sleep(seconds)
        gw_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gw_task
        await asyncio.sleep(0.5)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await cabinet.close()
    await broker.stop()

    readings = [r for p in payloads for r in decode_batch(p).readings]
    v0 = sum(len(p) for p in payloads)
    tb = thingsboard_bytes(readings)
    n = len(readings)
    print(f"batches={len(payloads)} readings={n} v0_bytes={v0} tb_json_bytes={tb}")
    print(
        f"RESULT readings={n} v0_bytes_per_reading={v0 / n:.2f} "
        f"tb_json_bytes_per_reading={tb / n:.2f} ratio={tb / v0:.2f}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    asyncio.run(main(ap.parse_args().seconds))
