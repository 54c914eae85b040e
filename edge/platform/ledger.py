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
  a re-delivery (ignored, counted); different signed bytes under one seq are a ``conflict``:
  every version is held and none counted (the one taken first is withdrawn), reported. A
  payment is also keyed by its transaction id: one paid alike under two seqs is counted once,
  at the lower (meter, seq), and reported (``duplicate_transaction``); one paid with different
  contents is counted never (``transaction_conflict``).

The end state depends on the copies received, not on their order, so consumers that share the
load reach the same reconciliation whichever of them saw which copy first. The rules are
written once (:class:`LedgerRules`) for two databases: :class:`TxLedger` in SQLite here, for a
single consumer, and :class:`edge.platform.pgledger.PgLedger` in PostgreSQL, shared by many.

Everything one ``tx`` message changes is one transaction. With a file (``path``) the SQLite
ledger survives a consumer restart: a consumer that acknowledges a message to the broker only
after :meth:`TxLedger.add` returned never loses or double-counts an entry. The default is in
memory, for a consumer whose run is the report.

Days are local (Hanoi, UTC+7), by the payment's collected time on the meter's clock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

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
    "LedgerRules",
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
    received_ms INTEGER NOT NULL, tx TEXT, PRIMARY KEY (meter, seq));
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


class LedgerRules:
    """The ledger's rules, written once for every database that keeps them (:class:`TxLedger`
    in SQLite, :class:`edge.platform.pgledger.PgLedger` in PostgreSQL), so the two can never
    disagree. A subclass gives the connection: :meth:`_x` runs one statement (SQL written with
    ``?`` parameters and ``{table}`` names), :meth:`_write` one write transaction holding the
    locks of a gateway, meters and transaction ids (:meth:`_lock` takes more on the way),
    :meth:`_read` one consistent read.

    The end state depends on the set of copies received, not on their order: whichever consumer
    sees which copy first, the reconciliation is the same. That is why a conflict holds every
    version (the one taken first is withdrawn), why a transaction paid under two seqs is counted
    at the lower (meter, seq), and why a re-delivered held copy counts as re-delivered too.
    The anomalies are the exception, by nature: a log of what was seen when (a
    ``duplicate_transaction`` names the copy that did not count at that moment, even if a later
    conflict withdrew the one that did); each held copy is reported once, whatever the order.
    """

    #: logical table name -> the name in this database
    TABLES: ClassVar[dict[str, str]] = {}
    #: gateway -> the only key trusted for it, whatever its births say
    pinned: dict[str, bytes]

    def _x(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _write(
        self,
        work: Callable[[], list[EntryOutcome]],
        gateway: str,
        meters: Iterable[str] = (),
        txs: Iterable[str] = (),
    ) -> list[EntryOutcome]:
        """Run ``work`` in one transaction, committed on return, that first holds what it
        reads and writes: ``gateway`` (its keys and the entries held for want of one), the
        ``meters`` (their seqs) and the transaction ids ``txs``."""
        raise NotImplementedError

    def _lock(self, meters: Iterable[str] = (), txs: Iterable[str] = ()) -> None:
        """Inside :meth:`_write`: hold these too (found only once the work began)."""

    def _read(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _day(self, ms: int) -> Any:
        """The Hanoi day of ``ms`` as this database stores it."""
        return local_day(ms)

    # ------------------------------------------------------------------ keys

    def key_announced(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        """A birth announced ``public`` for ``gateway``. Entries held for want of a key are
        checked again; their outcomes are returned."""
        return self._write(lambda: self._key_announced(gateway, public), gateway)

    def _key_announced(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        known = self._x(
            "SELECT trusted FROM {keys} WHERE gateway = ? AND public = ?", (gateway, public)
        ).fetchone()
        if known is None:
            others = self._x(
                "SELECT count(*) FROM {keys} WHERE gateway = ?", (gateway,)
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
            self._x(
                "INSERT INTO {keys} (gateway, public, trusted, first_ms) VALUES (?, ?, ?, ?)",
                (gateway, public, trusted, _now_ms()),
            )
        return self._recheck(gateway, (NO_KEY,))

    def trust(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        """An operator trusts ``public`` for ``gateway`` (a key rotated on purpose): entries held
        under it are checked again."""
        return self._write(lambda: self._trust(gateway, public), gateway)

    def _trust(self, gateway: str, public: bytes) -> list[EntryOutcome]:
        self._x(
            "INSERT INTO {keys} (gateway, public, trusted, first_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (gateway, public) DO UPDATE SET trusted = excluded.trusted",
            (gateway, public, True, _now_ms()),
        )
        return self._recheck(gateway, (NO_KEY, UNTRUSTED_KEY))

    def _recheck(self, gateway: str, reasons: tuple[str, ...]) -> list[EntryOutcome]:
        rows = self._x(
            "SELECT id, site, meter, seq, type, payload, received_ms, sig FROM {held} "
            f"WHERE gateway = ? AND reason IN ({', '.join('?' * len(reasons))}) ORDER BY id",
            (gateway, *reasons),
        ).fetchall()
        held = [
            (rid, site, SignedEntry(meter, seq, typ, bytes(payload), received_ms, bytes(sig)))
            for rid, site, meter, seq, typ, payload, received_ms, sig in rows
        ]
        self._lock({e.meter for _, _, e in held}, _transaction_ids(e for _, _, e in held))
        out = []
        for rid, site, entry in held:
            self._x("DELETE FROM {held} WHERE id = ?", (rid,))
            out.append(self._add_one(gateway, site, entry))
        return out

    # ------------------------------------------------------------------ entries

    def add(self, gateway: str, site: str, entries: Iterable[SignedEntry]) -> list[EntryOutcome]:
        """Take one ``tx`` message's entries, all in one transaction, committed on return."""
        batch = list(entries)
        return self._write(
            lambda: [self._add_one(gateway, site, e) for e in batch],
            gateway,
            {e.meter for e in batch},
            _transaction_ids(batch),
        )

    def _hold(self, reason: str, gateway: str, site: str, e: SignedEntry) -> bool:
        """Keep ``e`` aside for ``reason``; False if that very copy is held already."""
        cur = self._x(
            "INSERT INTO {held} (reason, gateway, site, meter, seq, type, payload, sig, "
            "received_ms, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (reason, gateway, site, e.meter, e.seq, e.type, e.payload, e.sig, e.received_ms,
             _now_ms()),
        )  # fmt: skip
        return bool(cur.rowcount)

    def _add_one(self, gateway: str, site: str, e: SignedEntry) -> EntryOutcome:
        keys = self._x(
            "SELECT public, trusted FROM {keys} WHERE gateway = ? ORDER BY trusted DESC",
            (gateway,),
        ).fetchall()
        try:
            data = e.canonical()
        except ValueError:
            data = b""
        status = None
        if not keys:
            status = NO_KEY
        else:
            good = [
                trusted for public, trusted in keys if data and verify(bytes(public), e.sig, data)
            ]
            if not good:
                status = BAD_SIGNATURE
            elif not good[0]:
                status = UNTRUSTED_KEY
        if status is not None:
            if not self._hold(status, gateway, site, e):
                self._count("duplicates", e.meter)  # the same copy again: a re-delivery
            elif status != NO_KEY:
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
        have = self._x(
            "SELECT type, payload, gateway, site, sig, received_ms, tx FROM {entries} "
            "WHERE meter = ? AND seq = ?",
            (e.meter, e.seq),
        ).fetchone()
        if have is not None:
            if (have[0], bytes(have[1])) == (e.type, e.payload):
                self._count("duplicates", e.meter)
                # The same entry relayed by two gateways: it is listed under the first by name.
                self._x(
                    "UPDATE {entries} SET gateway = ?, site = ?, sig = ?, received_ms = ? "
                    "WHERE meter = ? AND seq = ? AND gateway > ?",
                    (gateway, site, e.sig, e.received_ms, e.meter, e.seq, gateway),
                )
                return EntryOutcome(gateway, e, "duplicate")
            # A second version of a seq already taken: the first is withdrawn, both are held.
            typ, payload, first_gw, first_site, sig, received_ms, tx = have
            if tx is not None:
                self._lock(txs=[tx])
            self._x("DELETE FROM {entries} WHERE meter = ? AND seq = ?", (e.meter, e.seq))
            first = SignedEntry(e.meter, e.seq, typ, bytes(payload), received_ms, bytes(sig))
            if self._hold(CONFLICT, first_gw, first_site, first):
                self._anomaly(CONFLICT, first_gw, e.meter, e.seq, _CONFLICT_DETAIL)
            if tx is not None:
                self._settle(typ, tx, None)
        elif (
            self._x(
                "SELECT 1 FROM {held} WHERE reason = ? AND meter = ? AND seq = ?",
                (CONFLICT, e.meter, e.seq),
            ).fetchone()
            is None
        ):
            return self._take(gateway, site, e)
        if (
            self._x(
                "SELECT 1 FROM {held} WHERE reason = ? AND meter = ? AND seq = ? AND type = ? "
                "AND payload = ?",
                (CONFLICT, e.meter, e.seq, e.type, e.payload),
            ).fetchone()
            is not None
        ):
            self._count("duplicates", e.meter)  # a version already held, again
        elif self._hold(CONFLICT, gateway, site, e):
            self._anomaly(CONFLICT, gateway, e.meter, e.seq, _CONFLICT_DETAIL)
        return EntryOutcome(gateway, e, CONFLICT)

    def _take(self, gateway: str, site: str, e: SignedEntry) -> EntryOutcome:
        try:
            msg: Message | None = decode_message(e.type, e.payload)
        except PayloadError as exc:
            msg = None
            self._anomaly("undecodable", gateway, e.meter, e.seq, str(exc))
        tx = msg.transaction_id if isinstance(msg, Payment | Receipt) else None
        self._x(
            "INSERT INTO {entries} (meter, seq, gateway, site, type, payload, sig, received_ms, "
            "tx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.meter, e.seq, gateway, site, e.type, e.payload, e.sig, e.received_ms, tx),
        )
        if tx is not None:
            self._settle(e.type, tx, (gateway, e.meter, e.seq))
        return EntryOutcome(gateway, e, "accepted", msg)

    def _settle(self, typ: int, tx: str, arrived: tuple[str, str, int] | None) -> None:
        """Make the payments (or receipts) row of transaction ``tx`` follow from the entries
        taken: the copy at the lowest (meter, seq) counts, once, if every copy carries the same
        bytes; copies that differ are a conflict and none counts. ``arrived`` is the (gateway,
        meter, seq) of the copy just taken (None when one was withdrawn): what it changes is
        reported."""
        copies = [
            (meter, seq, bytes(payload), gw)
            for meter, seq, payload, gw in self._x(
                "SELECT meter, seq, payload, gateway FROM {entries} WHERE type = ? AND tx = ? "
                "ORDER BY meter, seq",
                (typ, tx),
            ).fetchall()
        ]
        if typ == MsgType.RECEIPT:
            self._x("DELETE FROM {receipts} WHERE transaction_id = ?", (tx,))
            if copies:
                meter, seq, payload, _ = copies[0]
                r = decode_message(typ, payload)
                assert isinstance(r, Receipt)
                self._x(
                    "INSERT INTO {receipts} (transaction_id, meter, seq, number, amount_vnd, "
                    "vat_vnd, lookup_code) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tx, meter, seq, r.number, r.amount_vnd, r.vat_vnd, r.lookup_code),
                )
                if arrived is not None and len(copies) > 1:
                    self._anomaly(
                        "duplicate_receipt",
                        arrived[0],
                        arrived[1],
                        arrived[2],
                        f"a second receipt for transaction {tx}",
                    )
            return
        before = self._x(
            "SELECT meter, seq FROM {payments} WHERE transaction_id = ?", (tx,)
        ).fetchone()
        self._x("DELETE FROM {payments} WHERE transaction_id = ?", (tx,))
        if not copies:
            return
        if len({payload for _, _, payload, _ in copies}) == 1:
            meter, seq, payload, _ = copies[0]
            p = decode_message(typ, payload)
            assert isinstance(p, Payment)
            self._x(
                "INSERT INTO {payments} (transaction_id, meter, seq, session_id, amount_vnd, "
                "method, collected_ms, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tx, meter, seq, p.session_id, p.amount_vnd, p.method, p.collected_ms,
                 self._day(p.collected_ms)),
            )  # fmt: skip
            if arrived is None or len(copies) == 1:
                return
            # Name the copy that does not count: the one just taken, or the one it displaced.
            gw, m, s = arrived
            if (m, s) == (meter, seq) and before is not None:
                m, s = before
                gw = next(g for cm, cs, _, g in copies if (cm, cs) == (m, s))
            self._anomaly(
                "duplicate_transaction",
                gw,
                m,
                s,
                f"transaction {tx} was paid again at meter {m} seq {s}; counted once, at "
                f"meter {meter} seq {seq}",
            )
            return
        if arrived is None:
            return
        report = copies if before is not None else [c for c in copies if c[:2] == arrived[1:]]
        for m, s, _, gw in report:
            self._anomaly(
                "transaction_conflict",
                gw,
                m,
                s,
                f"transaction {tx} is paid with different contents under {len(copies)} seqs; "
                "none is counted until an operator resolves it",
            )

    def _anomaly(
        self, kind: str, gateway: str, meter: str | None, seq: int | None, detail: str
    ) -> None:
        self._x(
            "INSERT INTO {anomalies} (kind, gateway, meter, seq, detail, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, gateway, meter, seq, detail, _now_ms()),
        )

    def _count(self, name: str, shard: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``; PostgreSQL keeps a row per ``shard`` (a meter), so
        consumers counting at once do not wait on one row."""
        self._x(
            "INSERT INTO {counters} AS c (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value",
            (name, n),
        )

    # ------------------------------------------------------------------ reading it back

    def has(self, meter: str, seq: int) -> bool:
        """Whether the entry ``seq`` of ``meter`` is taken (counted)."""
        return (
            self._x("SELECT 1 FROM {entries} WHERE meter = ? AND seq = ?", (meter, seq)).fetchone()
            is not None
        )

    def entry_count(self) -> int:
        """How many entries are taken, all meters together."""
        return int(self._x("SELECT count(*) FROM {entries}").fetchone()[0])

    def entries(self, meter: str) -> list[tuple[int, int, bytes]]:
        """(seq, type, payload) of every entry taken from ``meter``, by seq."""
        return [
            (seq, typ, bytes(payload))
            for seq, typ, payload in self._x(
                "SELECT seq, type, payload FROM {entries} WHERE meter = ? ORDER BY seq", (meter,)
            ).fetchall()
        ]

    def reconcile(self) -> Reconciliation:
        """Totals per meter and Hanoi day (VND, integers), each meter's sequence record, and
        the anomalies reported, from one consistent view of the ledger."""
        with self._read():
            return self._reconcile()

    def _reconcile(self) -> Reconciliation:
        method_names = {
            1: "traffic_account",
            2: "e_wallet",
            3: "bank_qr",
            4: "card",
            5: "cash",
        }
        by_method: dict[tuple[str, str], dict[str, int]] = {}
        for meter, day, method, vnd in self._x(
            "SELECT meter, day, method, sum(amount_vnd) FROM {payments} "
            "GROUP BY meter, day, method ORDER BY meter, day, method"
        ).fetchall():
            by_method.setdefault((meter, str(day)), {})[method_names.get(method, str(method))] = (
                int(vnd)
            )
        days = [
            DayTotal(meter, str(day), n, int(total), receipts, n - receipts, mismatch,
                     by_method.get((meter, str(day)), {}))
            for meter, day, n, total, receipts, mismatch in self._x(
                "SELECT p.meter, p.day, count(*), sum(p.amount_vnd), count(r.transaction_id), "
                "count(CASE WHEN r.amount_vnd != p.amount_vnd THEN 1 END) "
                "FROM {payments} p LEFT JOIN {receipts} r USING (transaction_id) "
                "GROUP BY p.meter, p.day ORDER BY p.meter, p.day"
            ).fetchall()
        ]  # fmt: skip
        gaps: dict[str, list[tuple[int, int]]] = {}
        for meter, seq, prev in self._x(
            "SELECT meter, seq, prev FROM (SELECT meter, seq, lag(seq) OVER "
            "(PARTITION BY meter ORDER BY seq) AS prev FROM {entries}) AS s "
            "WHERE prev IS NOT NULL AND seq > prev + 1 ORDER BY meter, seq"
        ).fetchall():
            gaps.setdefault(meter, []).append((prev + 1, seq - 1))
        held: dict[str, dict[str, int]] = {}
        for meter, reason, n in self._x(
            "SELECT meter, reason, count(*) FROM {held} GROUP BY meter, reason"
        ).fetchall():
            held.setdefault(meter, {})[reason] = n
        # Copies of a counted payment beyond the one counted; payments whose copies differ.
        dup_tx = dict(
            self._x(
                "SELECT e.meter, count(*) FROM {entries} e JOIN {payments} p "
                "ON e.tx = p.transaction_id WHERE e.type = ? AND (e.meter != p.meter OR "
                "e.seq != p.seq) GROUP BY e.meter",
                (MsgType.PAYMENT,),
            ).fetchall()
        )
        tx_conflicts = dict(
            self._x(
                "SELECT meter, count(*) FROM {entries} WHERE type = ? AND tx IS NOT NULL AND "
                "NOT EXISTS (SELECT 1 FROM {payments} p WHERE p.transaction_id = tx) "
                "GROUP BY meter",
                (MsgType.PAYMENT,),
            ).fetchall()
        )
        gateways: dict[str, list[str]] = {}
        for meter, gw in self._x(
            "SELECT DISTINCT meter, gateway FROM {entries} ORDER BY meter, gateway"
        ).fetchall():
            gateways.setdefault(meter, []).append(gw)
        seen = {
            meter: (n, lo, hi)
            for meter, n, lo, hi in self._x(
                "SELECT meter, count(*), min(seq), max(seq) FROM {entries} GROUP BY meter"
            ).fetchall()
        }
        meters = []
        for meter in sorted(set(seen) | set(held)):
            n, lo, hi = seen.get(meter, (0, None, None))
            h = held.get(meter, {})
            bad_tx = tx_conflicts.get(meter, 0)
            meters.append(
                MeterSummary(
                    meter,
                    gateways.get(meter, []),
                    n,
                    lo,
                    hi,
                    gaps.get(meter, []),
                    h.get(BAD_SIGNATURE, 0),
                    sum(h.values()) + bad_tx,
                    h.get(CONFLICT, 0) + bad_tx,
                    dup_tx.get(meter, 0),
                )
            )
        dups = self._x("SELECT sum(value) FROM {counters} WHERE name = 'duplicates'").fetchone()
        anomalies = [
            {"kind": k, "gateway": g, "meter": m, "seq": s, "detail": d}
            for k, g, m, s, d in self._x(
                "SELECT kind, gateway, meter, seq, detail FROM {anomalies} ORDER BY id"
            ).fetchall()
        ]
        return Reconciliation(days, meters, int(dups[0] or 0) if dups else 0, anomalies)

    def reconcile_json(self) -> str:
        return json.dumps(self.reconcile().as_dict(), ensure_ascii=False, indent=1)


_CONFLICT_DETAIL = (
    "validly signed entries differ at this seq (a meter whose journal was reset?); none is "
    "counted until an operator resolves it"
)


class TxLedger(LedgerRules):
    """The ledger in SQLite: a file (``path``) survives a consumer restart; the default is in
    memory. One consumer at a time; consumers sharing the load use
    :class:`edge.platform.pgledger.PgLedger`."""

    TABLES: ClassVar[dict[str, str]] = {
        name: name
        for name in ("keys", "entries", "payments", "receipts", "held", "anomalies", "counters")
    }

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
        self._migrate()
        self.pinned = dict(pinned or {})
        self._sql: dict[str, str] = {}

    def _migrate(self) -> None:
        """A ledger file from before entries kept their transaction id: add it."""
        cols = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        if "tx" in cols:
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_tx ON entries (tx)")
            return
        with _tx(self._db):
            self._db.execute("ALTER TABLE entries ADD COLUMN tx TEXT")
            for meter, seq, typ, payload in self._db.execute(
                "SELECT meter, seq, type, payload FROM entries WHERE type IN (?, ?)",
                (MsgType.PAYMENT, MsgType.RECEIPT),
            ).fetchall():
                try:
                    msg = decode_message(typ, payload)
                except PayloadError:
                    continue
                if isinstance(msg, Payment | Receipt):
                    self._db.execute(
                        "UPDATE entries SET tx = ? WHERE meter = ? AND seq = ?",
                        (msg.transaction_id, meter, seq),
                    )
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_tx ON entries (tx)")

    def close(self) -> None:
        self._db.close()

    def _x(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.format(**self.TABLES)
        return self._db.execute(text, params)

    def _write(
        self,
        work: Callable[[], list[EntryOutcome]],
        gateway: str,
        meters: Iterable[str] = (),
        txs: Iterable[str] = (),
    ) -> list[EntryOutcome]:
        with _tx(self._db):  # BEGIN IMMEDIATE: one writer at a time holds the whole file
            return work()

    def _read(self) -> AbstractContextManager[None]:
        return _tx(self._db, "BEGIN")


class _tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
        self.db = db
        self.begin = begin

    def __enter__(self) -> None:
        self.db.execute(self.begin)

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _transaction_ids(entries: Iterable[SignedEntry]) -> set[str]:
    """The transaction ids the payments and receipts among ``entries`` carry."""
    out = set()
    for e in entries:
        if e.type in (MsgType.PAYMENT, MsgType.RECEIPT):
            try:
                msg = decode_message(e.type, e.payload)
            except PayloadError:
                continue
            if isinstance(msg, Payment | Receipt):
                out.add(msg.transaction_id)
    return out


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
