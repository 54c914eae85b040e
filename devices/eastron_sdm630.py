"""Eastron SDM630 (V2) three-phase energy meter: measurement input registers.

Source: ../shared/reference/device-protocols.md §1 (register inventory §1.3, limits §1.1).
Every measurement is an IEEE-754 float32 in two input registers (FC 04), high word first.
Requests must ask for an even number of registers, at most 80 (40 parameters).

Readable ranges: the reference's suggested plan reads 0x0000 x 80 in one request, which reads
through the unmapped registers 0x002C, 0x0032, ... inside that block; that is our inference from
third-party integrations, not a capture from a meter (marked [?] in the reference).
"""

from devices.profile import Kind, Point, Profile, RegisterType, float32_input
from protocols.modbus_frame import LineTiming

_p = float32_input


def _e(name: str, address: int, unit: str, description: str = "") -> Point:
    """An energy register: a counter that only grows (float32: it never wraps)."""
    return float32_input(name, address, unit, description, kind=Kind.COUNTER)


PROFILE = Profile(
    name="eastron_sdm630",
    vendor="Eastron",
    model="SDM630-Modbus V2",
    description="Three-phase DIN-rail energy meter, Modbus RTU (9600 8N1 factory)",
    max_registers_per_request=80,
    even_register_count=True,
    readable_ranges={
        RegisterType.INPUT: (
            (0x0000, 0x0050),
            (0x0054, 0x0058),
            (0x00C8, 0x00CE),
            (0x00EA, 0x00F6),
            (0x0156, 0x016C),
        ),
    },
    default_line=LineTiming(9600, "N", 1),
    points=(
        _p("voltage_l1", 0x0000, "V", "Phase 1 line-to-neutral voltage"),
        _p("voltage_l2", 0x0002, "V", "Phase 2 line-to-neutral voltage"),
        _p("voltage_l3", 0x0004, "V", "Phase 3 line-to-neutral voltage"),
        _p("current_l1", 0x0006, "A"),
        _p("current_l2", 0x0008, "A"),
        _p("current_l3", 0x000A, "A"),
        _p("power_l1", 0x000C, "W", "Phase 1 active power"),
        _p("power_l2", 0x000E, "W"),
        _p("power_l3", 0x0010, "W"),
        _p("apparent_power_l1", 0x0012, "VA"),
        _p("apparent_power_l2", 0x0014, "VA"),
        _p("apparent_power_l3", 0x0016, "VA"),
        _p("reactive_power_l1", 0x0018, "var"),
        _p("reactive_power_l2", 0x001A, "var"),
        _p("reactive_power_l3", 0x001C, "var"),
        _p("power_factor_l1", 0x001E, "", "Sign gives the direction of current"),
        _p("power_factor_l2", 0x0020, ""),
        _p("power_factor_l3", 0x0022, ""),
        _p("phase_angle_l1", 0x0024, "°"),
        _p("phase_angle_l2", 0x0026, "°"),
        _p("phase_angle_l3", 0x0028, "°"),
        _p("voltage_avg", 0x002A, "V", "Average line-to-neutral voltage"),
        _p("current_avg", 0x002E, "A", "Average line current"),
        _p("current_sum", 0x0030, "A", "Sum of line currents"),
        _p("total_power", 0x0034, "W", "Total system active power"),
        _p("total_apparent_power", 0x0038, "VA"),
        _p("total_reactive_power", 0x003C, "var"),
        _p("total_power_factor", 0x003E, ""),
        _p("total_phase_angle", 0x0042, "°"),
        _p("frequency", 0x0046, "Hz"),
        _e("import_energy", 0x0048, "kWh", "Total import active energy"),
        _e("export_energy", 0x004A, "kWh", "Total export active energy"),
        _e("import_reactive_energy", 0x004C, "kvarh"),
        _e("export_reactive_energy", 0x004E, "kvarh"),
        _p("total_power_demand", 0x0054, "W"),
        _p("max_total_power_demand", 0x0056, "W"),
        _p("voltage_l1_l2", 0x00C8, "V"),
        _p("voltage_l2_l3", 0x00CA, "V"),
        _p("voltage_l3_l1", 0x00CC, "V"),
        _p("voltage_thd_l1", 0x00EA, "%"),
        _p("voltage_thd_l2", 0x00EC, "%"),
        _p("voltage_thd_l3", 0x00EE, "%"),
        _p("current_thd_l1", 0x00F0, "%"),
        _p("current_thd_l2", 0x00F2, "%"),
        _p("current_thd_l3", 0x00F4, "%"),
        _e("total_energy", 0x0156, "kWh", "Import + export active energy"),
        _e("total_reactive_energy", 0x0158, "kvarh"),
        _e("import_energy_l1", 0x015A, "kWh"),
        _e("import_energy_l2", 0x015C, "kWh"),
        _e("import_energy_l3", 0x015E, "kWh"),
        _e("export_energy_l1", 0x0160, "kWh"),
        _e("export_energy_l2", 0x0162, "kWh"),
        _e("export_energy_l3", 0x0164, "kWh"),
        _e("total_energy_l1", 0x0166, "kWh"),
        _e("total_energy_l2", 0x0168, "kWh"),
        _e("total_energy_l3", 0x016A, "kWh"),
    ),
)
