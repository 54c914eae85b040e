"""A damaged buffer file (a torn page, a destroyed header, a truncated WAL) never stops the
gateway from starting: it keeps what is readable, quarantines the file, and counts the loss."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from edge.store.buffer import Buffer
from edge.store.salvage import SEQ_JUMP
from protocols.batch import Reading, decode_batch

BIG = 512 * 1024 * 1024


def readings(n: int, start: int = 0) -> list[Reading]:
    return [
        Reading("m1", f"p{i % 7}", 1_700_000_000_000 + start + i, float(start + i))
        for i in range(n)
    ]


def filled(path: Path, n: int = 20_000, batches: int = 2) -> tuple[int, int]:
    """A closed buffer with ``batches`` sealed 100-reading batches and the rest pending.
    Returns (pending readings, next seq)."""
    buf = Buffer(path, max_bytes=BIG)
    for k in range(0, n, 1000):
        buf.append(readings(1000, k))
    for _ in range(batches):
        assert buf.seal("gw", 100) is not None
    pending, seq = buf.pending(), buf.stats().next_seq
    buf.close()
    return pending, seq


def pages(path: Path, table: str, kind: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [
            p
            for (p,) in db.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
                (table, kind),
            )
        ]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find a page by")
    finally:
        db.close()


def tear(path: Path, pageno: int) -> None:
    """Overwrite one page with what a torn write leaves: the right size, the wrong bytes."""
    size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:
        f.seek((pageno - 1) * size)
        f.write(bytes([0xA5]) * size)


def test_salvage__torn_readings_page_loses_only_that_page_and_says_how_much(tmp_path, caplog):
    path = tmp_path / "b.sqlite"
    pending, next_seq = filled(path)
    leaves = pages(path, "readings", "leaf")
    tear(path, leaves[len(leaves) // 2])

    buf = Buffer(path, max_bytes=BIG)
    s = buf.salvage
    assert s is not None and s.quarantined.exists()
    assert s.readings_kept + s.readings_lost == pending  # ids are contiguous: the count is exact
    assert 0 < s.readings_lost < 400  # one page's worth
    assert (s.batches_kept, s.batches_lost, s.seq_known) == (2, 0, True)
    assert "damaged" in caplog.text and str(s.readings_lost) in caplog.text
    # The sealed batches survive byte for byte; numbering continues; the loss is reported.
    assert [b.seq for b in buf.unacked()] == [next_seq - 2, next_seq - 1]
    stats = buf.stats()
    assert stats.next_seq == next_seq and stats.corrupt_lost_total == s.readings_lost
    assert stats.pending_readings == s.readings_kept
    batch = buf.seal("gw", 50_000)
    assert batch is not None and batch.seq == next_seq
    assert decode_batch(batch.payload).header.dropped == s.readings_lost
    # What was kept is what was there minus one contiguous stretch: the torn page.
    values = {int(p.value) for p in decode_batch(batch.payload).points}
    missing = set(range(200, 20_000)) - values  # the first 200 went into the sealed batches
    assert len(values) == s.readings_kept and len(missing) == s.readings_lost
    assert max(missing) - min(missing) + 1 == len(missing)
    buf.close()
    # The fresh file is sound and opens without another salvage.
    again = Buffer(path, max_bytes=BIG)
    assert again.salvage is None and again.stats().corrupt_lost_total == s.readings_lost
    again.close()


def test_salvage__lost_series_names_count_their_readings_as_lost(tmp_path):
    path = tmp_path / "b.sqlite"
    pending, _ = filled(path, n=3000, batches=0)
    (root,) = pages(path, "series", "leaf")
    tear(path, root)
    buf = Buffer(path, max_bytes=BIG)
    assert buf.salvage is not None
    assert (buf.salvage.readings_kept, buf.salvage.readings_lost) == (0, pending)
    assert buf.append(readings(5, 10**6)) == 5  # and it goes on working
    buf.close()


def test_salvage__destroyed_header_starts_fresh_and_never_reuses_a_batch_number(tmp_path):
    path = tmp_path / "b.sqlite"
    filled(path, n=2000)
    tear(path, 1)
    buf = Buffer(path, max_bytes=BIG)
    s = buf.salvage
    assert s is not None and not s.seq_known and s.readings_kept == 0
    assert buf.stats().next_seq == 1 + SEQ_JUMP  # a visible gap, never a reused number
    assert buf.append(readings(3)) == 3
    buf.close()


def test_salvage__truncated_wal_keeps_every_whole_transaction(tmp_path, caplog):
    live, crashed = tmp_path / "live.sqlite", tmp_path / "crashed.sqlite"
    buf = Buffer(live, max_bytes=BIG)
    buf.append(readings(100))
    buf._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for k in range(1, 6):
        buf.append(readings(100, k * 100))
    # A power cut: the files as they are on disk while the gateway runs, the WAL cut mid-frame.
    shutil.copy(live, crashed)
    wal = Path(str(live) + "-wal").read_bytes()
    Path(str(crashed) + "-wal").write_bytes(wal[: len(wal) - 700])
    buf.close()

    after = Buffer(crashed, max_bytes=BIG)
    kept = after.pending()
    # The torn last transaction is gone (SQLite's frame checksums drop it); all before it stay,
    # and the durable counter agrees with what is there: nothing is counted that is not kept.
    assert kept in (500, 400)
    assert after._meta(after._db, "accepted_total", 0) == kept
    assert after.salvage is None
    assert "torn write" in caplog.text
    after.close()


def test_salvage__garbage_file_is_quarantined_and_a_fresh_one_starts(tmp_path, caplog):
    path = tmp_path / "b.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    buf = Buffer(path, max_bytes=BIG)
    assert buf.append(readings(3)) == 3
    buf.close()
    assert list(tmp_path.glob("b.sqlite.corrupt-*"))
    assert "damaged" in caplog.text


def test_salvage__unreadable_parking_entries_are_counted_apart(tmp_path, caplog):
    path = tmp_path / "b.sqlite"
    buf = Buffer(path, max_bytes=BIG)
    for seq in range(1, 3001):
        buf.commit_entry("HK-01", seq, 0x12, bytes(60), seq, lambda: bytes(64))
    last_command = buf.next_command("HK-01", skip=1000)
    buf.close()
    leaves = pages(path, "meter_entries", "leaf")
    tear(path, leaves[len(leaves) // 2])
    buf = Buffer(path, max_bytes=BIG)
    s = buf.salvage
    assert s is not None and 0 < s.entries_lost < 100
    assert buf.entries_pending() == 3000 - s.entries_lost
    assert buf.meter_last_seq("HK-01") == 3000  # re-sent entries are still recognised
    assert buf.next_command("HK-01") == last_command + 1  # a meter would ignore a reused one
    assert "parking meter entries were unreadable" in caplog.text
    buf.close()
