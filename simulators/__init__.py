"""Device firmware simulators: each speaks its device's real protocol, from the device profile.

:func:`sim_unit` builds one simulated unit for any Modbus profile, shipped or a user's file;
:func:`serve_modbus_tcp` serves units on a loopback Modbus TCP port (a device, or a TCP-to-RTU
bridge with several unit ids). A profile naming a behaviour model (``simulate: {model: ...}``,
:data:`MODELS`) follows it; its other points, and every point of a profile naming none, take
values from their hints and units (:mod:`simulators.generic`, docs/profile-format.md §16).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from devices import Profile
from devices.simulate import SimModel
from simulators.energy_meter import EnergyMeterModel
from simulators.environment import ThermoHygroModel, WaterLevelModel, WeatherStationModel
from simulators.generic import HintedModel, NamedModel, SteadyModel
from simulators.light_cabinet import LightCabinetModel
from simulators.modbus_device import ProfileSimUnit
from simulators.modbus_server import SimServer, serve_tcp

__all__ = [
    "MODELS",
    "EnergyMeterModel",
    "HintedModel",
    "LightCabinetModel",
    "NamedModel",
    "ProfileSimUnit",
    "SimServer",
    "SteadyModel",
    "serve_modbus_tcp",
    "sim_unit",
]

Commanded = dict[str, float | int | bool]


def _meter(spec: SimModel, profile: Profile, seed: int | None, clock: Callable[[], float]) -> Any:
    phases = spec.phases
    if phases is None:  # three when the profile shows a quantity of phase 2 or 3
        shown = {(p.simulate.quantity if p.simulate else None) or p.name for p in profile.points}
        phases = 3 if any(q.endswith(("_l2", "_l3")) for q in shown) else 1
    peak = spec.peak_kw if spec.peak_kw is not None else (15.0 if phases == 3 else 3.0)
    return EnergyMeterModel(phases=phases, peak_kw=peak, seed=seed, clock=clock)


#: Model name (devices.simulate.MODELS) -> the behaviour model for a profile, seed, clock and
#: the values written to it; each has ``sample()``.
MODELS: dict[str, Callable[[SimModel, Profile, int | None, Callable[[], float], Commanded], Any]]
MODELS = {
    "energy_meter": lambda spec, profile, seed, clock, _: _meter(spec, profile, seed, clock),
    "lighting": lambda spec, profile, seed, clock, commanded: LightCabinetModel(
        seed=seed, clock=clock, commanded=commanded
    ),
    "weather": lambda spec, profile, seed, clock, _: WeatherStationModel(seed=seed, clock=clock),
    "thermo_hygro": lambda spec, profile, seed, clock, _: ThermoHygroModel(seed=seed, clock=clock),
    "water_level": lambda spec, profile, seed, clock, _: WaterLevelModel(seed=seed, clock=clock),
}


def sim_unit(
    profile: str | Profile,
    unit_id: int,
    *,
    seed: int | str | None = None,
    clock: Callable[[], float] = time.time,
) -> ProfileSimUnit:
    """A simulated unit for ``profile`` (a shipped profile's name, or a profile): its named
    behaviour model, else values from its points' hints and units. A string seed (say a device
    id) is hashed stably; one seed gives the same values for the same clock."""
    if isinstance(profile, str):
        from edge.profiles import get_profile  # reads the profile files (pydantic, YAML)

        found = get_profile(profile)
        if not isinstance(found, Profile):
            raise KeyError(f"{profile} is a serial sensor: it has no Modbus simulator")
        profile = found
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    commanded: Commanded = {}
    hinted = HintedModel(profile, seed, clock)
    model: Callable[[], Mapping[str, float | int | bool | str]] = hinted
    if profile.simulate is not None:
        behaviour = MODELS[profile.simulate.model](
            profile.simulate, profile, seed, clock, commanded
        )
        model = NamedModel(profile, behaviour, behaviour.sample, hinted)
    return ProfileSimUnit(profile, unit_id, model, commanded=commanded)


async def serve_modbus_tcp(
    units: list[ProfileSimUnit], host: str = "127.0.0.1", port: int = 0
) -> SimServer:
    """Serve ``units`` on ``host:port`` (0: a free port). Returns the running server."""
    return await serve_tcp(list(units), host, port)
