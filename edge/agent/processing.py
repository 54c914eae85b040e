"""Edge processing: time windows and report-by-exception, between polling and the buffer.

Configured per device and point (``devices[].processing``, see :class:`edge.config.ProcessingRule`);
points without a rule pass through raw, as do health series and values that are not numbers.

* **Windows** are aligned to the clock and close when the first reading of a later window
  arrives, or, if the device falls silent, one window length after their end
  (:meth:`Processor.flush`). A closed window becomes one reading per aggregate, on the series
  ``<point>.<aggregate>``, stamped with the window's start (UTC ms, like every reading).
  Aggregates: mean, min, max, first, last, count and percentiles ``pNN`` (linear interpolation,
  numpy's default). ``count`` says how many samples a value stands for, so a short window (a
  device that went offline) is visible as such. Alignment (:class:`WindowClock`):

  - under an hour: to the Unix epoch (a 60 s window runs from :00 to :60 UTC; in a zone whose
    offset is not whole hours, e.g. Asia/Kathmandu +05:45, a 30-min window starts at :15 / :45
    local);
  - an hour or more: to the gateway's local time (``time.zone``): a window starts at local
    midnight and whenever the local clock reads a multiple of its length after midnight. A day
    window in Hanoi runs 00:00-24:00 +07 (17:00-17:00 UTC); an hourly one in Kolkata starts at
    local :00 (UTC :30). A length that does not divide a day leaves a shorter last window that
    ends at midnight (7 h: 00, 07, 14, 21-24). Where the clock changes (DST) a window spans what
    the clock does: the day window is 23 h or 25 h long; a boundary the clock jumps over starts
    its window at the jump (Berlin's spring hour 01:00-03:00 is one real hour); a boundary the
    clock reads twice starts a window both times (the repeated 02:00 of autumn is two hourly
    windows, their starts an hour apart in UTC).
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

import bisect
import datetime as dt
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge.settings import DeviceConfig, ProcessingRule
from edge.shared.clock import PENDING
from protocols.batch import TQ_GOOD, Reading

__all__ = ["LOCAL_WINDOW_MIN_S", "Processor", "WindowClock", "aggregate", "output_series"]


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


#: Windows at least this long follow the local time zone; shorter ones the Unix epoch.
LOCAL_WINDOW_MIN_S = 3600

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_DAY_MS = 86_400_000


class WindowClock:
    """Where the windows of one length begin and end (see the module's docstring).

    ``zone``: the gateway's zone; None (or a window under an hour) aligns to the epoch.
    """

    def __init__(self, window_s: float, zone: dt.tzinfo | None = None) -> None:
        self.span_ms = window_s * 1000
        self.zone = zone if window_s >= LOCAL_WINDOW_MIN_S else None
        self._days: dict[dt.date, list[int]] = {}

    def bounds(self, ts_ms: int) -> tuple[int, int]:
        """``(start, end)`` in Unix ms of the window holding ``ts_ms``: start <= ts_ms < end."""
        if self.zone is not None:
            try:
                return self._local_bounds(ts_ms)
            except (OverflowError, ValueError, OSError):
                pass  # a clock outside years 1..9999 (never set, or wild): the epoch will do
        index = math.floor(ts_ms / self.span_ms)
        return int(index * self.span_ms), int((index + 1) * self.span_ms)

    def _local_bounds(self, ts_ms: int) -> tuple[int, int]:
        day = self._local(ts_ms).date()
        # Three local days: where the clock goes back over midnight, the latest boundary before
        # an instant can belong to the next date (and a window is at most a day long).
        edges = sorted({b for d in (-1, 0, 1) for b in self._boundaries(day + dt.timedelta(d))})
        i = bisect.bisect_right(edges, ts_ms)
        start = edges[i - 1] if i > 0 else int(ts_ms // self.span_ms * self.span_ms)
        end = edges[i] if i < len(edges) else start + int(self.span_ms)
        return start, end

    def _local(self, ms: int) -> dt.datetime:
        """The local wall-clock reading (naive; its ``fold`` says which of a repeated hour)."""
        return (_EPOCH + ms * _MS).astimezone(self.zone).replace(tzinfo=None)

    def _boundaries(self, day: dt.date) -> list[int]:
        """The instants (Unix ms) at which a window starts on the local date ``day``."""
        out = self._days.get(day)
        if out is None:
            midnight = dt.datetime.combine(day, dt.time())
            step = max(1, round(self.span_ms))
            out = sorted(
                {
                    ms
                    for wall_ms in range(0, _DAY_MS, step)
                    for ms in self._instants(midnight + wall_ms * _MS)
                }
            )
            if len(self._days) > 64:  # a few days are ever needed at once
                self._days.clear()
            self._days[day] = out
        return out

    def _instants(self, wall: dt.datetime) -> list[int]:
        """The instants at which the local clock reads ``wall`` (two in a repeated hour), or,
        when the clock jumps over it, the instant of the jump."""
        found, tried = [], []
        for fold in (0, 1):
            aware = wall.replace(tzinfo=self.zone, fold=fold)
            ms = (aware - _EPOCH) // _MS
            tried.append(ms)
            back = self._local(ms)
            if back.replace(fold=0) == wall and back.fold == fold:
                found.append(ms)
        if found:
            return found
        # Skipped (a gap): the first instant whose reading is past it lies between the two
        # readings of the wall time with the offsets before and after the change.
        lo, hi = min(tried), max(tried)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._local(mid).replace(fold=0) >= wall:
                hi = mid
            else:
                lo = mid + 1
        return [lo]


@dataclass
class _Window:
    rule: ProcessingRule
    clock: WindowClock
    start: int | None = None  # Unix ms; None: not opened yet
    end: int = 0
    values: list[int | float] = field(default_factory=list)
    tq: int = TQ_GOOD  # the worst time quality of its samples
    boot_minus_ts: int = 0  # of a sample stamped while the clock was untrusted


@dataclass
class _Deadband:
    rule: ProcessingRule
    last: object = None
    last_ts: int | None = None


class Processor:
    def __init__(
        self,
        devices: Iterable[DeviceConfig],
        points: dict[str, list[str]],
        zone: dt.tzinfo | None = None,
    ) -> None:
        """``points``: device id -> the points it reads (the rules' default). ``zone``: where
        windows of an hour or more align (``time.zone``); None: UTC."""
        clocks: dict[float, WindowClock] = {}
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
                        clock = clocks.get(rule.window_s)
                        if clock is None:
                            clock = clocks[rule.window_s] = WindowClock(rule.window_s, zone)
                        self.windows[key] = _Window(rule, clock)
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
                if w.start is None or not w.start <= r.ts_ms < w.end:
                    start, end = w.clock.bounds(r.ts_ms)
                    if start != w.start:
                        if w.values:
                            out.extend(self._close(key, w))
                        w.values, w.tq = [], TQ_GOOD
                    w.start, w.end = start, end
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
        assert w.start is not None
        ts = w.start
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
            if w.start is None or not w.values:
                continue
            if everything or now_ms >= w.end + w.clock.span_ms:
                out.extend(self._close(key, w))
        self.readings_out += len(out)
        return out
