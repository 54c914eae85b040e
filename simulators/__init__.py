"""Device firmware simulators: each speaks its device's real protocol, from the device profile.

:func:`sim_unit` builds one simulated unit for a profile; :func:`serve_modbus_tcp` serves units
on a loopback Modbus TCP port (a device, or a TCP-to-RTU bridge with several unit ids).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

from devices import Profile, get_profile
from simulators.energy_meter import EnergyMeterModel
from simulators.modbus_device import ProfileSimUnit

__all__ = ["EnergyMeterModel", "ProfileSimUnit", "serve_modbus_tcp", "sim_unit"]

#: Profile name -> behaviour model factory (seed -> model callable).
_MODELS: dict[str, Callable[[int | None, Callable[[], float]], Callable[[], dict[str, float]]]] = {
    "eastron_sdm630": lambda seed, clock: (
        EnergyMeterModel(phases=3, peak_kw=15.0, seed=seed, clock=clock).sample
    ),
    "eastron_sdm120": lambda seed, clock: (
        EnergyMeterModel(phases=1, peak_kw=3.0, seed=seed, clock=clock).sample
    ),
}


def sim_unit(
    profile: str | Profile,
    unit_id: int,
    *,
    seed: int | str | None = None,
    clock: Callable[[], float] = time.time,
) -> ProfileSimUnit:
    """A simulated unit for ``profile``; a string seed (say a device id) is hashed stably."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    factory = _MODELS.get(prof.name)
    if factory is None:
        raise KeyError(f"no simulator model for profile {prof.name!r}")
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    return ProfileSimUnit(prof, unit_id, factory(seed, clock))


async def serve_modbus_tcp(units: list[ProfileSimUnit], host: str = "127.0.0.1", port: int = 0):
    """Serve ``units`` on ``host:port`` (0: a free port). Returns the running server."""
    from edge.modbus_adapter import serve_tcp

    return await serve_tcp(list(units), host, port)
