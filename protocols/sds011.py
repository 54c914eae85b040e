"""Nova Fitness SDS011 (also SDS018 / SDS021) UART protocol: frames in, commands out. No I/O.

Reference: ../shared/reference/device-protocols.md §2.2. 9600 8N1. The sensor sends 10-byte
frames: ``AA``, a command id (``C0`` measurement, ``C5`` reply to a command), six data bytes, a
checksum (sum of the six data bytes, low byte) and ``AB``. PM2.5 and PM10 are little-endian
tenths of µg/m³. Host commands are 19 bytes: ``AA B4``, thirteen data bytes (D1 the
sub-command, D2 0 = query / 1 = set), the device id (``FF FF`` = any), a checksum over D1..ID and
``AB``.

:class:`SdsDecoder` is incremental, like the PMS5003 one: it resynchronises one byte at a time
after anything that is not a valid frame, counts what it skipped and never raises on input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "MAX_BUFFER",
    "SdsDecoder",
    "SdsError",
    "SdsReading",
    "SdsReply",
    "decode_command",
    "decode_frame",
    "encode_command",
    "encode_reading",
    "encode_reply",
    "query_data",
    "set_reporting_mode",
    "set_sleep",
    "set_working_period",
]

HEAD, TAIL = 0xAA, 0xAB
MEASUREMENT, REPLY, COMMAND = 0xC0, 0xC5, 0xB4
ANY = 0xFFFF
MAX_BUFFER = 1024

# sub-commands (D1)
REPORTING_MODE, QUERY_DATA, DEVICE_ID, SLEEP_WORK, FIRMWARE, WORKING_PERIOD = 2, 4, 5, 6, 7, 8


class SdsError(ValueError):
    """Bytes that are not a valid SDS011 frame or command."""


@dataclass(frozen=True, slots=True)
class SdsReading:
    pm2_5: float  # µg/m³
    pm10: float
    device_id: int


@dataclass(frozen=True, slots=True)
class SdsReply:
    """A ``C5`` reply: the sub-command it answers and its data bytes (D2..D4)."""

    subcommand: int
    data: tuple[int, int, int]
    device_id: int


def encode_command(subcommand: int, data: bytes = b"", device_id: int = ANY) -> bytes:
    body = bytes([subcommand]) + data.ljust(12, b"\0") + struct.pack("<H", device_id)
    if len(body) != 15:
        raise ValueError("an SDS011 command carries at most 12 data bytes after the sub-command")
    return bytes([HEAD, COMMAND]) + body + bytes([sum(body) & 0xFF, TAIL])


def decode_command(raw: bytes) -> tuple[int, bytes, int]:
    """(sub-command, the 12 data bytes, device id) of a 19-byte host command."""
    if len(raw) != 19 or raw[0] != HEAD or raw[1] != COMMAND or raw[18] != TAIL:
        raise SdsError("not a 19-byte AA B4 ... AB command")
    body = raw[2:17]
    if sum(body) & 0xFF != raw[17]:
        raise SdsError(f"command checksum {raw[17]:#04x}, bytes sum to {sum(body) & 0xFF:#04x}")
    return body[0], bytes(body[1:13]), struct.unpack("<H", body[13:15])[0]


def set_sleep(sleep: bool, device_id: int = ANY) -> bytes:
    return encode_command(SLEEP_WORK, bytes([1, 0 if sleep else 1]), device_id)


def set_reporting_mode(query: bool, device_id: int = ANY) -> bytes:
    """query=True: report only when asked (passive); False: report every second (active)."""
    return encode_command(REPORTING_MODE, bytes([1, 1 if query else 0]), device_id)


def query_data(device_id: int = ANY) -> bytes:
    return encode_command(QUERY_DATA, b"", device_id)


def set_working_period(minutes: int, device_id: int = ANY) -> bytes:
    """0: continuous; 1..30: work 30 s, then sleep until the period ends (the sensor's cycle)."""
    if not 0 <= minutes <= 30:
        raise ValueError("working period is 0..30 minutes")
    return encode_command(WORKING_PERIOD, bytes([1, minutes]), device_id)


def _frame(cmd: int, data: bytes) -> bytes:
    return bytes([HEAD, cmd]) + data + bytes([sum(data) & 0xFF, TAIL])


def encode_reading(r: SdsReading) -> bytes:
    pm25, pm10 = round(r.pm2_5 * 10), round(r.pm10 * 10)
    return _frame(MEASUREMENT, struct.pack("<HHH", pm25, pm10, r.device_id))


def encode_reply(subcommand: int, data: tuple[int, int, int], device_id: int) -> bytes:
    return _frame(REPLY, bytes([subcommand, *data]) + struct.pack("<H", device_id))


def decode_frame(raw: bytes) -> SdsReading | SdsReply:
    if len(raw) != 10 or raw[0] != HEAD or raw[9] != TAIL:
        raise SdsError("not a 10-byte AA .. AB frame")
    data = raw[2:8]
    if sum(data) & 0xFF != raw[8]:
        raise SdsError(f"checksum {raw[8]:#04x}, bytes sum to {sum(data) & 0xFF:#04x}")
    if raw[1] == MEASUREMENT:
        pm25, pm10, dev = struct.unpack("<HHH", data)
        return SdsReading(pm25 / 10, pm10 / 10, dev)
    if raw[1] == REPLY:
        return SdsReply(data[0], (data[1], data[2], data[3]), struct.unpack("<H", data[4:6])[0])
    raise SdsError(f"unknown command id {raw[1]:#04x}")


class SdsDecoder:
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

    def feed(self, data: bytes) -> list[SdsReading | SdsReply]:
        buf = self._buf
        buf += data
        out: list[SdsReading | SdsReply] = []
        while True:
            at = buf.find(HEAD)
            if at < 0:
                self.skipped_bytes += len(buf)
                buf.clear()
                break
            if at:
                self.skipped_bytes += at
                del buf[:at]
            if len(buf) < 10:
                break
            try:
                out.append(decode_frame(bytes(buf[:10])))
            except SdsError:
                self.bad_frames += 1
                self.skipped_bytes += 1
                del buf[:1]
                continue
            self.frames += 1
            del buf[:10]
        if len(buf) > MAX_BUFFER:
            self.skipped_bytes += len(buf) - 16
            del buf[:-16]
        return out
