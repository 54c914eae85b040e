"""Edge processing: windows and deadbands equal a plain-Python reference; bad rules are located."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.agent.processing import Processor, aggregate
from edge.config import ConfigError, parse_config
from protocols.batch import Reading

T0 = 1_763_800_000_000


def device_yaml(processing: str, interval: float = 1.0) -> str:
    return f"""gateway: {{id: g}}
devices:
  - id: pm
    profile: plantower_pms5003
    transport: {{type: uart, port: /dev/ttyUSB1}}
    poll_interval_s: {interval}
    timeout_ms: 500
    retries: 0
    points: [pm2_5, pm10]
    processing:
{processing}"""


def processor(processing: str) -> Processor:
    cfg = parse_config(device_yaml(processing)).config
    return Processor(cfg.devices, {"pm": ["pm2_5", "pm10"]})


def ref_percentile(values: list[float], q: int) -> float:
    """Linear interpolation between closest ranks (numpy's default), in plain Python."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ref_windows(series: list[tuple[int, float]], window_ms: int, aggs: list[str]):
    groups: dict[int, list[float]] = {}
    for ts, v in series:
        groups.setdefault(ts // window_ms, []).append(v)
    out = {}
    for index, vals in groups.items():
        for a in aggs:
            if a == "mean":
                value = statistics.fmean(vals)
            elif a == "count":
                value = len(vals)
            elif a in ("min", "max"):
                value = min(vals) if a == "min" else max(vals)
            elif a in ("first", "last"):
                value = vals[0] if a == "first" else vals[-1]
            else:
                value = ref_percentile(vals, int(a[1:]))
            out[(f"pm2_5.{a}", index * window_ms)] = value
    return out


# One value type per series, as a device sends: ints (PMS5003 µg/m³) or floats.
series_st = st.lists(
    st.tuples(st.integers(0, 3_000), st.integers(0, 500)), min_size=1, max_size=200
) | st.lists(
    st.tuples(st.integers(0, 3_000), st.floats(0, 1000, allow_nan=False)), min_size=1, max_size=200
)


@settings(deadline=None, max_examples=60)
@given(series_st, st.sampled_from([5, 10, 60]))
def test_windows__equal_a_plain_python_reference(steps, window_s):
    aggs = ["mean", "min", "max", "first", "last", "count", "p50", "p95"]
    proc = processor(f"      - {{points: [pm2_5], window_s: {window_s}, aggregates: {aggs}}}")
    ts, series = T0, []
    for step, value in steps:
        ts += step * 10  # strictly in order, irregular spacing
        series.append((ts, value))
    out = proc.process([Reading("pm", "pm2_5", t, v) for t, v in series])
    out += proc.flush(ts, everything=True)
    got = {(r.point, r.ts_ms): r.value for r in out}
    want = ref_windows(series, window_s * 1000, aggs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key
        if key[0].endswith(("min", "max", "first", "last")):
            assert type(got[key]) is type(value)  # an int stays an int


@settings(deadline=None, max_examples=60)
@given(series_st, st.integers(0, 5000).map(lambda c: c / 100), st.integers(1, 30))
def test_deadband__equals_a_plain_python_reference(steps, band, heartbeat_s):
    proc = processor(f"      - {{points: [pm2_5], deadband: {band}, heartbeat_s: {heartbeat_s}}}")
    ts, readings = T0, []
    for step, value in steps:
        ts += step * 10
        readings.append(Reading("pm", "pm2_5", ts, value))
    got = proc.process(readings)
    want, last, last_ts = [], None, None
    for r in readings:
        if last_ts is None or r.ts_ms - last_ts >= heartbeat_s * 1000 or abs(r.value - last) > band:
            want.append(r)
            last, last_ts = r.value, r.ts_ms
    assert got == want


def test_processing__untouched_points_health_and_text_pass_through():
    proc = processor("      - {points: [pm2_5], window_s: 60, raw: true}")
    readings = [
        Reading("pm", "pm2_5", T0, 12),
        Reading("pm", "pm10", T0, 20),
        Reading("pm", "_status", T0, "online"),
    ]
    assert proc.process(readings) == readings  # raw kept; the window is still open
    closed = proc.process([Reading("pm", "pm2_5", T0 + 60_000, 14)])
    assert {r.point for r in closed} >= {"pm2_5.mean", "pm2_5.count", "pm2_5"}


def test_aggregate__numpy_types_become_python_types():
    assert aggregate([3, 1, 2], "min") == 1 and type(aggregate([3, 1, 2], "min")) is int
    assert aggregate([1.5, 2.5], "mean") == 2.0
    assert aggregate([1, 2, 3, 4], "p50") == 2.5


@pytest.mark.parametrize(
    ("rule", "line", "message"),
    [
        ("      - {window_s: 60, aggregates: [mean, median]}", 11, "unknown aggregate 'median'"),
        ("      - {window_s: 0.5}", 11, "window_s 0.5 s is shorter than poll_interval_s 1 s"),
        ("      - {points: [pm1_0], window_s: 60}", 11, "does not read a point 'pm1_0'"),
        ("      - {window_s: 60, deadband: 2}", 11, "either window_s or deadband"),
    ],
)
def test_processing__an_invalid_rule_is_a_config_error_at_its_place(rule, line, message):
    with pytest.raises(ConfigError) as info:
        parse_config(device_yaml(rule), "pm.yaml")
    text = str(info.value)
    assert message in text and f"pm.yaml:{line}:" in text, text
