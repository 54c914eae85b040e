"""Recovering what is readable from a corrupt buffer file (a torn page, a bad sector, a truncated
WAL), so that a damaged SD card never stops the gateway from starting and never loses more
than the damaged pages held.

The damaged file is first moved aside (:func:`quarantine`: ``<name>.corrupt-<unix time>``, kept
for forensics; only ever a regular file, never a folder, device or pipe that a wrong
``buffer.path`` might name, and never because of a full disk, which is no damage). A fresh
buffer is created, and this module copies into it, table by table, every row SQLite can
still read:

* ``meta``: the batch sequence number and the all-time counters. A reused batch number would
  make consumers drop new batches as duplicates, so when ``next_seq`` is unreadable the new one
  starts :data:`SEQ_JUMP` above the highest number found anywhere (a visible gap, not a reuse).
* ``series``, ``readings`` and ``outbox``: read in rowid order in chunks. A chunk that fails is
  read row by row; past an unreadable stretch the reader probes forward in growing steps until
  rows come back. Readings ids are handed out in order and removed from the oldest end, so an
  unreadable stretch of ids is a count of lost readings (an estimate only where readings were
  held back for the clock, which leaves holes). Readings whose series row was lost cannot be
  named any more and are counted as lost too; a sealed batch whose row is unreadable is
  counted by the ids it skipped (its reading count went with it).

The count goes into the buffer's ``dropped_pending`` (the next batch's ``dropped`` field tells
the platform) and ``corrupt_lost_total`` counters; the caller logs and reports it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SEQ_JUMP", "Salvage", "quarantine", "salvage_into", "unquarantine"]

log = logging.getLogger(__name__)

SEQ_JUMP = 1_000_000
_CHUNK = 2000
_COUNTERS = ("evicted_total", "accepted_total", "dropped_pending", "corrupt_lost_total", "boot")


@dataclass(frozen=True, slots=True)
class Salvage:
    """What a salvage kept and lost."""

    quarantined: Path
    reason: str
    readings_kept: int
    readings_lost: int  # unreadable rows plus readings whose series was lost
    batches_kept: int
    batches_lost: int  # sealed batches whose row was unreadable
    seq_known: bool  # False: next_seq was unreadable and jumped by SEQ_JUMP
    uncounted: bool = False  # readings before the first readable one may be lost too
    entries_lost: int = 0  # parking meter entries whose rows were unreadable (money: logged apart)

    def describe(self) -> str:
        more = " (and an unknown number before the first readable one)" if self.uncounted else ""
        seq = "" if self.seq_known else f"; batch numbers jump by {SEQ_JUMP} (next_seq unreadable)"
        if self.entries_lost:
            seq += (
                f"; {self.entries_lost} parking meter entries were unreadable: reconcile those "
                "meters against their own journals"
            )
        return (
            f"kept {self.readings_kept} readings and {self.batches_kept} sealed batches, "
            f"lost about {self.readings_lost} readings{more} and {self.batches_lost} sealed "
            f"batches{seq}; the damaged file is kept as {self.quarantined}"
        )


_SIDES = ("-wal", "-shm")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def quarantine(path: Path) -> Path:
    """Move the damaged buffer ``path`` and its -wal / -shm files aside; returns the new name.

    Only regular files are moved: a folder, a device, a pipe or a symlink at ``path`` raises
    ValueError and nothing moves (a wrong ``buffer.path`` must never carry a config folder or a
    signing key away). OSError when the rename fails (nothing moved then either).
    """
    if not _regular(path):
        raise ValueError(f"{path} is not a regular file; a damaged buffer is only ever a file")
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    path.rename(aside)
    for suffix in _SIDES:
        side = path.with_name(path.name + suffix)
        if _regular(side):
            side.rename(aside.with_name(aside.name + suffix))
    return aside


def unquarantine(aside: Path, path: Path) -> None:
    """Undo :func:`quarantine` (a salvage that found no room on the disk): whatever was created
    at ``path`` since is removed and the damaged file goes back, to be salvaged later."""
    for suffix in ("", *_SIDES):
        fresh = path.with_name(path.name + suffix)
        if _regular(fresh):
            fresh.unlink()
    for suffix in ("", *_SIDES):
        moved = aside.with_name(aside.name + suffix)
        if _regular(moved):
            moved.rename(path.with_name(path.name + suffix))


class _Reader:
    """Rows of one table in key order, skipping what cannot be read and counting the keys it
    jumped over (``skipped``: an estimate of the lost rows, exact when keys are contiguous)."""

    def __init__(self, src: sqlite3.Connection, view: str, key: str) -> None:
        self.src, self.view, self.key = src, view, key
        self.low = _edge(src, view, key, "min")
        self.top = _edge(src, view, key, "max")
        self.skipped = 0
        self.unknown_start = False  # rows before the first readable one may be lost, uncounted

    def _after(self, sql_op: str, key: int | None, limit: int) -> list[tuple] | None:
        where = "" if key is None else f"WHERE {self.key} {sql_op} ?"
        args = () if key is None else (key,)
        try:
            return self.src.execute(
                f"SELECT * FROM {self.view} {where} ORDER BY {self.key} LIMIT {limit}", args
            ).fetchall()
        except sqlite3.DatabaseError:
            return None

    def _probe(self, base: int) -> list[tuple]:
        """The first readable row with a key above ``base``, whose next row is unreadable:
        step forward in doubling steps until a seek succeeds, then bisect back to the first
        key a seek can reach (the start of the next sound page). [] if there is none."""
        bad, step = base, 1
        while True:
            probe = base + step
            if self.top is not None and probe > self.top:
                self.skipped += self.top - base
                return []
            if step > 2**48:
                return []
            rows = self._after(">=", probe, 1)
            if rows is not None:
                break
            bad, step = probe, step * 2
        good = probe
        while good - bad > 1:
            mid = (good + bad) // 2
            found = self._after(">=", mid, 1)
            if found is None:
                bad = mid
            else:
                good, rows = mid, found
        return rows

    def __iter__(self) -> Iterator[tuple]:
        last: int | None = None  # the last key read
        while True:
            rows = self._after(">", last, _CHUNK) or self._after(">", last, 1)
            if rows == []:
                return
            if rows is None:
                # The next row itself is unreadable: find the next sound page.
                if last is not None:
                    base = last
                elif self.low is not None:
                    base = self.low - 1
                else:  # not even the lowest key is known: what precedes is uncounted
                    self.unknown_start, base = True, 0
                rows = self._probe(base)
                if not rows:
                    return
                if not self.unknown_start or last is not None:
                    self.skipped += rows[0][0] - base - 1
            elif last is None and self.low is not None:
                self.skipped += rows[0][0] - self.low
            yield from rows
            last = rows[-1][0]


def _edge(src: sqlite3.Connection, view: str, key: str, fn: str) -> int | None:
    try:
        row = src.execute(f"SELECT {fn}({key}) FROM {view}").fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None or row[0] is None else int(row[0])


def _safe(fn: Callable[[], object], default: object) -> object:
    try:
        return fn()
    except sqlite3.DatabaseError:
        return default


def salvage_into(dst: sqlite3.Connection, bad: Path, reason: str) -> Salvage:
    """Copy every readable row of the quarantined buffer ``bad`` into the fresh buffer ``dst``
    (already created with the current schema, in autocommit mode)."""
    try:
        src = sqlite3.connect(f"file:{bad}?mode=ro", uri=True)
        src.execute("PRAGMA query_only=1")
    except sqlite3.DatabaseError:
        return Salvage(bad, reason, 0, 0, 0, 0, seq_known=False)
    try:
        return _copy(src, dst, bad, reason)
    finally:
        src.close()


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, bad: Path, reason: str) -> Salvage:
    meta: dict[str, int] = {}
    for key in ("next_seq", *_COUNTERS):
        value = _safe(
            lambda k=key: src.execute("SELECT value FROM meta WHERE key = ?", (k,)).fetchone(),
            None,
        )
        if isinstance(value, tuple) and isinstance(value[0], int):
            meta[key] = value[0]
    # each meter's last command number: a reused number is acknowledged by the meter, not done
    commands = _safe(
        lambda: src.execute("SELECT key, value FROM meta WHERE key LIKE 'cmd:%'").fetchall(), []
    )

    dst.execute("BEGIN IMMEDIATE")
    try:
        series: set[int] = set()
        for row in _Reader(src, "series", "id"):
            dst.execute("INSERT OR IGNORE INTO series (id, device, point) VALUES (?, ?, ?)", row)
            series.add(row[0])

        kept = lost = 0
        cols = _safe(lambda: [r[1] for r in src.execute("PRAGMA table_info(readings)")], [])
        wanted = ["id", "series", "ts_ms", "value", "tq", "boot_ms"]
        present = [c for c in wanted if c in cols] if cols else wanted[:4]
        view = f"(SELECT {', '.join(present)} FROM readings)"
        reader = _Reader(src, view, "id")
        for row in reader:
            if row[1] not in series:
                lost += 1
                continue
            full = dict(zip(present, row, strict=True))
            dst.execute(
                "INSERT INTO readings (id, series, ts_ms, value, tq, boot_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    full["id"],
                    full["series"],
                    full["ts_ms"],
                    full["value"],
                    full.get("tq", 0),
                    full.get("boot_ms"),
                ),
            )
            kept += 1
        lost += reader.skipped

        batches = batches_lost = 0
        top_seq = 0
        view = "(SELECT rowid AS r, seq, part, created_ms, readings, payload FROM outbox)"
        batch_reader = _Reader(src, view, "r")
        for row in batch_reader:
            _, seq, part, created_ms, n, payload = row
            dst.execute(
                "INSERT OR IGNORE INTO outbox (seq, part, created_ms, readings, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                (seq, part, created_ms, n, payload),
            )
            batches += 1
            top_seq = max(top_seq, seq)
        batches_lost = batch_reader.skipped

        # Parking meter entries (money): every readable one, and each meter's last seq, so that
        # a meter's re-sent entry is still recognised as a duplicate.
        view = "(SELECT id, meter, seq, type, payload, received_ms, sig FROM meter_entries)"
        entry_reader = _Reader(src, view, "id")
        for row in entry_reader:
            dst.execute("INSERT OR IGNORE INTO meter_entries VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        view = "(SELECT rowid AS r, meter, last_seq, duplicates, missing FROM meters)"
        for row in _Reader(src, view, "r"):
            dst.execute("INSERT OR IGNORE INTO meters VALUES (?, ?, ?, ?)", row[1:])
        seq_known = "next_seq" in meta
        next_seq = meta["next_seq"] if seq_known else top_seq + 1 + SEQ_JUMP
        next_seq = max(next_seq, top_seq + 1)
        dst.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (next_seq,))
        for key in _COUNTERS:
            if key in meta:
                dst.execute("UPDATE meta SET value = ? WHERE key = ?", (meta[key], key))
        dst.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", commands)
        dst.execute(
            "UPDATE meta SET value = value + ? "
            "WHERE key IN ('dropped_pending', 'corrupt_lost_total')",
            (lost,),
        )
        dst.execute("COMMIT")
    except BaseException:
        dst.execute("ROLLBACK")
        raise
    return Salvage(
        bad,
        reason,
        kept,
        lost,
        batches,
        batches_lost,
        seq_known,
        uncounted=reader.unknown_start,
        entries_lost=entry_reader.skipped,
    )
