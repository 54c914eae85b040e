"""Drivers for serial particulate sensors (PMS5003, SDS011): one task owns each sensor's port.

Passive mode (the default): the driver asks for each sample. When the poll interval leaves room,
it **duty-cycles** the laser (good for about 8,000 hours): the sensor sleeps between samples, is
woken ``warmup_s`` before each one, whatever it says while its fan spins up is discarded, and it
is put back to sleep right after the sample. Active mode: the sensor streams; the driver keeps the
latest frame and reports it once per interval.

A port that disappears (a USB adapter unplugged) or cannot be opened is retried with backoff; the
gap is reported as the device's ``_status`` going ``offline`` and back ``online``. A sensor that
does not answer is marked offline once, logged once, not every second. Corrupt frames are
counted (``stats.bad_frames``) and skipped by the decoder.
"""

from __future__ import annotations

import asyncio
import logging
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import serial
import serial_asyncio_fast

from devices import SensorProfile
from edge.clock import Stamp, TimeKeeper
from edge.config import DeviceConfig
from edge.fieldbus import Backoff
from edge.poller import BAD_POINTS, STATUS_POINT
from protocols import pms5003 as pms
from protocols import sds011 as sds
from protocols.batch import Reading

__all__ = ["SensorPoller", "SensorStats"]

log = logging.getLogger(__name__)


@dataclass
class SensorStats:
    polls: int = 0
    samples: int = 0
    readings: int = 0
    timeouts: int = 0
    opens: int = 0
    open_failures: int = 0
    port_losses: int = 0
    warmup_frames_discarded: int = 0
    wakes: int = 0
    bad_frames: int = 0  # counted by the decoder of each session, added when it closes
    skipped_bytes: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1


class _PortLost(Exception):
    pass


# --------------------------------------------------------------------------- protocols


class _Pms:
    name = "pms5003"

    def decoder(self) -> pms.PmsDecoder:
        return pms.PmsDecoder()

    passive = staticmethod(lambda: pms.command(pms.PASSIVE))
    active = staticmethod(lambda: pms.command(pms.ACTIVE))
    wake = staticmethod(lambda: pms.command(pms.WAKE))
    sleep = staticmethod(lambda: pms.command(pms.SLEEP))
    read = staticmethod(lambda: pms.command(pms.READ))

    @staticmethod
    def values(frame: Any) -> dict[str, int] | None:
        if not isinstance(frame, pms.PmsFrame):
            return None
        return {
            "pm1_0": frame.pm1_0,
            "pm2_5": frame.pm2_5,
            "pm10": frame.pm10,
            "pm1_0_cf1": frame.pm1_0_cf1,
            "pm2_5_cf1": frame.pm2_5_cf1,
            "pm10_cf1": frame.pm10_cf1,
            "n0_3": frame.n0_3,
            "n0_5": frame.n0_5,
            "n1_0": frame.n1_0,
            "n2_5": frame.n2_5,
            "n5_0": frame.n5_0,
            "n10": frame.n10,
        }


class _Sds:
    name = "sds011"

    def decoder(self) -> sds.SdsDecoder:
        return sds.SdsDecoder()

    passive = staticmethod(lambda: sds.set_reporting_mode(True))
    active = staticmethod(lambda: sds.set_reporting_mode(False))
    wake = staticmethod(lambda: sds.set_sleep(False))
    sleep = staticmethod(lambda: sds.set_sleep(True))
    read = staticmethod(sds.query_data)

    @staticmethod
    def values(frame: Any) -> dict[str, float] | None:
        if not isinstance(frame, sds.SdsReading):
            return None
        return {"pm2_5": frame.pm2_5, "pm10": frame.pm10}


PROTOCOLS: dict[str, Callable[[], Any]] = {"pms5003": _Pms, "sds011": _Sds}


class _Port(asyncio.Protocol):
    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.frames: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if self.frames.full():
                self.frames.get_nowait()  # keep the newest
            self.frames.put_nowait(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


# --------------------------------------------------------------------------- the poller


class SensorPoller:
    def __init__(
        self,
        device: DeviceConfig,
        profile: SensorProfile,
        out: asyncio.Queue[list[Reading]],
        clock: TimeKeeper | None = None,
    ) -> None:
        self.device = device
        self.clock = clock or TimeKeeper(require_sync=False)
        self.profile = profile
        self.out = out
        self.proto = PROTOCOLS[profile.protocol]()
        self.points = tuple(device.points or profile.point_names)
        self.interval_s = device.poll_interval_s
        self.warmup_s = profile.warmup_s if device.warmup_s is None else device.warmup_s
        self.stats = SensorStats()
        self.status: str | None = None
        self.bad_points: str | None = None
        self.last: dict[str, tuple[int, object]] = {}
        self._port: _Port | None = None
        self._awake: bool | None = None
        self._backoff = Backoff(0.5, 30.0)

    # ------------------------------------------------------------------ gateway interface

    def point_names(self) -> tuple[str, ...]:
        return self.points

    def summary(self) -> str:
        t = self.device.transport
        if self.device.mode == "active":
            how = "active mode, streaming"
        elif self.duty_cycling:
            how = f"passive, asleep between samples, woken {self.warmup_s:g} s before each"
        else:
            how = "passive, awake"
        return (
            f"{self.profile.model} on {t.describe()}: {how}, a sample every {self.interval_s:g} s"
        )

    @property
    def duty_cycling(self) -> bool:
        return self.device.mode == "passive" and self.interval_s > self.warmup_s + 1.0

    def point_is_bit(self, point_name: str) -> bool:
        return False

    async def write(self, point_name: str, value: object) -> object:
        raise ValueError(f"{self.profile.name} takes no point writes")

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except (OSError, serial.SerialException, termios.error, _PortLost) as exc:
                lost = isinstance(exc, _PortLost)
                if lost:
                    self.stats.port_losses += 1
                else:
                    self.stats.open_failures += 1
                await self._health("offline", f"port {'lost' if lost else 'cannot open'}: {exc}")
            finally:
                self._close()
            await asyncio.sleep(self._backoff.failed())

    def _close(self) -> None:
        if self._port is not None and self._port.transport is not None:
            self._port.transport.close()
        if self._port is not None:
            self.stats.bad_frames += self._port.decoder.bad_frames
            self.stats.skipped_bytes += self._port.decoder.skipped_bytes
        self._port = None
        self._awake = None

    async def _open(self) -> _Port:
        t = self.device.transport
        port = _Port(self.proto.decoder())
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            asyncio.get_running_loop(), lambda: port, t.port, baudrate=t.baudrate
        )
        port.transport = transport  # connection_made may come a loop turn later
        self.stats.opens += 1
        self._port = port
        return port

    def _send(self, frame: bytes) -> None:
        port = self._port
        if port is None or port.transport is None or port.lost.is_set():
            raise _PortLost("port closed")
        port.transport.write(frame)

    async def _wait_frame(self, timeout_s: float) -> Any | None:
        port = self._port
        assert port is not None
        lost = asyncio.create_task(port.lost.wait())
        get = asyncio.create_task(port.frames.get())
        try:
            done, _ = await asyncio.wait(
                {lost, get}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            for t in (lost, get):
                t.cancel()
        if get in done and not get.cancelled():
            return get.result()
        if lost in done:
            raise _PortLost("the port went away")
        return None

    async def _drain(self) -> None:
        """Throw away frames already queued (sent while warming up, or stale)."""
        assert self._port is not None
        while not self._port.frames.empty():
            self._port.frames.get_nowait()
            self.stats.warmup_frames_discarded += 1

    async def _set_awake(self, awake: bool) -> None:
        if self._awake == awake:
            return
        self._send(self.proto.wake() if awake else self.proto.sleep())
        if awake:
            self.stats.wakes += 1
        self._awake = awake
        await asyncio.sleep(0.05)  # its acknowledgement (if any) is not a sample

    async def _session(self) -> None:
        await self._open()
        self._backoff.succeeded()
        loop = asyncio.get_running_loop()
        await self._set_awake(True)
        self._send(self.proto.active() if self.device.mode == "active" else self.proto.passive())
        await asyncio.sleep(0.1)
        await self._drain()
        next_t = loop.time() + self.warmup_s  # the first sample after the fan is at speed
        while True:
            if self.duty_cycling:
                await self._sleep_until(next_t - self.warmup_s)
                await self._set_awake(True)
                await self._sleep_until(next_t)
                await self._drain()  # said while the fan spun up: not a sample
            else:
                await self._sleep_until(next_t)
            self.stats.polls += 1
            values = await self._sample()
            if self.duty_cycling:
                await self._set_awake(False)
            await self._emit(values)
            next_t += self.interval_s
            if next_t < loop.time():
                next_t = loop.time()

    async def _sleep_until(self, t: float) -> None:
        port = self._port
        assert port is not None
        delay = t - asyncio.get_running_loop().time()
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await port.lost.wait()
        except TimeoutError:
            return
        raise _PortLost("the port went away")

    async def _sample(self) -> dict[str, Any] | None:
        """One sample: the answer to a read (passive), or the newest streamed frame (active)."""
        dev = self.device
        port = self._port
        assert port is not None
        for _ in range(dev.retries + 1):
            if dev.mode == "active":
                latest = None
                while not port.frames.empty():
                    latest = self.proto.values(port.frames.get_nowait()) or latest
                if latest is not None:
                    return latest
            else:
                self._send(self.proto.read())
            deadline = time.monotonic() + dev.timeout_ms / 1000.0
            while (left := deadline - time.monotonic()) > 0:
                frame = await self._wait_frame(left)
                if frame is None:
                    break
                values = self.proto.values(frame)
                if values is not None:  # not an ack or a reply
                    return values
        self.stats.timeouts += 1
        self.stats.count("SensorTimeout")
        return None

    async def _emit(self, values: dict[str, Any] | None) -> None:
        readings: list[Reading] = []
        stamp = self.clock.stamp()
        if values is not None:
            self.stats.samples += 1
            readings = [stamp.reading(self.device.id, p, values[p]) for p in self.points]
            status, why = "online", ""
        else:
            status, why = "offline", "no answer to a sample request"
        readings += self._health_readings(status, why, stamp)
        for r in readings:
            self.last[r.point] = (r.ts_ms, r.value)
        if readings:
            self.stats.readings += len(readings)
            await self.out.put(readings)

    def _health_readings(self, status: str, why: str, stamp: Stamp) -> list[Reading]:
        out = []
        if status != self.status:
            if status == "offline":
                log.error("sensor %s: %s; logged again when it answers", self.device.id, why)
            elif self.status == "offline":
                log.info("sensor %s answers again", self.device.id)
            self.status = status
            out.append(stamp.reading(self.device.id, STATUS_POINT, status))
        bad = "" if status == "online" else "all"
        if bad != self.bad_points:
            self.bad_points = bad
            out.append(stamp.reading(self.device.id, BAD_POINTS, bad))
        return out

    async def _health(self, status: str, why: str) -> None:
        readings = self._health_readings(status, why, self.clock.stamp())
        if readings:
            self.stats.readings += len(readings)
            await self.out.put(readings)
