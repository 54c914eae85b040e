"""Wire formats, bytes in and frames out. Nothing in this package does I/O or reads a clock."""

from protocols.batch import Batch, BatchDecodeError, Reading, decode_batch, encode_batch
from protocols.modbus import DataType, ModbusValueError, WordOrder, decode_value, encode_value

__all__ = [
    "Batch",
    "BatchDecodeError",
    "DataType",
    "ModbusValueError",
    "Reading",
    "WordOrder",
    "decode_batch",
    "decode_value",
    "encode_batch",
    "encode_value",
]
