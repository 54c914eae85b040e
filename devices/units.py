"""The unit symbols a point may declare, with their UCUM codes. Data only.

A point's ``unit`` is the symbol printed on the device's data sheet in SI / IEC 80000 style
(UTF-8: ``°C``, ``µg/m³``, ``m³/h``; ``var`` for reactive power, IEC 60050-131), the way the
integrator will show it. Each symbol maps to its code in the Unified Code for Units of Measure
(UCUM, case-sensitive form, https://ucum.org/ucum) so a platform can convert units by machine;
where UCUM has no unit (reactive power, turbidity, A-weighted sound level) the code is UCUM's
annotation form (``{...}``) and says so. ``""`` is a quantity without a unit (a power factor, a
count, an id, a status).

Profiles may use only the symbols listed here, so that one quantity is never spelled two ways
(``kWh`` / ``kwh`` / ``KWH``) across devices. Adding a symbol is adding a line.
"""

from __future__ import annotations

__all__ = ["UNITS", "unit_hint"]

#: Symbol -> (UCUM code, what it measures).
UNITS: dict[str, tuple[str, str]] = {
    "": ("1", "no unit: a ratio, a count, an id, a state"),
    # electrical
    "V": ("V", "voltage"),
    "mV": ("mV", "voltage"),
    "kV": ("kV", "voltage"),
    "A": ("A", "current"),
    "mA": ("mA", "current"),
    "kA": ("kA", "current"),
    "W": ("W", "active power"),
    "kW": ("kW", "active power"),
    "MW": ("MW", "active power"),
    "VA": ("V.A", "apparent power"),
    "kVA": ("kV.A", "apparent power"),
    "MVA": ("MV.A", "apparent power"),
    "var": ("V.A{reactive}", "reactive power (IEC symbol var; no UCUM unit)"),
    "kvar": ("kV.A{reactive}", "reactive power"),
    "Mvar": ("MV.A{reactive}", "reactive power"),
    "Wh": ("W.h", "active energy"),
    "kWh": ("kW.h", "active energy"),
    "MWh": ("MW.h", "active energy"),
    "VAh": ("V.A.h", "apparent energy"),
    "kVAh": ("kV.A.h", "apparent energy"),
    "varh": ("V.A{reactive}.h", "reactive energy"),
    "kvarh": ("kV.A{reactive}.h", "reactive energy"),
    "Mvarh": ("MV.A{reactive}.h", "reactive energy"),
    "Hz": ("Hz", "frequency"),
    "Ω": ("Ohm", "resistance"),
    "kΩ": ("kOhm", "resistance"),
    "MΩ": ("MOhm", "resistance (insulation)"),
    "µS/cm": ("uS/cm", "electrical conductivity (water)"),
    "mS/cm": ("mS/cm", "electrical conductivity (water)"),
    # energy and heat
    "J": ("J", "energy"),
    "kJ": ("kJ", "energy"),
    "MJ": ("MJ", "energy"),
    "GJ": ("GJ", "energy (heat meters)"),
    # ratios and angles
    "%": ("%", "percent"),
    "%RH": ("%{RH}", "relative humidity, percent"),
    "‰": ("[ppth]", "per mille"),
    "ppm": ("[ppm]", "parts per million (gas concentration)"),
    "ppb": ("[ppb]", "parts per billion"),
    "°": ("deg", "plane angle (phase angle, wind direction)"),
    "rad": ("rad", "plane angle"),
    # temperature
    "°C": ("Cel", "temperature"),
    "K": ("K", "temperature"),
    "°F": ("[degF]", "temperature"),
    # pressure
    "Pa": ("Pa", "pressure"),
    "hPa": ("hPa", "pressure (barometric)"),
    "kPa": ("kPa", "pressure"),
    "MPa": ("MPa", "pressure"),
    "bar": ("bar", "pressure"),
    "mbar": ("mbar", "pressure"),
    # length, speed, flow, volume
    "mm": ("mm", "length (distance, rain depth)"),
    "cm": ("cm", "length"),
    "m": ("m", "length (water level)"),
    "km": ("km", "length"),
    "m/s": ("m/s", "speed (wind)"),
    "km/h": ("km/h", "speed"),
    "mm/h": ("mm/h", "rain intensity"),
    "mL": ("mL", "volume"),
    "L": ("L", "volume"),
    "m³": ("m3", "volume (water meters)"),
    "L/s": ("L/s", "flow"),
    "L/min": ("L/min", "flow"),
    "m³/h": ("m3/h", "flow"),
    "m³/s": ("m3/s", "flow (rivers, drains)"),
    # mass and concentration
    "g": ("g", "mass"),
    "kg": ("kg", "mass"),
    "t": ("t", "mass"),
    "µg/m³": ("ug/m3", "mass concentration in air (particulates)"),
    "mg/m³": ("mg/m3", "mass concentration in air"),
    "mg/L": ("mg/L", "mass concentration in water (dissolved oxygen)"),
    "/dL": ("/dL", "count per decilitre (particle counters: per 0.1 L)"),
    "/L": ("/L", "count per litre"),
    "/cm³": ("/cm3", "count per cubic centimetre"),
    "pH": ("[pH]", "acidity"),
    "NTU": ("{NTU}", "turbidity (no UCUM unit)"),
    # light, radiation, sound
    "lx": ("lx", "illuminance"),
    "W/m²": ("W/m2", "irradiance (solar radiation)"),
    "cd": ("cd", "luminous intensity"),
    "dB": ("dB", "level"),
    "dB(A)": ("dB{A}", "A-weighted sound level (no UCUM unit)"),
    # time and rotation
    "ms": ("ms", "duration"),
    "s": ("s", "duration"),
    "min": ("min", "duration"),
    "h": ("h", "duration (running hours)"),
    "d": ("d", "duration"),
    "r/min": ("{r}/min", "rotational speed"),
}

_FOLDED = {s.casefold(): s for s in UNITS}
_OLD = {
    "deg": "°",
    "degc": "°C",
    "lux": "lx",
    "vahr": "VAh",
    "kvarhr": "kvarh",
    "rpm": "r/min",
    "ug/m3": "µg/m³",
    "m3": "m³",
    "m3/h": "m³/h",
    "w/m2": "W/m²",
    "ohm": "Ω",
    "%rh": "%RH",
    "rh": "%RH",
}


def unit_hint(unit: str) -> str:
    """What to write instead of an unknown ``unit``: a near symbol, or where the list is."""
    folded = unit.casefold().replace(" ", "")
    near = _OLD.get(folded) or _FOLDED.get(folded)
    if near is not None:
        return f"write {near!r}"
    return "see the unit table in docs/profile-format.md (devices/units.py)"
