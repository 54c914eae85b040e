"""``edge probe --profile``: read every point of a profile from a live unit, and say which values
look wrong.

A technician's new meter rarely reads right the first time: a clone sends its floats low word
first, a map counts registers from 1, a register holds tenths. Each shows as a recognisable
absurdity (docs/profile-format.md §4, §5), which :func:`value_hints` names:

* a float that is NaN or infinite, larger than 1e30 in size, or tiny (below 1e-20, the
  subnormal-like values a swapped float32 makes: 50.0 Hz read as CDAB is 2.4e-41);
* a value its unit makes implausible (:data:`PLAUSIBLE`: a voltage of 0.023 V, a mains
  frequency of 12 Hz, a relative humidity of 700 %RH);
* and then, for each, the other byte orders (and powers of ten of the scale) under which the
  same registers give a plausible value, so the fix is named: "as CDAB: 230.2 V".

The ranges are deliberately wide (a hint, never a refusal): they catch orders of magnitude,
not a drifting sensor. Reading uses the profile's read plan; a request that fails is read again
in the parts :func:`edge.plan.split_request` makes, so a failure names the registers and points
it is about ("input registers 256..257 (cabinet_temperature): exception 0x02").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from devices.profile import Point, Profile
from edge.fieldbus.link import ModbusDeviceError
from edge.plan import ReadPlan, ReadRequest, Value, split_request
from protocols.modbus import ByteOrder, DataType, ModbusValueError

__all__ = ["PLAUSIBLE", "PointReading", "probe_plan", "value_hints"]

#: Unit -> (low, high) of the values a working device plausibly reports in it, sizes
#: (absolute values) when ``low`` is None; 0 is always plausible (a device switched off).
#: Wide on purpose: mains voltages 1..1000 V (100-480 V AC, 12-1000 V DC), grid frequency
#: 40..70 Hz (50 Hz in Vietnam, 60 Hz elsewhere), outdoor and cabinet temperatures.
PLAUSIBLE: dict[str, tuple[float | None, float]] = {
    "V": (1.0, 1000.0),
    "kV": (0.1, 800.0),
    "A": (None, 1e5),
    "mA": (None, 1e6),
    "W": (None, 1e8),
    "kW": (None, 1e5),
    "MW": (None, 1e3),
    "VA": (None, 1e8),
    "kVA": (None, 1e5),
    "var": (None, 1e8),
    "kvar": (None, 1e5),
    "Wh": (0.0, 1e11),
    "kWh": (0.0, 1e8),
    "MWh": (0.0, 1e5),
    "VAh": (0.0, 1e11),
    "kVAh": (0.0, 1e8),
    "varh": (0.0, 1e11),
    "kvarh": (0.0, 1e8),
    "Hz": (40.0, 70.0),
    "°C": (-60.0, 200.0),
    "K": (200.0, 500.0),
    "°F": (-80.0, 400.0),
    "%RH": (0.0, 100.0),
    "hPa": (300.0, 1100.0),
    "kPa": (0.0, 1e4),
    "bar": (0.0, 1e3),
    "m/s": (0.0, 100.0),
    "km/h": (0.0, 400.0),
    "°": (-360.0, 360.0),
    "mm": (None, 1e7),
    "m": (None, 1e5),
    "lx": (0.0, 2e5),
    "W/m²": (0.0, 2000.0),
    "µg/m³": (0.0, 5000.0),
    "ppm": (0.0, 1e6),
    "pH": (0.0, 14.0),
}
#: Floats larger than this, or smaller (not 0), are taken for a wrong byte order.
HUGE, TINY = 1e30, 1e-20
#: Another byte order is offered as the fix only when it reads a number of a size devices
#: report (a swapped float is easily 1e-29: that is no fix).
FIX_RANGE = (1e-6, 1e15)


@dataclass
class PointReading:
    """One point of a probe: its value (or why there is none) and the hints about it."""

    point: Point
    value: Value | None = None
    error: str | None = None
    hints: list[str] = field(default_factory=list)


def _problem(point: Point, value: Value) -> str | None:
    """Why ``value`` looks wrong for ``point``, or None."""
    if isinstance(value, bool) or point.labels:
        return None
    if isinstance(value, str):
        return "holds bytes that are not text (shown as \ufffd)" if "\ufffd" in value else None
    x = float(value)
    if math.isnan(x):
        return "NaN: the registers hold no number"
    if math.isinf(x):
        return "infinite"
    if abs(x) > HUGE:
        return f"{x:.3g} is absurdly large"
    if point.dtype.is_float and 0 < abs(x) < TINY:
        return f"{x:.3g} is absurdly small (a subnormal-like float)"
    span = PLAUSIBLE.get(point.unit)
    if span is None or x == 0:
        return None
    low, high = span
    inside = abs(x) <= high if low is None else low <= x <= high
    if inside:
        return None
    if point.unit == "Hz":
        return f"{_show(x)} Hz is not near 50 or 60 Hz"
    where = f"up to {_show(high)}" if low is None else f"{_show(low)}..{_show(high)}"
    return f"{_show(x)} {point.unit} is outside what such a device reports ({where} {point.unit})"


def _sized(x: Value) -> bool:
    if isinstance(x, bool | str):
        return True
    lo, hi = FIX_RANGE
    return x == 0 or lo <= abs(x) <= hi


def _show(x: float | int) -> str:
    if isinstance(x, int):
        return str(x)
    return f"{x:.6g}"


def _as(point: Point, order: ByteOrder) -> Point:
    return dataclasses.replace(point, byte_order=order, word_order=None)


def _orders(point: Point) -> list[ByteOrder]:
    """The byte orders that read ``point``'s registers differently from its own."""
    if point.dtype is DataType.BOOL and point.bits is None:
        return []
    if point.count == 1 or point.dtype is DataType.STRING or point.bits is not None:
        own = point.byte_order.byte_swap  # one register: only the byte half counts
        return [ByteOrder.BADC if not own else ByteOrder.ABCD]
    return [o for o in ByteOrder if o is not point.byte_order]


def value_hints(
    point: Point, registers: Sequence[int], value: Value, sf: int | None = None
) -> list[str]:
    """What looks wrong about ``value`` (read from ``registers``) and what would fix it: the
    other byte orders, and the powers of ten of the scale, under which the registers give a
    plausible value. Empty when the value looks right."""
    why = _problem(point, value)
    if why is None:
        return []
    hints = [why]
    fixes = []
    for order in _orders(point):
        try:
            other = _as(point, order).decode(registers, sf)
        except (ModbusValueError, ValueError):
            continue
        if _problem(point, other) is None and other != value and _sized(other):
            unit = f" {point.unit}" if point.unit else ""
            shown = repr(other) if isinstance(other, str) else _show(other)
            fixes.append(f"as {order}: {shown}{unit} (byte_order: {order})")
    if not fixes and isinstance(value, int | float) and not isinstance(value, bool):
        x = float(value)
        if math.isfinite(x) and x != 0 and point.unit in PLAUSIBLE:
            for k in (-1, 1, -2, 2, -3, 3):
                candidate = x * 10.0**k
                if _problem(point, candidate) is None:
                    scale = point.scale * 10.0**k
                    fixes.append(
                        f"scale {scale:.6g} would read {_show(candidate)} {point.unit}: a value "
                        "off by a power of ten is a wrong scale"
                    )
                    break
    if fixes:
        hints += fixes
    elif point.count > 1 or point.dtype.is_float:
        hints.append("no other byte order reads a plausible value: check the address")
    return hints


async def probe_plan(link, unit: int, profile: Profile, plan: ReadPlan, timeout_s: float):
    """Read every request of ``plan`` from ``unit``; (readings in plan order, failures), each
    failure '<table> registers A..B (points): why'. A failed request is read again in parts
    (:func:`edge.plan.split_request`), so one bad point does not hide its neighbours."""
    readings: dict[str, PointReading] = {}
    failures: list[str] = []
    factors: dict[str, int] = {}
    pending: list[tuple[ReadRequest, list[int]]] = []

    async def read(req: ReadRequest, split: bool) -> None:
        try:
            regs = await link.read(
                unit, req.function_code, req.address, req.count, timeout_s=timeout_s, retries=1
            )
        except ModbusDeviceError as exc:
            parts = split_request(profile, req) if split else []
            if len(parts) > 1:
                for part in parts:
                    await read(part, False)
                return
            failures.append(f"{_span(req)}: {_why(exc)}")
            for p in req.points:
                readings[p.name] = PointReading(p, error=f"not read ({_span(req)} failed)")
            return
        pending.append((req, [int(r) for r in regs]))

    for req in plan.requests:
        await read(req, True)
    # Scale factors first (SunSpec): a point takes the factor read in this same probe.
    for req, regs in pending:
        for p in req.points:
            if p.name in plan.scale_names:
                try:
                    factors[p.name] = int(p.decode(_slice(req, p, regs)))
                except ModbusValueError:
                    pass
    for req, regs in pending:
        for p in req.points:
            own = _slice(req, p, regs)
            sf = factors.get(p.scale_register) if p.scale_register else None
            try:
                value = p.decode(own, sf)
            except ModbusValueError as exc:
                readings[p.name] = PointReading(p, error=str(exc))
                continue
            readings[p.name] = PointReading(p, value, hints=value_hints(p, own, value, sf))
    order = [p for req in plan.requests for p in req.points]
    return [readings[p.name] for p in order if p.name in readings], failures


def _slice(req: ReadRequest, p: Point, regs: list[int]) -> list[int]:
    off = p.address - req.address
    return regs[off : off + p.count]


def _span(req: ReadRequest) -> str:
    table = {"input": "input registers", "holding": "holding registers", "coil": "coils",
             "discrete": "discrete inputs"}[req.register_type.value]  # fmt: skip
    last = req.address + req.count - 1
    where = f"{req.address}" if req.count == 1 else f"{req.address}..{last}"
    names = ", ".join(p.name for p in req.points)
    return f"FC{req.function_code:02d} {table} {where} ({names})"


def _why(exc: ModbusDeviceError) -> str:
    return str(exc).split(": ", 1)[-1]
