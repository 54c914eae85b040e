"""The platform's parking ledger: signatures, exactly-once by (meter, seq) and transaction id,
tampered entries reported and not counted, reconciliation per meter and day."""

from __future__ import annotations

import base64
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.platform.consumer import BatchConsumer
from edge.platform.ledger import TxLedger, local_day
from protocols.birth import Birth
from protocols.meterlink import (
    MeterStatus,
    Payment,
    Receipt,
    SessionEnd,
    SignedEntry,
    canonical_bytes,
    encode_message,
    encode_tx_message,
)

DAY1 = 1_763_780_400_000  # 2025-11-22 10:00 in Hanoi (03:00 UTC)
DAY2 = DAY1 + 86_400_000


class Gateway:
    def __init__(self, name: str = "gw-1") -> None:
        self.name = name
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def entry(self, meter: str, seq: int, msg, received_ms: int = 0) -> SignedEntry:
        payload = encode_message(msg)
        sig = self.key.sign(canonical_bytes(meter, seq, int(msg.TYPE), payload))
        return SignedEntry(meter, seq, int(msg.TYPE), payload, received_ms, sig)

    def birth(self) -> bytes:
        key = {"alg": "ed25519", "public": base64.b64encode(self.public).decode()}
        return Birth(self.name, "hk", 1, "t", 0, 0, (), (), {"signing_key": key}).encode()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)],
)
def open_ledger(request, tmp_path):
    """Open the ledger under test: ``open_ledger(pinned=...)``; calling it again opens the same
    ledger anew (a consumer restarted). Every case runs on both the SQLite :class:`TxLedger`
    and the PostgreSQL ``PgLedger``, so the two can never disagree."""
    opened = []
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite"

        def make(**kw):
            opened.append(TxLedger(path, **kw))
            return opened[-1]
    else:
        from edge.platform.pgledger import PgLedger

        dsn = request.getfixturevalue("pg_dsn")

        def make(**kw):
            opened.append(PgLedger(dsn, **kw))
            return opened[-1]

    yield make
    for led in opened:
        led.close()


def pay(tx: str, vnd: int, at_ms: int, method: int = 3) -> Payment:
    return Payment(f"S-{tx}", tx, vnd, method, at_ms - 1000, at_ms)


def receipt(tx: str, vnd: int, at_ms: int, number: int = 1) -> Receipt:
    return Receipt(tx, "receipt", "01BLP0-001", "HN-24E", number, at_ms, "M1", "0101", vnd, 0)


def test_local_day__is_hanoi_time():
    assert local_day(DAY1) == "2025-11-22"
    assert local_day(1_763_744_399_000) == "2025-11-21"  # 23:59:59 in Hanoi
    assert local_day(1_763_744_400_000) == "2025-11-22"  # midnight in Hanoi, 17:00 UTC


def test_ledger__each_entry_counts_once_and_totals_reconcile_per_meter_and_day(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    es = [
        gw.entry("HK-01", 1, pay("T1", 30_000, DAY1)),
        gw.entry("HK-01", 2, receipt("T1", 30_000, DAY1)),
        gw.entry("HK-01", 3, pay("T2", 40_000, DAY2, method=1)),
        gw.entry("HK-02", 1, pay("T3", 5_000, DAY1, method=5)),
    ]
    assert [o.status for o in led.add(gw.name, "hk", es[:2])] == ["accepted"] * 2
    # the message re-sent after a lost PUBACK, with one new entry
    outs = led.add(gw.name, "hk", es)
    assert [o.status for o in outs] == ["duplicate", "duplicate", "accepted", "accepted"]
    rec = led.reconcile()
    rows = {(d.meter, d.day): d for d in rec.days}
    assert rows[("HK-01", "2025-11-22")].total_vnd == 30_000
    assert rows[("HK-01", "2025-11-22")].unreceipted == 0
    assert rows[("HK-01", "2025-11-23")].total_vnd == 40_000
    assert rows[("HK-01", "2025-11-23")].unreceipted == 1
    assert rows[("HK-01", "2025-11-23")].by_method == {"traffic_account": 40_000}
    assert rows[("HK-02", "2025-11-22")].by_method == {"cash": 5_000}
    assert rec.total_vnd == 75_000 and rec.duplicates_ignored == 2
    assert rec.bad_signatures == 0 and rec.anomalies == []
    text = "\n".join(rec.lines())
    assert re.search(r"\nHK-01 +2025-11-22 +1 +30,000 +1 +0\n", text), text
    assert json.loads(led.reconcile_json())["total_vnd"] == 75_000


def test_ledger__a_tampered_entry_is_reported_not_counted_and_does_not_block_the_real_one(
    open_ledger,
):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    real = gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    forged = SignedEntry(
        real.meter, real.seq, real.type, encode_message(pay("T1", 3_000_000, DAY1)), 0, real.sig
    )
    assert [o.status for o in led.add(gw.name, "hk", [forged])] == ["bad_signature"]
    assert [o.status for o in led.add(gw.name, "hk", [forged])] == ["bad_signature"]  # replayed
    assert [o.status for o in led.add(gw.name, "hk", [real])] == ["accepted"]
    rec = led.reconcile()
    assert rec.total_vnd == 30_000
    (m,) = rec.meters
    assert m.bad_signatures == 1 and m.held == 1 and m.entries == 1
    (a,) = rec.anomalies
    assert a["kind"] == "bad_signature" and (a["meter"], a["seq"]) == ("HK-01", 1)
    # signed by another gateway's key under this gateway's name
    other = Gateway("gw-evil")
    assert led.add(gw.name, "hk", [other.entry("HK-01", 2, pay("T9", 1, DAY1))])[0].status == (
        "bad_signature"
    )


def test_ledger__entries_before_the_birth_wait_for_the_key(open_ledger):
    gw = Gateway()
    led = open_ledger()
    e = gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    assert led.add(gw.name, "hk", [e])[0].status == "no_key"
    assert led.reconcile().total_vnd == 0
    (o,) = led.key_announced(gw.name, gw.public)
    assert o.status == "accepted" and isinstance(o.message, Payment)
    assert led.reconcile().total_vnd == 30_000 and led.reconcile().meters[0].held == 0


def test_ledger__a_changed_key_is_reported_and_its_entries_held_until_trusted(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    rotated = Gateway(gw.name)
    led.key_announced(gw.name, rotated.public)
    e = rotated.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    assert led.add(gw.name, "hk", [e])[0].status == "untrusted_key"
    kinds = [a["kind"] for a in led.reconcile().anomalies]
    assert kinds == ["key_changed", "untrusted_key"]
    assert led.reconcile().total_vnd == 0
    assert [o.status for o in led.trust(gw.name, rotated.public)] == ["accepted"]
    assert led.reconcile().total_vnd == 30_000


def test_ledger__a_pinned_key_is_the_only_one_trusted(open_ledger):
    gw, impostor = Gateway(), Gateway()
    led = open_ledger(pinned={gw.name: gw.public})
    led.key_announced(gw.name, impostor.public)  # a forged birth comes first
    e = impostor.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    assert led.add(gw.name, "hk", [e])[0].status == "untrusted_key"
    assert led.reconcile().anomalies[0]["kind"] == "unpinned_key"


def summary(rec, meter):
    """A meter's line of the reconciliation, its name left out (to compare two meters)."""
    (m,) = [m for m in rec.meters if m.meter == meter]
    return (m.entries, m.first_seq, m.last_seq, m.gaps, m.bad_signatures, m.held, m.conflicts,
            m.duplicate_transactions)  # fmt: skip


def test_ledger__a_transaction_paid_under_two_seqs_counts_once_at_the_lower_seq(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    led.add(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    led.add(gw.name, "hk", [gw.entry("HK-01", 2, pay("T1", 30_000, DAY1))])
    led.add(gw.name, "hk", [gw.entry("HK-02", 2, pay("T2", 40_000, DAY1))])  # the other order
    led.add(gw.name, "hk", [gw.entry("HK-02", 1, pay("T2", 40_000, DAY1))])
    rec = led.reconcile()
    assert rec.total_vnd == 70_000
    assert summary(rec, "HK-01") == summary(rec, "HK-02") == (2, 1, 2, [], 0, 0, 0, 1)
    dup = [(a["meter"], a["seq"]) for a in rec.anomalies if a["kind"] == "duplicate_transaction"]
    assert dup == [("HK-01", 2), ("HK-02", 2)]  # the copy that does not count, in both orders


def test_ledger__two_versions_of_a_seq_are_both_held_whichever_came_first(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    for meter, tx in (("HK-01", "T1"), ("HK-02", "T2")):
        paid = gw.entry(meter, 1, pay(tx, 30_000, DAY1))
        # a different validly signed entry under seq 1 (a meter whose journal was reset)
        other = gw.entry(meter, 1, SessionEnd("S", DAY1))
        order = [paid, other] if meter == "HK-01" else [other, paid]
        assert led.add(gw.name, "hk", [order[0]])[0].status == "accepted"
        assert [o.status for o in led.add(gw.name, "hk", order[1:] + order)] == ["conflict"] * 3
        led.add(gw.name, "hk", [gw.entry(meter, 2, pay(tx + "b", 5_000, DAY1))])
    rec = led.reconcile()
    assert rec.total_vnd == 10_000  # neither version of seq 1 counts
    assert summary(rec, "HK-01") == summary(rec, "HK-02") == (1, 2, 2, [], 0, 2, 2, 0)
    assert rec.duplicates_ignored == 4  # each meter got both versions once more
    kinds = [(a["kind"], a["meter"], a["seq"]) for a in rec.anomalies]
    assert kinds == [("conflict", "HK-01", 1)] * 2 + [("conflict", "HK-02", 1)] * 2
    assert not led.has("HK-01", 1) and led.has("HK-01", 2)


def test_ledger__a_conflict_leaves_the_other_copy_of_its_transaction_counted(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    led.add(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    led.add(gw.name, "hk", [gw.entry("HK-01", 2, pay("T1", 30_000, DAY1))])
    assert led.add(gw.name, "hk", [gw.entry("HK-01", 1, SessionEnd("S", DAY1))])[0].status == (
        "conflict"
    )
    rec = led.reconcile()
    assert rec.total_vnd == 30_000  # T1 still counts once, at seq 2
    (m,) = rec.meters
    assert (m.entries, m.duplicate_transactions, m.conflicts, m.held) == (1, 0, 2, 2)
    kinds = [a["kind"] for a in rec.anomalies]
    assert kinds == ["duplicate_transaction", "conflict", "conflict"]


def test_ledger__a_transaction_paid_with_two_amounts_counts_neither_whichever_came_first(
    open_ledger,
):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    for meter, tx, first in (("HK-01", "T1", 30_000), ("HK-02", "T2", 3_000_000)):
        second = 3_000_000 if first == 30_000 else 30_000
        outs = led.add(gw.name, "hk", [gw.entry(meter, 1, pay(tx, first, DAY1))])
        outs += led.add(gw.name, "hk", [gw.entry(meter, 2, pay(tx, second, DAY1))])
        assert [o.status for o in outs] == ["accepted", "accepted"]  # taken, not counted
    rec = led.reconcile()
    assert rec.total_vnd == 0 and rec.days == []
    assert summary(rec, "HK-01") == summary(rec, "HK-02") == (2, 1, 2, [], 0, 2, 2, 0)
    kinds = sorted((a["kind"], a["meter"], a["seq"]) for a in rec.anomalies)
    assert kinds == [("transaction_conflict", m, s) for m in ("HK-01", "HK-02") for s in (1, 2)]


def test_ledger__a_held_copy_sent_again_counts_as_redelivered_as_a_taken_one_does(open_ledger):
    gw = Gateway()
    led = open_ledger()
    early = gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    assert [o.status for o in led.add(gw.name, "hk", [early, early])] == ["no_key", "no_key"]
    led.key_announced(gw.name, gw.public)
    late = gw.entry("HK-02", 1, pay("T2", 30_000, DAY1))  # after the birth
    assert [o.status for o in led.add(gw.name, "hk", [late, late])] == ["accepted", "duplicate"]
    forged = SignedEntry("HK-03", 1, late.type, late.payload, 0, late.sig)
    assert [o.status for o in led.add(gw.name, "hk", [forged] * 2)] == ["bad_signature"] * 2
    rec = led.reconcile()
    assert summary(rec, "HK-01") == summary(rec, "HK-02")
    assert rec.duplicates_ignored == 3 and rec.total_vnd == 60_000


def test_ledger__gaps_in_a_meters_seq_are_reported(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    st = MeterStatus(90, 80, False, False, DAY1)
    led.add(gw.name, "hk", [gw.entry("HK-01", s, st) for s in (5, 6, 9, 12, 13)])
    (m,) = led.reconcile().meters
    assert (m.first_seq, m.last_seq, m.gaps) == (5, 13, [(7, 8), (10, 11)])
    assert "gaps: 7..8, 10..11" in "\n".join(led.reconcile().lines())


def test_ledger__a_file_ledger_remembers_across_a_restart(open_ledger):
    gw = Gateway()
    led = open_ledger()
    led.key_announced(gw.name, gw.public)
    e = gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    led.add(gw.name, "hk", [e])
    led.close()
    led = open_ledger()
    assert led.add(gw.name, "hk", [e])[0].status == "duplicate"
    assert led.reconcile().total_vnd == 30_000


def test_ledger__a_ledger_file_from_before_transaction_ids_were_kept_is_brought_up(tmp_path):
    import sqlite3

    gw = Gateway()
    path = tmp_path / "ledger.sqlite"
    led = TxLedger(path)
    led.key_announced(gw.name, gw.public)
    led.add(gw.name, "hk", [gw.entry("HK-01", 2, pay("T1", 30_000, DAY1))])
    led.close()
    with sqlite3.connect(path) as db:  # the entries table as release 0.1 made it
        db.execute("DROP INDEX entries_tx")
        db.execute("ALTER TABLE entries DROP COLUMN tx")
    led = TxLedger(path)
    led.add(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    rec = led.reconcile()
    assert rec.total_vnd == 30_000 and rec.meters[0].duplicate_transactions == 1
    assert [(a["meter"], a["seq"]) for a in rec.anomalies] == [("HK-01", 2)]


def test_consumer__tx_messages_go_through_the_ledger_with_the_births_key():
    gw = Gateway()
    got = []
    c = BatchConsumer("mqtt://127.0.0.1:1", on_entry=lambda g, s, o: got.append(o))
    e = gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))
    msg = encode_tx_message(gw.name, "hk", [e])
    assert "city/v1/+/+/tx" in c.topics
    c.handle("city/v1/hk/gw-1/tx", msg)  # before the birth: held
    assert got == []
    c.handle("city/v1/hk/gw-1/birth", gw.birth())
    assert [o.status for o in got] == ["accepted"]
    c.handle("city/v1/hk/gw-1/tx", msg)  # again: a duplicate, not shown twice
    assert len(got) == 1
    c.handle("city/v1/hk/gw-1/tx", b"\xc1 not msgpack")
    assert c.bad_payloads == 1
    summary = "\n".join(c.summary())
    assert "parking reconciliation" in summary and "re-delivered entries ignored: 1" in summary


def test_consumer__a_share_group_shares_the_tx_topic_too():
    c = BatchConsumer("mqtt://127.0.0.1:1", share="g", client_id="c1")
    assert c.topics == [
        "city/v1/+/+/birth",
        "$share/g/city/v1/+/+/data",
        "$share/g/city/v1/+/+/tx",
        "city/v1/+/+/birth/+",  # births are never shared: every member needs every name
    ]


def test_cli__reconcile_prints_a_ledger_file_and_explains_a_missing_one(tmp_path, capsys):
    from edge.cli import main

    gw = Gateway()
    led = TxLedger(tmp_path / "ledger.sqlite")
    led.key_announced(gw.name, gw.public)
    led.add(gw.name, "hk", [gw.entry("HK-01", 1, pay("T1", 30_000, DAY1))])
    led.close()
    assert main(["reconcile", "--ledger", str(tmp_path / "ledger.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_vnd"] == 30_000
    assert main(["reconcile", "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    assert "HK-01" in capsys.readouterr().out
    assert main(["reconcile", "--ledger", str(tmp_path / "none.sqlite")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_cli__a_malformed_pinned_key_is_refused(capsys):
    from edge.cli import main

    assert main(["consume", "--broker", "mqtt://127.0.0.1:1", "--trust-key", "gw-1=abc"]) == 2
    assert "must be GATEWAY=<base64 of a 32-byte Ed25519 key>" in capsys.readouterr().err


# ------------------------------------------------------------------ order never matters

_GW = Gateway("gw-1")
_RELAY = Gateway("gw-2")


def _pool() -> list[tuple[str, SignedEntry]]:
    """Copies that collide every way the rules know: the same seq with other bytes, one
    transaction id under two seqs alike or with another amount, receipts, forged copies, the
    same entry relayed by a second gateway."""
    p1 = pay("T1", 30_000, DAY1)
    made = [
        (_GW, "HK-01", 1, p1),
        (_GW, "HK-01", 1, SessionEnd("S", DAY1)),  # another version of seq 1
        (_GW, "HK-01", 2, p1),  # T1 again under another seq
        (_GW, "HK-01", 3, pay("T1", 31_000, DAY1)),  # T1 with another amount
        (_GW, "HK-01", 4, receipt("T1", 30_000, DAY1)),
        (_GW, "HK-02", 1, p1),  # T1 at another meter
        (_GW, "HK-02", 2, pay("T2", 5_000, DAY2)),
        (_GW, "HK-02", 2, pay("T3", 6_000, DAY2)),  # another version of seq 2
        (_GW, "HK-02", 3, receipt("T2", 4_000, DAY2)),
        (_RELAY, "HK-02", 2, pay("T2", 5_000, DAY2)),  # relayed by a second gateway
        (_RELAY, "HK-03", 1, pay("T4", 7_000, DAY1)),
    ]
    out = [(gw.name, gw.entry(m, s, msg)) for gw, m, s, msg in made]
    real = out[6][1]
    out.append((_GW.name, SignedEntry("HK-02", 2, real.type, encode_message(p1), 0, real.sig)))
    return out


_POOL = _pool()


def _run(order: list[int], births: tuple[int, int]) -> tuple:
    """Feed the copies ``order`` (indexes into the pool) to a new ledger, the two births after
    ``births[i]`` copies; what must not depend on the order."""
    led = TxLedger()
    for n, i in enumerate([*order, None]):
        for gw, at in zip((_GW, _RELAY), births, strict=True):
            if at == n:
                led.key_announced(gw.name, gw.public)
        if i is not None:
            gateway, e = _POOL[i]
            led.add(gateway, "hk", [e])
    rec = led.reconcile()
    # The anomalies are a log of what was seen when: a duplicate_transaction names the copy
    # that did not count at that moment, even if a later conflict withdrew the one that did.
    # What is held is state, and reported once per copy held.
    held = sorted(
        (a["kind"], a["meter"], a["seq"])
        for a in rec.anomalies
        if a["kind"] in ("bad_signature", "untrusted_key", "conflict")
    )
    return rec.days, rec.meters, rec.duplicates_ignored, held


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, len(_POOL) - 1), min_size=1, max_size=20).flatmap(
        lambda xs: st.tuples(st.just(xs), st.permutations(xs))
    ),
    st.tuples(st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.integers(0, 20), st.integers(0, 20)),
)
def test_ledger__any_order_of_the_same_copies_gives_the_same_reconciliation(orders, b1, b2):
    first, second = orders
    births = (min(b1[0], len(first)), min(b1[1], len(first)))
    assert _run(first, births) == _run(second, (min(b2[0], len(first)), min(b2[1], len(first))))
