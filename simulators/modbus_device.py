"""A Modbus device simulator built from a device profile and a behaviour model.

The register map comes from the same :class:`devices.Profile` the gateway polls with, and values
are encoded with the same :mod:`protocols.modbus` codec, so driver, simulator and tests share one
truth. The device's request rules are enforced as a real Eastron meter does (reference §1.5):

* a register that is neither a mapped point nor inside a readable range: exception 02;
* an odd register count on a device that wants even counts, or more registers than the device
  serves per request: exception 03 (the real meter's code is unconfirmed, reference §8).

Writes reach only whole writable points (coils with FC 05/15, holding registers with FC 06/16),
and every register (or coil) a write names must belong to one. A write that runs past the mapped
registers, into a gap between points, over part of a point, onto a point the profile does not
make writable, or into a table no write function reaches (an address only the input registers or
discrete inputs have) is refused **whole** with exception 02, ILLEGAL DATA ADDRESS: "the
combination of reference number and transfer length is invalid" (Modbus Application Protocol
V1.1b3 §7; the FC 05 / 06 / 15 / 16 state diagrams, §6.5, §6.6, §6.11, §6.12, answer 02 when
"address == OK" or "address + quantity == OK" fails). A value the device does not accept
(outside a point's ``limits``) gets exception 03, ILLEGAL DATA VALUE (§7), as does a malformed
quantity or coil value (checked by :func:`protocols.modbus_frame.decode_request`). Nothing of a
refused write is applied: it is checked in full before anything changes. A written point keeps
its value and is shown to the behaviour model through ``commanded`` (point name -> decoded
value), so a relay switched off by the platform takes its load off the embedded meter.

Every kind of point is served as a device would hold it: in its byte order, scaled and offset,
fields of bits OR-ed into their shared register, a string NUL-padded, and a point scaled by
another register (SunSpec) encoded with the scale factor served beside it. A point the model
does not know reads 0 (a string: empty).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping

from devices.profile import SCALE_FACTOR_RANGE, Point, Profile, RegisterType
from protocols.modbus import DataType

Value = float | int | bool | str

__all__ = ["ProfileSimUnit"]

_FC_TYPE = {rt.read_function: rt for rt in RegisterType}
_WRITE_TYPE = {5: RegisterType.COIL, 15: RegisterType.COIL}
_WRITE_TYPE |= {6: RegisterType.HOLDING, 16: RegisterType.HOLDING}
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class ProfileSimUnit:
    """One simulated unit id answering reads from ``model()``'s current values.

    Every value served is remembered per point (bounded), so tests can check that what the
    gateway delivered is exactly what the device said.
    """

    def __init__(
        self,
        profile: Profile,
        unit_id: int,
        model: Callable[[], Mapping[str, Value]],
        *,
        history: int = 4096,
        commanded: dict[str, Value] | None = None,
        on_served: Callable[[str, Value], None] | None = None,
    ) -> None:
        self.profile = profile
        self.unit_id = unit_id
        self._model = model
        self._ranges = {
            rtype: _merge(
                list(profile.readable_ranges.get(rtype, ()))
                + [(p.address, p.end) for p in profile.points if p.register_type is rtype]
            )
            for rtype in RegisterType
        }
        self._served: dict[str, deque[Value]] = {
            p.name: deque(maxlen=history) for p in profile.points
        }
        self._lock = threading.Lock()
        self._held: dict[str, list[int]] = {}  # writable points: registers last written
        self.commanded = commanded if commanded is not None else {}
        #: Called with (point name, value) for each whole point put on the wire (the soak logs it).
        self.on_served = on_served
        self.writes = 0
        self.reads = 0
        self.exceptions = 0

    def _covered(self, rtype: RegisterType, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self._ranges[rtype])

    def read(self, function_code: int, address: int, count: int) -> list[int] | int:
        rtype = _FC_TYPE.get(function_code)
        if rtype is None:
            return ILLEGAL_FUNCTION
        p = self.profile
        if count > p.max_per_request(rtype) or (
            p.even_register_count and not rtype.is_bits and count % 2
        ):
            self.exceptions += 1
            return ILLEGAL_VALUE
        end = address + count
        if not self._covered(rtype, address, end):
            self.exceptions += 1
            return ILLEGAL_ADDRESS
        values = self._model()
        words = [0] * count
        served: list[tuple[Point, Value]] = []
        for point in p.points:
            if point.register_type is not rtype or point.end <= address or point.address >= end:
                continue
            sf, valued = self._factor(point, values)
            held = self._held.get(point.name)
            regs = held if held is not None else point.encode(self._value(point, values), sf)
            for i, word in enumerate(regs):
                at = point.address + i - address
                if 0 <= at < count:
                    words[at] |= word  # fields of bits share a register; other points never do
            if address <= point.address and point.end <= end and valued:
                # What the wire carries, decoded back: float32 rounding included.
                served.append((point, point.decode(regs, sf)))
        with self._lock:
            self.reads += 1
            for point, value in served:
                self._served[point.name].append(value)
        if self.on_served is not None:
            for point, value in served:
                self.on_served(point.name, value)
        return words

    def _value(self, point: Point, values: Mapping[str, Value]) -> Value:
        return values.get(point.name, "" if point.dtype is DataType.STRING else 0)

    def _factor(self, point: Point, values: Mapping[str, Value]) -> tuple[int | None, bool]:
        """The scale factor a point scaled by another register is served with, and whether the
        point has a value. A factor outside SunSpec's -10..10 (-32768: "not implemented")
        gives none: the point's registers then hold the value unscaled, recorded as not served.
        """
        name = point.scale_register
        if name is None:
            return None, True
        held = self._held.get(name)
        sf = int(self.profile.point(name).decode(held) if held is not None else values.get(name, 0))
        lo, hi = SCALE_FACTOR_RANGE
        return (sf, True) if lo <= sf <= hi else (0, False)

    def write(self, function_code: int, address: int, words: list[int]) -> int | None:
        """A write (FC 5/6/15/16): only whole writable points; returns an exception code or None."""
        rtype = _WRITE_TYPE.get(function_code)
        if rtype is None:
            return ILLEGAL_FUNCTION
        words = [int(w) for w in words]  # bits arrive as bools
        end = address + len(words)
        targets = [
            p
            for p in self.profile.points
            if p.register_type is rtype and p.address < end and p.end > address
        ]
        whole = all(p.writable and address <= p.address and p.end <= end for p in targets)
        # Points never overlap (the profile checks), so whole points that fill the request's
        # length cover every register it names: nothing past the map, no gap.
        if not targets or not whole or sum(p.count for p in targets) != len(words):
            self.exceptions += 1
            return ILLEGAL_ADDRESS
        decoded = {}
        for p in targets:
            regs = words[p.address - address : p.end - address]
            value = p.decode(regs)
            if p.limits is not None and not p.limits[0] <= value <= p.limits[1]:
                self.exceptions += 1
                return ILLEGAL_VALUE
            decoded[p.name] = (regs, value)
        with self._lock:
            for name, (regs, value) in decoded.items():
                self._held[name] = regs
                self.commanded[name] = value
            self.writes += 1
        return None

    def model_values(self) -> dict[str, Value]:
        """What the behaviour model holds now, by point name (before encoding)."""
        return dict(self._model())

    def served(self, point: str) -> list[Value]:
        """Values of ``point`` this unit has put on the wire, oldest first (bounded)."""
        with self._lock:
            return list(self._served[point])
