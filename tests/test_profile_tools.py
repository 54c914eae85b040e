"""The technician's profile tools: edge profile import / check, edge probe --profile, edge scan
--profiles. Maps are written for the tests (tests/cases/profile_import/), never copied; every
device is a simulator over loopback TCP.

The importers are checked against the peers' own decoding, written here from their documents:
Home Assistant swaps the bytes of each register (``swap: byte``), then reverses the registers
(``swap: word``), then unpacks big-endian (homeassistant/components/modbus, ``_swap_registers``);
Telegraf names orders by where the bytes land (plugins/inputs/modbus/README.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import struct
import sys
from pathlib import Path

import pytest

from devices.profile import Kind, RegisterType
from edge.cli import main
from edge.fieldbus.modbus_tcp import ModbusTcpLink
from edge.ops.probe import value_hints
from edge.ops.profile_import import ImportFailure, import_map
from edge.profiles import load_profile_file, with_overrides
from protocols.modbus import ByteOrder, DataType
from simulators import ProfileSimUnit, serve_modbus_tcp, sim_unit

CASES = Path(__file__).resolve().parent / "cases" / "profile_import"
HA = CASES / "ha_cabinet.yaml"
TG_REGISTER = CASES / "telegraf_register.conf"
TG_REQUEST = CASES / "telegraf_request.conf"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def imported(path: Path, **kw):
    return import_map(path, path.read_text(), **kw)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of ``text`` in ``path`` (the tests name items by their line)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --------------------------------------------------------------------------- peers' decoding

_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "float32": "f", "float64": "d"}  # fmt: skip


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def ha_device_registers(raw: float | int, data_type: str, swap: str | None) -> list[int]:
    """The registers a device sends for which Home Assistant, configured with ``data_type`` and
    ``swap``, reads ``raw``: HA byte-swaps each register (byte, word_byte), reverses them (word,
    word_byte), then unpacks big-endian; both steps undo themselves, so the device's registers
    are the same steps applied to the big-endian packing."""
    regs = _words(struct.pack(">" + _STRUCT[data_type], raw))
    if swap in ("byte", "word_byte"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if swap in ("word", "word_byte"):
        regs.reverse()
    return regs


def telegraf_device_registers(raw: float | int, fmt: str, order: str) -> list[int]:
    """The registers a device sends that Telegraf reads as ``raw`` in byte order ``order``
    (README: ABCD big-endian, DCBA little-endian, BADC bytes swapped, CDAB words swapped; the
    16-bit AB / BA and 64-bit ABCDEFGH / HGFEDCBA / BADCFEHG / GHEFCDAB spell the same)."""
    data = struct.pack(">" + fmt, raw)
    order = {"AB": "ABCD", "BA": "DCBA", "ABCDEFGH": "ABCD", "HGFEDCBA": "DCBA",
             "BADCFEHG": "BADC", "GHEFCDAB": "CDAB", "MSW-BE": "ABCD", "LSW-LE": "DCBA",
             "MSW-LE": "BADC", "LSW-BE": "CDAB"}.get(order, order)  # fmt: skip
    if order == "DCBA":
        data = data[::-1]
    elif order == "BADC":
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    elif order == "CDAB":
        data = b"".join(data[i : i + 2] for i in reversed(range(0, len(data), 2)))
    return _words(data)


RAW = {"int16": -1234, "uint16": 51234, "int32": -123456789, "uint32": 3123456789,
       "int64": -1234567890123, "uint64": 12345678901234567, "float32": 230.25,
       "float64": 50.015625}  # fmt: skip


@pytest.mark.parametrize("swap", [None, "byte", "word", "word_byte"])
@pytest.mark.parametrize("data_type", sorted(RAW))
def test_profile_import__every_ha_type_and_swap_reads_what_home_assistant_reads(
    tmp_path, data_type, swap
):
    one_register = data_type.endswith("16")
    text = (
        "modbus:\n  - name: hub\n    type: tcp\n    host: 192.0.2.1\n    port: 502\n"
        "    sensors:\n      - {name: x, slave: 1, address: 10, input_type: input, "
        f"data_type: {data_type}, scale: 0.5, offset: -3"
        + (f", swap: {swap}" if swap else "")
        + "}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    if one_register and swap in ("word", "word_byte"):  # HA refuses it too
        with pytest.raises(ImportFailure, match="one-register"):
            import_map(path, text)
        return
    (point,) = import_map(path, text).profile.points
    raw = RAW[data_type]
    regs = ha_device_registers(raw, data_type, swap)
    assert point.decode(regs) == pytest.approx(raw * 0.5 - 3, rel=1e-12)


TG_ORDERS = {1: ["AB", "BA"], 2: ["ABCD", "CDAB", "BADC", "DCBA"],
             4: ["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]}  # fmt: skip
TG_TYPES = [("INT16", "h", 1), ("UINT16", "H", 1), ("INT32", "i", 2), ("UINT32", "I", 2),
            ("INT64", "q", 4), ("UINT64", "Q", 4), ("FLOAT32-IEEE", "f", 2),
            ("FLOAT64-IEEE", "d", 4), ("FIXED", "h", 1), ("FIXED", "i", 2), ("UFIXED", "I", 2),
            ("FLOAT32", "H", 1)]  # fmt: skip


@pytest.mark.parametrize(("data_type", "fmt", "n"), TG_TYPES, ids=lambda v: str(v))
def test_profile_import__every_telegraf_register_type_and_order_reads_what_telegraf_reads(
    tmp_path, data_type, fmt, n
):
    for order in TG_ORDERS[n]:
        addresses = ", ".join(str(100 + i) for i in range(n))
        text = (
            '[[inputs.modbus]]\n  name = "d"\n  slave_id = 1\n  controller = "tcp://h:502"\n'
            f'  holding_registers = [{{ name = "x", byte_order = "{order}", data_type = '
            f'"{data_type}", scale = 0.1, address = [{addresses}] }}]\n'
        )
        path = tmp_path / "t.conf"
        (point,) = import_map(path, text).profile.points
        raw = {"h": -1234, "H": 51234, "i": -123456789, "I": 3123456789, "q": -1234567890123,
               "Q": 12345678901234567, "f": 230.25, "d": 50.015625}[fmt]  # fmt: skip
        regs = telegraf_device_registers(raw, fmt, order)
        assert point.register_type is RegisterType.HOLDING and point.address == 100
        assert point.decode(regs) == pytest.approx(raw * 0.1, rel=1e-12), (data_type, order)


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA", "MSW-BE", "MSW-LE",
                                   "LSW-BE", "LSW-LE"])  # fmt: skip
def test_profile_import__telegraf_request_orders_and_types_read_what_telegraf_reads(
    tmp_path, order
):
    text = (
        '[[inputs.modbus]]\n  name = "gw"\n  controller = "tcp://h:502"\n'
        '  configuration_type = "request"\n  [[inputs.modbus.request]]\n    slave_id = 4\n'
        f'    byte_order = "{order}"\n    register = "input"\n    fields = [\n'
        '      { address = 0, name = "f32", type = "FLOAT32" },\n'
        '      { address = 2, name = "i64", type = "INT64", scale = 0.01 },\n'
        '      { address = 6, name = "u16", type = "UINT16" },\n'
        '      { address = 7, name = "gap", type = "UINT16", omit = true },\n'
        '      { address = 8, name = "u32", type = "UINT32" },\n    ]\n'
    )
    prof = import_map(tmp_path / "r.conf", text).profile
    assert prof.point_names == ("f32", "i64", "u16", "u32")  # the omitted gap filler is no point
    cases = [("f32", "f", 50.0, 1), ("i64", "q", -98765432101, 0.01), ("u16", "H", 0xA1B2, 1),
             ("u32", "I", 0x11223344, 1)]  # fmt: skip
    for name, fmt, raw, scale in cases:
        regs = telegraf_device_registers(raw, fmt, order)
        assert prof.point(name).decode(regs) == pytest.approx(raw * scale), (name, order)


# --------------------------------------------------------------------------- import: files


def test_profile_import__home_assistant_map_converts_points_and_lists_each_left_out_item():
    r = imported(HA)
    p = {pt.name: pt for pt in r.profile.points}
    assert list(p) == [
        "l1_voltage", "l2_voltage", "l3_voltage", "l1_current", "total_power", "frequency",
        "import_energy", "cabinet_temperature", "door_open", "contactor",
    ]  # fmt: skip
    v = p["l1_voltage"]
    assert (v.register_type, v.address, v.dtype, v.byte_order, v.unit) == (
        RegisterType.INPUT, 0, DataType.FLOAT32, ByteOrder.CDAB, "V"
    )  # fmt: skip
    assert p["import_energy"].kind is Kind.COUNTER and p["import_energy"].unit == "kWh"
    t = p["cabinet_temperature"]
    assert (t.register_type, t.address, t.dtype, t.scale, t.unit) == (
        RegisterType.HOLDING, 0x100, DataType.INT16, 0.1, "°C"
    )  # fmt: skip
    assert p["door_open"].register_type is RegisterType.DISCRETE
    assert p["contactor"].register_type is RegisterType.COIL and p["contactor"].writable
    left = {s.where.rsplit(":", 2)[-2]: s for s in r.skipped}
    assert set(left) == {
        str(line_of(HA, "!secret")), str(line_of(HA, "delay:")), str(line_of(HA, "timeout:")),
        str(line_of(HA, "nan_value")), str(line_of(HA, "float16")),
        str(line_of(HA, "- name: Cabinet fan controller")),
    }  # fmt: skip
    by_what = {s.what: s.why for s in r.skipped}
    assert "secrets.yaml" in by_what["host: !secret cabinet_7_host"]
    assert any("nan_value" in w for w in by_what)
    assert any("half-precision" in why for why in by_what.values())
    assert all(s.where.startswith(f"{HA}:") for s in r.skipped)
    # The !include tags outside the modbus section are not the import's business.
    assert not any("!include" in s.what for s in r.skipped)


def test_profile_import__telegraf_register_style_converts_points_and_lists_each_left_out_item():
    r = imported(TG_REGISTER)
    p = {pt.name: pt for pt in r.profile.points}
    assert set(p) == {
        "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "frequency", "import_kwh",
        "water_temp", "run_hours", "pump_run", "float_switch",
    }  # fmt: skip
    assert p["frequency"].byte_order is ByteOrder.CDAB and p["frequency"].address == 70
    assert (p["water_temp"].dtype, p["water_temp"].scale) == (DataType.INT16, 0.1)
    assert (p["run_hours"].dtype, p["run_hours"].scale) == (DataType.UINT32, 0.01)
    assert p["float_switch"].register_type is RegisterType.DISCRETE
    assert r.profile.default_line.parity == "E"  # the plugin's serial setting
    left = {s.what: (s.where, s.why) for s in r.skipped}
    assert (
        left['input_registers "phase_angle"'][0]
        == f"{TG_REGISTER}:{line_of(TG_REGISTER, 'phase_angle')}:7"
    )
    assert "not consecutive" in left['input_registers "phase_angle"'][1]
    assert "signed byte" in left['holding_registers "alarm_code"'][1]
    assert "unit: 3" in r.text  # the gateway config snippet names the plugin's slave


def test_profile_import__telegraf_request_style_with_two_units_needs_one_chosen(capsys, tmp_path):
    code, out, err = run(["profile", "import", str(TG_REQUEST)], capsys)
    assert code == 2 and out == ""
    assert "2 devices" in err and "--unit" in err and "unit 1: 10 entries" in err, err
    code, out, err = run(["profile", "import", str(TG_REQUEST), "--unit", "1"], capsys)
    assert code == 0, err
    assert "name: telegraf_request" in out
    assert f"{TG_REQUEST}:{line_of(TG_REQUEST, 'thd')}:" in err and "half-precision" in err
    code, out, err = run(["profile", "import", str(TG_REQUEST), "--unit", "2"], capsys)
    assert code == 0 and "level_mm" in out and "voltage_l1" not in out


@pytest.mark.parametrize(("source", "unit"), [(HA, None), (TG_REGISTER, None), (TG_REQUEST, 1)])
def test_profile_import__the_written_file_loads_as_the_same_profile(capsys, tmp_path, source, unit):
    out = tmp_path / "profiles" / "site_meter.yaml"
    out.parent.mkdir()
    argv = ["profile", "import", str(source), "-o", str(out)] + (
        ["--unit", str(unit)] if unit else []
    )
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert stdout == "" and "converted into profile site_meter" in err
    loaded = load_profile_file(out)
    assert loaded.name == "site_meter"
    assert loaded.points == imported(source, unit=unit, name="site_meter").profile.points
    code, _, err = run(["profile", "import", str(source), "-o", str(out)], capsys)
    assert code == 2 and "--force" in err  # never overwrites unasked


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("modbus: !include modbus.yaml\n", "!include is not followed"),
        ("modbus:\n  - name: hub\n    sensors: [\n", "c.yaml:"),
        ("sensor:\n  - platform: template\n", "no Home Assistant Modbus map"),
        ("modbus:\n  - name: h\n    type: tcp\n    host: h\n    port: 502\n    sensors:\n"
         "      - {name: x, address: 1, data_type: float16}\n", "nothing could be converted"),
    ],
)  # fmt: skip
def test_profile_import__unusable_ha_files_exit_2_in_our_words(capsys, tmp_path, text, says):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, out, err = run(["profile", "import", str(path)], capsys)
    assert code == 2 and out == ""
    assert says in err and "Traceback" not in err, err


def test_profile_import__ha_variants_one_hub_virtual_counts_old_types_and_vietnamese_names(
    tmp_path,
):
    """One hub given as a mapping, entries without a unit, HA's older spellings (float with
    count 2, custom >i), virtual_count, and names written in Vietnamese."""
    path = tmp_path / "pump.yaml"
    path.write_text(
        "modbus:\n  name: tram_bom\n  type: serial\n  port: /dev/ttyUSB0\n  baudrate: 4800\n"
        "  bytesize: 8\n  method: rtu\n  parity: N\n  stopbits: 2\n  sensors:\n"
        "    - {name: Điện áp pha A, address: 0, input_type: input, data_type: float, count: 2,"
        " unit_of_measurement: V}\n"
        "    - {name: Counter, address: 10, data_type: custom, structure: '>i', count: 2}\n"
        "    - {name: Mực nước, address: 20, data_type: uint16, virtual_count: 2, "
        "unit_of_measurement: mm}\n"
    )
    r = import_map(path, path.read_text(), unit=7)  # entries name no unit: any unit's
    assert r.profile.point_names == (
        "dien_ap_pha_a", "counter", "muc_nuoc", "muc_nuoc_1", "muc_nuoc_2"
    )  # fmt: skip
    v = r.profile.point("dien_ap_pha_a")
    assert (v.dtype, v.description) == (DataType.FLOAT32, "Điện áp pha A")
    assert r.profile.point("counter").dtype is DataType.INT32
    assert [r.profile.point(f"muc_nuoc{s}").address for s in ("", "_1", "_2")] == [20, 21, 22]
    line = r.profile.default_line
    assert (line.baudrate, line.parity, line.stopbits) == (4800, "N", 2)
    assert "type: modbus_rtu, port: /dev/ttyUSB0, unit: 7" in r.text


def test_profile_import__ha_sensors_behind_an_include_are_reported_at_their_line(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modbus:\n  - name: hub\n    type: tcp\n    host: h\n    port: 502\n"
                    "    sensors: !include sensors.yaml\n")  # fmt: skip
    code, out, err = run(["profile", "import", str(path)], capsys)
    assert code == 2 and out == ""
    assert f"{path}:6:14: sensors: !include sensors.yaml" in err and "on its own" in err, err


def test_profile_import__telegraf_metric_style_and_two_plugins_chosen_by_hub(capsys, tmp_path):
    path = tmp_path / "t.conf"
    path.write_text(
        '[[inputs.modbus]]\n  name = "north"\n  controller = "tcp://192.0.2.1:502"\n'
        '  configuration_type = "metric"\n  [[inputs.modbus.metric]]\n    slave_id = 1\n'
        '    byte_order = "CDAB"\n    fields = [\n'
        '      { register = "coil", address = 0, name = "door_open" },\n'
        '      { register = "input", address = 0, name = "voltage", type = "FLOAT32" },\n'
        '      { address = 8, name = "firmware", type = "STRING", length = 4 },\n'
        '      { address = 12, name = "mode", type = "UINT8H" },\n    ]\n'
        '[[inputs.modbus]]\n  name = "south"\n  slave_id = 1\n'
        '  controller = "tcp://192.0.2.2:502"\n'
        '  holding_registers = [{ name = "level", byte_order = "AB", data_type = "UINT16", '
        "scale = 1.0, address = [0] }]\n"
    )
    code, _, err = run(["profile", "import", str(path), "--unit", "1"], capsys)
    assert code == 2 and "--hub NAME" in err and 'plugin "north" unit 1' in err, err
    r = import_map(path, path.read_text(), unit=1, hub="north")
    p = {pt.name: pt for pt in r.profile.points}
    assert p["door_open"].register_type is RegisterType.COIL
    assert (p["voltage"].register_type, p["voltage"].byte_order) == (
        RegisterType.INPUT, ByteOrder.CDAB
    )  # fmt: skip
    assert (p["firmware"].register_type, p["firmware"].length) == (RegisterType.HOLDING, 4)
    assert p["mode"].bits == (8, 15)
    assert any("no units" in n for n in r.notes)
    assert import_map(path, path.read_text(), hub="south").profile.point_names == ("level",)


def test_profile_import__broken_toml_exits_2_at_its_line(capsys, tmp_path):
    path = tmp_path / "t.conf"
    path.write_text('[[inputs.modbus]]\n  name = "x"\n  slave_id = = 1\n')
    code, _, err = run(["profile", "import", str(path)], capsys)
    assert code == 2 and err.startswith(f"{path}:3:") and "not TOML" in err, err


# --------------------------------------------------------------------------- profile check


def test_profile_check__a_valid_file_prints_its_plan_and_line_time(capsys, tmp_path):
    out = tmp_path / "meter.yaml"
    run(["profile", "import", str(TG_REGISTER), "-o", str(out)], capsys)
    code, text, err = run(["profile", "check", str(out)], capsys)
    assert code == 0, err
    assert "valid" in text and "9600 8E1 (the profile's factory line)" in text
    assert "FC04 @0x0000 x8" in text and "ms of line time per poll" in text
    factory_ms = float(text.split("a poll takes ")[1].split(" ms")[0])
    code, text, err = run(
        ["profile", "check", str(out), "--baud", "19200", "--parity", "N"], capsys
    )
    assert code == 0 and "19200 8N1 (as asked)" in text
    assert float(text.split("a poll takes ")[1].split(" ms")[0]) < factory_ms
    code, text, _ = run(["profile", "check", str(Path("devices/eastron_sdm630.yaml"))], capsys)
    assert code == 0 and "2400" not in text.splitlines()[1] and "9600 8N1" in text


def test_profile_check__a_file_extending_one_beside_it_is_read_with_its_folder(capsys, tmp_path):
    base = tmp_path / "acme_meter.yaml"
    run(["profile", "import", str(HA), "-o", str(base)], capsys)
    clone = tmp_path / "acme_clone.yaml"
    clone.write_text(
        "name: acme_clone\nextends: acme_meter\nmodel: clone\n"
        "max_registers_per_request: 4\nremove_points: [contactor]\npoints: []\n"
    )
    code, out, err = run(["profile", "check", str(clone)], capsys)
    assert code == 0, err
    assert "profile acme_clone" in out and "9 points" in out and "at most 4 registers" in out
    clone.write_text(clone.read_text().replace("[contactor]", "[no_such_point]"))
    code, out, err = run(["profile", "check", str(clone)], capsys)
    assert code == 2 and err.startswith(f"{clone}:5:"), err


def test_profile_check__a_broken_base_or_a_circle_is_shown_at_its_own_lines(capsys, tmp_path):
    """The file checked is fine; what it extends is not (a circle, a base with a typo). The
    cause is shown at its own file and line, not 'there is no such profile' (a new user's case;
    edge check said it right, edge profile check did not)."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: a\nextends: b\npoints: []\n")
    b.write_text("name: b\nextends: a\npoints: []\n")
    code, out, err = run(["profile", "check", str(a)], capsys)
    assert code == 2 and out == "" and "makes a circle" in err, err
    assert "no such profile" not in err
    b.write_text(
        "name: b\nvendor: Acme\nmodel: B\nsource: written for the test\npoints:\n"
        "  - {name: v, address: 0, data_type: flaot32}\n"
    )
    code, out, err = run(["profile", "check", str(a)], capsys)
    assert code == 2 and f"{b}:6:" in err and "flaot32" in err, err
    assert "no such profile" not in err


BROKEN = {
    "unknown_key": ("  - {name: a, address: 0, data_type: uint16, colour: red}\n", "colour"),
    "overlap": ("  - {name: a, address: 0, data_type: float32}\n"
                "  - {name: b, address: 1, data_type: uint16}\n", "overlap"),
    "float_of_3_registers": ("  - {name: a, address: 0, data_type: float32, length: 3}\n",
                             "length"),
    "bit_40_of_16": ("  - {name: a, address: 0, table: holding, data_type: bool, bits: 40}\n",
                     "bits"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_profile_check__a_broken_file_exits_2_at_file_line_col(capsys, tmp_path, case):
    points, says = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(
        f"name: {case}\nvendor: Acme\nmodel: X1\nsource: written for the test\npoints:\n{points}"
    )
    code, out, err = run(["profile", "check", str(path)], capsys)
    assert code == 2 and out == ""
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:"), err
    line = int(first.split(":")[1])
    assert 6 <= line <= 7 and says in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- probe


def test_value_hints__absurd_values_named_with_the_order_or_scale_that_reads_right():
    prof = imported(HA).profile
    volts, hz, temp = (prof.point(n) for n in ("l1_voltage", "frequency", "cabinet_temperature"))
    good = volts.encode(230.2)
    assert value_hints(volts, good, volts.decode(good)) == []
    abcd = with_overrides(prof, byte_order="ABCD")
    wrong_v, wrong_hz = abcd.point("l1_voltage"), abcd.point("frequency")
    hints = value_hints(wrong_v, good, wrong_v.decode(good))  # 230.2 V sent CDAB, read ABCD
    assert "outside" in hints[0] and "as CDAB: 230.2 V" in hints[1]
    regs = hz.encode(50.0)
    hints = value_hints(wrong_hz, regs, wrong_hz.decode(regs))
    assert "absurdly small" in hints[0] and "as CDAB: 50 Hz" in hints[1]
    assert "not near 50 or 60 Hz" in value_hints(hz, hz.encode(12.0), 12.0)[0]
    assert "NaN" in value_hints(volts, [0x7FC0, 0], math.nan)[0]
    assert "absurdly large" in value_hints(volts, volts.encode(1e37), 1e37)[0]
    assert value_hints(volts, volts.encode(0.023), 0.023)[0].startswith("0.023 V is outside")
    plain = dataclasses.replace(temp, scale=1.0)  # tenths read without scale 0.1
    hints = value_hints(plain, [305], plain.decode([305]))
    assert "305 °C" in hints[0] and "scale 0.1 would read 30.5 °C" in hints[1]


def _realistic(profile):
    """What a healthy cabinet reads: mains 230 V, 50 Hz, 31.5 °C."""
    values = {"l1_voltage": 230.2, "l2_voltage": 229.8, "l3_voltage": 231.0, "l1_current": 4.5,
              "total_power": 3100.0, "frequency": 50.0, "import_energy": 1234.5,
              "cabinet_temperature": 31.5, "door_open": False, "contactor": True}  # fmt: skip
    return lambda: values


async def edge(*argv: str) -> tuple[int, str, str]:
    """``python -m edge ...`` in a process of its own (the simulator runs in this one)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _probe(capsys, port: int, argv: list[str]) -> tuple[int, str, str]:
    return await edge("probe", "--tcp", f"127.0.0.1:{port}", "--unit", "1", *argv)


async def test_probe_profile__reads_every_point_one_line_each_with_units(capsys, tmp_path):
    path = tmp_path / "cab7.yaml"
    path.write_text(imported(HA).text)
    prof = load_profile_file(path)
    server = await serve_modbus_tcp([ProfileSimUnit(prof, 1, _realistic(prof))])
    try:
        code, out, err = await _probe(capsys, server.port, ["--profile", str(path)])
    finally:
        await server.close()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 + len(prof.points)  # a summary, then one line per point
    assert "230.2 V" in out and "50 Hz" in out and "31.5 °C" in out and "1234.5 kWh" in out
    assert "looks wrong" not in out


async def test_probe_profile__a_wrong_byte_order_is_hinted_with_the_right_one(capsys, tmp_path):
    """The clone sends its floats low word first; probed with the plain SDM630 order (ABCD)."""
    path = tmp_path / "cab7.yaml"
    path.write_text(imported(HA).text)
    prof = load_profile_file(path)
    server = await serve_modbus_tcp([ProfileSimUnit(prof, 1, _realistic(prof))])
    try:
        code, out, err = await _probe(
            capsys, server.port, ["--profile", str(path), "--byte-order", "ABCD"]
        )
    finally:
        await server.close()
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    assert "as CDAB: 230.2 V (byte_order: CDAB)" in rows["l1_voltage"]
    assert "as CDAB: 50 Hz" in rows["frequency"] and "absurdly small" in rows["frequency"]
    assert "looks wrong" not in rows["cabinet_temperature"]  # one register: nothing to swap
    assert "as CDAB: 1234.5 kWh" in rows["import_energy"]  # 8.6e9 kWh: no meter counts so far
    # 3100 W read ABCD is -2.004 W, a plausible value: hints catch absurd values, not all.
    assert "looks wrong" not in rows["total_power"]
    assert "6 of 10 values look wrong" in out and "6 of them read right as CDAB" in out


async def test_probe_profile__a_failed_request_names_its_registers(capsys, tmp_path):
    served = tmp_path / "served.yaml"
    served.write_text(imported(HA).text)
    asked = tmp_path / "asked.yaml"  # the map has a register the device does not serve
    asked.write_text(
        served.read_text().replace("name: cab", "name: asked", 1)
        + "  - {name: spare, address: 512, table: holding, data_type: uint16}\n"
    )
    prof = load_profile_file(served)
    server = await serve_modbus_tcp([ProfileSimUnit(prof, 1, _realistic(prof))])
    try:
        code, out, err = await _probe(capsys, server.port, ["--profile", str(asked)])
    finally:
        await server.close()
    assert code == 1, err
    assert "failed: FC03 holding registers 512 (spare): exception 0x02" in out
    assert "230.2 V" in out  # its neighbours were read


async def test_probe_profile__a_map_one_register_off_everywhere_gets_the_address_base_hint(
    capsys, tmp_path
):
    """Exception 02 at every register the profile names: the likeliest cause is a 4xxxx map
    written as addresses (or 1-based); the probe says what to set (a new user's case)."""
    served = tmp_path / "served.yaml"
    served.write_text(imported(HA).text)
    prof = load_profile_file(served)
    asked = tmp_path / "asked.yaml"
    asked.write_text(
        "name: asked40001\nvendor: ACME\nmodel: X\nsource: a copied 4xxxx table\npoints:\n"
        "  - {name: a, address: 40001, table: holding, data_type: float32}\n"
        "  - {name: b, address: 40003, table: holding, data_type: float32}\n"
    )
    server = await serve_modbus_tcp([ProfileSimUnit(prof, 1, _realistic(prof))])
    try:
        code, out, err = await _probe(capsys, server.port, ["--profile", str(asked)])
    finally:
        await server.close()
    assert code == 1, err
    assert "no register the profile names is served" in out and "address_base" in out
    # A profile the device serves in part gets no such hint (test above).


def test_probe_profile__fc_or_address_with_a_profile_is_refused(capsys):
    code, _out, err = run(["probe", "--tcp", "127.0.0.1:1", "--unit", "1", "--profile",
                          "eastron_sdm630", "--address", "5"], capsys)  # fmt: skip
    assert code == 2 and "--address: the profile says what to read" in err


# --------------------------------------------------------------------------- scan


async def test_scan__ranks_a_user_profile_given_with_profiles(capsys, tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "lake_level.yaml").write_text(
        "name: lake_level\nvendor: Acme\nmodel: LV-2\nsource: written for the test\n"
        "points:\n  - {name: level, address: 0x1000, table: holding, data_type: uint16, unit: mm}\n"
        "  - {name: temp, address: 0x1001, table: holding, data_type: int16, scale: 0.1, "
        "unit: °C}\n"
    )
    prof = load_profile_file(folder / "lake_level.yaml")
    server = await serve_modbus_tcp([sim_unit(prof, 9, seed=9)])
    try:
        scan = ["scan", "--tcp", f"127.0.0.1:{server.port}", "--units", "8-10"]
        code, out, err = await edge(*scan, "--profiles", str(folder))
        _, out_without, _ = await edge(*scan)
    finally:
        await server.close()
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.strip().startswith("9 ")]
    assert row.split()[2] == "lake_level", out
    assert "1 of them yours" in err
    assert "lake_level" not in out_without  # without --profiles only shipped ones are tried


def test_scan__a_broken_user_profile_exits_2_at_its_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nvendor: A\nmodel: B\nsource: x\npoints:\n  - {name: a}\n")
    code, _, err = run(["scan", "--tcp", "127.0.0.1:1", "--profiles", str(bad)], capsys)
    assert code == 2 and err.startswith(f"{bad}:6:"), err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# --------------------------------------------------------------------------- end to end


def _ha_reference(source: Path) -> list[tuple[str, int, int, int, object]]:
    """Home Assistant's own reading of each converted entity of the cabinet map: (point, function
    code, address, count, decode(registers) -> value), from the map as HA reads it."""
    import yaml

    class Loader(yaml.SafeLoader):  # !secret / !include: HA's, not needed for the registers
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    hub = yaml.load(source.read_text(), Loader=Loader)["modbus"][0]
    out = []
    for s in hub["sensors"]:
        dt = s.get("data_type", "int16")
        if dt not in _STRUCT:
            continue
        fmt, swap = ">" + _STRUCT[dt], s.get("swap")
        scale, offset = s.get("scale", 1), s.get("offset", 0)

        def decode(regs, fmt=fmt, swap=swap, scale=scale, offset=offset):
            regs = list(regs)
            if swap in ("byte", "word_byte"):
                regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
            if swap in ("word", "word_byte"):
                regs.reverse()
            (raw,) = struct.unpack(fmt, b"".join(r.to_bytes(2, "big") for r in regs))
            return raw * scale + offset

        fc = 4 if s.get("input_type") == "input" else 3
        n = struct.calcsize(fmt) // 2
        out.append((s["name"].lower().replace(" ", "_"), fc, s["address"], n, decode))
    for b in hub["binary_sensors"]:
        fc = {"coil": 1, "discrete_input": 2}[b["input_type"]]
        out.append((b["name"].lower().replace(" ", "_"), fc, b["address"], 1, lambda r: bool(r[0])))
    for w in hub["switches"]:  # write_type coil: its state is the coil
        out.append((w["name"].lower(), 1, w["address"], 1, lambda r: bool(r[0])))
    return out


def _telegraf_reference(source: Path, unit: int) -> list[tuple[str, int, int, int, object]]:
    """Telegraf's own reading of each converted field of the request-style map."""
    import tomllib

    plugin = tomllib.loads(source.read_text())["inputs"]["modbus"][0]
    out = []
    for req in plugin["request"]:
        if req["slave_id"] != unit:
            continue
        register, order = req.get("register", "holding"), req.get("byte_order", "ABCD")
        fc = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[register]
        for f in req["fields"]:
            typ = f.get("type", "")
            if f.get("omit") or typ == "FLOAT16":
                continue
            if typ == "STRING":  # two characters a register, high byte first, to the first NUL

                def text(regs):
                    data = b"".join(r.to_bytes(2, "big") for r in regs)
                    return data.split(b"\0")[0].decode("ascii")

                out.append((f["name"], fc, f["address"], f["length"], text))
                continue
            if fc in (1, 2):
                out.append((f["name"], fc, f["address"], 1, lambda r: bool(r[0])))
                continue
            if typ == "BIT":
                out.append((f["name"], fc, f["address"], 1,
                            lambda r, b=f["bit"]: bool((r[0] >> b) & 1)))  # fmt: skip
                continue
            fmt = {"INT16": "h", "UINT16": "H", "INT32": "i", "UINT32": "I", "INT64": "q",
                   "UINT64": "Q", "FLOAT32": "f", "FLOAT64": "d"}[typ]  # fmt: skip
            scale = f.get("scale", 0.0) or 1.0

            def decode(regs, fmt=fmt, order=order, scale=scale):
                # the device's registers for ``order`` are found by trying the reference
                # encoder the other way: pack and compare is the decoding's inverse.
                data = b"".join(r.to_bytes(2, "big") for r in regs)
                if order == "DCBA":
                    data = data[::-1]
                elif order == "BADC":
                    data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
                elif order == "CDAB":
                    data = b"".join(data[i : i + 2] for i in reversed(range(0, len(data), 2)))
                (raw,) = struct.unpack(">" + fmt, data)
                return raw * scale if scale != 1.0 else raw

            out.append((f["name"], fc, f["address"], struct.calcsize(fmt) // 2, decode))
    return out


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize(("source", "unit"), [(HA, 1), (TG_REQUEST, 1)], ids=["ha", "telegraf"])
async def test_profile_import__converted_map_polled_end_to_end_reads_what_the_peer_reads(
    mosquitto, tmp_path, capsys, source, unit
):
    """A map imported from the peer's file is served by ``edge sim --profile-file`` and polled
    by the gateway (user profile folder beside its config) through Mosquitto to a consumer: every
    value equals what the simulator served, and what Home Assistant / Telegraf, configured with
    the original file, decode from the same registers."""
    from edge.agent.gateway import Gateway
    from edge.config import parse_config
    from tests.test_system import Collector, drain, stop

    folder = tmp_path / "profiles"
    folder.mkdir()
    profile_file = folder / "site_meter.yaml"
    code, _, err = run(["profile", "import", str(source), "--unit", str(unit), "-o",
                        str(profile_file)], capsys)  # fmt: skip
    assert code == 0, err
    served_log = tmp_path / "served.jsonl"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "sim", "--profile-file", str(profile_file),
        "--unit", str(unit), "--port", "0", "--served-log", str(served_log),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        first = (await asyncio.wait_for(sim.stdout.readline(), 60)).decode()
        port = int(first.split(" on 127.0.0.1:")[1].split()[0])
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"gateway: {{id: gw-import, site: test}}\n"
            f"buffer: {{path: {tmp_path / 'b.sqlite'}, commit_interval_ms: 100}}\n"
            f"mqtt: {{url: 'mqtt://127.0.0.1:{mosquitto.port}', batch_max_delay_ms: 300}}\n"
            "devices:\n  - id: site-1\n    profile: site_meter\n"
            f"    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: {unit}}}\n"
            "    poll_interval_s: 0.5\n    timeout_ms: 200\n    retries: 0\n"
        )
        loaded = parse_config(config.read_text(), str(config), tmp_path)
        points = load_profile_file(profile_file).point_names
        async with Collector(mosquitto.url) as col:
            gateway = Gateway(loaded)
            task = asyncio.create_task(gateway.run())
            await asyncio.wait_for(gateway.started.wait(), 10)
            want = len(points) * 3
            deadline = asyncio.get_running_loop().time() + 30
            while sum(r.point in points for r in col.readings) < want:
                assert asyncio.get_running_loop().time() < deadline, "too few readings"
                await asyncio.sleep(0.1)
            await drain(gateway, col)
            await stop(task)
        # What the peer reads from the device's registers, read raw here.
        link = ModbusTcpLink("127.0.0.1", port)
        try:
            peer = {}
            for name, fc, address, count, decode in (
                _ha_reference(source) if source == HA else _telegraf_reference(source, unit)
            ):
                regs = await link.read(unit, fc, address, count, timeout_s=1, retries=1)
                peer[name] = decode(regs)
        finally:
            await link.close()
    finally:
        sim.terminate()
        await sim.wait()
    import json

    served: dict[str, set] = {}
    last: dict[str, object] = {}  # what the simulator served last: the peer's read
    for line in served_log.read_text().splitlines():
        rec = json.loads(line)
        served.setdefault(rec["point"], set()).add(rec["value"])
        last[rec["point"]] = rec["value"]
    got = [r for r in col.readings if r.point in points]
    assert {r.point for r in got} == set(points)  # every point of the profile delivered
    for r in got:
        assert r.value in served[r.point], f"{r.point}={r.value!r} was never served"
    assert set(peer) == set(points)
    for name, value in peer.items():  # the peer decodes the registers as our codec does
        expect = value if isinstance(value, str | bool) else pytest.approx(value, rel=1e-12)
        assert last[name] == expect, name
