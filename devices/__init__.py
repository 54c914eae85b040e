"""Device profiles: the shipped register maps as data, and the model they are read into.

* ``devices/<vendor>_<model>.yaml``: a Modbus device's profile, a YAML file
  (docs/profile-format.md). Adding a device means adding one file; nothing in ``edge/`` changes.
* ``devices/<vendor>_<model>.py`` defining ``PROFILE``: a serial sensor with its own protocol
  (:class:`SensorProfile`); its codec lives in protocols/.
* :mod:`devices.profile`: the frozen model (:class:`Point`, :class:`Profile`) every profile
  becomes, with its rules; :mod:`devices.units`: the unit symbols a point may declare.

The files are read by :mod:`edge.profiles` (``shipped_profiles()``, ``get_profile()``), which
also reads a technician's own profile files. This package imports nothing of edge.
"""

from __future__ import annotations

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
]

#: A Modbus device (register map) or a serial sensor with its own protocol.
AnyProfile = Profile | SensorProfile
