"""Scale-out: three consumer processes in one MQTT 5 shared subscription group, one killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import gateway_yaml, wait_until
from tests.test_system import start_gateway, stop

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parent.parent


class ConsumerProc:
    def __init__(self, url: str, client_id: str, out: Path) -> None:
        self.url, self.client_id, self.out = url, client_id, out
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        out = open(self.out.with_suffix(f".{self.runs}.jsonl"), "wb")  # noqa: ASYNC230
        err = open(self.out.with_suffix(f".{self.runs}.err"), "wb")  # noqa: ASYNC230
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            "consume",
            "--broker",
            self.url,
            "--share",
            "platform",
            "--client-id",
            self.client_id,
            stdout=out,
            stderr=err,
            cwd=ROOT,
        )
        out.close()
        err.close()

    def lines(self) -> list[dict]:
        rows = []
        for f in sorted(self.out.parent.glob(f"{self.out.stem}.*.jsonl")):
            rows += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        return rows


async def test_shared_group__one_consumer_killed_every_batch_exactly_once_between_them(
    mosquitto, sim_sdm630, tmp_path
):
    consumers = [ConsumerProc(mosquitto.url, f"platform-{i}", tmp_path / f"c{i}") for i in range(3)]
    for c in consumers:
        await c.start()
    await asyncio.sleep(2.0)  # sessions and shared subscriptions in place
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=sim_sdm630.port,
        poll_interval_s=0.2,
    )
    gateway, task = await start_gateway(tmp_path, text)
    await asyncio.sleep(3)
    victim = consumers[1]
    os.kill(victim.proc.pid, signal.SIGKILL)  # mid-stream
    await victim.proc.wait()
    await asyncio.sleep(3)  # its share of the stream waits in its persistent session
    await victim.start()  # the supervisor restarts it under the same client id
    await asyncio.sleep(2)
    gateway.stop_polling()

    def drained() -> bool:
        s = gateway.buffer.sync.stats()
        return gateway.queue.empty() and s.pending_readings == 0 and s.outbox_batches == 0

    await wait_until(drained, 30, what="the gateway to drain")
    accepted = gateway.writer_stats.accepted
    batches = gateway.forwarder.stats.last_seq_acked

    def received() -> set:
        return {
            (r["gateway"], r["seq"], r["device"], r["point"], r["ts_ms"])
            for c in consumers
            for r in c.lines()
        }

    await wait_until(lambda: len(received()) >= accepted, 30, what="the group to catch up")
    await stop(task)
    for c in consumers:
        if c.proc.returncode is None:
            c.proc.send_signal(signal.SIGTERM)
            await c.proc.wait()

    rows = received()
    seqs = {seq for _, seq, *_ in rows}
    assert seqs == set(range(1, batches + 1))  # every batch, no gap
    keys = {(d, p, t) for _, _, d, p, t in rows}
    assert len(keys) == len(rows) == accepted  # every reading exactly once after de-duplication
    per_consumer = [{r["seq"] for r in c.lines()} for c in consumers]
    assert all(per_consumer), "every member took a share of the stream"
    assert victim.runs == 2


@pytest.mark.slow
async def test_consumer__backlog_beyond_its_queue_all_delivered_never_stalls(mosquitto_with):
    """A broker sending more than the consumer queues at once (Mosquitto with
    ``max_inflight_messages 0``, a backlog kept while the consumer was away): aiomqtt must not
    discard messages the consumer then never acknowledges (they would stay in flight at the
    broker, and the session stall until it reconnects)."""
    import aiomqtt

    from protocols.batch import BatchHeader, Point, encode_batch

    broker = mosquitto_with("max_inflight_messages 0")
    args = [sys.executable, "-m", "edge", "consume", "--broker", broker.url]
    args += ["--client-id", "backlog", "--format", "jsonl", "--duration"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = await asyncio.create_subprocess_exec(
        *args, "3", cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    await first.wait()  # the persistent session, then away
    host, port = broker.url.removeprefix("mqtt://").split(":")
    total = 10_500
    t = 1_763_800_000_000
    async with aiomqtt.Client(host, int(port), identifier="pub-backlog") as pub:
        for seq in range(1, total + 1):
            payload = encode_batch(BatchHeader("gw-backlog", seq, 1, t), [Point(1, t + seq, 1.0)])
            await pub.publish("city/v1/hk/gw-backlog/data", payload, qos=1)
    second = await asyncio.create_subprocess_exec(
        *args, "60", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await second.communicate()
    assert len(out.splitlines()) == total
