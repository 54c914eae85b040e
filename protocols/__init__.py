"""Wire formats, bytes in and frames out. Nothing in this package does I/O or reads a clock."""

from protocols.batch import (
    Batch,
    BatchDecodeError,
    BatchHeader,
    Point,
    Reading,
    decode_batch,
    decode_header,
    encode_batch,
)
from protocols.birth import Birth, BirthError, SeriesInfo
from protocols.modbus import (
    ByteOrder,
    DataType,
    ModbusValueError,
    WordOrder,
    decode_value,
    encode_value,
)

__all__ = [
    "Batch",
    "BatchDecodeError",
    "BatchHeader",
    "Birth",
    "BirthError",
    "ByteOrder",
    "DataType",
    "ModbusValueError",
    "Point",
    "Reading",
    "SeriesInfo",
    "WordOrder",
    "decode_batch",
    "decode_header",
    "decode_value",
    "encode_batch",
    "encode_value",
]
