"""Edge processing cost and uplink saving on a day of simulated Hanoi PM2.5.

A PMS5003 in active mode sends a frame every second for --hours of simulated time (Hanoi air from
simulators/particulate.py: the month's mean, traffic peaks, drift, haze). The frames' bytes go
through the real decoder (protocols/pms5003.py, fed in 64-byte reads as a serial port delivers
them) and the real processing stage (edge/agent/processing.py), configured as a device would be:

* window: 60 s windows of pm1_0 / pm2_5 / pm10 with the default aggregates (mean, min, max, count);
* deadband: pm2_5 / pm10 / pm1_0 reported on a change of more than --deadband µg/m³ (default 5, half
  the sensor's ±10 µg/m³ accuracy class), with a 300 s heartbeat.

Printed: CPU time per sample (one frame: decode + three points through the window), and the
points sent to the uplink against the raw 1 Hz points, for each.

    python bench/processing.py --hours 24

Last line: RESULT us_per_sample=<n> window_saving=<ratio> deadband_saving=<ratio>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.agent.processing import Processor
from edge.config import parse_config
from protocols import pms5003 as pms
from protocols.batch import Reading
from simulators.particulate import HanoiPm

T0 = 1_763_780_400.0  # 2025-11-22 10:00 Hanoi: winter, the dirty season
POINTS = ("pm1_0", "pm2_5", "pm10")


def processor(rule: str) -> Processor:
    text = f"""gateway: {{id: bench}}
devices:
  - id: pm
    profile: plantower_pms5003
    transport: {{type: uart, port: /dev/ttyUSB1}}
    poll_interval_s: 1
    timeout_ms: 400
    retries: 0
    mode: active
    points: [{", ".join(POINTS)}]
    processing:
      - {rule}
"""
    cfg = parse_config(text).config
    return Processor(cfg.devices, {"pm": list(POINTS)})


def stream(hours: float) -> bytes:
    now = [T0]
    air = HanoiPm(seed=11, clock=lambda: now[0])
    out = bytearray()
    for s in range(int(hours * 3600)):
        now[0] = T0 + s
        m = air.measure()
        atm = [round(m["pm1_0"]), round(m["pm2_5"]), round(m["pm10"])]
        frame = pms.PmsFrame(*atm, *atm, 0, 0, 0, 0, 0, 0, 0x97, 0)
        out += pms.encode_frame(frame)
    return bytes(out)


def run(raw: bytes, proc: Processor) -> tuple[float, int, int]:
    decoder = pms.PmsDecoder()
    ts = int(T0 * 1000)
    samples = sent = 0
    t = time.perf_counter()
    for at in range(0, len(raw), 64):
        for frame in decoder.feed(raw[at : at + 64]):
            if not isinstance(frame, pms.PmsFrame):
                continue
            values = (frame.pm1_0, frame.pm2_5, frame.pm10)
            readings = [Reading("pm", p, ts, v) for p, v in zip(POINTS, values, strict=True)]
            sent += len(proc.process(readings))
            samples += 1
            ts += 1000
    sent += len(proc.flush(ts, everything=True))
    elapsed = time.perf_counter() - t
    return elapsed / samples * 1e6, samples, sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--deadband", type=float, default=5.0)
    args = ap.parse_args()
    raw = stream(args.hours)
    print(f"PMS5003, 1 frame/s for {args.hours:g} h: {len(raw)} bytes, {len(raw) // 32} frames")
    us_window, samples, window_sent = run(raw, processor("{window_s: 60}"))
    us_band, _, band_sent = run(raw, processor(f"{{deadband: {args.deadband}, heartbeat_s: 300}}"))
    us_raw, _, raw_sent = run(raw, Processor([], {}))
    raw_points = samples * len(POINTS)
    assert raw_sent == raw_points
    print(f"decode only (no rules): {us_raw:.2f} us per sample")
    print(
        f"60 s window (mean, min, max, count): {us_window:.2f} us per sample, "
        f"{window_sent} points sent for {raw_points} raw: {raw_points / window_sent:.1f}x fewer"
    )
    print(
        f"deadband {args.deadband:g} ug/m3, 300 s heartbeat: {us_band:.2f} us per sample, "
        f"{band_sent} points sent: {raw_points / band_sent:.1f}x fewer"
    )
    print(
        f"RESULT us_per_sample={us_window:.2f} window_saving={raw_points / window_sent:.1f} "
        f"deadband_saving={raw_points / band_sent:.1f}"
    )


if __name__ == "__main__":
    main()
