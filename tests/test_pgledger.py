"""One parking ledger for every consumer, in PostgreSQL: consumers (processes, connections)
adding overlapping, conflicting and forged copies at the same time end with the reconciliation
one sequential ledger gives; a birth racing its entries leaves nothing held; ``edge reconcile
--store`` prints what ``--ledger`` prints; a bad DSN or a database that is down is one line.

The rule-by-rule cases run on both ledgers in tests/test_ledger.py.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.platform.ledger import TxLedger
from protocols.meterlink import (
    MeterStatus,
    SessionEnd,
    SignedEntry,
    decode_message,
    encode_message,
)
from tests.test_ledger import DAY1, DAY2, Gateway, pay, receipt

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent


def city(seed: int = 7) -> tuple[list[Gateway], list[tuple[str, str, list[SignedEntry]]]]:
    """Two gateways, five meters, ~210 entries shuffled into tx messages of 1-4 entries: per
    meter payments, their receipts (one with another amount) and statuses over two Hanoi days;
    on each gateway's first meter a transaction paid twice alike (counted once), one paid with
    two amounts (counted never), two versions of one seq (neither counted); the same across
    the two gateways, and a meter both relay; six forged copies per gateway (never counted)."""
    rnd = random.Random(seed)
    gws = [Gateway("gw-1"), Gateway("gw-2")]
    messages: list[tuple[str, str, list[SignedEntry]]] = []
    for gw, meters in ((gws[0], ("HK-01", "HK-02")), (gws[1], ("BD-01", "BD-02"))):
        entries = []
        for meter in meters:
            for seq in range(1, 31):
                at = DAY1 + seq * 600_000 if seq < 20 else DAY2 + seq * 60_000
                if seq % 3 == 1:
                    last = pay(f"{meter}-T{seq}", 1_000 * rnd.randint(5, 200), at, 1 + seq % 5)
                    msg = last
                elif seq % 3 == 2:
                    off = 1_000 if (meter, seq) == (meters[1], 5) else 0  # a receipt mismatch
                    msg = receipt(last.transaction_id, last.amount_vnd + off, at, seq)
                else:
                    msg = MeterStatus(90, 80, False, False, at)
                entries.append(gw.entry(meter, seq, msg))
        m0, first = meters[0], decode_message(entries[0].type, entries[0].payload)
        entries += [
            gw.entry(m0, 40, first),  # the same payment again under another seq
            gw.entry(m0, 41, pay(f"{m0}-DUP", 70_000, DAY1)),
            gw.entry(m0, 42, pay(f"{m0}-DUP", 7_000_000, DAY1)),  # same id, another amount
            gw.entry(m0, 43, pay(f"{m0}-A", 10_000, DAY1)),
            gw.entry(m0, 43, SessionEnd("S", DAY1)),  # a second version of seq 43
            # across the two gateways: one transaction paid alike at two meters (counted once),
            # one paid with two amounts (never), a meter both relay (a cabinet moved), with
            # two versions of one seq
            gw.entry(m0, 44, pay("X-SHARED", 50_000, DAY1)),
            gw.entry(m0, 45, pay("X-CLASH", 20_000 if gw is gws[0] else 25_000, DAY1)),
            gw.entry(
                "XM-01", 31, pay("XM-31", 5_000, DAY1) if gw is gws[0] else SessionEnd("S", 0)
            ),
        ]
        entries += [gw.entry("XM-01", s, pay(f"XM-{s}", 1_000 * s, DAY1)) for s in range(1, 31)]
        big = encode_message(pay("X", 9_999_000, DAY1))
        forged = [SignedEntry(e.meter, e.seq, e.type, big, 0, e.sig) for e in entries[:6]]
        everything = entries + forged
        rnd.shuffle(everything)
        while everything:
            n = rnd.randint(1, 4)
            messages.append((gw.name, "hk", everything[:n]))
            everything = everything[n:]
    return gws, messages


def comparable(rec) -> tuple:
    """What must be equal to the đồng, whatever the order: days, meters, re-deliveries, and
    the anomalies as (kind, meter, seq) (their order is the order they were seen in)."""
    return (
        rec.days,
        rec.meters,
        rec.total_vnd,
        rec.duplicates_ignored,
        sorted((a["kind"], a["meter"], a["seq"]) for a in rec.anomalies),
    )


def _consumer(
    dsn: str, births: list[tuple[str, bytes]], messages: list, seed: int, start=None
) -> None:
    """One consumer process: the births and the messages in its own order, from the moment
    every consumer is connected (``start``, a barrier)."""
    from edge.platform.pgledger import PgLedger

    work: list = [("birth", b) for b in births] + [("tx", m) for m in messages]
    random.Random(seed).shuffle(work)
    led = PgLedger(dsn)
    if start is not None:
        start.wait(60)
    for kind, item in work:
        if kind == "birth":
            led.key_announced(*item)
        else:
            led.add(*item)
    led.close()


def test_pgledger__consumers_adding_overlapping_conflicting_and_forged_copies_at_once_agree_with_one_sequential_ledger(  # noqa: E501
    pg_dsn,
):
    from edge.platform.pgledger import PgLedger

    gws, messages = city()
    births = [(g.name, g.public) for g in gws]
    # four consumers; each gets every message at least once, some twice (redelivered)
    rnd = random.Random(1)
    shares = [messages + rnd.sample(messages, len(messages) // 4) for _ in range(4)]
    PgLedger(pg_dsn).close()  # the tables exist; the consumers race on the entries alone
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(shares))
    procs = [
        ctx.Process(target=_consumer, args=(pg_dsn, births, share, i, start))
        for i, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    shared = PgLedger(pg_dsn)
    got = shared.reconcile()
    one = TxLedger()
    for g, public in births:
        one.key_announced(g, public)
    for share in shares:
        for m in share:
            one.add(*m)
    want = one.reconcile()
    assert comparable(got) == comparable(want)
    # the rules did bite: counted once, never counted, held
    assert want.total_vnd > 0 and want.bad_signatures == 12
    hk = next(m for m in want.meters if m.meter == "HK-01")
    assert (hk.duplicate_transactions, hk.conflicts) == (2, 5)
    xm = next(m for m in want.meters if m.meter == "XM-01")
    assert (xm.gateways, xm.entries, xm.conflicts) == (["gw-1"], 30, 2)
    assert not any(d.total_vnd >= 7_000_000 for d in want.days)
    shared.close()


def test_pgledger__a_birth_and_its_entries_on_two_connections_at_once_leave_nothing_held(pg_dsn):
    from edge.platform.pgledger import PgLedger

    births, adds = PgLedger(pg_dsn), PgLedger(pg_dsn)
    rounds, per = 12, 25
    for r in range(rounds):
        gw = Gateway(f"gw-{r}")
        entries = [gw.entry(f"M-{r}", s, pay(f"T{r}-{s}", 1_000, DAY1)) for s in range(1, per + 1)]
        go = threading.Barrier(2)

        def birth(gw=gw, go=go):
            go.wait()
            births.key_announced(gw.name, gw.public)

        def add(gw=gw, entries=entries, go=go):
            go.wait()
            adds.add(gw.name, "hk", entries)

        threads = [threading.Thread(target=birth), threading.Thread(target=add)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    rec = births.reconcile()
    assert sum(m.held for m in rec.meters) == 0
    assert sum(m.entries for m in rec.meters) == rounds * per
    assert rec.total_vnd == rounds * per * 1_000
    births.close()
    adds.close()


def test_pgledger__one_meter_and_one_transaction_from_two_gateways_at_once_are_judged_in_turn(
    pg_dsn,
):
    from edge.platform.pgledger import PgLedger

    gws = [Gateway("gw-1"), Gateway("gw-2")]
    one, leds = TxLedger(), [PgLedger(pg_dsn), PgLedger(pg_dsn)]
    for g in gws:
        one.key_announced(g.name, g.public)
        leds[0].key_announced(g.name, g.public)
    errors: list[BaseException] = []
    for r in range(1, 41):
        same = pay(f"XM-{r}", 1_000 * r, DAY1)
        msgs = []
        for i, g in enumerate(gws):
            relayed = same if i == 0 or r % 2 else SessionEnd(f"S{r}", DAY1)  # a second version
            own = ("HK-01", "BD-01")[i]
            shared = pay(f"SH-{r}", 500 if i == 0 or r % 3 else 700, DAY1)  # paid at two meters
            msgs.append((g.name, "hk", [g.entry("XM-01", r, relayed), g.entry(own, r, shared)]))
        go = threading.Barrier(2)

        def send(led, msg, go=go):
            try:
                go.wait()
                led.add(*msg)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=send, args=(led, m)) for led, m in zip(leds, msgs, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for m in msgs:
            one.add(*m)
    assert errors == []
    assert comparable(leds[0].reconcile()) == comparable(one.reconcile())
    for led in leds:
        led.close()


def test_pgledger__random_streams_of_colliding_copies_give_the_sqlite_ledgers_report(postgres):
    """The shared case table of tests/test_ledger.py (every kind of collision, births anywhere)
    in random orders: PostgreSQL and SQLite give the same report, anomalies and their order
    included."""
    from edge.platform.pgledger import PgLedger
    from tests.test_ledger import _GW, _POOL, _RELAY

    for seed in range(12):
        rnd = random.Random(seed)
        order = [rnd.randrange(len(_POOL)) for _ in range(rnd.randint(5, 25))]
        births = [(rnd.randint(0, len(order)), gw) for gw in (_GW, _RELAY)]
        reports = []
        for led in (TxLedger(), PgLedger(postgres.new_database())):
            for n, i in enumerate([*order, None]):
                for gw in (gw for at, gw in births if at == n):
                    led.key_announced(gw.name, gw.public)
                if i is not None:
                    led.add(_POOL[i][0], "hk", [_POOL[i][1]])
            reports.append(led.reconcile().as_dict())
            led.close()
        assert reports[0] == reports[1], f"seed {seed}"


def test_pgledger__consumers_starting_together_create_the_tables_once(pg_dsn):
    import psycopg

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_consumer, args=(pg_dsn, [], [], i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    with psycopg.connect(pg_dsn) as db:
        assert db.execute("SELECT component, version FROM edge.schema_version").fetchall() == [
            ("ledger", 1)
        ]


def test_pgledger__a_ledger_newer_than_the_code_is_refused_in_one_line(pg_dsn):
    import psycopg

    from edge.platform.pgledger import LedgerSchemaError, PgLedger

    PgLedger(pg_dsn).close()
    with psycopg.connect(pg_dsn) as db:
        db.execute("UPDATE edge.schema_version SET version = 99 WHERE component = 'ledger'")
    with pytest.raises(LedgerSchemaError, match="schema version 99, newer than this edge knows"):
        PgLedger(pg_dsn)
    r = edge("reconcile", "--store", pg_dsn)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "upgrade edge" in r.stderr


def test_pgledger__a_database_that_goes_down_is_reported_and_used_again_when_back(postgres, pg_dsn):
    from edge.platform.pgledger import LedgerUnavailable, PgLedger

    gw = Gateway()
    led = PgLedger(pg_dsn)
    led.key_announced(gw.name, gw.public)
    e1, e2 = (gw.entry("HK-01", s, pay(f"T{s}", 10_000, DAY1)) for s in (1, 2))
    led.add(gw.name, "hk", [e1])
    postgres.stop()
    with pytest.raises(LedgerUnavailable, match=f"127.0.0.1:{postgres.port}"):
        led.add(gw.name, "hk", [e2])
    postgres.start()
    assert [o.status for o in led.add(gw.name, "hk", [e1, e2])] == ["duplicate", "accepted"]
    assert led.reconcile().total_vnd == 20_000
    led.close()


def test_pgledger__a_connection_cut_between_messages_is_replaced_without_losing_one(pg_dsn):
    import psycopg

    from edge.platform.pgledger import PgLedger

    gw = Gateway()
    led = PgLedger(pg_dsn)
    led.key_announced(gw.name, gw.public)
    for s in (1, 2, 3):
        with psycopg.connect(pg_dsn, autocommit=True) as admin:  # e.g. a restarted pgbouncer
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        out = led.add(gw.name, "hk", [gw.entry("HK-01", s, pay(f"T{s}", 10_000, DAY1))])
        assert [o.status for o in out] == ["accepted"]
    assert led.reconcile().total_vnd == 30_000
    led.close()


# ---------------------------------------------------------------------- edge reconcile --store


def edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli__reconcile_store_prints_what_reconcile_ledger_prints(pg_dsn, tmp_path):
    from edge.platform.pgledger import PgLedger

    gws, messages = city(seed=3)
    file, shared = TxLedger(tmp_path / "ledger.sqlite"), PgLedger(pg_dsn)
    for led in (file, shared):
        for g in gws:
            led.key_announced(g.name, g.public)
        for m in messages + messages[:10]:
            led.add(*m)
        led.close()
    for extra in ((), ("--json",)):
        a = edge("reconcile", "--ledger", str(tmp_path / "ledger.sqlite"), *extra)
        b = edge("reconcile", "--store", pg_dsn, *extra)
        assert (a.returncode, b.returncode, b.stderr) == (0, 0, "")
        assert b.stdout == a.stdout
    assert json.loads(b.stdout)["total_vnd"] > 0


@pytest.mark.parametrize(
    "dsn, why",
    [
        ("postgresql://edge:s3cret@127.0.0.1:5432/city", "carries a password"),
        ("postgresql://edge@127.0.0.1:5432/city?password=s3cret", "carries a password"),
        ("mysql://edge@127.0.0.1/city", "must be postgresql://"),
        ("postgresql://edge@127.0.0.1:pg/city", "has a port that is not a number"),
    ],
)
def test_cli__reconcile_store_refuses_a_dsn_at_its_argument(dsn, why):
    r = edge("reconcile", "--store", dsn)
    assert r.returncode == 2 and why in r.stderr and f"--store {why}" in r.stderr
    assert "s3cret" not in r.stderr and "Traceback" not in r.stderr


def test_cli__reconcile_store_names_a_database_that_is_down_in_one_line(postgres, pg_dsn):
    postgres.stop()
    r = edge("reconcile", "--store", pg_dsn, env={"PGPASSWORD": "s3cret"})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(
        f"edge reconcile: cannot reach PostgreSQL at 127.0.0.1:{postgres.port}"
    )
    assert r.stderr.count("\n") == 1 and "s3cret" not in r.stderr


def test_cli__reconcile_store_works_for_a_role_that_may_only_read_and_says_what_it_cannot_do(
    pg_dsn,
):
    import psycopg

    from edge.platform.pgledger import PgLedger

    db_name = pg_dsn.rsplit("/", 1)[1]
    reader = f"reader_{db_name}"
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        db.execute(f'CREATE ROLE "{reader}" LOGIN')
    as_reader = pg_dsn.replace("postgres@", f"{reader}@")
    # a fresh database: the reader may not create the tables, and is told so in one line
    r = edge("reconcile", "--store", as_reader)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot create the ledger tables" in r.stderr and "Traceback" not in r.stderr
    gw = Gateway()
    led = PgLedger(pg_dsn)
    led.key_announced(gw.name, gw.public)
    led.add(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    led.close()
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        db.execute(f'GRANT USAGE ON SCHEMA edge TO "{reader}"')
        db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA edge TO "{reader}"')
    r = edge("reconcile", "--store", as_reader, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_vnd"] == 30_000


def test_cli__reconcile_store_without_the_platform_extra_says_how_to_install_it():
    blocked = (
        "import sys; sys.modules['psycopg'] = None; from edge.cli import main; "
        "sys.exit(main(['reconcile', '--store', 'postgresql://edge@127.0.0.1/city']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", blocked],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert r.stderr == (
        "edge reconcile --store needs the platform extra: pip install 'hanoi-edge[platform]'\n"
    )
