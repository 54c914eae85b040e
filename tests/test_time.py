"""Time integrity: a clock that starts at 1970 or a year behind, steps, then syncs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.shared.clock import (
    CORRECTED,
    GOOD,
    PENDING,
    PLAUSIBLE_FLOOR_MS,
    UNCERTAIN,
    FileClock,
    TimeKeeper,
)
from edge.store.buffer import Buffer
from protocols.batch import (
    TQ_CORRECTED,
    TQ_UNCERTAIN,
    BatchDecodeError,
    BatchHeader,
    Point,
    decode_batch,
    encode_batch,
)

YEAR_MS = 365 * 86_400_000
NOW_MS = 1_795_000_000_000  # 2026-11-18


class SteppedClock:
    """A clock source whose wall clock the test sets (the boot-time clock only moves forward)."""

    def __init__(self, wall_ms: int, synced: bool | None) -> None:
        self.boot = 50_000
        self.offset = wall_ms - self.boot
        self.is_synced = synced

    def advance(self, ms: int) -> None:
        self.boot += ms

    def set_wall(self, wall_ms: int, synced: bool | None) -> None:
        self.offset = wall_ms - self.boot
        self.is_synced = synced

    def wall_ms(self) -> int:
        return self.boot + self.offset

    def boot_ms(self) -> int:
        return self.boot

    def synced(self) -> bool | None:
        return self.is_synced

    def boot_id(self) -> str:
        return "boot-a"


def test_keeper__1970_is_never_trusted_and_stamps_are_pending():
    src = SteppedClock(10_000, synced=False)
    keeper = TimeKeeper(src, require_sync=False)
    stamp = keeper.stamp()
    assert stamp.tq == PENDING and stamp.boot_ms == src.boot
    assert "1970" in keeper.why


def test_keeper__plausible_but_unsynced_clock_waits_for_ntp_when_asked():
    src = SteppedClock(NOW_MS - YEAR_MS, synced=False)
    assert TimeKeeper(src, require_sync=False).stamp().tq == GOOD
    keeper = TimeKeeper(src, require_sync=True)
    assert keeper.stamp().tq == PENDING
    src.advance(1000)
    src.set_wall(NOW_MS, synced=True)  # NTP steps it forward by a year
    assert keeper.look() is True  # it has just become trustworthy
    assert keeper.look() is False  # and says so once
    assert keeper.trusted and keeper.steps == 1
    assert keeper.stamp().tq == GOOD


def test_keeper__a_step_untrusts_the_clock_until_it_is_synchronised_again():
    src = SteppedClock(NOW_MS, synced=None)
    keeper = TimeKeeper(src, require_sync=False)
    assert keeper.stamp().tq == GOOD
    src.advance(1000)
    src.set_wall(NOW_MS + YEAR_MS, synced=None)  # someone ran `date -s`
    assert keeper.stamp().tq == PENDING and keeper.steps == 1
    src.advance(60_000)
    assert keeper.stamp().tq == PENDING  # still unknown: not trusted
    src.set_wall(src.wall_ms(), synced=True)
    assert keeper.stamp().tq == GOOD


def test_keeper__slow_slew_is_not_a_step():
    src = SteppedClock(NOW_MS, synced=True)
    keeper = TimeKeeper(src)
    for _ in range(100):
        src.advance(10_000)
        src.offset += 4  # 400 ppm, beyond any NTP slew
        keeper.stamp()
    assert keeper.steps == 0 and keeper.trusted


def test_file_clock__the_harness_steps_it(tmp_path):
    path = tmp_path / "clock.json"
    FileClock.write(path, -YEAR_MS, synced=False)
    clock = FileClock(path)
    assert abs(clock.wall_ms() - (time.time() * 1000 - YEAR_MS)) < 5_000
    assert clock.synced() is False
    FileClock.write(path, 0, synced=True)
    assert abs(clock.wall_ms() - time.time() * 1000) < 5_000 and clock.synced() is True


# --------------------------------------------------------------------------- buffer


def _held_rows(src: SteppedClock, keeper: TimeKeeper, n: int) -> list:
    rows = []
    for i in range(n):
        src.advance(1000)
        rows.append(keeper.stamp().reading("m", "v", float(i)))
    return rows


def test_buffer__held_readings_are_not_sealed_then_corrected_by_the_measured_offset(tmp_path):
    src = SteppedClock(5_000, synced=False)  # booted at 1970
    keeper = TimeKeeper(src)
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=10**8, boot_id="boot-a")
    buf.append([("m", "early", NOW_MS - 10_000, 1.0)])  # a good reading from before
    rows = _held_rows(src, keeper, 5)
    assert all(r.tq == PENDING for r in rows)
    buf.append(rows)
    assert buf.held == 5 and buf.live_pending == 1
    first = buf.seal("gw", 100)
    assert first is not None and first.readings == 1  # only the good one goes
    assert buf.seal("gw", 100) is None
    # NTP answers: the true time at boot_ms = 55_000 was NOW_MS.
    src.set_wall(NOW_MS + (src.boot - 55_000), synced=True)
    keeper.look()
    assert keeper.trusted
    assert buf.settle_held(keeper.offset_ms) == 5
    batch = decode_batch(buf.seal("gw", 100).payload)
    assert [(p.ts_ms, p.tq) for p in batch.points] == [
        (NOW_MS - 4000 + 1000 * i, TQ_CORRECTED)
        for i in range(5)  # taken 1 s apart up to 55 s
    ]


def test_buffer__held_across_a_reboot_go_out_uncertain(tmp_path):
    src = SteppedClock(5_000, synced=False)
    keeper = TimeKeeper(src)
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=10**8, boot_id="boot-a")
    rows = _held_rows(src, keeper, 3)
    buf.append(rows)
    buf.close()
    same_boot = Buffer(tmp_path / "b.sqlite", max_bytes=10**8, boot_id="boot-a")
    assert same_boot.held == 3  # a gateway restart in the same boot can still correct them
    same_boot.close()
    rebooted = Buffer(tmp_path / "b.sqlite", max_bytes=10**8, boot_id="boot-b")
    assert rebooted.held == 0
    batch = decode_batch(rebooted.seal("gw", 100).payload)
    assert [(p.ts_ms, p.tq) for p in batch.points] == [(r.ts_ms, TQ_UNCERTAIN) for r in rows]


def test_buffer__held_too_long_go_out_uncertain_oldest_first(tmp_path):
    src = SteppedClock(5_000, synced=False)
    keeper = TimeKeeper(src)
    buf = Buffer(tmp_path / "b.sqlite", max_bytes=10**8, boot_id="boot-a")
    rows = _held_rows(src, keeper, 4)
    buf.append(rows)
    assert buf.settle_held(None, older_than_boot_ms=rows[2].boot_ms) == 2
    assert buf.held == 2
    batch = decode_batch(buf.seal("gw", 100).payload)
    assert [p.tq for p in batch.points] == [TQ_UNCERTAIN, TQ_UNCERTAIN]


# --------------------------------------------------------------------------- codec


@given(
    st.lists(
        st.tuples(
            st.integers(1, 5),
            st.integers(0, 20),
            st.floats(width=32, allow_nan=False),
            st.sampled_from([0, 1, 2]),
        ),
        min_size=1,
        max_size=60,
        unique_by=lambda p: (p[0], p[1]),
    )
)
def test_batch__time_quality_round_trips(points):
    pts = [Point(s, NOW_MS + 1000 * t, v, q) for s, t, v, q in points]
    out = decode_batch(encode_batch(BatchHeader("gw", 1, 1, NOW_MS), pts))
    assert sorted(out.points) == sorted(pts)


def test_batch__all_good_batches_carry_no_quality_field_and_bad_ones_are_refused():
    good = encode_batch(BatchHeader("gw", 1, 1, NOW_MS), [Point(1, NOW_MS, 1.0)])
    assert decode_batch(good).points == (Point(1, NOW_MS, 1.0, 0),)
    with pytest.raises(ValueError, match="cannot travel"):
        encode_batch(BatchHeader("gw", 1, 1, NOW_MS), [Point(1, NOW_MS, 1.0, PENDING)])
    import msgpack
    import zstandard

    doc = msgpack.unpackb(good)
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(doc["body"]))
    for bad in (b"", b"\x07", b"\x00\x00"):
        doc["body"] = zstandard.ZstdCompressor().compress(msgpack.packb([*body, bad]))
        with pytest.raises(BatchDecodeError, match="time quality"):
            decode_batch(msgpack.packb(doc))


def test_constants_agree():
    assert (GOOD, CORRECTED, UNCERTAIN) == (0, TQ_CORRECTED, TQ_UNCERTAIN)
    assert PLAUSIBLE_FLOOR_MS < NOW_MS


# --------------------------------------------------------------------------- end to end


async def _run_with_clock(tmp_path: Path, mosquitto, sim, monkeypatch, start_offset_ms: int):
    """Gateway whose clock starts ``start_offset_ms`` off and unsynchronised, then is set right
    (a step, synchronised) after a few seconds; returns the readings the platform got and the
    true-time window of the held period."""
    from tests.conftest import gateway_yaml
    from tests.test_system import Collector, drain, start_gateway, stop

    clock = tmp_path / "clock.json"
    FileClock.write(clock, start_offset_ms, synced=False)
    monkeypatch.setenv("EDGE_CLOCK_FILE", str(clock))
    text = gateway_yaml(buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim.port)
    text = text.replace("devices:", "time: {trust: ntp, max_hold_s: 600}\ndevices:", 1)
    async with Collector(mosquitto.url) as col:
        t_start = time.time() * 1000
        gateway, task = await start_gateway(tmp_path, text)
        await asyncio.sleep(3)
        assert col.readings == []  # held: nothing leaves with an untrusted time
        assert gateway.buffer.sync.held > 0
        t_sync = time.time() * 1000
        FileClock.write(clock, 0, synced=True)
        await asyncio.sleep(2)
        await drain(gateway, col)
        await stop(task)
    # Readings of a poll that finished while the gateway stopped are committed on the way out
    # and wait in the buffer for the next start: accepted, not lost.
    import sqlite3

    db = sqlite3.connect(tmp_path / "b.sqlite")
    left = db.execute(
        "SELECT (SELECT count(*) FROM readings) + (SELECT coalesce(sum(readings), 0) FROM outbox)"
    ).fetchone()[0]
    db.close()
    return col.readings, t_start, t_sync, gateway, left


@pytest.mark.system
@pytest.mark.parametrize(
    "start_offset_ms",
    [-(int(time.time() * 1000) - 3_600_000), -YEAR_MS],
    ids=["starts-at-1970", "a-year-behind-then-stepped-forward"],
)
async def test_gateway__readings_before_the_sync_arrive_corrected_by_the_right_offset(
    tmp_path, mosquitto, sim_sdm630, monkeypatch, start_offset_ms
):
    readings, t_start, t_sync, gateway, left = await _run_with_clock(
        tmp_path, mosquitto, sim_sdm630, monkeypatch, start_offset_ms
    )
    corrected = [r for r in readings if r.tq == TQ_CORRECTED]
    good = [r for r in readings if r.tq == 0]
    assert len(corrected) >= 2 * 6 * 4  # 2 meters x 6 points x ~5 polls held
    assert good, "readings after the sync are good"
    assert not [r for r in readings if r.tq == TQ_UNCERTAIN]
    # Corrected by the right offset: their times fall in the true-time window they were taken in
    # (the clock-file's offset is the only thing between the file clock and true time).
    for r in corrected:
        assert t_start - 1000 <= r.ts_ms <= t_sync + 1500, r
    for r in good:
        assert r.ts_ms >= t_sync - 1000, r
    assert all(r.ts_ms > PLAUSIBLE_FLOOR_MS for r in readings)
    keys = [(r.device, r.point, r.ts_ms) for r in readings]
    import collections

    dup = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not dup, [r for r in readings if (r.device, r.point, r.ts_ms) in dup[:2]]
    assert len(keys) + left == gateway.writer_stats.accepted
