"""The demo's live view (edge/demo.py LiveView): one line per device per batch, never empty."""

from __future__ import annotations

import io
import time
from datetime import datetime

from edge.config import load_config
from edge.demo import LiveView, default_demo_config
from edge.platform.consumer import Delivery
from protocols.batch import BatchHeader, Reading


def test_live_view__window_aggregates_key_points_and_health_only_batches_are_never_empty_lines():
    loaded = load_config(default_demo_config(), check_storage=False)
    out = io.StringIO()
    view = LiveView(loaded, jsonl=False, out=out)
    now = int(time.time() * 1000)

    def batch(seq: int, *readings: tuple[str, str, object]) -> None:
        header = BatchHeader(gateway="gw-demo", seq=seq, boot=1, created_ms=now)
        view(Delivery(header, [Reading(d, p, now, v) for d, p, v in readings]))

    # A dust sensor reporting 30 s windows only: its aggregates, with the point's unit.
    batch(
        1,
        ("air-quality", "pm10.mean", 31.5),
        ("air-quality", "pm2_5.max", 22.0),
        ("air-quality", "pm2_5.mean", 18.25),
        ("air-quality", "pm2_5.count", 30),
        ("air-quality", "_status", "online"),
    )
    # The same sensor before its first window closes: its health, not an empty line.
    batch(2, ("air-quality", "_status", "online"))
    # The main meter: key points in profile order, whatever order the batch has.
    batch(
        3,
        ("cabinet-main", "total_apparent_power", 900.0),
        ("cabinet-main", "frequency", 50.01),
        ("cabinet-main", "voltage_l1", 230.1),
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    clock = datetime.fromtimestamp(now / 1000, loaded.time_zone()[0]).strftime("%H:%M:%S")
    assert all(line.startswith(clock) for line in lines)
    first, health, meter = (line.split(" readings  ", 1)[1] for line in lines)
    assert first.split("  ") == [
        "pm2_5.count=30",
        "pm2_5.max=22.00 µg/m³",
        "pm2_5.mean=18.25 µg/m³",
        "pm10.mean=31.50 µg/m³",
    ], first
    assert health == "status=online"
    assert meter.split("  ") == ["voltage_l1=230.10 V", "frequency=50.01 Hz"], meter
