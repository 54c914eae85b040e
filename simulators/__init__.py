"""Device firmware simulators: each speaks its device's real protocol, from the device profile.

:func:`sim_unit` builds one simulated unit for a profile; :func:`serve_modbus_tcp` serves units
on a loopback Modbus TCP port (a device, or a TCP-to-RTU bridge with several unit ids). A shipped
profile has its behaviour model; any other (a user's profile file) holds steady values
(:class:`simulators.generic.SteadyModel`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

from devices import Profile
from simulators.energy_meter import EnergyMeterModel
from simulators.environment import ThermoHygroModel, WaterLevelModel, WeatherStationModel
from simulators.generic import SteadyModel
from simulators.light_cabinet import LightCabinetModel
from simulators.modbus_device import ProfileSimUnit
from simulators.modbus_server import SimServer, serve_tcp

__all__ = [
    "EnergyMeterModel",
    "LightCabinetModel",
    "ProfileSimUnit",
    "SimServer",
    "SteadyModel",
    "serve_modbus_tcp",
    "sim_unit",
]

Commanded = dict[str, float | int | bool]
Model = Callable[[], dict[str, float | int | bool]]

#: Profile name -> behaviour model factory (seed, clock, commanded) -> model callable.
_MODELS: dict[str, Callable[[int | None, Callable[[], float], Commanded], Model]] = {
    "eastron_sdm630": lambda seed, clock, _: (
        EnergyMeterModel(phases=3, peak_kw=15.0, seed=seed, clock=clock).sample
    ),
    "eastron_sdm120": lambda seed, clock, _: (
        EnergyMeterModel(phases=1, peak_kw=3.0, seed=seed, clock=clock).sample
    ),
    "street_light_cabinet": lambda seed, clock, commanded: (
        LightCabinetModel(seed=seed, clock=clock, commanded=commanded).sample
    ),
    "sht20_xy_md02": lambda seed, clock, _: ThermoHygroModel(seed=seed, clock=clock).sample,
    "dfrobot_urm14": lambda seed, clock, _: WaterLevelModel(seed=seed, clock=clock).sample,
    "sensecap_one_s500": lambda seed, clock, _: WeatherStationModel(seed=seed, clock=clock).sample,
}


def sim_unit(
    profile: str | Profile,
    unit_id: int,
    *,
    seed: int | str | None = None,
    clock: Callable[[], float] = time.time,
) -> ProfileSimUnit:
    """A simulated unit for ``profile`` (a shipped profile's name, or a profile); a string seed
    (say a device id) is hashed stably. A profile no behaviour model is named for holds steady
    values (:class:`SteadyModel`)."""
    if isinstance(profile, str):
        from edge.profiles import get_profile  # reads the profile files (pydantic, YAML)

        found = get_profile(profile)
        if not isinstance(found, Profile):
            raise KeyError(f"{profile} is a serial sensor: it has no Modbus simulator")
        profile = found
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    factory = _MODELS.get(profile.name)
    commanded: Commanded = {}
    model = factory(seed, clock, commanded) if factory is not None else SteadyModel(profile, seed)
    return ProfileSimUnit(profile, unit_id, model, commanded=commanded)


async def serve_modbus_tcp(
    units: list[ProfileSimUnit], host: str = "127.0.0.1", port: int = 0
) -> SimServer:
    """Serve ``units`` on ``host:port`` (0: a free port). Returns the running server."""
    return await serve_tcp(list(units), host, port)
