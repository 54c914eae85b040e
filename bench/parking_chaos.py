"""Parking chaos: simulated meters, the gateway and a real Mosquitto as separate processes, the
platform's ledger as the consumer, and the gateway killed at random moments, until the numbers
say whether a single đồng went astray.

    python bench/parking_chaos.py --cycles 50 [--seed N] [--keep DIR]

Two meter links run as their own processes (``edge sim-meters``: three meters on one, two on
the other), each meter with a durable journal, doing business at simulated speed. Every cycle
the gateway (a process, ``edge run``) is started and killed with SIGKILL, one of four ways:

* random            after 0.8-3 s of work, wherever it is
* parking_received  at the fail point between receiving an entry and committing it
* parking_committed at the fail point between committing an entry and acknowledging it to
                    the meter (the next POLL never goes)
* tx_published      at the fail point between the broker's PUBACK of a ``tx`` message and
                    forgetting its entries (they are sent again after the restart)

(the three fail points are ``EDGE_FAULTS`` of edge/shared/faults.py: the process SIGKILLs itself
there).
On top of that, in about a quarter of the cycles a meter link process is power-cut (SIGKILL; it
comes back on its journal after 0.2-1 s), and in about a fifth Mosquitto is stopped for 1-3 s
(it keeps the consumer's queued messages in its persistence).

At the end the meters stop doing business (restarted with ``--no-business``), a gateway without
faults delivers everything left, and each meter's own journal is compared with the platform's
ledger (edge/platform/ledger.py: signatures checked with the key of the gateway's birth,
de-duplicated by (meter, seq) and transaction id):

    transactions    payments the meters wrote in their journals
    lost            journal entries (of any type) the ledger never accepted with the same bytes
    duplicated      entries or payments the ledger counted more than once, or holds that no
                    journal wrote
    bad_signatures  entries whose signature did not verify (or verified only with a key not
                    trusted for the gateway)
    vnd_mismatch    the sum over meters and days of |VND in the journal - VND in the ledger|

Last line: RESULT cycles=<n> transactions=<n> lost=<n> duplicated=<n> bad_signatures=<n>
vnd_mismatch=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soak import Broker, free_port, wait_port  # noqa: E402

from edge.platform.consumer import BatchConsumer  # noqa: E402
from edge.platform.ledger import TxLedger, local_day  # noqa: E402
from protocols.meterlink import MsgType, Payment, decode_message  # noqa: E402

KILLS = ("random", "parking_received", "parking_committed", "tx_published")
POINT_P = 0.06  # chance of dying each time the gateway passes the cycle's fail point
LANES = {"lane-1": ["HK-01", "HK-02", "HK-03"], "lane-2": ["BD-01", "BD-02"]}


def read_journals(folder: Path, meters: list[str]) -> dict[str, list[tuple[int, int, bytes, int]]]:
    """Each simulated meter's durable journal (``edge sim-meters --journal-dir``), read only:
    meter -> [(seq, type, payload, acked)] in seq order."""
    out = {}
    for m in meters:
        db = sqlite3.connect(f"file:{folder / f'{m}.sqlite'}?mode=ro", uri=True)
        try:
            out[m] = db.execute(
                "SELECT seq, type, payload, acked FROM entries ORDER BY seq"
            ).fetchall()
        finally:
            db.close()
    return out


class MeterLink:
    """One ``edge sim-meters`` process: the meters behind one link, on a fixed port."""

    def __init__(self, name: str, meters: list[str], tmp: Path, args: argparse.Namespace) -> None:
        self.name, self.meters, self.tmp, self.args = name, meters, tmp, args
        self.port = free_port()
        self.journals = tmp / "journals"
        self.proc: subprocess.Popen | None = None

    async def start(self, business: bool = True) -> None:
        cmd = [sys.executable, "-m", "edge", "sim-meters", "--port", str(self.port)]
        cmd += ["--journal-dir", str(self.journals), "--speed", str(self.args.speed)]
        cmd += ["--seed", str(self.args.seed), "--zone", self.name.upper()]
        for a, m in enumerate(self.meters, start=1):
            cmd += ["--meter", f"{a}={m}"]
        if not business:
            cmd.append("--no-business")
        log = open(self.tmp / f"{self.name}.log", "a")  # noqa: ASYNC230
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        await wait_port(self.port)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            await asyncio.to_thread(self.proc.wait, 20)
            self.proc = None


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.broker = Broker(tmp)
        self.links = [MeterLink(n, ms, tmp, args) for n, ms in LANES.items()]
        self.gw: subprocess.Popen | None = None
        self.kills: Counter[str] = Counter()
        self.side: Counter[str] = Counter()
        self.timeline: list[str] = []
        self.ledger = TxLedger(tmp / "ledger.sqlite")
        self.cfg = tmp / "gw.yaml"
        buses = "\n".join(
            f"""    - id: {link.name}
      transport: {{type: tcp, host: 127.0.0.1, port: {link.port}}}
      poll_interval_s: 0.05
      timeout_ms: 300
      meters: [{", ".join(f"{{id: {m}, address: {a}}}" for a, m in enumerate(link.meters, 1))}]"""
            for link in self.links
        )
        self.cfg.write_text(
            f"""gateway: {{id: gw-chaos, site: hn}}
buffer: {{path: buffer.sqlite}}
mqtt: {{url: "mqtt://127.0.0.1:{self.broker.port}", reconnect_min_s: 0.2, reconnect_max_s: 1}}
status: {{enabled: false}}
parking:
  key_file: gateway.key
  max_entries_per_message: 50
  buses:
{buses}
"""
        )

    # ------------------------------------------------------------------ processes

    def start_gateway(self, point: str | None) -> None:
        env = dict(os.environ)
        env.pop("EDGE_FAULTS", None)
        if point is not None:
            env["EDGE_FAULTS"] = f"{point}={POINT_P}"
        log = open(self.tmp / "gateway.log", "a")
        log.write(f"--- {time.strftime('%T')} start, faults: {env.get('EDGE_FAULTS', 'none')}\n")
        log.flush()
        self.gw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "--log-level",
                "debug",
                "run",
                "--config",
                str(self.cfg),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def kill_gateway(self) -> int:
        assert self.gw is not None
        if self.gw.poll() is None:
            self.gw.kill()
        code = await asyncio.to_thread(self.gw.wait, 20)
        self.gw = None
        return code

    async def wait_gateway(self, within_s: float) -> int | None:
        """The gateway's exit code if it exits within ``within_s``, else None."""
        assert self.gw is not None
        try:
            return await asyncio.to_thread(self.gw.wait, within_s)
        except subprocess.TimeoutExpired:
            return None

    # ------------------------------------------------------------------ faults

    async def side_fault(self) -> None:
        r = self.rng.random()
        await asyncio.sleep(self.rng.uniform(0, 1.5))
        if r < 0.25:
            link = self.rng.choice(self.links)
            self.side[f"power_cut:{link.name}"] += 1
            await link.stop(signal.SIGKILL)
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            await link.start()
        elif r < 0.45:
            self.side["broker_stop"] += 1
            await self.broker.stop()
            await asyncio.sleep(self.rng.uniform(1, 3))
            await self.broker.start()

    async def cycle(self, n: int) -> None:
        how = self.rng.choice(KILLS)
        point = None if how == "random" else how
        started = time.strftime("%T")
        self.start_gateway(point)
        side = asyncio.create_task(self.side_fault())
        if point is None:
            await asyncio.sleep(self.rng.uniform(0.8, 3.0))
            code = await self.wait_gateway(0)
            if code is not None:
                raise SystemExit(f"the gateway exited by itself ({code}); see {self.tmp}")
            await self.kill_gateway()
            self.kills["random"] += 1
        else:
            code = await self.wait_gateway(30)
            if code is None:  # the point was not reached often enough: kill it anyway
                await self.kill_gateway()
                self.kills[f"{point} (not reached, random)"] += 1
            elif code == -signal.SIGKILL:
                self.gw = None
                self.kills[point] += 1
            else:
                raise SystemExit(f"the gateway exited with {code}, not at {point}; see {self.tmp}")
        await side
        self.timeline.append(f"{started} cycle {n}: {how}")
        if self.args.verbose:
            print(self.timeline[-1], flush=True)

    # ------------------------------------------------------------------ the run

    async def run(self) -> str:
        await self.broker.start()
        for link in self.links:
            await link.start()
        consumer = BatchConsumer(
            f"mqtt://127.0.0.1:{self.broker.port}",
            client_id="chaos-platform",
            ledger=self.ledger,
            report=open(self.tmp / "consumer.log", "w"),  # noqa: ASYNC230
        )
        consumer_task = asyncio.create_task(consumer.run())
        await asyncio.wait_for(consumer.subscribed.wait(), 15)
        t0 = time.monotonic()
        for n in range(1, self.args.cycles + 1):
            await self.cycle(n)
        # Drain: the meters stop doing business; a gateway without faults delivers the rest.
        for link in self.links:
            await link.stop()
            await link.start(business=False)
        self.start_gateway(None)
        delivered = await self.drained(180)
        code = await self.wait_gateway(0)
        if code is not None:
            raise SystemExit(f"the draining gateway exited ({code}); see {self.tmp}")
        self.gw.terminate()
        await asyncio.to_thread(self.gw.wait, 20)
        self.gw = None
        consumer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer_task
        for link in self.links:
            await link.stop()
        await self.broker.stop()
        ran = time.monotonic() - t0
        if not delivered:
            print("warning: not everything was delivered in time", flush=True)
        return self.report(ran)

    def journals(self) -> dict[str, list[tuple[int, int, bytes, int]]]:
        return read_journals(self.tmp / "journals", [m for ms in LANES.values() for m in ms])

    async def drained(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            with contextlib.suppress(sqlite3.Error):
                js = self.journals()
                if all(
                    all(acked for *_, acked in rows) and len(rows) == len(self.ledger.entries(m))
                    for m, rows in js.items()
                ):
                    return True
        return False

    def report(self, ran_s: float) -> str:
        journals = self.journals()
        rec = self.ledger.reconcile()
        lost = duplicated = transactions = unacked = entries = 0
        want_vnd: Counter[tuple[str, str]] = Counter()
        for meter, rows in journals.items():
            got = {seq: (t, p) for seq, t, p in self.ledger.entries(meter)}
            wrote = {seq: (t, p) for seq, t, p, _ in rows}
            entries += len(rows)
            lost += sum(1 for seq, tp in wrote.items() if got.get(seq) != tp)
            duplicated += sum(1 for seq in got if seq not in wrote)  # in the ledger, never written
            unacked += sum(1 for *_, acked in rows if not acked)
            for t, p in wrote.values():
                if t == MsgType.PAYMENT:
                    pay = decode_message(t, p)
                    assert isinstance(pay, Payment)
                    transactions += 1
                    want_vnd[(meter, local_day(pay.collected_ms))] += pay.amount_vnd
        # a payment counted twice would need a second transaction id or a second ledger row
        duplicated += sum(m.duplicate_transactions + m.conflicts for m in rec.meters)
        have_vnd = Counter({(d.meter, d.day): d.total_vnd for d in rec.days})
        mismatch = sum(abs(want_vnd[k] - have_vnd[k]) for k in set(want_vnd) | set(have_vnd))
        bad = sum(1 for a in rec.anomalies if a["kind"] in ("bad_signature", "untrusted_key"))
        vnd = sum(want_vnd.values())
        print(
            f"ran {ran_s:.0f} s; gateway kills: {dict(self.kills)}; other faults: {dict(self.side)}"
        )
        print(
            f"journal entries {entries} ({transactions} payments, {vnd:,} VND), left "
            f"unacknowledged at the meters {unacked}; ledger: {sum(m.entries for m in rec.meters)} "
            "entries, "
            f"{rec.total_vnd:,} VND, re-deliveries ignored {rec.duplicates_ignored}, "
            f"gaps {sum(len(m.gaps) for m in rec.meters)}, anomalies {len(rec.anomalies)}"
        )
        db = sqlite3.connect(f"file:{self.tmp / 'buffer.sqlite'}?mode=ro", uri=True)
        resent, skipped, unsent = db.execute(
            "SELECT (SELECT coalesce(sum(duplicates), 0) FROM meters), "
            "(SELECT coalesce(sum(missing), 0) FROM meters), (SELECT count(*) FROM meter_entries)"
        ).fetchone()
        db.close()
        print(
            f"gateway buffer: entries meters sent again though committed {resent}, "
            f"seqs meters skipped {skipped}, entries left unsent {unsent}"
        )
        for line in rec.lines()[:2] + [x for x in rec.lines() if x.startswith("total")]:
            print(line)
        return (
            f"RESULT cycles={self.args.cycles} transactions={transactions} lost={lost} "
            f"duplicated={duplicated} bad_signatures={bad} vnd_mismatch={mismatch}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--speed", type=float, default=3600.0, help="the meters' simulated time rate")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep logs, journals, buffer and ledger here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.seed is None:
        args.seed = random.randrange(2**32)
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-parking-chaos-") as d:
        harness = Harness(args, Path(d))
        line = ""
        try:
            line = asyncio.run(harness.run())
        finally:
            for p in [harness.gw, *(link.proc for link in harness.links)]:
                if p is not None and p.poll() is None:
                    p.kill()
            if harness.broker.proc is not None:
                harness.broker.proc.kill()
            clean = " lost=0 duplicated=0 bad_signatures=0 vnd_mismatch=0" in line
            if args.keep or not clean:
                keep = Path(args.keep or tempfile.mkdtemp(prefix="edge-parking-chaos-kept-"))
                (Path(d) / "timeline.txt").write_text("\n".join(harness.timeline) + "\n")
                shutil.copytree(d, keep, dirs_exist_ok=True)
                print(f"logs, journals, buffer and ledger kept in {keep}", flush=True)
    print(line, flush=True)


if __name__ == "__main__":
    main()
