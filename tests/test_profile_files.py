"""Profiles as data (issue 19, items 1 and 3): profile files, user profiles, per-device overrides.

A profile is a YAML file (docs/profile-format.md §0) read with the config's bounded reader; a
broken one is refused at its own FILE:LINE:COL by ``edge check`` and ``edge run`` alike. A
gateway config names user profile files or folders (default ``profiles/`` beside it); a user
profile may extend a shipped one; a device can override byte order, addresses and request size.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices import Point, Profile, RegisterType
from edge.config import ConfigError, load_config, runtime_view
from edge.plan import CycleDecoder, compile_plan
from edge.profiles import get_profile, load_profile_file, modbus_profiles, shipped_profiles
from protocols.modbus import ByteOrder
from simulators import sim_unit
from simulators.modbus_device import ProfileSimUnit
from tests.test_point_kinds import KINDS

ROOT = Path(__file__).resolve().parent.parent

#: KINDS of tests/test_point_kinds.py, every kind of point, written as a profile file.
KINDS_YAML = """\
name: test_every_point_kind
vendor: test
model: every point kind
source: tests/test_point_kinds.py (KINDS), written as a file
readable_ranges: {input: [[0, 43], [100, 101]], holding: [[0, 4]]}
points:
  - {name: v_abcd, address: 0, data_type: float32, unit: V, byte_order: ABCD}
  - {name: v_cdab, address: 2, data_type: float32, unit: V, byte_order: CDAB}
  - {name: v_badc, address: 4, data_type: float32, unit: V, byte_order: BADC}
  - {name: v_dcba, address: 6, data_type: float32, unit: V, byte_order: DCBA}
  - {name: current, address: 8, data_type: int32, unit: A, scale: 0.001, byte_order: CDAB}
  - {name: energy, address: 10, data_type: uint32, unit: kWh, scale: 0.01, byte_order: DCBA,
     kind: counter, wrap: 42949672.96}
  - {name: pulses, address: 12, data_type: uint64, byte_order: CDAB, kind: counter,
     wrap: 18446744073709551616}
  - {name: offset_count, address: 16, data_type: int64, unit: Wh, offset: -1000,
     byte_order: BADC}
  - {name: frequency, address: 20, data_type: float64, unit: Hz, byte_order: DCBA}
  - {name: temperature, address: 24, data_type: int16, unit: °C, scale: 0.1, offset: -40}
  - {name: pressure, address: 25, data_type: uint16, unit: hPa, scale: 0.1, byte_order: BADC}
  - {name: serial_number, address: 26, data_type: string, length: 8}
  - {name: firmware, address: 34, data_type: string, length: 4, byte_order: BADC}
  - {name: run_state, address: 38, data_type: uint16, labels: {0: stopped, 1: running, 2: fault}}
  - {name: W, address: 40, data_type: int16, unit: W, scale_register: W_SF}
  - {name: A, address: 41, data_type: uint16, unit: A, scale_register: A_SF}
  - {name: A_SF, address: 42, data_type: int16}
  - {name: W_SF, address: 100, data_type: int16}
  - {name: alarm, address: 0, table: holding, data_type: bool, bits: 0}
  - {name: door_open, address: 0, table: holding, data_type: bool, bits: [1, 1]}
  - {name: mode, address: 0, table: holding, data_type: uint16, bits: [4, 6],
     labels: {0: "off", 1: auto, 2: manual}}
  - {name: fault, address: 0, table: holding, data_type: bool, bits: 15}
  - {name: setpoint, address: 1, table: holding, data_type: int16, unit: °C, scale: 0.5,
     offset: -20, writable: true, limits: [-10, 60]}
  - {name: operating_mode, address: 2, table: holding, data_type: uint16, writable: true,
     labels: {0: "off", 1: eco, 2: boost}}
  - {name: swapped_flag, address: 3, table: holding, data_type: bool, bits: 8, byte_order: BADC}
  - {name: relay, address: 0, table: coil, data_type: bool, writable: true}
  - {name: tamper, address: 0, table: discrete, data_type: bool}
"""

#: A device the project has never seen: ten float32 holding registers and a few more kinds.
GENERIC = """\
name: acme_pm10
vendor: ACME
model: PM-10 generic meter
source: ACME PM-10 Modbus map v1.0 (written for this test)
max_registers_per_request: 32
default_line: {baudrate: 19200, parity: E, stopbits: 1}
defaults: {table: holding, data_type: float32}
points:
  - {name: v1, address: 0, unit: V}
  - {name: v2, address: 2, unit: V}
  - {name: v3, address: 4, unit: V}
  - {name: i1, address: 6, unit: A}
  - {name: i2, address: 8, unit: A}
  - {name: i3, address: 10, unit: A}
  - {name: p, address: 12, unit: kW}
  - {name: pf, address: 14}
  - {name: f, address: 16, unit: Hz}
  - {name: e, address: 18, unit: kWh, kind: counter}
  - {name: serial, address: 0x0100, data_type: string, length: 4}
  - {name: state, address: 0x0104, data_type: uint16, labels: {0: idle, 1: running}}
"""


def gateway(tmp_path: Path, devices: str, extra: str = "") -> Path:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"gateway: {{id: gw, site: s}}\nbuffer: {{path: {tmp_path / 'b.sqlite'}}}\n{extra}"
        f"devices:\n{devices}"
    )
    return cfg


def device(profile: str, extra: str = "", unit: int = 1) -> str:
    return (
        f"  - id: d{unit}\n    profile: {profile}\n"
        f"    transport: {{type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: {unit}}}\n"
        + "".join(f"    {line}\n" for line in extra.splitlines())
    )


def profile_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def problems(cfg: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, check_storage=False)
    return str(exc.value).splitlines()


# --------------------------------------------------------------------------- shipped profiles


def test_shipped_profiles__modbus_maps_are_yaml_files_citing_their_source():
    files = sorted(p.stem for p in (ROOT / "devices").glob("*.yaml"))
    assert files == sorted(modbus_profiles())
    assert not [p for p in (ROOT / "devices").glob("*.py") if p.stem in files]  # no Python twin
    for name, profile in modbus_profiles().items():
        assert len(profile.source) > 30, name
    # Serial sensors keep their Python profiles: their protocol is code.
    assert {"plantower_pms5003", "novafitness_sds011"} <= set(shipped_profiles())


def test_profile_file__says_every_point_kind_a_python_profile_can(tmp_path):
    got = load_profile_file(profile_file(tmp_path, "kinds.yaml", KINDS_YAML))
    assert got.points == KINDS.points
    assert got.readable_ranges == KINDS.readable_ranges
    assert (got.name, got.vendor, got.model) == (KINDS.name, KINDS.vendor, KINDS.model)


# --------------------------------------------------------------------------- broken files

BASE = "name: acme_x\nvendor: ACME\nmodel: X\nsource: ACME X data sheet v1\n"


@pytest.mark.parametrize(
    ("text", "line", "at", "expect"),
    [
        (BASE + "points:\n  - {name: a, address: 0, data_type: uint16, colour: red}\n",
         6, "colour", "unknown key 'colour' in points.0"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: float32}\n"
         "  - {name: b, address: 1, data_type: float32}\n",
         7, "{", "points 'a' and 'b' overlap ('a' at line 6)"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: float32, length: 3}\n",
         6, "3}", "point 'a': length is for strings; a float32 has 2 registers"),
        (BASE + "points:\n  - {name: a, address: 40, data_type: bool, bits: 40}\n",
         6, "40}", "point 'a': bits 40..40: a register has bits 0..15"),
        (BASE + "points:\n  - {name: a, address: 0}\n",
         6, "{", "missing required key 'data_type' in points.0 (or give it in defaults)"),
        (BASE.replace("source: ACME X data sheet v1\n", "") + "points:\n"
         "  - {name: a, address: 0, data_type: uint16}\n",
         1, "name", "missing required key 'source' in top level"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: uint16, unit: kwh}\n",
         6, "kwh", "point 'a': unit 'kwh' is not a known symbol; write 'kWh'"),
        (BASE.replace("acme_x", "eastron_sdm630") + "points: []\n",
         1, "eastron", "'eastron_sdm630' is a shipped profile: give yours a name of its own"),
        ("name: acme_x\nextends: eastron_sdm999\n",
         2, "eastron", "extends 'eastron_sdm999': there is no such profile (known: "),
        (BASE + "points:\n  - {name: a, address: 0, data_type: uint16}\n"
         "  - {name: a, address: 1, data_type: uint16}\n",
         7, "a,", "point 'a' is declared twice (first at line 6)"),
        (BASE + "points:\n  - {name: m, address: 0, data_type: uint16, bits: [0, 1],"
         " labels: {4: high}}\n",
         6, "{4", "point 'm': label value 4 is not a uint16 value (0..3)"),
        (BASE + "points:\n  - {name: w, address: 0, data_type: int16, scale_register: w_sf}\n",
         6, "w_sf", "scale_register 'w_sf' is not a point of this profile"),
        (BASE + "address_base: 40001\npoints:\n  - {name: a, address: 1, table: holding,"
         " data_type: uint16}\n",
         7, "1,", "point 'a': address 1 is below address_base 40001"),
        (BASE + "address_base: 30001\npoints:\n  - {name: a, address: 30001, table: holding,"
         " data_type: uint16}\n",
         7, "30001", "address_base 30001 numbers input registers, and this point is in table "
         "holding"),
        (BASE + "readable_ranges: {input: [[0x50, 0x10]]}\npoints:\n"
         "  - {name: a, address: 0, data_type: uint16}\n",
         5, "{input", "readable range [80, 16) of input registers must not end before it starts"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: uint16, bits: [1, 2, 3]}\n",
         6, "[1", "points.0.bits: takes a bit number n or [first, last]"),
        (BASE + "points:\n\t- {name: a}\n", 6, "\t", "YAML syntax: a tab: YAML indents with"),
        (BASE + "points: !!python/object:os.system [ls]\n",
         5, "!!", "tag !!python/object:os.system"),
        ("- just\n- a list\n", 1, "-", "a profile is a YAML mapping"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: float32, byte_order: ABCD,"
         " word_order: little}\n",
         6, "little", "point 'a': word_order little contradicts byte_order ABCD"),
        (BASE + "points:\n  - {name: a, address: 0, data_type: float32, byte_order: DCBA,"
         " word_order: big}\n",
         6, "big", "point 'a': word_order big contradicts byte_order DCBA"),
    ],
)  # fmt: skip
def test_check__a_broken_profile_file_is_refused_at_its_line(tmp_path, text, line, at, expect):
    profile_file(tmp_path / "profiles", "p.yaml", text)
    cfg = gateway(tmp_path, device("eastron_sdm120"))
    found = problems(cfg)
    col = text.splitlines()[line - 1].index(at) + 1
    here = str(tmp_path / "profiles" / "p.yaml")
    assert any(p.startswith(f"{here}:{line}:{col}: ") and expect in p for p in found), found
    assert all(p.startswith(here) for p in found), found  # the config itself is fine


def test_check__problems_across_profile_files_are_each_at_their_own_file(tmp_path):
    folder = tmp_path / "profiles"
    profile_file(folder, "c1.yaml", "name: c1\nextends: c2\n")
    profile_file(folder, "c2.yaml", "name: c2\nextends: c1\n")
    clone = (
        "name: clone\nextends: eastron_sdm630\nremove_points: [voltage_l1, voltage_l9]\n"
        "points:\n  - {name: frequency2, address: 0x0047, data_type: float32}\n"
    )
    profile_file(folder, "clone.yaml", clone)
    profile_file(folder, "other.yaml", BASE.replace("acme_x", "clone") + "points: []\n")
    cfg = gateway(tmp_path, device("clone"))
    found = problems(cfg)
    assert f"{folder / 'c2.yaml'}:2:10: extends 'c1' makes a circle: c1 -> c2 -> c1" in found
    col = clone.splitlines()[2].index("voltage_l9") + 1
    assert (
        f"{folder / 'clone.yaml'}:3:{col}: eastron_sdm630 has no point 'voltage_l9' to remove"
        in (found)
    )
    overlap = [p for p in found if p.startswith(f"{folder / 'clone.yaml'}:5:5: ")]
    assert overlap and "points 'frequency' and 'frequency2' overlap" in overlap[0], found
    assert "'frequency' at devices/eastron_sdm630.yaml:" in overlap[0]  # the base's own file
    assert any(
        p.startswith(f"{folder / 'other.yaml'}:1:7: profile 'clone' is defined in ") for p in found
    ), found
    assert not [p for p in found if p.startswith(str(cfg))]  # the device names a broken profile


def test_check__a_file_in_the_profile_folder_is_checked_even_when_no_device_uses_it(tmp_path):
    profile_file(tmp_path / "profiles", "unused.yaml", BASE + "points: [{name: a, address: 0}]\n")
    profile_file(tmp_path / "profiles", "notes.txt", "not a profile, not read\n")
    profile_file(tmp_path / "profiles" / "old", "older.yaml", "not: [read\n")  # a subfolder
    found = problems(gateway(tmp_path, device("eastron_sdm120")))
    assert found == [
        f"{tmp_path / 'profiles' / 'unused.yaml'}:5:10: missing required key 'data_type' in "
        "points.0 (or give it in defaults)"
    ]


def test_check__a_device_naming_an_unknown_profile_lists_the_user_profiles_too(tmp_path):
    profile_file(tmp_path / "profiles", "g.yaml", GENERIC)
    found = problems(gateway(tmp_path, device("acme_pm11")))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'gateway.yaml'}:5:14: ")
    assert "unknown device profile 'acme_pm11' (known: " in found[0]
    assert "acme_pm10, " in found[0] and "dfrobot_urm14, " in found[0]  # user and shipped


@pytest.mark.system
def test_run__refuses_a_broken_profile_file_with_the_same_lines_as_check(tmp_path):
    profile_file(tmp_path / "profiles", "p.yaml", BASE + "points:\n"
                 "  - {name: a, address: 40, data_type: bool, bits: 40}\n")  # fmt: skip
    cfg = gateway(tmp_path, device("acme_x"))

    def edge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    run, check = edge("run", "--config", str(cfg)), edge("check", str(cfg))
    assert run.returncode == check.returncode == 2
    assert run.stderr == check.stderr
    assert f"{tmp_path / 'profiles' / 'p.yaml'}:6:51: point 'a': bits 40..40" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


# --------------------------------------------------------------------------- user profiles


def test_profiles__default_folder_beside_the_config_an_empty_list_and_named_paths(tmp_path):
    profile_file(tmp_path / "profiles", "g.yaml", GENERIC)
    profile_file(tmp_path / "elsewhere", "g2.yaml", GENERIC.replace("acme_pm10", "acme_pm20"))
    loaded = load_config(gateway(tmp_path, device("acme_pm10")), check_storage=False)
    assert loaded.profiles["d1"].name == "acme_pm10"
    assert loaded.profile_files == {"acme_pm10": str(tmp_path / "profiles" / "g.yaml")}
    # profiles: [] reads none (and the device's profile is then unknown)
    found = problems(gateway(tmp_path, device("acme_pm10"), "profiles: []\n"))
    assert "unknown device profile 'acme_pm10'" in found[0]
    # named files and folders, relative to the config; a missing one at its line
    named = gateway(tmp_path, device("acme_pm20"), "profiles: [elsewhere/g2.yaml, profiles]\n")
    loaded = load_config(named, check_storage=False)
    assert set(loaded.profile_files) == {"acme_pm10", "acme_pm20"}
    found = problems(gateway(tmp_path, device("acme_pm10"), "profiles: [profiles, nowhere/]\n"))
    assert found == [
        f"{tmp_path / 'gateway.yaml'}:3:22: profiles: nowhere/ does not exist (a profile file "
        "or a folder of them, relative to the config's folder)"
    ]


def test_profiles__extends_replaces_adds_and_removes_points_and_changes_limits(tmp_path):
    profile_file(tmp_path / "profiles", "clone.yaml", """\
name: sdm120_clone
extends: eastron_sdm120
model: SDM120 clone
max_registers_per_request: 20
remove_points: [current_demand, max_current_demand]
defaults: {data_type: float32}
points:
  - {name: frequency, address: 0x0046, unit: Hz, description: measured on the clone}
  - {name: run_hours, address: 0x0200, table: holding, data_type: uint32, unit: h,
     kind: counter}
""")  # fmt: skip
    profile_file(tmp_path / "profiles", "clone2.yaml", """\
name: sdm120_clone_rev2
extends: sdm120_clone
source: clone rev. 2 data sheet
even_register_count: false
remove_points: [run_hours]
""")  # fmt: skip
    devices = device("sdm120_clone", unit=1) + device("sdm120_clone_rev2", unit=2)
    loaded = load_config(gateway(tmp_path, devices), check_storage=False)
    base = get_profile("eastron_sdm120")
    assert isinstance(base, Profile)
    one, two = loaded.profiles["d1"], loaded.profiles["d2"]
    assert isinstance(one, Profile) and isinstance(two, Profile)
    assert (one.vendor, one.model, one.source) == ("Eastron", "SDM120 clone", base.source)
    assert one.max_registers_per_request == 20 and one.even_register_count
    names = [p.name for p in base.points if p.name not in ("current_demand", "max_current_demand")]
    assert [p.name for p in one.points] == [*names, "run_hours"]  # replaced where it stood
    assert one.point("frequency").description == "measured on the clone"
    assert one.point("run_hours") == Point(
        "run_hours", 0x200, "uint32", "h", register_type=RegisterType.HOLDING, kind="counter"
    )
    assert [p.name for p in two.points] == names and two.source == "clone rev. 2 data sheet"
    assert two.max_registers_per_request == 20 and not two.even_register_count
    assert all(r.count <= 20 for r in loaded.plans["d1"].requests)


def test_profiles__address_base_keeps_the_data_sheets_numbers(tmp_path):
    sheet = (
        BASE
        + "address_base: 40001\nreadable_ranges: {holding: [[40001, 40011]]}\n"
        + (
            "defaults: {table: holding, data_type: uint16}\npoints:\n"
            "  - {name: a, address: 40001}\n  - {name: b, address: 40010}\n"
        )
    )
    got = load_profile_file(profile_file(tmp_path, "p.yaml", sheet))
    assert [p.address for p in got.points] == [0, 9]
    assert got.readable_ranges == {RegisterType.HOLDING: ((0, 10),)}
    one = load_profile_file(profile_file(tmp_path, "q.yaml", sheet.replace("40001", "1")))
    assert [p.address for p in one.points] == [0, 40009]


# --------------------------------------------------------------------------- per-device overrides


def test_device_overrides__byte_order_offset_and_max_registers_make_the_polled_profile(tmp_path):
    extra = "byte_order: CDAB\naddress_offset: 1\nmax_registers: 10\npoints: [voltage, frequency]"
    loaded = load_config(gateway(tmp_path, device("eastron_sdm120", extra)), check_storage=False)
    base = get_profile("eastron_sdm120")
    got = loaded.profiles["d1"]
    assert isinstance(base, Profile) and isinstance(got, Profile)
    assert got.name == base.name and got.max_registers_per_request == 10
    for p, q in zip(base.points, got.points, strict=True):
        assert (q.address, q.byte_order) == (p.address + 1, ByteOrder.CDAB)
    plan = loaded.plans["d1"]
    assert [(r.address, r.count) for r in plan.requests] == [(1, 2), (0x47, 2)]
    # The birth and the poller read this profile: it travels in the gateway's records.
    plain = pickle.loads(pickle.dumps(runtime_view(loaded)))
    assert plain.profiles == loaded.profiles and plain.plans["d1"].source == got
    # A device without overrides shares the shipped profile (one copy in memory).
    plain2 = load_config(gateway(tmp_path, device("eastron_sdm120")), check_storage=False)
    assert plain2.profiles["d1"] is base


def test_device_overrides__an_address_offset_out_of_the_register_space_is_refused_there(tmp_path):
    found = problems(gateway(tmp_path, device("eastron_sdm120", "address_offset: -1")))
    assert found == [
        f"{tmp_path / 'gateway.yaml'}:7:21: device 'd1': address_offset -1 does not fit profile "
        "eastron_sdm120: point 'voltage': address -1 is outside 0..65535"
    ]
    found = problems(gateway(tmp_path, device("eastron_sdm120", "address_offset: 65535")))
    assert "point 'current': address 65541 is outside 0..65535" in found[0]
    found = problems(gateway(tmp_path, device("eastron_sdm120", "byte_order: ADCB")))
    assert "devices.0.byte_order: must be one of ABCD, CDAB, BADC or DCBA" in found[0]


def test_device_overrides__a_serial_sensor_takes_no_byte_order(tmp_path):
    sensor = (
        "  - id: pm\n    profile: plantower_pms5003\n    byte_order: CDAB\n"
        "    transport: {type: uart, port: /dev/ttyUSB9}\n"
    )
    found = problems(gateway(tmp_path, sensor))
    assert found == [
        f"{tmp_path / 'gateway.yaml'}:6:17: device 'pm': byte_order is for Modbus devices; "
        "plantower_pms5003 is a serial sensor with its own protocol"
    ]


# --------------------------------------------------------------------------- simulators


def test_sim_unit__a_data_profile_serves_values_every_point_decodes_to(tmp_path):
    """A profile no behaviour model knows gets one from its units: each point holds a value its
    encoding carries, what the plan reads decodes to what was served, and the values hold
    through a measurement cycle (1 s) and differ from point to point."""
    profile = load_profile_file(profile_file(tmp_path, "kinds.yaml", KINDS_YAML))
    t = [1_763_800_000.0]
    unit = sim_unit(profile, 3, seed="x", clock=lambda: t[0])
    assert isinstance(unit, ProfileSimUnit)
    plan = compile_plan(profile)
    for k in range(2):
        t[0] += 0.4 * k  # the same measurement cycle
        cycle: CycleDecoder[None] = CycleDecoder(plan.scale_names)
        decoded = 0
        for r in plan.requests:
            words = unit.read(r.function_code, r.address, r.count)
            assert isinstance(words, list), r
            done, failed = cycle.feed(r, words, None)
            assert failed == []
            for _, point, value in done:
                assert unit.served(point.name)[-1] == value, point.name
                decoded += 1
        assert decoded == len(profile.points) and cycle.unresolved() == []
    served = {p.name: unit.served(p.name) for p in profile.points}
    assert all(len(v) == 2 and v[0] == v[1] for v in served.values())  # one cycle: held
    assert len({str(v[0]) for v in served.values()}) > 15  # and not all alike
    other = sim_unit(profile, 3, seed="y", clock=lambda: t[0])
    assert other.model_values() != unit.model_values()


# --------------------------------------------------------------------------- onboarding


def _start(*args: str, cwd: Path, out: Path) -> subprocess.Popen[str]:
    """An ``edge`` subprocess started in ``cwd``, its output (both streams) into ``out``."""
    with out.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _first_line(proc: subprocess.Popen[str], out: Path, within_s: float = 30) -> str:
    deadline = time.monotonic() + within_s
    while "\n" not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, f"no output from {proc.args}"
        time.sleep(0.1)
    return out.read_text().splitlines()[0]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _served(log: Path) -> dict[tuple[int, str], set[object]]:
    out: dict[tuple[int, str], set[object]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        out.setdefault((entry["unit"], entry["point"]), set()).add(entry["value"])
    return out


@pytest.mark.system
@pytest.mark.slow
def test_onboarding__a_new_device_from_files_alone_reaches_the_consumer_as_served(
    tmp_path, mosquitto
):
    """Issue 19, must-show 1: a device the project has never seen, onboarded with files only (a
    profile YAML, a gateway config, ``edge sim --profile-file``): the gateway delivers its values
    through Mosquitto to ``edge consume``, equal to what the simulator served. A clone of it that
    sends its floats low word first is read right with ``byte_order: CDAB`` on the device (and
    wrong without it)."""
    profile = profile_file(tmp_path / "profiles", "acme_pm10.yaml", GENERIC)
    clone_hw = profile_file(  # what the clone really does: its floats low word first
        tmp_path,
        "clone-hardware.yaml",
        GENERIC.replace("name: acme_pm10", "name: acme_pm10_clone").replace(
            "defaults: {table: holding, data_type: float32}",
            "defaults: {table: holding, data_type: float32, byte_order: CDAB}",
        ),
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for path, units in ((profile, ["--unit", "1"]), (clone_hw, ["--unit", "2", "--unit", "3"])):
            log = tmp_path / f"sim-{path.stem}.out"
            proc = _start(
                "sim", "--profile-file", str(path), "--port", "0", *units,
                "--served-log", str(tmp_path / f"served-{path.stem}.jsonl"),
                cwd=tmp_path, out=log,
            )  # fmt: skip
            procs.append(proc)
            said = _first_line(proc, log)
            assert " on 127.0.0.1:" in said, said
            ports.append(int(said.split(" on 127.0.0.1:")[1].split()[0]))

        def meter(name: str, port: int, unit: int, extra: str = "") -> str:
            return (
                f"  - id: {name}\n    profile: acme_pm10\n{extra}"
                "    transport: {type: modbus_tcp, host: 127.0.0.1, "
                f"port: {port}, unit: {unit}}}\n"
                "    poll_interval_s: 0.5\n    timeout_ms: 200\n    retries: 0\n"
            )

        cfg = tmp_path / "gateway.yaml"  # profiles/ beside it: read by default
        cfg.write_text(
            f"gateway: {{id: gw-onboard, site: test}}\n"
            f"buffer: {{path: {tmp_path / 'buffer.sqlite'}, commit_interval_ms: 100}}\n"
            f"mqtt: {{url: '{mosquitto.url}', batch_max_delay_ms: 300}}\n"
            "status: {enabled: false}\ndevices:\n"
            + meter("meter-a", ports[0], 1)
            + meter("clone-b", ports[1], 2, "    byte_order: CDAB\n")
            + meter("clone-c", ports[1], 3)
        )
        readings = tmp_path / "consumed.jsonl"
        with readings.open("w") as f:
            consume = subprocess.Popen(
                [sys.executable, "-m", "edge", "consume", "--broker", mosquitto.url,
                 "--duration", "12"],
                cwd=ROOT, stdout=f, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        procs.append(consume)
        time.sleep(2)  # its subscription is in place
        run = _start("run", "--config", str(cfg), cwd=tmp_path, out=tmp_path / "run.out")
        procs.append(run)
        assert consume.wait(timeout=60) == 0
        _stop(run)
        assert "Traceback" not in (tmp_path / "run.out").read_text()
    finally:
        for proc in procs:
            _stop(proc)
    served = _served(tmp_path / "served-acme_pm10.jsonl") | _served(
        tmp_path / "served-clone-hardware.jsonl"
    )
    got: dict[tuple[str, str], list[object]] = {}
    for line in readings.read_text().splitlines():
        r = json.loads(line)
        if not r["point"].startswith("_"):
            got.setdefault((r["device"], r["point"]), []).append(r["value"])
    points = [p.name for p in load_profile_file(profile).points]
    for device_id, unit in (("meter-a", 1), ("clone-b", 2)):
        for name in points:
            values = got.get((device_id, name))
            assert values, f"{device_id}.{name} never arrived"
            assert set(values) <= served[(unit, name)], (device_id, name, values)
    floats = [n for n in points if n not in ("serial", "state")]
    assert all(got[("clone-c", n)][0] not in served[(3, n)] for n in floats)  # no override
    assert got[("clone-c", "serial")] and set(got[("clone-c", "serial")]) <= served[(3, "serial")]


def test_check__a_device_naming_a_profile_in_an_unreadable_file_points_at_that_file(tmp_path):
    """A profile file that gives no name at all (two YAML documents, not a mapping): a device
    naming its profile is not sent hunting through the list of known names, it is told the
    profile may be in that file (a new user's case: the follow-on error came first and misled)."""
    bad = profile_file(
        tmp_path / "profiles", "bad.yaml", BASE.replace("acme_x", "bad") + "points: []\n---\n"
    )
    found = problems(gateway(tmp_path, device("bad")))
    assert any(p.startswith(f"{bad}:") and "second YAML document" in p for p in found), found
    [follow_on] = [p for p in found if "unknown device profile 'bad'" in p]
    assert f"unless it is in {bad}, which could not be read" in follow_on
    assert "known:" not in follow_on


# --------------------------------------------------------------------------- key points


def test_profile_file__key_marks_the_points_a_technician_reads_first(tmp_path):
    """``key: true`` (docs/profile-format.md §0.2) marks the points the status page shows first;
    a wrong value is refused at its line; every shipped meter marks voltage, current, total
    power, frequency and import energy, the water and air sensors their level and PM2.5."""
    text = (
        BASE
        + "readable_ranges: {holding: [[0, 2]]}\n"
        + "defaults: {table: holding, data_type: uint16}\npoints:\n"
        + "  - {name: a, address: 0}\n  - {name: b, address: 1, key: true}\n"
    )
    got = load_profile_file(profile_file(tmp_path, "k.yaml", text))
    assert [(p.name, p.key) for p in got.points] == [("a", False), ("b", True)]
    with pytest.raises(ConfigError, match="key"):
        load_profile_file(profile_file(tmp_path, "bad.yaml", text.replace("key: true", "key: 7")))
    shipped = shipped_profiles()
    names = {n: {q.name for q in p.points} for n, p in shipped.items()}
    meters = [p for n, p in shipped.items() if {"frequency", "voltage_l1"} <= names[n]]
    assert len(meters) >= 10
    for meter in meters:
        keys = {p.name for p in meter.points if p.key}
        assert {"voltage_l1", "current_l3", "total_power", "frequency"} <= keys, meter.name
    single = {p.name for p in shipped["eastron_sdm120"].points if p.key}
    assert single == {"voltage", "current", "power", "frequency", "import_energy"}
    assert [p.name for p in shipped["dfrobot_urm14"].points if p.key] == ["distance"]
    for air in ("plantower_pms5003", "novafitness_sds011"):
        assert [p.name for p in shipped[air].points if p.key] == ["pm2_5"]


def test_sim_profile_file__reads_a_file_as_profile_check_does(tmp_path):
    """`edge sim --profile-file` takes what `edge profile check` takes: a file extending a broken
    one beside it is refused at the base's own line (it said 'no such profile'), and a shipped
    or library file serves as the shipped profile it is (it was refused for its name)."""
    base = profile_file(
        tmp_path,
        "base.yaml",
        BASE.replace("acme_x", "base") + "points:\n  - {name: v, address: 0, data_type: flaot32}\n",
    )
    child = profile_file(tmp_path, "child.yaml", "name: child\nextends: base\npoints: []\n")
    res = subprocess.run(
        [sys.executable, "-m", "edge", "sim", "--profile-file", str(child), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and f"{base}:6:" in res.stderr and "flaot32" in res.stderr
    assert "no such profile" not in res.stderr and "Traceback" not in res.stderr
    out = tmp_path / "sim.out"
    proc = _start(
        "sim", "--profile-file", str(ROOT / "devices" / "senseair_k30.yaml"), "--port", "0",
        cwd=ROOT, out=out,
    )  # fmt: skip
    try:
        assert "senseair_k30" in _first_line(proc, out)
    finally:
        _stop(proc)
