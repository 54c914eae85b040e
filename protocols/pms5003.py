"""Plantower PMS5003 (and PMS1003 / 7003 / A003) UART protocol: frames in, commands out. No I/O.

Reference: ../shared/reference/device-protocols.md §2.1. 9600 8N1. The sensor sends 32-byte data
frames (``42 4D``, length 28, thirteen big-endian uint16 fields, a 16-bit sum of bytes 0-29) by
itself in active mode, or one per read command in passive mode; mode and sleep commands are
answered with an 8-byte ack (``42 4D 00 04 CMD DATA`` + sum), wake is not acknowledged.

:class:`PmsDecoder` is incremental: feed it whatever the port delivered, get whole frames back.
After a bad checksum or a length it does not know it drops **one** byte and searches again (a real
frame can start inside a damaged one), keeps a trailing partial frame for the next read, and holds
at most ``MAX_BUFFER`` bytes. It never raises on input; what it skipped is counted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ACTIVE",
    "MAX_BUFFER",
    "PASSIVE",
    "READ",
    "SLEEP",
    "WAKE",
    "PmsAck",
    "PmsDecoder",
    "PmsError",
    "PmsFrame",
    "command",
    "decode_command",
    "decode_frame",
    "encode_ack",
    "encode_frame",
]

START = b"BM"
DATA_LENGTH, ACK_LENGTH = 28, 4
MAX_BUFFER = 1024

# (command byte, data word) of the host commands
PASSIVE = (0xE1, 0)
ACTIVE = (0xE1, 1)
READ = (0xE2, 0)
SLEEP = (0xE4, 0)
WAKE = (0xE4, 1)


class PmsError(ValueError):
    """Bytes that are not a valid PMS5003 frame."""


@dataclass(frozen=True, slots=True)
class PmsFrame:
    """One data frame. Concentrations in µg/m³; counts per 0.1 L of air above the size."""

    pm1_0_cf1: int
    pm2_5_cf1: int
    pm10_cf1: int
    pm1_0: int  # atmospheric environment: what to report for ambient air
    pm2_5: int
    pm10: int
    n0_3: int
    n0_5: int
    n1_0: int
    n2_5: int
    n5_0: int
    n10: int
    version: int
    error: int


@dataclass(frozen=True, slots=True)
class PmsAck:
    command: int
    data: int


def _sum(b: bytes) -> int:
    return sum(b) & 0xFFFF


def command(cmd: tuple[int, int]) -> bytes:
    """A 7-byte host command: ``42 4D CMD DATAH DATAL`` + 16-bit sum of those five bytes."""
    c, data = cmd
    body = START + struct.pack(">BH", c, data)
    return body + struct.pack(">H", _sum(body))


def decode_command(raw: bytes) -> tuple[int, int]:
    """(command byte, data word) of a 7-byte host command; :class:`PmsError` if it is not one."""
    if len(raw) != 7 or raw[:2] != START:
        raise PmsError("not a 7-byte 42 4D command")
    if _sum(raw[:5]) != struct.unpack(">H", raw[5:7])[0]:
        raise PmsError("command checksum does not match")
    return raw[2], struct.unpack(">H", raw[3:5])[0]


def encode_frame(f: PmsFrame) -> bytes:
    fields = (
        f.pm1_0_cf1, f.pm2_5_cf1, f.pm10_cf1, f.pm1_0, f.pm2_5, f.pm10,
        f.n0_3, f.n0_5, f.n1_0, f.n2_5, f.n5_0, f.n10,
    )  # fmt: skip
    body = START + struct.pack(">H12HBB", DATA_LENGTH, *fields, f.version, f.error)
    return body + struct.pack(">H", _sum(body))


def encode_ack(cmd: int, data: int) -> bytes:
    body = START + struct.pack(">HBB", ACK_LENGTH, cmd, data)
    return body + struct.pack(">H", _sum(body))


def decode_frame(raw: bytes) -> PmsFrame | PmsAck:
    """One whole frame (data or ack); :class:`PmsError` if it is not one."""
    if len(raw) < 8 or raw[:2] != START:
        raise PmsError("does not start with 42 4D")
    (length,) = struct.unpack(">H", raw[2:4])
    if length not in (DATA_LENGTH, ACK_LENGTH):
        raise PmsError(f"unknown frame length {length}")
    if len(raw) != 4 + length:
        raise PmsError(f"frame of {len(raw)} bytes, length field says {4 + length}")
    (chk,) = struct.unpack(">H", raw[-2:])
    if _sum(raw[:-2]) != chk:
        raise PmsError(f"checksum {chk:#06x}, bytes sum to {_sum(raw[:-2]):#06x}")
    if length == ACK_LENGTH:
        return PmsAck(raw[4], raw[5])
    values = struct.unpack(">12HBB", raw[4:30])
    return PmsFrame(*values)


class PmsDecoder:
    """Incremental decoder; ``bad_frames`` and ``skipped_bytes`` count what was thrown away."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.bad_frames = 0
        self.skipped_bytes = 0

    def clear(self) -> int:
        """Forget a partial frame held for the next feed (the caller flushed the input, so its
        rest will never come). Returns the bytes dropped; they are not counted as skipped."""
        n = len(self._buf)
        self._buf.clear()
        return n

    def feed(self, data: bytes) -> list[PmsFrame | PmsAck]:
        buf = self._buf
        buf += data
        out: list[PmsFrame | PmsAck] = []
        while True:
            at = buf.find(START)
            if at < 0:
                # keep a trailing 0x42: it may be the first half of the next start
                keep = 1 if buf[-1:] == START[:1] else 0
                self.skipped_bytes += len(buf) - keep
                del buf[: len(buf) - keep]
                break
            if at:
                self.skipped_bytes += at
                del buf[:at]
            if len(buf) < 4:
                break
            (length,) = struct.unpack(">H", buf[2:4])
            if length not in (DATA_LENGTH, ACK_LENGTH):
                self.bad_frames += 1
                self.skipped_bytes += 1
                del buf[:1]
                continue
            if len(buf) < 4 + length:
                break
            try:
                out.append(decode_frame(bytes(buf[: 4 + length])))
            except PmsError:
                self.bad_frames += 1
                self.skipped_bytes += 1
                del buf[:1]
                continue
            self.frames += 1
            del buf[: 4 + length]
        if len(buf) > MAX_BUFFER:
            self.skipped_bytes += len(buf) - 64
            del buf[:-64]
        return out
