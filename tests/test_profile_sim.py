"""Every profile gets its simulator free (issue 19, item 4; docs/profile-format.md §16).

A profile file's value hints (a point's ``simulate:``) or, without them, its units give the
simulator plausible values; a profile naming a behaviour model (``simulate: {model: ...}``)
follows it. Values are served byte for byte over Modbus TCP and RTU and polled by the gateway's
own poller; they are a function of the seed and the clock, so a test can compare them; the
faults of ``edge sim`` work for data profiles as for the shipped ones.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from pathlib import Path

import pytest

from devices import Profile
from edge.agent.poller import DevicePoller
from edge.cli import main
from edge.config import parse_config
from edge.fieldbus.link import ModbusDeviceError, ModbusExceptionResponse, ModbusTimeout
from edge.fieldbus.modbus_tcp import ModbusTcpLink
from edge.fieldbus.rtu import RtuLink
from edge.plan import CycleDecoder, compile_plan
from edge.profiles import get_profile, load_profile_file
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.modbus_frame import LineTiming
from simulators import serve_modbus_tcp, sim_unit
from simulators.modbus_device import ProfileSimUnit
from simulators.rtu_line import serve_rtu

T0 = 1_763_800_000.0  # 2025-11-22 15:26:40 in Hanoi
FAST_LINE = LineTiming(115200, "N", 1)

#: A device the project has never seen, with value hints on most points (every kind of point).
HINTED = """\
name: acme_kiosk9
vendor: ACME
model: KIOSK-9
source: written for tests/test_profile_sim.py
defaults: {table: holding}
points:
  - {name: voltage, address: 0, data_type: uint16, scale: 0.1, unit: V,
     simulate: {nominal: 220, range: [210, 230], noise: 1.5}}
  - {name: temperature, address: 1, data_type: int16, scale: 0.1, offset: -40, unit: °C,
     simulate: {range: [18, 36], daily: temperature, noise: 0.3}}
  - {name: flow, address: 2, data_type: float32, byte_order: CDAB, unit: L/min,
     simulate: {range: [10, 50]}}
  - {name: energy, address: 4, data_type: uint32, byte_order: DCBA, scale: 0.01, unit: kWh,
     kind: counter, simulate: {rate_per_h: 2.5, daily: load}}
  - {name: pulses, address: 6, data_type: uint16, kind: counter, wrap: 1000,
     simulate: {rate_per_h: 400}}
  - {name: mode, address: 7, data_type: uint16, labels: {0: "off", 1: eco, 2: boost, 3: service},
     simulate: {values: [1, 2]}}
  - {name: door_open, address: 8, data_type: bool, bits: 0, simulate: {values: [false]}}
  - {name: alarm, address: 8, data_type: bool, bits: 3}
  - {name: fan_stage, address: 8, data_type: uint16, bits: [4, 6]}
  - {name: serial_number, address: 9, data_type: string, length: 5, simulate: {text: KX-20391}}
  - {name: power, address: 20, data_type: int16, unit: W, scale_register: W_SF,
     simulate: {range: [500, 9000]}}
  - {name: W_SF, address: 21, data_type: int16}
  - {name: humidity, address: 22, data_type: uint16, scale: 0.1, unit: "%RH"}
"""


def hinted_profile(tmp_path: Path) -> Profile:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "acme_kiosk9.yaml").write_text(HINTED)
    return load_profile_file(folder / "acme_kiosk9.yaml")


def _config(tmp_path: Path, profile: str, transport: str) -> str:
    return (
        f"gateway: {{id: gw-sim, site: test}}\nbuffer: {{path: {tmp_path / 'b.sqlite'}}}\n"
        f"devices:\n  - id: dut\n    profile: {profile}\n    transport: {transport}\n"
        "    timeout_ms: 2000\n    retries: 0\n"
    )


async def poll_over(
    tmp_path: Path, transport: str, profile: Profile, clock_steps: list[float], seed: object = 7
) -> tuple[list[dict[str, object]], ProfileSimUnit]:
    """The simulator of ``profile`` (seed, a clock stepped through ``clock_steps``) on Modbus TCP
    or RTU, polled by the gateway's poller once per step; the readings of each poll."""
    t = [clock_steps[0]]
    unit = sim_unit(profile, 9, seed=f"{seed}", clock=lambda: t[0])
    if transport == "tcp":
        server = await serve_modbus_tcp([unit])
        where = f"{{type: modbus_tcp, host: 127.0.0.1, port: {server.port}, unit: 9}}"
        link = ModbusTcpLink("127.0.0.1", server.port)
    else:
        server = await serve_rtu([unit], FAST_LINE, turnaround_s=0.001)
        where = f"{{type: modbus_rtu, port: {server.path}, baudrate: 115200, unit: 9}}"
        link = RtuLink(server.path, FAST_LINE)
    loaded = parse_config(_config(tmp_path, profile.name, where), "gw.yaml", tmp_path)
    dev = loaded.config.devices[0]
    poller = DevicePoller(dev, loaded.plans[dev.id], link, asyncio.Queue())
    polls = []
    try:
        for step in clock_steps:
            t[0] = step
            readings = {r.point: r.value for r in await poller.poll_once()}
            assert readings.pop(STATUS_POINT, "online") == "online"  # sent when it changes
            assert readings.pop(BAD_POINTS, "") == ""
            for name, value in readings.items():  # exactly what the registers carried
                assert unit.served(name)[-1] == value, name
            polls.append(readings)
    finally:
        await link.close()
        await server.close()
    return polls, unit


# --------------------------------------------------------------------------- hints


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_hinted_sim__values_keep_their_hints_counters_grow_states_stay_in_their_set(
    tmp_path, transport
):
    profile = hinted_profile(tmp_path)
    steps = [T0 + 600.0 * k for k in range(12)]  # two hours, a poll every 10 minutes
    polls, _ = await poll_over(tmp_path, transport, profile, steps)
    assert len(polls) == 12 and all(set(p) == set(profile.point_names) for p in polls)
    for r in polls:
        assert 210 <= r["voltage"] <= 230 and 18 <= r["temperature"] <= 36
        assert 10 <= r["flow"] <= 50 and 40 <= r["humidity"] <= 90
        assert 500 <= r["power"] <= 9000 and r["W_SF"] == 1 and r["power"] % 10 == 0
        assert r["mode"] in (1, 2) and r["door_open"] is False and isinstance(r["alarm"], bool)
        assert r["fan_stage"] in range(8) and r["serial_number"] == "KX-20391"
        assert 0 <= r["pulses"] < 1000
    for before, after in itertools.pairwise(polls):
        assert after["energy"] >= before["energy"]  # a counter never falls
        assert (after["pulses"] - before["pulses"]) % 1000 in (66, 67)  # 400 an hour, wrapping
    assert 0.1 < polls[-1]["energy"] - polls[0]["energy"] < 2.5 * 2 * 4  # 2.5 kWh an hour, shaped
    assert len({r["voltage"] for r in polls}) > 3 and len({r["flow"] for r in polls}) > 3
    assert len({r["mode"] for r in polls}) == 2  # both listed values, minutes at a time


async def test_hinted_sim__one_seed_serves_the_same_values_over_tcp_and_rtu(tmp_path):
    profile = hinted_profile(tmp_path)
    steps = [T0 + 37.0 * k for k in range(5)]
    tcp, _ = await poll_over(tmp_path, "tcp", profile, steps, seed="s1")
    rtu, _ = await poll_over(tmp_path, "rtu", profile, steps, seed="s1")
    other, _ = await poll_over(tmp_path, "tcp", profile, steps, seed="s2")
    assert tcp == rtu
    assert other != tcp and other[0]["voltage"] != tcp[0]["voltage"]


def test_hinted_sim__values_depend_on_seed_and_clock_not_on_how_often_they_are_read(tmp_path):
    profile = hinted_profile(tmp_path)
    t = [T0]
    often = sim_unit(profile, 1, seed=3, clock=lambda: t[0])
    seldom = sim_unit(profile, 1, seed=3, clock=lambda: t[0])
    for k in range(200):
        t[0] = T0 + 13.0 * k
        now = often.model_values()
        if k % 7 == 0:
            assert seldom.model_values() == now
    t[0] = T0 + 0.4  # back within the first measurement cycle: the same values again
    first = sim_unit(profile, 1, seed=3, clock=lambda: t[0]).model_values()
    t[0] = T0
    assert sim_unit(profile, 1, seed=3, clock=lambda: t[0]).model_values() == first


# --------------------------------------------------------------------------- units alone

UNITS_ONLY = """\
name: acme_street_box
vendor: ACME
model: street box
source: written for tests/test_profile_sim.py
defaults: {table: input, data_type: float32}
points:
  - {name: voltage, address: 0, unit: V}
  - {name: frequency, address: 2, unit: Hz}
  - {name: current, address: 4, unit: A}
  - {name: power, address: 6, unit: kW}
  - {name: energy, address: 8, data_type: uint32, scale: 0.1, unit: kWh, kind: counter}
  - {name: humidity, address: 10, unit: "%RH"}
  - {name: temperature, address: 12, data_type: int16, scale: 0.1, unit: °C}
  - {name: wind_speed, address: 13, data_type: uint16, scale: 0.1, unit: m/s}
  - {name: wind_direction, address: 14, data_type: uint16, unit: °}
  - {name: co2, address: 15, data_type: uint16, unit: ppm}
  - {name: illuminance, address: 16, unit: lx}
  - {name: pressure, address: 18, unit: hPa}
  - {name: status, address: 20, data_type: uint16}
  - {name: state, address: 21, data_type: uint16, labels: {0: idle, 1: run, 2: fault}}
  - {name: tamper, address: 22, data_type: bool, bits: 0}
  - {name: firmware, address: 23, data_type: string, length: 4}
"""


def test_default_sim__a_profile_without_hints_gets_plausible_values_from_its_units(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "box.yaml").write_text(UNITS_ONLY)
    profile = load_profile_file(folder / "box.yaml")
    t = [0.0]
    unit = sim_unit(profile, 1, seed="box", clock=lambda: t[0])
    plan = compile_plan(profile)
    day: dict[float, dict[str, object]] = {}
    midnight = 1_763_744_400.0  # 2025-11-22 00:00 in Hanoi
    for hour in [h / 2 for h in range(49)]:
        t[0] = midnight + hour * 3600.0
        cycle: CycleDecoder[None] = CycleDecoder(plan.scale_names)
        values: dict[str, object] = {}
        for r in plan.requests:
            done, failed = cycle.feed(r, unit.read(r.function_code, r.address, r.count), None)
            assert failed == []
            values |= {p.name: v for _, p, v in done}
        day[hour] = values
    for v in day.values():
        assert 207 <= v["voltage"] <= 253 and 49.8 <= v["frequency"] <= 50.2
        assert 0.5 <= v["current"] <= 20 and 0.1 <= v["power"] <= 4.6  # W's default, in kW
        assert 40 <= v["humidity"] <= 90 and 20 <= v["temperature"] <= 35
        assert 0 <= v["wind_speed"] <= 25 and 0 <= v["wind_direction"] < 360
        assert 400 <= v["co2"] <= 1500 and 99_500 <= v["pressure"] * 100 <= 103_000
        assert v["status"] == 0 and v["state"] in (0, 1, 2) and isinstance(v["tamper"], bool)
        assert len(v["firmware"]) == 8 and v["firmware"].isprintable()
        zeros = [k for k, x in v.items() if x == 0 and not isinstance(x, bool)]
        assert len(zeros) <= 3  # a clear status, an idle state, night, a calm: never all zeros
    assert day[14.5]["temperature"] > day[5.0]["temperature"] + 5  # the day's warmth
    assert day[14.5]["humidity"] < day[5.0]["humidity"]
    assert day[0.0]["illuminance"] == 0 and day[12.0]["illuminance"] > 10_000  # daylight
    energy = [day[h]["energy"] for h in sorted(day)]
    assert energy == sorted(energy) and 10 < energy[-1] - energy[0] < 60  # ~1.2 kWh an hour


# --------------------------------------------------------------------------- named models


async def test_named_model__a_library_meter_keeps_p_equal_v_i_pf_over_the_wire(tmp_path):
    """The ABB B23/B24 (library) names the energy-meter model: its integer registers of 0.1 V,
    0.01 A, 0.01 W and 0.001 (power factor) show one meter's physics, within that resolution."""
    profile = get_profile("abb_b23_b24")
    steps = [T0 + 600.0 * k for k in range(10)]
    polls, _ = await poll_over(tmp_path, "tcp", profile, steps, seed=11)
    for r in polls:
        for ph in ("l1", "l2", "l3"):
            v, i, pf, p = (r[f"{q}_{ph}"] for q in ("voltage", "current", "power_factor", "power"))
            assert 200 < v < 250 and 49.8 < r["frequency"] < 50.2
            assert math.isclose(p, v * i * pf, rel_tol=0.005, abs_tol=0.05 * v), (ph, r)
        phases = sum(r[f"power_{ph}"] for ph in ("l1", "l2", "l3"))
        assert math.isclose(r["total_power"], phases, abs_tol=0.02)
        assert math.isclose(
            r["import_energy"], sum(r[f"import_energy_{ph}"] for ph in ("l1", "l2", "l3")),
            abs_tol=0.02,
        )  # fmt: skip
    energy = [r["import_energy"] for r in polls]
    assert energy == sorted(energy) and energy[-1] > energy[0]


def test_named_model__wind_sector_follows_direction_and_dew_point_stays_below_the_air():
    t = [T0]
    vane = sim_unit("dfrobot_sen0482", 1, seed=5, clock=lambda: t[0])
    station = sim_unit("campbell_metsens300", 1, seed=5, clock=lambda: t[0])
    sectors = set()
    for k in range(48):
        t[0] = T0 + 1800.0 * k
        v = vane.model_values()
        assert v["wind_direction_sector"] == round(v["wind_direction"] / 22.5) % 16
        sectors.add(v["wind_direction_sector"])
        s = station.model_values()
        assert s["dew_point"] <= s["temperature"] + 0.01 and 900 < s["pressure"] < 1100
    assert len(sectors) > 1  # the wind turns


def test_named_model__a_user_profile_extending_a_shipped_meter_follows_its_model(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "clone.yaml").write_text(
        "name: acme_sdm630_clone\nextends: eastron_sdm630\nmodel: clone\n"
        "source: written for the test\nremove_points: [voltage_thd_l1]\n"
    )
    clone = load_profile_file(folder / "clone.yaml")
    t = [T0]
    a = sim_unit(clone, 1, seed=2, clock=lambda: t[0]).model_values()
    b = sim_unit("eastron_sdm630", 1, seed=2, clock=lambda: t[0]).model_values()
    assert clone.simulate is not None and clone.simulate.model == "energy_meter"
    assert all(a[k] == b[k] for k in a)


def test_named_models__each_gives_exactly_the_quantities_profiles_may_name():
    """devices/simulate.py lists each model's quantities (the profile check refuses others):
    the models the simulators ship give exactly those."""
    from devices.simulate import MODELS as DECLARED
    from devices.simulate import SimModel
    from simulators import MODELS

    assert set(MODELS) == set(DECLARED)
    t = [T0]
    for name, factory in MODELS.items():
        given: set[str] = set()
        for phases in (1, 3) if name == "energy_meter" else (None,):
            spec = SimModel(name, phases)
            model = factory(spec, get_profile("eastron_sdm630"), 1, lambda: t[0], {})
            given |= set(model.sample())
        assert given == set(DECLARED[name]), name


# --------------------------------------------------------------------------- broken hints

BROKEN_HINTS = {
    "text_on_a_number": (
        "  - {name: a, address: 0, data_type: float32, simulate: {text: ABC}}\n",
        "simulate: text is for strings",
    ),
    "rate_on_a_gauge": (
        "  - {name: a, address: 0, data_type: uint16, unit: V, simulate: {rate_per_h: 3}}\n",
        "rate_per_h is for counters",
    ),
    "range_backwards": (
        "  - {name: a, address: 0, data_type: float32, simulate: {range: [5, 1]}}\n",
        "must run from low to high",
    ),
    "range_beyond_the_register": (
        "  - {name: a, address: 0, data_type: uint16, scale: 0.1, simulate: {range: [0, 9000]}}\n",
        "range 9000 does not fit a uint16 × 0.1 (0..6553.5)",
    ),
    "flag_given_a_number": (
        "  - {name: a, address: 0, table: coil, data_type: bool, simulate: {values: [1]}}\n",
        "a flag takes true or false",
    ),
    "state_value_unlabelled": (
        "  - {name: a, address: 0, data_type: uint16, labels: {0: a, 1: b},\n"
        "     simulate: {values: [7]}}\n",
        "values 7 is not one of the labelled values",
    ),
    "unknown_hint_key": (
        "  - {name: a, address: 0, data_type: uint16, simulate: {mean: 3}}\n",
        "unknown key 'mean' in points.0.simulate",
    ),
    "unknown_shape": (
        "  - {name: a, address: 0, data_type: uint16, simulate: {daily: tides}}\n",
        "points.0.simulate.daily: must be one of load, temperature, humidity, sun or night",
    ),
    "quantity_without_a_model": (
        "  - {name: a, address: 0, data_type: float32, unit: V, simulate: {quantity: voltage}}\n",
        "give the profile simulate: {model: ...}",
    ),
}
BROKEN_MODELS = {
    "unknown_model": (
        "simulate: {model: wind_turbine}\n",
        None,
        "simulate.model: must be one of energy_meter, lighting, weather",
    ),
    "quantity_the_model_lacks": (
        "simulate: {model: energy_meter}\n",
        "{quantity: voltage_l4}",
        "quantity 'voltage_l4' is not one of the energy_meter model's",
    ),
    "unit_the_quantity_lacks": (
        "simulate: {model: weather}\n",
        "{quantity: wind_speed}",
        "'wind_speed', in m/s; a float32 in 'V' cannot",
    ),
    "options_of_another_model": (
        "simulate: {model: weather, phases: 3}\n",
        None,
        "phases and peak_kw are the energy_meter model's, not the weather model's",
    ),
}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", sorted(BROKEN_HINTS) + sorted(BROKEN_MODELS))
def test_profile_check__a_broken_simulate_exits_2_at_its_line(capsys, tmp_path, case):
    head = "name: {c}\nvendor: Acme\nmodel: X1\nsource: written for the test\n"
    if case in BROKEN_HINTS:
        points, says = BROKEN_HINTS[case]
        text, lines = head + "points:\n" + points, (6, 7)
    else:
        top, hint, says = BROKEN_MODELS[case]
        point = "  - {name: supply, address: 0, data_type: float32, unit: V"
        point += (f", simulate: {hint}" if hint else "") + "}\n"
        text, lines = head + top + "points:\n" + point, (5, 7)
    path = tmp_path / f"{case}.yaml"
    path.write_text(text.replace("{c}", case))
    code, out, err = _run(["profile", "check", str(path)], capsys)
    assert code == 2 and out == "", (text, err)
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:"), err
    assert lines[0] <= int(first.split(":")[1]) <= lines[1], (text, err)
    assert says in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- faults on demand


async def _edge_sim(*argv: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "sim", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert first.startswith("simulating"), first
    return proc, first


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.system
async def test_edge_sim__exception_silence_and_slow_faults_on_a_library_profile_over_tcp():
    proc, first = await _edge_sim(
        "--profile", "senseair_k30", "--unit", "1", "--unit", "2", "--unit", "3", "--unit", "4",
        "--port", "0", "--exception", "2:4", "--silent", "3", "--slow", "4:600",
    )  # fmt: skip
    port = int(first.split(" on 127.0.0.1:")[1].split()[0])
    link = ModbusTcpLink("127.0.0.1", port)
    try:
        co2 = await link.read(1, 4, 0x0003, 1, timeout_s=2, retries=0)
        assert 400 <= co2[0] <= 1500  # ppm, from the profile's unit
        with pytest.raises(ModbusExceptionResponse) as refused:
            await link.read(2, 4, 0x0003, 1, timeout_s=2, retries=0)
        assert refused.value.code == 4  # server device failure, as asked
        with pytest.raises(ModbusTimeout):
            await link.read(3, 4, 0x0003, 1, timeout_s=0.5, retries=0)
        assert (await link.read(1, 4, 0x0000, 1, timeout_s=2, retries=0)) == [0]  # status: clear
        with pytest.raises(ModbusTimeout):  # a slow unit behind the bridge misses a short timeout
            await link.read(4, 4, 0x0003, 1, timeout_s=0.2, retries=0)
    finally:
        await link.close()
    link = ModbusTcpLink("127.0.0.1", port)
    try:
        started = time.monotonic()
        co2 = await link.read(4, 4, 0x0003, 1, timeout_s=3, retries=0)
        assert time.monotonic() - started >= 0.5 and 400 <= co2[0] <= 1500
    finally:
        await link.close()
        await _stop(proc)


@pytest.mark.system
@pytest.mark.slow
async def test_edge_sim__a_profile_file_on_rtu_with_slow_and_corrupt_answers(tmp_path):
    profile = hinted_profile(tmp_path)
    link_path = tmp_path / "ttyKiosk"
    proc, _ = await _edge_sim(
        "--profile-file", str(tmp_path / "profiles" / "acme_kiosk9.yaml"), "--rtu",
        "--link", str(link_path), "--baud", "19200", "--unit", "1", "--unit", "2", "--unit", "3",
        "--slow", "2:600", "--corrupt-crc", "3",
    )  # fmt: skip
    timing = LineTiming(19200, "N", 1)
    rtu = RtuLink(str(link_path), timing)
    volts = profile.point("voltage")
    try:
        regs = await rtu.read(1, 3, 0, 1, timeout_s=1, retries=0)
        assert 210 <= volts.decode(regs) <= 230  # the file's hint
        with pytest.raises(ModbusTimeout):  # a slow device misses a short timeout
            await rtu.read(2, 3, 0, 1, timeout_s=0.2, retries=0)
        await asyncio.sleep(1.0)  # its late answer goes by
        started = time.monotonic()
        regs = await rtu.read(2, 3, 0, 1, timeout_s=3, retries=0)
        assert time.monotonic() - started >= 0.5 and 210 <= volts.decode(regs) <= 230
        with pytest.raises(ModbusDeviceError):
            await rtu.read(3, 3, 0, 1, timeout_s=1, retries=0)
        assert rtu.stats.crc_errors >= 1
    finally:
        await rtu.close()
        await _stop(proc)
