"""Modbus register values: data types and byte orders as tables, decode and encode. No I/O.

Modbus sends every register as a 16-bit word, high byte first (Modbus Application Protocol
V1.1b3 §4.2). Nothing in the standard says how a value wider than one register is spread over
several, so devices differ; the four arrangements in use are named, as Telegraf's and EMQX
Neuron's Modbus drivers name them, by where the value's bytes land, A being the most significant
byte of a 32-bit value (A..H of a 64-bit one), in register address order:

    float32 230.2 = 0x43663334 (A=43 B=66 C=33 D=34)
      ABCD  [0x4366, 0x3334]   big-endian: Modbus's own order (Eastron, most devices)
      CDAB  [0x3334, 0x4366]   words swapped: least significant register first
      BADC  [0x6643, 0x3433]   bytes swapped inside each register, registers in order
      DCBA  [0x3433, 0x6643]   little-endian throughout

    int64 0x0102030405060708 (A=01 ... H=08)
      ABCD  [0x0102, 0x0304, 0x0506, 0x0708]
      CDAB  [0x0708, 0x0506, 0x0304, 0x0102]   (Telegraf's GHEFCDAB)
      BADC  [0x0201, 0x0403, 0x0605, 0x0807]   (BADCFEHG)
      DCBA  [0x0807, 0x0605, 0x0403, 0x0201]   (HGFEDCBA)

For 64-bit values CDAB means "registers in reverse order, bytes big-endian inside each", BADC
"registers in order, bytes swapped inside each", as in Telegraf (plugins/inputs/modbus/
type_conversions64.go, ``endianessConverter64``). For one register (16-bit values, bits of a
register, each register of a string) only the byte swap applies: CDAB reads as ABCD and DCBA as
BADC (Telegraf's ``endianessConverter16``). The older ``WordOrder`` (big / little, plus a
``byte_swap`` flag) maps onto these: big is ABCD, little is CDAB.

Every byte order reduces to two struct endiannesses, one for packing the registers into bytes
and one for reading the value from them (:data:`_ENDIAN`): CDAB packs each register
little-endian (so the lowest register's bytes come out last, reversed) and reads the whole
little-endian. One table of data types drives decode and encode (:data:`_LAYOUT`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_READ_REGISTERS",
    "ByteOrder",
    "DataType",
    "ModbusValueError",
    "WordOrder",
    "bits_mask",
    "decode_string",
    "decode_value",
    "encode_string",
    "encode_value",
    "register_count",
]

#: Largest FC 03/04 read the protocol allows (quantity 1..125).
MAX_READ_REGISTERS = 125


class ModbusValueError(ValueError):
    """A value cannot be represented in, or decoded from, the registers given (caller bug)."""


class DataType(StrEnum):
    """Register data types a device profile may declare."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    UINT64 = "uint64"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"  # a coil or discrete input (one bit, carried as 0 / 1), or a bit of a register
    STRING = "string"  # ASCII text, two characters per register, as many registers as declared

    @property
    def is_integer(self) -> bool:
        return self in _INTEGERS

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


class WordOrder(StrEnum):
    """Which register carries the most significant word (the older spelling of byte order)."""

    BIG = "big"
    LITTLE = "little"


class ByteOrder(StrEnum):
    """Where a value's bytes land in its registers (see the module docstring for the table)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @classmethod
    def of(cls, word_order: WordOrder, byte_swap: bool = False) -> ByteOrder:
        """The byte order of a word order and a byte-swap flag (big = ABCD, little = CDAB)."""
        if word_order is WordOrder.BIG:
            return cls.BADC if byte_swap else cls.ABCD
        return cls.DCBA if byte_swap else cls.CDAB

    @property
    def word_order(self) -> WordOrder:
        """Which register comes first: big for ABCD / BADC, little for CDAB / DCBA."""
        return WordOrder.LITTLE if self in (ByteOrder.CDAB, ByteOrder.DCBA) else WordOrder.BIG

    @property
    def byte_swap(self) -> bool:
        """True when the two bytes inside each register are swapped (BADC, DCBA)."""
        return self in (ByteOrder.BADC, ByteOrder.DCBA)


#: Byte order -> (endianness the registers are packed with, endianness the value is read with).
_ENDIAN = {
    ByteOrder.ABCD: (">", ">"),
    ByteOrder.CDAB: ("<", "<"),
    ByteOrder.BADC: ("<", ">"),
    ByteOrder.DCBA: (">", "<"),
}

_INTEGERS = frozenset(
    {
        DataType.UINT16,
        DataType.INT16,
        DataType.UINT32,
        DataType.INT32,
        DataType.UINT64,
        DataType.INT64,
    }
)


@dataclass(frozen=True, slots=True)
class _Layout:
    code: str  # struct code of the value ("" for a bit or a string)
    registers: int


#: Data type -> (struct code, register count). One table drives decode and encode.
_LAYOUT: dict[DataType, _Layout] = {
    DataType.UINT16: _Layout("H", 1),
    DataType.INT16: _Layout("h", 1),
    DataType.UINT32: _Layout("I", 2),
    DataType.INT32: _Layout("i", 2),
    DataType.UINT64: _Layout("Q", 4),
    DataType.INT64: _Layout("q", 4),
    DataType.FLOAT32: _Layout("f", 2),
    DataType.FLOAT64: _Layout("d", 4),
    DataType.BOOL: _Layout("", 1),
    DataType.STRING: _Layout("", 0),  # as many registers as the point declares
}

#: (data type, byte order) -> (struct of the registers, struct of the value), built once.
_STRUCTS: dict[tuple[DataType, ByteOrder], tuple[struct.Struct, struct.Struct]] = {
    (dtype, order): (
        struct.Struct(f"{_ENDIAN[order][0]}{layout.registers}H"),
        struct.Struct(f"{_ENDIAN[order][1]}{layout.code}"),
    )
    for dtype, layout in _LAYOUT.items()
    if layout.code
    for order in ByteOrder
}


def register_count(dtype: DataType, length: int | None = None) -> int:
    """How many 16-bit registers a value of ``dtype`` occupies (a string: ``length``)."""
    if dtype is DataType.STRING:
        if length is None or length < 1:
            raise ModbusValueError("a string occupies as many registers as its length says")
        return length
    return _LAYOUT[dtype].registers


def bits_mask(bits: tuple[int, int]) -> int:
    """The mask of bits ``first..last`` (inclusive, bit 0 the least significant) of a register."""
    first, last = bits
    if not 0 <= first <= last <= 15:
        raise ModbusValueError(f"bits {first}..{last} are not inside a 16-bit register (0..15)")
    return ((1 << (last - first + 1)) - 1) << first


def _order(order: ByteOrder | WordOrder, byte_swap: bool) -> ByteOrder:
    if isinstance(order, WordOrder):
        return ByteOrder.of(order, byte_swap)
    if byte_swap:
        return ByteOrder.of(order.word_order, not order.byte_swap)
    return order


def _whole(x: float) -> bool:
    return math.isfinite(x) and x == int(x)


def decode_value(
    registers: list[int] | tuple[int, ...],
    dtype: DataType,
    order: ByteOrder | WordOrder = ByteOrder.ABCD,
    *,
    byte_swap: bool = False,
    scale: float = 1.0,
    offset: float = 0.0,
    bits: tuple[int, int] | None = None,
) -> float | int | bool | str:
    """Decode one value from exactly ``register_count(dtype)`` registers (a string: any number).

    The value is ``raw × scale + offset``. An integer stays ``int`` when ``scale`` is 1 and
    ``offset`` a whole number; otherwise it becomes a float. A float is returned bit for bit
    (NaN payload and -0.0 included) when ``scale`` is 1 and ``offset`` 0.

    A BOOL without ``bits`` is a coil or discrete input given as 0 / 1. With ``bits`` (first,
    last, inclusive; bit 0 the least significant) the value is that field of one register read
    as uint16 in ``order``: a BOOL is one bit, a UINT16 the field as a small unsigned integer
    (then scaled). A STRING is :func:`decode_string`. Raises :class:`ModbusValueError` for a
    wrong register count or a word outside 0..0xFFFF.
    """
    bo = order if isinstance(order, ByteOrder) and not byte_swap else _order(order, byte_swap)
    if dtype is DataType.STRING:
        return decode_string(registers, bo)
    layout = _LAYOUT[dtype]
    if len(registers) != layout.registers:
        raise ModbusValueError(f"{dtype} needs {layout.registers} registers, got {len(registers)}")
    if bits is not None:
        if dtype not in (DataType.BOOL, DataType.UINT16):
            raise ModbusValueError(f"bits of a register are a bool or a uint16, not {dtype}")
        mask = bits_mask(bits)
        (word,) = _unpack(registers, DataType.UINT16, bo)
        field = (word & mask) >> bits[0]
        if dtype is DataType.BOOL:
            return bool(field)
        return _scaled(field, scale, offset)
    if dtype is DataType.BOOL:
        if registers[0] not in (0, 1):
            raise ModbusValueError(f"bit value {registers[0]!r} is not 0 or 1")
        return bool(registers[0])
    (value,) = _unpack(registers, dtype, bo)
    return _scaled(value, scale, offset)


def _unpack(registers: list[int] | tuple[int, ...], dtype: DataType, order: ByteOrder) -> tuple:
    words, value = _STRUCTS[dtype, order]
    try:
        raw = words.pack(*registers)
    except struct.error:
        bad = next(w for w in registers if not (isinstance(w, int) and 0 <= w <= 0xFFFF))
        raise ModbusValueError(f"register value {bad!r} is not a 16-bit word") from None
    return value.unpack(raw)


def _scaled(value: float | int, scale: float, offset: float) -> float | int:
    if isinstance(value, int) and scale == 1 and _whole(offset):
        return value + int(offset)
    if scale != 1:
        value = value * scale
    return value + offset if offset else value


def encode_value(
    value: float | int | bool | str,
    dtype: DataType,
    order: ByteOrder | WordOrder = ByteOrder.ABCD,
    *,
    byte_swap: bool = False,
    scale: float = 1.0,
    offset: float = 0.0,
    bits: tuple[int, int] | None = None,
    length: int | None = None,
) -> list[int]:
    """Encode one value into registers (the inverse of :func:`decode_value`).

    The register holds ``(value - offset) / scale``, rounded to the nearest integer for integer
    types. With ``bits`` the result is one register holding the field in its place and zeros
    elsewhere (several fields of one register are OR-ed together by the caller). A STRING needs
    ``length`` (registers). Raises :class:`ModbusValueError` when the value does not fit.
    """
    order = _order(order, byte_swap)
    if dtype is DataType.STRING:
        if not isinstance(value, str):
            raise ModbusValueError(f"{value!r} is not text")
        return encode_string(value, register_count(dtype, length), order)
    if isinstance(value, str):
        raise ModbusValueError(f"{value!r} is text, not a {dtype}")
    if dtype is DataType.BOOL:
        if value not in (0, 1):  # True / False / 0 / 1 / 0.0 / 1.0
            raise ModbusValueError(f"{value!r} is not a bit (true / false)")
        if bits is None:
            return [int(bool(value))]
        if bits[0] != bits[1]:
            raise ModbusValueError(f"a bool is one bit, not bits {bits[0]}..{bits[1]}")
        return encode_value(int(bool(value)), DataType.UINT16, order, bits=bits)
    raw: float | int = value
    if scale != 1 or offset != 0:
        raw = (value - offset) / scale
    if not dtype.is_float:
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise ModbusValueError(f"{value!r} cannot be stored as {dtype}")
            raw = round(raw)
    if bits is not None:
        if dtype is not DataType.UINT16:
            raise ModbusValueError(f"bits of a register are a bool or a uint16, not {dtype}")
        mask = bits_mask(bits)
        if not 0 <= raw <= mask >> bits[0]:
            width = bits[1] - bits[0] + 1
            raise ModbusValueError(
                f"{value!r} does not fit {width} bits (0..{mask >> bits[0]} before scaling)"
            )
        return _pack(int(raw) << bits[0], DataType.UINT16, order)
    return _pack(raw, dtype, order)


def _pack(raw: float | int, dtype: DataType, order: ByteOrder) -> list[int]:
    words, value = _STRUCTS[dtype, order]
    try:
        return list(words.unpack(value.pack(raw)))
    except (struct.error, OverflowError) as exc:
        raise ModbusValueError(f"{raw!r} does not fit {dtype}: {exc}") from None


def decode_string(registers: list[int] | tuple[int, ...], order: ByteOrder = ByteOrder.ABCD) -> str:
    """ASCII text from registers, two characters each, in address order.

    Each register holds its first character in the high byte (ABCD, CDAB) or the low byte
    (BADC, DCBA). The text ends at the first NUL (a C string, or NUL padding), and trailing
    spaces (space padding) are removed. A byte that is not printable ASCII (0x20-0x7E) is
    shown as U+FFFD, so a garbled string stays visibly garbled and still valid Unicode.
    """
    if not registers:
        raise ModbusValueError("a string occupies at least one register")
    endian = "<" if order.byte_swap else ">"
    try:
        raw = struct.pack(f"{endian}{len(registers)}H", *registers)
    except struct.error:
        bad = next(w for w in registers if not (isinstance(w, int) and 0 <= w <= 0xFFFF))
        raise ModbusValueError(f"register value {bad!r} is not a 16-bit word") from None
    raw = raw.split(b"\0", 1)[0].rstrip(b" ")
    if all(0x20 <= b <= 0x7E for b in raw):
        return raw.decode("ascii")
    return "".join(chr(b) if 0x20 <= b <= 0x7E else "\ufffd" for b in raw)


def encode_string(text: str, registers: int, order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """``text`` in ``registers`` registers, NUL-padded (the inverse of :func:`decode_string`).

    Raises :class:`ModbusValueError` for text that is not printable ASCII or does not fit.
    """
    if registers < 1:
        raise ModbusValueError("a string occupies at least one register")
    if not all(" " <= c <= "~" for c in text):
        raise ModbusValueError(f"{text!r} is not printable ASCII")
    if len(text) > 2 * registers:
        raise ModbusValueError(
            f"{text!r} has {len(text)} characters; {registers} registers hold {2 * registers}"
        )
    raw = text.encode("ascii").ljust(2 * registers, b"\0")
    endian = "<" if order.byte_swap else ">"
    return list(struct.unpack(f"{endian}{registers}H", raw))
