"""How close the gateway gets to the physical limit of one RS-485 line.

A simulated 9600-baud 8N1 line (a pty paced at the wire's character time, slaves answering after
t3.5 plus a 20 ms turnaround with up to 2 ms of jitter: simulators/rtu_line.py) carries 8 SDM630
meters (30 points each: per-phase V, I, P, VA, VAr, PF, the totals, frequency and energies, the
measurement block the reference's suggested plan reads, device-protocols.md §1.5) and one of each
of the four other field profiles: SHT20 transmitter, URM14 water level, SenseCAP ONE weather
station, street-lighting cabinet controller. (The SDM120 sits on its own 2400-baud line in
practice; its map is read in small blocks, §1.5.) Every device is polled
back to back through the real gateway code (config -> cost-model plan -> DevicePoller ->
RtuLink), so the line never idles by choice. Measured side by side in one run:

* ours: the plans the gateway compiles for this line;
* naive: one request per point on the same line (what a per-tag poller does).

The theoretical maximum for a plan is its points divided by the wire time of its requests
(request + response characters, two t3.5 silences and the mean turnaround, per request). Devices
are polled in sweeps (each device once per sweep, all at once, queueing for the line as in the
gateway), so both variants read the same points the same number of times; utilisation is the
wire time of the polls made over the elapsed time.

    python bench/bus_utilisation.py --seconds 20

A third run shows what a slave answering past its timeout costs (meter-1 answers 600 ms after each
request, its timeout is 500 ms): the line is held for each late answer (the late-answer window,
edge/fieldbus/rtu.py) instead of letting it land on the next request; the held time is printed.

Last line: RESULT utilisation=<achieved / theoretical, ours> vs_naive=<ours / naive points/s>
points_per_s=<ours>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.agent.poller import DevicePoller
from edge.config import parse_config
from edge.fieldbus.link import ModbusDeviceError
from edge.fieldbus.rtu import RtuLink
from edge.plan import ReadPlan, ReadRequest
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.modbus_frame import LineTiming
from simulators import sim_unit
from simulators.rtu_line import serve_rtu

LINE = LineTiming(9600, "N", 1)
TURNAROUND_S, JITTER_S = 0.020, 0.002
LATE_S = 0.600  # meter-1's turnaround in the third run, past its 500 ms timeout
SDM630_30 = [
    *(f"voltage_l{i}" for i in (1, 2, 3)),
    *(f"current_l{i}" for i in (1, 2, 3)),
    *(f"power_l{i}" for i in (1, 2, 3)),
    *(f"apparent_power_l{i}" for i in (1, 2, 3)),
    *(f"reactive_power_l{i}" for i in (1, 2, 3)),
    *(f"power_factor_l{i}" for i in (1, 2, 3)),
    "voltage_avg",
    "current_sum",
    "total_power",
    "total_apparent_power",
    "total_reactive_power",
    "total_power_factor",
    "total_phase_angle",
    "frequency",
    "import_energy",
    "export_energy",
    "import_reactive_energy",
    "export_reactive_energy",
]
OTHERS = [
    ("air", "sht20_xy_md02"),
    ("drain", "dfrobot_urm14"),
    ("weather", "sensecap_one_s500"),
    ("lighting", "street_light_cabinet"),
]


def config_text(path: str) -> str:
    devices = [(f"meter-{i}", "eastron_sdm630", i, SDM630_30) for i in range(1, 9)]
    devices += [(name, prof, 10 + i, None) for i, (name, prof) in enumerate(OTHERS)]
    out = "gateway: {id: bench}\ndevices:\n"
    for dev_id, prof, unit, points in devices:
        out += (
            f"  - id: {dev_id}\n    profile: {prof}\n"
            f"    transport: {{type: modbus_rtu, port: {path}, baudrate: 9600, unit: {unit}}}\n"
            f"    poll_interval_s: 10\n    timeout_ms: 500\n    retries: 1\n"
            f"    turnaround_ms: {(TURNAROUND_S + JITTER_S / 2) * 1000}\n"
        )
        if points:
            out += f"    points: [{', '.join(points)}]\n"
    return out


def one_request_per_point(plan: ReadPlan) -> ReadPlan:
    requests = tuple(
        ReadRequest(r.register_type, p.address, p.count, (p,))
        for r in plan.requests
        for p in r.points
    )
    return ReadPlan(plan.profile, requests, plan.cost, plan.source)


async def measure(path: str, loaded, plans: dict[str, ReadPlan], seconds: float):
    link = RtuLink(path, LINE)
    pollers = [
        DevicePoller(d, plans[d.id], link, asyncio.Queue(maxsize=0)) for d in loaded.config.devices
    ]
    points = 0

    async def poll(p: DevicePoller) -> None:
        nonlocal points
        readings = await p.poll_once()
        points += sum(1 for r in readings if r.point not in (STATUS_POINT, BAD_POINTS))
        while not p.out.empty():
            p.out.get_nowait()

    with contextlib.suppress(ModbusDeviceError):
        await link.read(1, 4, 0, 2, timeout_s=0.5, retries=1)  # open the port, settle
    t0 = time.monotonic()
    while time.monotonic() < t0 + seconds:
        # One sweep: every device polled once, all at once, queueing for the line as in the
        # gateway; the next sweep starts as soon as the last device is done.
        await asyncio.gather(*(poll(p) for p in pollers))
    elapsed = time.monotonic() - t0
    errors = sum(p.stats.request_errors for p in pollers)
    wire_s = sum(p.stats.polls * (p.plan.line_time_s() or 0.0) for p in pollers)
    await link.close()
    return points / elapsed, points / wire_s, elapsed, errors, link.stats


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per variant")
    args = ap.parse_args()

    units = [sim_unit("eastron_sdm630", i, seed=f"meter-{i}") for i in range(1, 9)]
    units += [sim_unit(prof, 10 + i, seed=name) for i, (name, prof) in enumerate(OTHERS)]
    line = await serve_rtu(units, LINE, turnaround_s=TURNAROUND_S, jitter_s=JITTER_S)
    try:
        loaded = parse_config(config_text(line.path))
        ours = dict(loaded.plans)
        naive = {k: one_request_per_point(v) for k, v in ours.items()}
        print(
            f"line: 9600 8N1, char {LINE.char_s * 1e3:.3f} ms, t3.5 {LINE.t35_s * 1e3:.2f} ms, "
            f"turnaround {TURNAROUND_S * 1e3:.0f} ms + up to {JITTER_S * 1e3:.0f} ms jitter"
        )
        print(f"{'device':<10}{'profile':<22}{'points':>7}{'ours':>6}{'naive':>7}  plan")
        for dev in loaded.config.devices:
            p = ours[dev.id]
            print(
                f"{dev.id:<10}{dev.profile:<22}{p.point_count:>7}{len(p.requests):>6}"
                f"{len(naive[dev.id].requests):>7}  {p.summary()}"
            )
        results = {}
        for name, plans in (("ours", ours), ("naive", naive)):
            pps, theory, elapsed, errors, stats = await measure(
                line.path, loaded, plans, args.seconds
            )
            results[name] = (pps, theory)
            print(
                f"{name:<6} achieved {pps:7.1f} points/s  theoretical {theory:7.1f}  "
                f"utilisation {pps / theory:.3f}  ({stats.transactions} transactions in "
                f"{elapsed:.1f} s, {errors} errors, line busy {stats.busy_s / elapsed:.0%})"
            )
        line.unit_turnaround_s[1] = LATE_S
        pps, _, elapsed, errors, stats = await measure(line.path, loaded, ours, args.seconds)
        print(
            f"late   meter-1 answering {LATE_S * 1e3:.0f} ms after each request (timeout 500 ms):"
            f" {pps:.1f} points/s, {errors} failed requests; the line was held "
            f"{stats.late_wait_s:.2f} s of {elapsed:.1f} s for late answers "
            f"({stats.late_answers} answers, {stats.late_bytes} bytes discarded)"
        )
    finally:
        await line.close()
    (ours_pps, ours_theory), (naive_pps, _) = results["ours"], results["naive"]
    print(
        f"one sweep of all {sum(p.point_count for p in ours.values())} points: ours "
        f"{sum(p.line_time_s() for p in ours.values()):.2f} s, naive "
        f"{sum(p.line_time_s() for p in naive.values()):.2f} s of line time"
    )
    print(
        f"RESULT utilisation={ours_pps / ours_theory:.3f} vs_naive={ours_pps / naive_pps:.2f} "
        f"points_per_s={ours_pps:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
