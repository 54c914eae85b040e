"""Compact weather station, Seeed SenseCAP ONE S500 class (Modbus RTU).

Source: ../shared/reference/device-protocols.md §3.4. Measurements are input registers (FC 04),
each an int32 in two registers, high word first, in thousandths (value / 1000). Pressure is in
Pa. Registers after 0x0012 (rain, PM, noise on the S700 / S1000) exist but their table is not
public [?], so they are not mapped.
"""

from devices.profile import Point, Profile, RegisterType
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming


def _m(name: str, address: int, unit: str, d: str = "") -> Point:
    return Point(name, address, DataType.INT32, unit, scale=0.001, description=d)


PROFILE = Profile(
    name="sensecap_one_s500",
    vendor="Seeed Studio",
    model="SenseCAP ONE S500",
    description="Weather station: temperature, humidity, pressure, light, wind",
    default_line=LineTiming(9600, "N", 1),
    readable_ranges={RegisterType.INPUT: ((0x0000, 0x0014),)},
    points=(
        _m("air_temperature", 0x0000, "°C"),
        _m("air_humidity", 0x0002, "%RH"),
        _m("barometric_pressure", 0x0004, "Pa"),
        _m("light_intensity", 0x0006, "lx"),
        _m("wind_direction_min", 0x0008, "°"),
        _m("wind_direction_max", 0x000A, "°"),
        _m("wind_direction_avg", 0x000C, "°"),
        _m("wind_speed_min", 0x000E, "m/s"),
        _m("wind_speed_max", 0x0010, "m/s"),
        _m("wind_speed_avg", 0x0012, "m/s"),
    ),
)
