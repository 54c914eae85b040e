"""Modbus frames: PDUs for the function codes field devices use, TCP (MBAP) and RTU framing. No I/O.

Bytes in, frames out, for both sides of a link: the simulators' servers parse requests and build
responses; a master checks every response against the request it sent (unit id, function code,
byte count, echo, CRC), so a stale or stray frame on a shared RS-485 line is never taken for the
answer. Modbus Application Protocol v1.1b3 and Modbus over Serial Line v1.02 are the references.

Function codes: 01 read coils, 02 read discrete inputs, 03 read holding registers, 04 read input
registers, 05 write single coil, 06 write single register, 15 write multiple coils, 16 write
multiple registers. Anything else gets exception 01 from a server.

    RTU ADU   unit(1) PDU CRC-16(2, little-endian, poly 0xA001, init 0xFFFF)
    TCP ADU   transaction(2) protocol=0(2) length(2, unit + PDU) unit(1) PDU
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from protocols.modbus import MAX_READ_REGISTERS

__all__ = [
    "MAX_READ_BITS",
    "MAX_WRITE_BITS",
    "MAX_WRITE_REGISTERS",
    "ExceptionCode",
    "FrameError",
    "Function",
    "LineTiming",
    "MbapStream",
    "Request",
    "RequestError",
    "Response",
    "crc16",
    "decode_request",
    "decode_response",
    "decode_rtu",
    "encode_exception",
    "encode_mbap",
    "encode_request",
    "encode_response",
    "encode_rtu",
    "read_frame_sizes",
    "rtu_request_length",
    "rtu_response_length",
]

MAX_READ_BITS = 2000
MAX_WRITE_BITS = 1968
MAX_WRITE_REGISTERS = 123
MAX_PDU = 253


class Function(IntEnum):
    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_COILS = 15
    WRITE_MULTIPLE_REGISTERS = 16


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SERVER_DEVICE_FAILURE = 4


_BIT_READS = (Function.READ_COILS, Function.READ_DISCRETE_INPUTS)
_REG_READS = (Function.READ_HOLDING_REGISTERS, Function.READ_INPUT_REGISTERS)


class FrameError(ValueError):
    """The bytes are not a valid frame (bad CRC, length, echo, unit or function code)."""


class RequestError(FrameError):
    """A server cannot serve this request PDU; ``code`` is the exception to answer with."""

    def __init__(self, message: str, function: int, code: ExceptionCode):
        self.function, self.code = function, code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Request:
    """One request. Reads: ``count`` items from ``address``. Writes: ``values`` from ``address``
    (bools for coils, 16-bit words for registers); ``count`` is their number."""

    function: Function
    address: int
    count: int
    values: tuple[int, ...] = ()

    @property
    def is_read(self) -> bool:
        return self.function <= 4

    @property
    def is_bits(self) -> bool:
        return self.function in (1, 2, 5, 15)


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response: read values (bools or words), or a write's echo, or an exception."""

    function: Function
    values: tuple[int, ...] = ()
    exception: int | None = None


# --------------------------------------------------------------------------- bits


def _pack_bits(bits: tuple[int, ...] | list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unpack_bits(raw: bytes, count: int) -> tuple[bool, ...]:
    return tuple(bool(raw[i // 8] >> (i % 8) & 1) for i in range(count))


# --------------------------------------------------------------------------- PDU


def encode_request(req: Request) -> bytes:
    """The request PDU (function code first). Raises ValueError for an impossible request."""
    f, a, n = Function(req.function), req.address, req.count
    if not 0 <= a <= 0xFFFF:
        raise ValueError(f"address {a} out of range")
    if f in _BIT_READS or f in _REG_READS:
        limit = MAX_READ_BITS if f in _BIT_READS else MAX_READ_REGISTERS
        if not 1 <= n <= limit:
            raise ValueError(f"function {f:d} count {n} out of range 1..{limit}")
        if a + n > 0x10000:
            raise ValueError(
                f"function {f:d} reading {n} from address {a} runs past the last address 65535"
            )
        return struct.pack(">BHH", f, a, n)
    if f is Function.WRITE_SINGLE_COIL:
        (v,) = req.values
        return struct.pack(">BHH", f, a, 0xFF00 if v else 0x0000)
    if f is Function.WRITE_SINGLE_REGISTER:
        (v,) = req.values
        return struct.pack(">BHH", f, a, v)
    if f is Function.WRITE_MULTIPLE_COILS:
        n = len(req.values)
        if not 1 <= n <= MAX_WRITE_BITS or a + n > 0x10000:
            raise ValueError(f"coil write count {n} out of range 1..{MAX_WRITE_BITS}")
        raw = _pack_bits(req.values)
        return struct.pack(">BHHB", f, a, n, len(raw)) + raw
    n = len(req.values)  # WRITE_MULTIPLE_REGISTERS
    if not 1 <= n <= MAX_WRITE_REGISTERS or a + n > 0x10000:
        raise ValueError(f"register write count {n} out of range 1..{MAX_WRITE_REGISTERS}")
    return struct.pack(f">BHHB{n}H", f, a, n, 2 * n, *req.values)


def decode_request(pdu: bytes) -> Request:
    """Parse a request PDU as a server does; raise :class:`RequestError` with the exception
    code to answer (01 unknown function, 03 bad count or length), or FrameError if empty."""
    if not pdu:
        raise FrameError("empty PDU")
    fc = pdu[0]
    try:
        f = Function(fc)
    except ValueError:
        raise RequestError(
            f"function {fc} not supported", fc, ExceptionCode.ILLEGAL_FUNCTION
        ) from None
    bad = ExceptionCode.ILLEGAL_DATA_VALUE
    if f in _BIT_READS or f in _REG_READS or f in (5, 6):
        if len(pdu) != 5:
            raise RequestError(f"function {fc} needs a 5-byte PDU, got {len(pdu)}", fc, bad)
        a, n = struct.unpack(">HH", pdu[1:5])
        if f in _BIT_READS or f in _REG_READS:
            limit = MAX_READ_BITS if f in _BIT_READS else MAX_READ_REGISTERS
            if not 1 <= n <= limit:
                raise RequestError(f"count {n} out of range 1..{limit}", fc, bad)
            if a + n > 0x10000:
                raise RequestError(
                    "request runs past address 0xFFFF", fc, ExceptionCode.ILLEGAL_DATA_ADDRESS
                )
            return Request(f, a, n)
        if f is Function.WRITE_SINGLE_COIL:
            if n not in (0x0000, 0xFF00):
                raise RequestError(f"coil value {n:#06x} is neither 0x0000 nor 0xFF00", fc, bad)
            return Request(f, a, 1, (n == 0xFF00,))
        return Request(f, a, 1, (n,))
    if len(pdu) < 6:
        raise RequestError(f"function {fc} PDU too short ({len(pdu)} bytes)", fc, bad)
    a, n, nbytes = struct.unpack(">HHB", pdu[1:6])
    data = pdu[6:]
    if f is Function.WRITE_MULTIPLE_COILS:
        if not 1 <= n <= MAX_WRITE_BITS or nbytes != (n + 7) // 8 or len(data) != nbytes:
            raise RequestError(f"coil write of {n} bits with {nbytes} data bytes", fc, bad)
        values: tuple[int, ...] = _unpack_bits(data, n)
    else:
        if not 1 <= n <= MAX_WRITE_REGISTERS or nbytes != 2 * n or len(data) != nbytes:
            raise RequestError(f"register write of {n} words with {nbytes} data bytes", fc, bad)
        values = struct.unpack(f">{n}H", data)
    if a + n > 0x10000:
        raise RequestError("write runs past address 0xFFFF", fc, ExceptionCode.ILLEGAL_DATA_ADDRESS)
    return Request(f, a, n, values)


def encode_response(req: Request, values: list[int] | tuple[int, ...] = ()) -> bytes:
    """A server's normal response PDU: read values, or the echo a write gets."""
    f = req.function
    if f in _BIT_READS:
        if len(values) != req.count:
            raise ValueError(f"{req.count} bits asked, {len(values)} given")
        raw = _pack_bits(values)
        return struct.pack(">BB", f, len(raw)) + raw
    if f in _REG_READS:
        if len(values) != req.count:
            raise ValueError(f"{req.count} registers asked, {len(values)} given")
        return struct.pack(f">BB{req.count}H", f, 2 * req.count, *values)
    return encode_request(req)[:5]  # writes echo function, address and value / quantity


def encode_exception(function: int, code: int) -> bytes:
    return bytes([(function & 0x7F) | 0x80, code])


def decode_response(req: Request, pdu: bytes) -> Response:
    """Check a response PDU against the request it answers; raise FrameError if it does not."""
    if len(pdu) < 2:
        raise FrameError(f"response PDU of {len(pdu)} bytes")
    fc = pdu[0]
    if fc == req.function | 0x80:
        if len(pdu) != 2:
            raise FrameError(f"exception response of {len(pdu)} bytes")
        return Response(req.function, exception=pdu[1])
    if fc != req.function:
        raise FrameError(f"response function {fc} to a request with function {req.function:d}")
    f = req.function
    if f in _BIT_READS or f in _REG_READS:
        want = (req.count + 7) // 8 if f in _BIT_READS else 2 * req.count
        if pdu[1] != want or len(pdu) != 2 + want:
            raise FrameError(f"byte count {pdu[1]} (frame {len(pdu) - 2}), expected {want}")
        data = pdu[2:]
        if f in _BIT_READS:
            return Response(f, _unpack_bits(data, req.count))
        return Response(f, struct.unpack(f">{req.count}H", data))
    echo = encode_request(req)[:5]
    if pdu != echo:
        raise FrameError(f"write echo {pdu.hex()} does not match the request {echo.hex()}")
    return Response(f)


# --------------------------------------------------------------------------- TCP (MBAP)


def encode_mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


class MbapStream:
    """Splits a TCP byte stream into (transaction, unit, PDU). A header that cannot be a Modbus
    frame (protocol id not 0, length out of range) raises FrameError: close the connection, as
    there is no way to find the next frame boundary."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 7:
            tid, proto, length, unit = struct.unpack(">HHHB", self._buf[:7])
            if proto != 0 or not 2 <= length <= MAX_PDU + 1:
                raise FrameError(f"not a Modbus TCP header: protocol {proto}, length {length}")
            end = 6 + length
            if len(self._buf) < end:
                break
            out.append((tid, unit, bytes(self._buf[7:end])))
            del self._buf[:end]
        return out


# --------------------------------------------------------------------------- RTU


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF); goes on the wire low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def encode_rtu(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + struct.pack("<H", crc16(body))


def decode_rtu(frame: bytes) -> tuple[int, bytes]:
    """(unit, PDU) of a whole RTU frame; FrameError on a short frame or a bad CRC."""
    if len(frame) < 4:
        raise FrameError(f"RTU frame of {len(frame)} bytes")
    (crc,) = struct.unpack("<H", frame[-2:])
    if crc16(frame[:-2]) != crc:
        raise FrameError(f"CRC {crc:#06x} should be {crc16(frame[:-2]):#06x}")
    return frame[0], bytes(frame[1:-2])


def rtu_request_length(buf: bytes) -> int | None:
    """Length of the RTU request frame starting at ``buf[0]``, None until enough bytes are in;
    0 for a function code a server does not know (its length cannot be known)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    return 0


def rtu_response_length(buf: bytes, req: Request) -> int | None:
    """Length of an RTU response to ``req`` starting at ``buf[0]``, None until enough bytes are
    in; the frame may still turn out to be garbage (the CRC decides)."""
    if len(buf) < 2:
        return None
    if buf[1] == req.function | 0x80:
        return 5
    if req.is_read:
        return None if len(buf) < 3 else 5 + buf[2]
    return 8


# --------------------------------------------------------------------------- RTU line timing


@dataclass(frozen=True, slots=True)
class LineTiming:
    """Wire timing of an RS-485 line (Modbus over Serial Line v1.02 §2.5.1.1).

    A character is a start bit, 8 data bits, a parity bit unless parity is "N", and the stop
    bits. Frames are separated by at least 3.5 characters of silence (t3.5), fixed at 1.75 ms
    above 19200 baud.
    """

    baudrate: int = 9600
    parity: str = "N"  # N, E or O
    stopbits: int = 1

    def __post_init__(self) -> None:
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stop bits must be 1 or 2, not {self.stopbits!r}")
        if not 300 <= self.baudrate <= 1_000_000:
            raise ValueError(f"baud rate {self.baudrate} out of range")

    @property
    def bits_per_char(self) -> int:
        return 1 + 8 + (self.parity != "N") + self.stopbits

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def t35_s(self) -> float:
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_s

    def wire_s(self, nbytes: int) -> float:
        return nbytes * self.char_s

    def transaction_s(self, request_bytes: int, response_bytes: int, turnaround_s: float) -> float:
        """One request and its response, with the silences the line needs: the request, t3.5
        (the slave sees the frame end), its turnaround, the response, and t3.5 before the
        master may send again."""
        return self.wire_s(request_bytes + response_bytes) + 2 * self.t35_s + turnaround_s


def read_frame_sizes(function: int, count: int) -> tuple[int, int]:
    """(request, response) RTU frame bytes of a read of ``count`` items (registers or bits)."""
    data = (count + 7) // 8 if function in (1, 2) else 2 * count
    return 8, 5 + data
