"""The durable buffer: SQLite in WAL mode, the one source of truth between polling and the broker.

Life of a reading::

    poll --append()--> readings --seal()--> outbox --ack(seq)--> gone
                        (accepted)      (batch seq N,      (only after the broker's
                                         exact bytes)        PUBACK for seq N)

Invariants (tested by the model-based test in tests/test_buffer.py):

* A reading is *accepted* once the transaction that appended it has committed. From then on it is
  in ``readings`` or inside exactly one ``outbox`` batch until that batch is acknowledged, or it
  is evicted by the full policy and counted. A crash (SIGKILL) never loses a committed
  transaction, even with ``synchronous=NORMAL`` (reference library-notes §5).
* ``seal()`` moves the oldest readings into one encoded batch and advances the persistent batch
  sequence number in the same transaction, so a batch's number and content never change: after a
  crash the same bytes are re-sent under the same number, and consumers de-duplicate by number.
  Sequence numbers are never reused, so they strictly increase across restarts.
* When the database uses more than ``max_bytes``, the oldest *unsealed* telemetry is deleted and
  counted (``evicted``); the count travels in the next batch's ``dropped`` field.
* Every value a profile can produce is stored and sealed bit for bit (NaN too, which SQLite
  itself would turn into NULL). A stored reading no batch can carry (a NULL an older version
  left, a value of a type the format has no column for) is set aside by the seal that reaches
  it: counted (``unencodable_total``), reported in that batch's ``dropped`` / ``dropped_why``,
  logged once; the readings behind it are sealed as usual. Sealed batches
  are never evicted: there are at most a few (they are sealed only when about to be published).

All methods are blocking; :class:`AsyncBuffer` runs them on one dedicated thread so the event
loop never waits on the disk and the connection is only ever used by that thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge.clock import CORRECTED, PENDING, UNCERTAIN, kernel_boot_id
from edge.salvage import Salvage, salvage_into
from protocols.batch import (
    TQ_NAMES,
    BatchHeader,
    Reading,
    Value,
    decode_batch,
    encode_batch,
    unencodable,
)

__all__ = ["AsyncBuffer", "Buffer", "BufferError", "BufferStats", "EntryResult", "SealedBatch"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# 2: outbox rows carry a part path (split batches); 3: time quality; 4: parking meter entries
# (new tables only: created by _SCHEMA on any older file)
SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL, UNIQUE (device, point));
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY, series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value,
    tq INTEGER NOT NULL DEFAULT 0, boot_ms INTEGER);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER NOT NULL, part TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,
    readings INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (seq, part));
CREATE TABLE IF NOT EXISTS meter_entries (
    id INTEGER PRIMARY KEY, meter TEXT NOT NULL, seq INTEGER NOT NULL, type INTEGER NOT NULL,
    payload BLOB NOT NULL, received_ms INTEGER NOT NULL, sig BLOB NOT NULL,
    UNIQUE (meter, seq));
CREATE TABLE IF NOT EXISTS meters (
    meter TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0);
"""

#: A meter entry this far ahead of the last committed one is refused (docs/meter-link-v1.md §4).
METER_WINDOW = 1000

_MIGRATE_1_TO_2 = """
ALTER TABLE outbox RENAME TO outbox_v1;
CREATE TABLE outbox (
    seq INTEGER NOT NULL, part TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,
    readings INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (seq, part));
INSERT INTO outbox (seq, part, created_ms, readings, payload)
    SELECT seq, '', created_ms, readings, payload FROM outbox_v1;
DROP TABLE outbox_v1;
UPDATE meta SET value = 2 WHERE key = 'schema_version';
"""

# Readings stamped while the clock was untrusted (tq = PENDING) keep their boot-time stamp in
# boot_ms until the clock is trusted (edge/clock.py); the partial index finds them in O(1) when
# there are none, which is nearly always.
_MIGRATE_2_TO_3 = {
    "tq": "ALTER TABLE readings ADD COLUMN tq INTEGER NOT NULL DEFAULT 0;",
    "boot_ms": "ALTER TABLE readings ADD COLUMN boot_ms INTEGER;",
}
_INDEXES = "CREATE INDEX IF NOT EXISTS readings_held ON readings (id) WHERE tq = 3;"


# The readings table's value column is untyped: floats, int64s and strings go in as themselves;
# what SQLite cannot keep apart (a bool would come back as 1), hold (an unsigned 64-bit value
# above 2**63 - 1) or keep at all (it stores a NaN as NULL) goes in as a tagged blob. A value no
# batch can carry is accepted as a tagged blob saying why: seal() sets it aside, counts it and
# reports it in the batch's ``dropped``, so it can never stop the readings behind it.
_TRUE, _FALSE, _U64, _F64, _BAD = b"\x01", b"\x00", b"u", b"f", b"x"
_I64_MIN, _I64_MAX, _U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_DOUBLE = struct.Struct(">d")


@dataclass(frozen=True, slots=True)
class _Unencodable:
    """A stored value that no batch can carry, and why (from :func:`unencodable`)."""

    why: str


def _stored(value: object) -> object:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    if isinstance(value, float):
        # NaN only: SQLite keeps +-inf, -0.0 and subnormals as REAL bit for bit.
        return _F64 + _DOUBLE.pack(value) if value != value else value
    if isinstance(value, int) and _I64_MIN <= value <= _I64_MAX:
        return value
    if isinstance(value, int) and 0 <= value <= _U64_MAX:
        return _U64 + value.to_bytes(8, "big")
    why = unencodable(value)
    if why is None:
        return value  # a str
    return _BAD + why.encode("utf-8", "replace")


def _loaded(value: object) -> object:
    if isinstance(value, bytes):
        if value == _TRUE:
            return True
        if value == _FALSE:
            return False
        if value[:1] == _U64 and len(value) == 9:
            return int.from_bytes(value[1:], "big")
        if value[:1] == _F64 and len(value) == 9:
            return _DOUBLE.unpack(value[1:])[0]
        if value[:1] == _BAD:
            return _Unencodable(value[1:].decode("utf-8", "replace"))
        return _Unencodable(f"an untagged {len(value)}-byte blob")
    if value is None:
        # Gateways before this version stored a NaN as SQL NULL (SQLite has no NaN).
        return _Unencodable("no value (NULL: a NaN stored by an older gateway version)")
    return value


#: Timestamps a batch carries exactly: its delta-of-delta transform stays inside 64 bits.
_TS_LIMIT = 2**53


def _unsealable(ts: object, value: object, tq: object) -> str | None:
    """Why a stored reading cannot go into a batch, or None when it can."""
    if isinstance(value, _Unencodable):
        return value.why
    if type(ts) is not int or not -_TS_LIMIT <= ts <= _TS_LIMIT:
        return f"timestamp {ts!r} is not a time in ms a batch can carry"
    if tq not in TQ_NAMES:
        return f"time quality {tq!r} cannot travel in a batch"
    return unencodable(value)


class BufferError(Exception):
    """The buffer could not accept readings (disk full even after eviction). They were not
    accepted and are counted as dropped; already accepted data is unaffected."""


@dataclass(frozen=True, slots=True)
class SealedBatch:
    seq: int
    created_ms: int
    readings: int
    payload: bytes
    part: tuple[int, ...] = ()  # the halvings of a batch split for the broker's size limit

    @property
    def key(self) -> tuple[int, tuple[int, ...]]:
        return (self.seq, self.part)


def _part_text(part: tuple[int, ...]) -> str:
    return ".".join(map(str, part))


def _part_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")) if text else ()


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What :meth:`Buffer.commit_entry` did: ``stored``, ``duplicate`` (already committed),
    ``out_of_window`` or ``busy`` (not stored); ``last_seq`` is the seq to acknowledge."""

    outcome: str
    last_seq: int
    missing: int = 0  # entries the meter skipped before this one (a gap in its journal)


@dataclass(frozen=True, slots=True)
class BufferStats:
    pending_readings: int  # accepted, not yet in a batch
    outbox_batches: int  # sealed, awaiting PUBACK
    outbox_readings: int
    used_bytes: int
    max_bytes: int
    next_seq: int
    appended_total: int  # this process
    evicted_total: int  # persistent, all time
    corrupt_lost_total: int  # persistent: unreadable in a damaged buffer file (edge/salvage.py)
    rejected_total: int  # this process: not accepted (disk full)
    oldest_pending_ms: int | None
    unencodable_total: int = 0  # persistent: set aside at seal, no batch can carry them


def _torn_wal_tail(wal: Path) -> int:
    """Bytes after the last whole frame of a WAL file (0 if none, or no WAL): a WAL is a
    32-byte header then frames of 24 bytes plus one page, the page size in header bytes 8-11."""
    try:
        with wal.open("rb") as f:
            header = f.read(32)
            size = wal.stat().st_size
    except OSError:
        return 0
    if len(header) < 32:
        return len(header)
    page = int.from_bytes(header[8:12], "big")
    if page < 512 or page & (page - 1):
        return 0  # not a header SQLite wrote; SQLite itself will ignore the file
    return (size - 32) % (24 + page)


def _quick_check(db: sqlite3.Connection) -> str | None:
    """None if SQLite finds the file sound, else its first complaint."""
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows)


class Buffer:
    """Blocking SQLite buffer. Use from one thread only (see :class:`AsyncBuffer`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        synchronous: str = "normal",
        boot_id: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.boot_id = kernel_boot_id() if boot_id is None else boot_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salvage: Salvage | None = None
        # SD cards tear pages in power cuts and rot at rest, so every start checks every page
        # (quick_check: 0.07 s for 32 MB from the page cache, I/O-bound on a cold card).
        torn = _torn_wal_tail(self.path.with_name(self.path.name + "-wal"))
        if torn:
            log.warning(
                "buffer %s: its WAL ends in %d bytes of a torn write (a power cut): the "
                "transaction being written then is dropped; every one before it is kept",
                self.path,
                torn,
            )
        problem: str | None = None
        try:
            self._db = self._open(synchronous)
            problem = _quick_check(self._db)
            if problem is not None:
                self._db.close()
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        if problem is not None:
            self._db = self._recover(synchronous, problem)
        self._series: dict[tuple[str, str], int] = {
            (d, p): i for i, d, p in self._db.execute("SELECT id, device, point FROM series")
        }
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        # count(*) is a full scan in SQLite: count once, then keep the number up to date.
        self._pending_n = int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])
        # Live / backlog partition (see start_live): ids >= _live_from are live.
        self._live_from = 0
        self._backlog_n = 0
        self.appended_total = 0
        self.rejected_total = 0
        self._held_n = 0
        self._first_held: int | None = None
        self._aside_told: set[str] = set()  # reasons already logged at ERROR by this process
        self._count_held()
        if self._held_n and self._meta(self._db, "held_boot", "") != self.boot_id:
            # The machine restarted: those boot-time stamps belong to a clock that is gone.
            n = self.settle_held(None)
            log.warning(
                "%d readings stamped before the clock was trusted, in an earlier boot, "
                "go out with time quality 'uncertain'",
                n,
            )

    def _recover(self, synchronous: str, problem: str) -> sqlite3.Connection:
        """A buffer that cannot be read must never stop the gateway: move it aside for
        forensics, start a fresh one, copy into it every row that is still readable, and count
        and report the rest (edge/salvage.py)."""
        quarantine = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self.path.rename(quarantine)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(quarantine.with_name(quarantine.name + suffix))
        db = self._open(synchronous)
        self.salvage = salvage_into(db, quarantine, problem)
        log.error("buffer %s is damaged (%s): %s", self.path, problem, self.salvage.describe())
        return db

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL (journal_mode={mode})")
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            db.execute("PRAGMA journal_size_limit=4194304")
            db.executescript(_SCHEMA)
            version = self._meta(db, "schema_version", None)
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif version not in (1, 2, 3, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown buffer schema version {version}")
            if version == 1:
                db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_1_TO_2 + "COMMIT;")
            if version in (1, 2):
                have = {row[1] for row in db.execute("PRAGMA table_info(readings)")}
                db.executescript(
                    "BEGIN IMMEDIATE;"
                    + "".join(sql for col, sql in _MIGRATE_2_TO_3.items() if col not in have)
                    + "UPDATE meta SET value = 3 WHERE key = 'schema_version'; COMMIT;"
                )
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version' AND value < ?",
                (SCHEMA_VERSION, SCHEMA_VERSION),
            )
            db.executescript(_INDEXES)
            for key, default in (
                ("next_seq", 1),
                ("dropped_pending", 0),
                ("evicted_total", 0),
                ("accepted_total", 0),
                ("boot", 0),
                ("held_boot", ""),
                ("corrupt_lost_total", 0),
                ("unencodable_total", 0),
            ):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
            # Every open is a new boot epoch: batches say which run of the gateway sealed them.
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
            db.execute("SELECT count(*) FROM readings").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str, default: Any) -> Any:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    # ------------------------------------------------------------------ writing

    def _series_id(self, device: str, point: str) -> int:
        key = (device, point)
        sid = self._series.get(key)
        if sid is None:
            cur = self._db.execute("INSERT INTO series (device, point) VALUES (?, ?)", key)
            sid = self._series[key] = int(cur.lastrowid or 0)
        return sid

    @property
    def boot(self) -> int:
        return int(self._meta(self._db, "boot", 0))

    def register_series(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Give ids to series before any reading of them arrives (so the birth can list them)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for device, point in pairs:
                self._series_id(device, point)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._series = {
                (d, p): i for i, d, p in self._db.execute("SELECT id, device, point FROM series")
            }
            raise

    @property
    def series_count(self) -> int:
        return len(self._series)

    def series(self) -> list[tuple[int, str, str]]:
        """Every series id ever assigned, with its device and point (ids are never reused)."""
        return sorted((sid, d, p) for (d, p), sid in self._series.items())

    def append(self, readings: Iterable[Reading]) -> int:
        """Accept readings in one transaction (group commit). Returns how many were accepted.

        A reading with time quality PENDING (stamped while the clock was untrusted) is *held*:
        accepted and durable, but not sealed until :meth:`settle_held` gives it a time.
        """
        rows = list(readings)
        if not rows:
            return 0
        held = sum(1 for r in rows if len(r) > 4 and r[4] == PENDING)
        for attempt in range(2):
            series_before = dict(self._series)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO readings (series, ts_ms, value, tq, boot_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            self._series_id(r[0], r[1]),
                            r[2],
                            _stored(r[3]),
                            r[4] if len(r) > 4 else 0,
                            r[5] if len(r) > 5 else None,
                        )
                        for r in rows
                    ],
                )
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'accepted_total'", (len(rows),)
                )
                if held:
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'held_boot'", (self.boot_id,)
                    )
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                self._series = series_before
                if "full" in str(exc).lower() and attempt == 0:
                    log.error("buffer disk is full (%s); evicting oldest telemetry", exc)
                    self._evict(max(len(rows), self._pending_count() // 10))
                    continue
                self.rejected_total += len(rows)
                raise BufferError(f"{len(rows)} readings not accepted: {exc}") from exc
            break
        self.appended_total += len(rows)
        self._pending_n += len(rows)
        if held:
            self._held_n += held
            if self._first_held is None:
                self._count_held()
        self._enforce_limit()
        return len(rows)

    # ------------------------------------------------------------------ parking meter entries

    def meter_last_seq(self, meter: str) -> int:
        row = self._db.execute("SELECT last_seq FROM meters WHERE meter = ?", (meter,)).fetchone()
        return 0 if row is None else int(row[0])

    def next_command(self, meter: str, skip: int = 0, floor: int = 0) -> int:
        """A new command number for ``meter``, durably: a meter carries out a command number
        once and answers a repeat with CMD_ACK, so a number reused after a restart would be
        acknowledged and silently not done. ``skip`` jumps past numbers a commit lost in a power
        cut may have handed out (synchronous=NORMAL); the number is never below ``floor``."""
        row = self._db.execute(
            "INSERT INTO meta VALUES (?, max(?, ?)) "
            "ON CONFLICT (key) DO UPDATE SET value = max(value + ?, ?) RETURNING value",
            (f"cmd:{meter}", 1 + skip, floor, 1 + skip, floor),
        ).fetchone()
        return int(row[0])

    def commit_entry(
        self,
        meter: str,
        seq: int,
        mtype: int,
        payload: bytes,
        received_ms: int,
        sign: Callable[[], bytes],
    ) -> EntryResult:
        """Store one meter journal entry, exactly once, before the meter is acknowledged.

        The entry and the meter's last committed seq change in one transaction, so after any
        crash the gateway either has the entry and acknowledges it as a duplicate, or has
        neither and takes it again. Entries are a priority class: never evicted; when telemetry
        eviction cannot make room for them the answer is ``busy`` (the meter keeps the entry).
        """
        row = self._db.execute("SELECT last_seq FROM meters WHERE meter = ?", (meter,)).fetchone()
        # A meter with no record here (new, or this buffer is new or was salvaged) is taken at
        # whatever seq it is at: its earlier entries went to whoever acknowledged them.
        known = row is not None
        last = int(row[0]) if known else 0
        if known and seq <= last:
            self._db.execute(
                "UPDATE meters SET duplicates = duplicates + 1 WHERE meter = ?", (meter,)
            )
            return EntryResult("duplicate", last)
        if known and seq > last + METER_WINDOW:
            return EntryResult("out_of_window", last)
        while self.used_bytes() + len(payload) > self.max_bytes:
            pending = self._pending_count()
            if pending == 0:  # only entries left: the meter keeps this one
                return EntryResult("busy", last)
            self._evict(min(pending, max(100, pending // 4)))  # telemetry goes first
        missing = seq - last - 1 if known else 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO meter_entries (meter, seq, type, payload, received_ms, sig) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (meter, seq, mtype, payload, received_ms, sign()),
            )
            self._db.execute(
                "INSERT INTO meters (meter, last_seq, missing) VALUES (?, ?, ?) "
                "ON CONFLICT (meter) DO UPDATE SET last_seq = excluded.last_seq, "
                "missing = missing + excluded.missing",
                (meter, seq, missing),
            )
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            if "full" in str(exc).lower():
                log.error("buffer disk is full (%s): meter %s entry %d refused", exc, meter, seq)
                return EntryResult("busy", last)
            raise
        return EntryResult("stored", seq, missing)

    def unsent_entries(self, limit: int) -> list[tuple[int, str, int, int, bytes, int, bytes]]:
        """The oldest stored entries: (id, meter, seq, type, payload, received_ms, sig)."""
        return self._db.execute(
            "SELECT id, meter, seq, type, payload, received_ms, sig FROM meter_entries "
            "ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()

    def entries_sent(self, upto_id: int) -> int:
        """The broker acknowledged every entry up to ``upto_id``: forget them."""
        cur = self._db.execute("DELETE FROM meter_entries WHERE id <= ?", (upto_id,))
        return cur.rowcount

    def entries_pending(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM meter_entries").fetchone()[0])

    # ------------------------------------------------------------------ time quality

    def _count_held(self) -> None:
        first, n = self._db.execute(
            "SELECT min(id), count(*) FROM readings WHERE tq = ?", (PENDING,)
        ).fetchone()
        self._first_held, self._held_n = first, n

    @property
    def held(self) -> int:
        """Readings waiting for a trustworthy clock before they can be sealed."""
        return self._held_n

    def settle_held(self, offset_ms: int | None, *, older_than_boot_ms: int | None = None) -> int:
        """Give held readings their time; returns how many were settled.

        ``offset_ms`` (wall minus boot time, measured once the clock is trusted, same kernel
        boot): each one is re-timed to ``boot_ms + offset_ms`` with quality CORRECTED.
        ``None``: they cannot be corrected and keep their wall-clock stamp as UNCERTAIN; with
        ``older_than_boot_ms`` only those stamped before that boot time (held too long).
        """
        if not self._held_n:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if offset_ms is not None:
                cur = self._db.execute(
                    "UPDATE readings SET ts_ms = boot_ms + ?, tq = ?, boot_ms = NULL "
                    "WHERE tq = ? AND boot_ms IS NOT NULL",
                    (offset_ms, CORRECTED, PENDING),
                )
                n = cur.rowcount
                cur = self._db.execute(
                    "UPDATE readings SET tq = ? WHERE tq = ?", (UNCERTAIN, PENDING)
                )
                n += cur.rowcount
            else:
                limit = "" if older_than_boot_ms is None else " AND boot_ms < ?"
                args = () if older_than_boot_ms is None else (older_than_boot_ms,)
                cur = self._db.execute(
                    f"UPDATE readings SET tq = ?, boot_ms = NULL WHERE tq = ?{limit}",
                    (UNCERTAIN, PENDING, *args),
                )
                n = cur.rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._count_held()
        return n

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def _pending_count(self) -> int:
        return self._pending_n

    # ------------------------------------------------------------------ live / backlog

    def start_live(self) -> int:
        """Mark every pending reading as *backlog*; readings appended from now on are *live*.

        Called when an uplink session starts, so data held through an outage can be drained
        at a limited rate while fresh data is sent first. Returns the backlog size. New row
        ids stay above the boundary while any backlog row exists: the newest backlog row is
        the last one to leave (seals and evictions take the oldest first).
        """
        top = self._db.execute("SELECT max(id) FROM readings").fetchone()[0]
        self._live_from = (top or 0) + 1
        self._backlog_n = self._pending_n
        return self._backlog_n

    @property
    def backlog_pending(self) -> int:
        """Backlog readings that can be sealed (held ones cannot: see :meth:`settle_held`)."""
        if self._first_held is not None and self._first_held < self._live_from:
            return max(0, self._backlog_n - self._held_n)
        return self._backlog_n

    @property
    def live_pending(self) -> int:
        return max(0, self._pending_n - self._backlog_n - self._held_n)

    def _taken(self, n: int, part: str) -> None:
        """Book ``n`` rows leaving the buffer from ``part`` ("backlog", "live" or "oldest")."""
        self._pending_n -= n
        if part in ("backlog", "oldest"):
            self._backlog_n = max(0, self._backlog_n - n)
        if self._backlog_n == 0:
            self._live_from = 0  # no backlog left: everything is live again

    def _enforce_limit(self) -> None:
        used = self.used_bytes()
        if used <= self.max_bytes:
            return
        rows = self._pending_count()
        if rows == 0:
            return
        per_row = max(1.0, used / rows)
        # Free 5 % below the limit so eviction runs in chunks, not on every commit.
        excess = used - int(self.max_bytes * 0.95)
        self._evict(min(rows, max(1, int(excess / per_row) + 1)))

    def _evict(self, n: int) -> int:
        """Delete the ``n`` oldest unsealed readings and count them. Returns how many."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)",
                (n,),
            )
            dropped = cur.rowcount
            self._db.execute(
                "UPDATE meta SET value = value + ? "
                "WHERE key IN ('dropped_pending', 'evicted_total')",
                (dropped,),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._taken(dropped, "oldest")
        if self._held_n:
            self._count_held()
        if dropped:
            log.error(
                "buffer over %d bytes: evicted the %d oldest readings", self.max_bytes, dropped
            )
        return dropped

    # ------------------------------------------------------------------ batches

    def unacked(self) -> list[SealedBatch]:
        """Sealed batches still waiting for their PUBACK, oldest first."""
        rows = self._db.execute(
            "SELECT seq, created_ms, readings, payload, part FROM outbox ORDER BY seq, part"
        )
        return [SealedBatch(s, c, n, p, _part_tuple(part)) for s, c, n, p, part in rows]

    def seal(
        self,
        gateway: str,
        max_readings: int,
        created_ms: int | None = None,
        *,
        max_bytes: int | None = None,
        part: str = "any",
    ) -> SealedBatch | None:
        """Move up to ``max_readings`` oldest readings into a new numbered batch (atomic).

        With ``max_bytes`` the batch is cut so its encoded size stays within it (below the
        broker's maximum packet size); a single reading is always sealed, whatever its size.
        Rows among them that no batch can carry are set aside (see the module docstring): the
        batch may then hold fewer readings than it took, or none, with its ``dropped`` saying so.
        ``part`` picks "backlog" or "live" readings (see :meth:`start_live`), or "any".
        """
        if part not in ("any", "backlog", "live"):
            raise ValueError(f"unknown part {part!r}")
        where = {"any": "", "backlog": "WHERE id < ?", "live": "WHERE id >= ?"}[part]
        params: tuple[int, ...] = () if part == "any" else (self._live_from,)
        if self._first_held is not None:
            # Nothing at or after the first held reading: batches keep the arrival order.
            where = f"{where} AND id < ?" if where else "WHERE id < ?"
            params = (*params, self._first_held)
        created = int(time.time() * 1000) if created_ms is None else created_ms
        self._db.execute("BEGIN IMMEDIATE")
        try:
            select = (
                f"SELECT id, series, ts_ms, value, tq FROM readings {where} ORDER BY id LIMIT ?"
            )
            ids: list[int] = []  # first and last id of the rows read, how many, how many sealed
            aside: list[tuple[int, object, str]] = []  # rows no batch can carry: sid, ts, why

            def rows(limit: int) -> Iterator[tuple[int, int, Value, int]]:
                # Streamed from the cursor, not fetched into a list: a 5000-reading batch
                # would otherwise hold ~1 MB of row tuples while it is encoded.
                ids.clear()
                aside.clear()
                n = 0
                for rid, sid, ts, v, tq in self._db.execute(select, (*params, limit)):
                    if n == 0:
                        ids.append(rid)
                    n += 1
                    value = _loaded(v)
                    why = _unsealable(ts, value, tq)
                    if why is not None:
                        aside.append((sid, ts, why))
                        continue
                    yield sid, ts, value, tq
                if n:
                    ids[1:] = [rid, n, n - len(aside)]

            dropped = self._meta(self._db, "dropped_pending", 0)
            seq = self._meta(self._db, "next_seq", 1)
            take = max_readings
            while True:
                header = BatchHeader(gateway, seq, self.boot, created, dropped)
                payload = encode_batch(header, rows(take))
                if aside:
                    # Set aside, counted and reported in this very batch: they never block
                    # the readings behind them. (Rare: the rows are read a second time.)
                    header = BatchHeader(
                        gateway,
                        seq,
                        self.boot,
                        created,
                        dropped + len(aside),
                        dropped_why={"unencodable": len(aside)},
                    )
                    payload = encode_batch(header, rows(take))
                if not ids and not dropped:
                    self._db.execute("ROLLBACK")
                    return None
                read, taken = (ids[2], ids[3]) if ids else (0, 0)
                if max_bytes is None or len(payload) <= max_bytes or taken <= 1:
                    break
                take = max(1, min(read - 1, int(read * max_bytes / len(payload) * 0.9)))
            if ids:
                # The selected rows are every row of the range between the first and the last.
                self._db.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", ids[:2])
            self._db.execute(
                "INSERT INTO outbox (seq, created_ms, readings, payload) VALUES (?, ?, ?, ?)",
                (seq, created, taken, payload),
            )
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._db.execute("UPDATE meta SET value = 0 WHERE key = 'dropped_pending'")
            if aside:
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'unencodable_total'",
                    (len(aside),),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._taken(read, "oldest" if part == "any" else part)
        if aside:
            self._tell_aside(seq, aside)
        return SealedBatch(seq, created, taken, payload)

    def _tell_aside(self, seq: int, aside: list[tuple[int, object, str]]) -> None:
        """Log readings set aside at a seal: ERROR the first time a reason appears in this
        process (data was lost), DEBUG after that (the count is in every batch's header)."""
        names = {sid: f"{d}.{p}" for (d, p), sid in self._series.items()}
        by_why: dict[str, list[tuple[int, object, str]]] = {}
        for row in aside:
            by_why.setdefault(row[2], []).append(row)
        for why, rows in by_why.items():
            sid, ts, _ = rows[0]
            level = logging.DEBUG if why in self._aside_told else logging.ERROR
            self._aside_told.add(why)
            log.log(
                level,
                "buffer: %d readings cannot go into any batch (%s; the first: %s at ts_ms %s): "
                "set aside, reported as dropped in batch %d; the readings behind them go on",
                len(rows),
                why,
                names.get(sid, f"series {sid}"),
                ts,
                seq,
            )

    def ack(self, seq: int, part: tuple[int, ...] = ()) -> bool:
        """The broker acknowledged batch ``seq`` (or that part of it): its readings leave."""
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq = ? AND part = ?", (seq, _part_text(part))
        )
        return cur.rowcount == 1

    def split(self, seq: int, part: tuple[int, ...] = ()) -> list[SealedBatch]:
        """Replace an unacknowledged batch by its two halves, which keep its seq (atomic).

        For a batch the broker refuses as too large. Consumers de-duplicate parts against the
        whole batch, so exactly-once holds even if the whole had in fact been delivered.
        Returns the halves, or [] when the batch holds fewer than two readings.
        """
        row = self._db.execute(
            "SELECT created_ms, payload FROM outbox WHERE seq = ? AND part = ?",
            (seq, _part_text(part)),
        ).fetchone()
        if row is None:
            return []
        created, payload = row
        batch = decode_batch(payload)
        points = sorted(batch.points, key=lambda p: (p.ts_ms, p.sid))
        if len(points) < 2:
            return []
        half = len(points) // 2
        out = []
        for i, chunk in ((1, points[:half]), (2, points[half:])):
            h = batch.header
            header = BatchHeader(
                h.gateway,
                h.seq,
                h.boot,
                h.created_ms,
                h.dropped if i == 1 else 0,
                part=(*part, i),
                dropped_why=h.dropped_why if i == 1 else {},
            )
            out.append(
                SealedBatch(seq, created, len(chunk), encode_batch(header, chunk), (*part, i))
            )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "DELETE FROM outbox WHERE seq = ? AND part = ?", (seq, _part_text(part))
            )
            self._db.executemany(
                "INSERT INTO outbox (seq, part, created_ms, readings, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                [(b.seq, _part_text(b.part), b.created_ms, b.readings, b.payload) for b in out],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return out

    # ------------------------------------------------------------------ introspection

    def stats(self) -> BufferStats:
        pending = self._pending_count()
        ob = self._db.execute("SELECT count(*), coalesce(sum(readings), 0) FROM outbox").fetchone()
        # The oldest by arrival (rowid order, O(log n)); min(ts_ms) would scan the whole table,
        # and stats() runs at every connection (the birth), so a large backlog must stay cheap.
        row = self._db.execute("SELECT ts_ms FROM readings ORDER BY id LIMIT 1").fetchone()
        oldest = row[0] if row else None
        return BufferStats(
            pending_readings=pending,
            outbox_batches=ob[0],
            outbox_readings=ob[1],
            used_bytes=self.used_bytes(),
            max_bytes=self.max_bytes,
            next_seq=self._meta(self._db, "next_seq", 1),
            appended_total=self.appended_total,
            evicted_total=self._meta(self._db, "evicted_total", 0),
            corrupt_lost_total=self._meta(self._db, "corrupt_lost_total", 0),
            rejected_total=self.rejected_total,
            oldest_pending_ms=oldest,
            unencodable_total=self._meta(self._db, "unencodable_total", 0),
        )

    def pending(self) -> int:
        return self._pending_count()

    def close(self) -> None:
        self._db.close()


class AsyncBuffer:
    """:class:`Buffer` on one dedicated thread, awaited from the event loop."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        synchronous: str = "normal",
        boot_id: str | None = None,
    ):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._args = (path, max_bytes, synchronous, boot_id)
        self._buf: Buffer | None = None

    async def open(self) -> AsyncBuffer:
        path, max_bytes, synchronous, boot_id = self._args
        self._buf = await self._run(
            lambda: Buffer(path, max_bytes=max_bytes, synchronous=synchronous, boot_id=boot_id)
        )
        return self

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    @property
    def sync(self) -> Buffer:
        if self._buf is None:
            raise RuntimeError("buffer not open")
        return self._buf

    async def append(self, readings: list[Reading]) -> int:
        return await self._run(lambda: self.sync.append(readings))

    async def settle_held(
        self, offset_ms: int | None, *, older_than_boot_ms: int | None = None
    ) -> int:
        return await self._run(
            lambda: self.sync.settle_held(offset_ms, older_than_boot_ms=older_than_boot_ms)
        )

    async def seal(
        self, gateway: str, max_readings: int, max_bytes: int | None = None, part: str = "any"
    ) -> SealedBatch | None:
        return await self._run(
            lambda: self.sync.seal(gateway, max_readings, max_bytes=max_bytes, part=part)
        )

    async def start_live(self) -> int:
        return await self._run(self.sync.start_live)

    async def register_series(self, pairs: list[tuple[str, str]]) -> None:
        await self._run(lambda: self.sync.register_series(pairs))

    async def series(self) -> list[tuple[int, str, str]]:
        return await self._run(self.sync.series)

    async def boot(self) -> int:
        return await self._run(lambda: self.sync.boot)

    async def unacked(self) -> list[SealedBatch]:
        return await self._run(self.sync.unacked)

    async def ack(self, seq: int, part: tuple[int, ...] = ()) -> bool:
        return await self._run(lambda: self.sync.ack(seq, part))

    async def split(self, seq: int, part: tuple[int, ...] = ()) -> list[SealedBatch]:
        return await self._run(lambda: self.sync.split(seq, part))

    async def meter_last_seq(self, meter: str) -> int:
        return await self._run(lambda: self.sync.meter_last_seq(meter))

    async def next_command(self, meter: str, skip: int = 0, floor: int = 0) -> int:
        return await self._run(lambda: self.sync.next_command(meter, skip, floor))

    async def commit_entry(
        self,
        meter: str,
        seq: int,
        mtype: int,
        payload: bytes,
        received_ms: int,
        sign: Callable[[], bytes],
    ) -> EntryResult:
        return await self._run(
            lambda: self.sync.commit_entry(meter, seq, mtype, payload, received_ms, sign)
        )

    async def unsent_entries(
        self, limit: int
    ) -> list[tuple[int, str, int, int, bytes, int, bytes]]:
        return await self._run(lambda: self.sync.unsent_entries(limit))

    async def entries_sent(self, upto_id: int) -> int:
        return await self._run(lambda: self.sync.entries_sent(upto_id))

    async def entries_pending(self) -> int:
        return await self._run(lambda: self.sync.entries_pending())

    async def stats(self) -> BufferStats:
        return await self._run(self.sync.stats)

    async def close(self) -> None:
        if self._buf is not None:
            await self._run(self.sync.close)
        self._pool.shutdown(wait=True)
