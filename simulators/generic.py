"""Values for a profile no behaviour model knows: one steady, plausible value per point.

A data profile (a user's YAML file) gets a simulator without code: every point holds a value
its encoding carries exactly (so what the gateway decodes can be compared with what was
served), different per point and per seed, and the same on every read:

* a flag: true or false; an enumeration: one of its labelled values; a field of bits: a value
  that fits it; a string: the point's name, cut to its registers;
* a SunSpec scale factor (a point another one names in ``scale_register``): -1 or -2;
* a writable number with ``limits``: a value between them on the register's steps;
* any other number: 10.0 to 999.9 (float), or 10 to 999 register steps (integer, scaled).

Value hints and named behaviour models in the profile file come later (issue 19, item 4).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from devices.profile import Point, Profile
from protocols.modbus import DataType

__all__ = ["SteadyModel"]

Value = float | int | bool | str


class SteadyModel:
    """``model()`` for :class:`simulators.modbus_device.ProfileSimUnit`: fixed values by point."""

    def __init__(self, profile: Profile, seed: int | None = None) -> None:
        factors = {p.scale_register for p in profile.points if p.scale_register}
        self.values: dict[str, Value] = {
            p.name: _value(p, _draw(seed, p.name), p.name in factors) for p in profile.points
        }
        sf = {name: self.values[name] for name in factors}
        for p in profile.points:  # a point scaled by another register: whole steps of it
            if p.scale_register is not None:
                raw = 10 + _draw(seed, p.name + "/raw") % 990
                self.values[p.name] = raw * p.scale * 10.0 ** int(sf[p.scale_register]) + p.offset

    def __call__(self) -> Mapping[str, Value]:
        return self.values


def _draw(seed: int | None, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


def _value(p: Point, n: int, is_factor: bool) -> Value:
    if p.dtype is DataType.BOOL:
        return bool(n & 1)
    if p.dtype is DataType.STRING:
        return p.name[: 2 * (p.length or 1)]
    if p.labels:
        return p.labels[n % len(p.labels)][0]
    if is_factor:
        return -1 - n % 2
    if p.bits is not None:
        raw = n % (1 << (p.bits[1] - p.bits[0] + 1))
    elif p.limits is not None and p.dtype.is_integer:
        lo, hi = ((x - p.offset) / p.scale for x in p.limits)
        lo, hi = sorted((lo, hi))
        raw = int(lo) + n % max(1, int(hi) - int(lo) + 1)
    elif p.limits is not None:
        lo, hi = p.limits
        return lo + (hi - lo) * (n % 1000) / 1000
    elif p.dtype.is_integer:
        raw = 10 + n % 990
        if p.dtype in (DataType.INT16, DataType.INT32, DataType.INT64) and n & 1:
            raw = -raw
    else:
        return (100 + n % 9900) / 10  # a float: 10.0 .. 999.9
    if p.scale == 1 and p.offset == int(p.offset):
        return raw + int(p.offset)
    return raw * p.scale + p.offset
