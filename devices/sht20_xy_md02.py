"""SHT20-based temperature / humidity transmitter, "XY-MD02" class (RS-485, Modbus RTU).

Source: ../shared/reference/device-protocols.md §3.1 (frames checked there: reading 0x0001 x1
returns 0x0131 = 30.5 °C). Data are input registers (FC 04): temperature int16 in tenths of a
degree, relative humidity in tenths of a percent. The calibration offsets are holding registers
(FC 03), read here, not written. Factory setting 9600 8N1, address 1; some batches ship with even
parity or hundredths instead of tenths [?]: check one unit before deploying a batch.
"""

from devices.profile import Point, Profile, RegisterType
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming

_H = RegisterType.HOLDING

PROFILE = Profile(
    name="sht20_xy_md02",
    vendor="generic (Sensirion SHT20 inside)",
    model="XY-MD02",
    description="Temperature / humidity transmitter, Modbus RTU (9600 8N1 factory, address 1)",
    default_line=LineTiming(9600, "N", 1),
    readable_ranges={RegisterType.INPUT: ((0x0001, 0x0003),), _H: ((0x0101, 0x0105),)},
    points=(
        Point("temperature", 0x0001, DataType.INT16, "°C", scale=0.1),
        Point("humidity", 0x0002, DataType.UINT16, "%RH", scale=0.1),
        Point("temperature_offset", 0x0103, DataType.INT16, "°C", register_type=_H, scale=0.1),
        Point("humidity_offset", 0x0104, DataType.INT16, "%RH", register_type=_H, scale=0.1),
    ),
)
