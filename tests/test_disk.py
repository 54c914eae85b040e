"""The disk fills up, the buffer path is wrong, two gateways share one buffer (issue 15, cases 2
and 3): on a real small filesystem (a 2 MiB tmpfs, mounted here: root only, skipped with the
reason elsewhere; CI runs as root), with real gateway processes, simulators and Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.fieldbus.parking import MeterBus
from edge.shared.signing import Signer, SigningKeyError
from edge.store.buffer import AsyncBuffer, Buffer, BufferError, BufferInUse, BufferUnavailable
from edge.store.salvage import quarantine
from edge.store.storage import lock_holder
from protocols.batch import decode_batch
from simulators.parking_meter import Journal, Meter, MeterServer
from tests.conftest import Mosquitto, gateway_yaml, wait_until
from tests.test_buffer import named, readings
from tests.test_salvage import pages, tear

ROOT = Path(__file__).resolve().parent.parent
BIG = 512 * 1024 * 1024


# ------------------------------------------------------------------ a real small disk


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here: {res.stderr.strip() or res.returncode}")


def umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=2m,mode=0755")
    try:
        yield disk
    finally:
        umount(disk)


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A folder this user cannot write: a read-only filesystem for root (an SD card remounted
    read-only after errors), a mode 0555 folder for anyone else."""
    d = tmp_path / "ro"
    if os.geteuid() == 0:
        mount_tmpfs(d, "size=1m,ro")
        try:
            yield d
        finally:
            umount(d)
    else:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def fill(disk: Path, fraction: float | None = None, name: str = "filler") -> Path:
    """Another program's file: ``fraction`` of the disk's size, or (None) all that is left."""
    path = disk / name
    st = os.statvfs(disk)
    with open(path, "wb", buffering=0) as out:
        if fraction is not None:
            out.write(bytes(int(st.f_blocks * st.f_frsize * fraction)))
            return path
        for chunk in (bytes(4096), b"\0"):
            try:
                while True:
                    out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0
    return path


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ case 2: the buffer


def test_buffer__disk_80_percent_full_evicts_the_oldest_counts_them_and_recovers(
    small_disk, caplog
):
    caplog.set_level(logging.INFO, "edge")
    filler = fill(small_disk, 0.8)
    buf = Buffer(small_disk / "b.sqlite", max_bytes=BIG)  # max_bytes is not what stops it
    offered = 0
    for _ in range(800):  # 40 000 readings: several times what the disk has room for
        assert buf.append(readings(50, offered)) == 50  # never an exception, never refused
        offered += 50
    st = buf.stats()
    assert st.evicted_total > 0 and st.rejected_total == 0
    assert st.pending_readings + st.evicted_total == offered  # every reading accounted for
    # The full disk is told once, by its name, as what it is.
    assert len(errors(caplog)) == 1, errors(caplog)
    assert "is full" in errors(caplog)[0] and str(small_disk) in errors(caplog)[0]
    assert "power cut" not in caplog.text and "damaged" not in caplog.text
    # The loss travels in the next batch; the oldest went first.
    batch = buf.seal_fitting("gw", 100)
    assert batch is not None
    assert decode_batch(batch.payload).header.dropped == st.evicted_total
    assert min(r.value for r in named(buf, batch.payload)) == float(st.evicted_total)
    # Space returns: said once at INFO, and the buffer grows into it instead of evicting.
    filler.unlink()
    buf.append(readings(50, offered))
    offered += 50
    assert "has room again" in caplog.text
    evicted = buf.stats().evicted_total
    for _ in range(200):
        buf.append(readings(50, offered))
        offered += 50
    assert buf.stats().evicted_total == evicted
    assert len(errors(caplog)) == 1
    buf.close()


def test_buffer__disk_taken_by_another_program_refuses_counts_and_loses_nothing_accepted(
    small_disk, caplog
):
    caplog.set_level(logging.INFO, "edge")
    fill(small_disk, 0.3, "logs")
    buf = Buffer(small_disk / "b.sqlite", max_bytes=BIG)
    offered = accepted = refused = 0
    for _ in range(20):
        accepted += buf.append(readings(30, offered))
        offered += 30
    sealed = buf.seal_fitting("gw", 100)  # a batch waiting for its PUBACK
    assert sealed is not None
    hog = fill(small_disk, None, "hog")  # another program takes every byte left
    for _ in range(300):
        try:
            accepted += buf.append(readings(30, offered))
        except BufferError:  # the only exception a full disk may cause: refused, counted
            refused += 30
        offered += 30
    # The broker acknowledges the sealed batch while the disk is full: it leaves.
    assert buf.ack(sealed.seq) and buf.unacked() == []
    st = buf.stats()
    assert st.rejected_total == refused
    assert accepted == st.pending_readings + st.evicted_total + sealed.readings
    assert st.evicted_total + refused > 0  # something gave way, and it is counted
    assert len(errors(caplog)) == 1 and "is full" in errors(caplog)[0]
    hog.unlink()
    for _ in range(5):
        accepted += buf.append(readings(30, offered))
        offered += 30
    assert "has room again" in caplog.text
    # What was evicted and what was refused are both told in the next batches' dropped.
    dropped = 0
    while (batch := buf.seal_fitting("gw", 5000)) is not None:
        dropped += decode_batch(batch.payload).header.dropped
        buf.ack(batch.seq)
    st = buf.stats()
    assert dropped == st.evicted_total + refused
    db = sqlite3.connect(small_disk / "b.sqlite")
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0  # the ack was written
    db.close()
    buf.close()


def run_until_refused(path: Path) -> subprocess.CompletedProcess[str]:
    """A gateway process writing while another program takes every byte left on its disk;
    it dies (SIGKILL) once the disk refuses it. Prints what it holds."""
    code = f"""
import os, signal
from edge.store.buffer import Buffer, BufferError
from tests.test_buffer import readings
from pathlib import Path
from tests.test_disk import fill
buf = Buffer({str(path)!r}, max_bytes={BIG})
n = 0
for _ in range(20):
    buf.append(readings(30, n))
    n += 30
fill(Path({str(path.parent)!r}), None, "hog")
try:
    for _ in range(10_000):
        buf.append(readings(30, n))
        n += 30
except BufferError:
    print(buf.stats().pending_readings, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_buffer__full_disk_at_start_is_not_damage_and_opens_once_space_returns(small_disk, caplog):
    """The crash loop: a gateway killed on a full disk left a WAL ending in a cut-short write;
    every restart took the full disk for damage, moved the buffer aside and died."""
    caplog.set_level(logging.INFO, "edge")
    path = small_disk / "b.sqlite"
    fill(small_disk, 0.3, "logs")
    res = run_until_refused(path)
    assert res.returncode == -signal.SIGKILL and res.stdout.strip(), res.stderr
    held = int(res.stdout)
    before = sorted(p.name for p in small_disk.iterdir())
    assert os.statvfs(small_disk).f_bavail == 0 and "b.sqlite-wal" in before
    for _ in range(3):  # every restart: told why, nothing moved, no salvage, no crash
        with pytest.raises(BufferUnavailable) as err:
            Buffer(path, max_bytes=BIG)
        assert err.value.retry and "is full" in str(err.value)
    assert sorted(p.name for p in small_disk.iterdir()) == before  # nothing moved
    assert "damaged" not in caplog.text and "power cut" not in caplog.text
    (small_disk / "hog").unlink()
    buf = Buffer(path, max_bytes=BIG)
    assert buf.salvage is None
    assert buf.pending() == held  # every committed reading is still there
    buf.close()


def test_salvage__a_damaged_buffer_on_a_full_disk_is_put_back_and_salvaged_later(small_disk):
    path = small_disk / "b.sqlite"
    buf = Buffer(path, max_bytes=BIG)
    for k in range(0, 3000, 500):
        buf.append(readings(500, k))
    buf.close()
    leaves = pages(path, "readings", "leaf")
    tear(path, leaves[len(leaves) // 2])
    hog = fill(small_disk, None)
    with pytest.raises(BufferUnavailable) as err:
        Buffer(path, max_bytes=BIG)  # no room to copy what is readable into a fresh file
    assert err.value.retry
    assert path.exists() and not list(small_disk.glob("*.corrupt-*"))  # put back, not lost
    hog.unlink()
    buf = Buffer(path, max_bytes=BIG)
    assert buf.salvage is not None and 0 < buf.salvage.readings_lost < 3000
    assert buf.pending() == buf.salvage.readings_kept
    buf.close()


def test_signing_key__a_full_disk_leaves_no_empty_key_behind(small_disk):
    key = small_disk / "keys" / "gw.key"
    key.parent.mkdir()
    hog = fill(small_disk, None)
    for _ in range(2):
        with pytest.raises(SigningKeyError) as err:
            Signer.load_or_create(key)
        assert err.value.disk_full and "free space" in str(err.value)
        assert not key.exists() and list(key.parent.iterdir()) == []
    hog.unlink()
    signer = Signer.load_or_create(key)
    assert Signer.load_or_create(key).public_raw == signer.public_raw


def test_buffer__a_command_number_the_disk_cannot_record_is_refused_not_returned(small_disk):
    buf = Buffer(small_disk / "b.sqlite", max_bytes=BIG)
    first = buf.next_command("HK-01")
    buf._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's room goes back to the disk
    hog = fill(small_disk, None)
    got = []
    with pytest.raises(BufferError, match="command number"):
        for _ in range(10_000):  # until the WAL has no room left either
            got.append(buf.next_command("HK-01"))
    hog.unlink()
    again = buf.next_command("HK-01")
    assert again > max([first, *got])  # never a number handed out and not recorded
    buf.close()


async def test_bus__full_disk_answers_meters_busy_and_their_entries_wait_in_their_journals(
    small_disk, tmp_path
):
    meters = {
        a: Meter(f"HK-{a:02d}", Journal(tmp_path / f"m{a}.sqlite"), speed=7200, seed=a)
        for a in (1, 2)
    }
    server = await MeterServer(meters).start(business_interval_s=0.02)
    cfg = parse_config(
        f"""gateway: {{id: gw}}
parking:
  buses:
    - id: lane-1
      transport: {{type: tcp, host: 127.0.0.1, port: {server.port}}}
      poll_interval_s: 0.02
      timeout_ms: 300
      meters: [{{id: HK-01, address: 1}}, {{id: HK-02, address: 2}}]
""",
        "c.yaml",
        tmp_path,
    ).config.parking.buses[0]
    fill(small_disk, 0.5, "logs")
    buf = await AsyncBuffer(small_disk / "b.sqlite", max_bytes=BIG).open()
    bus = MeterBus(cfg, buf, Signer.load_or_create(tmp_path / "k.key"))
    task = asyncio.create_task(bus.run())
    try:
        await wait_until(lambda: bus.stats.entries >= 20, 30, what="entries stored")
        hog = fill(small_disk, None, "hog")
        await wait_until(lambda: bus.stats.busy >= 5, 30, what="BUSY answers")
        assert not task.done()
        held = {m.meter_id: m.journal.unacked_count() for m in meters.values()}
        assert sum(held.values()) > 0  # the meters keep what they could not hand over
        hog.unlink()
        upto = {m.meter_id: m.journal.last_seq for m in meters.values()}
        deadline = time.monotonic() + 30
        while [await buf.meter_last_seq(m) >= upto[m] for m in upto] != [True] * len(upto):
            assert time.monotonic() < deadline, "every entry written while the disk was full"
            await asyncio.sleep(0.05)  # (asked on the buffer's own thread, like the bus does)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
    db = sqlite3.connect(small_disk / "b.sqlite")
    rows = db.execute(
        "SELECT meter, count(*), min(seq), max(seq) FROM meter_entries GROUP BY meter"
    ).fetchall()
    missing = db.execute("SELECT sum(missing) FROM meters").fetchone()[0]
    db.close()
    await buf.close()
    # every entry exactly once, none skipped: 1..last for each meter
    assert {m: (n, lo, hi) for m, n, lo, hi in rows} == {
        m: (hi, 1, hi) for m, _, _, hi in rows
    } and missing == 0


# ------------------------------------------------------------------ case 2: the gateway


async def test_gateway__starting_on_a_full_disk_waits_for_room_instead_of_exiting(
    small_disk, tmp_path, caplog
):
    from edge.agent.gateway import Gateway

    caplog.set_level(logging.INFO, "edge")
    meters = {1: Meter("HK-01", Journal(tmp_path / "m1.sqlite"), speed=7200)}
    server = await MeterServer(meters).start(business_interval_s=0.05)
    buffer = small_disk / "b.sqlite"
    Buffer(buffer, max_bytes=BIG).close()  # a buffer from an earlier run
    hog = fill(small_disk, None)
    text = f"""
gateway: {{id: gw}}
buffer: {{path: {buffer}}}
mqtt: {{url: "mqtt://127.0.0.1:9", reconnect_min_s: 0.2}}
status: {{enabled: false}}
parking:
  key_file: {small_disk / "keys" / "gw.key"}
  buses:
    - id: lane-1
      transport: {{type: tcp, host: 127.0.0.1, port: {server.port}}}
      meters: [{{id: HK-01, address: 1}}]
"""
    gateway = Gateway(parse_config(text, "gw.yaml", tmp_path))
    task = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: "waits for it" in caplog.text, 10, what="the wait")
        await asyncio.sleep(2)
        assert not task.done() and not gateway.started.is_set()  # waiting, not exiting
        assert not list(small_disk.glob("*.corrupt-*"))
        hog.unlink()
        await asyncio.wait_for(gateway.started.wait(), 30)
        await wait_until(lambda: gateway.meter_buses[0].stats.entries > 0, 20, what="entries")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
    assert gateway.signer is not None and (small_disk / "keys" / "gw.key").stat().st_size > 0
    waited = [m for m in errors(caplog) if "waits for it" in m]
    assert len(waited) == 1 and "is full" in waited[0]  # once, with the reason
    assert "buffer" in caplog.text and f"buffer {buffer} open" in caplog.text


def spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=ROOT,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.system
@pytest.mark.slow
async def test_gateway__disk_full_keeps_polling_counts_dropped_tells_once_and_recovers(
    small_disk, tmp_path, mosquitto, sim_sdm630
):
    from tests.test_system import Collector

    filler = fill(small_disk, 0.8)
    buffer = small_disk / "b.sqlite"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        gateway_yaml(
            buffer=buffer,
            broker_port=mosquitto.port,
            sim_port=sim_sdm630.port,
            poll_interval_s=0.1,
            timeout_ms=50,
            points=None,  # every point of both meters: the disk fills in seconds
        )
    )
    log = tmp_path / "gw.log"
    # The platform's consumer has a persistent session: it misses nothing while the broker is
    # down, and the broker keeps what the gateway publishes until the consumer takes it.
    async with Collector(mosquitto.url) as col:
        await asyncio.to_thread(mosquitto.stop)  # the uplink is down: everything stays put
        proc = spawn(cfg, log)
        try:
            await wait_until(
                lambda: b"is full" in log.read_bytes() or proc.poll() is not None,
                60,
                what="the disk to fill",
            )
            await asyncio.sleep(3)  # evicting on, polling on
            assert proc.poll() is None, log.read_text()
            filler.unlink()
            freed_ms = int(time.time() * 1000)
            await wait_until(lambda: b"has room again" in log.read_bytes(), 30, what="room")
            await asyncio.to_thread(mosquitto.start)
            await wait_until(
                lambda: any(r.ts_ms > freed_ms + 2000 for r in col.readings),
                60,
                what="readings taken after the space returned",
            )
        finally:
            stop_process(proc)  # a clean stop: what was not sent stays in the buffer
        text = log.read_text()
        assert proc.returncode == 0, text
        # Nothing accepted is lost: delivered, or still in the buffer, or evicted and counted.
        db = sqlite3.connect(buffer)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        names = {sid: (d, p) for sid, d, p in db.execute("SELECT id, device, point FROM series")}
        kept = {(*names[s], ts) for s, ts in db.execute("SELECT series, ts_ms FROM readings")}
        for (payload,) in db.execute("SELECT payload FROM outbox"):
            kept |= {(*names[p.sid], p.ts_ms) for p in decode_batch(payload).points}
        db.close()
        expected = meta["accepted_total"] - meta["evicted_total"]

        def delivered() -> set[tuple[str, str, int]]:
            return {(r.device, r.point, r.ts_ms) for r in col.readings}

        await wait_until(
            lambda: len(delivered() | kept) >= expected, 30, what="every accepted reading"
        )
    assert len(delivered() | kept) == expected
    assert meta["evicted_total"] > 0
    told = sum(b.header.dropped for b in col.batches) + meta["dropped_pending"]
    assert told >= meta["evicted_total"]  # every eviction reported (refusals on top)
    assert "Traceback" not in text and "power cut" not in text and "damaged" not in text
    full = [line for line in text.splitlines() if " ERROR " in line and "is full" in line]
    assert len(full) == 1, text  # told once, naming the disk
    assert str(small_disk) in full[0]
    assert text.count("has room again") == 1


# ------------------------------------------------------------------ case 3: the buffer path


def write_config(folder: Path, buffer_line: str) -> tuple[Path, int, int]:
    """A config whose buffer path is ``buffer_line``; returns it with that value's line, column."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gateway-ed25519.key").write_text("not a key, but it must never move\n")
    text = (
        "gateway: {id: gw}\nmqtt: {url: 'mqtt://127.0.0.1:9'}\n"
        f"buffer:\n  path: {buffer_line}\n"
    )
    cfg = folder / "gw.yaml"
    cfg.write_text(text)
    return cfg, 4, len("  path: ") + 1


def edge(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "case", ["folder", "empty", "trailing-slash", "unwritable", "uncreatable", "the-config"]
)
def test_check_and_run__a_buffer_path_that_cannot_work_is_refused_at_its_line(
    case, tmp_path, request
):
    folder = tmp_path / "etc"
    if case in ("unwritable", "uncreatable"):
        ro = request.getfixturevalue("unwritable")
        value = str(ro / "buffer.sqlite") if case == "unwritable" else str(ro / "edge" / "b.db")
    else:
        value = {
            "folder": str(tmp_path),
            "empty": "''",
            "trailing-slash": "data/",
            "the-config": "gw.yaml",
        }[case]
    cfg, line, col = write_config(folder, value)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    check = edge("check", str(cfg))
    assert check.returncode == 2, check.stdout + check.stderr
    assert check.stderr.startswith(f"{cfg}:{line}:{col}: buffer.path: "), check.stderr
    # check = run: the same refusal, at the same place, before anything starts
    run = edge("run", "--config", str(cfg))
    assert run.returncode == 2 and run.stderr == check.stderr, run.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing moved
    assert cfg.exists() and (folder / "gateway-ed25519.key").exists()


def test_buffer__a_folder_or_device_is_never_moved_aside(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "gw.yaml").write_text("gateway: {id: gw}\n")
    with pytest.raises(BufferUnavailable, match="is a folder") as err:
        Buffer(folder, max_bytes=BIG)  # what an empty buffer.path resolved to
    assert not err.value.retry
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc"]
    assert (folder / "gw.yaml").exists()
    with pytest.raises(BufferUnavailable, match="character device"):
        Buffer(Path("/dev/null"), max_bytes=BIG)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for bad in (folder, fifo, Path("/dev/null")):
        with pytest.raises(ValueError, match="not a regular file"):
            quarantine(bad)  # salvage moves only a regular file, whoever asks
    assert folder.is_dir() and fifo.exists()


def test_buffer__a_second_owner_in_one_process_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "b.sqlite"
    first = Buffer(path, max_bytes=BIG)
    with pytest.raises(BufferInUse) as err:
        Buffer(path, max_bytes=BIG)
    assert err.value.pid == os.getpid() and f"PID {os.getpid()}" in str(err.value)
    assert lock_holder(path) == os.getpid()
    (tmp_path / "alias").symlink_to(tmp_path)
    with pytest.raises(BufferInUse):  # the same file by another name: the same lock
        Buffer(tmp_path / "alias" / "b.sqlite", max_bytes=BIG)
    first.close()
    assert lock_holder(path) is None
    Buffer(path, max_bytes=BIG).close()  # released on close


@pytest.mark.system
async def test_run__a_second_gateway_on_one_buffer_is_refused_and_a_killed_one_frees_it(
    tmp_path, mosquitto: Mosquitto, sim_sdm630
):
    buffer = tmp_path / "b.sqlite"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        gateway_yaml(buffer=buffer, broker_port=mosquitto.port, sim_port=sim_sdm630.port)
    )
    first = spawn(cfg, tmp_path / "first.log")
    procs = [first]
    try:
        await wait_until(lambda: lock_holder(buffer) == first.pid, 20, what="the first up")
        second = await asyncio.to_thread(edge, "run", "--config", str(cfg), timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"is in use by another gateway (PID {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None
        # check and doctor's read-only look never take the lock, and say who holds it
        check = await asyncio.to_thread(edge, "check", str(cfg))
        assert check.returncode == 0 and f"in use by a running gateway, PID {first.pid}" in (
            check.stdout
        )
        doctor = await asyncio.to_thread(edge, "doctor", "--config", str(cfg), timeout=90)
        assert f"PASS  buffer {buffer} is open in a running gateway (PID {first.pid})" in (
            doctor.stdout
        ), doctor.stdout
        assert "PASS  buffer holds" in doctor.stdout  # its read-only look is not blocked
        assert lock_holder(buffer) == first.pid and first.poll() is None
        os.kill(first.pid, signal.SIGKILL)  # a crash: the kernel lets go of the lock
        first.wait()
        third = spawn(cfg, tmp_path / "third.log")
        procs.append(third)
        await wait_until(lambda: lock_holder(buffer) == third.pid, 20, what="the third up")
        await asyncio.sleep(2)
        assert third.poll() is None, (tmp_path / "third.log").read_text()
    finally:
        for p in procs:
            stop_process(p)
    assert procs[-1].returncode == 0
    assert lock_holder(buffer) is None
