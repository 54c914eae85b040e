"""A cashless parking meter's firmware, simulated: a durable journal, Hanoi-like business, and
the meter link (docs/meter-link-v1.md) on TCP (:class:`MeterServer`) or on an RS-485 bus paced at
wire speed (:class:`MeterLine`, a pseudo-terminal).

:class:`Journal` is the meter's memory: SQLite with ``synchronous=FULL``, so an entry survives a
power cut (SIGKILL of the process) once written. Every entry keeps its bytes and an ``acked``
flag: an entry is sent, and sent again, until the gateway acknowledges it, across restarts. The
journal keeps acknowledged entries too, which is what a reconciliation compares against.

:class:`Meter` does business on a simulated clock (``speed`` simulated seconds per real second,
so a short test spans days): vehicles arrive at its spaces (more at the morning and evening
peaks), park for a while, and on leaving pay by the tariff in force: SESSION_START, then
SESSION_END, PAYMENT and RECEIPT (an e-receipt with a lookup code). Payment methods follow a
cashless-era mix (traffic account and bank QR first). STATUS every simulated quarter hour,
OCCUPANCY on every arrival and departure.

:class:`MeterServer` answers the gateway on TCP: POLL acknowledges and asks for the oldest
unacknowledged entry (or IDLE), ACK only acknowledges, NAK leaves the entry to be asked again,
commands are carried out once per command number. Frames addressed to another meter are
ignored. Faults on demand: ``corrupt_every`` (every Nth answer has a wrong CRC), ``silent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocols.meterlink import (
    HEADER,
    CmdNak,
    Enable,
    Frame,
    FrameDecoder,
    Idle,
    Message,
    MeterStatus,
    Method,
    MsgType,
    NakReason,
    Occupancy,
    PayloadError,
    Payment,
    Receipt,
    SessionEnd,
    SessionStart,
    Tariff,
    TariffBlock,
    TimeSync,
    decode_message,
    encode_frame,
    encode_message,
)
from protocols.modbus_frame import LineTiming
from simulators.serial_pty import PtyPort, write_paced

__all__ = ["HANOI_TARIFF", "Journal", "Meter", "MeterLine", "MeterServer", "price_vnd"]

log = logging.getLogger(__name__)

_ICT_MS = 7 * 3_600_000
CAR, MOTORBIKE = 0, 1

#: An illustrative inner-district tariff (not the legal one; a meter takes its tariff from the
#: gateway): cars pay per started hour by day and per started two hours at night, capped;
#: motorbikes pay per turn, more at night.
HANOI_TARIFF = Tariff(
    1,
    (
        TariffBlock(CAR, 6 * 60, 60, 30_000, 0),
        TariffBlock(CAR, 18 * 60, 120, 40_000, 3),
        TariffBlock(MOTORBIKE, 6 * 60, 24 * 60, 5_000, 1),
        TariffBlock(MOTORBIKE, 18 * 60, 24 * 60, 8_000, 1),
    ),
)

# The payment mix of a cashless pilot (device-protocols §5.2: 90-100 % cashless).
_METHODS = (
    (Method.TRAFFIC_ACCOUNT, 0.40),
    (Method.BANK_QR, 0.30),
    (Method.E_WALLET, 0.18),
    (Method.CARD, 0.07),
    (Method.CASH, 0.05),
)


def price_vnd(tariff: Tariff, vehicle: int, start_ms: int, end_ms: int) -> int:
    """What a stay costs: the block rule in force at arrival (local time, UTC+7), per started
    block, capped at ``max_blocks`` blocks when that is set."""
    rules = sorted((b for b in tariff.blocks if b.vehicle == vehicle), key=lambda b: b.from_min)
    if not rules:
        return 0
    minute = ((start_ms + _ICT_MS) // 60_000) % 1440
    rule = rules[-1]  # before the first rule's start: the last one of the day before
    for b in rules:
        if b.from_min <= minute:
            rule = b
    stay_min = max(1, math.ceil((end_ms - start_ms) / 60_000))
    blocks = math.ceil(stay_min / rule.block_min)
    if rule.max_blocks:
        blocks = min(blocks, rule.max_blocks)
    return blocks * rule.price_vnd


# ---------------------------------------------------------------------------------- journal


class Journal:
    """The meter's durable journal (one SQLite file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries (
                seq INTEGER PRIMARY KEY, type INTEGER NOT NULL, payload BLOB NOT NULL,
                created_ms INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value);
            """
        )

    def append(self, msg: Message, created_ms: int) -> int:
        """Write one entry durably; returns its sequence number (1, 2, 3, ... no gaps)."""
        cur = self._db.execute(
            "INSERT INTO entries (type, payload, created_ms) VALUES (?, ?, ?)",
            (int(msg.TYPE), encode_message(msg), created_ms),
        )
        return int(cur.lastrowid or 0)

    def ack(self, upto: int) -> int:
        """Everything up to ``upto`` is committed at the gateway. Returns how many were new."""
        cur = self._db.execute("UPDATE entries SET acked = 1 WHERE seq <= ? AND acked = 0", (upto,))
        return cur.rowcount

    def next_unacked(self) -> tuple[int, int, bytes] | None:
        return self._db.execute(
            "SELECT seq, type, payload FROM entries WHERE acked = 0 ORDER BY seq LIMIT 1"
        ).fetchone()

    @property
    def last_seq(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0])

    @property
    def acked_upto(self) -> int:
        row = self._db.execute(
            "SELECT coalesce(min(seq) - 1, (SELECT coalesce(max(seq), 0) FROM entries)) "
            "FROM entries WHERE acked = 0"
        ).fetchone()
        return int(row[0])

    def unacked_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries WHERE acked = 0").fetchone()[0])

    def get(self, key: str, default: object = None) -> object:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def put(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    def entries(self) -> list[tuple[int, int, bytes, int]]:
        """Every entry ever written: (seq, type, payload, acked)."""
        return self._db.execute(
            "SELECT seq, type, payload, acked FROM entries ORDER BY seq"
        ).fetchall()

    def close(self) -> None:
        self._db.close()


# ---------------------------------------------------------------------------------- business


@dataclass
class _Stay:
    session_id: str
    space: str
    plate: str
    vehicle: int
    start_ms: int
    end_ms: int


@dataclass
class Meter:
    """One meter's business, written to its journal as it happens."""

    meter_id: str
    journal: Journal
    zone: str = "HK-LTK"
    spaces: int = 8
    speed: float = 600.0  # simulated seconds per real second
    arrivals_per_hour: float = 6.0  # per space, at the peak
    seed: int | str = 0
    clock: Callable[[], float] = time.time
    tariff: Tariff = HANOI_TARIFF
    enabled: bool = True
    stays: dict[str, _Stay] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}:{self.meter_id}:{self.journal.last_seq}")
        # The simulated clock carries on from the journal after a restart (a power cut).
        self._sim0 = int(self.journal.get("sim_ms", 0) or 0) or int(self.clock() * 1000)
        self._real0 = self.clock()
        self._next_status = self._sim0
        self._counter = int(self.journal.get("counter", 0) or 0)
        # Vehicles parked when the power went stay parked (their sessions are in the journal).
        for sid, space, plate, vehicle, start in self._open_stays():
            self.stays[space] = _Stay(sid, space, plate, vehicle, start, 0)

    def now_ms(self) -> int:
        return self._sim0 + int((self.clock() - self._real0) * self.speed * 1000)

    def _open_stays(self) -> list[tuple[str, str, str, int, int]]:
        started: dict[str, tuple[str, str, str, int, int]] = {}
        for _, mtype, payload, _ in self.journal.entries():
            if mtype == MsgType.SESSION_START:
                m = decode_message(mtype, payload)
                assert isinstance(m, SessionStart)
                started[m.session_id] = (
                    m.session_id,
                    m.space or "",
                    m.plate,
                    CAR if m.vehicle == "car" else MOTORBIKE,
                    m.start_ms,
                )
            elif mtype == MsgType.SESSION_END:
                started.pop(decode_message(mtype, payload).session_id, None)  # type: ignore[attr-defined]
        return list(started.values())

    def _id(self, prefix: str) -> str:
        self._counter += 1
        self.journal.put("counter", self._counter)
        return f"{prefix}-{self.meter_id}-{self._counter:07d}"

    def _peak(self, now_ms: int) -> float:
        hour = ((now_ms + _ICT_MS) / 3_600_000) % 24
        if hour < 6 or hour >= 23:
            return 0.1
        return 1.0 if 7 <= hour < 9 or 17 <= hour < 20 else 0.5

    def step(self) -> int:
        """Advance the business to the simulated now. Returns entries written."""
        now = self.now_ms()
        last = int(self.journal.get("sim_ms", 0) or 0) or now
        written = 0
        # departures due
        for space, stay in sorted(self.stays.items()):
            if stay.end_ms and stay.end_ms <= now:
                written += self._leave(stay)
                del self.stays[space]
        # arrivals over the elapsed simulated time, per free space
        dt_h = max(0, now - last) / 3_600_000
        if self.enabled:
            for k in range(self.spaces):
                space = f"{self.zone}-{k + 1:02d}"
                if space in self.stays:
                    continue
                if self.rng.random() < 1 - math.exp(
                    -self.arrivals_per_hour * self._peak(now) * dt_h
                ):
                    written += self._arrive(space, now)
        for stay in self.stays.values():  # stays restored after a power cut get an end
            if not stay.end_ms:
                stay.end_ms = now + self._duration_ms(stay.vehicle)
        if now >= self._next_status:
            self.journal.append(
                MeterStatus(
                    battery_pct=max(5, 100 - self._counter // 50 % 95),
                    paper_pct=max(0, 100 - self._counter % 400 // 4),
                    door_open=False,
                    tamper=False,
                    clock_ms=now,
                ),
                now,
            )
            written += 1
            self._next_status = now + 15 * 60_000
        self.journal.put("sim_ms", now)
        return written

    def _duration_ms(self, vehicle: int) -> int:
        mean_min = 95 if vehicle == CAR else 150
        return int(self.rng.expovariate(1 / mean_min) * 60_000) + 5 * 60_000

    def _arrive(self, space: str, now: int) -> int:
        vehicle = CAR if self.rng.random() < 0.55 else MOTORBIKE
        rng = self.rng
        series = "29A" if vehicle == CAR else f"29B{rng.randrange(1, 9)}"
        plate = f"{series}-{rng.randrange(100, 999)}.{rng.randrange(10, 99)}"
        sid = self._id("S")
        credential = self.rng.choices(["rfid", "plate", "qr"], [0.6, 0.25, 0.15])[0]
        self.journal.append(
            SessionStart(
                sid,
                self.zone,
                space,
                plate,
                "car" if vehicle == CAR else "motorbike",
                credential,
                now,
            ),
            now,
        )
        self.journal.append(Occupancy(space, True, now), now)
        self.stays[space] = _Stay(sid, space, plate, vehicle, now, now + self._duration_ms(vehicle))
        return 2

    def _leave(self, stay: _Stay) -> int:
        end = stay.end_ms
        amount = price_vnd(self.tariff, stay.vehicle, stay.start_ms, end)
        method = self.rng.choices([m for m, _ in _METHODS], [w for _, w in _METHODS])[0]
        tx = self._id("T")
        authorised = end + self.rng.randrange(500, 4000)
        collected = authorised + self.rng.randrange(200, 2000)
        number = self._counter
        self.journal.append(SessionEnd(stay.session_id, end), end)
        self.journal.append(
            Payment(stay.session_id, tx, amount, int(method), authorised, collected), collected
        )
        self.journal.append(
            Receipt(
                tx,
                "receipt",
                "01BLP0-001",
                "HN-24E",
                number,
                collected,
                f"M1-{self.meter_id}-{number:07d}",
                "0101234567",
                amount,
                0,
            ),
            collected,
        )
        self.journal.append(Occupancy(stay.space, False, end), end)
        return 4

    def apply(self, msg: Message) -> None:
        """Carry out a gateway command."""
        if isinstance(msg, Tariff):
            self.tariff = msg
        elif isinstance(msg, TimeSync):
            self._sim0, self._real0 = msg.now_ms, self.clock()
        elif isinstance(msg, Enable):
            self.enabled = msg.enabled


# ---------------------------------------------------------------------------------- the link


class MeterServer:
    """Meters answering the gateway on one TCP port (a pay station, or several meters behind one
    RS-485-to-TCP converter), each at its own address."""

    def __init__(self, meters: dict[int, Meter], host: str = "127.0.0.1", port: int = 0) -> None:
        self.meters = meters
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None
        self.corrupt_every = 0
        self.silent: set[int] = set()
        self.answers = 0
        self.frames_in = 0
        self._business: asyncio.Task[None] | None = None
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def start(
        self, business_interval_s: float = 0.05, *, business: bool = True
    ) -> MeterServer:
        """Listen; with ``business`` the meters also do business (write new entries)."""
        self.server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        self._start_business(business_interval_s, business)
        return self

    def _start_business(self, interval_s: float, business: bool) -> None:
        if business:
            self._business = asyncio.create_task(self._run_business(interval_s))

    async def _run_business(self, interval_s: float) -> None:
        while True:
            for m in self.meters.values():
                m.step()
            await asyncio.sleep(interval_s)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients[task] = w
            task.add_done_callback(lambda t: self._clients.pop(t, None))
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(4096):
                for frame in decoder.feed(data):
                    self.frames_in += 1
                    out = self.answer(frame)
                    if out is not None:
                        w.write(out)
                await w.drain()
        w.close()

    def answer(self, frame: Frame) -> bytes | None:
        """The bytes a meter sends back for one frame, or None (not addressed to a meter here,
        or no answer due)."""
        meter = self.meters.get(frame.address)
        if meter is None or frame.from_meter or frame.address in self.silent:
            return None
        j = meter.journal
        reply: Frame | None
        if frame.type in (MsgType.POLL, MsgType.ACK):
            if frame.seq <= j.last_seq:  # never acknowledge what was not written
                j.ack(frame.seq)
            if frame.type == MsgType.ACK:
                return None
            entry = j.next_unacked()
            if entry is None:
                idle = encode_message(Idle(meter.now_ms()))
                reply = Frame(frame.address, MsgType.IDLE, j.acked_upto, idle, True)
            else:
                seq, mtype, payload = entry
                reply = Frame(frame.address, mtype, seq, payload, True)
        elif frame.type == MsgType.NAK:
            return None  # the entry stays; the next POLL asks for it again
        elif frame.type in (MsgType.TARIFF, MsgType.TIME_SYNC, MsgType.ENABLE):
            done = int(j.get("last_command", 0) or 0)
            if frame.seq <= done:
                reply = Frame(frame.address, MsgType.CMD_ACK, frame.seq, b"", True)
            else:
                try:
                    meter.apply(decode_message(frame.type, frame.payload))
                except PayloadError:
                    nak = encode_message(CmdNak(NakReason.MALFORMED))
                    reply = Frame(frame.address, MsgType.CMD_NAK, frame.seq, nak, True)
                else:
                    j.put("last_command", frame.seq)
                    reply = Frame(frame.address, MsgType.CMD_ACK, frame.seq, b"", True)
        else:
            nak = encode_message(CmdNak(NakReason.UNKNOWN_TYPE))
            reply = Frame(frame.address, MsgType.CMD_NAK, frame.seq, nak, True)
        out = encode_frame(reply)
        self.answers += 1
        if self.corrupt_every and self.answers % self.corrupt_every == 0:
            out = out[:-1] + bytes([out[-1] ^ 0xFF])
        return out

    async def _stop_business(self) -> None:
        if self._business is not None:
            self._business.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._business

    async def close(self) -> None:
        await self._stop_business()
        tasks = list(self._clients)
        for w in self._clients.values():  # a power cut: every link drops at once
            w.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        for m in self.meters.values():
            m.journal.close()


class MeterLine(MeterServer):
    """The same meters on a simulated RS-485 bus: a pseudo-terminal paced like the wire
    (simulators/rtu_line.py). The gateway opens :attr:`path` as it would /dev/ttyUSB1. A meter
    starts answering ``turnaround_s`` after the request's last byte would have left the wire,
    and its answer comes out at the line's character rate; a pty ignores the baud rate, so the
    line keeps wire time itself."""

    def __init__(
        self,
        meters: dict[int, Meter],
        timing: LineTiming | None = None,
        turnaround_s: float = 0.010,
    ) -> None:
        super().__init__(meters)
        self.timing = timing or LineTiming()
        self.turnaround_s = turnaround_s
        self.path = ""
        self.overruns = 0  # bytes the meters missed because they were not reading
        self.port: PtyPort | None = None
        self._rx: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(maxsize=256)
        self._serve_task: asyncio.Task[None] | None = None

    async def start(self, business_interval_s: float = 0.05, *, business: bool = True) -> MeterLine:
        self.port = PtyPort(self._on_data)
        self.path = self.port.path
        self._serve_task = asyncio.create_task(self._serve(), name=f"meter-line {self.path}")
        self._start_business(business_interval_s, business)
        return self

    def _on_data(self, data: bytes) -> None:
        try:
            self._rx.put_nowait((data, time.monotonic()))
        except asyncio.QueueFull:
            self.overruns += len(data)

    async def _serve(self) -> None:
        decoder = FrameDecoder()
        while True:
            data, arrived = await self._rx.get()
            for frame in decoder.feed(data):
                self.frames_in += 1
                out = self.answer(frame)
                if out is None:
                    continue
                sent = HEADER.size + len(frame.payload) + 2
                start = arrived + self.timing.wire_s(sent) + self.turnaround_s
                assert self.port is not None
                await write_paced(self.port, out, start, self.timing)

    async def close(self) -> None:
        await self._stop_business()
        if self._serve_task is not None:
            self._serve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        if self.port is not None:
            self.port.close()
        for m in self.meters.values():
            m.journal.close()
