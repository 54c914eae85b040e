"""Street-lighting cabinet controller: four switched segments with dimming and an embedded meter.

No vendor publishes a Modbus map for a street-lighting cabinet controller
(../shared/reference/device-protocols.md §4.5); this map is **our design**, mirroring what a
lighting cabinet holds (§4.1) and TALQ's cabinet / segment attributes:

* coils (FC 01, written with FC 05): one contactor relay per lighting segment;
* discrete inputs (FC 02): door open, earth-leakage trip, breaker trip, local manual override,
  photocell reports dark;
* holding registers (FC 03, written with FC 16): dim level per segment in % (0-100, LED drivers
  dimmed over DALI / 1-10 V), and the dusk / dawn switching offsets against the photocell in
  minutes (-120..120);
* input registers (FC 04): an embedded three-phase meter with the SDM630 layout and encoding
  (float32, high word first, §1.3), so the same decoding serves both.

At most 80 registers per request, as the SDM630-class meter module it embeds.
"""

from devices.eastron_sdm630 import PROFILE as SDM630
from devices.profile import Point, Profile, RegisterType, bit
from protocols.modbus import DataType
from protocols.modbus_frame import LineTiming

SEGMENTS = 4
_COIL, _DI = RegisterType.COIL, RegisterType.DISCRETE

_METER_POINTS = (
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "power_factor_l1",
    "power_factor_l2",
    "power_factor_l3",
    "total_power",
    "frequency",
    "import_energy",
)


def _holding(name: str, address: int, dtype: DataType, unit: str, lo: float, hi: float, d: str):
    return Point(
        name,
        address,
        dtype,
        unit,
        register_type=RegisterType.HOLDING,
        writable=True,
        limits=(lo, hi),
        description=d,
    )


PROFILE = Profile(
    name="street_light_cabinet",
    vendor="hanoi-edge reference design",
    model="LCC-4S (our map, device-protocols.md §4.5)",
    description="Street-lighting cabinet controller: 4 segment relays, dimming, door / leakage / "
    "breaker / override / photocell inputs, embedded three-phase meter",
    max_registers_per_request=80,
    even_register_count=False,
    readable_ranges={RegisterType.INPUT: SDM630.readable_ranges[RegisterType.INPUT][:1]},
    default_line=LineTiming(9600, "N", 1),
    points=(
        *(
            bit(f"relay_segment_{i}", i - 1, _COIL, writable=True, description="Contactor on")
            for i in range(1, SEGMENTS + 1)
        ),
        bit("door_open", 0, _DI, description="Cabinet door is open"),
        bit("leakage_trip", 1, _DI, description="Earth-leakage (RCD) relay tripped"),
        bit("breaker_trip", 2, _DI, description="A segment breaker tripped"),
        bit("local_override", 3, _DI, description="Manual switch in the cabinet overrides"),
        bit("photocell_dark", 4, _DI, description="Photocell reports dark"),
        *(
            _holding(f"dim_level_segment_{i}", i - 1, DataType.UINT16, "%", 0, 100, "LED dim level")
            for i in range(1, SEGMENTS + 1)
        ),
        _holding("dusk_offset_min", 4, DataType.INT16, "min", -120, 120, "Switch-on vs dark"),
        _holding("dawn_offset_min", 5, DataType.INT16, "min", -120, 120, "Switch-off vs light"),
        *(SDM630.point(name) for name in _METER_POINTS),
    ),
)
