"""Plantower PMS5003 laser particulate sensor (UART, 9600 8N1, 3.3 V logic, 5 V fan).

Source: ../shared/reference/device-protocols.md §2.1; codec in protocols/pms5003.py. Report the
"atmospheric environment" concentrations (pm1_0 / pm2_5 / pm10) for ambient air; the CF=1 values
are the factory's "standard particle" figures. The laser lasts about 8,000 hours, so sample in
passive mode with duty cycling (``warmup_s`` before each sample, asleep in between).
"""

from devices.profile import SensorPoint, SensorProfile
from protocols.modbus_frame import LineTiming

_UG = "µg/m³"


def _c(name: str, d: str) -> SensorPoint:
    return SensorPoint(name, "/dL", description=d)


PROFILE = SensorProfile(
    name="plantower_pms5003",
    vendor="Plantower",
    model="PMS5003",
    protocol="pms5003",
    description="Laser particulate sensor: PM1.0 / PM2.5 / PM10 and particle counts",
    default_line=LineTiming(9600, "N", 1),
    warmup_s=30.0,
    points=(
        SensorPoint("pm1_0", _UG, description="PM1.0, atmospheric environment"),
        SensorPoint("pm2_5", _UG, description="PM2.5, atmospheric environment", key=True),
        SensorPoint("pm10", _UG, description="PM10, atmospheric environment"),
        SensorPoint("pm1_0_cf1", _UG, description="PM1.0, CF=1 (standard particle)"),
        SensorPoint("pm2_5_cf1", _UG),
        SensorPoint("pm10_cf1", _UG),
        _c("n0_3", "particles > 0.3 µm"),
        _c("n0_5", "particles > 0.5 µm"),
        _c("n1_0", "particles > 1.0 µm"),
        _c("n2_5", "particles > 2.5 µm"),
        _c("n5_0", "particles > 5.0 µm"),
        _c("n10", "particles > 10 µm"),
    ),
)
