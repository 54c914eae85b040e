"""Electrical behaviour of a meter on a Hanoi low-voltage feeder, by point name.

Values move as on a real feeder, with the noise a real meter shows:

* load follows a daily curve (late-morning and evening peaks, street lighting dusk to dawn), with
  a slow random drift per phase (Ornstein-Uhlenbeck, time constant 5 min, 6 % of the load) and
  appliances switching on and off (a step of 1-4 % of peak about every 2 min per phase);
* phase voltages are 230 V, sag 1.5 % at peak load and drift (OU, 1 min, 1.2 V);
* frequency drifts around 50 Hz (OU, 30 s, 0.02 Hz); power factors drift in 0.85-0.99;
* every measured value carries white measurement noise at the meter's resolution (0.05 V,
  0.05 % of current and power, 0.001 Hz, 0.0005 of power factor), and the meter refreshes its
  registers once per measurement cycle (1 s), as energy meters do; reads in between see the
  same values. Values are full-precision float32 on the wire: nothing is rounded;
* energy counters integrate power and only grow; a total is import + export (reference §1.3,
  Eastron's note), a three-phase total the sum of its phases;
* **demand** is what an Eastron meter calls it: the mean over the demand period (default 60 min,
  holding register 40003, reference §1.4), sliding, of import power, export power, and (SDM120)
  current; total power demand is import minus export demand (Eastron's note, §1.3). Each
  **maximum demand** is the largest demand since power-up, updated in the same measurement
  cycle as the demand, so it is never below it.

The names match the Eastron profiles; a profile point the model does not know reads 0.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable

__all__ = ["DEMAND_PERIOD_S", "EnergyMeterModel", "SlidingDemand"]

NOMINAL_V = 230.0
NOMINAL_HZ = 50.0
MEASUREMENT_CYCLE_S = 1.0
DEMAND_PERIOD_S = 3600.0  # Eastron's default demand period, 60 min (reference §1.4)
_ICT = 7 * 3600  # Indochina Time, UTC+7, no daylight saving


def daily_load_factor(t_wall: float) -> float:
    """Load as a fraction of peak, for a wall-clock time (seconds since the epoch)."""
    hour = ((t_wall + _ICT) % 86400) / 3600.0
    morning = math.exp(-(((hour - 11.0) / 2.5) ** 2))
    evening = math.exp(-(((hour - 19.5) / 2.0) ** 2))
    lighting = 1.0 if hour >= 18.0 or hour < 6.0 else 0.0  # street lights on dusk to dawn
    return 0.15 + 0.45 * morning + 0.6 * evening + 0.25 * lighting


class SlidingDemand:
    """Means over the last ``period_s`` of a few quantities, each weighted by the time it held
    (a sliding demand window), and the largest mean seen since power-up."""

    def __init__(self, names: tuple[str, ...], period_s: float) -> None:
        self.names = names
        self.period_s = period_s
        self._window: deque[tuple[float, float, tuple[float, ...]]] = deque()  # (end, dt, v)
        self._sums = [0.0] * len(names)
        self._span = 0.0
        self._since_exact = 0
        self.mean: dict[str, float] = dict.fromkeys(names, 0.0)
        self.maximum: dict[str, float] = dict.fromkeys(names, 0.0)

    def add(self, now: float, dt: float, values: tuple[float, ...]) -> None:
        """``values`` held for the ``dt`` seconds up to ``now``."""
        if dt > 0:
            self._window.append((now, dt, values))
            self._span += dt
            for k, v in enumerate(values):
                self._sums[k] += v * dt
        while self._window and self._window[0][0] <= now - self.period_s:
            _, old_dt, old = self._window.popleft()
            self._span -= old_dt
            for k, v in enumerate(old):
                self._sums[k] -= v * old_dt
        self._since_exact += 1
        if self._since_exact >= 1000:  # running sums drift: add them up afresh now and then
            self._since_exact = 0
            self._span = math.fsum(held for _, held, _ in self._window)
            self._sums = [
                math.fsum(v[k] * held for _, held, v in self._window)
                for k in range(len(self.names))
            ]
        for k, name in enumerate(self.names):
            if self._span > 0:
                mean = max(0.0, self._sums[k] / self._span)
            else:
                mean = values[k]  # no history yet: what it measures now
            self.mean[name] = mean
            self.maximum[name] = max(self.maximum[name], mean)


class EnergyMeterModel:
    """One meter's electrical state. ``phases`` is 1 (SDM120) or 3 (SDM630)."""

    def __init__(
        self,
        *,
        phases: int = 3,
        peak_kw: float = 15.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        import_kwh: float | None = None,
        cycle_s: float = MEASUREMENT_CYCLE_S,
        demand_period_s: float = DEMAND_PERIOD_S,
    ) -> None:
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        self.phases = phases
        self.cycle_s = cycle_s  # how often the meter refreshes its registers
        self.peak_kw = peak_kw
        self._rng = random.Random(seed)
        self._clock = clock
        self._imbalance = [1.0 + self._rng.uniform(-0.15, 0.15) for _ in range(3)]
        self._pf_base = [self._rng.uniform(0.88, 0.97) for _ in range(3)]
        start = import_kwh if import_kwh is not None else self._rng.uniform(1_000, 90_000)
        self._import_kwh = [start / phases] * phases
        self._import_kvarh = [start * 0.2 / phases] * phases
        self._export_kwh = [self._rng.uniform(0, 5) / phases] * phases
        self._last_t: float | None = None
        self.demand = SlidingDemand(("import_w", "export_w", "current_a"), demand_period_s)
        self._max_total_demand_w = 0.0
        # Slow drifts (Ornstein-Uhlenbeck), per phase where it matters.
        self._load_drift = [0.0] * 3
        self._steps = [0.0] * 3
        self._v_drift = [0.0] * 3
        self._pf_drift = [0.0] * 3
        self._f_drift = 0.0
        self._cycle: int | None = None
        self._values: dict[str, float] = {}

    def _ou(self, x: float, dt: float, tau: float, sigma: float) -> float:
        """One exact Ornstein-Uhlenbeck step with stationary standard deviation ``sigma``."""
        a = math.exp(-dt / tau)
        return x * a + sigma * math.sqrt(1.0 - a * a) * self._rng.gauss(0.0, 1.0)

    def _advance(self, dt: float) -> None:
        rng = self._rng
        for ph in range(3):
            self._load_drift[ph] = self._ou(self._load_drift[ph], dt, 300.0, 0.06)
            self._v_drift[ph] = self._ou(self._v_drift[ph], dt, 60.0, 1.2)
            self._pf_drift[ph] = self._ou(self._pf_drift[ph], dt, 120.0, 0.01)
            if rng.random() < dt / 120.0:  # an appliance switches on or off
                step = rng.uniform(0.01, 0.04) * rng.choice((-1.0, 1.0))
                self._steps[ph] = min(0.2, max(-0.2, self._steps[ph] + step))
        self._f_drift = self._ou(self._f_drift, dt, 30.0, 0.02)

    def sample(self) -> dict[str, float]:
        """The meter's registers now, by point name (refreshed once per measurement cycle)."""
        now = self._clock()
        cycle = math.floor(now / self.cycle_s)
        if cycle == self._cycle:
            return self._values
        if self._last_t is not None and now > self._last_t:
            self._advance(min(now - self._last_t, 3600.0))
        self._cycle = cycle
        self._values = self._measure(now)
        return self._values

    def _max_total_demand(self, mean: dict[str, float]) -> float:
        self._max_total_demand_w = max(
            self._max_total_demand_w, mean["import_w"] - mean["export_w"]
        )
        return self._max_total_demand_w

    def _measure(self, now: float) -> dict[str, float]:
        rng = self._rng
        base_load = daily_load_factor(now)
        values: dict[str, float] = {}
        p_phase, q_phase, s_phase, v_phase, i_phase, pf_phase = [], [], [], [], [], []
        for ph in range(self.phases):
            load = max(0.02, base_load * (1.0 + self._load_drift[ph]) + self._steps[ph])
            true_p = self.peak_kw * 1000.0 / self.phases * load * self._imbalance[ph]
            true_pf = min(0.99, max(0.85, self._pf_base[ph] + self._pf_drift[ph]))
            true_v = NOMINAL_V * (1.0 - 0.015 * load) + self._v_drift[ph]
            # What the meter measures: the true value plus noise at its resolution.
            p = true_p * (1.0 + rng.gauss(0, 0.0005))
            pf = min(1.0, true_pf + rng.gauss(0, 0.0005))
            s = p / pf
            q = math.sqrt(max(0.0, s * s - p * p))
            v = true_v + rng.gauss(0, 0.05)
            i = s / v * (1.0 + rng.gauss(0, 0.0005))
            p_phase.append(p)
            q_phase.append(q)
            s_phase.append(s)
            v_phase.append(v)
            i_phase.append(i)
            pf_phase.append(pf)
        # Energy counters integrate power over the time since the last sample: they only grow.
        dt = 0.0 if self._last_t is None else max(0.0, now - self._last_t)
        if dt:
            hours = dt / 3600.0
            for ph in range(self.phases):
                self._import_kwh[ph] += p_phase[ph] / 1000.0 * hours
                self._import_kvarh[ph] += q_phase[ph] / 1000.0 * hours
        self._last_t = now if self._last_t is None else max(self._last_t, now)
        total_p = sum(p_phase)
        # This feeder only draws power: import is the total, export none.
        self.demand.add(now, dt, (max(0.0, total_p), max(0.0, -total_p), sum(i_phase)))
        mean, peak = self.demand.mean, self.demand.maximum
        freq = NOMINAL_HZ + self._f_drift + rng.gauss(0, 0.001)
        imp, exp_ = sum(self._import_kwh), sum(self._export_kwh)
        imp_q, exp_q = sum(self._import_kvarh), 0.0
        common = {
            "frequency": freq,
            "import_energy": imp,
            "export_energy": exp_,
            "import_reactive_energy": imp_q,
            "export_reactive_energy": exp_q,
            "total_energy": imp + exp_,
            "total_reactive_energy": imp_q + exp_q,
            "total_power_demand": mean["import_w"] - mean["export_w"],
            # the largest total demand: import minus export, at its own peak
            "max_total_power_demand": self._max_total_demand(mean),
        }
        values.update(common)
        if self.phases == 1:
            angle = math.degrees(math.acos(pf_phase[0]))
            values.update(
                voltage=v_phase[0],
                current=i_phase[0],
                power=p_phase[0],
                apparent_power=s_phase[0],
                reactive_power=q_phase[0],
                power_factor=pf_phase[0],
                phase_angle=angle,
                import_power_demand=mean["import_w"],
                max_import_power_demand=peak["import_w"],
                export_power_demand=mean["export_w"],
                max_export_power_demand=peak["export_w"],
                current_demand=mean["current_a"],
                max_current_demand=peak["current_a"],
            )
            return values
        for ph in range(3):
            n = ph + 1
            values[f"voltage_l{n}"] = v_phase[ph]
            values[f"current_l{n}"] = i_phase[ph]
            values[f"power_l{n}"] = p_phase[ph]
            values[f"apparent_power_l{n}"] = s_phase[ph]
            values[f"reactive_power_l{n}"] = q_phase[ph]
            values[f"power_factor_l{n}"] = pf_phase[ph]
            values[f"phase_angle_l{n}"] = math.degrees(math.acos(pf_phase[ph]))
            values[f"voltage_thd_l{n}"] = 1.8 + 0.4 * base_load + rng.gauss(0, 0.01)
            values[f"current_thd_l{n}"] = 6.0 - 2.0 * base_load + rng.gauss(0, 0.05)
            values[f"import_energy_l{n}"] = self._import_kwh[ph]
            values[f"export_energy_l{n}"] = self._export_kwh[ph]
            values[f"total_energy_l{n}"] = self._import_kwh[ph] + self._export_kwh[ph]
        line = math.sqrt(3.0)
        values["voltage_l1_l2"] = (v_phase[0] + v_phase[1]) / 2 * line
        values["voltage_l2_l3"] = (v_phase[1] + v_phase[2]) / 2 * line
        values["voltage_l3_l1"] = (v_phase[2] + v_phase[0]) / 2 * line
        values["voltage_avg"] = sum(v_phase) / 3
        values["current_avg"] = sum(i_phase) / 3
        values["current_sum"] = sum(i_phase)
        values["total_power"] = total_p
        s_tot, q_tot = sum(s_phase), sum(q_phase)
        values["total_apparent_power"] = s_tot
        values["total_reactive_power"] = q_tot
        values["total_power_factor"] = total_p / s_tot if s_tot else 1.0
        values["total_phase_angle"] = math.degrees(
            math.acos(min(1.0, values["total_power_factor"]))
        )
        return values
