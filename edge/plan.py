"""Compile a device's points into an immutable read plan: few requests, within the device's limits.

Pure (no I/O). Points are sorted by address and merged greedily into one request while

* the request stays within ``max_registers`` (the smaller of 125, the profile's limit and the
  configured limit), and
* the registers between the request's end and the next point are either none (adjacent), or an
  unmapped gap of at most ``max_gap_registers`` lying inside a range the profile declares
  readable (a device may answer exception 02 for an unmapped register it does not serve).

A device that wants even register counts (Eastron) gets its odd requests widened by one register
where that register is readable; otherwise the plan is refused.

Issue 3 replaces the fixed gap threshold with a cost model from link speed and turnaround.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from devices.profile import Point, Profile, RegisterType
from protocols.modbus import MAX_READ_REGISTERS, decode_value

__all__ = ["PlanError", "ReadPlan", "ReadRequest", "compile_plan"]


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

    def decode(self, registers: Sequence[int]) -> list[tuple[Point, float | int]]:
        """Decode every point of this request from the registers (or bits) it returned."""
        if len(registers) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(registers)}")
        out = []
        for p in self.points:
            off = p.address - self.address
            out.append(
                (
                    p,
                    decode_value(
                        registers[off : off + p.count], p.dtype, p.word_order, scale=p.scale
                    ),
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class ReadPlan:
    profile: str
    requests: tuple[ReadRequest, ...]

    @property
    def point_count(self) -> int:
        return sum(len(r.points) for r in self.requests)

    @property
    def register_count(self) -> int:
        return sum(r.count for r in self.requests)

    def summary(self) -> str:
        return (
            f"{len(self.requests)} requests touching {self.register_count} registers "
            f"for {self.point_count} points"
        )


def compile_plan(
    profile: Profile,
    point_names: Sequence[str] | None = None,
    *,
    max_registers: int | None = None,
    max_gap_registers: int = MAX_READ_REGISTERS,
) -> ReadPlan:
    """Build the read plan for ``point_names`` (all of the profile's points when None)."""
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
    requests: list[ReadRequest] = []
    for rtype in RegisterType:
        limit = profile.max_per_request(rtype)
        if max_registers is not None and not rtype.is_bits:
            limit = min(limit, max_registers)
        pts = sorted((p for p in points if p.register_type is rtype), key=lambda p: p.address)
        group: list[Point] = []
        for p in pts:
            if p.count > limit:
                raise PlanError(f"point {p.name!r} needs {p.count} registers; the limit is {limit}")
            if group and _fits(profile, rtype, group, p, limit, max_gap_registers):
                group.append(p)
                continue
            if group:
                requests.append(_seal(profile, rtype, group, limit))
            group = [p]
        if group:
            requests.append(_seal(profile, rtype, group, limit))
    return ReadPlan(profile.name, tuple(requests))


def _fits(
    profile: Profile, rtype: RegisterType, group: list[Point], p: Point, limit: int, max_gap: int
) -> bool:
    start, end = group[0].address, max(q.end for q in group)
    if p.end - start > limit:
        return False
    gap = p.address - end
    if gap == 0:
        return True
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
