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
* The disk is a limit too (see "A full disk" below): the same policy keeps the buffer inside
  the room its filesystem has, whatever else fills it. Readings the disk has no room for at all
  are refused (not accepted), counted, and reported in ``dropped`` as well.
* One gateway at a time: the buffer is locked (edge/store/storage.py) before anything reads, checks
  or moves it, so a second gateway on the same buffer is refused and told who holds it.

A full disk
-----------
SQLite in WAL mode needs room for three things: the database's pages, the WAL (frames since
the last checkpoint; the file is reused from its start after each checkpoint) and the pages a
checkpoint adds to the database file. When the disk runs out, a commit fails with SQLITE_FULL,
and if the WAL then holds pages the database file must grow by, no checkpoint and therefore no
deletion can be written either: the buffer is stuck until space returns. So the buffer keeps out
of that corner instead of recovering from it:

* the checkpoint interval shrinks with the free space (``wal_autocheckpoint`` from 1000 pages
  down to 16), so the WAL stays small on a small or full disk;
* after every commit the room left is measured (statvfs: free bytes, less what the WAL may still
  grow by, less what a checkpoint adds to the file, less a margin). While it lasts, the file
  grows into it; when it runs short, the oldest telemetry is evicted so that a slack of free pages
  stays inside the file: new readings reuse them and the file stops growing;
* eviction itself must stay cheap: ``secure_delete=FAST``, else every freed page is rewritten
  with zeros and an eviction needs as much WAL as it frees;
* when a commit still fails (another program took the last bytes), the transaction is rolled
  back, a checkpoint is tried, telemetry is evicted and the commit is tried once more; after
  that the readings are refused and counted (``rejected_total``, and in the next batch's
  ``dropped``). A parking meter entry is answered BUSY (the meter keeps it); acknowledgements
  that cannot be written are kept in memory and written when there is room (a batch or an entry
  re-sent after a restart is de-duplicated by the platform). The episode is logged once at
  ERROR, then at DEBUG, and at INFO when room returns. Nothing here ever counts as damage: only
  SQLite saying the content is corrupt sends a file to salvage (edge/store/salvage.py).

All methods are blocking; :class:`AsyncBuffer` runs them on one dedicated thread so the event
loop never waits on the disk and the connection is only ever used by that thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge.shared.clock import CORRECTED, PENDING, UNCERTAIN, kernel_boot_id
from edge.store import storage
from edge.store.salvage import Salvage, quarantine, salvage_into, unquarantine
from edge.store.storage import BufferInUse, BufferLock, BufferUnavailable
from protocols.batch import (
    TQ_NAMES,
    BatchHeader,
    BatchTooLarge,
    Reading,
    Value,
    decode_batch,
    encode_batch,
    unencodable,
)

__all__ = [
    "AsyncBuffer",
    "Buffer",
    "BufferError",
    "BufferInUse",
    "BufferStats",
    "BufferUnavailable",
    "EntryResult",
    "SealedBatch",
]

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

# A full disk (module doc). Pages: SQLite's page size, 4096 bytes here.
#: WAL frames one transaction may add past the checkpoint threshold (a commit of a few hundred
#: readings is 2-4 frames; a 5000-reading seal about 30).
_TXN_PAGES = 32
#: Kept free beyond everything else the disk must hold for the buffer.
_MARGIN_PAGES = 8
#: Free pages kept inside the file once the disk has no room for it to grow: the next commits.
_SLACK_PAGES = 16
#: wal_autocheckpoint bounds (SQLite's default is the upper one).
_WAL_PAGES_MIN, _WAL_PAGES_MAX = 16, 1000
#: The room that ends a full-disk episode (hysteresis: a disk at its limit evicts on and off).
_ROOM_AGAIN_PAGES = 4 * _SLACK_PAGES

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
# boot_ms until the clock is trusted (edge/shared/clock.py); the partial index finds them in O(1)
# when there are none, which is nearly always.
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
    corrupt_lost_total: int  # persistent: unreadable in a damaged file (store/salvage.py)
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


_TORN_TOLD: set[str] = set()  # buffers whose torn WAL tail this process has logged


def _quick_check(db: sqlite3.Connection) -> str | None:
    """None if SQLite finds the file sound, else its first complaint. An error that is not
    about the content (a full disk, permissions) is raised, not taken for a complaint."""
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as exc:
        if not storage.is_damage(exc):
            raise
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
        self.salvage: Salvage | None = None
        self._init_disk_state()
        self._lock = self._take(self.path)
        try:
            self._db = self._open_checked(synchronous)
        except BaseException:
            self._lock.release()
            raise
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

    @staticmethod
    def _take(path: Path) -> BufferLock:
        """Refuse what is not a buffer file, make its folder, lock it (edge/store/storage.py)."""
        if os.path.lexists(path) and not os.path.isfile(path):
            why = storage.path_problem(path) or f"{path} is a symlink to nothing"
            raise BufferUnavailable(f"cannot open the buffer: {why}", retry=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BufferUnavailable(
                f"cannot create the buffer folder {path.parent}: {exc.strerror} "
                f"(as user {storage.user_name()})",
                retry=storage.is_full(exc, path),
            ) from None
        lock = BufferLock(path)
        lock.acquire()
        return lock

    def _open_checked(self, synchronous: str) -> sqlite3.Connection:
        """Open, check every page, salvage a damaged file; a full disk or a permission problem
        raises :class:`BufferUnavailable` and moves nothing."""
        # SD cards tear pages in power cuts and rot at rest, so every start checks every page
        # (quick_check: 0.07 s for 32 MB from the page cache, I/O-bound on a cold card).
        torn = _torn_wal_tail(self.path.with_name(self.path.name + "-wal"))
        if torn:
            free = storage.disk_free(self.path.parent)
            if free is not None and free < storage.FULL_BELOW:
                why = f"a write cut short by the full disk: {free} bytes free on it now"
            else:
                why = "a torn write: a power cut, or a disk that ran full"
            # once per process: a gateway waiting for room opens it again and again
            told = str(self.path) in _TORN_TOLD
            _TORN_TOLD.add(str(self.path))
            log.log(
                logging.DEBUG if told else logging.WARNING,
                "buffer %s: its WAL ends in %d bytes of %s; the transaction being written then "
                "is dropped; every one before it is kept",
                self.path,
                torn,
                why,
            )
        for attempt in range(2):
            try:
                db = self._open(synchronous)
                try:
                    problem = _quick_check(db)
                except BaseException:
                    db.close()
                    raise
            except sqlite3.DatabaseError as exc:
                if storage.is_damage(exc):
                    return self._recover(synchronous, str(exc))
                if attempt == 0 and storage.is_full(exc, self.path):
                    self._checkpoint_closed()  # the WAL may start over and make room
                    continue
                raise storage.unavailable(self.path, exc) from exc
            if problem is None:
                return db
            db.close()
            return self._recover(synchronous, problem)
        raise AssertionError("unreachable")

    def _checkpoint_closed(self) -> None:
        """Try a checkpoint on a bare connection (at open, after SQLITE_FULL)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            pass
        finally:
            db.close()

    def _recover(self, synchronous: str, problem: str) -> sqlite3.Connection:
        """A buffer that cannot be read must never stop the gateway: move it aside for
        forensics, start a fresh one, copy into it every row that is still readable, and count
        and report the rest (edge/store/salvage.py). With no room on the disk for the copy, the
        damaged file goes back where it was and :class:`BufferUnavailable` says so."""
        real = self.path.resolve()  # a symlinked buffer: the file it names is the damaged one
        try:
            aside = quarantine(real)
        except (ValueError, OSError) as exc:
            raise BufferUnavailable(
                f"buffer {self.path} is damaged ({problem}) and cannot be moved aside: {exc}",
                retry=False,
            ) from None
        try:
            db = self._open(synchronous)
            try:
                self.salvage = salvage_into(db, aside, problem)
            except BaseException:
                db.close()
                raise
        except sqlite3.Error as exc:
            unquarantine(aside, real)
            self.salvage = None
            raise storage.unavailable(self.path, exc, "salvage") from exc
        log.error("buffer %s is damaged (%s): %s", self.path, problem, self.salvage.describe())
        return db

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            db.execute("PRAGMA journal_size_limit=4194304")
            # An eviction on a full disk must not rewrite every freed page (module doc).
            db.execute("PRAGMA secure_delete=FAST")
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
        except BaseException as exc:
            self._rollback()
            self._series = {
                (d, p): i for i, d, p in self._db.execute("SELECT id, device, point FROM series")
            }
            if isinstance(exc, sqlite3.Error) and storage.is_full(exc, self.path):
                raise storage.unavailable(self.path, exc, "write to") from exc
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
        self._pay_debts()
        for attempt in range(2):
            series_before = dict(self._series)
            owed = self._refused_unrecorded
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
                if owed:  # readings refused earlier for lack of room: told in dropped
                    self._db.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped_pending'", (owed,)
                    )
                if held:
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'held_boot'", (self.boot_id,)
                    )
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                self._series = series_before
                if not isinstance(exc, sqlite3.OperationalError):
                    raise
                full = storage.is_full(exc, self.path)
                if full:
                    self._on_full(exc, f"storing {len(rows)} readings")
                    if attempt == 0 and self._make_room(len(rows)):
                        continue
                    self._refused_in_episode += len(rows)
                else:
                    self._failing.start("buffer: readings not accepted: %s", exc)
                self.rejected_total += len(rows)
                self._refused_unrecorded += len(rows)
                raise BufferError(f"{len(rows)} readings not accepted: {exc}") from exc
            self._refused_unrecorded -= owed
            break
        self._failing.end("buffer: readings accepted again")
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
        try:
            # fetchall: the statement runs to its end, so a failed commit raises here
            rows = self._db.execute(
                "INSERT INTO meta VALUES (?, max(?, ?)) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value + ?, ?) RETURNING value",
                (f"cmd:{meter}", 1 + skip, floor, 1 + skip, floor),
            ).fetchall()
        except sqlite3.Error as exc:
            self._rollback()
            if not storage.is_full(exc, self.path):
                raise
            self._on_full(exc, f"recording a command number for meter {meter}")
            raise BufferError(
                f"no room on the disk to record a command number for meter {meter}"
            ) from exc
        return int(rows[0][0])

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
            try:
                self._db.execute(
                    "UPDATE meters SET duplicates = duplicates + 1 WHERE meter = ?", (meter,)
                )
            except sqlite3.Error as exc:  # only a counter: the answer stays right
                if not storage.is_full(exc, self.path):
                    raise
                self._on_full(exc, f"counting a re-sent entry of meter {meter}")
            return EntryResult("duplicate", last)
        if known and seq > last + METER_WINDOW:
            return EntryResult("out_of_window", last)
        self._pay_debts()
        missing = seq - last - 1 if known else 0
        for attempt in range(2):
            if not self._room_for(len(payload)):  # only entries left: the meter keeps this one
                log.debug("meter %s entry %d answered BUSY: the buffer has no room", meter, seq)
                return EntryResult("busy", last)
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
            except BaseException as exc:
                self._rollback()
                if not isinstance(exc, sqlite3.Error) or not storage.is_full(exc, self.path):
                    raise
                self._on_full(exc, f"storing entry {seq} of meter {meter}")
                if attempt == 0 and self._make_room(100):
                    continue
                log.debug("meter %s entry %d answered BUSY: the disk is full", meter, seq)
                return EntryResult("busy", last)
            break
        return EntryResult("stored", seq, missing)

    def unsent_entries(self, limit: int) -> list[tuple[int, str, int, int, bytes, int, bytes]]:
        """The oldest stored entries: (id, meter, seq, type, payload, received_ms, sig)."""
        return self._db.execute(
            "SELECT id, meter, seq, type, payload, received_ms, sig FROM meter_entries "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (self._sent_upto, limit),
        ).fetchall()

    def entries_sent(self, upto_id: int) -> int:
        """The broker acknowledged every entry up to ``upto_id``: forget them. On a full disk
        they are forgotten in memory and deleted once there is room (after a restart before
        that they go out again; the platform de-duplicates by meter and seq)."""
        try:
            cur = self._db.execute("DELETE FROM meter_entries WHERE id <= ?", (upto_id,))
        except sqlite3.Error as exc:
            if not storage.is_full(exc, self.path):
                raise
            self._on_full(exc, "recording that meter entries were delivered")
            n = self._db.execute(
                "SELECT count(*) FROM meter_entries WHERE id > ? AND id <= ?",
                (self._sent_upto, upto_id),
            ).fetchone()[0]
            self._sent_upto = max(self._sent_upto, upto_id)
            return int(n)
        return cur.rowcount

    def entries_pending(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM meter_entries WHERE id > ?", (self._sent_upto,)
            ).fetchone()[0]
        )

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
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and storage.is_full(exc, self.path):
                self._on_full(exc, "re-timing held readings")
                return 0  # tried again at the next call (once a second)
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

    # ------------------------------------------------------------------ room (module doc)

    def _init_disk_state(self) -> None:
        self._real = Path(os.path.realpath(self.path))  # SQLite puts -wal beside the real file
        self._wal_path = self._real.with_name(self._real.name + "-wal")
        self._wal_pages = _WAL_PAGES_MAX  # SQLite's default wal_autocheckpoint
        self._disk = storage.Episode(log)  # the disk has no room for the buffer
        self._over = storage.Episode(log)  # the buffer is over buffer.max_bytes
        self._failing = storage.Episode(log)  # appends fail for another reason
        self._refused_unrecorded = 0  # refused readings not yet added to dropped_pending
        self._refused_in_episode = 0
        self._evicted_in_episode = 0
        # Deletes the disk had no room for, done at the next chance (module doc):
        self._acks_owed: set[tuple[int, str]] = set()  # acknowledged batches (seq, part)
        self._sent_upto = 0  # meter entries up to this id were delivered

    def _room(self) -> tuple[int | None, int]:
        """Bytes the database file may still grow by on its disk, keeping what the WAL and a
        checkpoint need (None: the filesystem cannot tell), and its size in pages. Also sets
        the checkpoint interval from the free space: 1/8 of it, 16 to 1000 pages."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = storage.disk_free(self._real.parent)
        if free is None:
            return None, pages
        page = self._page_size
        frame = page + 24  # a WAL frame: 24-byte header and the page
        try:
            wal = os.stat(self._wal_path).st_size
        except OSError:
            wal = 0
        try:
            file_bytes = os.stat(self._real).st_size
        except OSError:
            file_bytes = 0
        want = min(_WAL_PAGES_MAX, max(_WAL_PAGES_MIN, (free + wal) // (8 * frame)))
        if want != self._wal_pages:
            self._db.execute(f"PRAGMA wal_autocheckpoint={int(want)}")
            self._wal_pages = want
        wal_budget = 32 + (self._wal_pages + _TXN_PAGES) * frame
        growth = max(0, pages * page - file_bytes)  # pages in the WAL beyond the file's end
        return free - growth - max(0, wal_budget - wal) - _MARGIN_PAGES * page, pages

    def _limit(self) -> tuple[int, int | None, bool]:
        """The bytes the buffer's rows may use now: ``max_bytes``, or less when the disk has
        no room for that (then True). And the room (see :meth:`_room`)."""
        room, pages = self._room()
        if room is None:
            return self.max_bytes, None, False
        disk_cap = (pages - _SLACK_PAGES) * self._page_size + max(room, 0)
        if disk_cap < self.max_bytes:
            return disk_cap, room, True
        return self.max_bytes, room, False

    def _enforce_limit(self) -> None:
        try:
            limit, room, by_disk = self._limit()
            used = self.used_bytes()
            if (
                self._disk.active
                and room is not None
                and room >= _ROOM_AGAIN_PAGES * (self._page_size)
            ):
                self._disk.end(
                    "the disk holding the buffer %s has room again (%s bytes free): %d readings "
                    "were evicted and %d refused while it was full, all reported in dropped",
                    self.path,
                    storage.disk_free(self._real.parent),
                    self._evicted_in_episode,
                    self._refused_in_episode,
                )
                self._evicted_in_episode = self._refused_in_episode = 0
            if self._over.active and used < 0.8 * self.max_bytes:
                self._over.end("buffer back under its limit of %d bytes", self.max_bytes)
            if used <= limit:
                return
            rows = self._pending_count()
            if rows == 0:
                return
            per_row = max(1.0, used / rows)
            # Free 5 % below the limit so eviction runs in chunks, not on every commit.
            excess = used - int(limit * 0.95)
            self._evict(min(rows, max(1, int(excess / per_row) + 1)), "disk" if by_disk else "")
        except sqlite3.Error as exc:
            # The readings are accepted already: a full disk here must not undo that.
            if not storage.is_full(exc, self.path):
                raise
            self._on_full(exc, "evicting the oldest telemetry")

    def _room_for(self, nbytes: int) -> bool:
        """Evict telemetry until ``nbytes`` more fit in the limit; False when they cannot
        (nothing left to evict, or no room on the disk even for that)."""
        try:
            while True:
                limit, _, by_disk = self._limit()
                if self.used_bytes() + nbytes <= limit:
                    return True
                pending = self._pending_count()
                if pending == 0:
                    return False
                self._evict(min(pending, max(100, pending // 4)), "disk" if by_disk else "")
        except sqlite3.Error as exc:
            if not storage.is_full(exc, self.path):
                raise
            self._on_full(exc, "evicting telemetry for a parking meter entry")
            return False

    def _on_full(self, exc: BaseException, doing: str) -> None:
        """SQLite or the OS said the disk is full: the episode is logged once (ERROR)."""
        self._disk.start(
            "the disk holding the buffer %s (%s) is full: %s bytes free (SQLite: %s, while %s). "
            "The oldest unsent telemetry is evicted and readings that still do not fit are "
            "refused (both counted and reported in the next batch's dropped); parking meters "
            "are answered BUSY and keep their entries. Free space on that disk (logged at "
            "DEBUG while it lasts, at INFO when there is room)",
            self.path,
            storage.mount_point(self._real.parent),
            storage.disk_free(self._real.parent),
            exc,
            doing,
        )

    def _checkpoint(self) -> bool:
        """A PASSIVE checkpoint; True when it copied every frame (the next write starts the WAL
        from its beginning, in the space the file already has)."""
        try:
            busy, frames, done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return False
        return busy == 0 and frames > 0 and frames == done

    def _make_room(self, rows: int) -> bool:
        """After SQLITE_FULL: let the WAL start over, evict the oldest telemetry. True when
        that changed something, so one more try may succeed."""
        checkpointed = self._checkpoint()
        pending = self._pending_count()
        if pending == 0:
            return checkpointed
        try:
            n = self._evict(min(pending, max(rows, pending // 10)), "disk")
        except sqlite3.Error as exc:
            if not storage.is_full(exc, self.path):
                raise
            return checkpointed
        self._checkpoint()
        return n > 0 or checkpointed

    def _pay_debts(self) -> None:
        """Write the deletes a full disk had no room for (acknowledged batches and entries)."""
        if not self._acks_owed and not self._sent_upto:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM outbox WHERE seq = ? AND part = ?", sorted(self._acks_owed)
            )
            self._db.execute("DELETE FROM meter_entries WHERE id <= ?", (self._sent_upto,))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if not storage.is_full(exc, self.path):
                raise
            return
        self._acks_owed.clear()
        self._sent_upto = 0

    @property
    def disk_full(self) -> bool:
        """True while the disk has no room for the buffer to grow (an episode is on)."""
        return self._disk.active

    def _evict(self, n: int, why: str = "") -> int:
        """Delete the ``n`` oldest unsealed readings and count them. Returns how many.
        ``why``: "disk" when the disk, not ``max_bytes``, set the limit (for the log)."""
        owed = self._refused_unrecorded
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
            if owed:
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'dropped_pending'", (owed,)
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._refused_unrecorded -= owed
        self._taken(dropped, "oldest")
        if self._held_n:
            self._count_held()
        if dropped and why == "disk":
            self._evicted_in_episode += dropped
            self._disk.start(
                "the disk holding the buffer %s (%s) is full: %s bytes free, less than the "
                "buffer needs to grow. Evicted the %d oldest unsent readings (counted and "
                "reported in the next batch's dropped) and evicting on, oldest first, to stay "
                "within it; parking meters are answered BUSY "
                "when even that leaves no room. Free space on that disk or lower "
                "buffer.max_bytes (logged at DEBUG while it lasts, at INFO when there is room)",
                self.path,
                storage.mount_point(self._real.parent),
                storage.disk_free(self._real.parent),
                dropped,
            )
        elif dropped:
            self._over.start(
                "buffer over its limit of %d bytes (buffer.max_bytes): evicted the %d oldest "
                "unsent readings (counted and reported in the next batch's dropped; further "
                "evictions at DEBUG)",
                self.max_bytes,
                dropped,
            )
        return dropped

    # ------------------------------------------------------------------ batches

    def unacked(self) -> list[SealedBatch]:
        """Sealed batches still waiting for their PUBACK, oldest first."""
        rows = self._db.execute(
            "SELECT seq, created_ms, readings, payload, part FROM outbox ORDER BY seq, part"
        )
        return [
            SealedBatch(s, c, n, p, _part_tuple(part))
            for s, c, n, p, part in rows
            if (s, part) not in self._acks_owed
        ]

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
                try:
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
                except BatchTooLarge:
                    # Above the largest batch a decoder accepts (docs/batch-format-v1.md §5;
                    # only long strings can get there): fewer. One reading always fits, as
                    # unencodable() sets a longer string aside.
                    if take <= 1:
                        raise
                    take = max(1, take // 2)
                    continue
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
        """The broker acknowledged batch ``seq`` (or that part of it): its readings leave.
        On a full disk the batch leaves in memory and is deleted once there is room (after a
        restart before that it is sent again; consumers de-duplicate by seq)."""
        key = (seq, _part_text(part))
        if key in self._acks_owed:
            return False
        try:
            cur = self._db.execute("DELETE FROM outbox WHERE seq = ? AND part = ?", key)
        except sqlite3.Error as exc:
            if not storage.is_full(exc, self.path):
                raise
            self._on_full(exc, f"recording that batch {seq} was delivered")
            there = self._db.execute(
                "SELECT 1 FROM outbox WHERE seq = ? AND part = ?", key
            ).fetchone()
            if there is not None:
                self._acks_owed.add(key)
            return there is not None
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
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and storage.is_full(exc, self.path):
                self._on_full(exc, f"splitting batch {seq}")
                return []  # kept whole; tried again at a later failure
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

    def seal_fitting(
        self,
        gateway: str,
        max_readings: int,
        *,
        max_bytes: int | None = None,
        part: str = "any",
    ) -> SealedBatch | None:
        """:meth:`seal`, which a full disk does not stop: after SQLITE_FULL a checkpoint is
        tried and the batch is tried again at a quarter of the size, down to one reading.
        None when not even that can be written: nothing is lost, the readings stay pending
        (the forwarder tries again after the next commit)."""
        self._pay_debts()
        take = max_readings
        while True:
            try:
                return self.seal(gateway, take, max_bytes=max_bytes, part=part)
            except sqlite3.Error as exc:
                if not storage.is_full(exc, self.path):
                    raise
                self._on_full(exc, f"sealing a batch of up to {take} readings")
                if take == 1:
                    return None
                self._checkpoint()
                take = max(1, take // 4)

    def close(self) -> None:
        """Write what a full disk held back if there is room now, close, release the lock."""
        try:
            self._pay_debts()
            owed = self._refused_unrecorded
            if owed:
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'dropped_pending'", (owed,)
                )
                self._refused_unrecorded = 0
        except sqlite3.Error as exc:
            log.warning(
                "buffer %s: closing on a full disk (%s): %d readings refused for lack of room "
                "will not be reported in dropped",
                self.path,
                exc,
                self._refused_unrecorded,
            )
        finally:
            try:
                self._db.close()
            except sqlite3.Error as exc:
                log.debug("buffer %s: close: %s", self.path, exc)
            self._lock.release()


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
        self._closed = False

    async def open(self) -> AsyncBuffer:
        """Open (once: a second call does nothing). :class:`BufferUnavailable` when it cannot
        be opened now (``retry`` says if waiting may help); :class:`BufferInUse` when another
        gateway holds it."""
        if self._buf is not None:
            return self
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
            lambda: self.sync.seal_fitting(gateway, max_readings, max_bytes=max_bytes, part=part)
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
        """Close the buffer (releasing its lock) and stop its thread; a second call does
        nothing."""
        if self._buf is not None and not self._closed:
            self._closed = True
            await self._run(self._buf.close)
        self._pool.shutdown(wait=True)
