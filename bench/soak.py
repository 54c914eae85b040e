"""Fault harness: a simulated cabinet, the gateway as a process, a real Mosquitto, a recording
consumer, and faults injected at random until the numbers say whether anything was lost.

    python bench/soak.py --cycles 100 [--seed N]

Per cycle one fault, chosen at random, then a short spell of normal running:

* kill       SIGKILL the gateway, restart it after 0.2-1.5 s
* broker     stop Mosquitto (it saves its persistence) for 1-3 s, start it again
* partition  the TCP relay between gateway and broker cuts every connection and refuses new
             ones for 1-4 s
* stall      the relay keeps the connections open but forwards nothing either way for 3-6 s
             (no PUBACK ever comes: the case where a peer lost 85 % of the readings)
* clock      the gateway's clock jumps by an hour to a year, either way, unsynchronised, for
             1-3 s, then NTP sets it right (readings of the jump are held, then corrected)
* full       (every tenth cycle) the buffer is capped at 1 MiB, its minimum, and the devices
             are polled ten times as fast while a partition lasts 12 s: that fills it, and the
             full policy evicts the oldest telemetry and counts it

At the end the devices are removed from the config and the gateway drains its buffer; then
the consumer's record is compared with the buffer's own durable counters (accepted and evicted
readings, kept in the same transactions as the readings themselves):

    readings        accepted by the gateway (durable counter, across every kill)
    lost            accepted, never delivered, and not evicted by the full policy
    duplicated      delivered in two different batches (a re-sent batch is not a duplicate:
                    the consumer de-duplicates by batch number, as the contract says)
    evicted         dropped by the full policy, as the gateway counted it
    uncounted_loss  missing at the consumer beyond what the batches' `dropped` fields told it
    bad_time        delivered as good or corrected with a time outside the run's true span

Slow fsync is not injected: it needs a device-mapper delay target (root and a block device);
the buffer's synchronous=NORMAL commits do not wait on fsync anyway (WAL).

Last line: RESULT cycles=<n> readings=<n> lost=<n> duplicated=<n> evicted=<n>
uncounted_loss=<n> bad_time=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.clock import FileClock  # noqa: E402
from edge.consumer import BatchConsumer, Delivery  # noqa: E402
from protocols.batch import TQ_UNCERTAIN  # noqa: E402

FAULTS = ("kill", "broker", "partition", "stall", "clock", "full")
HOUR_MS, YEAR_MS = 3_600_000, 365 * 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)


class Broker:
    """Mosquitto with persistence: a stop (SIGTERM) saves what it holds for the consumer."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "m.conf"
        self.conf.write_text(
            # Started as root, mosquitto would drop to user 'mosquitto', which cannot write this
            # private temp dir: persistence would silently not work and a restart would lose
            # every message queued for the consumer.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nmax_queued_messages 0\n"
            f"log_dest file {self.dir}/mosquitto.log\nlog_type all\nlog_timestamp_format %T\n"
        )
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise SystemExit("soak needs Mosquitto: apt-get install -y mosquitto")
        self.exe = exe

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await wait_port(self.port)

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
            self.proc = None


class Relay:
    """A TCP relay between gateway and broker whose links the harness cuts or silences."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "pass"  # pass / partition / stall
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.mode == "partition":
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self.links |= {w, uw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if self.mode == "pass":
                        dst.write(data)
                        await dst.drain()
                    # stall: swallowed; the connection stays open and silent
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.links -= {w, uw}

    def cut(self) -> None:
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rng = random.Random(args.seed)
        self.broker = Broker(tmp)
        self.relay = Relay(self.broker.port)
        self.clock = tmp / "clock.json"
        self.buffer = tmp / "buffer.sqlite"
        self.gw: subprocess.Popen | None = None
        self.sims: list[subprocess.Popen] = []
        self.peak_rss_mb = 0.0
        self.seen: dict[tuple[str, str, int], int] = {}  # reading -> deliveries
        self.bad_time = 0
        self.dropped_reported = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self.true_start_ms = time.time() * 1000
        self.true_end_ms = 0.0
        self.timeline: list[str] = []
        self.arrivals: list[str] = []  # (time, batch seq, part, readings): kept for diagnosis

    # ------------------------------------------------------------------ processes

    def config(self, name: str, with_devices: bool, max_bytes: int, poll_s: float = 0.5) -> Path:
        text = f"""gateway: {{id: soak, site: harness}}
buffer: {{path: {self.buffer}, max_bytes: {max_bytes}, commit_interval_ms: 200}}
mqtt:
  url: mqtt://127.0.0.1:{self.relay.port}
  batch_max_readings: 500
  batch_max_delay_ms: 500
  publish_timeout_s: 2
  reconnect_min_s: 0.2
  reconnect_max_s: 2
  stable_after_s: 2
  keepalive_s: 5
status: {{enabled: false}}
time: {{trust: ntp, max_hold_s: 600}}
devices:
"""
        if with_devices:
            for unit, profile, port in self.units:
                timeout_ms = min(200, int(poll_s * 1000))  # within the poll interval
                text += (
                    f"  - {{id: {profile}-{unit}, profile: {profile}, poll_interval_s: {poll_s}, "
                    f"timeout_ms: {timeout_ms}, retries: 0, transport: {{type: modbus_tcp, "
                    f"host: 127.0.0.1, port: {port}, unit: {unit}}}}}\n"
                )
        else:
            text = text.replace("devices:\n", "devices: []\n")
        path = self.tmp / name
        path.write_text(text)
        return path

    async def start_sims(self) -> None:
        self.units = []
        for profile, units in (("eastron_sdm630", [1, 2]), ("street_light_cabinet", [3])):
            port = free_port()
            args = [sys.executable, "-m", "edge", "sim", "--profile", profile, "--port", str(port)]
            for u in units:
                args += ["--unit", str(u)]
            self.sims.append(
                subprocess.Popen(  # noqa: ASYNC220
                    args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            self.units += [(u, profile, port) for u in units]
            await wait_port(port)

    def start_gateway(self, cfg: Path) -> None:
        env = dict(os.environ, EDGE_CLOCK_FILE=str(self.clock))
        log = open(self.tmp / "gateway.log", "a")
        self.gw = subprocess.Popen(
            [sys.executable, "-m", "edge", "--log-level", "debug", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def sample_rss(self) -> None:
        if self.gw is None:
            return
        if self.gw.poll() is not None:
            raise SystemExit(
                f"the gateway exited by itself (code {self.gw.returncode}); "
                f"see {self.tmp / 'gateway.log'}"
            )
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.gw.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)

    async def stop_gateway(self, sig: int = signal.SIGTERM) -> None:
        if self.gw is None:
            return
        self.sample_rss()
        self.gw.send_signal(sig)
        try:
            await asyncio.to_thread(self.gw.wait, 30)
        except subprocess.TimeoutExpired:
            self.gw.kill()
            await asyncio.to_thread(self.gw.wait, 10)
        self.gw = None

    # ------------------------------------------------------------------ the consumer

    def on_batch(self, d: Delivery) -> None:
        self.arrivals.append(
            f"{time.strftime('%T')} seq {d.header.seq} part {d.header.part} "
            f"readings {len(d.readings)}"
        )
        self.dropped_reported += d.header.dropped
        for r in d.readings:
            key = (r.device, r.point, r.ts_ms)
            self.seen[key] = self.seen.get(key, 0) + 1
            if r.tq != TQ_UNCERTAIN and not (
                self.true_start_ms - 2000 <= r.ts_ms <= time.time() * 1000 + 2000
            ):
                self.bad_time += 1

    # ------------------------------------------------------------------ faults

    async def fault(self, name: str, gw_cfg: Path) -> None:
        rng = self.rng
        self.faults[name] += 1
        if name == "kill":
            await asyncio.sleep(rng.uniform(0, 0.5))  # a random moment of its work
            await self.stop_gateway(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            self.start_gateway(gw_cfg)
        elif name == "broker":
            await self.broker.stop()
            self.relay.cut()
            await asyncio.sleep(rng.uniform(1, 3))
            await self.broker.start()
        elif name in ("partition", "full"):
            self.relay.mode = "partition"
            self.relay.cut()
            await asyncio.sleep(rng.uniform(1, 4) if name == "partition" else 12)
            self.relay.mode = "pass"
        elif name == "stall":
            self.relay.mode = "stall"
            await asyncio.sleep(rng.uniform(3, 6))
            self.relay.cut()
            self.relay.mode = "pass"
        elif name == "clock":
            jump = rng.choice([-1, 1]) * rng.choice([HOUR_MS, 86_400_000, YEAR_MS])
            FileClock.write(self.clock, jump, synced=False)
            await asyncio.sleep(rng.uniform(1, 3))
            FileClock.write(self.clock, 0, synced=True)

    # ------------------------------------------------------------------ the run

    async def run(self) -> str:
        args = self.args
        await self.broker.start()
        await self.relay.start()
        await self.start_sims()
        FileClock.write(self.clock, 0, synced=True)
        consumer = BatchConsumer(
            f"mqtt://127.0.0.1:{self.broker.port}",
            client_id="soak-consumer",
            on_batch=self.on_batch,
            report=open(os.devnull, "w"),  # noqa: ASYNC230
        )
        consumer_task = asyncio.create_task(consumer.run())
        await asyncio.wait_for(consumer.subscribed.wait(), 15)
        # 'full' runs on its own cap; the other faults on a roomy buffer
        gw_cfg = self.config("gw.yaml", True, 64 * 2**20)
        # ten times the polling rate: enough readings in 12 s to fill 1 MiB and evict
        full_cfg = self.config("gw-full.yaml", True, 2**20, poll_s=0.05)
        self.start_gateway(gw_cfg)
        started = time.monotonic()
        await asyncio.sleep(2)
        for cycle in range(args.cycles):
            # every tenth fault fills the buffer (it takes 12 s); the others at random
            name = "full" if cycle % 10 == 9 else self.rng.choice(FAULTS[:-1])
            fault_at = time.strftime("%T")
            if name == "full":
                await self.stop_gateway()
                self.start_gateway(full_cfg)
                await asyncio.sleep(1)
            await self.fault(name, gw_cfg if name != "full" else full_cfg)
            if name == "full":
                await asyncio.sleep(2)
                await self.stop_gateway()
                self.start_gateway(gw_cfg)
            self.sample_rss()
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            self.timeline.append(f"{fault_at} cycle {cycle + 1}: {name}")
            if args.verbose:
                print(self.timeline[-1], flush=True)
        # Drain: stop polling, let a device-less gateway send everything that is left.
        await self.stop_gateway()
        self.start_gateway(self.config("drain.yaml", False, 64 * 2**20))
        await self.drained(120)
        await self.stop_gateway()
        self.true_end_ms = time.time() * 1000
        await asyncio.sleep(1)  # last deliveries
        consumer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer_task
        ran = time.monotonic() - started
        tally = consumer.tallies.get("soak")
        if tally is not None:
            print(
                f"consumer: {tally.batches} batches, {tally.duplicates} re-deliveries, "
                f"missing batch numbers {tally.tracker.missing()}, "
                f"undecodable {consumer.bad_payloads}",
                flush=True,
            )
        for p in self.sims:
            p.terminate()
        await self.broker.stop()
        return self.report(args.cycles, ran)

    async def drained(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            with contextlib.suppress(sqlite3.Error):
                db = sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True)
                try:
                    left = db.execute(
                        "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM outbox)"
                    ).fetchone()[0]
                finally:
                    db.close()
                if left == 0:
                    return
        print("warning: the buffer did not drain in time", flush=True)

    def report(self, cycles: int, ran_s: float) -> str:
        db = sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        left = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        db.close()
        accepted = int(meta["accepted_total"])
        evicted = int(meta["evicted_total"])
        delivered = len(self.seen)
        duplicated = sum(n - 1 for n in self.seen.values() if n > 1)
        lost = max(0, accepted - delivered - evicted - left)
        uncounted = max(0, accepted - delivered - self.dropped_reported - left)
        print(f"ran {ran_s:.0f} s; faults: {self.faults}")
        print(
            f"readings accepted {accepted}, delivered {delivered}, evicted {evicted} "
            f"(batches reported {self.dropped_reported} dropped), left in buffer {left}"
        )
        print(f"gateway peak RSS {self.peak_rss_mb:.1f} MB")
        return (
            f"RESULT cycles={cycles} readings={accepted} lost={lost} duplicated={duplicated} "
            f"evicted={evicted} uncounted_loss={uncounted} bad_time={self.bad_time}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument(
        "--keep", metavar="DIR", help="keep logs and buffer here (kept anyway on a loss)"
    )
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**32)
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as d:
        harness = Harness(args, Path(d))
        line = ""
        try:
            line = asyncio.run(harness.run())
        finally:
            if args.keep or " lost=0 " not in line:
                # Keep the evidence: gateway and broker logs, the buffer, the fault timeline and
                # what the consumer received, with wall-clock times to line them up.
                keep = Path(args.keep or tempfile.mkdtemp(prefix="edge-soak-kept-"))
                (Path(d) / "timeline.txt").write_text("\n".join(harness.timeline) + "\n")
                (Path(d) / "arrivals.txt").write_text("\n".join(harness.arrivals) + "\n")
                shutil.copytree(d, keep, dirs_exist_ok=True)
                print(f"logs, buffer and timelines kept in {keep}", flush=True)
    print(line, flush=True)


if __name__ == "__main__":
    main()
