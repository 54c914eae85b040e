"""Edge processing: time windows and report-by-exception, between polling and the buffer.

Configured per device and point (``devices[].processing``, see :class:`edge.config.ProcessingRule`);
points without a rule pass through raw, as do health series and values that are not numbers.

* **Windows** are aligned to the clock (a 60 s window runs from :00 to :60) and close when the
  first reading of a later window arrives, or, if the device falls silent, one window length after
  their end (:meth:`Processor.flush`). A closed window becomes one reading per aggregate, on the
  series ``<point>.<aggregate>``, stamped with the window's start. Aggregates: mean, min, max,
  first, last, count and percentiles ``pNN`` (linear interpolation, numpy's default). ``count``
  says how many samples a value stands for, so a short window (a device that went offline)
  is visible as such.
* **Deadband**: a reading is reported when it differs from the last *reported* value by more
  than the deadband, and at least every ``heartbeat_s`` so a quiet value still reports; the first
  reading always goes. NaN (a meter's "no value") differs from every number and from a NaN with
  other bits: a point going NaN, and coming back, is reported at once.

Values that are not ordinary numbers follow IEEE 754: a window holding a NaN has NaN for its
mean, min, max and percentiles (``count``, ``first`` and ``last`` are as always); ±inf enter the
aggregates as infinities (inf and -inf in one window make a NaN mean). No warning is printed.

An open window lives in memory: a clean stop flushes it (partial, with its count); a crash loses
at most the samples of the windows open at that moment.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge.clock import PENDING
from edge.config import DeviceConfig, ProcessingRule
from protocols.batch import TQ_GOOD, Reading

__all__ = ["Processor", "aggregate", "output_series"]


_BITS = struct.Struct("<d")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def aggregate(values: list[int | float], name: str) -> int | float:
    """One aggregate of a window's values (numpy; ints stay ints where the aggregate allows)."""
    if name == "count":
        return len(values)
    if name == "first":
        return values[0]
    if name == "last":
        return values[-1]
    import numpy as np  # only a gateway with windows pays numpy's ~15 MB

    arr = np.asarray(values)
    # NaN and ±inf give their IEEE results (NaN propagates; inf - inf is NaN) without numpy's
    # RuntimeWarning on stderr at every window.
    with np.errstate(invalid="ignore", over="ignore"):
        if name == "min":
            return arr.min().item()
        if name == "max":
            return arr.max().item()
        if name == "mean":
            return float(arr.mean(dtype=np.float64))
        q = int(name[1:])  # pNN
        out = float(np.percentile(arr.astype(np.float64), q))
        if out != out and not np.isnan(arr).any():
            # numpy interpolates towards an infinity as inf - inf: NaN where the answer is ±inf.
            s = np.sort(arr.astype(np.float64))
            pos = q / 100 * (len(s) - 1)
            lo = math.floor(pos)
            x, y = float(s[lo]), float(s[min(lo + 1, len(s) - 1)])
            if x == y or pos == lo:
                out = x
            elif math.isinf(x) != math.isinf(y):  # between a number and an infinity
                out = x if math.isinf(x) else y
            # else -inf to +inf: no answer, NaN stays
        return out


def output_series(rule: ProcessingRule, point: str) -> list[str]:
    """The series a rule makes of one point."""
    if rule.window_s is None:
        return [point]
    out = [f"{point}.{a}" for a in rule.aggregates]
    return [point, *out] if rule.raw else out


@dataclass
class _Window:
    rule: ProcessingRule
    index: int | None = None  # which window (start = index * window_s)
    values: list[int | float] = field(default_factory=list)
    tq: int = TQ_GOOD  # the worst time quality of its samples
    boot_minus_ts: int = 0  # of a sample stamped while the clock was untrusted


@dataclass
class _Deadband:
    rule: ProcessingRule
    last: object = None
    last_ts: int | None = None


class Processor:
    def __init__(self, devices: Iterable[DeviceConfig], points: dict[str, list[str]]) -> None:
        """``points``: device id -> the points it reads (the rules' default)."""
        self.windows: dict[tuple[str, str], _Window] = {}
        self.deadbands: dict[tuple[str, str], _Deadband] = {}
        self.raw_too: set[tuple[str, str]] = set()
        self.readings_in = 0
        self.readings_out = 0
        for dev in devices:
            for rule in dev.processing:
                for point in rule.points or points.get(dev.id, []):
                    key = (dev.id, point)
                    if rule.window_s is not None:
                        self.windows[key] = _Window(rule)
                        if rule.raw:
                            self.raw_too.add(key)
                    else:
                        self.deadbands[key] = _Deadband(rule)

    @property
    def active(self) -> bool:
        return bool(self.windows or self.deadbands)

    def process(self, readings: list[Reading]) -> list[Reading]:
        self.readings_in += len(readings)
        if not self.active:
            self.readings_out += len(readings)
            return readings
        out: list[Reading] = []
        for r in readings:
            key = (r.device, r.point)
            w = self.windows.get(key)
            if w is not None and _is_number(r.value):
                index = math.floor(r.ts_ms / (w.rule.window_s * 1000))
                if w.index is not None and index != w.index and w.values:
                    out.extend(self._close(key, w))
                if w.index is None or index != w.index:
                    w.index, w.values, w.tq = index, [], TQ_GOOD
                w.values.append(r.value)  # type: ignore[arg-type]
                if r.tq > w.tq:
                    w.tq = r.tq
                if r.boot_ms is not None:  # a held sample: the window is re-timed like it
                    w.boot_minus_ts = r.boot_ms - r.ts_ms
                if key in self.raw_too:
                    out.append(r)
                continue
            d = self.deadbands.get(key)
            if d is not None:
                if self._passes(d, r):
                    d.last, d.last_ts = r.value, r.ts_ms
                    out.append(r)
                continue
            out.append(r)
        self.readings_out += len(out)
        return out

    @staticmethod
    def _passes(d: _Deadband, r: Reading) -> bool:
        if d.last_ts is None or r.ts_ms - d.last_ts >= d.rule.heartbeat_s * 1000:
            return True
        if _is_number(r.value) and _is_number(d.last):
            a, b = r.value, d.last
            if a != a or b != b:  # a NaN: no distance to anything; only the same NaN is equal
                return _BITS.pack(a) != _BITS.pack(b)  # type: ignore[arg-type]
            return abs(a - b) > d.rule.deadband  # type: ignore[operator]
        return r.value != d.last

    def _close(self, key: tuple[str, str], w: _Window) -> list[Reading]:
        assert w.index is not None
        ts = int(w.index * w.rule.window_s * 1000)
        device, point = key
        boot = ts + w.boot_minus_ts if w.tq == PENDING else None
        out = [
            Reading(device, f"{point}.{a}", ts, aggregate(w.values, a), w.tq, boot)
            for a in w.rule.aggregates
        ]
        w.values, w.tq = [], TQ_GOOD
        return out

    def flush(self, now_ms: int, *, everything: bool = False) -> list[Reading]:
        """Close windows that ended at least one window length ago (or all, at shutdown)."""
        out: list[Reading] = []
        for key, w in self.windows.items():
            if w.index is None or not w.values:
                continue
            span = w.rule.window_s * 1000
            if everything or now_ms >= (w.index + 2) * span:
                out.extend(self._close(key, w))
        self.readings_out += len(out)
        return out
