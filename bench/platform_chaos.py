"""Platform chaos: gateways, a three-node RabbitMQ cluster, three consumers and PostgreSQL, all
real processes, with a broker node, a consumer and a gateway killed at random moments, until
the numbers say whether a reading or a đồng went astray.

    python bench/platform_chaos.py --cycles 10 [--gateways 3] [--consumers 3] [--seed N]
                                   [--keep DIR]

Set-up (everything on 127.0.0.1, on free ports):

* PostgreSQL (Debian ``postgresql``, tests/engines.py): one database, the store and the ledger;
* RabbitMQ, three nodes in one cluster (Debian ``rabbitmq-server`` with its MQTT plugin,
  tests/rabbitmq.py); ``edge broker-setup`` declares the quorum queue and its bindings before any
  gateway connects;
* ``--gateways`` gateways (``edge run``), each polling its own simulated cabinet
  (bench/soak_devices.py: two Eastron SDM630 and a street-lighting controller over Modbus TCP,
  logging every value they serve) every 0.5 s; gateway ``i`` publishes MQTT to node ``i`` of the
  cluster and fails over to the other two; the first gateway also reads two parking meter links
  (``edge sim-meters``: five meters with durable journals, doing business at simulated speed);
* ``--consumers`` competing consumers (``edge consume --amqp … --store postgresql://…``), each
  connected to its own node first.

Every cycle (``--cycle-s`` seconds of running) kills, each at a random moment in the cycle:

* node      SIGKILL one broker node; it is started again 1-3 s later and rejoins
* consumer  SIGKILL one consumer; it is started again 0.2-1 s later
* gateway   SIGKILL one gateway; it is started again 0.2-1.5 s later (its buffer survives)

At the end the gateways are restarted without devices and the meters without business, each
buffer drains, the queue empties, and PostgreSQL is compared with the truth:

    readings      accepted by the gateways (their buffers' durable counters, across every kill)
    lost          accepted, not evicted by a full buffer, and not in PostgreSQL
    duplicated    readings stored more than once (same gateway, series and time)
    wrong_value   stored with a value the simulated device did not serve for that point within
                  3 s of the reading's time (bit for bit, float64 bits), of ``checked``
    transactions  payments the meters wrote in their journals
    vnd_mismatch  the sum over meters and Hanoi days of |VND in the journals − VND in the
                  ledger's reconciliation|; ``tx_lost`` / ``tx_duplicated`` entries likewise

Last line: RESULT cycles=<n> readings=<n> lost=<n> duplicated=<n> vnd_mismatch=<n>
transactions=<n> tx_lost=<n> tx_duplicated=<n> wrong_value=<n> checked=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from parking_chaos import read_journals  # noqa: E402
from soak import free_port, wait_port  # noqa: E402
from soak_devices import read_served, value_key  # noqa: E402

from edge.platform.ledger import local_day  # noqa: E402
from protocols.meterlink import MsgType, Payment, decode_message  # noqa: E402
from tests.engines import Postgres, postgres_bindir  # noqa: E402
from tests.rabbitmq import RabbitCluster, rabbitmq_bin  # noqa: E402

MATCH_MS = 3000  # a reading's value must have been served within this of its time
LANES = {"lane-1": ["HK-01", "HK-02", "HK-03"], "lane-2": ["BD-01", "BD-02"]}
PREFIX = "city/v1"


def _log(tmp: Path, name: str):
    return open(tmp / name, "a")


class Proc:
    """A child process we start, kill and start again, its output appended to one log."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        self.proc: subprocess.Popen | None = None

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = _log(self.tmp, f"{self.name}.log")
        log.write(f"--- {time.strftime('%T')} start\n")
        log.flush()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = 30) -> int | None:
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return await asyncio.to_thread(p.wait, within_s)
        except subprocess.TimeoutExpired:
            p.kill()
            return await asyncio.to_thread(p.wait, 10)


class Cabinet:
    """One gateway, its simulated devices and (for the first) the parking meter links."""

    def __init__(self, index: int, tmp: Path, harness: Harness) -> None:
        self.index, self.h = index, harness
        self.id = f"gw-{index + 1}"
        self.dir = tmp / self.id
        self.dir.mkdir()
        self.devices_dir = self.dir / "devices"
        self.devices_dir.mkdir()
        self.buffer = self.dir / "buffer.sqlite"
        self.gateway = Proc(f"{self.id}/gateway", tmp)
        self.devices = Proc(f"{self.id}/devices", tmp)
        self.links: list[tuple[str, list[str], int, Proc]] = []
        if index == 0:
            for name, meters in LANES.items():
                self.links.append((name, meters, free_port(), Proc(f"{self.id}/{name}", tmp)))
        self.units: list[tuple[int, str, int]] = []

    async def start_devices(self) -> None:
        self.devices.spawn([sys.executable, "bench/soak_devices.py", str(self.devices_dir)])
        where = self.devices_dir / "devices.json"
        deadline = time.monotonic() + 20
        while not where.exists():
            if time.monotonic() > deadline or not self.devices.alive():
                raise SystemExit(f"the simulated devices of {self.id} did not start")
            await asyncio.sleep(0.05)
        tcp = {int(u): p for u, p in json.loads(where.read_text())["tcp"].items()}
        self.units = [
            (1, "eastron_sdm630", tcp[1]),
            (2, "eastron_sdm630", tcp[2]),
            (3, "street_light_cabinet", tcp[3]),
        ]

    async def start_links(self, business: bool = True) -> None:
        for name, meters, port, proc in self.links:
            cmd = [sys.executable, "-m", "edge", "sim-meters", "--port", str(port)]
            cmd += ["--journal-dir", str(self.dir / "journals"), "--speed", "3600"]
            cmd += ["--seed", str(self.h.args.seed), "--zone", name.upper()]
            for a, m in enumerate(meters, start=1):
                cmd += ["--meter", f"{a}={m}"]
            if not business:
                cmd.append("--no-business")
            proc.spawn(cmd)
            await wait_port(port)

    def config(self, with_devices: bool) -> Path:
        nodes = self.h.cluster.nodes
        first = nodes[self.index % len(nodes)]
        others = [n for n in nodes if n is not first]
        text = f"""gateway: {{id: {self.id}, site: hn}}
buffer: {{path: {self.buffer}, commit_interval_ms: 200}}
mqtt:
  url: {first.mqtt_url}
  failover_urls: [{", ".join(n.mqtt_url for n in others)}]
  batch_max_readings: 500
  batch_max_delay_ms: 1000
  publish_timeout_s: 3
  reconnect_min_s: 0.2
  reconnect_max_s: 2
  stable_after_s: 2
  keepalive_s: 5
status: {{enabled: false}}
devices:
"""
        if with_devices:
            for unit, profile, port in self.units:
                text += (
                    f"  - {{id: {profile}-{unit}, profile: {profile}, poll_interval_s: 0.5, "
                    f"timeout_ms: 300, retries: 0, transport: {{type: modbus_tcp, "
                    f"host: 127.0.0.1, port: {port}, unit: {unit}}}}}\n"
                )
        else:
            text = text.replace("devices:\n", "devices: []\n")
        if self.links:
            buses = "\n".join(
                f"    - id: {name}\n"
                f"      transport: {{type: tcp, host: 127.0.0.1, port: {port}}}\n"
                f"      poll_interval_s: 0.05\n      timeout_ms: 300\n"
                f"      meters: [{', '.join(f'{{id: {m}, address: {a}}}' for a, m in enumerate(meters, 1))}]"  # noqa: E501
                for name, meters, port, _ in self.links
            )
            text += (
                f"parking:\n  key_file: {self.dir / 'gateway.key'}\n"
                f"  max_entries_per_message: 50\n  buses:\n{buses}\n"
            )
        path = self.dir / ("gateway.yaml" if with_devices else "drain.yaml")
        path.write_text(text)
        return path

    def start_gateway(self, with_devices: bool = True) -> None:
        cfg = self.config(with_devices)
        self.gateway.spawn(
            [sys.executable, "-m", "edge", "--log-level", "info", "run", "--config", str(cfg)]
        )

    def left_in_buffer(self) -> int | None:
        """Readings and parking entries the buffer still holds (None if it cannot be read)."""
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                n = db.execute(
                    "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM outbox)"
                ).fetchone()[0]
                if "meter_entries" in tables:
                    n += db.execute("SELECT count(*) FROM meter_entries").fetchone()[0]
                return n
            finally:
                db.close()
        return None

    def counters(self) -> tuple[int, int]:
        """(accepted, evicted): the buffer's durable counters, across every kill."""
        db = sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        finally:
            db.close()
        return int(meta["accepted_total"]), int(meta["evicted_total"])

    def served(self) -> dict[tuple[str, str], tuple[list[int], list[str]]]:
        return read_served(self.devices_dir / "served.log")

    def journals(self) -> dict[str, list[tuple[int, int, bytes, int]]]:
        meters = [m for _, ms, _, _ in self.links for m in ms]
        return read_journals(self.dir / "journals", meters)


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.pg = Postgres(postgres_bindir(), tmp / "pg")
        self.cluster = RabbitCluster(tmp / "rabbit")
        self.cabinets = [Cabinet(i, tmp, self) for i in range(args.gateways)]
        self.consumers = [Proc(f"consumer-{i + 1}", tmp) for i in range(args.consumers)]
        self.kills: Counter[str] = Counter()
        self.timeline: list[str] = []
        self.dsn = ""

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.strftime('%T')} {what}")
        if self.args.verbose:
            print(self.timeline[-1], flush=True)

    def amqp_args(self, first: int) -> list[str]:
        nodes = self.cluster.nodes
        order = nodes[first % len(nodes) :] + nodes[: first % len(nodes)]
        out: list[str] = []
        for n in order:
            out += ["--amqp", n.amqp_url]
        # The URLs hold the user only; the password comes from an owner-only file.
        password = self.cluster.password_file(self.tmp / "amqp-password")
        return [*out, "--amqp-password-file", str(password)]

    def start_consumer(self, i: int) -> None:
        self.consumers[i].spawn(
            [sys.executable, "-m", "edge", "consume", *self.amqp_args(i), "--store", self.dsn]
        )

    # ------------------------------------------------------------------ the faults

    async def kill_node(self) -> None:
        i = self.rng.randrange(len(self.cluster.nodes))
        self.note(f"kill node {i + 1}")
        await asyncio.to_thread(self.cluster.kill, i + 1)
        await asyncio.sleep(self.rng.uniform(1, 3))
        await asyncio.to_thread(self.cluster.start, i + 1)
        self.note(f"node {i + 1} back")
        self.kills["node"] += 1

    async def kill_consumer(self) -> None:
        i = self.rng.randrange(len(self.consumers))
        self.note(f"kill consumer {i + 1}")
        await self.consumers[i].stop(signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        self.start_consumer(i)
        self.kills["consumer"] += 1

    async def kill_gateway(self) -> None:
        cab = self.rng.choice(self.cabinets)
        self.note(f"kill {cab.id}")
        await cab.gateway.stop(signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        cab.start_gateway()
        self.kills["gateway"] += 1

    async def cycle(self, n: int) -> None:
        span = self.args.cycle_s

        async def at_random(fault) -> None:
            await asyncio.sleep(self.rng.uniform(0, span * 0.6))
            await fault()

        self.note(f"cycle {n}")
        await asyncio.gather(
            at_random(self.kill_node), at_random(self.kill_consumer), at_random(self.kill_gateway),
            asyncio.sleep(span),
        )
        for cab in self.cabinets:
            if not cab.gateway.alive():
                raise SystemExit(f"gateway {cab.id} exited by itself; see {self.tmp}")
        for i, c in enumerate(self.consumers):
            if not c.alive():
                raise SystemExit(f"consumer {i + 1} exited by itself; see {self.tmp}")

    # ------------------------------------------------------------------ the run

    async def run(self) -> str:
        await asyncio.to_thread(self.pg.start)
        self.dsn = await asyncio.to_thread(self.pg.new_database)
        t = time.monotonic()
        await asyncio.to_thread(self.cluster.start_all)
        print(f"cluster of three nodes up in {time.monotonic() - t:.0f} s", flush=True)
        await asyncio.to_thread(set_unroutable_policy, self.cluster)
        setup = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "edge", "broker-setup", *self.amqp_args(0)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if setup.returncode != 0:
            raise SystemExit(f"edge broker-setup failed: {setup.stdout}{setup.stderr}")
        for i in range(len(self.consumers)):
            self.start_consumer(i)
        for cab in self.cabinets:
            await cab.start_devices()
            await cab.start_links()
            cab.start_gateway()
        t0 = time.monotonic()
        for n in range(1, self.args.cycles + 1):
            await self.cycle(n)
        # Drain: no more devices or business; every buffer empties; the queue empties.
        self.note("drain")
        for cab in self.cabinets:
            await cab.gateway.stop()
            for _, _, _, proc in cab.links:
                await proc.stop()
            await cab.start_links(business=False)
            cab.start_gateway(with_devices=False)
        drained = await self.drained(240)
        for cab in self.cabinets:
            await cab.gateway.stop()
            await cab.devices.stop()
            for _, _, _, proc in cab.links:
                await proc.stop()
        for c in self.consumers:
            await c.stop()
        ran = time.monotonic() - t0
        if not drained:
            print("warning: not everything was delivered in time", flush=True)
        return await asyncio.to_thread(self.report, ran)

    async def drained(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            left = [cab.left_in_buffer() for cab in self.cabinets]
            if any(n != 0 for n in left):
                continue
            if all(self.journals_acked(cab) for cab in self.cabinets):
                depth = await asyncio.to_thread(queue_depth, self.cluster, "edge.platform")
                if depth == 0:
                    return True
        return False

    @staticmethod
    def journals_acked(cab: Cabinet) -> bool:
        with contextlib.suppress(sqlite3.Error):
            return all(all(a for *_, a in rows) for rows in cab.journals().values())
        return False

    # ------------------------------------------------------------------ the truth

    def report(self, ran_s: float) -> str:
        import psycopg

        from edge.platform.pgledger import PgLedger

        accepted = evicted = 0
        lost = duplicated = wrong = checked = 0
        examples: list[str] = []
        with psycopg.connect(self.dsn) as conn:
            for cab in self.cabinets:
                acc, ev = cab.counters()
                accepted += acc
                evicted += ev
                rows, distinct = conn.execute(
                    "SELECT count(*), count(DISTINCT (sid, ts)) FROM edge.readings r "
                    "JOIN edge.gateways g ON g.id = r.gateway_id WHERE g.gateway = %s",
                    (cab.id,),
                ).fetchone()
                duplicated += rows - distinct
                lost += max(0, acc - distinct - ev)
                served = cab.served()
                for device, point, ts, key in stored_values(conn, cab.id):
                    if (device, point) not in served:
                        continue  # the gateway's own series (_status, _bad_points)
                    times, keys = served[(device, point)]
                    lo = bisect.bisect_left(times, ts - MATCH_MS)
                    hi = bisect.bisect_right(times, ts + MATCH_MS)
                    checked += 1
                    if key not in keys[lo:hi]:
                        wrong += 1
                        if len(examples) < 5:
                            examples.append(f"{cab.id} {device}.{point} at {ts}: {key}")
        tx_lost = tx_dup = transactions = 0
        want: Counter[tuple[str, str]] = Counter()
        ledger = PgLedger(self.dsn)
        try:
            rec = ledger.reconcile()
            for cab in self.cabinets:
                for meter, rows in cab.journals().items():
                    got = {seq: (t, p) for seq, t, p in ledger.entries(meter)}
                    wrote = {seq: (t, p) for seq, t, p, _ in rows}
                    tx_lost += sum(1 for seq, tp in wrote.items() if got.get(seq) != tp)
                    tx_dup += sum(1 for seq in got if seq not in wrote)
                    for t, p in wrote.values():
                        if t == MsgType.PAYMENT:
                            pay = decode_message(t, p)
                            assert isinstance(pay, Payment)
                            transactions += 1
                            want[(meter, local_day(pay.collected_ms))] += pay.amount_vnd
        finally:
            ledger.close()
        tx_dup += sum(m.duplicate_transactions + m.conflicts for m in rec.meters)
        have = Counter({(d.meter, d.day): d.total_vnd for d in rec.days})
        mismatch = sum(abs(want[k] - have[k]) for k in set(want) | set(have))
        print(f"ran {ran_s:.0f} s; kills: {dict(self.kills)}")
        print(
            f"readings accepted {accepted}, evicted {evicted}; values checked {checked}, "
            f"wrong {wrong}; payments {transactions}, {sum(want.values()):,} VND in the journals, "
            f"{rec.total_vnd:,} VND reconciled"
        )
        for e in examples:
            print(f"  wrong value: {e}")
        return (
            f"RESULT cycles={self.args.cycles} readings={accepted} lost={lost} "
            f"duplicated={duplicated} vnd_mismatch={mismatch} transactions={transactions} "
            f"tx_lost={tx_lost} tx_duplicated={tx_dup} wrong_value={wrong} checked={checked}"
        )

    def close(self) -> None:
        for cab in self.cabinets:
            for p in [cab.gateway, cab.devices, *(proc for *_, proc in cab.links)]:
                if p.alive():
                    p.proc.kill()
        for c in self.consumers:
            if c.alive():
                c.proc.kill()
        with contextlib.suppress(Exception):
            self.cluster.stop_all()
        with contextlib.suppress(Exception):
            self.pg.close()


def set_unroutable_policy(cluster: RabbitCluster) -> None:
    """The alternate exchange of amq.topic, set by policy as edge broker-setup asks."""
    r = cluster.ctl(1, "set_policy", "--apply-to", "exchanges", "edge-unroutable",
                    r"^amq\.topic$", '{"alternate-exchange":"edge.unroutable"}')
    if r.returncode:
        raise SystemExit(f"rabbitmqctl set_policy failed: {r.stdout}{r.stderr}")


def queue_depth(cluster: RabbitCluster, queue: str) -> int | None:
    """Messages in ``queue``, ready and unacknowledged (None if no node answers)."""
    for node in cluster.nodes:
        if not node.running:
            continue
        r = cluster.ctl(node.index, "list_queues", "-q", "name", "messages", timeout=30)
        if r.returncode:
            continue
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
    return None


def stored_values(conn, gateway: str):
    """(device, point, ts_ms, value key as bench/soak_devices.py writes it) per stored reading
    the gateway's birth named; a float's key comes from its IEEE word (``bits``), so a NaN's
    payload is compared too."""
    rows = conn.execute(
        "SELECT device, point, ts_ms, type, bits, value_int, value_bool FROM edge.readings_named "
        "WHERE gateway = %s AND device IS NOT NULL",
        (gateway,),
    )
    for device, point, ts_ms, kind, bits, integer, flag in rows:
        if kind == "f32":
            value: float | int = struct.unpack(">f", bytes.fromhex(bits))[0]
        elif kind == "f64":
            value = struct.unpack(">d", bytes.fromhex(bits))[0]
        elif kind in ("i64", "u64"):
            value = int(integer)
        elif kind == "bool":
            value = int(flag)
        else:
            continue  # a str: no device of the cabinet serves one
        yield device, point, ts_ms, value_key(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--cycle-s", type=float, default=10.0, help="seconds each cycle runs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep logs, buffers and journals here")
    args = ap.parse_args()
    if postgres_bindir() is None or rabbitmq_bin() is None:
        raise SystemExit(
            "platform_chaos needs PostgreSQL and RabbitMQ: apt-get install -y postgresql "
            "rabbitmq-server"
        )
    if args.seed is None:
        args.seed = random.randrange(2**32)
    print(f"seed {args.seed}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="edge-platform-chaos-"))
    os.chmod(tmp, 0o755)
    harness = Harness(args, tmp)
    line = ""
    try:
        line = asyncio.run(harness.run())
    finally:
        harness.close()
        clean = all(
            f" {k}=0 " in line for k in ("lost", "duplicated", "vnd_mismatch", "tx_lost")
        )
        if args.keep or not clean:
            keep = Path(args.keep or tempfile.mkdtemp(prefix="edge-platform-chaos-kept-"))
            (tmp / "timeline.txt").write_text("\n".join(harness.timeline) + "\n")
            shutil.copytree(tmp, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("pg"))
            print(f"logs, buffers and journals kept in {keep}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(line, flush=True)


if __name__ == "__main__":
    main()
