"""Compile a device's points into an immutable read plan: few requests, within the device's limits.

Pure (no I/O). Points are sorted by address and merged greedily into one request while

* the request stays within the device's limit (the smaller of 125 registers or 2000 bits, the
  profile's limit and the configured one), and
* the registers between the request's end and the next point are either none (adjacent), or an
  unmapped gap lying inside a range the profile declares readable (a device may answer
  exception 02 for a register it does not serve) and **cheaper to read through than a request**.

The cost model (:class:`LinkCost`) prices both from the link: one more request costs its frames'
fixed bytes (8 + 5 on RTU), two t3.5 silences and the device's turnaround; reading through a gap
costs two characters per register (an eighth of one per bit). At 9600 baud with a 20 ms
turnaround a request costs as much as 20 registers, so gaps of up to 20 are read through; on a
LAN, registers are nearly free and any readable gap within the request limit is read through.

A device that wants even register counts (Eastron) gets its odd requests widened by one register
where that register is readable; otherwise the plan is refused. :func:`split_request` is what the
poller uses when a device answers exception 02 to a merged request: read the points again without
the gaps, and, if a part still fails, one point at a time.

Fields of bits that share a register are one register to the plan: they always travel in the
same request. A point scaled by another register (``scale_register``, SunSpec) brings that
register into the plan whenever it is read, and :class:`CycleDecoder` decodes it with the scale
factor read in the same poll cycle, never an older one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from devices.profile import Point, Profile, RegisterType
from protocols.modbus import MAX_READ_REGISTERS, ModbusValueError
from protocols.modbus_frame import MAX_READ_BITS, LineTiming, read_frame_sizes

__all__ = [
    "CycleDecoder",
    "LinkCost",
    "PlanError",
    "ReadPlan",
    "ReadRequest",
    "Value",
    "compile_plan",
    "split_request",
]

#: A decoded point: a number, a flag, or text (a string point).
Value = float | int | bool | str
T = TypeVar("T")

_LAN_BYTE_S = 8 / 10e6  # a byte on a 10 Mbit/s Ethernet link


@dataclass(frozen=True, slots=True)
class LinkCost:
    """What a request and a register cost one device on its link, in seconds."""

    request_s: float  # the fixed cost of one more request
    register_s: float  # the wire cost of one more register in a response
    bit_s: float  # ... of one more coil or discrete input
    timing: LineTiming | None = None  # the RTU line, when there is one
    turnaround_s: float = 0.0

    @classmethod
    def rtu(cls, timing: LineTiming, turnaround_s: float, gap_s: float = 0.0) -> LinkCost:
        extra_gap = max(0.0, gap_s - timing.t35_s)  # a device that wants more than t3.5
        request_s = timing.transaction_s(8, 5, turnaround_s) + extra_gap
        return cls(request_s, timing.wire_s(2), timing.char_s / 8, timing, turnaround_s)

    @classmethod
    def tcp(cls, turnaround_s: float) -> LinkCost:
        return cls(max(turnaround_s, 0.001), 2 * _LAN_BYTE_S, _LAN_BYTE_S / 8, None, turnaround_s)

    def max_gap(self, rtype: RegisterType) -> int:
        """The longest gap cheaper to read through than to skip with one more request."""
        per = self.bit_s if rtype.is_bits else self.register_s
        cap = MAX_READ_BITS if rtype.is_bits else MAX_READ_REGISTERS
        return min(cap, math.floor(self.request_s / per))

    def request_time_s(self, function_code: int, count: int) -> float:
        """Line time of one read (RTU), or its round trip estimate (TCP)."""
        if self.timing is None:
            return self.request_s
        req, resp = read_frame_sizes(function_code, count)
        return self.timing.transaction_s(req, resp, self.turnaround_s)


class PlanError(ValueError):
    """The points cannot be read within the device's limits (a configuration error)."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    register_type: RegisterType
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def function_code(self) -> int:
        return self.register_type.read_function

    def decode(self, registers: Sequence[int]) -> list[tuple[Point, Value]]:
        """Decode every point of this request from the registers (or bits) it returned.

        Raises :class:`ModbusValueError` when a point cannot be decoded, or needs a scale factor
        from another request (decode a whole cycle with :class:`CycleDecoder` instead)."""
        cycle: CycleDecoder[None] = CycleDecoder(
            frozenset(p.scale_register for p in self.points if p.scale_register)
        )
        done, failed = cycle.feed(self, registers, None)
        failed += cycle.unresolved()
        if failed:
            raise ModbusValueError("; ".join(f"{p.name}: {why}" for p, why in failed))
        return [(p, v) for _, p, v in done]


class CycleDecoder(Generic[T]):
    """Decodes the answers of one poll cycle, request by request, as they arrive.

    A point scaled by another register (``scale_register``) takes the factor read in this
    cycle: it waits, with its registers and ``tag`` (say, its request's timestamp), until the
    request carrying the factor is decoded, before or after its own. :meth:`unresolved` lists
    at the end the points whose factor never came (its request failed or is not served).
    ``scale_names`` are the points used as scale factors (:attr:`ReadPlan.scale_names`).
    """

    __slots__ = ("_scale_names", "_waiting", "factors")

    def __init__(self, scale_names: frozenset[str] = frozenset()) -> None:
        self._scale_names = scale_names
        self.factors: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[T, Point, Sequence[int]]]] = {}

    def feed(
        self, req: ReadRequest, registers: Sequence[int], tag: T
    ) -> tuple[list[tuple[T, Point, Value]], list[tuple[Point, str]]]:
        """The points decoded now (this request's, and any that waited for a factor in it),
        and the points that cannot be decoded, with why."""
        if len(registers) != req.count:
            raise ValueError(f"expected {req.count} registers, got {len(registers)}")
        done: list[tuple[T, Point, Value]] = []
        failed: list[tuple[Point, str]] = []
        start = req.address
        for p in req.points:
            off = p.address - start
            regs = registers[off : off + p.count]
            if p.scale_register is not None or p.name in self._scale_names:
                self._decode(tag, p, regs, done, failed)
                continue
            try:  # the common case, kept short: it runs for every point of every poll
                done.append((tag, p, p.decode(regs)))
            except ModbusValueError as exc:
                failed.append((p, str(exc)))
        return done, failed

    def _decode(
        self,
        tag: T,
        p: Point,
        regs: Sequence[int],
        done: list[tuple[T, Point, Value]],
        failed: list[tuple[Point, str]],
    ) -> None:
        sf = p.scale_register
        if sf is not None and sf not in self.factors:
            self._waiting.setdefault(sf, []).append((tag, p, regs))
            return
        try:
            value = p.decode(regs, None if sf is None else self.factors[sf])
        except ModbusValueError as exc:
            failed.append((p, str(exc)))
            return
        done.append((tag, p, value))
        if p.name in self._scale_names:
            self.factors[p.name] = int(value)
            for t, q, r in self._waiting.pop(p.name, ()):
                self._decode(t, q, r, done, failed)

    def unresolved(self) -> list[tuple[Point, str]]:
        """Points still waiting for a scale factor this cycle did not read (then forgotten)."""
        out = [
            (p, f"its scale factor {name!r} was not read in this cycle")
            for name, items in self._waiting.items()
            for _, p, _ in items
        ]
        self._waiting.clear()
        return out


@dataclass(frozen=True, slots=True)
class ReadPlan:
    profile: str
    requests: tuple[ReadRequest, ...]
    cost: LinkCost | None = None
    #: The profile the plan was compiled from (a device's, with its overrides): the poller
    #: splits a refused request and writes points by it.
    source: Profile | None = field(default=None, compare=False, repr=False)

    @property
    def point_count(self) -> int:
        return sum(len(r.points) for r in self.requests)

    @property
    def register_count(self) -> int:
        return sum(r.count for r in self.requests)

    @property
    def scale_names(self) -> frozenset[str]:
        """The points other points take their scale factor from (``scale_register``)."""
        return frozenset(
            p.scale_register for r in self.requests for p in r.points if p.scale_register
        )

    def line_time_s(self) -> float | None:
        """Line time of one poll on an RTU line (None elsewhere)."""
        if self.cost is None or self.cost.timing is None:
            return None
        return sum(self.cost.request_time_s(r.function_code, r.count) for r in self.requests)

    def summary(self) -> str:
        text = (
            f"{len(self.requests)} requests touching {self.register_count} registers "
            f"for {self.point_count} points"
        )
        line_s = self.line_time_s()
        if line_s is not None:
            text += f", {line_s * 1000:.0f} ms of line time per poll"
        return text


def compile_plan(
    profile: Profile,
    point_names: Sequence[str] | None = None,
    *,
    max_registers: int | None = None,
    max_gap_registers: int | None = None,
    cost: LinkCost | None = None,
) -> ReadPlan:
    """Build the read plan for ``point_names`` (all of the profile's points when None).

    Gaps are read through when ``cost`` says it is cheaper (a LAN link when no cost is given),
    or up to ``max_gap_registers`` when that is set (the operator's word wins)."""
    cost = cost or LinkCost.tcp(0.02)
    if max_registers is not None and max_registers < 1:
        raise PlanError("max_registers must be at least 1")
    if point_names is None:
        points = list(profile.points)
    else:
        points = []
        for name in point_names:
            try:
                points.append(profile.point(name))
            except KeyError:
                raise PlanError(f"profile {profile.name} has no point {name!r}") from None
    # A point scaled by another register is never read without it (the profile checked it).
    names = {p.name for p in points}
    for p in list(points):
        if p.scale_register is not None and p.scale_register not in names:
            points.append(profile.point(p.scale_register))
            names.add(p.scale_register)
    requests: list[ReadRequest] = []
    for rtype in RegisterType:
        limit = profile.max_per_request(rtype)
        if max_registers is not None and not rtype.is_bits:
            limit = min(limit, max_registers)
        max_gap = cost.max_gap(rtype)
        if max_gap_registers is not None and not rtype.is_bits:
            max_gap = max_gap_registers
        pts = sorted((p for p in points if p.register_type is rtype), key=lambda p: p.address)
        group: list[Point] = []
        for p in pts:
            if p.count > limit:
                raise PlanError(f"point {p.name!r} needs {p.count} registers; the limit is {limit}")
            if group and _fits(profile, rtype, group, p, limit, max_gap):
                group.append(p)
                continue
            if group:
                requests.append(_seal(profile, rtype, group, limit))
            group = [p]
        if group:
            requests.append(_seal(profile, rtype, group, limit))
    return ReadPlan(profile.name, tuple(requests), cost, profile)


def _fits(
    profile: Profile, rtype: RegisterType, group: list[Point], p: Point, limit: int, max_gap: int
) -> bool:
    start, end = group[0].address, max(q.end for q in group)
    if p.end - start > limit:
        return False
    gap = p.address - end
    if gap <= 0:
        return True  # adjacent, or another field of bits of a register already in the request
    return 0 < gap <= max_gap and profile.readable(rtype, end, p.address)


def _seal(profile: Profile, rtype: RegisterType, group: list[Point], limit: int) -> ReadRequest:
    start, end = group[0].address, max(q.end for q in group)
    if profile.even_register_count and not rtype.is_bits and (end - start) % 2:
        if end - start + 1 <= limit and profile.readable(rtype, end, end + 1):
            end += 1
        elif end - start + 1 <= limit and start > 0 and profile.readable(rtype, start - 1, start):
            start -= 1
        else:
            names = ", ".join(q.name for q in group)
            raise PlanError(
                f"{profile.name} needs even register counts, but {names} at "
                f"{group[0].address:#06x} span {end - start} registers and the register next "
                "to them is not readable"
            )
    return ReadRequest(rtype, start, end - start, tuple(group))


def split_request(profile: Profile, req: ReadRequest) -> list[ReadRequest]:
    """The parts of a merged request that read no gap: runs of adjacent points (a device that
    answered exception 02 does not serve something in a gap). A run of adjacent points splits
    into single points. Parts keep the device's rules (even counts where readable)."""
    runs: list[list[Point]] = []
    for p in req.points:
        if runs and p.address <= max(q.end for q in runs[-1]):  # adjacent, or bits of one register
            runs[-1].append(p)
        else:
            runs.append([p])
    if len(runs) == 1:
        runs = [[p] for p in req.points]
    limit = profile.max_per_request(req.register_type)
    out = []
    for run in runs:
        try:
            out.append(_seal(profile, req.register_type, run, limit))
        except PlanError:
            out.extend(ReadRequest(req.register_type, p.address, p.count, (p,)) for p in run)
    return out
