"""Particulate sensors (PMS5003, SDS011) on pseudo-terminals, and Hanoi's PM2.5.

:class:`HanoiPm` is the air: PM2.5 around the month's mean for Hanoi (dirtiest in winter, cleanest
in the summer rains), with traffic peaks in the morning and evening, a cleaner afternoon, slow
weather-driven drift, and **haze episodes** of one to three days above 150 µg/m³ (mostly from
October to March). PM1.0 and PM10 follow with their own noise; particle counts follow the mass.

:class:`Pms5003Sim` and :class:`Sds011Sim` speak the sensors' real protocols on a pty (bytes paced
at 9600 baud), answer their commands as the sensors do, and stream in active mode. While awake the
laser runs: ``laser_on_s`` adds it up, which is what duty cycling must keep small. For the first
``warmup_s`` after a wake-up the fan is not at speed and readings run low, as on the real sensors,
so a driver has to discard them. Faults on demand: ``bad_checksum_every`` (every Nth frame),
``garbage_bytes`` (before every frame), :meth:`UartSim.unplug` / :meth:`UartSim.replug` (the
port vanishes and comes back at the same path, as a USB adapter does), and
:meth:`UartSim.power_blip` (the supply dips: the sensor restarts awake, in active mode, its
power-on default, with its fan spinning up again, and streams whether or not anyone asked).

Every data frame the sensor puts on the wire is logged in :attr:`UartSim.sent` with the wall
time its last byte left (and every read request it got, in :attr:`UartSim.read_requests`), so a
test can tell whether a reported value came from a frame older than the request it answered.
The port is a :class:`~simulators.serial_pty.PtyPort`: what the program left unread when it
closed the port is lost, as with a real USB adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocols import pms5003 as pms
from protocols import sds011 as sds
from protocols.modbus_frame import LineTiming
from simulators.serial_pty import PtyPort

__all__ = ["HanoiPm", "Pms5003Sim", "Sds011Sim", "UartSim"]

_ICT = 7 * 3600
#: Monthly mean PM2.5 in Hanoi (µg/m³), January to December (order of magnitude of the city's
#: monitoring network: worst in winter, best in the rainy summer).
MONTHLY_PM25 = (70, 55, 50, 40, 30, 22, 20, 22, 28, 45, 60, 70)


class HanoiPm:
    def __init__(self, seed: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self._last: float | None = None
        self._drift = 0.0  # log-scale weather drift
        self.haze_left_s = 0.0
        self.haze_factor = 1.0

    def _advance(self, now: float) -> None:
        dt = 0.0 if self._last is None else min(max(0.0, now - self._last), 6 * 3600.0)
        self._last = now if self._last is None else max(self._last, now)
        if dt <= 0:
            return
        rng = self._rng
        a = math.exp(-dt / (6 * 3600))
        self._drift = self._drift * a + 0.3 * math.sqrt(1 - a * a) * rng.gauss(0, 1)
        if self.haze_left_s > 0:
            self.haze_left_s -= dt
            if self.haze_left_s <= 0:
                self.haze_factor = 1.0
        else:
            month = time.gmtime(now + _ICT).tm_mon
            per_day = 0.12 if month in (10, 11, 12, 1, 2, 3) else 0.02
            if rng.random() < per_day * dt / 86400:
                self.haze_left_s = rng.uniform(1, 3) * 86400
                self.haze_factor = rng.uniform(2.5, 3.5)

    def true_pm25(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        self._advance(now)
        month = time.gmtime(now + _ICT).tm_mon
        hour = ((now + _ICT) % 86400) / 3600.0
        diurnal = (
            1.0
            + 0.35 * math.exp(-(((hour - 8.0) / 1.5) ** 2))
            + 0.45 * math.exp(-(((hour - 20.5) / 2.5) ** 2))
            - 0.25 * math.exp(-(((hour - 14.0) / 3.0) ** 2))
        )
        return MONTHLY_PM25[month - 1] * diurnal * math.exp(self._drift) * self.haze_factor

    def measure(self, gain: float = 1.0) -> dict[str, float]:
        """What a laser sensor reads now (``gain`` < 1 while its fan spins up)."""
        rng = self._rng
        pm25 = max(0.0, self.true_pm25() * gain * (1 + rng.gauss(0, 0.05)) + rng.gauss(0, 1.5))
        pm1 = max(0.0, pm25 * (0.68 + rng.gauss(0, 0.02)))
        pm10 = max(pm25, pm25 * (1.35 + rng.gauss(0, 0.05)))
        return {"pm1_0": pm1, "pm2_5": pm25, "pm10": pm10}


class UartSim:
    """A laser particulate sensor behind a pty whose slave is at a stable symlink ``path``:
    the air it measures, its laser's on-time, and the port with its faults."""

    def __init__(
        self,
        path: Path,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        warmup_s: float = 30.0,
        interval_s: float = 1.0,
        timing: LineTiming | None = None,
    ) -> None:
        self.path = Path(path)
        self.air = HanoiPm(seed, clock)
        self.laser = _Laser(warmup_s, time.monotonic)
        self.interval_s = interval_s  # between frames when it streams
        self.timing = timing or LineTiming(9600, "N", 1)
        self.garbage_bytes = 0
        self.bad_checksum_every = 0
        self.frames_sent = 0
        self.commands = 0
        self.power_blips = 0
        #: every data frame sent: (wall time its last byte left, its bytes before any fault)
        self.sent: deque[tuple[float, bytes]] = deque(maxlen=4096)
        #: wall time of every read request received, newest last (bounded)
        self.read_requests: deque[float] = deque(maxlen=4096)
        self.plugged = False
        self.tty = ""
        self._port: PtyPort | None = None
        self._rx = bytearray()
        self._tx_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._rng = random.Random(seed)

    @property
    def laser_on_s(self) -> float:
        return self.laser.on_s

    async def start(self) -> UartSim:
        self.replug()
        self._tasks.append(asyncio.create_task(self._stream(), name=f"uart-sim {self.path}"))
        return self

    # -------------------------------------------------------------- the port

    def replug(self) -> None:
        """The adapter (re)appears at ``path``."""
        if self.plugged:
            return
        self._port = PtyPort(self._on_data)
        self.tty = self._port.path
        self.path.unlink(missing_ok=True)
        self.path.symlink_to(self.tty)
        self.plugged = True

    def unplug(self) -> None:
        """The adapter vanishes: the open port fails and the path is gone."""
        if not self.plugged:
            return
        if self._port is not None:
            self._port.close()
        self._port = None
        self.path.unlink(missing_ok=True)
        self.plugged = False
        self._rx.clear()

    def _on_data(self, data: bytes) -> None:
        self._rx += data
        self.handle_input()

    def power_blip(self) -> None:
        """The supply dips for a moment: the sensor restarts in its power-on state (awake, active
        mode, fan spinning up again, so its first readings run low). What it was receiving or
        sending is cut off; settings held in RAM are lost."""
        self.power_blips += 1
        self._rx.clear()
        for task in list(self._sending):
            task.cancel()
        self.laser.set(True)  # awake, and the fan starts from rest: a warm-up again
        self.power_on_defaults()

    def power_on_defaults(self) -> None:
        raise NotImplementedError

    async def send(self, frame: bytes, *, is_data: bool = True) -> None:
        """Write a frame at the line's character rate (with the faults that are switched on)."""
        clean = frame
        if is_data:
            self.frames_sent += 1
            if self.bad_checksum_every and self.frames_sent % self.bad_checksum_every == 0:
                frame = frame[:-3] + bytes([frame[-3] ^ 0x55]) + frame[-2:]
        if self.garbage_bytes:
            frame = bytes(self._rng.randrange(256) for _ in range(self.garbage_bytes)) + frame
        async with self._tx_lock:
            await asyncio.sleep(self.timing.wire_s(len(frame)))
            if self.plugged and self._port is not None:
                self._port.write(frame)
            if is_data:
                self.sent.append((time.time(), clean))

    def reply(self, frame: bytes, *, is_data: bool = False) -> None:
        """Answer a command (from the reader callback, so in a task of its own)."""
        task = asyncio.get_running_loop().create_task(self.send(frame, is_data=is_data))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # -------------------------------------------------------------- the sensor

    def handle_input(self) -> None:
        raise NotImplementedError

    async def _stream(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        for t in [*self._tasks, *self._sending]:
            t.cancel()
        for t in [*self._tasks, *self._sending]:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.unplug()


class _Laser:
    """Awake / asleep bookkeeping shared by both sensors."""

    def __init__(self, warmup_s: float, clock: Callable[[], float]) -> None:
        self.warmup_s = warmup_s
        self._clock = clock
        self.awake = True
        self._since = clock()
        self._total = 0.0
        self.wakes = 0

    def set(self, awake: bool) -> None:
        now = self._clock()
        if self.awake:
            self._total += now - self._since
        if awake and not self.awake:
            self.wakes += 1
        self.awake = awake
        self._since = now

    @property
    def on_s(self) -> float:
        return self._total + (self._clock() - self._since if self.awake else 0.0)

    def gain(self) -> float:
        """Readings run low until the fan is at speed."""
        if self.warmup_s <= 0:
            return 1.0
        t = self._clock() - self._since
        return min(1.0, 0.3 + 0.7 * t / self.warmup_s)


class Pms5003Sim(UartSim):
    """PMS5003: active mode streams a frame every ``interval_s``; passive answers reads."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.active = True

    def power_on_defaults(self) -> None:
        self.active = True  # reference §2.1: active mode after power-up

    def frame(self) -> pms.PmsFrame:
        m = self.air.measure(self.laser.gain())
        atm = [round(m["pm1_0"]), round(m["pm2_5"]), round(m["pm10"])]
        cf1 = [v if v < 30 else round(30 + (v - 30) * 1.5) for v in atm]
        n03 = round(m["pm2_5"] * 60 * (1 + self._rng.gauss(0, 0.05)))
        counts = [n03, n03 * 0.30, n03 * 0.06, n03 * 0.006, n03 * 0.001, n03 * 0.0004]
        return pms.PmsFrame(
            *(min(0xFFFF, v) for v in cf1),
            *(min(0xFFFF, v) for v in atm),
            *(min(0xFFFF, round(c)) for c in counts),
            0x97,
            0,
        )

    def handle_input(self) -> None:
        while True:
            at = self._rx.find(pms.START)
            if at < 0:
                self._rx.clear()
                return
            del self._rx[:at]
            if len(self._rx) < 7:
                return
            raw = bytes(self._rx[:7])
            try:
                cmd, data = pms.decode_command(raw)
            except pms.PmsError:
                del self._rx[:1]
                continue
            del self._rx[:7]
            self.commands += 1
            self._command(cmd, data)

    def _command(self, cmd: int, data: int) -> None:
        if (cmd, data) == pms.WAKE:
            self.laser.set(True)  # no ack: frames resume once it runs
            return
        if not self.laser.awake:
            return  # asleep: only wake-up is heard
        if cmd == pms.PASSIVE[0]:
            self.active = data == 1
            self.reply(pms.encode_ack(cmd, data))
        elif (cmd, data) == pms.READ:
            self.read_requests.append(time.time())
            self.reply(pms.encode_frame(self.frame()), is_data=True)
        elif (cmd, data) == pms.SLEEP:
            self.reply(pms.encode_ack(cmd, data))
            self.laser.set(False)

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.plugged and self.active and self.laser.awake:
                await self.send(pms.encode_frame(self.frame()))


class Sds011Sim(UartSim):
    """SDS011: active reporting every second, or query mode; sleep / work; working period."""

    def __init__(self, path: Path, *, device_id: int = 0xF9BC, **options: Any) -> None:
        super().__init__(path, **options)
        self.device_id = device_id
        self.query_mode = False
        self.working_period = 0

    def power_on_defaults(self) -> None:
        # Active reporting is the factory default (reference §2.2). Whether the sensor keeps a
        # query mode set before in flash across a power cut is not confirmed; modelled as lost,
        # the case the driver must handle. The working period is kept.
        self.query_mode = False

    def reading(self) -> sds.SdsReading:
        m = self.air.measure(self.laser.gain())
        return sds.SdsReading(
            min(6553.5, round(m["pm2_5"], 1)), min(6553.5, round(m["pm10"], 1)), self.device_id
        )

    def handle_input(self) -> None:
        while True:
            at = self._rx.find(sds.HEAD)
            if at < 0:
                self._rx.clear()
                return
            del self._rx[:at]
            if len(self._rx) < 19:
                return
            try:
                sub, data, dev = sds.decode_command(bytes(self._rx[:19]))
            except sds.SdsError:
                del self._rx[:1]
                continue
            del self._rx[:19]
            if dev not in (sds.ANY, self.device_id):
                continue
            self.commands += 1
            self._command(sub, data)

    def _reply(self, sub: int, d2: int, d3: int) -> None:
        self.reply(sds.encode_reply(sub, (d2, d3, 0), self.device_id))

    def _command(self, sub: int, data: bytes) -> None:
        setting = data[0] == 1
        if sub == sds.SLEEP_WORK:
            if setting:
                self.laser.set(data[1] == 1)
            self._reply(sub, data[0], 1 if self.laser.awake else 0)
            return
        if not self.laser.awake:
            return  # asleep: only the work command wakes it
        if sub == sds.REPORTING_MODE:
            if setting:
                self.query_mode = data[1] == 1
            self._reply(sub, data[0], 1 if self.query_mode else 0)
        elif sub == sds.QUERY_DATA:
            self.read_requests.append(time.time())
            self.reply(sds.encode_reading(self.reading()), is_data=True)
        elif sub == sds.WORKING_PERIOD:
            if setting:
                self.working_period = data[1]
            self._reply(sub, data[0], self.working_period)

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.plugged and not self.query_mode and self.laser.awake:
                await self.send(sds.encode_reading(self.reading()))
