"""The parking-meter link, version 1: frames, messages and the canonical bytes a gateway signs.
No I/O. Specification: docs/meter-link-v1.md.

A frame (all integers big-endian except the CRC, which goes low byte first as in Modbus RTU)::

    0  SYNC 0xA5
    1  version << 4 | flags        version 1; flag 0x01: sent by the meter
    2  address                     1..247 (the meter's RS-485 address; a TCP pay station has one)
    3  type                        MsgType
    4  seq (u32)                   uplink: the meter's journal sequence number
                                   POLL / ACK / NAK: the sequence number acknowledged or refused
                                   downlink commands: the gateway's command number
    8  length (u16)                payload bytes, at most MAX_PAYLOAD
    10 payload                     a msgpack array, fields by position (see the message classes)
    .. CRC-16/MODBUS of every byte before it

The gateway is the master on both transports: it sends POLL (whose seq is a cumulative
acknowledgement) and the meter answers with its oldest unacknowledged journal entry, or IDLE.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from protocols.modbus_frame import crc16

__all__ = [
    "FROM_METER",
    "HEADER",
    "MAX_PAYLOAD",
    "SYNC",
    "UPLINK_TYPES",
    "VERSION",
    "CmdNak",
    "Enable",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Idle",
    "Message",
    "MeterStatus",
    "Method",
    "MsgType",
    "Nak",
    "NakReason",
    "Occupancy",
    "PayloadError",
    "Payment",
    "Receipt",
    "SessionEnd",
    "SessionStart",
    "SignedEntry",
    "Tariff",
    "TariffBlock",
    "TimeSync",
    "canonical_bytes",
    "decode_message",
    "decode_tx_message",
    "encode_frame",
    "encode_message",
    "encode_tx_message",
]

SYNC = 0xA5
VERSION = 1
FROM_METER = 0x01
HEADER = struct.Struct(">BBBBIH")  # sync, version|flags, address, type, seq, length
MAX_PAYLOAD = 1024
SIGNING_CONTEXT = b"hanoi-meter-link/1"


class MsgType(IntEnum):
    # gateway -> meter: link control
    POLL = 0x01  # seq: everything up to it is durably committed; send the next entry
    ACK = 0x02  # seq: committed (same effect as POLL, asks for nothing)
    NAK = 0x03  # seq: refused; payload [reason]; the meter keeps the entry
    # meter -> gateway: journal entries (sequenced, exactly once)
    SESSION_START = 0x10
    SESSION_END = 0x11
    PAYMENT = 0x12
    RECEIPT = 0x13
    STATUS = 0x14
    OCCUPANCY = 0x15
    # meter -> gateway: not journaled
    IDLE = 0x1F  # nothing to send; payload [meter clock ms]
    CMD_ACK = 0x20  # seq: the gateway's command number, carried out
    CMD_NAK = 0x21  # seq: the command number, refused; payload [reason]
    # gateway -> meter: commands (seq: the gateway's command number)
    TARIFF = 0x30
    TIME_SYNC = 0x31
    ENABLE = 0x32


UPLINK_TYPES = frozenset(
    {
        MsgType.SESSION_START,
        MsgType.SESSION_END,
        MsgType.PAYMENT,
        MsgType.RECEIPT,
        MsgType.STATUS,
        MsgType.OCCUPANCY,
    }
)


class NakReason(IntEnum):
    CRC = 1  # the frame arrived damaged: send it again
    MALFORMED = 2  # the payload does not decode as its type says
    OUT_OF_WINDOW = 3  # seq is not the next one expected (a gap or a replay far back)
    BUSY = 4  # the gateway cannot store it now (transactions fill its buffer): keep it
    UNKNOWN_TYPE = 5
    BAD_COMMAND = 6  # (meter -> gateway, CMD_NAK) the command cannot be carried out


class Method(IntEnum):
    """How a payment was made (Decree 119/2024 traffic account first)."""

    TRAFFIC_ACCOUNT = 1
    E_WALLET = 2
    BANK_QR = 3
    CARD = 4
    CASH = 5


class FrameError(ValueError):
    """Bytes that are not a valid frame."""


class PayloadError(ValueError):
    """A frame whose payload does not decode as its message type."""


@dataclass(frozen=True, slots=True)
class Frame:
    address: int
    type: int
    seq: int
    payload: bytes = b""
    from_meter: bool = False


def encode_frame(frame: Frame) -> bytes:
    if not 0 <= frame.address <= 255:
        raise FrameError(f"address {frame.address} out of range 0..255")
    if not 0 <= frame.seq <= 0xFFFFFFFF:
        raise FrameError(f"seq {frame.seq} out of range 0..2**32-1")
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(
        SYNC,
        VERSION << 4 | (FROM_METER if frame.from_meter else 0),
        frame.address,
        frame.type,
        frame.seq,
        len(frame.payload),
    )
    body = head + frame.payload
    return body + crc16(body).to_bytes(2, "little")


class FrameDecoder:
    """Frames out of a byte stream (a serial line or a TCP connection), bytes in any chunks.

    Damage is counted, never raised: a bad CRC, an oversize length or a wrong version drops the
    sync byte and the decoder looks for the next one; bytes skipped that way are ``garbage``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.crc_errors = 0
        self.oversize = 0
        self.bad_version = 0
        self.garbage_bytes = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        while True:
            start = buf.find(SYNC)
            if start < 0:
                self.garbage_bytes += len(buf)
                buf.clear()
                break
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < HEADER.size:
                break
            _, vf, addr, mtype, seq, length = HEADER.unpack_from(buf)
            if vf >> 4 != VERSION or vf & 0x0E:
                self.bad_version += 1
                self._skip()
                continue
            if length > MAX_PAYLOAD:
                self.oversize += 1
                self._skip()
                continue
            end = HEADER.size + length + 2
            if len(buf) < end:
                break
            if crc16(bytes(buf[: end - 2])) != int.from_bytes(buf[end - 2 : end], "little"):
                self.crc_errors += 1
                self._skip()
                continue
            out.append(
                Frame(addr, mtype, seq, bytes(buf[HEADER.size : end - 2]), bool(vf & FROM_METER))
            )
            del buf[:end]
        return out

    def _skip(self) -> None:
        self.garbage_bytes += 1
        del self._buf[:1]

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()


# ---------------------------------------------------------------------------------- messages


def _check(cls: type, values: list[Any]) -> None:
    spec = cls.SPEC  # type: ignore[attr-defined]
    if len(values) != len(spec):
        raise PayloadError(f"{cls.__name__}: {len(values)} fields, expected {len(spec)}")
    for (name, kind), v in zip(spec, values, strict=True):
        ok = {
            "str": lambda x: isinstance(x, str) and len(x) <= 64,
            "str?": lambda x: x is None or (isinstance(x, str) and len(x) <= 64),
            "u64": lambda x: isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63,
            "u8": lambda x: isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255,
            "pct": lambda x: isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 100,
            "bool": lambda x: isinstance(x, bool),
            "blocks": _is_blocks,
        }[kind](v)
        if not ok:
            raise PayloadError(f"{cls.__name__}.{name}: {v!r} is not a valid {kind}")


def _is_blocks(x: Any) -> bool:
    return (
        isinstance(x, list)
        and 0 < len(x) <= 32
        and all(
            isinstance(b, list)
            and len(b) == 5
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in b)
            for b in x
        )
    )


class Message:
    """A message body. Each subclass names its type and its fields in order (SPEC)."""

    TYPE: ClassVar[MsgType]
    SPEC: ClassVar[tuple[tuple[str, str], ...]]

    def values(self) -> list[Any]:
        return list(astuple(self))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class SessionStart(Message):
    TYPE: ClassVar[MsgType] = MsgType.SESSION_START
    SPEC: ClassVar = (
        ("session_id", "str"),
        ("zone", "str"),
        ("space", "str?"),
        ("plate", "str"),
        ("vehicle", "str"),  # car / motorbike
        ("credential", "str"),  # rfid / plate / qr
        ("start_ms", "u64"),
    )
    session_id: str
    zone: str
    space: str | None
    plate: str
    vehicle: str
    credential: str
    start_ms: int


@dataclass(frozen=True, slots=True)
class SessionEnd(Message):
    TYPE: ClassVar[MsgType] = MsgType.SESSION_END
    SPEC: ClassVar = (("session_id", "str"), ("end_ms", "u64"))
    session_id: str
    end_ms: int


@dataclass(frozen=True, slots=True)
class Payment(Message):
    TYPE: ClassVar[MsgType] = MsgType.PAYMENT
    SPEC: ClassVar = (
        ("session_id", "str"),
        ("transaction_id", "str"),
        ("amount_vnd", "u64"),
        ("method", "u8"),
        ("authorised_ms", "u64"),
        ("collected_ms", "u64"),
    )
    session_id: str
    transaction_id: str
    amount_vnd: int
    method: int  # Method
    authorised_ms: int
    collected_ms: int


@dataclass(frozen=True, slots=True)
class Receipt(Message):
    """The e-receipt (biên lai điện tử) or e-invoice fields of device-protocols §5.2."""

    TYPE: ClassVar[MsgType] = MsgType.RECEIPT
    SPEC: ClassVar = (
        ("transaction_id", "str"),
        ("doc_type", "str"),  # receipt / invoice
        ("template", "str"),  # mẫu số
        ("series", "str"),  # ký hiệu
        ("number", "u64"),
        ("issued_ms", "u64"),
        ("lookup_code", "str"),  # tax authority code or lookup code
        ("seller_tax_id", "str"),
        ("amount_vnd", "u64"),
        ("vat_vnd", "u64"),
    )
    transaction_id: str
    doc_type: str
    template: str
    series: str
    number: int
    issued_ms: int
    lookup_code: str
    seller_tax_id: str
    amount_vnd: int
    vat_vnd: int


@dataclass(frozen=True, slots=True)
class MeterStatus(Message):
    TYPE: ClassVar[MsgType] = MsgType.STATUS
    SPEC: ClassVar = (
        ("battery_pct", "pct"),
        ("paper_pct", "pct"),
        ("door_open", "bool"),
        ("tamper", "bool"),
        ("clock_ms", "u64"),
    )
    battery_pct: int
    paper_pct: int
    door_open: bool
    tamper: bool
    clock_ms: int


@dataclass(frozen=True, slots=True)
class Occupancy(Message):
    TYPE: ClassVar[MsgType] = MsgType.OCCUPANCY
    SPEC: ClassVar = (("space", "str"), ("occupied", "bool"), ("since_ms", "u64"))
    space: str
    occupied: bool
    since_ms: int


@dataclass(frozen=True, slots=True)
class Idle(Message):
    TYPE: ClassVar[MsgType] = MsgType.IDLE
    SPEC: ClassVar = (("clock_ms", "u64"),)
    clock_ms: int


@dataclass(frozen=True, slots=True)
class TimeSync(Message):
    TYPE: ClassVar[MsgType] = MsgType.TIME_SYNC
    SPEC: ClassVar = (("now_ms", "u64"),)
    now_ms: int


@dataclass(frozen=True, slots=True)
class Enable(Message):
    TYPE: ClassVar[MsgType] = MsgType.ENABLE
    SPEC: ClassVar = (("enabled", "bool"),)
    enabled: bool


@dataclass(frozen=True, slots=True)
class TariffBlock:
    """Price per started block of ``block_min`` minutes, for arrivals from ``from_min`` (minutes
    after local midnight) until the next block's ``from_min``."""

    vehicle: int  # 0 car, 1 motorbike
    from_min: int
    block_min: int
    price_vnd: int
    max_blocks: int  # 0: no cap


@dataclass(frozen=True, slots=True)
class Tariff(Message):
    TYPE: ClassVar[MsgType] = MsgType.TARIFF
    SPEC: ClassVar = (("tariff_id", "u64"), ("blocks", "blocks"))
    tariff_id: int
    blocks: tuple[TariffBlock, ...]

    def values(self) -> list[Any]:
        return [self.tariff_id, [list(astuple(b)) for b in self.blocks]]


@dataclass(frozen=True, slots=True)
class _Reason(Message):
    SPEC: ClassVar = (("reason", "u8"),)
    reason: int


class Nak(_Reason):
    TYPE: ClassVar[MsgType] = MsgType.NAK


class CmdNak(_Reason):
    TYPE: ClassVar[MsgType] = MsgType.CMD_NAK


_BY_TYPE: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        SessionStart,
        SessionEnd,
        Payment,
        Receipt,
        MeterStatus,
        Occupancy,
        Idle,
        TimeSync,
        Enable,
        Tariff,
        Nak,
        CmdNak,
    )
}


def encode_message(msg: Message) -> bytes:
    values = msg.values()
    _check(type(msg), values)
    return msgpack.packb(values, use_bin_type=True)


def decode_message(mtype: int, payload: bytes) -> Message:
    """The message a frame of type ``mtype`` carries; PayloadError if it does not decode."""
    cls = _BY_TYPE.get(mtype)
    if cls is None:
        raise PayloadError(f"type 0x{mtype:02x} carries no message")
    try:
        values = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_PAYLOAD,
            max_bin_len=MAX_PAYLOAD,
            max_array_len=64,
            max_map_len=16,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise PayloadError(f"{cls.__name__}: payload is not msgpack ({exc})") from None
    if not isinstance(values, list):
        raise PayloadError(f"{cls.__name__}: payload is not an array")
    _check(cls, values)
    if cls is Tariff:
        return Tariff(values[0], tuple(TariffBlock(*b) for b in values[1]))
    names = [f.name for f in fields(cls)]
    return cls(**dict(zip(names, values, strict=True)))


def canonical_bytes(meter: str, seq: int, mtype: int, payload: bytes) -> bytes:
    """What a gateway signs for one journal entry: a context string, the meter's id, its
    sequence number, the message type and the payload exactly as the meter sent it."""
    m = meter.encode()
    if not 0 < len(m) < 256:
        raise ValueError(f"meter id {meter!r} must be 1..255 bytes")
    return (
        SIGNING_CONTEXT
        + len(m).to_bytes(1, "big")
        + m
        + seq.to_bytes(4, "big")
        + mtype.to_bytes(1, "big")
        + payload
    )


# ------------------------------------------------------------------ gateway -> platform (MQTT)

TX_VERSION = 1


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """One meter journal entry as the platform receives it: the meter's bytes, and the gateway's
    Ed25519 signature over :func:`canonical_bytes`."""

    meter: str
    seq: int
    type: int
    payload: bytes
    received_ms: int
    sig: bytes

    def canonical(self) -> bytes:
        return canonical_bytes(self.meter, self.seq, self.type, self.payload)


def encode_tx_message(gateway: str, site: str, entries: list[SignedEntry]) -> bytes:
    """The ``.../tx`` message: msgpack ``{"v": 1, "gateway", "site", "entries": [[meter, seq,
    type, payload, received_ms, sig], ...]}``."""
    return msgpack.packb(
        {
            "v": TX_VERSION,
            "gateway": gateway,
            "site": site,
            "entries": [list(astuple(e)) for e in entries],
        },
        use_bin_type=True,
    )


def decode_tx_message(raw: bytes) -> tuple[str, str, list[SignedEntry]]:
    """(gateway, site, entries); PayloadError if the message is not a valid version-1 one."""
    try:
        doc = msgpack.unpackb(raw, raw=False, max_array_len=100_000, max_map_len=16)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise PayloadError(f"tx message is not msgpack ({exc})") from None
    if not isinstance(doc, dict) or doc.get("v") != TX_VERSION:
        raise PayloadError("tx message is not a version-1 map")
    try:
        entries = []
        for e in doc["entries"]:
            meter, seq, mtype, payload, received_ms, sig = e
            if not (
                isinstance(meter, str)
                and isinstance(payload, bytes)
                and isinstance(sig, bytes)
                and all(isinstance(v, int) for v in (seq, mtype, received_ms))
            ):
                raise TypeError(f"entry {e!r:.80} has a field of the wrong type")
            # The ranges the frame and the signature give them (docs/meter-link-v1.md §2, §5):
            # a u32 seq, a one-byte type, a meter id of 1..255 UTF-8 bytes; an int64 of ms.
            if not (0 <= seq < 2**32 and 0 <= mtype < 256 and -(2**63) <= received_ms < 2**63):
                raise ValueError(f"entry {e!r:.80} has a seq, type or time out of range")
            if not 0 < len(meter.encode()) < 256:
                raise ValueError(f"entry {e!r:.80} has a meter id that is not 1..255 UTF-8 bytes")
            entries.append(SignedEntry(meter, seq, mtype, payload, received_ms, sig))
        gateway, site = doc["gateway"], doc["site"]
        if not (isinstance(gateway, str) and isinstance(site, str)):
            raise TypeError("gateway and site must be strings")
        return gateway, site, entries
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"tx message is malformed: {exc}") from None
