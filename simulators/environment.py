"""Behaviour of the environmental sensors of a Hanoi street, by point name.

* :class:`Weather` is the street's weather: air temperature with a daily cycle (coolest near
  dawn, warmest mid-afternoon, around the monthly mean for Hanoi), humidity moving against it,
  pressure drifting slowly, daylight from the sun over Hanoi, a north-east monsoon wind with
  gusts, and **rain** in showers (a storm every few hours on average, minutes to an hour long).
* :class:`ThermoHygroModel` (SHT20 transmitter): the air in its enclosure, at its resolution
  (0.1 °C, 0.1 %RH) with sensor noise.
* :class:`WaterLevelModel` (URM14 over a street drain): water gathers while it rains faster than
  the drain takes it and drains away after; the sensor reports distance from its mount to the
  surface in 0.1 mm with a millimetre of echo noise.
* :class:`WeatherStationModel` (SenseCAP ONE S500, and the ``weather`` model any profile may
  name): the weather in thousandths, wind statistics over the station's averaging window; also
  the wind now, the dew point (Magnus formula), irradiance, rain intensity and the rain fallen
  since power-up (a counter), for stations that report them.

Values change once per measurement cycle, as the devices refresh their registers.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from simulators.light_cabinet import sun_elevation_deg

__all__ = ["ThermoHygroModel", "WaterLevelModel", "Weather", "WeatherStationModel", "dew_point"]

_ICT = 7 * 3600
#: Mean daily air temperature in Hanoi by month (°C), Jan..Dec.
HANOI_MEAN_C = (16.6, 17.4, 20.2, 23.9, 27.4, 29.0, 29.2, 28.7, 27.6, 24.9, 21.6, 18.1)


class Weather:
    """The weather over one street, advanced in steps of simulated time."""

    def __init__(self, seed: int | None, clock: Callable[[], float]) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self._last: float | None = None
        self.temp_drift = 0.0
        self.pressure_pa = 101_500.0 + self._rng.uniform(-600, 600)
        self.wind_dir = 45.0 + self._rng.uniform(-20, 20)  # north-east monsoon
        self.wind_mean = 2.5
        self.wind_gust = 0.0
        self.cloud = self._rng.uniform(0.2, 0.8)
        self.rain_mm_h = 0.0
        self._storm_left_s = 0.0

    def _ou(self, x: float, dt: float, tau: float, sigma: float, mean: float = 0.0) -> float:
        a = math.exp(-dt / tau)
        return mean + (x - mean) * a + sigma * math.sqrt(1 - a * a) * self._rng.gauss(0, 1)

    def advance(self) -> float:
        """Move the weather to the clock's time; returns the seconds that passed."""
        now = self._clock()
        dt = 0.0 if self._last is None else min(max(0.0, now - self._last), 3600.0)
        self._last = now if self._last is None else max(self._last, now)
        if dt <= 0:
            return 0.0
        rng = self._rng
        self.temp_drift = self._ou(self.temp_drift, dt, 3 * 3600, 1.2)
        self.pressure_pa = self._ou(self.pressure_pa, dt, 12 * 3600, 400, 101_500)
        self.wind_dir = self._ou(self.wind_dir, dt, 1800, 25, 45.0) % 360.0
        self.wind_mean = max(0.0, self._ou(self.wind_mean, dt, 1800, 1.2, 2.5))
        self.wind_gust = max(0.0, self._ou(self.wind_gust, dt, 20, 1.0))
        self.cloud = min(1.0, max(0.0, self._ou(self.cloud, dt, 3600, 0.25, 0.5)))
        if self._storm_left_s > 0:
            self._storm_left_s -= dt
            self.rain_mm_h = max(0.0, self._ou(self.rain_mm_h, dt, 300, 12.0, 25.0))
            if self._storm_left_s <= 0:
                self.rain_mm_h = 0.0
        elif rng.random() < dt / (4 * 3600):  # a shower every four hours on average
            self._storm_left_s = rng.uniform(600, 3600)
            self.rain_mm_h = rng.uniform(5, 40)
        return dt

    def air_temperature(self, now: float) -> float:
        month = time.gmtime(now + _ICT).tm_mon
        hour = ((now + _ICT) % 86400) / 3600.0
        daily = 3.5 * math.cos((hour - 14.5) / 24.0 * 2 * math.pi)  # warmest at 14:30
        cooling = -1.5 if self.rain_mm_h > 0 else 0.0
        return HANOI_MEAN_C[month - 1] + daily + self.temp_drift + cooling

    def humidity(self, temp_c: float, now: float) -> float:
        month = time.gmtime(now + _ICT).tm_mon
        rh = 78.0 - 3.0 * (temp_c - HANOI_MEAN_C[month - 1]) + (15.0 if self.rain_mm_h else 0.0)
        return min(100.0, max(20.0, rh))

    def light_lux(self, now: float) -> float:
        elevation = sun_elevation_deg(now)
        if elevation <= 0:
            return 0.0
        return 110_000.0 * math.sin(math.radians(elevation)) * (1.0 - 0.75 * self.cloud)


class _Cycled:
    """Registers refresh once per measurement cycle."""

    def __init__(self, weather: Weather, cycle_s: float) -> None:
        self.weather = weather
        self.cycle_s = cycle_s
        self._cycle: int | None = None
        self._values: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        now = self.weather._clock()
        cycle = math.floor(now / self.cycle_s)
        if cycle != self._cycle:
            dt = self.weather.advance()
            self._cycle = cycle
            self._values = self._measure(now, dt)
        return self._values

    def _measure(self, now: float, dt: float) -> dict[str, float]:
        raise NotImplementedError


class ThermoHygroModel(_Cycled):
    def __init__(self, *, seed: int | None = None, clock: Callable[[], float] = time.time):
        super().__init__(Weather(seed, clock), 1.0)
        self._rng = random.Random(None if seed is None else seed + 1)
        self._enclosure = self._rng.uniform(0.5, 2.0)  # cabinets run warmer than the street

    def _measure(self, now: float, dt: float) -> dict[str, float]:
        w, rng = self.weather, self._rng
        t = w.air_temperature(now) + self._enclosure + rng.gauss(0, 0.05)
        rh = w.humidity(t, now) - 2.0 * self._enclosure + rng.gauss(0, 0.3)
        return {
            "temperature": round(t, 1),  # the transmitter's resolution
            "humidity": round(min(100.0, max(0.0, rh)), 1),
            "temperature_offset": 0.0,
            "humidity_offset": 0.0,
        }


class WaterLevelModel(_Cycled):
    """A URM14 looking down on a street drain from ``mount_mm`` above its bottom."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        mount_mm: float = 2500.0,
        base_level_mm: float = 120.0,
    ) -> None:
        super().__init__(Weather(seed, clock), 0.5)
        self._rng = random.Random(None if seed is None else seed + 2)
        self.mount_mm = mount_mm
        self.base_level_mm = base_level_mm  # water standing in the drain in dry weather
        self.level_mm = base_level_mm
        self.catchment = self._rng.uniform(15.0, 40.0)  # street area draining here / drain area
        self.drain_tau_s = self._rng.uniform(900, 2400)

    def _measure(self, now: float, dt: float) -> dict[str, float]:
        w, rng = self.weather, self._rng
        inflow = w.rain_mm_h / 3600.0 * self.catchment * dt  # mm of level gained
        excess = self.level_mm - self.base_level_mm
        outflow = excess * (1 - math.exp(-dt / self.drain_tau_s)) if dt else 0.0
        self.level_mm = min(self.mount_mm - 250.0, self.level_mm + inflow - outflow)
        distance = self.mount_mm - self.level_mm + rng.gauss(0, 1.0)
        temp = w.air_temperature(now) + rng.gauss(0, 0.1)
        return {
            "product_id": 0x0004,
            "distance": round(max(0.0, distance), 1),
            "internal_temperature": round(temp, 1),
            "noise_level": float(rng.randint(0, 3) + (8 if w.rain_mm_h > 20 else 0)),
        }


class WeatherStationModel(_Cycled):
    def __init__(self, *, seed: int | None = None, clock: Callable[[], float] = time.time):
        super().__init__(Weather(seed, clock), 1.0)
        self._rng = random.Random(None if seed is None else seed + 3)
        self._window: list[tuple[float, float]] = []  # (speed, direction) over the last minute
        self.rainfall_mm = 0.0  # since power-up

    def _measure(self, now: float, dt: float) -> dict[str, float]:
        w, rng = self.weather, self._rng
        speed = max(0.0, w.wind_mean + w.wind_gust + rng.gauss(0, 0.2))
        direction = (w.wind_dir + rng.gauss(0, 8.0)) % 360.0
        self._window = [*self._window[-59:], (speed, direction)]
        speeds = [s for s, _ in self._window]
        dirs = [d for _, d in self._window]
        # circular mean of the directions
        x = sum(math.cos(math.radians(d)) for d in dirs)
        y = sum(math.sin(math.radians(d)) for d in dirs)
        t = w.air_temperature(now) + rng.gauss(0, 0.05)
        rh = round(min(100.0, max(0.0, w.humidity(t, now) + rng.gauss(0, 0.2))), 3)
        pressure = round(w.pressure_pa + rng.gauss(0, 5), 3)
        lux = round(max(0.0, w.light_lux(now) * (1 + rng.gauss(0, 0.01))), 3)
        self.rainfall_mm += w.rain_mm_h * dt / 3600.0
        return {
            "air_temperature": round(t, 3),
            "air_humidity": rh,
            "barometric_pressure": pressure,
            "light_intensity": lux,
            "wind_direction_min": round(min(dirs), 3),
            "wind_direction_max": round(max(dirs), 3),
            "wind_direction_avg": round(math.degrees(math.atan2(y, x)) % 360.0, 3),
            "wind_speed_min": round(min(speeds), 3),
            "wind_speed_max": round(max(speeds), 3),
            "wind_speed_avg": round(sum(speeds) / len(speeds), 3),
            # No more draws below: the quantities above stay what they were.
            "wind_speed": round(speed, 3),
            "wind_direction": round(direction, 3),
            "dew_point": round(dew_point(t, max(1.0, rh)), 3),
            "irradiance": round(lux / 110.0, 3),  # full sun: about 110 klx, 1000 W/m²
            "rain_intensity": round(w.rain_mm_h, 3),
            "rainfall": self.rainfall_mm,
        }


def dew_point(temp_c: float, rh: float) -> float:
    """Dew point (°C) of air at ``temp_c`` and ``rh`` %RH: the Magnus formula with Alduchov
    and Eskridge's constants (1996), good to 0.4 °C from -40 to 50 °C."""
    a, b = 17.625, 243.04
    gamma = math.log(rh / 100.0) + a * temp_c / (b + temp_c)
    return b * gamma / (a - gamma)
