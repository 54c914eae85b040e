"""The config as a trust boundary (issue 18, cases 2-4).

* The YAML reader's bounds: aliases, nesting, size, tags, merge keys, syntax at its cause.
* Values the schema must refuse, in our words naming what it takes (every port, size, count,
  duration and choice; swept over the schema, not only the reported fields).
* Every problem of a config in one run of ``edge check``: field and cross-field together.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import typing
from pathlib import Path

import pytest
import yaml

from edge import config as cfgmod
from edge.config import Config, ConfigError, load_config, parse_config
from edge.config_yaml import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_SCALAR_CHARS, MAX_VALUES

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
gateway: {id: gw-1}
devices:
  - id: m1
    profile: eastron_sdm630
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}
"""

#: 342 bytes that PyYAML grew past 1.2 GB: 9^9 copies of "lol".
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml")
    return [(line, col, msg) for _, line, col, msg in info.value.problems]


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def peak_mb(fn: typing.Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
    except ConfigError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return peak


# --------------------------------------------------------------------------- case 2: YAML


def test_check__alias_bomb_is_refused_at_the_alias_that_passes_the_bound(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    res = edge("check", "--config-only", str(bomb))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(
        f"{bomb}:6:8: alias *e takes the config past {MAX_VALUES:,} values with its aliases "
        "written out"
    ), res.stderr
    # In this process: the refusal costs what the bound allows, not gigabytes.
    assert peak_mb(lambda: load_config(bomb, check_storage=False)) < 40


def test_config__recursive_alias_is_refused_at_the_alias():
    [(line, col, msg)] = problems("gateway: &g {id: gw, again: *g}\n")
    assert (line, col) == (1, 29)
    assert "alias *g is inside the value it names (&g at line 1, column 10)" in msg
    assert "recursive alias" in msg


@pytest.mark.parametrize(
    "text",
    [
        "gateway: {id: gw}\nx: " + "[" * 40 + "]" * 40 + "\n",  # flow
        "gateway: {id: gw}\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(40)),  # block
        "gateway: {id: gw}\nx: " + "[" * 5000 + "]" * 5000 + "\n",  # past libyaml's own 1000
    ],
    ids=["flow", "block", "deeper-than-libyaml"],
)
def test_config__nesting_past_the_bound_is_refused_where_it_passes(text):
    [(line, _col, msg)] = problems(text)
    assert line >= 2 and f"nested more than {MAX_DEPTH} levels deep" in msg


def test_config__alias_that_nests_past_the_bound_is_refused_at_the_alias():
    deep = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)
    text = f"gateway: {{id: gw}}\nx: &d {deep}\ny: [[[[[*d]]]]]\n"
    [(line, col, msg)] = problems(text)
    assert (line, col) == (3, 9) and "alias *d nests the config more than" in msg


def test_check__config_over_the_size_bound_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    device = "  - {id: d, profile: eastron_sdm630, transport: {type: uart, port: /dev/x}}\n"
    big.write_text("gateway: {id: gw}\ndevices:\n" + device * (10 * 1024 * 1024 // len(device)))
    with pytest.raises(ConfigError) as info:
        load_config(big, check_storage=False)
    [(_, line, col, msg)] = info.value.problems
    assert (line, col) == (1, 1) and f"over {MAX_CONFIG_BYTES:,} bytes" in msg
    # Refused after reading the bound and one byte more: a few MB at most, whatever the file.
    assert peak_mb(lambda: load_config(big, check_storage=False)) < 5


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!secret db_password", "!secret"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!!python/object/apply:os.system ['true']", "!!python/object/apply:os.system"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!timestamp 2024-05-01", "!!timestamp"),
        ("!!set {a, b}", "!!set"),
        ("!!omap [{a: 1}]", "!!omap"),
        ("!local x", "!local"),
    ],
)
def test_config__tags_the_config_does_not_define_are_refused_at_the_value(value, shown):
    [(line, col, msg)] = problems(f"gateway: {{id: gw}}\nbuffer:\n  path: {value}\n")
    assert (line, col) == (3, 9)
    assert msg.startswith(f"tag {shown}: this config defines no tags"), msg
    assert "!!str, !!int, !!float, !!bool and !!null" in msg


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("!!int 'abc'", "!!int 'abc' is not an integer"),
        ("!!int 12x", "!!int '12x' is not an integer"),
        ("!!float x", "!!float 'x' is not a number"),
        ("!!bool maybe", "!!bool 'maybe' is not true or false"),
        ("!!null x", "!!null 'x': a null has no value"),
        ("1" * 4097, "a value of 4,097 characters: no setting takes more than 4096"),
    ],
)
def test_config__a_value_unlike_its_tag_is_refused_at_the_value(value, expect):
    [(line, col, msg)] = problems(f"gateway: {{id: gw}}\nbuffer:\n  max_bytes: {value}\n")
    assert (line, col) == (3, 14) and msg.startswith(expect), msg


def test_config__yaml_core_tags_are_read_as_yaml_says():
    text = BASE.replace("unit: 1", 'unit: !!int "7"').replace("host: 127.0.0.1", "host: !!str h")
    t = parse_config(text).config.devices[0].transport
    assert (t.unit, t.host) == (7, "h")


MERGED = """\
gateway: {id: gw-1}
devices:
  - id: m1
    profile: eastron_sdm630
    transport: &bridge {type: modbus_tcp, host: 10.0.0.5, port: 502, unit: 1}
  - id: m2
    profile: eastron_sdm630
    transport:
      unit: 2
      <<: *bridge
"""


def test_config__merge_key_copies_a_mapping_and_the_keys_beside_it_override():
    devices = parse_config(MERGED).config.devices
    assert devices[1].transport.describe() == "10.0.0.5:502 unit 2"
    assert devices[0].transport.unit == 1  # the anchor is not changed by the override
    # A list of mappings: the first one listed wins, the keys beside it win over all.
    text = MERGED.replace("<<: *bridge", "<<: [{port: 1502}, *bridge]")
    assert parse_config(text).config.devices[1].transport.describe() == "10.0.0.5:1502 unit 2"


def test_config__merged_value_is_refused_where_it_is_written():
    # The override is refused at its own line; a merged key at the anchor, where its text is.
    [(line, _c, msg)] = problems(MERGED.replace("unit: 2", "unit: 300"))
    assert line == 9 and "devices.1.transport.unit: must be from 0 to 255 (got 300)" in msg
    text = MERGED.replace("port: 502", "port: 0")
    assert [(line, msg.split(":")[0]) for line, _c, msg in problems(text)] == [
        (5, "devices.0.transport.port"),
        (5, "devices.1.transport.port"),
    ]


def test_config__merge_of_something_else_than_a_mapping_is_refused_at_the_merge():
    found = problems(MERGED.replace("<<: *bridge", "<<: [a, b]"))
    assert (10, 11) in [(line, col) for line, col, _m in found]
    [msg] = [m for line, _c, m in found if line == 10]
    assert msg.startswith("<< merges a mapping (<<: *defaults) or a list of them")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # the quote runs to the end of the file
        ('gateway: {id: gw}\nmqtt:\n  url: "mqtt://x\n  keepalive_s: 30\n', (3, 8)),
        # ... or swallows lines up to the next quote, and YAML stumbles there
        ('gateway: {id: gw}\nmqtt:\n  url: "mqtt://x\n  keepalive_s: 30\nbuffer: {path: "b"}\n',
         (3, 8)),
        ("gateway: {id: gw}\nmqtt:\n  url: 'mqtt://x\n", (3, 8)),
    ],
)  # fmt: skip
def test_config__unclosed_quote_is_reported_where_it_opens(text, where):
    [(line, col, msg)] = problems(text)
    assert (line, col) == where and "quoted value that opens here" in msg


def test_config__unclosed_bracket_is_reported_where_it_opens():
    [(line, col, msg)] = problems("gateway: {id: gw}\ndevices: [\n  {id: a}\n")
    assert (line, col) == (2, 10) and "the [ list that opens here is never closed" in msg


def test_config__a_second_document_is_refused_at_its_start():
    [(line, _col, msg)] = problems(BASE + "---\ngateway: {id: gw-2}\n")
    assert line == 6 and "a config is one document" in msg


def test_config__control_characters_and_overlong_values_are_refused_at_the_value():
    [(line, col, msg)] = problems(BASE.replace("host: 127.0.0.1", 'host: "127.0.0.1\\0"'))
    assert (line, col) == (5, 41) and "control character" in msg
    long = "x" * (MAX_SCALAR_CHARS + 1)
    [(line, col, msg)] = problems(BASE.replace("host: 127.0.0.1", f"host: {long}"))
    assert (line, col) == (5, 41) and f"no setting takes more than {MAX_SCALAR_CHARS}" in msg


def test_config__alias_to_no_anchor_is_refused_at_the_alias():
    [(line, col, msg)] = problems(BASE.replace("host: 127.0.0.1", "host: *bridge"))
    assert (line, col) == (5, 41) and "alias *bridge names no anchor" in msg


# --------------------------------------------------------------------------- case 3: values

RTU = BASE.replace(
    "{type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}",
    "{type: modbus_rtu, port: /dev/ttyUSB0, unit: 1}",
)
PARKING = """\
gateway: {id: gw-1}
parking:
  buses:
    - id: bus
      transport: {type: tcp, host: 127.0.0.1, port: 7700}
      meters: [{id: M1, address: 1}]
"""


@pytest.mark.parametrize(
    ("text", "line", "expect"),
    [
        (BASE + "mqtt: {url: 'mqtt://broker:0'}\n", 6,
         "mqtt.url: broker url port must be from 1 to 65535"),
        (BASE.replace("port: 5020", "port: 0"), 5,
         "devices.0.transport.port: must be from 1 to 65535 (got 0)"),
        (PARKING.replace("port: 7700", "port: 0"), 5,
         "parking.buses.0.transport.port: must be from 1 to 65535 (got 0)"),
        (BASE + "status: {listen: '127.0.0.1:70000'}\n", 6,
         "status.listen: port must be from 1 to 65535 (got '70000')"),
        (BASE + "status: {listen: '127.0.0.1:0'}\n", 6,
         "status.listen: port must be from 1 to 65535 (got '0')"),
        (BASE + "status: {listen: 8080}\n", 6, "status.listen: must be text (got 8080"),
        (BASE + "status: {listen: 'localhost'}\n", 6,
         "status.listen: must be HOST:PORT, e.g. 127.0.0.1:8080"),
        (BASE + "buffer: {max_bytes: 1000000000000000000000000000000}\n", 6,
         "buffer.max_bytes: must be from 1048576 to 1099511627776 (got a number of 31 digits)"),
        (BASE + "    poll_interval_s: .nan\n", 6,
         "devices.0.poll_interval_s: must be a finite number (got .nan"),
        (BASE + "    processing: [{deadband: .inf}]\n", 6,
         "devices.0.processing.0.deadband: must be a finite number (got .inf"),
        (BASE + "mqtt: {keepalive_s: -.inf}\n", 6,
         "mqtt.keepalive_s: must be a whole number from 5 to 3600 (got -.inf)"),
        (BASE + "mqtt: {publish_timeout_s: -.inf}\n", 6,
         "mqtt.publish_timeout_s: must be a finite number (got -.inf"),
        (RTU.replace("unit: 1", 'unit: 1, stopbits: "1"'), 5,
         "devices.0.transport.stopbits: must be 1 or 2 (got the text '1': write it without "
         "quotes)"),
        (RTU.replace("unit: 1", "unit: 1, parity: X"), 5,
         "devices.0.transport.parity: must be one of N, E or O (got the text 'X')"),
        (BASE.replace("type: modbus_tcp, ", ""), 5,
         "devices.0.transport: needs a type: one of modbus_tcp, modbus_rtu or uart"),
        (BASE.replace("type: modbus_tcp", "type: modbus_ascii"), 5,
         "devices.0.transport: unknown type 'modbus_ascii': use modbus_tcp, modbus_rtu or uart"),
        (PARKING.replace("type: tcp, ", ""), 5,
         "parking.buses.0.transport: needs a type: one of tcp or rs485"),
        (BASE + "buffer: {synchronous: off}\n", 6,
         "buffer.synchronous: must be normal or full (got false: YAML reads yes, no, on and off"),
        (BASE + "commands: {meters: [tarif]}\n", 6,
         "commands.meters.0: must be one of tariff, time_sync or enable (got the text 'tarif')"),
        (BASE.replace("unit: 1", "unit: '1'"), 5,
         "devices.0.transport.unit: must be a whole number from 0 to 255 (got the text '1': "
         "write it without quotes)"),
        (BASE.replace("id: m1", "id: 12"), 3,
         "devices.0.id: must be text (got 12: put it in quotes if it is meant as text)"),
        (BASE.replace("host: 127.0.0.1", "host: " + "h" * 254), 5,
         "devices.0.transport.host: must be at most 253 characters (got 254)"),
        (BASE.replace("type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1",
                      "type: uart, port: /dev/ttyUSB1, unit: 3"), 5,
         "devices.0.transport.unit: a serial sensor has no address"),
    ],
)  # fmt: skip
def test_config__value_out_of_its_range_is_refused_in_our_words(text, line, expect):
    found = problems(text)
    assert any(ln == line and expect in msg for ln, _c, msg in found), found


def _fields() -> typing.Iterator[tuple[str, typing.Any, typing.Any]]:
    """(model.field, field info, annotation) of every field of every model of the config."""
    seen: set[type] = set()
    todo: list[type] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            yield f"{model.__name__}.{name}", info, info.annotation
            todo += cfgmod._models_in(info.annotation)


def _scalar_types(annotation: typing.Any) -> set[typing.Any]:
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    if typing.get_origin(annotation) is typing.Literal:
        return {typing.Literal}
    return {t for a in args for t in _scalar_types(a)}


#: Numbers checked by a validator of their own instead of a range, and why.
OWN_CHECK = {
    "ModbusRtuTransport.baudrate": "one of the standard rates",
    "UartTransport.baudrate": "one of the standard rates",
    "MeterLinkRs485.baudrate": "one of the standard rates",
    "UartTransport.unit": "0: a serial sensor has no address",
    "ProcessingRule.deadband": "in the reading's own unit: any finite value of 0 or more",
}


def test_config__every_number_setting_has_a_range():
    """Every port, size, count and duration: a lower and an upper bound (finite, too: NaN and
    infinities are refused by the model config), so nothing `edge run` cannot use passes."""
    assert Config.model_config.get("allow_inf_nan") is False
    unbounded = []
    for name, info, annotation in _fields():
        if not _scalar_types(annotation) & {int, float} or name in OWN_CHECK:
            continue
        bounds = {k for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        if not ({"ge", "gt"} & bounds and {"le", "lt"} & bounds):
            unbounded.append(name)
    assert unbounded == []
    for name in OWN_CHECK:
        assert name in {n for n, _i, _a in _fields()}, f"{name}: no such field (any more)"


#: Where each model sits in a config that is valid as it is, to put a wrong value in.
PLACES: dict[str, tuple[str, tuple[typing.Any, ...]]] = {
    "Config": (BASE, ()),
    "BufferConfig": (BASE, ("buffer",)),
    "MqttConfig": (BASE, ("mqtt",)),
    "TimeConfig": (BASE, ("time",)),
    "CommandsConfig": (BASE, ("commands",)),
    "StatusConfig": (BASE, ("status",)),
    "DeviceConfig": (BASE, ("devices", 0)),
    "ModbusTcpTransport": (BASE, ("devices", 0, "transport")),
    "ModbusRtuTransport": (RTU, ("devices", 0, "transport")),
    "ParkingConfig": (PARKING, ("parking",)),
    "ParkingBusConfig": (PARKING, ("parking", "buses", 0)),
    "MeterLinkTcp": (PARKING, ("parking", "buses", 0, "transport")),
    "MeterLinkRs485": (
        PARKING.replace("{type: tcp, host: 127.0.0.1, port: 7700}", "{type: rs485, port: /x}"),
        ("parking", "buses", 0, "transport"),
    ),
}


def test_config__every_choice_setting_names_its_choices_when_refused():
    """Every setting with a fixed set of values (parity, stopbits, synchronous, trust, mode,
    the meter commands, ...) names all of them when given another."""
    for name, _info, annotation in _fields():
        literals = [a for a in [annotation, *typing.get_args(annotation)] if a is not None]
        literals = [a for a in literals if typing.get_origin(a) is typing.Literal]
        if not literals or name.endswith(".type"):  # a transport's type: see the table above
            continue
        model, field = name.split(".")
        assert model in PLACES, f"{name}: add where {model} sits to PLACES"
        text, path = PLACES[model]
        data = yaml.safe_load(text)
        place = data
        for step in path:
            place = place.setdefault(step, {}) if isinstance(step, str) else place[step]
        wrong = "no-such-choice"
        place[field] = [wrong] if typing.get_origin(annotation) is list else wrong
        found = problems(yaml.safe_dump(data, sort_keys=False))
        [msg] = [m for _l, _c, m in found if f".{field}" in m or m.startswith(f"{field}:")]
        for allowed in typing.get_args(literals[0]):
            assert str(allowed) in msg, (name, msg)
        assert "no-such-choice" in msg


# --------------------------------------------------------------------------- case 4: all at once

ALL_AT_ONCE = """\
gateway: {id: gw 1}
devices:
  - id: m1
    profile: eastron_sdm630
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}
    poll_intreval_s: 3
  - id: m1
    profile: eastron_sdm630
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}
  - id: m3
    profile: eastron_sdm630
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 3}
    max_registers: 1
    timeout_ms: abc
  - id: m4
    profile: eastron_sdm630
    transport: {type: modbus_rtu, port: /dev/ttyUSB0, unit: 300, baudrate: 9600}
  - id: m5
    profile: eastron_sdm630
    transport: {host: x}
  - id: m6
    profile: eastron_sdm630
    transport: {type: modbus_rtu, port: /dev/ttyUSB0, unit: 2, baudrate: 19200}
    timeout_ms: 3000
  - id: m7
    profile: plantower_pms5003
    transport: {type: uart, port: /dev/ttyUSB0}
commands:
  writable:
    - {device: m5, point: x}
    - {device: m9, point: x}
"""


def test_check__field_and_cross_field_problems_are_listed_in_one_run(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text(ALL_AT_ONCE)
    res = edge("check", "--config-only", str(path))
    assert res.returncode == 2 and res.stdout == ""
    got = [line.removeprefix(f"{path}:") for line in res.stderr.splitlines()]
    expected = [
        "1:15: gateway.id: must be a name",  # field problems ...
        "6:5: unknown key 'poll_intreval_s' in devices.0",
        "7:9: duplicate device id 'm1' (first defined at line 3)",  # ... and cross-field ones
        "9:70: device 'm1': unit 1 on modbus_tcp://127.0.0.1:5020 is 'm1' too",
        "10:5: device 'm3': point 'voltage_l1' needs 2 registers; the limit is 1",  # a plan
        "14:17: devices.2.timeout_ms: must be a whole number",
        "17:61: devices.3.transport.unit: must be from 1 to 247 (got 300)",
        "20:16: devices.4.transport: needs a type",
        "23:74: device 'm6': /dev/ttyUSB0 runs at 9600 N1 for 'm4'; one line has one setting",
        "24:17: device 'm6': (timeout_ms + late-answer window) × (retries + 1) = 6000 ms",
        "27:35: device 'm7': serial port /dev/ttyUSB0 is taken by 'm4'; a serial sensor",
        "31:16: commands.writable: no device 'm9'",
    ]
    assert len(got) == len(expected), res.stderr
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want), (line, want)


@pytest.mark.parametrize(
    ("text", "reported"),
    [
        # m1's poll_interval_s is misspelt: its budget is not checked against the default 5 s
        (BASE + "    poll_intreval_s: 10\n    timeout_ms: 3000\n", ["unknown key"]),
        # a refused timeout_ms is not taken as the default for the budget either
        (BASE + "    poll_interval_s: 0.5\n    timeout_ms: '300'\n", ["timeout_ms: must be"]),
        # a refused token_file is not taken as "no token file" for the page's exposure
        (BASE + "status: {listen: '0.0.0.0:8080', token_file: 5}\n", ["token_file: must be"]),
        # a device left out (its transport refused) is not "no device" for commands.writable
        (BASE.replace("type: modbus_tcp", "type: nope")
         + "commands: {writable: [{device: m1, point: x}]}\n", ["unknown type 'nope'"]),
        # a device whose id is refused does not leave "missing" noise behind
        (BASE.replace("id: m1", "id: m 1"), ["devices.0.id: must be a name"]),
    ],
)  # fmt: skip
def test_config__a_refused_value_raises_no_cross_field_problem_of_its_stand_in(text, reported):
    found = problems(text)
    assert len(found) == len(reported), found
    for (_l, _c, msg), want in zip(found, reported, strict=True):
        assert want in msg, (msg, want)
