"""Drivers for serial particulate sensors (PMS5003, SDS011): one task owns each sensor's port.

Passive mode (the default): the driver asks for each sample. When the poll interval leaves room,
it **duty-cycles** the laser (good for about 8,000 hours): the sensor sleeps between samples, is
woken ``warmup_s`` before each one, whatever it says while its fan spins up is discarded, and it
is put back to sleep right after the sample. Active mode: the sensor streams; the driver keeps the
latest frame and reports it once per interval.

A value is only ever the sensor's answer to *this* sample, stamped with the time its frame
arrived. In passive mode the driver flushes its input before each read request (queued frames,
a partial frame, the kernel's buffer) and takes only a frame that arrived after the request,
at least one frame's wire time after it (an answer cannot come sooner); anything older is a
**stale frame**, counted (``stats.stale_frames``, ``edge_sensor_stale_frames_total``), never
reported. A sensor that streams without being asked (a PMS5003 or SDS011 falls back into
active mode, its power-on default, after a power blip) is put back into passive mode: the mode
command is sent again, counted (``stats.mode_resets``) and logged once at WARNING, then at DEBUG
while it lasts, and at INFO when it answers only when asked again. In active mode a sensor that
stops streaming gets the active-mode command again the same way.

A port that disappears (a USB adapter unplugged) or cannot be opened is retried with backoff; the
gap is reported as the device's ``_status`` going ``offline`` and back ``online``. A sensor that
does not answer is marked offline once, logged once, not every second. Corrupt frames are
counted (``stats.bad_frames``) and skipped by the decoder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import serial

from devices import SensorProfile
from edge.fieldbus.link import Backoff
from edge.settings import DeviceConfig
from edge.shared.clock import Stamp, TimeKeeper
from edge.shared.health import BAD_POINTS, STATUS_POINT
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
    #: data frames thrown away because they arrived before the request they would answer
    stale_frames: int = 0
    #: data frames that came while none was asked for (passive mode, outside warm-ups)
    unasked_frames: int = 0
    #: mode commands sent again because the sensor was in the wrong reporting mode
    mode_resets: int = 0
    #: bytes dropped by input flushes (a partial frame, the kernel's input buffer)
    flushed_bytes: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1


class _PortLost(Exception):
    pass


# --------------------------------------------------------------------------- protocols


class _Pms:
    name = "pms5003"
    frame_bytes = 32  # a data frame (reference §2.1)

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
    frame_bytes = 10  # a data frame (reference §2.2)

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


#: Seconds within which two frames nobody asked for mean "the sensor streams" (one alone may be
#: a late answer to a request that timed out).
UNASKED_WINDOW_S = 10.0
#: After a mode command, frames already on their way are not held against the sensor.
MODE_GRACE_S = 0.2


class _Port(asyncio.Protocol):
    """One open serial port: frames as they arrive, each with its arrival time (monotonic)."""

    def __init__(self, decoder: Any, is_data: Callable[[Any], bool], stats: SensorStats) -> None:
        self.decoder = decoder
        self.is_data = is_data
        self.stats = stats
        self.frames: deque[tuple[float, Any]] = deque(maxlen=256)  # the newest are kept
        self.arrived = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self.passive = False  # only answers are expected
        self.asked = False  # a read request is outstanding
        self.quiet_until = 0.0  # unasked frames before this are in flight after a command
        self.unasked: deque[float] = deque(maxlen=8)  # arrival times of unasked data frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        for frame in self.decoder.feed(data):
            if self.passive and not self.asked and now >= self.quiet_until and self.is_data(frame):
                self.unasked.append(now)
                self.stats.unasked_frames += 1
            self.frames.append((now, frame))
            self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def unasked_lately(self, now: float) -> int:
        """Unasked data frames within the window; two or more: the sensor streams."""
        return sum(1 for t in self.unasked if t > now - UNASKED_WINDOW_S)


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
        self.status_since: float | None = None  # wall-clock time of its last change, for the page
        self.bad_points: str | None = None
        self.last: dict[str, tuple[int, object]] = {}
        self._port: _Port | None = None
        self._awake: bool | None = None
        self._backoff = Backoff(0.5, 30.0)
        self._wrong_mode = False  # logged, until the sensor keeps its mode again
        # No answer can arrive sooner than its own frame's wire time after the request (8N1).
        self._answer_wire_s = self.proto.frame_bytes * 10 / device.transport.baudrate

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
        port = _Port(self.proto.decoder(), lambda f: self.proto.values(f) is not None, self.stats)
        port.passive = self.device.mode == "passive"
        import serial_asyncio_fast  # only a gateway with a serial line loads it

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

    def _send_mode(self) -> None:
        """(Re)send the reporting-mode command of the configured mode; frames already on their
        way are not held against the sensor."""
        assert self._port is not None
        passive = self.device.mode == "passive"
        self._send(self.proto.passive() if passive else self.proto.active())
        self._port.quiet_until = time.monotonic() + MODE_GRACE_S
        self._port.unasked.clear()

    async def _wait_frame(self, timeout_s: float) -> tuple[float, Any] | None:
        """The next frame with its arrival time, or None after ``timeout_s``."""
        port = self._port
        assert port is not None
        if not port.frames:
            port.arrived.clear()
            lost = asyncio.create_task(port.lost.wait())
            arrived = asyncio.create_task(port.arrived.wait())
            try:
                await asyncio.wait(
                    {lost, arrived}, timeout=timeout_s, return_when="FIRST_COMPLETED"
                )
            finally:
                for t in (lost, arrived):
                    t.cancel()
            if port.lost.is_set():
                raise _PortLost("the port went away")
        return port.frames.popleft() if port.frames else None

    async def _drain(self) -> None:
        """Throw away frames already queued (said while warming up)."""
        assert self._port is not None
        self.stats.warmup_frames_discarded += len(self._port.frames)
        self._port.frames.clear()

    def _flush(self) -> None:
        """Empty the input before a request: queued frames (stale, counted), a partial frame
        and whatever the kernel holds (so no frame that began before the request completes)."""
        port = self._port
        assert port is not None
        self.stats.stale_frames += sum(1 for _, f in port.frames if port.is_data(f))
        port.frames.clear()
        ser = getattr(port.transport, "serial", None)
        if ser is None:
            return
        try:
            held = ser.in_waiting
            ser.reset_input_buffer()
        except (OSError, serial.SerialException, termios.error) as exc:
            raise _PortLost(f"cannot flush the input: {exc}") from exc
        if held:  # the rest of a partial frame was in there: it can never complete now
            self.stats.flushed_bytes += held + port.decoder.clear()

    async def _set_awake(self, awake: bool) -> bool:
        """Wake or sleep the sensor; True if a command was sent."""
        if self._awake == awake:
            return False
        self._send(self.proto.wake() if awake else self.proto.sleep())
        if awake:
            self.stats.wakes += 1
        self._awake = awake
        await asyncio.sleep(0.05)  # its acknowledgement (if any) is not a sample
        return True

    async def _session(self) -> None:
        await self._open()
        self._backoff.succeeded()
        loop = asyncio.get_running_loop()
        await self._set_awake(True)
        self._send_mode()
        await asyncio.sleep(0.1)
        await self._drain()
        next_t = loop.time() + self.warmup_s  # the first sample after the fan is at speed
        while True:
            if self.duty_cycling:
                await self._sleep_until(next_t - self.warmup_s)
                self._flush()  # anything it said while it should have slept is stale
                streaming = self._check_passive()
                if await self._set_awake(True) and not streaming:
                    self._send_mode()  # in case waking up brought back its default mode
                await self._sleep_until(next_t)
                await self._drain()  # said while the fan spun up: not a sample
            else:
                await self._sleep_until(next_t)
            self.stats.polls += 1
            sample = await self._sample()
            if self.duty_cycling:
                await self._set_awake(False)
            await self._emit(sample)
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

    def _mode_fault(self, what: str) -> None:
        """The sensor is in the wrong reporting mode: send the mode command again; count it,
        log it once (then DEBUG while it lasts)."""
        self.stats.mode_resets += 1
        self._send_mode()
        if self._wrong_mode:
            log.debug("sensor %s still %s; mode command sent again", self.device.id, what)
            return
        self._wrong_mode = True
        log.warning(
            "sensor %s %s (back in its power-on mode after a power blip?): sent the %s-mode "
            "command again; frames older than a request are discarded and counted as stale",
            self.device.id,
            what,
            self.device.mode,
        )

    def _check_passive(self) -> bool:
        """In passive mode: True (and the mode command sent again) if the sensor streams."""
        port = self._port
        assert port is not None
        unasked = port.unasked_lately(time.monotonic())
        if unasked >= 2:
            self._mode_fault("sends frames without being asked")
            return True
        if unasked == 0:
            self._mode_kept()
        return False

    def _mode_kept(self) -> None:
        if self._wrong_mode:
            self._wrong_mode = False
            log.info("sensor %s keeps %s mode again", self.device.id, self.device.mode)

    async def _sample(self) -> tuple[float, dict[str, Any]] | None:
        """One sample and the time its frame arrived: the answer to a read request (passive),
        or the newest frame streamed since the last sample (active)."""
        if self.device.mode == "active":
            return await self._sample_active()
        port = self._port
        assert port is not None
        self._check_passive()
        for _ in range(self.device.retries + 1):
            self._flush()
            port.asked = True
            try:
                self._send(self.proto.read())
                asked = time.monotonic()
                got = await self._answer(asked, asked + self.device.timeout_ms / 1000.0)
            finally:
                port.asked = False
            if got is not None:
                return got
        self._timed_out()
        return None

    async def _answer(self, asked: float, deadline: float) -> tuple[float, dict[str, Any]] | None:
        """The first data frame that arrived after the request could have been answered."""
        earliest = asked + 0.9 * self._answer_wire_s  # 10 % for the clocks' granularity
        while (left := deadline - time.monotonic()) > 0:
            item = await self._wait_frame(left)
            if item is None:
                return None
            arrived, frame = item
            values = self.proto.values(frame)
            if values is None:
                continue  # an acknowledgement or a reply, not a sample
            if arrived < earliest:
                self.stats.stale_frames += 1  # it began before the request reached the sensor
                continue
            return arrived, values
        return None

    async def _sample_active(self) -> tuple[float, dict[str, Any]] | None:
        port = self._port
        assert port is not None
        latest: tuple[float, dict[str, Any]] | None = None
        while port.frames:
            arrived, frame = port.frames.popleft()
            values = self.proto.values(frame)
            if values is not None:
                latest = (arrived, values)
        if latest is None:
            now = time.monotonic()
            latest = await self._answer(now, now + self.device.timeout_ms / 1000.0)
        if latest is not None:
            self._mode_kept()
            return latest
        self._timed_out()
        self._mode_fault("streams nothing in active mode")
        return None

    def _timed_out(self) -> None:
        self.stats.timeouts += 1
        self.stats.count("SensorTimeout")

    async def _emit(self, sample: tuple[float, dict[str, Any]] | None) -> None:
        readings: list[Reading] = []
        stamp = self.clock.stamp()
        if sample is not None:
            arrived, values = sample
            # The value's time is when its frame arrived, not when we got round to it.
            age_ms = max(0, round((time.monotonic() - arrived) * 1000))
            at = dataclasses.replace(
                stamp, ts_ms=stamp.ts_ms - age_ms, boot_ms=stamp.boot_ms - age_ms
            )
            self.stats.samples += 1
            readings = [at.reading(self.device.id, p, values[p]) for p in self.points]
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
            self.status_since = time.time()
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
