"""Modbus register values: data types as a table, decode and encode. No I/O.

Modbus registers are 16-bit words sent big-endian (high byte first). Values wider than one
register span consecutive registers; the *word order* says which register carries the most
significant word:

    float32 230.2 = 0x43663334
      word_order="big"    registers [0x4366, 0x3334]   (Eastron, most devices)
      word_order="little" registers [0x3334, 0x4366]

Byte order inside a register is always big-endian on the wire (Modbus Application Protocol
v1.1b3 §4.2); byte-swapped devices are described by ``word_order`` plus ``byte_swap``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_READ_REGISTERS",
    "DataType",
    "ModbusValueError",
    "WordOrder",
    "decode_value",
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
    BOOL = "bool"  # a coil or discrete input: one bit, carried as 0 / 1


class WordOrder(StrEnum):
    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class _Layout:
    fmt: str  # struct format of the whole value, big-endian
    registers: int
    is_float: bool


#: Data type -> (struct format, register count). One table drives decode and encode.
_LAYOUT: dict[DataType, _Layout] = {
    DataType.UINT16: _Layout(">H", 1, False),
    DataType.INT16: _Layout(">h", 1, False),
    DataType.UINT32: _Layout(">I", 2, False),
    DataType.INT32: _Layout(">i", 2, False),
    DataType.UINT64: _Layout(">Q", 4, False),
    DataType.INT64: _Layout(">q", 4, False),
    DataType.FLOAT32: _Layout(">f", 2, True),
    DataType.FLOAT64: _Layout(">d", 4, True),
    DataType.BOOL: _Layout("", 1, False),
}


def register_count(dtype: DataType) -> int:
    """How many 16-bit registers a value of ``dtype`` occupies."""
    return _LAYOUT[dtype].registers


def _words_to_bytes(words: list[int] | tuple[int, ...], order: WordOrder, byte_swap: bool) -> bytes:
    if order is WordOrder.LITTLE:
        words = list(reversed(words))
    raw = struct.pack(f">{len(words)}H", *words)
    if byte_swap:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode_value(
    registers: list[int] | tuple[int, ...],
    dtype: DataType,
    word_order: WordOrder = WordOrder.BIG,
    *,
    byte_swap: bool = False,
    scale: float = 1.0,
) -> float | int:
    """Decode one value from exactly ``register_count(dtype)`` registers.

    Integers stay ``int`` when ``scale`` is 1; otherwise the result is ``value * scale``.
    A BOOL (a coil or discrete input) is one bit given as 0 / 1 and decodes to a bool.
    """
    layout = _LAYOUT[dtype]
    if len(registers) != layout.registers:
        raise ModbusValueError(f"{dtype} needs {layout.registers} registers, got {len(registers)}")
    if dtype is DataType.BOOL:
        if registers[0] not in (0, 1):
            raise ModbusValueError(f"bit value {registers[0]!r} is not 0 or 1")
        return bool(registers[0])
    for word in registers:
        if not 0 <= word <= 0xFFFF:
            raise ModbusValueError(f"register value {word!r} is not a 16-bit word")
    (value,) = struct.unpack(layout.fmt, _words_to_bytes(registers, word_order, byte_swap))
    if scale != 1.0:
        return value * scale
    return value


def encode_value(
    value: float | int,
    dtype: DataType,
    word_order: WordOrder = WordOrder.BIG,
    *,
    byte_swap: bool = False,
    scale: float = 1.0,
) -> list[int]:
    """Encode one value into registers (the inverse of :func:`decode_value`)."""
    layout = _LAYOUT[dtype]
    if dtype is DataType.BOOL:
        if value not in (0, 1):  # True / False / 0 / 1 / 0.0 / 1.0
            raise ModbusValueError(f"{value!r} is not a bit (true / false)")
        return [int(bool(value))]
    raw_value: float | int = value / scale if scale != 1.0 else value
    if not layout.is_float:
        if isinstance(raw_value, float):
            if not math.isfinite(raw_value):
                raise ModbusValueError(f"{value!r} cannot be stored as {dtype}")
            raw_value = round(raw_value)
    try:
        raw = struct.pack(layout.fmt, raw_value)
    except (struct.error, OverflowError) as exc:
        raise ModbusValueError(f"{value!r} does not fit {dtype}: {exc}") from None
    if byte_swap:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = list(struct.unpack(f">{layout.registers}H", raw))
    if word_order is WordOrder.LITTLE:
        words.reverse()
    return words
