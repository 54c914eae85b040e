"""Sparkplug B payloads, built with the real protobuf runtime from the Tahu schema's field numbers.

Only the fields a DDATA message with aliases uses are declared; protobuf serialises a message the
same way whatever else the schema contains, so these bytes equal Tahu's for the same content
(eclipse/tahu sparkplug_b/sparkplug_b.proto: Payload.timestamp = 1, metrics = 2, seq = 3;
Metric.name = 1, alias = 2, timestamp = 3, datatype = 4, int_value = 10, long_value = 11,
float_value = 12, double_value = 13, boolean_value = 14, string_value = 15; proto2).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
DATATYPE = {"int": 4, "uint": 8, "float": 9, "double": 10, "bool": 11, "string": 12}


def _build():
    fdp = descriptor_pb2.FileDescriptorProto(
        name="bench_sparkplug_b.proto", package="bench.tahu", syntax="proto2"
    )
    payload = fdp.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    for name, number, ftype in [
        ("name", 1, _F.TYPE_STRING),
        ("alias", 2, _F.TYPE_UINT64),
        ("timestamp", 3, _F.TYPE_UINT64),
        ("datatype", 4, _F.TYPE_UINT32),
        ("int_value", 10, _F.TYPE_UINT32),
        ("long_value", 11, _F.TYPE_UINT64),
        ("float_value", 12, _F.TYPE_FLOAT),
        ("double_value", 13, _F.TYPE_DOUBLE),
        ("boolean_value", 14, _F.TYPE_BOOL),
        ("string_value", 15, _F.TYPE_STRING),
    ]:
        metric.field.add(name=name, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
    payload.field.add(name="timestamp", number=1, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL)
    payload.field.add(
        name="metrics",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".bench.tahu.Payload.Metric",
    )
    payload.field.add(name="seq", number=3, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.tahu.Payload"))


Payload = _build()


def ddata(seq: int, ts_ms: int, metrics: list[tuple[int, int, float | int | bool | str]]) -> bytes:
    """One DDATA payload: metrics as (alias, ts_ms, value), with datatype, as Tahu sends them."""
    msg = Payload(timestamp=ts_ms, seq=seq % 256)
    for alias, mts, value in metrics:
        m = msg.metrics.add(alias=alias, timestamp=mts)
        if isinstance(value, bool):
            m.datatype, m.boolean_value = DATATYPE["bool"], value
        elif isinstance(value, int):
            m.datatype, m.long_value = DATATYPE["int"], value & 0xFFFFFFFFFFFFFFFF
        elif isinstance(value, float):
            m.datatype, m.float_value = DATATYPE["float"], value
        else:
            m.datatype, m.string_value = DATATYPE["string"], str(value)
    return msg.SerializeToString()
