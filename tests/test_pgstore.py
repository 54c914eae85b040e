"""The PostgreSQL readings store (edge/platform/pgstore.py, store_consumer.py) on a real
PostgreSQL server (tests/engines.py), a database per test; the consumer process against a real
Mosquitto."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import random
import re
import signal
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from edge.platform.ledger import TxLedger
from edge.platform.pgstore import STORE_VERSION, PgStore, StoreSchemaError
from edge.platform.store_consumer import StoreConsumer
from protocols.batch import BatchHeader, Point, decode_batch_wire, encode_batch
from protocols.birth import Birth, SeriesInfo, split_birth
from tests.conftest import wait_until

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
PREFIX = "city/v1"


def data_topic(gateway: str, site: str = "hk") -> str:
    return f"{PREFIX}/{site}/{gateway}/data"


def consumer(dsn: str, report: io.StringIO | None = None, **kw) -> StoreConsumer:
    return StoreConsumer(PgStore(dsn), TxLedger(), report=report or io.StringIO(), **kw)


def query(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def stored_points(dsn: str, gateway: str) -> list[tuple]:
    """The readings of ``gateway`` through edge.readings_named, in the golden vectors' form
    (docs/batch-format-v1.md §7): [sid, ts_ms, type, value, tq] with a float as its IEEE word."""
    rows = query(
        dsn,
        "SELECT sid, ts_ms, type, bits, value_int, value_bool, value_text, value_utf8, "
        "time_quality FROM edge.readings_named WHERE gateway = %s",
        gateway,
    )
    out = []
    for sid, ts_ms, typ, bits, vint, vbool, vtext, vutf8, tq in rows:
        if typ in ("f32", "f64"):
            value = bits
        elif typ in ("i64", "u64"):
            value = str(vint)
        elif typ == "bool":
            value = vbool
        else:
            value = bytes(vutf8).decode("utf-8")
            assert vtext is None or vtext == value
        tq_code = ["good", "corrected", "uncertain"].index(tq)
        out.append((str(sid), str(ts_ms), typ, value, tq_code))
    return sorted(out, key=repr)


def wire_points(payload: bytes) -> list[tuple]:
    """What protocols.batch decodes from ``payload``, in the same form."""
    out = []
    for p in decode_batch_wire(payload).points:
        if p.type == "f32":
            value = f"{p.value:08x}"
        elif p.type == "f64":
            value = f"{p.value:016x}"
        elif p.type in ("i64", "u64"):
            value = str(p.value)
        else:
            value = p.value
        out.append((str(p.sid), str(p.ts_ms), p.type, value, p.tq))
    return out


def f64(word: int) -> float:
    return struct.unpack(">d", word.to_bytes(8, "big"))[0]


def special_batch(gateway: str = "gw-special", seq: int = 1) -> bytes:
    """Every value type at its edges: NaN payloads (f32 and f64, either sign), ±inf, -0.0,
    subnormals, u64 max, i64 min, bools, strings with U+0000 and none, times beyond
    PostgreSQL's range, every time quality."""
    t = 1_763_800_000_000
    pts = [
        Point(1, t, f64(0x7FF8000000000001)),  # f64 NaN with a payload
        Point(2, t, f64(0xFFF0000000000001)),  # f64 signalling NaN, sign set
        Point(3, t, struct.unpack(">f", bytes.fromhex("7fc00001"))[0]),  # f32 NaN payload
        Point(4, t, float("inf")),
        Point(5, t, float("-inf")),
        Point(6, t, -0.0),
        Point(7, t, 5e-324),  # the smallest f64 subnormal
        Point(8, t, struct.unpack(">f", bytes.fromhex("00000001"))[0]),  # f32 subnormal
        Point(9, t, 2**64 - 1),  # u64 max
        Point(10, t, 2**63),  # u64 just above int64
        Point(11, t, -(2**63)),  # i64 min
        Point(12, t, 2**63 - 1),
        Point(13, t, True),
        Point(14, t, False),
        Point(15, t, "a\x00b"),  # U+0000: PostgreSQL text cannot hold it
        Point(16, t, ""),
        Point(17, t, "Hà Nội \U0001f600"),
        Point(18, -(2**63), 1.5),  # before PostgreSQL's first day
        Point(19, 2**63 - 1, 2.5),  # after its last
        Point(20, t + 1, 0.1, 1),  # corrected time
        Point(21, t + 2, 0.2, 2),  # uncertain time
    ]
    return encode_batch(BatchHeader(gateway, seq, 1, t), pts)


async def test_pgstore__every_golden_vector_and_edge_value_reads_back_bit_for_bit(pg_dsn):
    c = consumer(pg_dsn)
    await c.start()
    expected: dict[str, list[tuple]] = {}
    for path in sorted(GOLDEN.glob("*.bin")):
        if path.stem == "largest":
            continue  # a million points: the same code path, minutes of Python here
        payload = path.read_bytes()
        gw = decode_batch_wire(payload).header.gateway
        await c.handle(data_topic(gw), payload)
        expected.setdefault(gw, []).extend(wire_points(payload))
    special = special_batch()
    await c.handle(data_topic("gw-special"), special)
    expected["gw-special"] = wire_points(special)
    await c.close()
    assert len(expected) > 10
    for gw, points in expected.items():
        assert stored_points(pg_dsn, gw) == sorted(points, key=repr), gw
    # The same values straight from readings_named's typed columns.
    rows = dict(
        (r[0], r[1:])
        for r in query(
            pg_dsn,
            "SELECT sid, type, value_float, value_int, bits, ts::text, ts_ms, value_text, value "
            "FROM edge.readings_named WHERE gateway = 'gw-special'",
        )
    )
    assert rows[1][0] == "f64" and rows[1][3] == "7ff8000000000001"
    assert rows[2][3] == "fff0000000000001"
    assert rows[3][0] == "f32" and rows[3][3] == "7fc00001"
    assert rows[4][1] == float("inf") and rows[5][1] == float("-inf")
    assert rows[6][3] == "80000000" and str(rows[6][1]) == "-0.0"
    assert rows[7][1] == 5e-324
    assert rows[9][2] == 2**64 - 1 and rows[10][2] == 2**63 and rows[11][2] == -(2**63)
    assert rows[15][6] is None  # U+0000: in value_utf8 only
    assert rows[17][6] == "Hà Nội \U0001f600"
    assert rows[18][5] == -(2**63) and rows[19][5] == 2**63 - 1  # exact beyond ±infinity
    assert rows[18][4] == "-infinity" and rows[19][4] == "infinity"
    assert rows[20][4].startswith("2025-11-22")
    assert rows[9][7] == float(2**64 - 1) and rows[13][7] == 1.0 and rows[17][7] is None


async def test_pgstore__redelivered_batch_and_split_parts_stored_once(pg_dsn):
    c = consumer(pg_dsn)
    await c.start()
    whole = (GOLDEN / "meter_two_polls.bin").read_bytes()
    for _ in range(3):
        await c.handle(data_topic("hk-cab-0142"), whole)
    parts = [(GOLDEN / f"split_part_{p}.bin").read_bytes() for p in ("1", "2_1", "2_2")]
    # Part [2] whole (what the gateway sent before it split [2] again): covers [2,1] and [2,2].
    h = decode_batch_wire(parts[1]).header
    p21, p22 = (decode_batch_wire(p).points for p in parts[1:])
    part2 = encode_batch(
        BatchHeader(h.gateway, h.seq, h.boot, h.created_ms, part=(2,)),
        [
            Point(p.sid, p.ts_ms, struct.unpack(">f", p.value.to_bytes(4, "big"))[0])
            for p in p21 + p22
        ],
    )
    for payload in [parts[0], parts[1], parts[0]]:
        await c.handle(data_topic("gw-split"), payload)
    assert query(pg_dsn, "SELECT gateway, seq, parts, covered FROM edge.incomplete_batches") == [
        ("gw-split", 20, "1, 2.1", Decimal("0.75"))
    ]
    for payload in [parts[2], part2, parts[2], parts[1]]:
        await c.handle(data_topic("gw-split"), payload)
    assert query(pg_dsn, "SELECT count(*) FROM edge.incomplete_batches") == [(0,)]
    await c.close()
    assert c.counts.batches == 4 and c.counts.duplicates == 2 + 4
    assert stored_points(pg_dsn, "hk-cab-0142") == sorted(wire_points(whole), key=repr)
    want = sorted((pt for p in parts for pt in wire_points(p)), key=repr)
    assert stored_points(pg_dsn, "gw-split") == want
    assert query(pg_dsn, "SELECT part FROM edge.batches WHERE seq = 20 ORDER BY part") == [
        ([1],),
        ([2, 1],),
        ([2, 2],),
    ]


def meter_birth(gateway: str, boot: int, series: list[SeriesInfo], **extra) -> Birth:
    return Birth(gateway, "hk", boot, "0.1", 1_763_800_000_000, 1, (), tuple(series), extra)


async def test_pgstore__births_after_data_still_name_the_series(pg_dsn, caplog):
    gw = "hk-cab-0142"
    report = io.StringIO()
    c = consumer(pg_dsn, report)
    await c.start()
    caplog.set_level(logging.WARNING, logger="edge.platform.store_consumer")
    await c.handle(data_topic(gw), (GOLDEN / "meter_two_polls.bin").read_bytes())
    await c.handle(data_topic(gw), (GOLDEN / "late_group.bin").read_bytes())
    warned = [r.getMessage() for r in caplog.records if "no birth has named" in r.getMessage()]
    assert len(warned) == 2, warned  # once per series: the second batch adds only 11
    assert "batch 41 refers to series [1, 2, 3, 10]" in warned[0]
    assert "batch 42 refers to series [11]" in warned[1]
    assert query(pg_dsn, "SELECT sid FROM edge.unnamed_series ORDER BY sid") == [
        (1,),
        (2,),
        (3,),
        (10,),
        (11,),
    ]
    old = [
        SeriesInfo(1, "meter-1", "voltage_l1", "V", "float32", "gauge"),
        SeriesInfo(10, "meter-1", "import_energy", "kWh", "float32", "counter"),
    ]
    new = [
        SeriesInfo(1, "meter-1", "voltage_l1", "V", "", ""),  # an entry without a type
        SeriesInfo(2, "meter-1", "voltage_l2", "V", "float32", "gauge"),
        SeriesInfo(3, "meter-1", "voltage_l3", "V", "float32", "gauge"),
        SeriesInfo(10, "meter-1", "import_energy", "kWh", "float32", "counter", 1e9),
        SeriesInfo(11, "meter-1", "power", "W", "float32", "gauge"),
    ]
    await c.handle(f"{PREFIX}/hk/{gw}/birth", meter_birth(gw, 2, old).encode())
    # The newer birth is large: it comes in parts, one to each of two competing consumers.
    big = meter_birth(
        gw,
        3,
        new,
        time_zone="Asia/Ho_Chi_Minh",
        signing_key={"alg": "ed25519", "public": "A" * 43 + "="},
    )
    parts = split_birth(big, 400)
    assert len(parts) >= 2
    other = consumer(pg_dsn)
    for i, payload in enumerate(parts):
        await (c if i % 2 else other).handle(f"{PREFIX}/hk/{gw}/birth/{i + 1}", payload)
    # An older birth delivered late changes nothing.
    await c.handle(
        f"{PREFIX}/hk/{gw}/birth",
        meter_birth(gw, 1, [SeriesInfo(1, "old-meter", "v1", "V", "uint16", "gauge")]).encode(),
    )
    await c.handle(
        f"{PREFIX}/hk/{gw}/status", b'{"state":"online","gateway":"hk-cab-0142","boot":3}'
    )
    await c.close()
    await other.close()
    assert query(pg_dsn, "SELECT count(*) FROM edge.unnamed_series") == [(0,)]
    named = query(
        pg_dsn,
        "SELECT sid, device, point, unit, type, kind, wrap FROM edge.series ORDER BY sid",
    )
    assert named == [
        (1, "meter-1", "voltage_l1", "V", "float32", "gauge", None),  # type kept
        (2, "meter-1", "voltage_l2", "V", "float32", "gauge", None),
        (3, "meter-1", "voltage_l3", "V", "float32", "gauge", None),
        (10, "meter-1", "import_energy", "kWh", "float32", "counter", 1e9),
        (11, "meter-1", "power", "W", "float32", "gauge", None),
    ]
    day = query(
        pg_dsn,
        "SELECT point, count(*) FROM edge.readings_named WHERE gateway = %s "
        "AND device = 'meter-1' AND ts >= '2025-11-22 00:00+07' AND ts < '2025-11-23 00:00+07' "
        "GROUP BY point ORDER BY point",
        gw,
    )
    assert day == [
        ("import_energy", 4),
        ("power", 3),
        ("voltage_l1", 5),
        ("voltage_l2", 2),
        ("voltage_l3", 2),
    ]
    births = query(pg_dsn, "SELECT boot, time_zone, signing_key FROM edge.births ORDER BY boot")
    assert births == [(1, None, None), (2, None, None), (3, "Asia/Ho_Chi_Minh", "A" * 43 + "=")]
    assert query(pg_dsn, "SELECT state, boot FROM edge.gateway_status") == [("online", 3)]


async def test_pgstore__concurrent_writers_leave_each_batch_once(pg_dsn):
    """Four consumers, each on its own connection, start together (the schema is created
    once) and store overlapping redeliveries of 40 batches, split parts among them."""
    rng = random.Random(7)
    t = 1_763_800_000_000
    payloads = []
    for seq in range(1, 41):
        pts = [
            Point(sid, t + seq * 10_000 + k * 1000, rng.random())
            for sid in range(1, 21)
            for k in range(10)
        ]
        if seq % 5 == 0:  # split in halves, and the first half split again
            h1, h2 = pts[:100], pts[100:]
            for part, chunk in (((1, 1), h1[:50]), ((1, 2), h1[50:]), ((2,), h2), ((1,), h1)):
                payloads.append(encode_batch(BatchHeader("gw-c", seq, 1, t, part=part), chunk))
        else:
            payloads.append(encode_batch(BatchHeader("gw-c", seq, 1, t), pts))
    consumers = [consumer(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(c.start() for c in consumers))

    async def feed(c: StoreConsumer, seed: int) -> None:
        order = payloads * 2
        random.Random(seed).shuffle(order)
        for p in order:
            await c.handle(data_topic("gw-c"), p)

    await asyncio.gather(*(feed(c, i) for i, c in enumerate(consumers)))
    for c in consumers:
        await c.close()
    assert query(pg_dsn, "SELECT version FROM edge.schema_version") == [(STORE_VERSION,)]
    dupes = query(
        pg_dsn,
        "SELECT sid, ts, count(*) FROM edge.readings GROUP BY sid, ts HAVING count(*) > 1",
    )
    assert dupes == []
    assert query(pg_dsn, "SELECT count(*) FROM edge.readings") == [(40 * 200,)]
    assert query(pg_dsn, "SELECT count(DISTINCT seq) FROM edge.batches") == [(40,)]
    assert query(pg_dsn, "SELECT count(*) FROM edge.batch_gaps") == [(0,)]
    assert sum(c.counts.readings for c in consumers) == 40 * 200


async def test_pgstore__malformed_batch_stored_and_reported_with_gateway_and_seq(pg_dsn):
    report = io.StringIO()
    c = consumer(pg_dsn, report)
    await c.start()
    bad = (GOLDEN / "malformed").glob("*.json")
    named = next(
        p
        for p in sorted(bad)
        if json.loads(p.read_text()).get("gw") and json.loads(p.read_text()).get("seq") is not None
    )
    want = json.loads(named.read_text())
    payload = named.with_suffix(".bin").read_bytes()
    topic = data_topic(want["gw"])
    await c.handle(topic, payload)
    await c.handle(topic, payload)  # redelivered: kept once
    # The batch after it arrives: the malformed one's seq is not a gap.
    t = 1_763_800_000_000
    nxt = encode_batch(BatchHeader(want["gw"], want["seq"] + 1, 1, t), [Point(1, t, 1.0)])
    await c.handle(topic, nxt)
    await c.close()
    rows = query(pg_dsn, "SELECT topic, gateway, seq, code, payload FROM edge.malformed")
    assert rows == [(topic, want["gw"], want["seq"], want["error"], payload)]
    lines = report.getvalue().splitlines()
    assert lines[0].startswith(
        f"bad batch on {topic} (gateway {want['gw']}, batch {want['seq']}): {want['error']}: "
    )
    assert lines[0].endswith("stored in edge.malformed")
    assert query(pg_dsn, "SELECT count(*) FROM edge.batch_gaps") == [(0,)]
    assert c.counts.malformed == 2


async def test_pgstore__newer_database_refused_in_one_line(pg_dsn, mosquitto):
    c = consumer(pg_dsn)
    await c.start()
    await c.close()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE edge.schema_version SET version = 99 WHERE component = 'store'")
    with pytest.raises(StoreSchemaError, match="version 99, newer than this consumer"):
        await consumer(pg_dsn).start()
    r = run_cli("consume", "--broker", mosquitto.url, "--store", pg_dsn, "--duration", "5")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "edge consume: the database's store schema is version 99, newer than this consumer "
        f"knows ({STORE_VERSION}): upgrade the consumer"
    ]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_consume_store__password_in_dsn_refused_at_its_argument():
    secret = "s3cr3t-pw"
    for dsn in (
        f"postgresql://edge:{secret}@127.0.0.1:5432/city",
        f"host=127.0.0.1 user=edge password={secret} dbname=city",
    ):
        r = run_cli("consume", "--broker", "mqtt://127.0.0.1:1883", "--store", dsn)
        assert r.returncode == 2
        assert secret not in r.stdout + r.stderr
        assert r.stderr.startswith("edge consume: --store carries a password")
        assert "PGPASSWORD" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("consume", "--broker", "mqtt://127.0.0.1:1883", "--store", "not a dsn")
    assert r.returncode == 2 and r.stderr.startswith("edge consume: --store must be")


def test_reconcile_store__unparsable_url_with_a_password_refused_never_shown():
    secret = "s3cr3t-pw"
    r = run_cli("reconcile", "--store", f"postgresql://edge:{secret}@[::1/city")
    assert r.returncode == 2
    assert secret not in r.stdout + r.stderr
    assert r.stderr.startswith("edge reconcile: --store must be postgresql://"), r.stderr


def test_consume_store__with_format_refused_in_one_line():
    r = run_cli(
        "consume",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--store",
        "postgresql://edge@127.0.0.1/city",
        "--format",
        "csv",
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "--format" in r.stderr and "Traceback" not in r.stderr


def test_consume_store__with_a_ledger_file_refused_in_one_line():
    """With --store every consumer adds to the one ledger in the database: a per-process
    SQLite file would split the money between consumers."""
    r = run_cli(
        "consume",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--store",
        "postgresql://edge@127.0.0.1/city",
        "--ledger",
        "ledger.sqlite",
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "edge.ledger_" in r.stderr and "Traceback" not in r.stderr


def test_consume_store__without_the_platform_extra_says_how_to_install(capsys, monkeypatch):
    from edge import cli

    for name in ("psycopg", "edge.platform.pgstore", "edge.platform.store_consumer"):
        monkeypatch.setitem(sys.modules, name, None)  # as if psycopg were not installed
    code = cli.main(
        ["consume", "--broker", "mqtt://127.0.0.1:1883", "--store", "postgresql://e@h/d"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == cli.PLATFORM_EXTRA


# ------------------------------------------------------------------ the consumer process


class StoreProc:
    """``edge consume --store`` as a process, restartable under its client id."""

    def __init__(
        self, broker: str, dsn: str, workdir: Path, client_id: str = "store-1", *extra: str
    ):
        self.broker, self.dsn, self.dir, self.client_id = broker, dsn, workdir, client_id
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        with open(self.dir / f"{self.client_id}.{self.runs}.err", "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge",
                    "consume",
                    "--broker",
                    self.broker,
                    "--store",
                    self.dsn,
                    "--client-id",
                    self.client_id,
                    *self.extra,
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def stderr(self, run: int | None = None) -> str:
        return (self.dir / f"{self.client_id}.{run or self.runs}.err").read_text()


class Publisher:
    """A gateway's uplink as far as the broker sees it: real encoded batches, QoS 1."""

    def __init__(self, url: str, gateway: str = "gw-kill") -> None:
        import aiomqtt

        host, port = url.removeprefix("mqtt://").split(":")
        self.client = aiomqtt.Client(host, int(port), identifier=f"pub-{gateway}")
        self.gateway = gateway
        self.expected: list[tuple] = []

    def batch(self, seq: int, n: int = 200) -> bytes:
        t = 1_763_800_000_000 + seq * 100_000
        pts = [
            Point(sid, t + k * 1000, seq + sid / 1000 + k)
            for sid in range(1, 11)
            for k in range(n // 10)
        ]
        payload = encode_batch(BatchHeader(self.gateway, seq, 1, t), pts)
        self.expected += wire_points(payload)
        return payload

    async def publish(self, seq: int, n: int = 200) -> None:
        await self.client.publish(data_topic(self.gateway), self.batch(seq, n), qos=1)


def count(dsn: str, sql: str, *args) -> int:
    try:
        return query(dsn, sql, *args)[0][0]
    except psycopg.OperationalError:
        return -1  # the database is down


async def until_stored(dsn: str, batches: int, within_s: float = 60) -> None:
    await wait_until(
        lambda: count(dsn, "SELECT count(*) FROM edge.batches") >= batches,
        within_s,
        interval=0.3,
        what=f"{batches} batches in the store",
    )


async def subscribed(pub: Publisher, dsn: str) -> None:
    """Batch 1 again and again until the consumer stored it: its session is in place."""

    async def stored() -> bool:
        return count(dsn, "SELECT count(*) FROM edge.batches WHERE seq = 1") == 1

    payload = pub.batch(1)
    for _ in range(60):
        await pub.client.publish(data_topic(pub.gateway), payload, qos=1)
        await asyncio.sleep(0.5)
        if await stored():
            return
    raise AssertionError("the consumer never stored batch 1")


def assert_exactly_once(dsn: str, pub: Publisher) -> None:
    assert count(dsn, "SELECT count(*) FROM edge.batch_gaps") == 0
    assert stored_points(dsn, pub.gateway) == sorted(pub.expected, key=repr)


@pytest.mark.slow
async def test_consume_store__sigkilled_at_random_moments_every_reading_once(
    mosquitto, pg_dsn, tmp_path
):
    proc = StoreProc(mosquitto.url, pg_dsn, tmp_path)
    proc.start()
    pub = Publisher(mosquitto.url)
    rng = random.Random(20)
    try:
        async with pub.client:
            await subscribed(pub, pg_dsn)
            total = 200

            async def feed() -> None:  # ~10 s of batches of 1000 readings
                for seq in range(2, total + 1):
                    await pub.publish(seq, 1000)
                    await asyncio.sleep(0.04)

            feeder = asyncio.create_task(feed())
            kills = []
            for _ in range(5):  # mid-batch, mid-commit, mid-ack: wherever it is
                await asyncio.sleep(rng.uniform(0.8, 1.8))  # a restart replays a backlog
                proc.kill()
                kills.append(count(pg_dsn, "SELECT count(*) FROM edge.batches"))
                await asyncio.sleep(rng.uniform(0, 0.5))
                proc.start()
            await feeder
            await pub.publish(total + 1)  # to the last run, which is then surely consuming
            await until_stored(pg_dsn, total + 1, 90)
        assert proc.stop() == 0
    finally:
        if proc.proc and proc.proc.poll() is None:
            proc.kill()
    assert proc.runs == 6
    assert kills[-1] < total, kills  # every kill fell within the stream
    assert_exactly_once(pg_dsn, pub)
    summary = proc.stderr()
    assert "stored " in summary and "gaps: none" in summary and "Traceback" not in summary


@pytest.mark.slow
async def test_consume_store__database_stopped_mid_stream_no_ack_nothing_lost(
    mosquitto, postgres, pg_dsn, tmp_path
):
    proc = StoreProc(mosquitto.url, pg_dsn, tmp_path)
    proc.start()
    pub = Publisher(mosquitto.url, "gw-down")
    try:
        async with pub.client:
            await subscribed(pub, pg_dsn)
            for seq in range(2, 11):
                await pub.publish(seq)
            await until_stored(pg_dsn, 10)
            postgres.stop()
            for seq in range(11, 21):  # the broker takes them; the consumer cannot store them
                await pub.publish(seq)
            await asyncio.sleep(3)
            errors = [x for x in proc.stderr().splitlines() if " ERROR " in x]
            assert len(errors) == 1, errors  # once, then DEBUG while it lasts
            assert "cannot store batch 11 of gateway gw-down" in errors[0]
            assert "unacknowledged" in errors[0]
            proc.kill()  # while the database is down: what it had not stored was not acked
            postgres.start()
            proc.start()
            for seq in range(21, 31):
                await pub.publish(seq)
            await until_stored(pg_dsn, 30)
            # Down again, and back, under the same process: it resumes by itself.
            postgres.stop()
            for seq in range(31, 41):
                await pub.publish(seq)
            await asyncio.sleep(2)
            postgres.start()
            await until_stored(pg_dsn, 40)
        assert proc.stop() == 0
    finally:
        if proc.proc and proc.proc.poll() is None:
            proc.kill()
        if not postgres.running():
            postgres.start()
    assert_exactly_once(pg_dsn, pub)
    second = proc.stderr().splitlines()
    assert len([x for x in second if " ERROR " in x]) == 1
    assert any(" INFO " in x and "takes messages again" in x for x in second)


@pytest.fixture
def small_tablespace(postgres, pg_dsn):
    """edge.readings and its indexes on an 8 MiB tmpfs (a tablespace), to fill; ``grow()``
    makes room. Needs root (mount)."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a full disk needs root")
    where = Path(tempfile.mkdtemp(prefix="edge-pgfull-"))
    os.chmod(where, 0o755)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    import pwd

    pw = pwd.getpwnam("postgres")
    os.chown(where, pw.pw_uid, pw.pw_gid)
    os.chmod(where, 0o700)
    name = f"full_{pg_dsn.rsplit('/', 1)[1]}"

    class Space:
        def grow(self) -> None:
            subprocess.run(["mount", "-o", "remount,size=256m", str(where)], check=True)

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{where}'")
    yield name, Space()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS edge CASCADE")
        conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
    subprocess.run(["umount", str(where)], check=False)
    where.rmdir()


@pytest.mark.slow
async def test_pgstore__database_full_reported_retried_nothing_lost(
    pg_dsn, small_tablespace, caplog
):
    name, space = small_tablespace
    c = consumer(pg_dsn, retry_max_s=0.5)
    await c.start()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for what in (
            "TABLE edge.readings",
            "INDEX edge.readings_series_ts",
            "INDEX edge.readings_ts_brin",
        ):
            conn.execute(f"ALTER {what} SET TABLESPACE {name}")
    caplog.set_level(logging.DEBUG, logger="edge.platform.store_consumer")
    pub = Publisher("mqtt://127.0.0.1:1", "gw-full")  # only its batches: no broker here
    payloads = [pub.batch(seq, 5000) for seq in range(1, 41)]  # ~20 MB of rows and index

    async def feed() -> None:
        for p in payloads:
            await c.handle(data_topic("gw-full"), p)

    feeder = asyncio.create_task(feed())

    def erred() -> bool:
        return any(r.levelno == logging.ERROR for r in caplog.records)

    await wait_until(erred, 120, what="the disk to fill")
    stuck = count(pg_dsn, "SELECT count(*) FROM edge.batches")
    await asyncio.sleep(2)
    assert not feeder.done()  # the batch in hand is held, not acknowledged, not dropped
    assert count(pg_dsn, "SELECT count(*) FROM edge.batches") == stuck < 40
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"batch {stuck + 1} of gateway gw-full" in errors[0]
    assert "No space left on device" in errors[0] or "could not extend" in errors[0]
    space.grow()
    await asyncio.wait_for(feeder, 120)
    await c.close()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("takes messages again" in m for m in infos)
    assert_exactly_once(pg_dsn, pub)


@pytest.mark.slow
async def test_consume_store__real_gateway_births_status_and_readings_named(
    mosquitto, sim_sdm630, pg_dsn, tmp_path
):
    """The agent with two simulated meters publishes to Mosquitto; the store consumer (the
    MQTT source, manual acks) names every reading through the gateway's own birth."""
    from edge.platform.store_consumer import MqttStoreSource
    from tests.conftest import gateway_yaml
    from tests.test_system import start_gateway, stop

    c = consumer(pg_dsn)
    await c.start()
    source = MqttStoreSource(mosquitto.url, c, client_id="store-gw")
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.subscribed.wait(), 10)
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=sim_sdm630.port,
        poll_interval_s=0.2,
    )
    gateway, gw_task = await start_gateway(tmp_path, text)
    await asyncio.sleep(3)
    gateway.stop_polling()

    def drained() -> bool:
        s = gateway.buffer.sync.stats()
        return gateway.queue.empty() and s.pending_readings == 0 and s.outbox_batches == 0

    await wait_until(drained, 30, what="the gateway to drain")
    accepted = gateway.writer_stats.accepted
    batches = gateway.forwarder.stats.last_seq_acked
    await wait_until(
        lambda: count(pg_dsn, "SELECT count(*) FROM edge.readings") >= accepted,
        30,
        what="the store to catch up",
    )
    await stop(gw_task)
    await wait_until(
        lambda: query(pg_dsn, "SELECT state FROM edge.gateway_status") == [("offline",)],
        10,
        what="the gateway's offline status",
    )
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await c.close()
    assert count(pg_dsn, "SELECT count(*) FROM edge.readings") == accepted
    assert count(pg_dsn, "SELECT count(DISTINCT seq) FROM edge.batches") == batches
    assert count(pg_dsn, "SELECT count(*) FROM edge.unnamed_series") == 0
    named = query(
        pg_dsn,
        "SELECT device, point, unit, kind, type, count(*) FROM edge.readings_named "
        "WHERE device LIKE 'meter-%%' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2",
    )
    points = {(d, p) for d, p, *_ in named}
    assert ("meter-1", "voltage_l1") in points and ("meter-2", "import_energy") in points
    energy = next(r for r in named if r[:2] == ("meter-1", "import_energy"))
    assert energy[2] == "kWh" and energy[3] == "counter"
    tz = query(pg_dsn, "SELECT time_zone FROM edge.births")[0][0]
    assert tz
    assert source.acked >= batches


@pytest.mark.slow
async def test_consume_store__shared_group_one_killed_every_reading_once(
    mosquitto, pg_dsn, tmp_path
):
    """Two consumers in an MQTT 5 shared subscription split the batches; one is killed and
    restarted; the store holds every reading once and both took a share."""
    procs = [
        StoreProc(mosquitto.url, pg_dsn, tmp_path, f"store-{i}", "--share", "city")
        for i in range(2)
    ]
    for p in procs:
        p.start()
    pub = Publisher(mosquitto.url, "gw-shared")
    try:
        async with pub.client:
            await subscribed(pub, pg_dsn)
            await asyncio.sleep(2)  # both sessions in the group
            for seq in range(2, 61):
                await pub.publish(seq)
                if seq == 30:
                    procs[0].kill()
                    procs[0].start()
            await pub.publish(61)
            await until_stored(pg_dsn, 61)
        for p in procs:
            assert p.stop() == 0
    finally:
        for p in procs:
            if p.proc and p.proc.poll() is None:
                p.kill()
    assert_exactly_once(pg_dsn, pub)
    took = [
        int(m.group(1))
        for p in procs
        for r in range(1, p.runs + 1)
        if (m := re.search(r"^stored (\d+) batches", p.stderr(r), re.M))
    ]
    assert len([n for n in took if n > 0]) >= 2, took


@pytest.mark.slow
async def test_pgstore__database_down_at_start_waited_for(postgres, pg_dsn, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.platform.store_consumer")
    postgres.stop()
    try:
        c = consumer(pg_dsn, retry_max_s=0.5)
        starting = asyncio.create_task(c.start())
        await asyncio.sleep(2)
        assert not starting.done()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith("store: cannot open the database: ")
    finally:
        postgres.start()
    await asyncio.wait_for(starting, 30)
    assert any("takes messages again (opened" in r.getMessage() for r in caplog.records)
    payload = (GOLDEN / "meter_two_polls.bin").read_bytes()
    await c.handle(data_topic("hk-cab-0142"), payload)
    await c.close()
    assert stored_points(pg_dsn, "hk-cab-0142") == sorted(wire_points(payload), key=repr)


def numbering(gateway: str, boot: int, t: int, seqs, *, skip=(), split=(), sid0=1) -> list:
    """Payloads of a gateway numbering its batches ``seqs`` in ``boot`` from time ``t``; seqs
    in ``split`` are sent as parts (1, 1), (1, 2), (2,) and (1,) (overlapping: the last one
    is a duplicate of the first two), seqs in ``skip`` are not sent (a gap)."""
    rng = random.Random(f"{gateway}/{boot}/{t}")
    out = []
    for seq in seqs:
        if seq in skip:
            continue
        created = t + seq * 10_000
        pts = [Point(sid0 + k % 4, created + k * 100, rng.random()) for k in range(40)]
        if seq in split:
            h1, h2 = pts[:20], pts[20:]
            for part, chunk in (((1, 1), h1[:10]), ((1, 2), h1[10:]), ((2,), h2), ((1,), h1)):
                head = BatchHeader(gateway, seq, boot, created, part=part)
                out.append(encode_batch(head, chunk))
        else:
            out.append(encode_batch(BatchHeader(gateway, seq, boot, created), pts))
    return out


def sent_points(payloads: list[bytes]) -> list[tuple]:
    """Every reading the gateway sent once: parts covered by others left out."""
    seen: dict[tuple, list[tuple]] = {}
    for p in payloads:
        h = decode_batch_wire(p).header
        seen[(h.seq, h.boot, h.created_ms, h.part)] = wire_points(p)
    out = []
    for (seq, boot, created, part), pts in seen.items():
        if part == (1,) and (seq, boot, created, (1, 1)) in seen:
            continue
        out += pts
    return sorted(out, key=repr)


async def test_pgstore__gateway_numbering_again_stored_as_new_batches_each_reading_once(
    pg_dsn, caplog
):
    """A gateway that lost its buffer numbers from boot 1, seq 1 again: its batches are other
    batches than the stored ones of those seqs (a re-sent batch keeps its boot and created,
    spec §1), stored with their readings; redeliveries of old and new ones, whole or split,
    are no-ops; the restart is reported once; gaps are counted per numbering."""
    caplog.set_level(logging.WARNING)
    report = io.StringIO()
    c = consumer(pg_dsn, report)
    await c.start()
    gw, t_old, t_new = "gw-reset", 1_763_000_000_000, 1_763_800_000_000
    old = numbering(gw, 7, t_old, range(1, 13), skip={9}, split={3, 11})
    new = numbering(gw, 1, t_new, range(1, 9), skip={4}, split={3, 6})
    topic = data_topic(gw)
    for p in old + new + old + new:
        await c.handle(topic, p)
    await c.close()
    assert stored_points(pg_dsn, gw) == sent_points(old + new)
    assert query(pg_dsn, "SELECT count(*) FROM edge.malformed") == [(0,)]
    assert c.counts.batches == 9 + 2 * 3 + 5 + 2 * 3  # whole batches and the parts (1, x), (2)
    assert c.counts.duplicates == len(old + new) + 4  # the second round, and each part (1,)
    warnings = [
        r.getMessage() for r in caplog.records if "numbers its batches again" in r.getMessage()
    ]
    assert warnings == [
        f"gateway {gw} numbers its batches again from 1 (boot 1, created {t_new + 10_000}): a "
        "gateway that lost its buffer? stored as new batches"
    ]
    assert query(
        pg_dsn,
        "SELECT gateway, first_missing, last_missing, numbering FROM edge.batch_gaps "
        "ORDER BY numbering",
    ) == [(gw, 9, 9, 0), (gw, 4, 4, 1)]
    assert query(pg_dsn, "SELECT count(*) FROM edge.incomplete_batches") == [(0,)]
    assert report.getvalue() == ""


async def test_pgstore__renumbered_batches_out_of_order_one_restart_reported(pg_dsn, caplog):
    """The new numbering's batches met before the old ones' (a consumer with a backlog) and in
    any order: the same readings, one restart, the same gaps."""
    caplog.set_level(logging.WARNING)
    gw, t_old, t_new = "gw-late", 1_763_000_000_000, 1_763_800_000_000
    old = numbering(gw, 4, t_old, range(1, 21), skip={17})
    new = numbering(gw, 1, t_new, range(1, 15), skip={2}, split={5})
    order = old + new
    random.Random(3).shuffle(order)
    c = consumer(pg_dsn)
    await c.start()
    for p in list(reversed(new)) + order:
        await c.handle(data_topic(gw), p)
    await c.close()
    assert stored_points(pg_dsn, gw) == sent_points(old + new)
    assert query(pg_dsn, "SELECT boot FROM edge.renumberings") == [(1,)]
    assert len([r for r in caplog.records if "numbers its batches again" in r.getMessage()]) == 1
    assert query(
        pg_dsn,
        "SELECT first_missing, last_missing, numbering FROM edge.batch_gaps ORDER BY numbering",
    ) == [(17, 17, 0), (2, 2, 1)]


async def test_pgstore__renumbered_gateway_concurrent_writers_each_reading_once(pg_dsn, caplog):
    """Four consumers on their own connections get overlapping redeliveries of two
    numberings, split parts among them: every reading once, one restart recorded."""
    caplog.set_level(logging.WARNING)
    gw = "gw-cc"
    old = numbering(gw, 9, 1_763_000_000_000, range(1, 31), split={5, 10, 15})
    new = numbering(gw, 1, 1_763_800_000_000, range(1, 21), split={5, 10})
    consumers = [consumer(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(c.start() for c in consumers))

    async def feed(c: StoreConsumer, seed: int) -> None:
        order = (old + new) * 2
        random.Random(seed).shuffle(order)
        for p in order:
            await c.handle(data_topic(gw), p)

    await asyncio.gather(*(feed(c, i) for i, c in enumerate(consumers)))
    for c in consumers:
        await c.close()
    assert stored_points(pg_dsn, gw) == sent_points(old + new)
    assert query(pg_dsn, "SELECT count(*) FROM edge.renumberings") == [(1,)]
    assert len([r for r in caplog.records if "numbers its batches again" in r.getMessage()]) == 1
    assert query(pg_dsn, "SELECT count(*) FROM edge.batch_gaps") == [(0,)]


async def test_pgstore__same_seq_boot_created_other_counts_kept_as_seq_conflict(pg_dsn):
    """A batch under a stored seq, boot, created and part with another count of readings is
    not a re-sent batch (it keeps its bytes): forged or corrupt, kept in malformed, reported."""
    report = io.StringIO()
    c = consumer(pg_dsn, report)
    await c.start()
    t = 1_763_800_000_000
    first = encode_batch(BatchHeader("gw-x", 5, 1, t), [Point(1, t, 1.0)])
    forged = encode_batch(BatchHeader("gw-x", 5, 1, t), [Point(1, t, 1.0), Point(2, t, 9.0)])
    topic = data_topic("gw-x")
    await c.handle(topic, first)
    await c.handle(topic, forged)
    await c.handle(topic, first)  # the first one redelivered: a plain duplicate
    await c.close()
    assert stored_points(pg_dsn, "gw-x") == wire_points(first)
    assert query(pg_dsn, "SELECT gateway, seq, code, payload FROM edge.malformed") == [
        ("gw-x", 5, "seq_conflict", forged)
    ]
    line = report.getvalue().splitlines()[0]
    assert line.startswith(f"bad batch on {topic} (gateway gw-x, batch 5): seq_conflict: ")
    assert c.counts.duplicates == 1 and c.counts.malformed == 1


async def test_pgstore__v1_database_migrates_and_stores_its_seq_reused_batches(pg_dsn, caplog):
    """A database of store schema 1 (key (gateway, seq, part)) holding a batch, and a
    renumbered gateway's batch of that seq kept in malformed as ``seq_reused``, migrates in
    place at the consumer's start: the kept batch is stored with its readings, its malformed
    row goes, and redeliveries of both are no-ops."""
    from edge.platform import pgstore

    caplog.set_level(logging.INFO)
    gw, t = "gw-v1", 1_763_000_000_000
    old = numbering(gw, 3, t, [1])[0]
    new = numbering(gw, 1, t + 86_400_000, [1])[0]
    h = decode_batch_wire(old).header
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE SCHEMA edge")
        conn.execute(
            "CREATE TABLE edge.schema_version (component text PRIMARY KEY, version int NOT NULL)"
        )
        conn.execute(pgstore._STEPS[0])
        conn.execute("INSERT INTO edge.schema_version VALUES ('store', 1)")
        conn.execute("INSERT INTO edge.gateways (gateway) VALUES (%s)", (gw,))
        conn.execute(
            "INSERT INTO edge.batches (gateway_id, seq, boot, created_ms, n, dropped, topic) "
            "VALUES (1, %s, %s, %s, %s, 0, %s)",
            (h.seq, h.boot, h.created_ms, h.points, data_topic(gw)),
        )
        with conn.cursor().copy(pgstore.COPY_READINGS) as copy:
            copy.set_types(pgstore.COPY_TYPES)
            for row in pgstore.copy_tuples(1, decode_batch_wire(old).points):
                copy.write_row(row)
        conn.execute(
            "INSERT INTO edge.malformed (topic, gateway, seq, code, message, payload, digest) "
            "VALUES (%s, %s, 1, 'seq_reused', 'kept by schema 1', %s, %s)",
            (data_topic(gw), gw, new, pgstore._digest(data_topic(gw).encode(), new)),
        )
    c = consumer(pg_dsn)
    await c.start()
    assert c.store.migrated_from == 1
    assert query(pg_dsn, "SELECT version FROM edge.schema_version") == [(STORE_VERSION,)]
    assert stored_points(pg_dsn, gw) == sent_points([old, new])
    assert query(pg_dsn, "SELECT count(*) FROM edge.malformed") == [(0,)]
    for p in (old, new, old, new):
        await c.handle(data_topic(gw), p)
    await c.close()
    assert stored_points(pg_dsn, gw) == sent_points([old, new])
    assert c.counts.batches == 0 and c.counts.duplicates == 4
    assert query(pg_dsn, "SELECT seq, boot FROM edge.renumberings") == [(1, 1)]
    assert any("1 of 1 batches kept as seq_reused" in r.getMessage() for r in caplog.records)
    d = consumer(pg_dsn)  # a second start finds nothing left to store
    await d.start()
    await d.close()
    assert stored_points(pg_dsn, gw) == sent_points([old, new])


@pytest.mark.slow
async def test_consume_store__real_gateway_buffer_lost_every_accepted_reading_stored(
    mosquitto, sim_sdm630, pg_dsn, tmp_path, caplog
):
    """The agent runs, is stopped, loses its buffer file and starts again at boot 1, seq 1:
    every reading it accepted in both runs is in edge.readings once, the restart reported."""
    from edge.platform.store_consumer import MqttStoreSource
    from tests.conftest import gateway_yaml
    from tests.test_system import start_gateway, stop

    caplog.set_level(logging.WARNING)
    c = consumer(pg_dsn)
    await c.start()
    source = MqttStoreSource(mosquitto.url, c, client_id="store-lost")
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.subscribed.wait(), 10)
    buffer = tmp_path / "b.sqlite"
    text = gateway_yaml(
        buffer=buffer, broker_port=mosquitto.port, sim_port=sim_sdm630.port, poll_interval_s=0.2
    )
    accepted, last_seq = [], []
    for run_s in (4, 2):
        gateway, gw_task = await start_gateway(tmp_path, text)
        await asyncio.sleep(run_s)
        gateway.stop_polling()

        def drained(gateway=gateway) -> bool:
            s = gateway.buffer.sync.stats()
            return gateway.queue.empty() and s.pending_readings == 0 and s.outbox_batches == 0

        await wait_until(drained, 30, what="the gateway to drain")
        accepted.append(gateway.writer_stats.accepted)
        last_seq.append(gateway.forwarder.stats.last_seq_acked)
        await stop(gw_task)
        for f in tmp_path.glob("b.sqlite*"):  # the buffer lost (SD card replaced)
            f.unlink()
    assert 1 < last_seq[1] < last_seq[0]  # the second run numbers under seqs already stored
    await wait_until(
        lambda: count(pg_dsn, "SELECT count(*) FROM edge.readings") >= sum(accepted),
        30,
        what="the store to catch up",
    )
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await c.close()
    assert count(pg_dsn, "SELECT count(*) FROM edge.readings") == sum(accepted)
    assert count(pg_dsn, "SELECT count(*) FROM edge.batches") == sum(last_seq)
    assert count(pg_dsn, "SELECT count(*) FROM edge.malformed") == 0
    assert count(pg_dsn, "SELECT count(*) FROM edge.batch_gaps") == 0
    again = [r for r in caplog.records if "numbers its batches again" in r.getMessage()]
    assert len(again) == 1 and " again from 1 (boot 1, " in again[0].getMessage()


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_store_consumer__tx_to_the_ledger_with_the_births_key_forged_held(pg_dsn, where):
    """The same messages give the same ledger in SQLite (one consumer) and in the store's
    database, where two consumers share one ledger (the birth on one, entries on both)."""
    from edge.platform.pgledger import PgLedger
    from protocols.meterlink import encode_tx_message
    from tests.test_ledger import DAY1, Gateway, pay

    gw, forger = Gateway(), Gateway()
    report = io.StringIO()
    if where == "sqlite":
        ledger = TxLedger()
        c = d = StoreConsumer(PgStore(pg_dsn), ledger, report=report)
        await c.start()
    else:
        c, d = (
            StoreConsumer(PgStore(pg_dsn), ledger_factory=lambda: PgLedger(pg_dsn), report=report)
            for _ in range(2)
        )
        await asyncio.gather(c.start(), d.start())
        ledger = PgLedger(pg_dsn)
    good = encode_tx_message(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    forged = encode_tx_message(gw.name, "hk", [forger.entry("HK-01", 2, pay("T2", 90_000, DAY1))])
    await c.handle(f"{PREFIX}/hk/{gw.name}/tx", good)  # before the birth: held for its key
    await d.handle(f"{PREFIX}/hk/{gw.name}/birth", gw.birth())  # the key releases it
    await d.handle(f"{PREFIX}/hk/{gw.name}/tx", good)  # redelivered: counted once
    await c.handle(f"{PREFIX}/hk/{gw.name}/tx", forged)
    await d.handle(f"{PREFIX}/hk/{gw.name}/tx", b"\xc1 not msgpack")
    await c.close()
    await d.close()
    rec = ledger.reconcile()
    assert rec.total_vnd == 30_000
    lines = report.getvalue().splitlines()
    assert f"gateway {gw.name}: meter HK-01 entry 2 held (bad_signature); not counted" in lines
    assert any(x.startswith(f"bad tx message on {PREFIX}/hk/{gw.name}/tx: ") for x in lines)
    assert query(pg_dsn, "SELECT signing_key FROM edge.births") == [
        (base64.b64encode(gw.public).decode(),)
    ]


def _birth_doc(**kw) -> bytes:
    doc = {
        "v": 1,
        "gateway": "gw-bad",
        "site": "hk",
        "boot": 1,
        "software": "x",
        "started_ms": 1,
        "next_seq": 1,
        "devices": [],
        "series": [[1, "meter-1", "voltage", "V", "float32", "gauge"]],
    }
    doc.update(kw)
    return json.dumps(doc).encode()


def _tx(**entry) -> bytes:
    import msgpack

    e = {"meter": "HK-01", "seq": 1, "type": 1, "payload": b"x", "received_ms": 1, "sig": b"s" * 64}
    e.update(entry)
    gateway = e.pop("gateway", "gw-bad")
    return msgpack.packb({"v": 1, "gateway": gateway, "site": "hk", "entries": [list(e.values())]})


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE = {
    "birth_labels_a_list": (
        "birth",
        _birth_doc(series=[[1, "m", "p", "V", "f", "gauge", {"labels": [1]}]]),
    ),
    "birth_labels_a_string": (
        "birth",
        _birth_doc(series=[[1, "m", "p", "V", "f", "gauge", {"labels": "ab"}]]),
    ),
    "birth_boot_infinite": ("birth", _birth_doc(boot=1).replace(b'"boot": 1', b'"boot": 1e400')),
    "birth_started_infinity": (
        "birth",
        _birth_doc().replace(b'"started_ms": 1', b'"started_ms": -Infinity'),
    ),
    "birth_nested_deep": ("birth", DEEP),
    "birth_key_nested_deep": ("birth", b'{"v": 1, "x": ' + DEEP + b"}"),
    "birth_lone_surrogate_gateway": ("birth", _birth_doc(gateway="gw\ud800")),
    "birth_lone_surrogate_key": (
        "birth",
        _birth_doc(signing_key={"alg": "ed25519", "public": "\udc00"}),
    ),
    "birth_part_count_huge": ("birth/1", _birth_doc(part={"index": 1, "count": 2**40, "id": "ab"})),
    # Not bad, only odd: kept as a part waiting for its other part (no report).
    "birth_sid_listed_twice_differently": (
        "birth",
        _birth_doc(series=[[5, "m", "a", "V", "f"], [5, "m", "b", "V", "f"]]),
    ),
    # Not bad: the same entry twice is the entry.
    "birth_sid_listed_twice_the_same": (
        "birth",
        _birth_doc(series=[[1, "m", "p", "V", "f"], [1, "m", "p", "V", "f"]]),
    ),
    "birth_part_id_with_nul": (
        "birth/1",
        _birth_doc(part={"index": 1, "count": 2, "id": "a\x00b"}),
    ),
    "status_nested_deep": ("status", b'{"state": "online", "x": ' + DEEP + b"}"),
    "status_lone_surrogate": ("status", b'{"state": "\\ud800"}'),
    "tx_seq_beyond_int64": ("tx", _tx(seq=2**64 - 1)),
    "tx_received_beyond_int64": ("tx", _tx(received_ms=2**64 - 1)),
    "tx_meter_with_nul": ("tx", _tx(meter="HK\x0001")),
    "tx_gateway_with_nul": ("tx", _tx(gateway="gw\x00bad")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_store_consumer__hostile_birth_status_or_tx_reported_in_one_line_never_raised(
    pg_dsn, case
):
    """A message no store can take is reported in one line and skipped (acknowledged): it
    must not escape ``handle``, where it would stop the consumer with a traceback and come
    back at every start (a retained birth reaches every consumer)."""
    from edge.platform.pgledger import PgLedger

    kind, payload = HOSTILE[case]
    report = io.StringIO()
    c = StoreConsumer(PgStore(pg_dsn), ledger_factory=lambda: PgLedger(pg_dsn), report=report)
    await c.start()
    topic = f"{PREFIX}/hk/gw-bad/{kind}"
    await c.handle(topic, payload)
    good = encode_batch(
        BatchHeader("gw-bad", 1, 1, 1_763_800_000_000), [Point(1, 1_763_800_000_000, 1.0)]
    )
    await c.handle(data_topic("gw-bad"), good)
    await c.close()
    lines = report.getvalue().splitlines()
    assert stored_points(pg_dsn, "gw-bad") == wire_points(good)
    if case == "birth_part_id_with_nul":
        assert lines == [] and count(pg_dsn, "SELECT count(*) FROM edge.birth_parts") == 1
        return
    if case == "birth_sid_listed_twice_the_same":
        assert lines == [] and query(pg_dsn, "SELECT sid, point FROM edge.series") == [(1, "p")]
        return
    assert len(lines) == 1 and lines[0].startswith("bad ") and " on " in lines[0], lines
    assert c.counts.bad_messages == 1


async def test_store_consumer__births_naming_a_series_id_otherwise_reported(pg_dsn, caplog):
    """Series ids are never reused (docs/batch-format-v1.md §3): a birth naming an id otherwise
    than an earlier boot did renames every reading of it in edge.readings_named (the newest boot
    wins), so the consumer says so, whichever of the two arrives first."""
    gw = "gw-rename"
    c = consumer(pg_dsn)
    await c.start()
    caplog.set_level(logging.WARNING, logger="edge.platform.store_consumer")
    voltage = SeriesInfo(5, "meter-1", "voltage", "V", "float32", "gauge")
    current = SeriesInfo(5, "meter-2", "current", "A", "float32", "gauge")
    same = SeriesInfo(6, "meter-1", "frequency", "Hz", "float32", "gauge")
    await c.handle(f"{PREFIX}/hk/{gw}/birth", meter_birth(gw, 1, [voltage, same]).encode())
    await c.handle(f"{PREFIX}/hk/{gw}/birth", meter_birth(gw, 1, [voltage, same]).encode())
    assert caplog.records == []  # the same names again: nothing to say
    await c.handle(f"{PREFIX}/hk/{gw}/birth", meter_birth(gw, 2, [current, same]).encode())
    await c.handle(f"{PREFIX}/hk/{gw}/birth", meter_birth(gw, 1, [voltage, same]).encode())
    await c.close()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    assert f"gateway {gw}: the birth of boot 2 names series 5 meter-2/current" in warned[0]
    assert "boot 1 named it meter-1/voltage" in warned[0]
    assert f"gateway {gw}: the birth of boot 1 names series 5 meter-1/voltage" in warned[1]
    assert "boot 2 named it meter-2/current" in warned[1]
    assert "series 6" not in " ".join(warned)
    assert query(pg_dsn, "SELECT device, point FROM edge.series WHERE sid = 5") == [
        ("meter-2", "current")
    ]


def _long_id(chars: int = 3000) -> str:
    """A gateway id PostgreSQL cannot index (a btree row holds at most 2704 bytes) and cannot
    compress below that."""
    import hashlib

    text = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(chars // 64 + 1))
    return "gw-" + text[:chars]


@pytest.mark.parametrize("kind", ["data", "birth", "status", "tx"])
async def test_store_consumer__id_beyond_the_databases_limits_reported_not_retried_forever(
    pg_dsn, kind
):
    """A value too large for an index (SQLSTATE 54000, an OperationalError in psycopg) is not
    an outage: the message is reported and kept (a batch in edge.malformed), not retried
    forever with the consumer stuck on it."""
    from edge.platform.pgledger import PgLedger

    gw = _long_id()
    t = 1_763_800_000_000
    payload = {
        "data": encode_batch(BatchHeader(gw, 7, 1, t), [Point(1, t, 1.0)]),
        "birth": meter_birth(gw, 1, []).encode(),
        "status": json.dumps({"state": "online", "gateway": gw, "boot": 1}).encode(),
        "tx": _tx(gateway=gw),
    }[kind]
    report = io.StringIO()
    c = StoreConsumer(
        PgStore(pg_dsn), ledger_factory=lambda: PgLedger(pg_dsn), report=report, give_up_s=5
    )
    await c.start()
    topic = f"{PREFIX}/hk/{gw}/{kind}"
    await c.handle(topic, payload)
    await c.close()
    lines = report.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bad {'batch' if kind == 'data' else kind}")
    assert len(lines[0]) < 1000  # the id shortened in the line
    if kind == "data":
        rows = query(pg_dsn, "SELECT seq, code, payload FROM edge.malformed")
        assert rows == [(7, "not_storable", payload)]


@pytest.mark.slow
@pytest.mark.parametrize("share", [None, "city"])
async def test_mqtt_store_source__backlog_beyond_its_queue_all_stored_never_stalls(
    mosquitto_with, pg_dsn, share
):
    """A broker sending more than the source queues at once (Mosquitto with
    ``max_inflight_messages 0``, a backlog kept while the consumer was away) must not make the
    source discard messages it never acknowledges: those would stay in flight at the broker and
    the consumer stall until it reconnects."""
    from edge.platform.store_consumer import MqttStoreSource

    broker = mosquitto_with("max_inflight_messages 0")
    c = consumer(pg_dsn)
    await c.start()

    async def run_for(until) -> None:
        source = MqttStoreSource(broker.url, c, client_id="store-backlog", share=share)
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.subscribed.wait(), 10)
            await until()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    await run_for(lambda: asyncio.sleep(0.5))  # the persistent session, then away
    pub = Publisher(broker.url, "gw-backlog")
    async with pub.client:
        for seq in range(1, 1501):
            await pub.publish(seq, n=10)
    await run_for(lambda: until_stored(pg_dsn, 1500, within_s=90))
    await c.close()
    assert_exactly_once(pg_dsn, pub)


async def test_store_consumer__message_naming_another_gateway_than_its_topic_not_trusted(pg_dsn):
    """A broker's ACL lets gateway B publish on B's topics only; a batch, birth, status or
    parking entry that names gateway A on B's topic is reported and never stored as A's (it
    would put readings, names or payments under A, and take A's batch numbers)."""
    from protocols.meterlink import encode_tx_message
    from tests.test_ledger import DAY1, Gateway, pay

    report = io.StringIO()
    ledger = TxLedger()
    c = StoreConsumer(PgStore(pg_dsn), ledger, report=report)
    await c.start()
    a = Gateway()
    series = [SeriesInfo(1, "meter-1", "voltage", "V", "float32")]
    batch = encode_batch(BatchHeader("gw-a", 7, 1, 1_763_800_000_000), [Point(1, 1, 230.0)])
    on_b = f"{PREFIX}/hk/gw-b"
    await c.handle(f"{on_b}/data", batch)
    await c.handle(f"{on_b}/birth", meter_birth("gw-a", 1, series).encode())
    await c.handle(f"{on_b}/birth/2", meter_birth("gw-a", 1, series).encode())
    await c.handle(f"{on_b}/status", json.dumps({"state": "online", "gateway": "gw-a"}).encode())
    await c.handle(f"{PREFIX}/hk/{a.name}-x/birth", a.birth())
    tx = encode_tx_message(a.name, "hk", [a.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    await c.handle(f"{on_b}/tx", tx)
    await c.close()
    assert query(pg_dsn, "SELECT count(*) FROM edge.readings") == [(0,)]
    assert query(pg_dsn, "SELECT count(*) FROM edge.batches") == [(0,)]
    assert query(pg_dsn, "SELECT count(*) FROM edge.births") == [(0,)]
    assert query(pg_dsn, "SELECT count(*) FROM edge.gateway_status") == [(0,)]
    assert query(pg_dsn, "SELECT gateway, seq, code FROM edge.malformed") == [
        ("gw-a", 7, "gateway_mismatch")
    ]
    assert ledger.reconcile().total_vnd == 0 and ledger.entry_count() == 0
    lines = report.getvalue().splitlines()
    first = f"bad batch on {on_b}/data (gateway gw-a, batch 7): gateway_mismatch"
    assert lines[0].startswith(first)
    for kind, topic, named in [
        ("birth", f"{on_b}/birth", "gw-a"),
        ("birth", f"{on_b}/birth/2", "gw-a"),
        ("status", f"{on_b}/status", "gw-a"),
        ("birth", f"{PREFIX}/hk/{a.name}-x/birth", a.name),
        ("tx message", f"{on_b}/tx", a.name),
    ]:
        line = f"bad {kind} on {topic}: it names gateway {named}, not the topic's"
        assert line in report.getvalue(), kind


@pytest.mark.parametrize(
    ("topic", "gateway", "ok"),
    [
        ("city/v1/hk/gw-1/data", "gw-1", True),
        ("city/v1/hk/gw-1/birth/3", "gw-1", True),
        ("city/v1/hk/gw.a/data", "gw.a", True),  # RabbitMQ: an id with a '.'
        ("city/v1/s/x.g/data", "g", True),  # RabbitMQ: a site with a '.' (ambiguous there)
        ("city/v1/hk/gw-1/data", "gw-2", False),
        ("city/v1/hk/gw-10/data", "gw-1", False),
        ("city/v1/hk/xgw-1/data", "gw-1", False),
        ("city/v1/hk/gw-1/birth/3", "3", False),
    ],
)
def test_published_by__a_topic_belongs_to_the_gateway_it_names_only(topic, gateway, ok):
    from edge.platform.store_consumer import published_by

    assert published_by(topic, gateway) is ok


async def test_store_consumer__a_message_it_fails_on_kept_reported_never_stops_it(pg_dsn, caplog):
    """A failure of the consumer's own (here a ledger that raises on one gateway's entries,
    standing for a bug no rule foresaw) keeps the message's bytes in edge.malformed as
    not_handled, says so in one line and goes on: the broker would otherwise hand the same
    message to every consumer in turn and stop them all."""
    from protocols.meterlink import encode_tx_message
    from tests.test_ledger import DAY1, Gateway, pay

    class Flaky(TxLedger):
        def add(self, gateway, site, entries):
            if gateway == bad.name:
                raise KeyError("a case no rule foresaw")
            return super().add(gateway, site, entries)

    good, bad = Gateway("gw-good"), Gateway("gw-flaky")
    report = io.StringIO()
    ledger = Flaky()
    c = StoreConsumer(PgStore(pg_dsn), ledger, report=report)
    await c.start()
    for gw in (good, bad):
        await c.handle(f"{PREFIX}/hk/{gw.name}/birth", gw.birth())
    tx_bad = encode_tx_message(bad.name, "hk", [bad.entry("HK-02", 1, pay("T9", 9_000, DAY1))])
    tx_good = encode_tx_message(good.name, "hk", [good.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    with caplog.at_level(logging.ERROR):
        await c.handle(f"{PREFIX}/hk/{bad.name}/tx", tx_bad)  # returns: the source acks it
    await c.handle(f"{PREFIX}/hk/{good.name}/tx", tx_good)  # the consumer goes on
    await c.handle(data_topic("gw-good"), special_batch("gw-good"))
    await c.close()
    assert ledger.reconcile().total_vnd == 30_000
    assert query(pg_dsn, "SELECT topic, code, payload FROM edge.malformed") == [
        (f"{PREFIX}/hk/{bad.name}/tx", "not_handled", tx_bad)
    ]
    assert query(pg_dsn, "SELECT count(*) FROM edge.batches") == [(1,)]
    line = f"bad message on {PREFIX}/hk/{bad.name}/tx (gateway {bad.name}): not_handled: KeyError"
    assert line in report.getvalue()
    assert [r.levelno for r in caplog.records if "not_handled" in r.getMessage()] == [
        logging.ERROR
    ]
