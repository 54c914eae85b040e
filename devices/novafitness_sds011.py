"""Nova Fitness SDS011 laser particulate sensor (UART, 9600 8N1).

Source: ../shared/reference/device-protocols.md §2.2; codec in protocols/sds011.py. PM2.5 and
PM10 in tenths of µg/m³. Its laser too is good for about 8,000 hours: query mode with duty
cycling, as for the PMS5003.
"""

from devices.profile import SensorPoint, SensorProfile
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming

PROFILE = SensorProfile(
    name="novafitness_sds011",
    vendor="Nova Fitness",
    model="SDS011",
    protocol="sds011",
    description="Laser particulate sensor: PM2.5 / PM10",
    default_line=LineTiming(9600, "N", 1),
    warmup_s=30.0,
    points=(
        SensorPoint("pm2_5", "µg/m³", DataType.FLOAT64, key=True),
        SensorPoint("pm10", "µg/m³", DataType.FLOAT64),
    ),
)
