"""Device profiles. Each module ``devices/<vendor>_<model>.py`` defines ``PROFILE``.

Adding a device means adding one file here; nothing in ``edge/`` changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from devices.profile import (
    Kind,
    Point,
    Profile,
    ProfileError,
    RegisterType,
    SensorPoint,
    SensorProfile,
)

__all__ = [
    "AnyProfile",
    "Kind",
    "Point",
    "Profile",
    "ProfileError",
    "RegisterType",
    "SensorPoint",
    "SensorProfile",
    "get_profile",
    "modbus_profiles",
    "profiles",
]

#: A Modbus device (register map) or a serial sensor with its own protocol.
AnyProfile = Profile | SensorProfile

_NOT_PROFILES = {"profile"}


@cache
def profiles() -> dict[str, AnyProfile]:
    """All profiles shipped in this package, by name."""
    found: dict[str, AnyProfile] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name in _NOT_PROFILES or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        profile = getattr(module, "PROFILE", None)
        if isinstance(profile, Profile | SensorProfile):
            if profile.name in found:
                raise ProfileError(f"profile name {profile.name!r} defined twice")
            found[profile.name] = profile
    return found


def modbus_profiles() -> dict[str, Profile]:
    return {k: v for k, v in profiles().items() if isinstance(v, Profile)}


def get_profile(name: str) -> AnyProfile:
    try:
        return profiles()[name]
    except KeyError:
        known = ", ".join(sorted(profiles()))
        raise KeyError(f"unknown device profile {name!r} (known: {known})") from None
