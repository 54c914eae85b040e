"""Behaviour of a street-lighting cabinet in Hanoi, by point name (profile street_light_cabinet).

* The photocell sees the real sun over Hanoi (21.03 N, 105.85 E): dark below -2° of solar
  elevation, light again above 0° (hysteresis, as a photocell relay has).
* Automatic mode: each segment's contactor closes ``dusk_offset_min`` after the photocell reports
  dark and opens ``dawn_offset_min`` after it reports light. The dim level is 100 % in the evening
  and 60 % from 23:00 to 05:00 (the usual energy-saving step). A value the platform wrote
  (a relay, a dim level, an offset) wins over the automatic one: ``commanded`` holds it.
* Faults on demand (``faults``): ``door_open``, ``leakage_trip`` (the earth-leakage relay drops
  every segment), ``breaker_trip`` (segment 1 loses supply), ``local_override`` (the manual
  switch in the cabinet closes every contactor).
* The embedded meter measures the LED load: each segment is a number of lamps of one wattage on
  one phase; a driver draws 10 % plus 90 % of its rating times the dim level, with a power factor
  falling from 0.96 at full power to 0.90 when dimmed, and the controller itself draws 12 W on
  L1. Voltage and frequency drift and every value carries measurement noise, as in
  :mod:`simulators.energy_meter`; registers refresh once per measurement cycle (1 s).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

__all__ = ["FAULTS", "LightCabinetModel", "sun_elevation_deg"]

HANOI_LAT, HANOI_LON = 21.0285, 105.8542
_ICT = 7 * 3600  # Indochina Time, UTC+7
FAULTS = ("door_open", "leakage_trip", "breaker_trip", "local_override")
#: Lighting segments of the street_light_cabinet profile (devices/street_light_cabinet.yaml:
#: relay_segment_1..4, dim_level_segment_1..4).
SEGMENTS = 4


def sun_elevation_deg(t_unix: float, lat: float = HANOI_LAT, lon: float = HANOI_LON) -> float:
    """Solar elevation in degrees (low-precision almanac formulas, good to about 0.1°)."""
    d = t_unix / 86400.0 + 2440587.5 - 2451545.0  # days since J2000.0
    g = math.radians((357.529 + 0.98560028 * d) % 360.0)
    q = (280.459 + 0.98564736 * d) % 360.0
    ecl_lon = math.radians(q + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    obliquity = math.radians(23.439 - 0.00000036 * d)
    ra = math.atan2(math.cos(obliquity) * math.sin(ecl_lon), math.cos(ecl_lon))
    dec = math.asin(math.sin(obliquity) * math.sin(ecl_lon))
    gmst_deg = ((18.697374558 + 24.06570982441908 * d) % 24.0) * 15.0
    hour_angle = math.radians(gmst_deg + lon) - ra
    la = math.radians(lat)
    return math.degrees(
        math.asin(
            math.sin(la) * math.sin(dec) + math.cos(la) * math.cos(dec) * math.cos(hour_angle)
        )
    )


class LightCabinetModel:
    """One cabinet. ``commanded`` is shared with the simulated unit that applies writes."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        commanded: dict[str, float | int | bool] | None = None,
        cycle_s: float = 1.0,
    ) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self.commanded = commanded if commanded is not None else {}
        self.faults: set[str] = set()
        self.cycle_s = cycle_s
        rng = self._rng
        self.lamps = [rng.randint(15, 35) for _ in range(SEGMENTS)]
        self.lamp_w = [rng.choice((80.0, 100.0, 120.0, 150.0)) for _ in range(SEGMENTS)]
        self._import_kwh = rng.uniform(2_000, 60_000)
        self._dark = sun_elevation_deg(clock()) < -2.0
        self._v_drift = [0.0] * 3
        self._f_drift = 0.0
        self._last_t: float | None = None
        self._cycle: int | None = None
        self._values: dict[str, float | int | bool] = {}

    def _ou(self, x: float, dt: float, tau: float, sigma: float) -> float:
        a = math.exp(-dt / tau)
        return x * a + sigma * math.sqrt(1.0 - a * a) * self._rng.gauss(0.0, 1.0)

    def _photocell(self, t: float) -> bool:
        elevation = sun_elevation_deg(t)
        if elevation < -2.0:
            self._dark = True
        elif elevation > 0.0:
            self._dark = False
        return self._dark

    def _auto_relay(self, now: float, dark: bool) -> bool:
        """Contactors follow the photocell, delayed by the dusk / dawn offsets."""
        hour = ((now + _ICT) % 86400) / 3600.0
        key = "dusk_offset_min" if hour >= 12.0 else "dawn_offset_min"
        offset_min = float(self.commanded.get(key, 0))
        if offset_min == 0:
            return dark
        return sun_elevation_deg(now - offset_min * 60.0) < -1.0

    def _setting(self, name: str, auto: float | bool) -> float | bool:
        return self.commanded.get(name, auto)

    def sample(self) -> dict[str, float | int | bool]:
        now = self._clock()
        cycle = math.floor(now / self.cycle_s)
        if cycle == self._cycle:
            return self._values
        dt = 0.0 if self._last_t is None else min(max(0.0, now - self._last_t), 3600.0)
        if dt:
            for ph in range(3):
                self._v_drift[ph] = self._ou(self._v_drift[ph], dt, 60.0, 1.2)
            self._f_drift = self._ou(self._f_drift, dt, 30.0, 0.02)
        self._cycle = cycle
        self._values = self._measure(now, dt)
        self._last_t = now
        return self._values

    def _measure(self, now: float, dt: float) -> dict[str, float | int | bool]:
        rng = self._rng
        dark = self._photocell(now)
        hour = ((now + _ICT) % 86400) / 3600.0
        auto_dim = 60 if hour >= 23.0 or hour < 5.0 else 100
        auto_on = self._auto_relay(now, dark)
        override = "local_override" in self.faults
        values: dict[str, float | int | bool] = {
            "door_open": "door_open" in self.faults,
            "leakage_trip": "leakage_trip" in self.faults,
            "breaker_trip": "breaker_trip" in self.faults,
            "local_override": override,
            "photocell_dark": dark,
            "dusk_offset_min": int(self._setting("dusk_offset_min", 0)),
            "dawn_offset_min": int(self._setting("dawn_offset_min", 0)),
        }
        p_true = [0.0, 0.0, 0.0]
        q_true = [0.0, 0.0, 0.0]
        for i in range(SEGMENTS):
            n = i + 1
            relay = bool(self._setting(f"relay_segment_{n}", auto_on))
            dim = int(self._setting(f"dim_level_segment_{n}", auto_dim))
            values[f"relay_segment_{n}"] = relay
            values[f"dim_level_segment_{n}"] = dim
            supplied = (relay or override) and "leakage_trip" not in self.faults
            if n == 1 and "breaker_trip" in self.faults:
                supplied = False
            if not supplied:
                continue
            level = dim / 100.0
            p = self.lamps[i] * self.lamp_w[i] * (0.1 + 0.9 * level)
            pf = 0.90 + 0.06 * level
            ph = i % 3
            p_true[ph] += p
            q_true[ph] += p * math.tan(math.acos(pf))
        p_true[0] += 12.0  # the controller, its modem and the meter module
        q_true[0] += 12.0 * math.tan(math.acos(0.6))
        total_p = 0.0
        for ph in range(3):
            n = ph + 1
            v = 230.0 - 0.8 * p_true[ph] / 3000.0 + self._v_drift[ph] + rng.gauss(0, 0.05)
            p = p_true[ph] * (1.0 + rng.gauss(0, 0.0005))
            s = math.hypot(p_true[ph], q_true[ph])
            # A phase with no load reads power factor 1 and no current.
            pf = min(1.0, p_true[ph] / s + rng.gauss(0, 0.0005)) if s else 1.0
            values[f"voltage_l{n}"] = v
            values[f"current_l{n}"] = s / v * (1.0 + rng.gauss(0, 0.0005))
            values[f"power_l{n}"] = p
            values[f"power_factor_l{n}"] = pf
            total_p += p
        values["total_power"] = total_p
        values["frequency"] = 50.0 + self._f_drift + rng.gauss(0, 0.001)
        self._import_kwh += total_p / 1000.0 * dt / 3600.0
        values["import_energy"] = self._import_kwh
        return values
