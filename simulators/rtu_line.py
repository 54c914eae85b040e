"""A simulated RS-485 line: Modbus RTU slaves behind a pseudo-terminal, paced like the real wire.

The gateway opens :attr:`RtuSimLine.path` (the pty's slave side) as it would open /dev/ttyUSB0.
A pty moves bytes instantly and ignores the baud rate, so the line keeps wire time itself
(../shared/reference/device-protocols.md §6): a request counts as received one request-wire-time
after its bytes arrive; the slave answers after t3.5 (it sees the frame end) plus its turnaround
(default 20 ms, with jitter); the answer is written in small chunks at the character rate of the
configured baud and framing, so its last byte lands when it would on a real line. Throughput
figures measured against this line are therefore the wire's, not the pty's.

Faults on demand, from tests or ``edge sim --rtu``, on top of :class:`ModbusSim`'s (silent
units, a forced exception code per unit):

* ``corrupt_crc_units``: answers carry a wrong CRC;
* ``garbage_bytes``: that many random bytes go on the line before every answer;
* ``unit_turnaround_s``: a slow device;
* ``swapped_units``: 32-bit values with their two words swapped (a device set to the other word
  order).

Broadcast writes (unit 0, FC 5/6/15/16) are applied by every unit on the line and answered by
none; broadcast reads are ignored (Modbus over Serial Line V1.02 §2.1). ``no_broadcast_units``
makes a unit ignore them, as Eastron documents for its meters (reference §1.1). Frames with a
bad CRC are ignored, as a slave does.

The port is a :class:`~simulators.serial_pty.PtyPort`: when the master closes it, an answer it
had not read is discarded, and bytes sent while nobody holds the port open are lost, as with a
real USB-RS-485 adapter (``line.port.discarded_bytes`` / ``lost_bytes`` count them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import termios
import time
from dataclasses import dataclass, field

from protocols.modbus_frame import (
    FrameError,
    LineTiming,
    decode_rtu,
    encode_rtu,
    rtu_request_length,
)
from simulators.modbus_server import ModbusSim, SimUnit
from simulators.serial_pty import PtyPort, write_paced

__all__ = ["RtuSimLine", "serve_rtu", "write_paced"]

log = logging.getLogger(__name__)


@dataclass
class RtuSimLine(ModbusSim):
    timing: LineTiming = field(default_factory=LineTiming)
    turnaround_s: float = 0.020
    jitter_s: float = 0.002
    unit_turnaround_s: dict[int, float] = field(default_factory=dict)
    corrupt_crc_units: set[int] = field(default_factory=set)
    swapped_units: set[int] = field(default_factory=set)
    garbage_bytes: int = 0
    seed: int = 0
    path: str = ""
    answered: int = 0
    ignored_frames: int = 0
    mismatched_frames: int = 0
    _port: PtyPort | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _last_rx: float = 0.0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def unknown_unit(self, function: int) -> bytes | None:
        return None  # nobody on the line has that address: silence

    async def start(self) -> RtuSimLine:
        self._rng = random.Random(self.seed)
        self._port = PtyPort(self._on_data)
        self.path = self._port.path
        self._task = asyncio.create_task(self._serve(), name=f"rtu-sim {self.path}")
        return self

    @property
    def port(self) -> PtyPort:
        """The pty the master opens (opens, closes, bytes discarded at a close)."""
        assert self._port is not None, "start() the line first"
        return self._port

    def _on_data(self, data: bytes) -> None:
        self._buf += data
        self._last_rx = time.monotonic()
        self._arrived.set()

    async def _next_frame(self) -> tuple[bytes, float]:
        """The next request frame and the time its last byte arrived."""
        t35 = self.timing.t35_s
        while True:
            if self._buf:
                n = rtu_request_length(bytes(self._buf[:7]))
                if n and len(self._buf) >= n:
                    frame = bytes(self._buf[:n])
                    del self._buf[:n]
                    return frame, self._last_rx
                silent = time.monotonic() - self._last_rx
                if silent >= t35 + 0.05:
                    # A frame that ended by silence without making sense: a slave drops it.
                    if n == 0 and len(self._buf) >= 4:
                        frame = bytes(self._buf)
                        self._buf.clear()
                        return frame, self._last_rx
                    self.ignored_frames += 1
                    self._buf.clear()
                    continue
                wait = t35 + 0.05 - silent
            else:
                wait = None
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._arrived.wait()

    def port_matches(self) -> bool:
        """Whether the master opened the port with this line's speed and framing.

        A slave on a real line hears only noise at the wrong baud rate or framing. On a pty the
        master's termios settings are visible: the speed, the stop bits and odd parity are kept;
        Linux drops PARENB on a pty, so even parity cannot be told from none here."""
        try:
            attrs = termios.tcgetattr(self.port.slave)
        except termios.error:
            return True
        speed = getattr(termios, f"B{self.timing.baudrate}", None)
        cflag = attrs[2]
        return (
            (speed is None or attrs[4] == speed)
            and bool(cflag & termios.CSTOPB) == (self.timing.stopbits == 2)
            and bool(cflag & termios.PARODD) == (self.timing.parity == "O")
        )

    async def _serve(self) -> None:
        while True:
            frame, arrived = await self._next_frame()
            if not self.port_matches():
                self.mismatched_frames += 1  # noise to the slaves: nobody answers
                continue
            try:
                unit, pdu = decode_rtu(frame)
            except FrameError:
                self.ignored_frames += 1
                continue
            if unit == 0:
                self.broadcast(pdu)  # applied by every unit, answered by none
                continue
            reply = self.answer(unit, pdu)
            if reply is None:
                continue
            if unit in self.swapped_units and reply[0] in (3, 4) and len(reply) >= 6:
                data = bytearray(reply[2:])
                for i in range(0, len(data) - 3, 4):
                    data[i : i + 4] = data[i + 2 : i + 4] + data[i : i + 2]
                reply = reply[:2] + bytes(data)
            out = encode_rtu(unit, reply)
            if unit in self.corrupt_crc_units:
                out = out[:-1] + bytes([out[-1] ^ 0x5A])
            if self.garbage_bytes:
                out = bytes(self._rng.randrange(256) for _ in range(self.garbage_bytes)) + out
            t = self.timing
            turnaround = self.unit_turnaround_s.get(unit, self.turnaround_s)
            turnaround += self._rng.uniform(0, self.jitter_s)
            start = arrived + t.wire_s(len(frame)) + t.t35_s + turnaround
            await self._send_paced(out, start)
            self.answered += 1

    async def _send_paced(self, out: bytes, start: float) -> None:
        await write_paced(self.port, out, start, self.timing)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._port is not None:
            self._port.close()


async def serve_rtu(
    units: list[SimUnit], timing: LineTiming | None = None, **options: object
) -> RtuSimLine:
    """Start a simulated RTU line with ``units`` on a new pty; open ``line.path`` to talk to it."""
    line = RtuSimLine({u.unit_id: u for u in units}, timing=timing or LineTiming(), **options)  # type: ignore[arg-type]
    return await line.start()
