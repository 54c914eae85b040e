"""The platform's parking ledger: every meter journal entry once, its signature checked, and a
reconciliation per meter and per day (docs/meter-link-v1.md §5, §7).

The gateway delivers entries at least once (a ``tx`` message whose PUBACK was lost is sent
again). The ledger makes that exactly once:

* **Signature first.** An entry counts only if it verifies against a key its gateway announced
  in a birth. The first key a gateway announces is trusted (or the one pinned for it); a later,
  different key is reported (``key_changed``) and entries that verify only against it are held,
  not counted. An entry that verifies against no key is held as ``bad_signature``: it is
  reported, with its claimed meter and seq, never silently dropped, and never counted. An entry
  that arrives before any birth of its gateway is held as ``no_key`` and checked when the birth
  comes.
* **Then de-duplication by (meter, seq)**, the meter's own numbering: the same bytes again are
  a duplicate (counted); different signed bytes under a seq already taken are a ``conflict``
  (reported, the first kept). A payment is also keyed by its transaction id, so one paid twice
  under two seqs is counted once and reported (``duplicate_transaction``).

Everything one ``tx`` message changes is one SQLite transaction. With a file (``path``) the
ledger survives a consumer restart: a consumer that acknowledges a message to the broker only
after :meth:`TxLedger.add` returned never loses or double-counts an entry. The default is in
memory, for a consumer whose run is the report.

Days are local (Hanoi, UTC+7), by the payment's collected time on the meter's clock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.shared.signing import verify
from protocols.meterlink import (
    Message,
    MsgType,
    PayloadError,
    Payment,
    Receipt,
    SignedEntry,
    decode_message,
)

__all__ = [
    "DayTotal",
    "EntryOutcome",
    "MeterSummary",
    "Reconciliation",
    "TxLedger",
    "entry_json",
    "local_day",
]

ICT_MS = 7 * 3_600_000

#: Why an entry is held rather than counted.
NO_KEY, BAD_SIGNATURE, UNTRUSTED_KEY, CONFLICT = (
    "no_key",
    "bad_signature",
    "untrusted_key",
    "conflict",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    gateway TEXT NOT NULL, public BLOB NOT NULL, trusted INTEGER NOT NULL,
    first_ms INTEGER NOT NULL, PRIMARY KEY (gateway, public));
CREATE TABLE IF NOT EXISTS entries (
    meter TEXT NOT NULL, seq INTEGER NOT NULL, gateway TEXT NOT NULL, site TEXT NOT NULL,
    type INTEGER NOT NULL, payload BLOB NOT NULL, sig BLOB NOT NULL,
    received_ms INTEGER NOT NULL, PRIMARY KEY (meter, seq));
CREATE TABLE IF NOT EXISTS payments (
    transaction_id TEXT PRIMARY KEY, meter TEXT NOT NULL, seq INTEGER NOT NULL,
    session_id TEXT NOT NULL, amount_vnd INTEGER NOT NULL, method INTEGER NOT NULL,
    collected_ms INTEGER NOT NULL, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    transaction_id TEXT PRIMARY KEY, meter TEXT NOT NULL, seq INTEGER NOT NULL,
    number INTEGER NOT NULL, amount_vnd INTEGER NOT NULL, vat_vnd INTEGER NOT NULL,
    lookup_code TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY, reason TEXT NOT NULL, gateway TEXT NOT NULL, site TEXT NOT NULL,
    meter TEXT NOT NULL, seq INTEGER NOT NULL, type INTEGER NOT NULL, payload BLOB NOT NULL,
    sig BLOB NOT NULL, received_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    UNIQUE (gateway, meter, seq, type, payload, sig));
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, gateway TEXT NOT NULL, meter TEXT,
    seq INTEGER, detail TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def local_day(ms: int) -> str:
    """The Hanoi calendar day (UTC+7) of a Unix-millisecond time, as YYYY-MM-DD."""
    return datetime.fromtimestamp((ms + ICT_MS) / 1000, tz=UTC).date().isoformat()


@dataclass(frozen=True)
class EntryOutcome:
    """What the ledger did with one entry: ``accepted``, ``duplicate``, or held with a reason
    (``no_key``, ``bad_signature``, ``untrusted_key``, ``conflict``). ``message`` is the decoded
    payload of an accepted entry (None if it does not decode: reported as ``undecodable``)."""

    gateway: str
    entry: SignedEntry
    status: str
    message: Message | None = None


@dataclass(frozen=True)
class DayTotal:
    meter: str
    day: str
    payments: int
    total_vnd: int
    receipts: int
    unreceipted: int  # payments with no e-receipt (yet)
    receipt_mismatch: int  # receipts whose amount differs from the payment's
    by_method: dict[str, int] = field(default_factory=dict)  # method name -> VND


@dataclass(frozen=True)
class MeterSummary:
    meter: str
    gateways: list[str]
    entries: int
    first_seq: int | None
    last_seq: int | None
    gaps: list[tuple[int, int]]  # inclusive ranges of seqs never received between first and last
    bad_signatures: int
    held: int  # not counted: bad signature, untrusted key, no key yet, conflict
    conflicts: int
    duplicate_transactions: int


@dataclass(frozen=True)
class Reconciliation:
    days: list[DayTotal]
    meters: list[MeterSummary]
    duplicates_ignored: int
    anomalies: list[dict[str, Any]]

    @property
    def total_vnd(self) -> int:
        return sum(d.total_vnd for d in self.days)

    @property
    def bad_signatures(self) -> int:
        return sum(m.bad_signatures for m in self.meters)

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": [asdict(d) for d in self.days],
            "meters": [asdict(m) for m in self.meters],
            "duplicates_ignored": self.duplicates_ignored,
            "total_vnd": self.total_vnd,
            "bad_signatures": self.bad_signatures,
            "anomalies": self.anomalies,
        }

    def lines(self) -> list[str]:
        """The report as text: a table per meter and day, then each meter's sequence record."""
        if not self.days and not self.meters:
            return ["parking: no meter entries received"]
        out = ["parking reconciliation (days in Hanoi time, UTC+7)"]
        out.append(
            f"{'meter':<12} {'day':<10} {'payments':>8} {'total VND':>14} {'receipts':>8} "
            f"{'unreceipted':>11}"
        )
        for d in self.days:
            out.append(
                f"{d.meter:<12} {d.day:<10} {d.payments:>8} {d.total_vnd:>14,} {d.receipts:>8} "
                f"{d.unreceipted:>11}"
                + (f"  receipt amount differs: {d.receipt_mismatch}" if d.receipt_mismatch else "")
            )
        out.append(f"{'total':<23} {sum(d.payments for d in self.days):>8} {self.total_vnd:>14,}")
        for m in self.meters:
            gaps = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in m.gaps) or "none"
            span = f"seq {m.first_seq}..{m.last_seq}" if m.first_seq is not None else "no seq"
            out.append(
                f"meter {m.meter}: {m.entries} entries ({span}), gaps: {gaps}, invalid "
                f"signatures: {m.bad_signatures}, held: {m.held}, conflicts: {m.conflicts}, "
                f"duplicate transactions: {m.duplicate_transactions}"
            )
        out.append(f"re-delivered entries ignored: {self.duplicates_ignored}")
        for a in self.anomalies:
            where = f" meter {a['meter']} seq {a['seq']}" if a["meter"] is not None else ""
            out.append(f"anomaly {a['kind']}: gateway {a['gateway']}{where}: {a['detail']}")
        return out


class TxLedger:
    def __init__(
        self, path: str | Path = ":memory:", *, pinned: dict[str, bytes] | None = None
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        #: gateway -> the only key trusted for it, whatever its births say
        self.pinned = dict(pinned or {})

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ keys

    def key_announced(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        """A birth announced ``public`` for ``gateway``. Entries held for want of a key are
        checked again; their outcomes are returned."""
        db = self._db
        with _tx(db):
            known = db.execute(
                "SELECT trusted FROM keys WHERE gateway = ? AND public = ?", (gateway, public)
            ).fetchone()
            if known is None:
                others = db.execute(
                    "SELECT count(*) FROM keys WHERE gateway = ?", (gateway,)
                ).fetchone()[0]
                pin = self.pinned.get(gateway)
                if pin is not None:
                    trusted = public == pin
                    if not trusted:
                        self._anomaly(
                            "unpinned_key", gateway, None, None, "announced a key not pinned for it"
                        )
                else:
                    trusted = others == 0  # trust on first use
                    if not trusted:
                        self._anomaly(
                            "key_changed",
                            gateway,
                            None,
                            None,
                            "announced a new signing key; entries signed with it are held until "
                            "an operator trusts it",
                        )
                db.execute(
                    "INSERT INTO keys VALUES (?, ?, ?, ?)",
                    (gateway, public, int(trusted), _now_ms()),
                )
            rows = db.execute(
                "SELECT id, site, meter, seq, type, payload, received_ms, sig FROM held "
                "WHERE gateway = ? AND reason = ? ORDER BY id",
                (gateway, NO_KEY),
            ).fetchall()
            out = []
            for rid, site, *entry in rows:
                db.execute("DELETE FROM held WHERE id = ?", (rid,))
                out.append(self._add_one(gateway, site, SignedEntry(*entry)))
        return out

    def trust(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        """An operator trusts ``public`` for ``gateway`` (a key rotated on purpose): entries held
        under it are checked again."""
        with _tx(self._db):
            self._db.execute(
                "INSERT INTO keys VALUES (?, ?, 1, ?) ON CONFLICT DO UPDATE SET trusted = 1",
                (gateway, public, _now_ms()),
            )
            rows = self._db.execute(
                "SELECT id, site, meter, seq, type, payload, received_ms, sig FROM held "
                "WHERE gateway = ? AND reason IN (?, ?) ORDER BY id",
                (gateway, NO_KEY, UNTRUSTED_KEY),
            ).fetchall()
            out = []
            for rid, site, *entry in rows:
                self._db.execute("DELETE FROM held WHERE id = ?", (rid,))
                out.append(self._add_one(gateway, site, SignedEntry(*entry)))
        return out

    # ------------------------------------------------------------------ entries

    def add(self, gateway: str, site: str, entries: Iterable[SignedEntry]) -> list[EntryOutcome]:
        """Take one ``tx`` message's entries, all in one transaction."""
        with _tx(self._db):
            return [self._add_one(gateway, site, e) for e in entries]

    def _add_one(self, gateway: str, site: str, e: SignedEntry) -> EntryOutcome:
        db = self._db
        keys = db.execute(
            "SELECT public, trusted FROM keys WHERE gateway = ? ORDER BY trusted DESC", (gateway,)
        ).fetchall()
        try:
            data = e.canonical()
        except ValueError:
            data = b""
        status = None
        if not keys:
            status = NO_KEY
        else:
            good = [trusted for public, trusted in keys if data and verify(public, e.sig, data)]
            if not good:
                status = BAD_SIGNATURE
            elif not good[0]:
                status = UNTRUSTED_KEY
        if status is not None:
            cur = db.execute(
                "INSERT OR IGNORE INTO held (reason, gateway, site, meter, seq, type, payload, "
                "sig, received_ms, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (status, gateway, site, e.meter, e.seq, e.type, e.payload, e.sig, e.received_ms,
                 _now_ms()),
            )  # fmt: skip
            if cur.rowcount and status != NO_KEY:
                self._anomaly(
                    status,
                    gateway,
                    e.meter,
                    e.seq,
                    "signature does not verify: tampered or forged, not counted"
                    if status == BAD_SIGNATURE
                    else "signed with a key not trusted for this gateway, not counted",
                )
            return EntryOutcome(gateway, e, status)
        have = db.execute(
            "SELECT type, payload FROM entries WHERE meter = ? AND seq = ?", (e.meter, e.seq)
        ).fetchone()
        if have is not None:
            if have == (e.type, e.payload):
                self._count("duplicates")
                return EntryOutcome(gateway, e, "duplicate")
            cur = db.execute(
                "INSERT OR IGNORE INTO held (reason, gateway, site, meter, seq, type, payload, "
                "sig, received_ms, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (CONFLICT, gateway, site, e.meter, e.seq, e.type, e.payload, e.sig,
                 e.received_ms, _now_ms()),
            )  # fmt: skip
            if cur.rowcount:
                self._anomaly(
                    CONFLICT,
                    gateway,
                    e.meter,
                    e.seq,
                    "a validly signed entry differs from the one already taken at this seq "
                    "(a meter whose journal was reset?); the first is kept",
                )
            return EntryOutcome(gateway, e, CONFLICT)
        db.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.meter, e.seq, gateway, site, e.type, e.payload, e.sig, e.received_ms),
        )
        try:
            msg: Message | None = decode_message(e.type, e.payload)
        except PayloadError as exc:
            msg = None
            self._anomaly("undecodable", gateway, e.meter, e.seq, str(exc))
        if isinstance(msg, Payment):
            cur = db.execute(
                "INSERT OR IGNORE INTO payments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (msg.transaction_id, e.meter, e.seq, msg.session_id, msg.amount_vnd, msg.method,
                 msg.collected_ms, local_day(msg.collected_ms)),
            )  # fmt: skip
            if not cur.rowcount:
                first = db.execute(
                    "SELECT meter, seq FROM payments WHERE transaction_id = ?",
                    (msg.transaction_id,),
                ).fetchone()
                self._anomaly(
                    "duplicate_transaction",
                    gateway,
                    e.meter,
                    e.seq,
                    f"transaction {msg.transaction_id} was already paid at meter {first[0]} "
                    f"seq {first[1]}; counted once",
                )
        elif isinstance(msg, Receipt):
            cur = db.execute(
                "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (msg.transaction_id, e.meter, e.seq, msg.number, msg.amount_vnd, msg.vat_vnd,
                 msg.lookup_code),
            )  # fmt: skip
            if not cur.rowcount:
                self._anomaly(
                    "duplicate_receipt",
                    gateway,
                    e.meter,
                    e.seq,
                    f"a second receipt for transaction {msg.transaction_id}",
                )
        return EntryOutcome(gateway, e, "accepted", msg)

    def _anomaly(
        self, kind: str, gateway: str, meter: str | None, seq: int | None, detail: str
    ) -> None:
        self._db.execute(
            "INSERT INTO anomalies (kind, gateway, meter, seq, detail, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, gateway, meter, seq, detail, _now_ms()),
        )

    def _count(self, name: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT DO UPDATE SET value = value + ?",
            (name, n, n),
        )

    # ------------------------------------------------------------------ reading it back

    def has(self, meter: str, seq: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM entries WHERE meter = ? AND seq = ?", (meter, seq)
            ).fetchone()
            is not None
        )

    def entry_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def entries(self, meter: str) -> list[tuple[int, int, bytes]]:
        """(seq, type, payload) of every entry taken from ``meter``, by seq."""
        return self._db.execute(
            "SELECT seq, type, payload FROM entries WHERE meter = ? ORDER BY seq", (meter,)
        ).fetchall()

    def reconcile(self) -> Reconciliation:
        db = self._db
        method_names = {
            1: "traffic_account",
            2: "e_wallet",
            3: "bank_qr",
            4: "card",
            5: "cash",
        }
        by_method: dict[tuple[str, str], dict[str, int]] = {}
        for meter, day, method, vnd in db.execute(
            "SELECT meter, day, method, sum(amount_vnd) FROM payments GROUP BY meter, day, method"
        ):
            by_method.setdefault((meter, day), {})[method_names.get(method, str(method))] = vnd
        days = [
            DayTotal(meter, day, n, total, receipts, n - receipts, mismatch,
                     by_method.get((meter, day), {}))
            for meter, day, n, total, receipts, mismatch in db.execute(
                "SELECT p.meter, p.day, count(*), sum(p.amount_vnd), count(r.transaction_id), "
                "count(CASE WHEN r.amount_vnd != p.amount_vnd THEN 1 END) "
                "FROM payments p LEFT JOIN receipts r USING (transaction_id) "
                "GROUP BY p.meter, p.day ORDER BY p.meter, p.day"
            )
        ]  # fmt: skip
        gaps: dict[str, list[tuple[int, int]]] = {}
        for meter, seq, prev in db.execute(
            "SELECT meter, seq, prev FROM (SELECT meter, seq, lag(seq) OVER "
            "(PARTITION BY meter ORDER BY seq) AS prev FROM entries) "
            "WHERE prev IS NOT NULL AND seq > prev + 1"
        ):
            gaps.setdefault(meter, []).append((prev + 1, seq - 1))
        held: dict[str, dict[str, int]] = {}
        for meter, reason, n in db.execute(
            "SELECT meter, reason, count(*) FROM held GROUP BY meter, reason"
        ):
            held.setdefault(meter, {})[reason] = n
        dup_tx = dict(
            db.execute(
                "SELECT meter, count(*) FROM anomalies WHERE kind = 'duplicate_transaction' "
                "GROUP BY meter"
            ).fetchall()
        )
        seen: dict[str, tuple[str, int, int | None, int | None]] = {}
        for meter, gws, n, lo, hi in db.execute(
            "SELECT meter, group_concat(DISTINCT gateway), count(*), min(seq), max(seq) "
            "FROM entries GROUP BY meter"
        ):
            seen[meter] = (gws, n, lo, hi)
        meters = []
        for meter in sorted(set(seen) | set(held)):
            gws, n, lo, hi = seen.get(meter, ("", 0, None, None))
            h = held.get(meter, {})
            meters.append(
                MeterSummary(
                    meter,
                    sorted(filter(None, gws.split(","))),
                    n,
                    lo,
                    hi,
                    gaps.get(meter, []),
                    h.get(BAD_SIGNATURE, 0),
                    sum(h.values()),
                    h.get(CONFLICT, 0),
                    dup_tx.get(meter, 0),
                )
            )
        dups = db.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
        anomalies = [
            {"kind": k, "gateway": g, "meter": m, "seq": s, "detail": d}
            for k, g, m, s, d in db.execute(
                "SELECT kind, gateway, meter, seq, detail FROM anomalies ORDER BY id"
            )
        ]
        return Reconciliation(days, meters, int(dups[0]) if dups else 0, anomalies)

    def reconcile_json(self) -> str:
        return json.dumps(self.reconcile().as_dict(), ensure_ascii=False, indent=1)


class _tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _now_ms() -> int:
    return int(time.time() * 1000)


def entry_json(gateway: str, site: str, outcome: EntryOutcome) -> str:
    """One accepted entry as a JSON line: who, where, which seq, the type's name and fields."""
    e, msg = outcome.entry, outcome.message
    doc: dict[str, Any] = {"gateway": gateway, "site": site, "meter": e.meter, "seq": e.seq}
    try:
        doc["type"] = MsgType(e.type).name.lower()
    except ValueError:
        doc["type"] = e.type
    if msg is not None:
        doc.update(_fields(msg))
    doc["received_ms"] = e.received_ms
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _fields(msg: Message) -> dict[str, Any]:
    return {name: value for name, value in zip((f for f, _ in msg.SPEC), msg.values(), strict=True)}
