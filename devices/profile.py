"""Device profiles: a register map and the device's request limits, as frozen data.

A profile says what registers mean; it never does I/O. The gateway's planner, the drivers, the
simulators and the tests all read the same profile, so one map is the truth for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from protocols.modbus import MAX_READ_REGISTERS, DataType, WordOrder, register_count
from protocols.modbus_frame import MAX_READ_BITS, LineTiming

__all__ = [
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
    """A profile is inconsistent (a bug in the profile file, found at import)."""


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


@dataclass(frozen=True, slots=True)
class Point:
    """One value the device exposes."""

    name: str
    address: int  # 0-based PDU address
    dtype: DataType
    unit: str = ""
    register_type: RegisterType = RegisterType.INPUT
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    description: str = ""
    writable: bool = False  # a coil or holding register the platform may set (allow-listed)
    #: For a writable number: the values the device accepts (it answers exception 03 outside).
    limits: tuple[float, float] | None = None

    @property
    def count(self) -> int:
        return register_count(self.dtype)

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.address + self.count


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

    def __post_init__(self) -> None:
        if not 1 <= self.max_registers_per_request <= MAX_READ_REGISTERS:
            raise ProfileError(
                f"{self.name}: max_registers_per_request must be 1..{MAX_READ_REGISTERS}"
            )
        if not 1 <= self.max_bits_per_request <= MAX_READ_BITS:
            raise ProfileError(f"{self.name}: max_bits_per_request must be 1..{MAX_READ_BITS}")
        seen: dict[str, Point] = {}
        for p in self.points:
            if p.name in seen:
                raise ProfileError(f"{self.name}: point {p.name!r} declared twice")
            if not 0 <= p.address or p.end > 0x10000:
                raise ProfileError(f"{self.name}: point {p.name!r} address out of range")
            if p.writable and not p.register_type.writable:
                raise ProfileError(
                    f"{self.name}: point {p.name!r} is writable but not a coil or holding register"
                )
            if p.register_type.is_bits != (p.dtype is DataType.BOOL):
                raise ProfileError(
                    f"{self.name}: point {p.name!r}: coils and discrete inputs are bool, "
                    "and only they are"
                )
            seen[p.name] = p
        for rtype in RegisterType:
            pts = sorted(
                (p for p in self.points if p.register_type is rtype), key=lambda p: p.address
            )
            for a, b in pairwise(pts):
                if b.address < a.end:
                    raise ProfileError(f"{self.name}: points {a.name!r} and {b.name!r} overlap")

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


def float32_input(name: str, address: int, unit: str = "", description: str = "") -> Point:
    """An IEEE-754 float32 in two input registers, high word first (the energy-meter case)."""
    return Point(name, address, DataType.FLOAT32, unit, description=description)


# --------------------------------------------------------------------------- serial sensors


@dataclass(frozen=True, slots=True)
class SensorPoint:
    """One value a streaming serial sensor reports (no registers: the protocol names it)."""

    name: str
    unit: str = ""
    dtype: DataType = DataType.UINT16
    description: str = ""
    writable: bool = False  # serial sensors take mode commands, never point writes


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
