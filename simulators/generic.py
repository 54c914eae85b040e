"""Values for any profile: from its value hints, its units, or a behaviour model it names.

Every profile gets a simulator without code (docs/profile-format.md §16):

* :class:`HintedModel` gives each point plausible values from its ``simulate:`` hints, or, where
  it gives none, from its unit, kind and name (230 V, 50 Hz, a few amps following a feeder's
  daily load, an energy counter growing 1.2 kWh an hour, 40-90 %RH and 20-35 °C following the
  day, a wind of a few m/s ...; :data:`DEFAULTS`). Gauges wander around their nominal value or
  daily shape within their range; counters only grow (starting again from 0 past ``wrap``, or
  when their register is full, as the register does); flags and states take listed values
  (labelled ones by default) for minutes at a time; strings read a serial-number-like text.
* :class:`NamedModel` runs a behaviour model the project ships (the energy meter, the lighting
  cabinet, the weather, ...), each point showing the model's quantity of its name (or its
  ``quantity:``) converted to its unit; points the model has no quantity for are hinted.

Values are what the point's registers carry: clamped to what they can hold, in whole register
steps (a SunSpec scale factor is chosen so the value range fits), so the gateway decodes exactly
the value given. Hinted values are a function of the seed, the point's name and the clock alone
(registers refresh once per measurement cycle, 1 s): two simulators with one seed serve the same
values at the same time, however often they are read.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from devices.profile import SCALE_FACTOR_RANGE, Kind, Point, Profile
from devices.simulate import SimHint, convert, model_unit
from protocols.modbus import DataType
from simulators.energy_meter import daily_load_factor

__all__ = ["DEFAULTS", "HintedModel", "NamedModel", "SteadyModel", "shape"]

Value = float | int | bool | str

MEASUREMENT_CYCLE_S = 1.0
DWELL_S = 300.0  # a state holds one value this long
_ICT = 7 * 3600  # Indochina Time, UTC+7
#: Counters count from 2024-01-01 00:00 UTC (plus a start drawn from the seed).
ANCHOR = 1_704_067_200.0


# --------------------------------------------------------------------------- daily shapes


def _load(hour: float) -> float:
    return daily_load_factor(hour * 3600.0 - _ICT)


_RAW_SHAPES: dict[str, Callable[[float], float]] = {
    "load": _load,
    "temperature": lambda h: 0.5 + 0.5 * math.cos((h - 14.5) / 24.0 * 2 * math.pi),
    "humidity": lambda h: 0.5 - 0.5 * math.cos((h - 14.5) / 24.0 * 2 * math.pi),
    "sun": lambda h: max(0.0, math.sin(math.pi * (h - 6.0) / 12.0)),
    "night": lambda h: 1.0 if h >= 18.0 or h < 6.0 else 0.0,
}
#: Shapes that switch a value off (daylight, lighting): while off it holds its low, noise-free.
_ON_OFF = ("sun", "night")
_MINUTES = [m / 60.0 for m in range(1441)]
_SPAN = {
    k: (min(f(h) for h in _MINUTES), max(f(h) for h in _MINUTES)) for k, f in _RAW_SHAPES.items()
}


def shape(name: str, t: float) -> float:
    """The daily shape ``name`` at wall-clock time ``t`` (seconds since the epoch), 0..1."""
    lo, hi = _SPAN[name]
    return (_RAW_SHAPES[name](((t + _ICT) % 86400) / 3600.0) - lo) / (hi - lo)


def _cumulative(name: str) -> list[float]:
    """Hours of mean rate accumulated from midnight to each minute of the day (1441 entries):
    a rate following the shape, with a daily mean of 1."""
    rates = [shape(name, m * 60.0 - _ICT) for m in range(1441)]
    mean = sum((rates[m] + rates[m + 1]) / 2 for m in range(1440)) / 1440
    out = [0.0]
    for m in range(1440):
        out.append(out[-1] + (rates[m] + rates[m + 1]) / 2 / mean / 60.0)
    return out


_CUMULATIVE = {k: _cumulative(k) for k in _RAW_SHAPES}


def _hours(t: float, daily: str | None) -> float:
    """Hours of (shaped) rate since :data:`ANCHOR`: non-decreasing in ``t``."""
    if daily is None:
        return (t - ANCHOR) / 3600.0
    local = t - ANCHOR  # ANCHOR is midnight UTC; the table counts from midnight in Hanoi
    days, rest = divmod(local + _ICT, 86400.0)
    table = _CUMULATIVE[daily]
    m, frac = divmod(rest / 60.0, 1.0)
    m = int(m)
    return days * 24.0 + table[m] + (table[min(m + 1, 1440)] - table[m]) * frac


# --------------------------------------------------------------------------- randomness


def _u(*parts: object) -> float:
    """A uniform number in [0, 1) from ``parts`` alone (the same on every run and machine)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _gauss(*parts: object) -> float:
    """A standard normal number from ``parts`` alone (Box-Muller)."""
    u1, u2 = _u(*parts, "r"), _u(*parts, "a")
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------- defaults


@dataclass(frozen=True)
class Default:
    """A point's default behaviour, in a unit of its quantity (``unit``): a gauge's nominal
    value, range, noise and daily shape, or a counter's rate per hour."""

    unit: str
    nominal: float | None = None
    range: tuple[float, float] | None = None
    noise: float = 0.0
    daily: str | None = None
    rate_per_h: float = 0.0


def _d(unit: str, nominal: float | None, lo: float, hi: float, noise: float, daily=None):
    return Default(unit, nominal, (lo, hi), noise, daily)


#: (unit, words in the point's name or None, default): the first that matches a point is its
#: default; a point of another unit of the same quantity takes it converted (kV from V).
DEFAULTS: tuple[tuple[str, tuple[str, ...] | None, Default], ...] = (
    ("V", ("supply", "battery", "vbat", "vcc"), _d("V", 12.0, 10.5, 14.0, 0.05)),
    ("V", ("l1_l2", "l2_l3", "l3_l1", "ll", "line"), _d("V", 400.0, 370.0, 430.0, 0.6)),
    ("V", None, _d("V", 230.0, 207.0, 253.0, 0.4)),
    ("A", None, _d("A", None, 0.5, 20.0, 0.05, "load")),
    ("W", None, _d("W", None, 100.0, 4600.0, 5.0, "load")),
    ("VA", None, _d("VA", None, 120.0, 5000.0, 5.0, "load")),
    ("var", None, _d("var", None, 30.0, 1500.0, 3.0, "load")),
    ("Hz", None, _d("Hz", 50.0, 49.8, 50.2, 0.02)),
    ("", ("power_factor", "pf", "cos_phi"), _d("", 0.93, 0.8, 1.0, 0.01)),
    ("%", ("power_factor", "pf", "cos_phi"), _d("", 0.93, 0.8, 1.0, 0.01)),
    ("%", ("moisture",), _d("%", 30.0, 15.0, 45.0, 0.3)),
    ("%", ("humidity", "rh"), _d("%", None, 40.0, 90.0, 1.0, "humidity")),
    ("%RH", None, _d("%RH", None, 40.0, 90.0, 1.0, "humidity")),
    ("%", ("thd",), _d("%", 3.0, 0.5, 10.0, 0.2)),
    ("%", None, _d("%", 50.0, 0.0, 100.0, 2.0)),
    ("‰", None, _d("‰", 5.0, 0.0, 10.0, 0.2)),
    ("°", ("phase",), _d("°", 20.0, 0.0, 60.0, 2.0)),
    ("°", None, _d("°", 45.0, 0.0, 359.9, 25.0)),
    ("°C", ("dew",), _d("°C", None, 14.0, 24.0, 0.2, "temperature")),
    ("°C", ("water", "soil"), _d("°C", None, 24.0, 30.0, 0.1, "temperature")),
    ("°C", None, _d("°C", None, 20.0, 35.0, 0.2, "temperature")),
    ("Pa", None, _d("Pa", 101_300.0, 99_500.0, 103_000.0, 20.0)),
    ("mm", ("rain", "rainfall", "precipitation"), _d("mm", 2.0, 0.0, 20.0, 0.5)),
    ("mm", None, _d("mm", 800.0, 100.0, 2000.0, 3.0)),
    ("m/s", None, _d("m/s", 3.0, 0.0, 25.0, 1.2)),
    ("mm/h", None, _d("mm/h", 2.0, 0.0, 60.0, 1.0)),
    ("ppm", None, _d("ppm", None, 400.0, 1500.0, 8.0, "load")),
    ("ppb", None, _d("ppb", 20.0, 5.0, 80.0, 2.0)),
    ("µg/m³", None, _d("µg/m³", 35.0, 5.0, 150.0, 3.0)),
    ("mg/m³", None, _d("mg/m³", 0.035, 0.005, 0.15, 0.003)),
    ("mg/L", None, _d("mg/L", 8.0, 4.0, 12.0, 0.1)),
    ("lx", None, _d("lx", None, 0.0, 60_000.0, 150.0, "sun")),
    ("W/m²", None, _d("W/m²", None, 0.0, 1000.0, 5.0, "sun")),
    ("cd", None, _d("cd", 1000.0, 0.0, 2000.0, 10.0)),
    ("dB", None, _d("dB", 62.0, 40.0, 90.0, 1.5, "load")),
    ("dB(A)", None, _d("dB(A)", None, 45.0, 80.0, 1.5, "load")),
    ("pH", None, _d("pH", 7.2, 6.0, 8.5, 0.03)),
    ("NTU", None, _d("NTU", 5.0, 0.0, 50.0, 0.3)),
    ("µS/cm", None, _d("µS/cm", 450.0, 100.0, 1500.0, 5.0)),
    ("mS/cm", None, _d("mS/cm", 0.45, 0.1, 1.5, 0.005)),
    ("Ω", None, _d("Ω", 100.0, 50.0, 200.0, 0.5)),
    ("kΩ", None, _d("kΩ", 10.0, 5.0, 20.0, 0.05)),
    ("MΩ", None, _d("MΩ", 500.0, 100.0, 1000.0, 5.0)),
    ("L/s", None, _d("L/s", 2.0, 0.0, 10.0, 0.1)),
    ("L/min", None, _d("L/min", 120.0, 0.0, 600.0, 5.0)),
    ("m³/h", None, _d("m³/h", 7.0, 0.0, 36.0, 0.3)),
    ("m³/s", None, _d("m³/s", 0.5, 0.0, 5.0, 0.02)),
    ("g", None, _d("g", 500.0, 0.0, 1000.0, 5.0)),
    ("kg", None, _d("kg", 50.0, 0.0, 100.0, 0.5)),
    ("t", None, _d("t", 5.0, 0.0, 10.0, 0.05)),
    ("/dL", None, _d("/dL", 3000.0, 300.0, 20_000.0, 100.0)),
    ("/L", None, _d("/L", 30_000.0, 3000.0, 200_000.0, 1000.0)),
    ("/cm³", None, _d("/cm³", 30.0, 3.0, 200.0, 1.0)),
    ("r/min", None, _d("r/min", 1450.0, 1400.0, 1500.0, 3.0)),
    ("s", None, _d("s", 60.0, 0.0, 3600.0, 1.0)),
    ("J", None, _d("J", 1000.0, 0.0, 5000.0, 10.0)),
)
#: (unit, rate per hour, daily shape): counters.
COUNTER_DEFAULTS: tuple[tuple[str, float, str | None], ...] = (
    ("kWh", 1.2, "load"),
    ("kvarh", 0.3, "load"),
    ("kVAh", 1.3, "load"),
    ("mm", 0.2, None),  # rain depth: Hanoi's 1,700 mm a year
    ("h", 1.0, None),  # running time
    ("m³", 0.5, "load"),
    ("L", 500.0, "load"),
    ("mL", 500_000.0, "load"),
    ("", 2.0, None),  # pulses, tips, events
)


#: Words naming a status or error code: such a number without a unit reads 0 (all clear).
_ALL_CLEAR = ("status", "error", "fault", "alarm", "event", "warning")


def _says(name: str, words: Iterable[str]) -> bool:
    """Whether a point's name holds one of ``words``: a word of it (``supply`` in
    ``supply_voltage``, not ``rh`` in ``overhead``) or a run of words (``power_factor``)."""
    name = name.lower()
    tokens = set(name.replace("-", "_").split("_"))
    return any(w in tokens or ("_" in w and w in name) for w in words)


def _unit_default(p: Point) -> Default | None:
    if p.kind is Kind.COUNTER:
        for unit, rate, daily in COUNTER_DEFAULTS:
            if unit == p.unit or (p.unit and _convertible(unit, p.unit)):
                return Default(unit, rate_per_h=rate, daily=daily)
        return Default(p.unit, rate_per_h=10.0)
    for unit, names, default in DEFAULTS:
        if names is not None and not _says(p.name, names):
            continue
        if unit == p.unit or (unit and p.unit and _convertible(unit, p.unit)):
            return default
    return None


def _convertible(src: str, dst: str) -> bool:
    try:
        convert(1.0, src, dst)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- one point


@dataclass
class _Plan:
    """What one point does: ``how`` is gauge, counter, choice, steady or text."""

    how: str
    lo: float = 0.0
    hi: float = 0.0
    nominal: float = 0.0
    noise: float = 0.0
    daily: str | None = None
    rate: float = 0.0
    values: tuple[Value, ...] = ()
    weights: tuple[float, ...] = ()
    start: float = 0.0
    modulus: float | None = None  # a counter starts again from 0 here
    periods: tuple[float, ...] = ()  # the slow wander's periods (s) and phases
    phases: tuple[float, ...] = ()


def _text(seed: object, p: Point) -> str:
    width = 2 * (p.length or 1)
    serial = f"SN{int(_u(seed, p.name, 'text') * 10**12):012d}"
    return (serial if width >= len(serial) else serial[-width:])[:width]


def _plan(p: Point, seed: object) -> _Plan:
    h = p.simulate or SimHint()
    if p.dtype is DataType.STRING:
        return _Plan("text", values=(h.text if h.text is not None else _text(seed, p),))
    if h.values:
        return _Plan("choice", values=h.values, weights=(1.0,) * len(h.values))
    if p.dtype is DataType.BOOL:
        return _Plan("choice", values=(False, True), weights=(0.95, 0.05))
    if p.labels:
        return _Plan("choice", values=tuple(v for v, _ in p.labels), weights=(1.0,) * len(p.labels))
    if p.bits is not None:
        n = 1 << (p.bits[1] - p.bits[0] + 1)
        return _Plan("choice", values=tuple(range(min(n, 8))), weights=(1.0,) * min(n, 8))
    if p.kind is Kind.COUNTER:
        return _counter(p, h, seed)
    if p.writable and p.limits is not None and h.nominal is None and h.range is None:
        return _Plan("steady", nominal=(p.limits[0] + p.limits[1]) / 2)
    return _gauge(p, h, seed)


def _counter(p: Point, h: SimHint, seed: object) -> _Plan:
    base = _unit_default(p)
    rate = h.rate_per_h
    daily = h.daily
    if rate is None:
        assert base is not None
        rate = _in(base.unit, p.unit, base.rate_per_h, difference=True)
        daily = daily if h.daily is not None else base.daily
    start = _u(seed, p.name, "start") * 2000.0 * rate  # up to 2000 hours' worth
    modulus = p.wrap
    span = p.value_span()
    if modulus is None and span is not None and p.scale_register is None:
        modulus = span[1] - max(0.0, span[0]) + abs(p.scale)  # a full register starts again
    return _Plan("counter", rate=rate, daily=daily, start=start, modulus=modulus)


def _gauge(p: Point, h: SimHint, seed: object) -> _Plan:
    base = _unit_default(p)
    daily = h.daily
    if h.range is not None:
        lo, hi = h.range
        noise = h.noise if h.noise is not None else 0.02 * (hi - lo)
        nominal = h.nominal if h.nominal is not None else (lo + hi) / 2
    elif h.nominal is not None:
        lo, hi = _base_range(p, base)
        if not lo <= h.nominal <= hi:
            width = 0.1 * abs(h.nominal) or 1.0
            lo, hi = h.nominal - width, h.nominal + width
        nominal = h.nominal
        noise = h.noise if h.noise is not None else 0.01 * (hi - lo)
    elif base is not None:
        lo, hi = _base_range(p, base)
        nominal = (
            _in(base.unit, p.unit, base.nominal) if base.nominal is not None else (lo + hi) / 2
        )
        noise = h.noise if h.noise is not None else _in(base.unit, p.unit, base.noise, True)
        if daily is None and not p.writable:
            daily = base.daily
    elif _says(p.name, _ALL_CLEAR):  # a status or error code: all clear
        return _Plan("steady", nominal=0.0)
    else:  # a number without a unit we know: a steady whole number from the seed
        return _Plan("steady", nominal=float(1 + int(_u(seed, p.name, "steady") * 99)))
    if p.writable and h.noise is None:
        noise = 0.0  # a setting holds still
    periods = tuple(
        p0 * (1.0 + _u(seed, p.name, "period", k)) for k, p0 in enumerate((600.0, 2400.0, 9000.0))
    )
    phases = tuple(2 * math.pi * _u(seed, p.name, "phase", k) for k in range(3))
    return _Plan(
        "gauge",
        lo=lo,
        hi=hi,
        nominal=nominal,
        noise=noise,
        daily=daily,
        periods=periods,
        phases=phases,
    )


def _base_range(p: Point, base: Default | None) -> tuple[float, float]:
    if base is None or base.range is None:
        span = p.value_span()
        return span if span is not None else (0.0, 100.0)
    a, b = (_in(base.unit, p.unit, x) for x in base.range)
    return (a, b) if a <= b else (b, a)


def _in(src: str, dst: str, value: float, difference: bool = False) -> float:
    """``value`` (a difference, with ``difference``) from unit ``src`` in unit ``dst``."""
    if src == dst or not _convertible(src, dst):
        return value
    if difference:
        return convert(value, src, dst) - convert(0.0, src, dst)
    return convert(value, src, dst)


# --------------------------------------------------------------------------- the models


class HintedModel:
    """``model()`` for :class:`simulators.modbus_device.ProfileSimUnit`: every point's value
    from its hints and defaults (module docstring), refreshed once per measurement cycle."""

    def __init__(
        self,
        profile: Profile,
        seed: int | str | None = None,
        clock: Callable[[], float] = time.time,
        *,
        cycle_s: float = MEASUREMENT_CYCLE_S,
    ) -> None:
        self.profile = profile
        self.seed = seed
        self._clock = clock
        self.cycle_s = cycle_s
        self._points = {p.name: p for p in profile.points}
        self._plans = {p.name: _plan(p, seed) for p in profile.points}
        self._highest: dict[str, float] = {}  # a counter's highest total: it never falls
        self._cycle: int | None = None
        self._values: dict[str, Value] = {}
        self.factors = self._factors()

    def _factors(self) -> dict[str, int]:
        """A SunSpec scale factor per scale register: the finest one whose steps hold four
        times the largest value of every point scaled by it (or the one its hint lists)."""
        out: dict[str, int] = {}
        now = self._clock()
        for name in {p.scale_register for p in self.profile.points if p.scale_register}:
            hint = self._points[name].simulate
            if hint is not None and hint.values:
                out[name] = int(hint.values[0])
                continue
            sf = SCALE_FACTOR_RANGE[0] // 2
            for p in self.profile.points:
                if p.scale_register != name:
                    continue
                plan = self._plans[p.name]
                if plan.how == "counter":
                    top = 4 * abs(self._counter(p.name, plan, now, keep=False)) + plan.rate * 1e4
                else:
                    top = 4 * max(abs(plan.lo), abs(plan.hi), abs(plan.nominal))
                cap = 2 ** (8 * 2 * p.count - (0 if p.dtype.name.startswith("U") else 1)) - 1
                while sf < SCALE_FACTOR_RANGE[1] and top > cap * abs(p.scale) * 10.0**sf:
                    sf += 1
            out[name] = sf
        return out

    def __call__(self) -> Mapping[str, Value]:
        return self.sample()

    def sample(self, names: Iterable[str] | None = None) -> dict[str, Value]:
        """The points' values now (``names``: only those), by point name."""
        cycle = math.floor(self._clock() / self.cycle_s)
        now = cycle * self.cycle_s  # one cycle, one set of values, whenever it is read
        if cycle != self._cycle:
            self._cycle = cycle
            self._values = {}
        wanted = self._plans if names is None else names
        for name in wanted:
            if name not in self._values:
                self._values[name] = self._value(name, now, cycle)
        return self._values if names is None else {n: self._values[n] for n in wanted}

    def _value(self, name: str, now: float, cycle: int) -> Value:
        p, plan = self._points[name], self._plans[name]
        if name in self.factors:
            return self.factors[name]
        if plan.how == "text":
            return plan.values[0]
        if plan.how == "choice":
            u = _u(self.seed, name, "dwell", math.floor(now / DWELL_S)) * sum(plan.weights)
            for value, weight in zip(plan.values, plan.weights, strict=True):
                if u < weight:
                    return self.fit(p, value)
                u -= weight
            return self.fit(p, plan.values[-1])
        if plan.how == "steady":
            return self.fit(p, plan.nominal)
        if plan.how == "counter":
            return self.fit(p, self._counter(name, plan, now), counter=True)
        centre, noise = plan.nominal, plan.noise
        if plan.daily is not None:
            level = shape(plan.daily, now)
            centre = plan.lo + (plan.hi - plan.lo) * level
            if plan.daily in _ON_OFF:  # no daylight at night: the low, without noise
                noise *= level
        slow = sum(
            math.sin(2 * math.pi * now / period + phase)
            for period, phase in zip(plan.periods, plan.phases, strict=True)
        ) * math.sqrt(2 / 3)  # unit variance
        white = _gauss(self.seed, name, cycle)
        value = centre + noise * (0.6 * white + 0.8 * slow)
        return self.fit(p, min(plan.hi, max(plan.lo, value)))

    def _counter(self, name: str, plan: _Plan, now: float, keep: bool = True) -> float:
        total = plan.start + plan.rate * max(0.0, _hours(now, plan.daily))
        if keep:  # a clock that steps back does not make a counter fall
            total = max(total, self._highest.get(name, total))
            self._highest[name] = total
        return total % plan.modulus if plan.modulus else total

    def fit(self, p: Point, value: Value, *, counter: bool = False) -> Value:
        """``value`` as the point's registers hold it: within what they can hold, in whole
        register steps (a counter's whole steps so far), a float32 rounded to one."""
        if isinstance(value, str) or p.dtype is DataType.BOOL:
            return value
        step = p.scale
        if p.scale_register is not None:
            step = p.scale * 10.0 ** self.factors.get(p.scale_register, 0)
        if p.dtype.is_integer or p.bits is not None:
            lo, hi = _raw_span(p)
            raw = (float(value) - p.offset) / step
            raw = math.floor(raw + 1e-9) if counter else round(raw)
            raw = min(max(raw, lo), hi)
            if step == 1 and p.offset == int(p.offset):
                return int(raw) + int(p.offset)
            return raw * step + p.offset
        if p.dtype is DataType.FLOAT32 and step == 1 and p.offset == 0:
            return struct.unpack(">f", struct.pack(">f", float(value)))[0]
        return float(value)


def _raw_span(p: Point) -> tuple[int, int]:
    if p.bits is not None:
        return 0, (1 << (p.bits[1] - p.bits[0] + 1)) - 1
    bits = 16 * p.count
    if p.dtype.name.startswith("U"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class NamedModel:
    """``model()`` for a profile naming a behaviour model: each point the model has a quantity
    for shows it (its ``quantity:``, or its name), converted to the point's unit; a labelled
    point showing an angle shows its compass sector; the other points are hinted."""

    def __init__(
        self,
        profile: Profile,
        model: object,
        sample: Callable[[], Mapping[str, Value]],
        hinted: HintedModel,
    ) -> None:
        assert profile.simulate is not None
        self.profile = profile
        self.model = model  # the behaviour model (a test may switch its faults)
        self._sample = sample
        self.hinted = hinted
        self._shown: list[tuple[Point, str, str]] = []  # point, quantity, the model's unit
        for p in profile.points:
            h = p.simulate
            if h is not None and h.quantity is None and h != SimHint():
                continue  # value hints of its own
            q = h.quantity if h is not None and h.quantity is not None else p.name
            unit = model_unit(profile.simulate.model, q)
            if unit is not None:
                self._shown.append((p, q, unit))
        self._missing: list[str] | None = None

    def __call__(self) -> Mapping[str, Value]:
        got = self._sample()
        if self._missing is None:  # the quantities this model (phases ...) does not give
            shown = {p.name for p, q, _ in self._shown if q in got}
            self._missing = [p.name for p in self.profile.points if p.name not in shown]
        values = self.hinted.sample(self._missing)
        for p, q, unit in self._shown:
            if q in got:
                values[p.name] = self._show(p, got[q], unit)
        return values

    def _show(self, p: Point, value: Value, unit: str) -> Value:
        if isinstance(value, bool | str):
            return value
        if p.labels and unit == "°":  # a compass sector: N, NNE ... as the labels count them
            n = len(p.labels)
            return p.labels[round(float(value) / (360.0 / n)) % n][0]
        if unit != p.unit:
            value = convert(value, unit, p.unit)
        span = _span(p, self.hinted.factors)
        if span is not None and not span[0] <= value <= span[1]:
            if p.kind is Kind.COUNTER and p.wrap:
                return self.hinted.fit(p, value % p.wrap, counter=True)
            return self.hinted.fit(p, value)  # clamped to what the registers hold
        return value


def _span(p: Point, factors: Mapping[str, int]) -> tuple[float, float] | None:
    if p.scale_register is None:
        return p.value_span()
    if not p.dtype.is_integer:
        return None
    lo, hi = _raw_span(p)
    step = p.scale * 10.0 ** factors.get(p.scale_register, 0)
    a, b = lo * step + p.offset, hi * step + p.offset
    return (a, b) if a <= b else (b, a)


class SteadyModel:
    """``model()`` holding one fixed value per point, different per point and per seed, that
    its encoding carries exactly: for tests of the encoding alone (a flag true or false, a
    state one of its labels, a string the point's name, a scale factor -1 or -2, a number
    10.0 to 999.9 or 10 to 999 register steps)."""

    def __init__(self, profile: Profile, seed: int | None = None) -> None:
        factors = {p.scale_register for p in profile.points if p.scale_register}
        self.values: dict[str, Value] = {
            p.name: _steady(p, _draw(seed, p.name), p.name in factors) for p in profile.points
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


def _steady(p: Point, n: int, is_factor: bool) -> Value:
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
