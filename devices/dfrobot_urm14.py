"""Ultrasonic distance sensor, DFRobot URM14 class, for street-flood water levels (Modbus RTU).

Source: ../shared/reference/device-protocols.md §3.2 (frame checked there: ``0C 03 00 05 00 01
95 16`` reads the distance). Every register is a holding register (FC 03, written with FC 06).
Distance is uint16 in 0.1 mm; the sensor looks down from a fixed mount, so the water level is
the mount height minus the distance (a processing step, not the device, knows the mount).
Factory setting 19200 8N1, address 0x0C on the URM14 examples; on a shared line set it to the
line's speed first.
"""

from devices.profile import Point, Profile, RegisterType
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming

_H = RegisterType.HOLDING


def _h(name: str, address: int, dtype: DataType, unit: str = "", scale: float = 1.0, d: str = ""):
    return Point(name, address, dtype, unit, register_type=_H, scale=scale, description=d)


PROFILE = Profile(
    name="dfrobot_urm14",
    vendor="DFRobot",
    model="URM14 (SEN0358)",
    description="Ultrasonic distance sensor on a mount above the street: flood water level",
    default_line=LineTiming(19200, "N", 1),
    readable_ranges={_H: ((0x0000, 0x000A),)},
    points=(
        _h("product_id", 0x0000, DataType.UINT16, d="PID"),
        _h("distance", 0x0005, DataType.UINT16, "mm", 0.1, "Distance to the water surface"),
        _h("internal_temperature", 0x0006, DataType.INT16, "°C", 0.1),
        _h("noise_level", 0x0009, DataType.UINT16, d="Ultrasonic noise seen by the sensor"),
    ),
)
