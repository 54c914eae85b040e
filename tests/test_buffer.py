"""The durable buffer: model-based test, full policy, corruption recovery, SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge.store.buffer import Buffer
from protocols.batch import Reading, decode_batch


def named(buf: Buffer, payload: bytes) -> tuple[Reading, ...]:
    """A sealed batch's points named through the buffer's series table (as a birth would)."""
    names = {sid: (d, p) for sid, d, p in buf.series()}
    return tuple(Reading(*names[p.sid], p.ts_ms, p.value) for p in decode_batch(payload).points)


BIG = 512 * 1024 * 1024


def readings(n: int, start: int = 0, device: str = "m1") -> list[Reading]:
    return [
        Reading(device, f"p{i % 7}", 1_700_000_000_000 + start + i, float(start + i))
        for i in range(n)
    ]


class BufferModel(RuleBasedStateMachine):
    """append / seal / ack / restart against a plain in-memory model of the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bufmodel-{os.getpid()}-{id(self)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "b.sqlite"
        for f in self.dir.glob("b.sqlite*"):
            f.unlink()
        self.buf = Buffer(self.path, max_bytes=BIG)
        self.pending: list[Reading] = []
        self.outbox: dict[int, tuple[Reading, ...]] = {}
        self.acked: list[Reading] = []
        self.counter = 0
        self.last_seq = 0

    @rule(n=st.integers(1, 50))
    def append(self, n):
        new = readings(n, self.counter, device=f"m{self.counter % 3}")
        self.counter += n
        assert self.buf.append(new) == n
        self.pending.extend(new)

    @rule(max_readings=st.integers(1, 60))
    def seal(self, max_readings):
        batch = self.buf.seal("gw", max_readings)
        if not self.pending:
            assert batch is None
            return
        assert batch is not None
        assert batch.seq > self.last_seq  # strictly increasing, never reused
        self.last_seq = batch.seq
        taken, self.pending = self.pending[:max_readings], self.pending[max_readings:]
        assert decode_batch(batch.payload).header.seq == batch.seq
        assert sorted(named(self.buf, batch.payload)) == sorted(taken)
        self.outbox[batch.seq] = tuple(taken)

    @precondition(lambda self: self.outbox)
    @rule(data=st.data())
    def ack(self, data):
        seq = data.draw(st.sampled_from(sorted(self.outbox)))
        assert self.buf.ack(seq)
        self.acked.extend(self.outbox.pop(seq))
        assert not self.buf.ack(seq)  # a second PUBACK for the same batch changes nothing

    @rule()
    def restart(self):
        self.buf.close()
        self.buf = Buffer(self.path, max_bytes=BIG)

    @invariant()
    def matches_model(self):
        st_ = self.buf.stats()
        assert st_.pending_readings == len(self.pending)
        unacked = self.buf.unacked()
        assert [b.seq for b in unacked] == sorted(self.outbox)
        for b in unacked:  # the exact bytes survive: same seq, same content
            assert sorted(named(self.buf, b.payload)) == sorted(self.outbox[b.seq])
        assert st_.next_seq == self.last_seq + 1
        assert st_.evicted_total == 0

    def teardown(self):
        self.buf.close()
        for f in self.dir.glob("*"):
            f.unlink()
        self.dir.rmdir()


TestBufferModel = BufferModel.TestCase
TestBufferModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_buffer__full_drops_oldest_and_counts_it(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=1024 * 1024)
    total = 0
    for _ in range(60):
        buf.append(readings(1000, total))
        total += 1000
    st_ = buf.stats()
    assert st_.evicted_total > 0
    assert st_.pending_readings + st_.evicted_total == total  # every reading accounted for
    assert st_.used_bytes <= 1024 * 1024
    batch = buf.seal("gw", 100)
    decoded = decode_batch(batch.payload).header
    assert decoded.dropped == st_.evicted_total  # the loss travels with the next batch
    oldest = min(r.value for r in named(buf, batch.payload))
    assert oldest == float(st_.evicted_total)  # the oldest went first
    assert decode_batch(buf.seal("gw", 100).payload).header.dropped == 0  # reported once
    buf.close()


def test_buffer__sealed_batches_are_never_evicted(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=1024 * 1024)
    buf.append(readings(500))
    sealed = buf.seal("gw", 500)
    for chunk in range(60):
        buf.append(readings(1000, 1000 + chunk * 1000))
    assert [b.seq for b in buf.unacked()] == [sealed.seq]
    assert buf.unacked()[0].payload == sealed.payload
    buf.close()


def test_buffer__sequence_continues_across_reopen(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    buf.append(readings(10))
    first = buf.seal("gw", 5)
    buf.close()
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    assert [b.seq for b in buf.unacked()] == [first.seq]
    assert buf.seal("gw", 5).seq == first.seq + 1
    buf.close()


WRITER = textwrap.dedent("""
    import sys
    from edge.store.buffer import Buffer
    from protocols.batch import Reading
    buf = Buffer(sys.argv[1], max_bytes=512 * 1024 * 1024)
    i = int(sys.argv[2])
    while True:
        buf.append([Reading("m", "p", i + k, float(i + k)) for k in range(50)])
        i += 50
        if i % 500 == 0:
            buf.seal("gw", 120)
        print(i, flush=True)  # only after the commit returned
""")


@pytest.mark.slow
def test_buffer__sigkill_never_loses_a_committed_reading(tmp_path):
    path = tmp_path / "b.sqlite"
    committed = 0
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(committed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 0.3 + 0.15 * round_
        last = committed
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        buf = Buffer(path, max_bytes=512 * 1024 * 1024)
        values = {r.value for b in buf.unacked() for r in named(buf, b.payload)}
        rows = buf._db.execute("SELECT value FROM readings").fetchall()
        values |= {v for (v,) in rows}
        assert last > committed, "the writer made no progress"
        # Every value the writer reported as committed is still there (nothing is acked here).
        missing = [v for v in range(last) if float(v) not in values]
        assert not missing, f"round {round_}: lost {len(missing)} committed readings"
        committed = int(max(values)) + 1
        buf.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_buffer__both_sync_modes_open(tmp_path, sync):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG, synchronous=sync)
    assert buf.append(readings(5)) == 5
    buf.close()


def test_buffer__seal_respects_the_byte_limit_and_keeps_the_rest(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    noisy = [
        Reading("m", f"p{i % 50}", 1_700_000_000_000 + i, (i * 7919 % 10007) / 3.0)
        for i in range(5000)
    ]
    buf.append(noisy)
    batch = buf.seal("gw", 5000, max_bytes=4096)
    assert len(batch.payload) <= 4096
    assert 0 < batch.readings < 5000
    assert buf.stats().pending_readings == 5000 - batch.readings  # nothing lost, just later
    buf.close()


def test_buffer__live_and_backlog_partitions(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    buf.append(readings(30, 0))  # held through an "outage"
    assert buf.start_live() == 30
    buf.append(readings(5, 1000))  # fresh
    assert (buf.backlog_pending, buf.live_pending) == (30, 5)
    live = named(buf, buf.seal("gw", 100, part="live").payload)
    assert sorted(r.value for r in live) == [float(1000 + i) for i in range(5)]
    back = named(buf, buf.seal("gw", 10, part="backlog").payload)
    assert sorted(r.value for r in back) == [float(i) for i in range(10)]  # oldest first
    assert (buf.backlog_pending, buf.live_pending) == (20, 0)
    assert buf.seal("gw", 100, part="live") is None
    buf.append(readings(3, 2000))
    assert (buf.backlog_pending, buf.live_pending) == (20, 3)
    buf.seal("gw", 100, part="backlog")
    assert (buf.backlog_pending, buf.live_pending) == (0, 3)  # the boundary is gone
    buf.append(readings(2, 3000))
    assert buf.live_pending == 5 and buf.pending() == 5
    buf.close()


def test_buffer__split_keeps_the_seq_and_every_reading(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    buf.append(readings(40))
    whole = buf.seal("gw", 100)
    halves = buf.split(whole.seq)
    assert [h.part for h in halves] == [(1,), (2,)] and {h.seq for h in halves} == {whole.seq}
    quarters = buf.split(whole.seq, (2,))
    assert [q.part for q in quarters] == [(2, 1), (2, 2)]
    left = buf.unacked()
    assert [b.part for b in left] == [(1,), (2, 1), (2, 2)]
    got = sorted(r for b in left for r in named(buf, b.payload))
    assert got == sorted(named(buf, whole.payload))  # nothing lost, nothing doubled
    assert (
        decode_batch(left[0].payload).header.dropped == decode_batch(whole.payload).header.dropped
    )
    assert all(buf.ack(b.seq, b.part) for b in left) and buf.unacked() == []
    buf.close()


def test_buffer__schema_1_outbox_is_migrated(tmp_path):
    path = tmp_path / "b.sqlite"
    buf = Buffer(path, max_bytes=BIG)
    buf.append(readings(5))
    sealed = buf.seal("gw", 5)
    buf.close()
    db = sqlite3.connect(path)  # rebuild the outbox as schema 1 had it
    db.executescript("""
        ALTER TABLE outbox RENAME TO o2;
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,
                             readings INTEGER NOT NULL, payload BLOB NOT NULL);
        INSERT INTO outbox SELECT seq, created_ms, readings, payload FROM o2;
        DROP TABLE o2;
        UPDATE meta SET value = 1 WHERE key = 'schema_version';
    """)
    db.close()
    buf = Buffer(path, max_bytes=BIG)
    assert [(b.seq, b.part, b.payload) for b in buf.unacked()] == [(sealed.seq, (), sealed.payload)]
    buf.close()


def test_buffer__every_value_type_comes_back_as_it_went_in(tmp_path):
    """SQLite would hand a bool back as 1 and cannot hold a uint64 above 2**63 - 1."""
    values = [True, False, 0, 1, 2**64 - 1, 2**63, -(2**63), 1.5, float("inf"), "offline", ""]
    rows = [Reading("cab", f"p{i}", 1_700_000_000_000, v) for i, v in enumerate(values)]
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)
    assert buf.append(rows) == len(rows)
    buf.close()
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=BIG)  # and across a restart
    got = named(buf, buf.seal("gw", 100).payload)
    assert sorted(got, key=lambda r: r.point) == sorted(rows, key=lambda r: r.point)
    for r in got:
        want = values[int(r.point[1:])]
        assert type(r.value) is type(want), r
