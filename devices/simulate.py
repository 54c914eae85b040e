"""What a simulator makes of a profile: value hints per point, a named behaviour model. Data only.

A profile file may say how its simulator behaves (docs/profile-format.md §16): per point, a
``simulate:`` of value hints (:class:`SimHint`: a nominal value, a range, noise, a daily shape,
a counter's rate, the values of a state, a string's text, the model quantity it shows), and at
the top a ``simulate: {model: ...}`` naming a behaviour model the project ships
(:class:`SimModel`, one of :data:`MODELS`). The gateway never reads these: ``edge sim``, the demo,
the scan test and the soak do (:mod:`simulators`).

:data:`MODELS` lists each model's quantities with the unit the model gives them in; a point shows
a quantity of the same name unless its ``quantity`` says another, converted to the point's unit
(:func:`convert`: kW from W, hPa from Pa, % from a ratio ...). The checks here raise
:class:`ValueError` in our words; :mod:`devices.profile` reports them at the point.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MODELS",
    "SHAPES",
    "SimHint",
    "SimModel",
    "compatible",
    "convert",
    "model_unit",
]

#: Daily shapes a value (or a counter's rate) may follow, by hour of the day in Hanoi (UTC+7):
#: ``load`` a feeder's load (late-morning and evening peaks, street lights dusk to dawn),
#: ``temperature`` coolest near dawn and warmest at 14:30, ``humidity`` its opposite, ``sun``
#: daylight from 06:00 to 18:00 peaking at noon, ``night`` on from 18:00 to 06:00 (lighting).
SHAPES = ("load", "temperature", "humidity", "sun", "night")

_PHASE = ("l1", "l2", "l3")
_ENERGY_1P = {
    "voltage": "V",
    "current": "A",
    "power": "W",
    "apparent_power": "VA",
    "reactive_power": "var",
    "power_factor": "",
    "phase_angle": "°",
    "frequency": "Hz",
    "import_energy": "kWh",
    "export_energy": "kWh",
    "total_energy": "kWh",
    "import_reactive_energy": "kvarh",
    "export_reactive_energy": "kvarh",
    "total_reactive_energy": "kvarh",
    "total_power_demand": "W",
    "max_total_power_demand": "W",
    "import_power_demand": "W",
    "max_import_power_demand": "W",
    "export_power_demand": "W",
    "max_export_power_demand": "W",
    "current_demand": "A",
    "max_current_demand": "A",
}
_ENERGY_3P = {
    **{f"{q}_{ph}": u for ph in _PHASE for q, u in _ENERGY_1P.items() if q in (
        "voltage", "current", "power", "apparent_power", "reactive_power", "power_factor",
        "phase_angle", "import_energy", "export_energy", "total_energy")},
    **{f"voltage_thd_{ph}": "%" for ph in _PHASE},
    **{f"current_thd_{ph}": "%" for ph in _PHASE},
    "voltage_l1_l2": "V",
    "voltage_l2_l3": "V",
    "voltage_l3_l1": "V",
    "voltage_avg": "V",
    "current_avg": "A",
    "current_sum": "A",
    "total_power": "W",
    "total_apparent_power": "VA",
    "total_reactive_power": "var",
    "total_power_factor": "",
    "total_phase_angle": "°",
}  # fmt: skip

#: Model name -> quantity -> the unit the model gives it in. ``energy_meter`` gives the single-
#: phase quantities on a one-phase meter and the ``_l1.._l3`` and total ones on a three-phase
#: meter (the frequency, energies and demands on both).
MODELS: dict[str, dict[str, str]] = {
    # simulators/energy_meter.py: a meter on a Hanoi low-voltage feeder
    "energy_meter": {**_ENERGY_1P, **_ENERGY_3P},
    # simulators/light_cabinet.py: a street-lighting cabinet with its embedded meter
    "lighting": {
        **{f"relay_segment_{n}": "" for n in range(1, 5)},
        **{f"dim_level_segment_{n}": "%" for n in range(1, 5)},
        "door_open": "",
        "leakage_trip": "",
        "breaker_trip": "",
        "local_override": "",
        "photocell_dark": "",
        "dusk_offset_min": "min",
        "dawn_offset_min": "min",
        **{f"{q}_{ph}": u for ph in _PHASE for q, u in (
            ("voltage", "V"), ("current", "A"), ("power", "W"), ("power_factor", ""))},
        "total_power": "W",
        "frequency": "Hz",
        "import_energy": "kWh",
    },
    # simulators/environment.py: the street's weather, as a weather station reports it
    "weather": {
        "air_temperature": "°C",
        "air_humidity": "%RH",
        "dew_point": "°C",
        "barometric_pressure": "Pa",
        "light_intensity": "lx",
        "irradiance": "W/m²",
        "wind_speed": "m/s",
        "wind_direction": "°",
        "wind_speed_min": "m/s",
        "wind_speed_max": "m/s",
        "wind_speed_avg": "m/s",
        "wind_direction_min": "°",
        "wind_direction_max": "°",
        "wind_direction_avg": "°",
        "rain_intensity": "mm/h",
        "rainfall": "mm",
    },
    # simulators/environment.py: a temperature and humidity transmitter in a cabinet
    "thermo_hygro": {
        "temperature": "°C",
        "humidity": "%RH",
        "temperature_offset": "°C",
        "humidity_offset": "%RH",
    },
    # simulators/environment.py: an ultrasonic sensor over a street drain (distance to water)
    "water_level": {
        "distance": "mm",
        "internal_temperature": "°C",
        "noise_level": "",
        "product_id": "",
    },
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimHint:
    """A point's ``simulate:`` (docs/profile-format.md §16), in the point's own unit.

    A gauge stays in ``range`` (default: from its unit, or ±10 % around ``nominal``), holding
    ``nominal`` (default: the range's middle) or following the ``daily`` shape from the range's
    low to its high, and wanders around that with a standard deviation of ``noise``. A counter
    grows by ``rate_per_h`` an hour (its rate following ``daily`` if given, the same per day).
    A state takes one of ``values``; a string reads ``text``. ``quantity``: the named model's
    quantity the point shows (default: the point's name)."""

    nominal: float | None = None
    range: tuple[float, float] | None = None
    noise: float | None = None
    daily: str | None = None
    rate_per_h: float | None = None
    values: tuple[float | int | bool, ...] = ()
    text: str | None = None
    quantity: str | None = None


@dataclass(frozen=True, slots=True)
class SimModel:
    """A profile's ``simulate:``: the behaviour model its simulator follows (one of
    :data:`MODELS`). ``phases`` and ``peak_kw`` are the energy meter's (default: three phases
    when the profile has ``_l2`` or ``_l3`` points, one otherwise; 15 kW three-phase, 3 kW
    single-phase)."""

    model: str
    phases: int | None = None
    peak_kw: float | None = None


def model_unit(model: str, quantity: str) -> str | None:
    """The unit ``model`` gives ``quantity`` in; None when the model has no such quantity."""
    return MODELS.get(model, {}).get(quantity)


#: unit -> (dimension, factor, offset): a value in the unit is ``value × factor + offset`` in the
#: dimension's base unit. Ratios: 1 = 100 %.
_UNITS: dict[str, tuple[str, float, float]] = {
    "V": ("voltage", 1.0, 0.0), "mV": ("voltage", 1e-3, 0.0), "kV": ("voltage", 1e3, 0.0),
    "A": ("current", 1.0, 0.0), "mA": ("current", 1e-3, 0.0), "kA": ("current", 1e3, 0.0),
    "W": ("power", 1.0, 0.0), "kW": ("power", 1e3, 0.0), "MW": ("power", 1e6, 0.0),
    "VA": ("apparent", 1.0, 0.0), "kVA": ("apparent", 1e3, 0.0), "MVA": ("apparent", 1e6, 0.0),
    "var": ("reactive", 1.0, 0.0), "kvar": ("reactive", 1e3, 0.0),
    "Mvar": ("reactive", 1e6, 0.0),
    "Wh": ("energy", 1.0, 0.0), "kWh": ("energy", 1e3, 0.0), "MWh": ("energy", 1e6, 0.0),
    "J": ("energy", 1 / 3600, 0.0), "kJ": ("energy", 1e3 / 3600, 0.0),
    "MJ": ("energy", 1e6 / 3600, 0.0), "GJ": ("energy", 1e9 / 3600, 0.0),
    "VAh": ("apparent_energy", 1.0, 0.0), "kVAh": ("apparent_energy", 1e3, 0.0),
    "varh": ("reactive_energy", 1.0, 0.0), "kvarh": ("reactive_energy", 1e3, 0.0),
    "Mvarh": ("reactive_energy", 1e6, 0.0),
    "": ("ratio", 1.0, 0.0), "%": ("ratio", 0.01, 0.0), "%RH": ("ratio", 0.01, 0.0),
    "‰": ("ratio", 1e-3, 0.0),
    "°": ("angle", 1.0, 0.0), "rad": ("angle", 57.29577951308232, 0.0),
    "°C": ("temperature", 1.0, 0.0), "K": ("temperature", 1.0, -273.15),
    "°F": ("temperature", 5 / 9, -160 / 9),
    "Pa": ("pressure", 1.0, 0.0), "hPa": ("pressure", 100.0, 0.0), "kPa": ("pressure", 1e3, 0.0),
    "MPa": ("pressure", 1e6, 0.0), "bar": ("pressure", 1e5, 0.0), "mbar": ("pressure", 100.0, 0.0),
    "mm": ("length", 1e-3, 0.0), "cm": ("length", 1e-2, 0.0), "m": ("length", 1.0, 0.0),
    "km": ("length", 1e3, 0.0),
    "m/s": ("speed", 1.0, 0.0), "km/h": ("speed", 1 / 3.6, 0.0),
    "ms": ("time", 1e-3, 0.0), "s": ("time", 1.0, 0.0), "min": ("time", 60.0, 0.0),
    "h": ("time", 3600.0, 0.0), "d": ("time", 86400.0, 0.0),
}  # fmt: skip


def compatible(src: str, dst: str) -> bool:
    """Whether a value in unit ``src`` can be shown in unit ``dst`` (the same unit, or one
    :func:`convert` converts)."""
    if src == dst:
        return True
    a, b = _UNITS.get(src), _UNITS.get(dst)
    return a is not None and b is not None and a[0] == b[0]


def convert(value: float, src: str, dst: str) -> float:
    """``value`` in unit ``src``, given in unit ``dst`` (the same number when they are equal).
    ValueError when the units measure different things."""
    if src == dst:
        return value
    if not compatible(src, dst):
        raise ValueError(f"a value in {src or 'no unit'!r} cannot be shown in {dst!r}")
    _, f1, o1 = _UNITS[src]
    _, f2, o2 = _UNITS[dst]
    return (value * f1 + o1 - o2) / f2
