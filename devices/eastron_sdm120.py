"""Eastron SDM120 single-phase energy meter: measurement input registers.

Source: ../shared/reference/device-protocols.md §1 (register inventory §1.3, limits §1.1).
float32 in two input registers (FC 04), high word first; even register counts, at most 80.
The reference warns not to assume gaps in the SDM120 map can be read, so no readable ranges
are declared: the plan only merges registers that are mapped and adjacent.
"""

from devices.profile import Kind, Point, Profile, float32_input
from protocols.modbus_frame import LineTiming

_p = float32_input


def _e(name: str, address: int, unit: str, description: str = "") -> Point:
    """An energy register: a counter that only grows (float32: it never wraps)."""
    return float32_input(name, address, unit, description, kind=Kind.COUNTER)


PROFILE = Profile(
    name="eastron_sdm120",
    vendor="Eastron",
    model="SDM120-Modbus",
    description="Single-phase DIN-rail energy meter, Modbus RTU (2400 8N1 factory)",
    max_registers_per_request=80,
    even_register_count=True,
    default_line=LineTiming(2400, "N", 1),
    points=(
        _p("voltage", 0x0000, "V"),
        _p("current", 0x0006, "A"),
        _p("power", 0x000C, "W", "Active power"),
        _p("apparent_power", 0x0012, "VA"),
        _p("reactive_power", 0x0018, "var"),
        _p("power_factor", 0x001E, "", "Sign gives the direction of current"),
        _p("phase_angle", 0x0024, "°"),
        _p("frequency", 0x0046, "Hz"),
        _e("import_energy", 0x0048, "kWh"),
        _e("export_energy", 0x004A, "kWh"),
        _e("import_reactive_energy", 0x004C, "kvarh"),
        _e("export_reactive_energy", 0x004E, "kvarh"),
        _p("total_power_demand", 0x0054, "W"),
        _p("max_total_power_demand", 0x0056, "W"),
        _p("import_power_demand", 0x0058, "W"),
        _p("max_import_power_demand", 0x005A, "W"),
        _p("export_power_demand", 0x005C, "W"),
        _p("max_export_power_demand", 0x005E, "W"),
        _p("current_demand", 0x0102, "A"),
        _p("max_current_demand", 0x0108, "A"),
        _e("total_energy", 0x0156, "kWh", "Import + export active energy"),
        _e("total_reactive_energy", 0x0158, "kvarh"),
    ),
)
