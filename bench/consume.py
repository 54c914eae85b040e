"""Consumer throughput: readings per second decoded and committed into PostgreSQL by one
consumer process, then by two, from batches already in the RabbitMQ quorum queue.

    python bench/consume.py [--gateways 40] [--batches 25] [--series 100] [--samples 10]

Set-up, on 127.0.0.1: PostgreSQL (Debian ``postgresql``, tests/engines.py) and a three-node
RabbitMQ cluster (tests/rabbitmq.py), the queue declared by ``edge broker-setup``. The batches
are what a cabinet sends: ``--gateways`` gateways, each with a birth of ``--series`` float32
series (an SDM630's noisy readings) and ``--batches`` batches of ``--samples`` polls of every
series (so ``series × samples`` readings per batch, 1,000 by default: 100 points every second,
batched every 10 s), encoded by the gateway's own encoder (protocols/batch.py).

Each round publishes every birth and batch to ``amq.topic`` (AMQP with publisher confirms, the
routing keys the MQTT plugin would give) into an empty database, then starts the consumers
(``edge consume --amqp … --store …``) and times from their start until PostgreSQL holds every
reading (start-up included: about one second of a round of tens of seconds). The rounds run
side by side in one run, on the same batches.

Last line: RESULT readings=<per round> one_rps=<n> two_rps=<n> scaling=<two/one>
consumers_for_100k=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols.batch import BatchHeader, Point, encode_batch  # noqa: E402
from protocols.birth import Birth, SeriesInfo  # noqa: E402
from tests.engines import Postgres, postgres_bindir  # noqa: E402
from tests.rabbitmq import RabbitCluster, rabbitmq_bin  # noqa: E402

CITY_READINGS_PER_S = 100_000  # 10,000 cabinets × 100 points every 10 s (issue 20)
PREFIX = "city/v1"


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def make_traffic(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], int]:
    """[(topic, payload)] in publishing order (births first), and the number of readings."""
    rng = random.Random(1)
    out: list[tuple[str, bytes]] = []
    readings = 0
    t0 = 1_764_460_800_000  # 2025-11-30 00:00 UTC
    for g in range(args.gateways):
        gw = f"bench-{g:03d}"
        series = tuple(
            SeriesInfo(sid, "sdm630-1", f"p{sid}", "V", "float32") for sid in range(args.series)
        )
        birth = Birth(gw, "hn", 1, "bench", t0, 0, (), series)
        out.append((f"{PREFIX}/hn/{gw}/birth", birth.encode()))
        base = [rng.uniform(200, 240) for _ in range(args.series)]
        for b in range(args.batches):
            points = []
            for k in range(args.samples):
                ts = t0 + (b * args.samples + k) * 1000
                for sid in range(args.series):
                    points.append(Point(sid, ts, _f32(base[sid] + rng.gauss(0, 0.3))))
            header = BatchHeader(gateway=gw, seq=b, boot=1, created_ms=t0 + b * 10_000)
            out.append((f"{PREFIX}/hn/{gw}/data", encode_batch(header, points)))
            readings += len(points)
    return out, readings


async def publish(url: str, traffic: list[tuple[str, bytes]]) -> None:
    """Publish ``traffic`` to amq.topic; ``url`` carries the password (this client only)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        exchange = await ch.get_exchange("amq.topic", ensure=False)
        pending = []
        for topic, payload in traffic:
            msg = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            pending.append(exchange.publish(msg, routing_key=topic.replace("/", ".")))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


def stored(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM edge.readings").fetchone()[0]


def round_(n: int, pg: Postgres, cluster: RabbitCluster, traffic, readings: int, tmp: Path):
    dsn = pg.new_database()
    urls = [node.amqp_url for node in cluster.nodes]
    asyncio.run(publish(cluster.client_url(1), traffic))
    procs = []
    t0 = time.monotonic()
    for i in range(n):
        amqp: list[str] = []
        for u in urls[i:] + urls[:i]:
            amqp += ["--amqp", u]
        amqp += ["--amqp-password-file", str(cluster.password_file(tmp / "amqp-password"))]
        log = open(tmp / f"consumer-{n}-{i}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge", "consume", *amqp, "--store", dsn],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        while True:
            time.sleep(0.2)
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a consumer exited early; see {tmp}")
            try:
                if stored(dsn) >= readings:
                    break
            except Exception:  # the schema is not there yet
                continue
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return readings / took, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, default=40)
    ap.add_argument("--batches", type=int, default=25)
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--samples", type=int, default=10)
    args = ap.parse_args()
    if postgres_bindir() is None or rabbitmq_bin() is None:
        raise SystemExit("bench/consume.py needs PostgreSQL and RabbitMQ (apt-get install ...)")
    traffic, readings = make_traffic(args)
    size = sum(len(p) for _, p in traffic)
    print(
        f"{len(traffic)} messages ({size / 1e6:.1f} MB), {readings} readings per round, "
        f"{readings / (args.gateways * args.batches):.0f} per batch",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-consume-"))
    tmp.chmod(0o755)  # PostgreSQL runs as its own user under root
    pg = Postgres(postgres_bindir(), tmp / "pg")
    cluster = RabbitCluster(tmp / "rabbit")
    try:
        pg.start()
        cluster.start_all()
        r = cluster.ctl(1, "set_policy", "--apply-to", "exchanges", "edge-unroutable",
                        r"^amq\.topic$", '{"alternate-exchange":"edge.unroutable"}')
        if r.returncode:
            raise SystemExit(f"rabbitmqctl set_policy failed: {r.stdout}{r.stderr}")
        setup = subprocess.run(
            [sys.executable, "-m", "edge", "broker-setup", "--amqp", cluster.node(1).amqp_url,
             "--amqp-password-file", str(cluster.password_file(tmp / "amqp-password"))],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        if setup.returncode:
            raise SystemExit(f"edge broker-setup failed: {setup.stdout}{setup.stderr}")
        one, t1 = round_(1, pg, cluster, traffic, readings, tmp)
        print(f"one consumer: {one:,.0f} readings/s ({t1:.1f} s)", flush=True)
        two, t2 = round_(2, pg, cluster, traffic, readings, tmp)
        print(f"two consumers: {two:,.0f} readings/s ({t2:.1f} s)", flush=True)
    finally:
        cluster.stop_all()
        pg.close()
    need = math.ceil(CITY_READINGS_PER_S / one)
    print(
        f"RESULT readings={readings} one_rps={one:.0f} two_rps={two:.0f} "
        f"scaling={two / one:.2f} consumers_for_100k={need}"
    )


if __name__ == "__main__":
    main()
