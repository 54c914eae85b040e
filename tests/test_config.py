"""Config: the shipped examples load; every kind of mistake is reported at FILE:LINE:COL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_config__shipped_examples_are_valid(path):
    # Written for a cabinet (/var/lib/edge): the file alone, not this machine's paths.
    loaded = load_config(path, check_storage=False)
    assert loaded.config.devices or loaded.config.parking.buses
    for dev in loaded.config.devices:
        if dev.transport.type == "uart":
            assert dev.id not in loaded.plans  # a serial sensor's protocol says what it sends
            continue
        assert loaded.plans[dev.id].requests


def test_config__cabinet_example_has_credentials_and_two_tcp_meters():
    cfg = load_config(ROOT / "configs/cabinet-example.yaml", check_storage=False).config
    assert cfg.mqtt.username and cfg.mqtt.password_file
    assert [d.profile for d in cfg.devices] == ["eastron_sdm630", "eastron_sdm630"]
    assert {d.transport.type for d in cfg.devices} == {"modbus_tcp"}


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_check__cabinet_example_exits_0_and_prints_the_plan():
    res = edge("check", "--config-only", "configs/cabinet-example.yaml")
    assert res.returncode == 0, res.stderr
    assert "feeder-a: eastron_sdm630" in res.stdout
    assert "5 requests touching 124 registers for 56 points" in res.stdout


def test_check__typo_key_exits_2_naming_file_line_and_column(tmp_path):
    text = (ROOT / "configs/cabinet-example.yaml").read_text()
    lines = text.splitlines()
    # Misspell the first device's poll_interval_s and remember where it is.
    idx = next(i for i, line in enumerate(lines) if "poll_interval_s" in line)
    col = lines[idx].index("poll_interval_s") + 1
    lines[idx] = lines[idx].replace("poll_interval_s", "poll_intreval_s")
    bad = tmp_path / "typo.yaml"
    bad.write_text("\n".join(lines) + "\n")
    res = edge("check", str(bad))
    assert res.returncode == 2
    assert f"{bad}:{idx + 1}:{col}: unknown key 'poll_intreval_s'" in res.stderr
    assert res.stdout == ""


def test_check__missing_file_exits_2():
    res = edge("check", "configs/does-not-exist.yaml")
    assert res.returncode == 2
    assert "cannot read config" in res.stderr


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml")
    return [(line, col, msg) for _, line, col, msg in info.value.problems]


BASE = """\
gateway: {id: gw-1}
devices:
  - id: m1
    profile: eastron_sdm630
    transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}
"""


def test_config__base_is_valid():
    assert parse_config(BASE).config.devices[0].id == "m1"


def test_config__wrong_type_points_at_the_value():
    text = BASE.replace("unit: 1", "unit: one")
    [(line, col, msg)] = problems(text)
    assert (line, col) == (5, text.splitlines()[4].index("one") + 1)
    assert "must be a whole number from 0 to 255" in msg and "'one'" in msg


def test_config__missing_key_points_at_its_mapping():
    [(line, _col, msg)] = problems(BASE.replace("    profile: eastron_sdm630\n", ""))
    assert (line, msg) == (3, "missing required key 'profile' in devices.0")


def test_config__duplicate_device_id_names_both_places():
    text = BASE + "  - {id: m1, profile: eastron_sdm120, transport: {type: modbus_tcp, host: h}}\n"
    [(line, _col, msg)] = problems(text)
    assert line == 6 and "duplicate device id 'm1' (first defined at line 3)" in msg


@pytest.mark.parametrize(
    ("change", "expect_line", "expect"),
    [
        (("port: 5020", "port: 70000"), 5, "must be from 1 to 65535 (got 70000)"),
        (("gw-1", "gw/1"), 1, "must be a name of 1 to 64 letters"),
        (("eastron_sdm630", "eastron_sdm999"), 4, "unknown device profile 'eastron_sdm999'"),
        (("modbus_tcp", "modbus_ascii"), 5, "unknown type 'modbus_ascii'"),
    ],
)
def test_config__impossible_values_are_located(change, expect_line, expect):
    [(line, _col, msg)] = problems(BASE.replace(*change))
    assert line == expect_line and expect in msg


def test_config__timeout_budget_beyond_poll_interval_is_refused():
    text = BASE + "    poll_interval_s: 1\n    timeout_ms: 800\n    retries: 1\n"
    [(line, _col, msg)] = problems(text)
    assert line == 7 and "1600 ms exceeds poll_interval_s" in msg


def test_config__unknown_point_and_duplicate_yaml_key_are_located():
    text = BASE + "    points: [voltage_l1, volts]\n"
    [(line, col, msg)] = problems(text)
    assert (line, col) == (6, text.splitlines()[5].index("volts") + 1)
    assert "no point 'volts'" in msg
    [(line, col, msg)] = problems("gateway: {id: a}\ngateway: {id: b}\n")
    assert (line, col, msg) == (2, 1, "duplicate key 'gateway' (first at line 1, column 1)")


def test_config__several_errors_are_reported_together():
    text = BASE.replace("unit: 1", "unit: -1").replace("gw-1", "gw 1") + "    pol: 3\n"
    assert len(problems(text)) == 3


def test_config__broker_url_and_password_rules():
    assert "mqtt://HOST:PORT" in problems(BASE + "mqtt: {url: 'http://x'}\n")[0][2]
    assert "needs a username" in problems(BASE + "mqtt: {password: p}\n")[0][2]


def test_config__yaml_syntax_error_is_located():
    # The cause is the '[' that is never closed, not the end of the file where it shows.
    [(line, col, msg)] = problems("gateway: [id: a\n")
    assert msg.startswith("YAML syntax") and (line, col) == (1, 10) and "never closed" in msg


def test_cli__a_reader_that_goes_away_early_gets_no_traceback():
    """`edge check config | head -1`: the pipe closes under the printing command."""
    proc = subprocess.Popen(
        # --config-only: the example names /etc/edge/mqtt-password, a file of the cabinet's
        [sys.executable, "-m", "edge", "check", "--config-only", "configs/rs485-example.yaml"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert "valid" in proc.stdout.readline()
    proc.stdout.close()  # as `head -1` exits
    err = proc.stderr.read()
    assert proc.wait(30) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_cli__paho_socket_errors_are_not_logged_as_errors_of_ours():
    """A broken broker connection is reported once by the forwarder; paho's own ERROR line for
    the same socket ("failed to receive on socket") shows only at --log-level debug."""
    code = (
        "import logging, sys\n"
        "from edge.cli import _setup_logging\n"
        "_setup_logging(sys.argv[1])\n"
        "logging.getLogger('mqtt').error('failed to receive on socket: [Errno 104]')\n"
        "logging.getLogger('edge.uplink.forwarder').error('uplink down')\n"
    )
    for level, shown in (("info", False), ("debug", True)):
        err = subprocess.run(
            [sys.executable, "-c", code, level], cwd=ROOT, capture_output=True, text=True
        ).stderr
        assert "uplink down" in err
        assert ("failed to receive on socket" in err) is shown, err
        assert "ERROR mqtt" not in err


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        # (300 + 300) × 2 = 1200 ms of line time for a dead unit: more than its 1 s interval
        ("{type: modbus_rtu, port: /dev/ttyUSB0, unit: 1}", False),
        # a shorter late-answer window fits: (300 + 100) × 2 = 800 ms
        ("{type: modbus_rtu, port: /dev/ttyUSB0, unit: 1, late_answer_ms: 100}", True),
        # Modbus TCP has no window (answers carry their transaction id): 300 × 2 = 600 ms
        ("{type: modbus_tcp, host: 127.0.0.1, unit: 1}", True),
    ],
)
def test_config__a_dead_rtu_units_budget_counts_the_late_answer_window(line, ok):
    text = f"""gateway: {{id: gw}}
devices:
  - id: m
    profile: eastron_sdm630
    transport: {line}
    poll_interval_s: 1
    timeout_ms: 300
    retries: 1
"""
    if ok:
        parse_config(text, "t.yaml")
        return
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.yaml")
    assert (
        "t.yaml:7:17: device 'm': (timeout_ms + late-answer window) × (retries + 1) = 1200 ms"
        in str(err.value)
    )


FIRST = (
    "gateway: {id: gw-1}\n"
    "devices:\n"
    "  - id: m1\n"
    "    profile: eastron_sdm630\n"
    "    poll_interval_s: %s\n"
    "    transport: %s\n"
)
TCP = "{type: modbus_tcp, host: 127.0.0.1, unit: 1}"
RTU = "{type: modbus_rtu, port: /dev/ttyUSB0, unit: 1}"


@pytest.mark.parametrize(
    ("interval", "transport", "timeout_ms", "retries"),
    [
        (1, TCP, 500, 1),  # the technician's first config (issue 19, item 6)
        (5, TCP, 1000, 1),  # room for the defaults: unchanged
        (1, RTU, 500, 0),  # 80 registers at 9600 baud take 208 ms: no room for a retry
        (2, RTU, 500, 1),
        (0.5, TCP, 250, 1),
    ],
)
def test_config__a_device_without_timing_settings_gets_a_timing_that_keeps_its_rate(
    interval, transport, timeout_ms, retries
):
    """Left out, timeout_ms and retries follow from the poll interval, the line and the plan
    (edge.config.derive_timing): a first config with poll_interval_s: 1 and no timing is taken,
    not refused for a default the technician never wrote."""
    dev = parse_config(FIRST % (interval, transport), "t.yaml").config.devices[0]
    assert (dev.timeout_ms, dev.retries) == (timeout_ms, retries)


def test_config__only_a_timing_the_technician_wrote_is_refused():
    text = FIRST % (1, TCP)
    # Both written and too long: refused at timeout_ms, as before.
    [(line, _c, msg)] = problems(text + "    timeout_ms: 800\n    retries: 1\n")
    assert line == 7 and "1600 ms exceeds poll_interval_s = 1 s" in msg
    # Only the timeout written: the retry it leaves no room for is dropped, not refused.
    dev = parse_config(text + "    timeout_ms: 800\n", "t.yaml").config.devices[0]
    assert (dev.timeout_ms, dev.retries) == (800, 0)
    # Only the retries written: the timeout shrinks to fit them.
    dev = parse_config(text + "    retries: 3\n", "t.yaml").config.devices[0]
    assert (dev.timeout_ms, dev.retries) == (250, 3)
    # An interval no timeout the device could answer within fits in: refused at the interval,
    # saying the shortest that works and what else helps.
    [(line, _c, msg)] = problems(FIRST % (0.2, RTU))
    assert line == 5 and "leaves a timeout of at most 100 ms for 1 try" in msg
    assert "needs about 415 ms" in msg and "poll every 0.9 s or more" in msg
    assert "raise the line's baud rate" in msg
    [(line, _c, msg)] = problems(FIRST % (0.1, TCP) + "    retries: 3\n")
    assert line == 5 and "poll every 0.4 s or more, or lower retries" in msg


def test_check__prints_the_timing_each_device_got(tmp_path):
    cfg = tmp_path / "first.yaml"
    cfg.write_text(FIRST % (1, TCP) + f"buffer: {{path: {tmp_path / 'b.sqlite'}}}\n")
    res = edge("check", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "m1: eastron_sdm630 at 127.0.0.1:502 unit 1, every 1 s (timeout 500 ms, 1 retry)" in (
        res.stdout
    )
