"""Device profiles: a register map and the device's request limits, as frozen data.

A profile says what registers mean; it never does I/O. The gateway's planner, the drivers, the
simulators and the tests all read the same profile, so one map is the truth for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

from devices.simulate import MODELS, SHAPES, SimHint, SimModel, compatible, model_unit
from devices.units import UNITS, unit_hint
from protocols.modbus import (
    MAX_READ_REGISTERS,
    ByteOrder,
    DataType,
    ModbusValueError,
    WordOrder,
    bits_mask,
    decode_value,
    encode_value,
    register_count,
)
from protocols.modbus_frame import MAX_READ_BITS, LineTiming

__all__ = [
    "SCALE_FACTOR_RANGE",
    "Kind",
    "Point",
    "Profile",
    "ProfileError",
    "RegisterType",
    "SensorPoint",
    "SensorProfile",
    "bit",
    "float32_input",
]


class ProfileError(ValueError):
    """A profile is inconsistent (a bug in the profile file, found when it is read).

    ``field``: the field the problem is about (a :class:`Point` or :class:`Profile` field name),
    when it is one; ``points``: the names of the points concerned, the one to blame last (the
    profile file reader reports the problem there)."""

    def __init__(self, message: str, *, field: str | None = None, points: tuple[str, ...] = ()):
        super().__init__(message)
        self.field = field
        self.points = points


class RegisterType(StrEnum):
    """The four Modbus tables. Coils and discrete inputs hold bits, addressed bit by bit."""

    INPUT = "input"  # FC 04
    HOLDING = "holding"  # FC 03; written with FC 16
    COIL = "coil"  # FC 01; written with FC 05
    DISCRETE = "discrete"  # FC 02

    @property
    def read_function(self) -> int:
        return _READ_FC[self]

    @property
    def is_bits(self) -> bool:
        return self in (RegisterType.COIL, RegisterType.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (RegisterType.COIL, RegisterType.HOLDING)


_READ_FC = {
    RegisterType.COIL: 1,
    RegisterType.DISCRETE: 2,
    RegisterType.HOLDING: 3,
    RegisterType.INPUT: 4,
}


class Kind(StrEnum):
    """How a point's values may be aggregated (travels in the birth, docs/profile-format.md).

    A **gauge** is a level sampled now (a voltage, a temperature, a state): average it, take
    its min and max. A **counter** only grows (an energy register, a pulse count): take the
    difference between two readings; one that ``wrap``-s starts again from 0 past its modulus,
    so a reading below the one before means ``(new - old) mod wrap`` was added.
    """

    GAUGE = "gauge"
    COUNTER = "counter"


#: SunSpec scale factors are int16 exponents in -10..10; 0x8000 (-32768) means "not
#: implemented" (SunSpec Information Model Specification 1.0, "sunssf").
SCALE_FACTOR_RANGE = (-10, 10)


@dataclass(frozen=True, slots=True)
class Point:
    """One value the device exposes, and how its registers become that value.

    ``value = raw × scale × 10^sf + offset``, where ``raw`` is the register content read as
    ``dtype`` in ``byte_order`` (or the field ``bits`` of one register) and ``sf`` is the value
    of the point named by ``scale_register`` (1 when there is none). docs/profile-format.md
    gives every field's meaning, default and the rules checked here (:class:`ProfileError`).
    """

    name: str
    address: int  # 0-based PDU address
    dtype: DataType
    unit: str = ""  # a symbol from devices/units.py
    register_type: RegisterType = RegisterType.INPUT
    #: The older spelling of the word half of ``byte_order`` (big = ABCD, little = CDAB);
    #: after construction it always says which register comes first.
    word_order: WordOrder | None = None
    scale: float = 1.0
    description: str = ""
    writable: bool = False  # a coil or holding register the platform may set (allow-listed)
    #: For a writable number: the values the device accepts (it answers exception 03 outside).
    limits: tuple[float, float] | None = None
    byte_order: ByteOrder = ByteOrder.ABCD
    offset: float = 0.0
    #: (first, last) bit of one register, inclusive, bit 0 the least significant: a flag
    #: (dtype bool, first == last) or a small unsigned integer (dtype uint16).
    bits: tuple[int, int] | None = None
    length: int | None = None  # a string's registers (two characters each)
    #: Enumeration: raw value -> label, as (value, label) pairs (a dict is accepted and sorted).
    labels: tuple[tuple[int, str], ...] = ()
    scale_register: str | None = None  # the int16 point holding this point's power of ten
    kind: Kind = Kind.GAUGE
    wrap: float | None = None  # a counter's modulus, in the point's unit (None: never wraps)
    #: How a simulator makes its values (docs/profile-format.md §16); the gateway never reads it.
    simulate: SimHint | None = None
    #: A key point: the status page shows it first, with a trend; the rest fold behind a tap.
    key: bool = False

    def __post_init__(self) -> None:
        # Plain strings (from a data file) become the enums; anything else is refused by name.
        for name, enum in _ENUMS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, enum):
                try:
                    object.__setattr__(self, name, enum(value))
                except ValueError:
                    choices = ", ".join(e.value for e in enum)
                    self._bad(f"{name} {value!r} is not one of {choices}", field=name)
        if isinstance(self.labels, Mapping):
            object.__setattr__(self, "labels", tuple(sorted(self.labels.items())))
        if self.word_order is not None:
            if self.byte_order is ByteOrder.ABCD:
                object.__setattr__(self, "byte_order", ByteOrder.of(self.word_order))
            elif self.byte_order.word_order is not self.word_order:
                self._bad(
                    f"word_order {self.word_order} contradicts byte_order {self.byte_order}; "
                    "give byte_order alone"
                )
        object.__setattr__(self, "word_order", self.byte_order.word_order)
        self._check()

    def _bad(self, why: str, field: str | None = None) -> NoReturn:
        raise ProfileError(f"point {self.name!r}: {why}", field=field, points=(self.name,))

    def _check(self) -> None:
        dtype, table = self.dtype, self.register_type
        if not 0 <= self.address <= 0xFFFF:
            self._bad(f"address {self.address} is outside 0..65535", field="address")
        if self.unit not in UNITS:
            self._bad(
                f"unit {self.unit!r} is not a known symbol; {unit_hint(self.unit)}", field="unit"
            )
        if table.is_bits:
            if dtype is not DataType.BOOL:
                self._bad("coils and discrete inputs are bool", field="dtype")
            if self.bits is not None:
                self._bad(
                    "a coil or discrete input is one bit already; bits are for registers",
                    field="bits",
                )
        elif dtype is DataType.BOOL and self.bits is None:
            self._bad("a bool in a register is one of its bits: give bits (n, n)", field="bits")
        if not (math.isfinite(self.scale) and self.scale != 0):
            self._bad(f"scale {self.scale!r} must be a finite number other than 0", field="scale")
        if not math.isfinite(self.offset):
            self._bad(f"offset {self.offset!r} must be a finite number", field="offset")
        scaled = self.scale != 1 or self.offset != 0 or self.scale_register is not None
        if self.bits is not None:
            first, last = self.bits
            if not 0 <= first <= last <= 15:
                self._bad(
                    f"bits {first}..{last}: a register has bits 0..15 (bit 0 the least "
                    "significant), the first not after the last",
                    field="bits",
                )
            if dtype is DataType.BOOL and first != last:
                self._bad(
                    f"a bool is one bit, not bits {first}..{last}: use uint16 for a field",
                    field="bits",
                )
            if dtype not in (DataType.BOOL, DataType.UINT16):
                self._bad(f"bits of a register are a bool or a uint16, not {dtype}", field="dtype")
            if self.writable:
                self._bad(
                    "bits of a register cannot be written: setting them needs a read-modify-"
                    "write of the whole register, which would undo what the device changed in "
                    "between; map the register as uint16 to write it whole",
                    field="writable",
                )
        if dtype is DataType.STRING:
            if self.length is None or not 1 <= self.length <= MAX_READ_REGISTERS:
                self._bad(
                    f"a string needs a length of 1..{MAX_READ_REGISTERS} registers", field="length"
                )
            if scaled or self.labels or self.kind is not Kind.GAUGE or self.writable:
                self._bad("a string takes no scale, offset, labels, counter kind or writes")
        elif self.length is not None:
            self._bad(
                f"length is for strings; a {dtype} has {register_count(dtype)} registers",
                field="length",
            )
        if dtype is DataType.BOOL and (scaled or self.kind is not Kind.GAUGE):
            self._bad("a bool takes no scale, offset or counter kind")
        if self.labels:
            self._check_labels(scaled)
        if self.scale_register is not None:
            if self.scale_register == self.name:
                self._bad("scale_register names the point itself", field="scale_register")
            if self.writable:
                self._bad(
                    "a point scaled by another register cannot be written (its scale could "
                    "change between reading it and writing)",
                    field="writable",
                )
        if self.wrap is not None:
            if self.kind is not Kind.COUNTER:
                self._bad("wrap is for counters (kind: counter)", field="wrap")
            if not (math.isfinite(self.wrap) and self.wrap > 0):
                self._bad(f"wrap {self.wrap!r} must be a positive number", field="wrap")
        if self.writable and not table.writable:
            self._bad("is writable but not a coil or holding register", field="writable")
        if self.limits is not None and not self.limits[0] <= self.limits[1]:
            self._bad(f"limits {self.limits} run backwards", field="limits")
        if self.simulate is not None:
            self._check_hint(self.simulate)

    def _check_hint(self, h: SimHint) -> None:
        """A ``simulate:`` that fits the point: its keys for its kind, values it can hold."""

        def bad(why: str) -> NoReturn:
            self._bad(f"simulate: {why}", field="simulate")

        numeric = [k for k in ("nominal", "range", "noise", "daily", "rate_per_h") if
                   getattr(h, k) is not None]  # fmt: skip
        if self.dtype is DataType.STRING:
            if numeric or h.values or h.quantity is not None:
                bad("a string takes text only")
            if h.text is not None:
                if len(h.text) > 2 * (self.length or 0):
                    bad(f"text {h.text!r} is longer than {2 * (self.length or 0)} characters "
                        f"({self.length} registers)")  # fmt: skip
                if not all(" " <= c <= "~" for c in h.text):
                    bad(f"text {h.text!r}: printable ASCII only")
            return
        if h.text is not None:
            bad("text is for strings")
        if h.quantity is not None and (numeric or h.values):
            bad("quantity takes the model's values: give it or value hints, not both")
        state = self.dtype is DataType.BOOL or bool(self.labels)
        if h.values:
            if numeric:
                bad(f"values takes the place of {', '.join(numeric)}")
            for v in h.values:
                self._check_hint_value(v, bad)
            return
        if state and numeric:
            bad(f"a {'flag' if self.dtype is DataType.BOOL else 'state'} takes values: [...], "
                f"not {', '.join(numeric)}")  # fmt: skip
        if self.kind is Kind.COUNTER:
            if set(numeric) - {"rate_per_h", "daily"}:
                bad(
                    "a counter grows: give rate_per_h (and a daily shape), not "
                    + ", ".join(k for k in numeric if k not in ("rate_per_h", "daily"))
                )
        elif h.rate_per_h is not None:
            bad("rate_per_h is for counters (kind: counter)")
        if h.rate_per_h is not None and not (math.isfinite(h.rate_per_h) and h.rate_per_h >= 0):
            bad(f"rate_per_h {h.rate_per_h!r} must be a number >= 0")
        if h.noise is not None and not (math.isfinite(h.noise) and h.noise >= 0):
            bad(f"noise {h.noise!r} must be a number >= 0")
        if h.daily is not None and h.daily not in SHAPES:
            bad(f"daily {h.daily!r} is not one of {', '.join(SHAPES)}")
        if h.range is not None:
            lo, hi = h.range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                bad(f"range [{lo:g}, {hi:g}] must run from low to high")
            if h.nominal is not None and not lo <= h.nominal <= hi:
                bad(f"nominal {h.nominal:g} is outside range [{lo:g}, {hi:g}]")
        for key, v in (("nominal", h.nominal), *zip(("range",) * 2, h.range or (), strict=False)):
            if v is not None:
                self._check_hint_value(v, bad, key)

    def _check_hint_value(self, v: float | bool, bad: Any, key: str = "values") -> None:
        """A value a hint names must be one the point's registers can hold."""
        if self.dtype is DataType.BOOL:
            if not isinstance(v, bool):
                bad(f"{key}: a flag takes true or false, not {v!r}")
            return
        if isinstance(v, bool) or not math.isfinite(v):
            bad(f"{key}: {v!r} is not a number")
        span = self.value_span()
        if span is not None and not span[0] <= v <= span[1]:
            what = f"{self.dtype}" + (f" × {self.scale:g}" if self.scale != 1 else "")
            what += f" + {self.offset:g}" if self.offset else ""
            bad(f"{key} {v:g} does not fit a {what} ({span[0]:g}..{span[1]:g})")
        if self.labels and v not in self.label_map:
            bad(f"{key} {v:g} is not one of the labelled values")
        if (self.labels or self.bits is not None) and v != int(v):
            bad(f"{key} {v:g} is not a whole number")

    def value_span(self) -> tuple[float, float] | None:
        """The lowest and highest values the point's registers can hold (None: a float, a string
        or a point scaled by another register, whose span depends on it)."""
        if self.scale_register is not None or not (self.dtype.is_integer or self.bits):
            return None
        lo, hi = _RANGE[self.dtype] if self.bits is None else (0, (1 << _width(self.bits)) - 1)
        a, b = lo * self.scale + self.offset, hi * self.scale + self.offset
        return (a, b) if a <= b else (b, a)

    def _check_labels(self, scaled: bool) -> None:
        if not self.dtype.is_integer:
            self._bad(
                f"labels name integer values; a {self.dtype} cannot carry them", field="labels"
            )
        if scaled:
            self._bad(
                "labels name raw values: a labelled point takes no scale or offset", field="labels"
            )
        if self.kind is not Kind.GAUGE:
            self._bad("a labelled point is a state, not a counter", field="labels")
        lo, hi = _RANGE[self.dtype] if self.bits is None else (0, (1 << _width(self.bits)) - 1)
        seen = set()
        for value, label in self.labels:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                self._bad(
                    f"label value {value!r} is not a {self.dtype} value ({lo}..{hi})",
                    field="labels",
                )
            if not isinstance(label, str) or not label.strip():
                self._bad(f"label of {value} must be non-empty text", field="labels")
            if value in seen:
                self._bad(f"value {value} has two labels", field="labels")
            seen.add(value)

    @property
    def count(self) -> int:
        """How many registers (or bits) the point occupies."""
        return self.length if self.length is not None else register_count(self.dtype)

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.address + self.count

    @property
    def label_map(self) -> dict[int, str]:
        return dict(self.labels)

    def scale_with(self, sf: int | float | None) -> float:
        """The multiplier of ``raw``: ``scale × 10^sf``. Raises :class:`ModbusValueError` for a
        scale factor outside SunSpec's -10..10 (-32768 is "not implemented")."""
        if self.scale_register is None:
            return self.scale
        if sf is None:
            raise ModbusValueError(f"its scale factor {self.scale_register!r} was not read")
        lo, hi = SCALE_FACTOR_RANGE
        if not lo <= sf <= hi:
            raise ModbusValueError(
                f"scale factor {self.scale_register!r} holds {sf}, outside {lo}..{hi}"
                + (" (the device does not implement it)" if sf == -32768 else "")
            )
        return self.scale * 10.0 ** int(sf)

    def decode(
        self, registers: Sequence[int], sf: int | float | None = None
    ) -> float | int | bool | str:
        """The point's value from its registers (``sf``: its scale register's value, if any).

        Raises :class:`ModbusValueError` when the registers cannot give a value."""
        return decode_value(
            registers,
            self.dtype,
            self.byte_order,
            scale=self.scale if self.scale_register is None else self.scale_with(sf),
            offset=self.offset,
            bits=self.bits,
        )

    def encode(self, value: float | int | bool | str, sf: int | float | None = None) -> list[int]:
        """The registers that hold ``value`` (a field of bits: zeros outside it). Raises
        :class:`ModbusValueError` when the value does not fit."""
        return encode_value(
            value,
            self.dtype,
            self.byte_order,
            scale=self.scale_with(sf),
            offset=self.offset,
            bits=self.bits,
            length=self.length,
        )

    def encode_write(self, value: float | int | bool) -> list[int]:
        """The registers (or coil bit) that set this writable point to ``value``.

        Raises ValueError, in our words, for a value outside ``limits``, a value the labels do
        not name, a value that does not fit, or one between two steps of an integer register
        (50.5 on a dimming level would be written as 50 and answered ok)."""
        if self.limits is not None and not self.limits[0] <= value <= self.limits[1]:
            lo, hi = self.limits
            raise ValueError(f"accepts {lo:g}..{hi:g}, not {value}")
        if self.labels and value not in self.label_map:
            named = ", ".join(f"{v} ({label})" for v, label in self.labels)
            raise ValueError(f"takes one of {named}, not {value!r}")
        try:
            regs = self.encode(value)
        except ModbusValueError as exc:
            raise ValueError(str(exc)) from None
        if self.dtype.is_integer:
            steps = (value - self.offset) / self.scale  # in register units
            plain = self.scale == 1 and self.offset == 0
            if (steps != round(steps)) if plain else abs(steps - round(steps)) > 1e-9:
                stored = self.decode(regs)
                step = f"{self.scale:g} {self.unit}".strip()
                raise ValueError(
                    f"takes whole steps of {step}: {value!r} is not one (nearest: {stored:g})"
                )
        return regs


_ENUMS: tuple[tuple[str, type[StrEnum]], ...] = (
    ("dtype", DataType),
    ("register_type", RegisterType),
    ("word_order", WordOrder),
    ("byte_order", ByteOrder),
    ("kind", Kind),
)

_RANGE = {
    DataType.UINT16: (0, 0xFFFF),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.UINT32: (0, 0xFFFF_FFFF),
    DataType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
}


def _width(bits: tuple[int, int]) -> int:
    return bits[1] - bits[0] + 1


class _PointsByName:
    """Lookup of a profile's points by name (both kinds of profile)."""

    __slots__ = ()
    points: tuple[Any, ...]

    def point(self, name: str) -> Any:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def point_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)


@dataclass(frozen=True, slots=True)
class Profile(_PointsByName):
    """A device model: its points and what requests it accepts.

    ``readable_ranges`` are half-open ``(start, end)`` register ranges, per register type, that
    the device answers as a whole even where no point is mapped; a plan may read through an
    unmapped gap only inside one of them. Outside them only mapped registers are read.
    """

    name: str
    vendor: str
    model: str
    points: tuple[Point, ...]
    max_registers_per_request: int = MAX_READ_REGISTERS
    max_bits_per_request: int = MAX_READ_BITS
    even_register_count: bool = False  # Eastron: odd counts draw an exception
    readable_ranges: dict[RegisterType, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    default_port: int = 502
    #: The serial setting the device leaves the factory with (baud, parity, stop bits).
    default_line: LineTiming = field(default_factory=LineTiming)
    description: str = ""
    #: Where the map comes from: the vendor document's title and version (a profile file's
    #: required ``source:``, docs/profile-format.md §0.1).
    source: str = ""
    #: The behaviour model its simulator follows (docs/profile-format.md §16); None: the points'
    #: value hints alone. The gateway never reads it.
    simulate: SimModel | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_registers_per_request <= MAX_READ_REGISTERS:
            raise ProfileError(
                f"{self.name}: max_registers_per_request must be 1..{MAX_READ_REGISTERS}",
                field="max_registers_per_request",
            )
        if not 1 <= self.max_bits_per_request <= MAX_READ_BITS:
            raise ProfileError(
                f"{self.name}: max_bits_per_request must be 1..{MAX_READ_BITS}",
                field="max_bits_per_request",
            )
        for rtype, ranges in self.readable_ranges.items():
            for lo, hi in ranges:
                if not 0 <= lo <= hi <= 0x10000:
                    raise ProfileError(
                        f"{self.name}: readable range [{lo}, {hi}) of {rtype} registers must "
                        "not end before it starts, and lie in 0..65536 (the end is one past the "
                        "last register)",
                        field="readable_ranges",
                    )
        seen: dict[str, Point] = {}
        for p in self.points:
            if p.name in seen:
                raise ProfileError(
                    f"{self.name}: point {p.name!r} declared twice", points=(p.name, p.name)
                )
            if p.end > 0x10000:
                raise ProfileError(
                    f"{self.name}: point {p.name!r} runs past register 65535",
                    field="address",
                    points=(p.name,),
                )
            seen[p.name] = p
        for p in self.points:
            if p.scale_register is not None:
                self._check_scale_register(p, seen.get(p.scale_register))
        for rtype in RegisterType:
            self._check_overlaps(rtype)
        self._check_simulate()

    def _check_simulate(self) -> None:
        """The named model exists and every point it gives a value can show that value."""
        sim = self.simulate
        for p in self.points:
            q = p.simulate.quantity if p.simulate is not None else None
            if q is not None and sim is None:
                raise ProfileError(
                    f"{self.name}: point {p.name!r}: simulate: quantity {q!r} names a quantity of "
                    "a behaviour model: give the profile simulate: {model: ...}",
                    field="simulate",
                    points=(p.name,),
                )
        if sim is None:
            return
        if sim.model not in MODELS:
            raise ProfileError(
                f"{self.name}: simulate: model {sim.model!r} is not one the project ships "
                f"({', '.join(MODELS)})",
                field="simulate",
            )
        if (sim.phases is not None or sim.peak_kw is not None) and sim.model != "energy_meter":
            raise ProfileError(
                f"{self.name}: simulate: phases and peak_kw are the energy_meter model's, "
                f"not the {sim.model} model's",
                field="simulate",
            )
        if sim.phases not in (None, 1, 3):
            raise ProfileError(
                f"{self.name}: simulate: phases {sim.phases} is 1 or 3", field="simulate"
            )
        if sim.peak_kw is not None and not (math.isfinite(sim.peak_kw) and sim.peak_kw > 0):
            raise ProfileError(
                f"{self.name}: simulate: peak_kw {sim.peak_kw!r} must be above 0", field="simulate"
            )
        for p in self.points:
            h = p.simulate
            own = h is not None and h.quantity is None and h != SimHint()  # hints of its own
            q = h.quantity if h is not None and h.quantity is not None else p.name
            unit = model_unit(sim.model, q)
            where = f"{self.name}: point {p.name!r}"
            if unit is None:
                if h is not None and h.quantity is not None:
                    raise ProfileError(
                        f"{where}: simulate: quantity {q!r} is not one of the {sim.model} "
                        f"model's ({', '.join(sorted(MODELS[sim.model]))})",
                        field="simulate",
                        points=(p.name,),
                    )
                continue
            if own:
                continue
            sector = bool(p.labels) and unit == "°"  # a compass sector of an angle
            if p.dtype is DataType.STRING or not (sector or compatible(unit, p.unit)):
                raise ProfileError(
                    f"{where} shows the {sim.model} model's {q!r}, in {unit or 'no unit'}; a "
                    f"{p.dtype} in {p.unit or 'no unit'!r} cannot: give the point a unit of "
                    "that quantity, another quantity, or value hints of its own (simulate:)",
                    field="simulate",
                    points=(p.name,),
                )

    def _check_scale_register(self, p: Point, sf: Point | None) -> None:
        where = f"{self.name}: point {p.name!r}: scale_register {p.scale_register!r}"
        if sf is None:
            raise ProfileError(
                f"{where} is not a point of this profile", field="scale_register", points=(p.name,)
            )
        if (
            sf.dtype is not DataType.INT16
            or sf.bits is not None
            or sf.scale != 1
            or sf.offset != 0
            or sf.scale_register is not None
        ):
            raise ProfileError(
                f"{where} must be a plain int16 point (no bits, scale, offset or scale "
                "register of its own): a SunSpec scale factor",
                field="scale_register",
                points=(p.name,),
            )

    def _check_overlaps(self, rtype: RegisterType) -> None:
        """Points never share a register, except fields of bits that share none of their bits
        (and read the register in the same byte order)."""
        pts = sorted((p for p in self.points if p.register_type is rtype), key=lambda p: p.address)
        last: Point | None = None  # the whole-register point reaching furthest so far
        fields: dict[int, list[Point]] = {}  # register -> fields of bits in it
        for p in pts:
            if last is not None and p.address < last.end:
                raise ProfileError(
                    f"{self.name}: points {last.name!r} and {p.name!r} overlap",
                    points=(last.name, p.name),
                )
            if p.bits is None:
                if p.address in fields:
                    q = fields[p.address][0]
                    raise ProfileError(
                        f"{self.name}: points {q.name!r} and {p.name!r} overlap",
                        points=(q.name, p.name),
                    )
                last = p if last is None or p.end > last.end else last
                continue
            mask = bits_mask(p.bits)
            for q in fields.setdefault(p.address, []):
                assert q.bits is not None
                if bits_mask(q.bits) & mask:
                    raise ProfileError(
                        f"{self.name}: points {q.name!r} and {p.name!r} overlap: both take "
                        f"bits of {rtype} register {p.address:#06x}",
                        field="bits",
                        points=(q.name, p.name),
                    )
                if q.byte_order.byte_swap != p.byte_order.byte_swap:
                    raise ProfileError(
                        f"{self.name}: points {q.name!r} and {p.name!r} share {rtype} register "
                        f"{p.address:#06x} but read its bytes in different orders",
                        field="byte_order",
                        points=(q.name, p.name),
                    )
            fields[p.address].append(p)

    def max_per_request(self, rtype: RegisterType) -> int:
        """The most registers (or bits, for coils and discrete inputs) one read may ask for."""
        return self.max_bits_per_request if rtype.is_bits else self.max_registers_per_request

    def readable(self, rtype: RegisterType, start: int, end: int) -> bool:
        """True when registers ``[start, end)`` lie inside one declared readable range."""
        return any(lo <= start and end <= hi for lo, hi in self.readable_ranges.get(rtype, ()))


def bit(
    name: str,
    address: int,
    table: RegisterType,
    *,
    writable: bool = False,
    description: str = "",
) -> Point:
    """A coil or discrete input."""
    return Point(
        name,
        address,
        DataType.BOOL,
        register_type=table,
        writable=writable,
        description=description,
    )


def float32_input(
    name: str, address: int, unit: str = "", description: str = "", *, kind: Kind = Kind.GAUGE
) -> Point:
    """An IEEE-754 float32 in two input registers, high word first (the energy-meter case)."""
    return Point(name, address, DataType.FLOAT32, unit, description=description, kind=kind)


# --------------------------------------------------------------------------- serial sensors


@dataclass(frozen=True, slots=True)
class SensorPoint:
    """One value a streaming serial sensor reports (no registers: the protocol names it)."""

    name: str
    unit: str = ""
    dtype: DataType = DataType.UINT16
    description: str = ""
    writable: bool = False  # serial sensors take mode commands, never point writes
    kind: Kind = Kind.GAUGE  # as for a register point (Point.kind, Point.wrap, Point.labels)
    wrap: float | None = None
    labels: tuple[tuple[int, str], ...] = ()
    key: bool = False  # as Point.key

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ProfileError(
                f"point {self.name!r}: unit {self.unit!r} is not a known symbol; "
                f"{unit_hint(self.unit)}"
            )
        if self.wrap is not None and self.kind is not Kind.COUNTER:
            raise ProfileError(f"point {self.name!r}: wrap is for counters (kind: counter)")


@dataclass(frozen=True, slots=True)
class SensorProfile(_PointsByName):
    """A sensor with its own UART protocol (``protocol`` names the codec in protocols/)."""

    name: str
    vendor: str
    model: str
    protocol: str
    points: tuple[SensorPoint, ...]
    default_line: LineTiming = field(default_factory=LineTiming)
    #: Seconds after wake-up before readings can be trusted (the fan must reach speed).
    warmup_s: float = 30.0
    description: str = ""

    def __post_init__(self) -> None:
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ProfileError(f"{self.name}: a point is declared twice")
