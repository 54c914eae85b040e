"""Device profiles. Each module ``devices/<vendor>_<model>.py`` defines ``PROFILE``.

Adding a device means adding one file here; nothing in ``edge/`` changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from devices.profile import Point, Profile, ProfileError, RegisterType

__all__ = ["Point", "Profile", "ProfileError", "RegisterType", "get_profile", "profiles"]

_NOT_PROFILES = {"profile"}


@cache
def profiles() -> dict[str, Profile]:
    """All profiles shipped in this package, by name."""
    found: dict[str, Profile] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name in _NOT_PROFILES or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        profile = getattr(module, "PROFILE", None)
        if isinstance(profile, Profile):
            if profile.name in found:
                raise ProfileError(f"profile name {profile.name!r} defined twice")
            found[profile.name] = profile
    return found


def get_profile(name: str) -> Profile:
    try:
        return profiles()[name]
    except KeyError:
        known = ", ".join(sorted(profiles()))
        raise KeyError(f"unknown device profile {name!r} (known: {known})") from None
