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
* disk       (every tenth cycle) the buffer's filesystem, a real 32 MiB tmpfs, is filled by
             another file to all but 512 KiB while the devices are polled ten times as fast and a
             partition lasts 12 s; then the file is deleted. The gateway must keep running, evict
             by its policy and count it, and recover by itself. Where mounting is refused (not
             root, no CAP_SYS_ADMIN) the buffer lives on the ordinary disk and this fault falls back
             to the 1 MiB ``max_bytes`` cap; the output says so.
* limit      (every tenth cycle) Mosquitto restarts with ``max_packet_size 2048``, smaller than
             the gateway's birth and its larger batches, for 3-6 s, then without it

and, laid over any cycle at random (and at least once in every ten):

* special    unit 2 serves NaN, +inf, -inf, -0.0, a float32 subnormal and a NaN with a payload
             on six points (bench/soak_devices.py)
* slow       the RS-485 meter (unit 5, two same-sized requests: voltage_l1 and frequency) answers
             in 450 ms while the gateway waits 300 ms: every answer comes after its timeout

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
    wrong_value     delivered with a value the simulator did not serve for that point within
                    3 s of the reading's time (any time, for a reading sent as uncertain):
                    compared bit for bit (float64 bits; NaN payloads included) with
                    served.log, which the simulated devices write as they answer

Slow fsync is not injected: it needs a device-mapper delay target (root and a block device);
the buffer's synchronous=NORMAL commits do not wait on fsync anyway (WAL).

Last line: RESULT cycles=<n> readings=<n> lost=<n> duplicated=<n> evicted=<n>
uncounted_loss=<n> bad_time=<n> wrong_value=<n> checked=<n> specials=<n> disk=<tmpfs|max_bytes>
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import getpass
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak_devices import read_served, value_key  # noqa: E402
from edge.platform.consumer import BatchConsumer, Delivery  # noqa: E402
from edge.shared.clock import FileClock  # noqa: E402
from protocols.batch import TQ_UNCERTAIN  # noqa: E402

RANDOM_FAULTS = ("kill", "broker", "partition", "stall", "clock")
FAULTS = (*RANDOM_FAULTS, "full", "disk", "limit")
OVERLAYS = ("special", "slow")
#: cycle % 10 -> the fault every tenth cycle brings; the rest are drawn from RANDOM_FAULTS
SCHEDULED = {9: "full", 4: "disk", 7: "limit"}
MATCH_MS = 3000  # a reading's value must have been served within this of its time
TMPFS_BYTES = 32 * 2**20
DISK_LEFT_BYTES = 512 * 2**10
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
        self.configure()
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise SystemExit("soak needs Mosquitto: apt-get install -y mosquitto")
        self.exe = exe

    def configure(self, max_packet_size: int | None = None) -> None:
        """Write the broker's config; ``max_packet_size`` limits what it takes (MQTT 5 tells it
        in CONNACK)."""
        limit = f"max_packet_size {max_packet_size}\n" if max_packet_size else ""
        self.conf.write_text(
            # Started as root, mosquitto would drop to user 'mosquitto', which cannot write this
            # private temp dir: persistence would silently not work and a restart would lose
            # every message queued for the consumer.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nmax_queued_messages 0\n"
            f"log_dest file {self.dir}/mosquitto.log\nlog_type all\nlog_timestamp_format %T\n"
            + limit
        )

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
        self.disk = tmp / "disk"
        self.disk.mkdir()
        self.tmpfs = self.mount_tmpfs()
        self.buffer = self.disk / "buffer.sqlite"
        self.devices_dir = tmp / "devices"
        self.devices_dir.mkdir()
        self.control: dict[str, bool] = {}
        self.delivered: list[tuple[str, str, int, int, str]] = []
        self.overlays: dict[str, int] = dict.fromkeys(OVERLAYS, 0)
        self.gw: subprocess.Popen | None = None
        self.sims: list[subprocess.Popen] = []
        self.peak_rss_mb = 0.0
        self.seen: dict[tuple[str, str, int], int] = {}  # reading -> deliveries
        self.bad_time = 0
        self.dropped_reported = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self.wrong_examples: list[str] = []
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
            # The RS-485 meter: two requests of the same size, 300 ms timeout (450 ms when slow).
            text += (
                f"  - {{id: eastron_sdm630-5, profile: eastron_sdm630, poll_interval_s: 1.5, "
                f"timeout_ms: 300, retries: 1, points: [voltage_l1, frequency], "
                f"transport: {{type: modbus_rtu, port: {self.rtu_path}, baudrate: 9600, "
                f"unit: 5}}}}\n"
            )
        else:
            text = text.replace("devices:\n", "devices: []\n")
        path = self.tmp / name
        path.write_text(text)
        return path

    def mount_tmpfs(self) -> str | None:
        """A real small filesystem for the buffer; None (with the reason printed) if refused."""
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.disk)],
                check=True,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            why = getattr(exc, "stderr", None) or str(exc)
            print(
                f"disk: mounting a tmpfs was refused ({why.strip()}); the disk fault falls back "
                f"to the 1 MiB max_bytes cap",
                flush=True,
            )
            return None
        return str(self.disk)

    def unmount_tmpfs(self) -> None:
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", self.tmpfs], capture_output=True, timeout=10)
            self.tmpfs = None

    def set_control(self, **switches: bool) -> None:
        self.control.update(switches)
        tmp = self.devices_dir / "control.json.tmp"
        tmp.write_text(json.dumps(self.control))
        os.replace(tmp, self.devices_dir / "control.json")

    async def start_sims(self) -> None:
        self.set_control(special=False, slow=False)
        log = open(self.tmp / "devices.log", "a")  # noqa: ASYNC230
        self.sims.append(
            subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "bench/soak_devices.py", str(self.devices_dir)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        where = self.devices_dir / "devices.json"
        deadline = time.monotonic() + 20
        while not where.exists():
            if time.monotonic() > deadline or self.sims[-1].poll() is not None:
                raise SystemExit(f"the simulated devices did not start; see {log.name}")
            await asyncio.sleep(0.05)
        devices = json.loads(where.read_text())
        tcp = {int(u): p for u, p in devices["tcp"].items()}
        self.units = [
            (1, "eastron_sdm630", tcp[1]),
            (2, "eastron_sdm630", tcp[2]),
            (3, "street_light_cabinet", tcp[3]),
        ]
        self.rtu_path = devices["rtu"]

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
            if not r.point.startswith("_"):
                self.delivered.append((r.device, r.point, r.ts_ms, r.tq, value_key(r.value)))
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
        elif name == "disk":
            # A real filesystem filling up: another file takes all but DISK_LEFT_BYTES.
            filler = self.disk / "other-files.bin"
            self.relay.mode = "partition"
            self.relay.cut()
            st = os.statvfs(self.disk)
            fill = max(0, st.f_bavail * st.f_frsize - DISK_LEFT_BYTES)
            with contextlib.suppress(OSError), open(filler, "wb") as f:  # noqa: ASYNC230
                chunk = b"\0" * 2**20
                while fill > 0:
                    n = f.write(chunk[: min(fill, len(chunk))])
                    fill -= n
            await asyncio.sleep(12)
            filler.unlink(missing_ok=True)  # space returns: the gateway recovers by itself
            self.relay.mode = "pass"
        elif name == "limit":
            await self.broker.stop()
            self.relay.cut()
            self.broker.configure(max_packet_size=2048)
            await self.broker.start()
            await asyncio.sleep(rng.uniform(3, 6))
            await self.broker.stop()
            self.relay.cut()
            self.broker.configure()
            await self.broker.start()
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
        # the disk fault: the same rate on a roomy cap, so the filesystem is what fills
        disk_cfg = (
            self.config("gw-disk.yaml", True, 64 * 2**20, poll_s=0.05)
            if self.tmpfs is not None
            else full_cfg
        )
        self.start_gateway(gw_cfg)
        started = time.monotonic()
        await asyncio.sleep(2)
        for cycle in range(args.cycles):
            # every tenth cycle fills the buffer, fills the disk, limits the broker's packets;
            # the others at random
            name = SCHEDULED.get(cycle % 10) or self.rng.choice(RANDOM_FAULTS)
            if name == "disk" and self.tmpfs is None:
                name = "full"
            overlays = {
                "special": cycle % 10 == 1 or self.rng.random() < 0.3,
                "slow": cycle % 10 == 2 or self.rng.random() < 0.3,
            }
            self.set_control(**overlays)
            for k, on in overlays.items():
                self.overlays[k] += on
            fault_at = time.strftime("%T")
            special_cfg = {"full": full_cfg, "disk": disk_cfg}.get(name)
            if special_cfg is not None:
                await self.stop_gateway()
                self.start_gateway(special_cfg)
                await asyncio.sleep(1)
            await self.fault(name, special_cfg or gw_cfg)
            if special_cfg is not None:
                await asyncio.sleep(2)
                await self.stop_gateway()
                self.start_gateway(gw_cfg)
            self.sample_rss()
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            on = [k for k, v in overlays.items() if v]
            self.timeline.append(
                f"{fault_at} cycle {cycle + 1}: {name}" + (f" (+{', '.join(on)})" if on else "")
            )
            if args.verbose:
                print(self.timeline[-1], flush=True)
        # Drain: stop polling, let a device-less gateway send everything that is left.
        self.set_control(special=False, slow=False)
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
            await asyncio.to_thread(p.wait, 10)
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

    def wrong_values(self) -> tuple[int, int, int]:
        """(wrong, checked, specials): each delivered reading against what was served."""
        served = read_served(self.devices_dir / "served.log")
        anytime = {k: set(v[1]) for k, v in served.items()}
        wrong = specials = 0
        for device, point, ts, tq, key in self.delivered:
            times, keys = served.get((device, point), ([], []))
            if tq == TQ_UNCERTAIN:
                ok = key in anytime.get((device, point), ())
            else:
                lo = bisect.bisect_left(times, ts - MATCH_MS)
                hi = bisect.bisect_right(times, ts + MATCH_MS)
                ok = key in keys[lo:hi]
            if not ok:
                wrong += 1
                if len(self.wrong_examples) < 10:
                    near = keys[bisect.bisect_left(times, ts - MATCH_MS) :][:3]
                    self.wrong_examples.append(
                        f"{device}.{point} at {ts} (tq {tq}): delivered {key}, served near {near}"
                    )
            if key.startswith("f:"):
                v = struct.unpack(">d", bytes.fromhex(key[2:]))[0]
                negative_zero = v == 0.0 and math.copysign(1.0, v) < 0
                if not math.isfinite(v) or negative_zero or 0 < abs(v) < 1.2e-38:
                    specials += 1
        return wrong, len(self.delivered), specials

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
        wrong, checked, specials = self.wrong_values()
        print(f"gateway peak RSS {self.peak_rss_mb:.1f} MB; overlays: {self.overlays}")
        print(
            f"values: {checked} delivered readings compared with what the devices served, "
            f"{wrong} wrong, {specials} not ordinary numbers (NaN, inf, -0.0, subnormal)"
        )
        for example in self.wrong_examples:
            print(f"  wrong value: {example}")
        disk = "tmpfs" if self.tmpfs is not None else "max_bytes"
        return (
            f"RESULT cycles={cycles} readings={accepted} lost={lost} duplicated={duplicated} "
            f"evicted={evicted} uncounted_loss={uncounted} bad_time={self.bad_time} "
            f"wrong_value={wrong} checked={checked} specials={specials} disk={disk}"
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
            if args.keep or " lost=0 " not in line or " wrong_value=0 " not in line:
                # Keep the evidence: gateway and broker logs, the buffer, the fault timeline and
                # what the consumer received, with wall-clock times to line them up.
                keep = Path(args.keep or tempfile.mkdtemp(prefix="edge-soak-kept-"))
                (Path(d) / "timeline.txt").write_text("\n".join(harness.timeline) + "\n")
                (Path(d) / "arrivals.txt").write_text("\n".join(harness.arrivals) + "\n")
                shutil.copytree(d, keep, dirs_exist_ok=True)
                print(f"logs, buffer and timelines kept in {keep}", flush=True)
            harness.unmount_tmpfs()
    print(line, flush=True)


if __name__ == "__main__":
    main()
