"""Bytes per point on the wire: our batch format v1, ThingsBoard-gateway JSON, Sparkplug B.

A simulated district (every profile that has a simulator: SDM630 three-phase meters, SDM120
single-phase meters and street-lighting cabinet controllers) is polled at 1 Hz for --hours of
simulated time. Values come from the same
simulated devices, read plans and register codec the gateway uses, so they are float32 exactly
as a meter serves them, with the model's noise; nothing is rounded. All points of one Modbus
request share its timestamp; requests of one poll are a few ms apart, as on a real TCP bridge.
The same readings are then encoded three ways, side by side:

* ours: batch format v1, batches closing every --batch-s seconds (the gateway's latency limit,
  batch_max_delay_ms, default 5 s); further latencies (--also) are encoded from the same readings
  in the same run, so the latency / size trade-off is measured side by side. The birth message
  (series dictionary) is sent once per connection and is not counted;
* ThingsBoard IoT Gateway JSON: one message per device per poll,
  {"<device>": [{"ts": ms, "values": {"<point>": value, ...}}]} (peer-thingsboard-gateway.md §3);
* Sparkplug B: one DDATA protobuf per device per poll with aliases, per-metric timestamp and
  datatype, as the Tahu reference clients send (peer-systems.md §3.4).

    pip install '.[bench]' && python bench/wire_size.py --hours 1

Last line (at --batch-s): RESULT ours_bpp=<n> json_bpp=<n> sparkplug_bpp=<n> points=<n>
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sparkplug_b import ddata

from edge.plan import compile_plan
from edge.profiles import get_profile
from protocols.batch import BatchHeader, Point, decode_batch, encode_batch
from simulators import sim_unit

T_START = 1_763_800_000.0  # a fixed day, so runs are comparable


def district(n630: int, n120: int, ncab: int):
    devices = [(f"sdm630-{i:02d}", "eastron_sdm630") for i in range(n630)]
    devices += [(f"sdm120-{i:02d}", "eastron_sdm120") for i in range(n120)]
    devices += [(f"lighting-{i:02d}", "street_light_cabinet") for i in range(ncab)]
    return devices


class Lane:
    """Our batches at one latency: accumulates points, seals a batch every ``latency`` s."""

    def __init__(self, latency: float, start: float):
        self.latency = latency
        self.next_close = start + latency
        self.batch: list[Point] = []
        self.seq = 0
        self.bytes = 0
        self.t_enc = 0.0

    def close(self, now: float) -> None:
        if not self.batch:
            return
        self.seq += 1
        t = time.perf_counter()
        payload = encode_batch(BatchHeader("gw-district", self.seq, 1, int(now * 1000)), self.batch)
        self.t_enc += time.perf_counter() - t
        self.bytes += len(payload)
        if self.seq == 1:  # check losslessness on the first batch
            assert sorted(decode_batch(payload).points) == sorted(self.batch)
        self.batch = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--sdm630", type=int, default=8)
    ap.add_argument("--sdm120", type=int, default=8)
    ap.add_argument("--cabinets", type=int, default=4, help="street-lighting controllers")
    ap.add_argument("--batch-s", type=float, default=5.0, help="batch latency (the headline)")
    ap.add_argument(
        "--also", default="10,30", help="further batch latencies in s, comma separated ('' none)"
    )
    args = ap.parse_args()

    now = [T_START]
    rng = random.Random(7)
    devs = []
    sid = 0
    for name, profile_name in district(args.sdm630, args.sdm120, args.cabinets):
        profile = get_profile(profile_name)
        unit = sim_unit(profile, 1, seed=name, clock=lambda: now[0])
        plan = compile_plan(profile)
        sids = {}
        for p in profile.points:
            sid += 1
            sids[p.name] = sid
        devs.append((name, profile_name, unit, plan, sids))

    json_b = spb = points = 0
    per_profile: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # ours, json, spb, pts
    by_profile: dict[str, list[Point]] = defaultdict(list)
    spb_seq = 0
    seconds = int(args.hours * 3600)
    latencies = [args.batch_s] + [float(x) for x in args.also.split(",") if x.strip()]
    lanes = [Lane(s, T_START) for s in latencies]
    headline = lanes[0]

    def close_headline_profiles() -> None:
        # Per-profile figures at the headline latency: the same window encoded once per profile.
        for prof, pts in by_profile.items():
            header = BatchHeader("gw-district", headline.seq, 1, int(now[0] * 1000))
            per_profile[prof][0] += len(encode_batch(header, pts))
        by_profile.clear()

    for second in range(seconds):
        base = T_START + second
        for name, prof, unit, plan, sids in devs:
            offset = rng.uniform(0, 0.02)
            values_by_ts = []
            for req in plan.requests:
                offset += rng.uniform(0.002, 0.006)  # each request a few ms after the last
                now[0] = base + offset
                regs = unit.read(req.function_code, req.address, req.count)
                ts = int(now[0] * 1000)
                for point, value in req.decode(regs):
                    pt = Point(sids[point.name], ts, value)
                    for lane in lanes:
                        lane.batch.append(pt)
                    by_profile[prof].append(pt)
                    values_by_ts.append((point.name, sids[point.name], ts, value))
            n = len(values_by_ts)
            points += n
            per_profile[prof][3] += n
            # ThingsBoard: one message per device per poll, one ts (the poll's).
            tb = json.dumps(
                {
                    name: [
                        {"ts": values_by_ts[0][2], "values": {p: v for p, _, _, v in values_by_ts}}
                    ]
                }
            ).encode()
            json_b += len(tb)
            per_profile[prof][1] += len(tb)
            spb_seq += 1
            sp = ddata(spb_seq, values_by_ts[0][2], [(s, t, v) for _, s, t, v in values_by_ts])
            spb += len(sp)
            per_profile[prof][2] += len(sp)
        for lane in lanes:
            if base + 1 >= lane.next_close:
                now[0] = lane.next_close
                lane.close(now[0])
                if lane is headline:
                    close_headline_profiles()
                lane.next_close += lane.latency
    for lane in lanes:
        lane.close(now[0])
    close_headline_profiles()
    ours = headline.bytes

    print(
        f"district: {args.sdm630} x SDM630 + {args.sdm120} x SDM120 + {args.cabinets} x "
        f"lighting cabinet at 1 Hz for "
        f"{seconds} s; batches every {args.batch_s:g} s ({headline.seq} batches)"
    )
    print(f"{'batch latency':<16}{'ours B/pt':>10}{'batches':>9}")
    for lane in lanes:
        print(f"{lane.latency:<16g}{lane.bytes / points:>10.3f}{lane.seq:>9}")
    print(f"{'profile':<16}{'ours B/pt':>10}{'json B/pt':>11}{'spB B/pt':>10}{'points':>12}")
    for prof, (o, j, s, n) in sorted(per_profile.items()):
        print(f"{prof:<16}{o / n:>10.2f}{j / n:>11.2f}{s / n:>10.2f}{n:>12}")
    print(f"encode: {headline.t_enc * 1e6 / points:.2f} us per point")
    print(
        f"totals: ours={ours} json={json_b} sparkplug={spb} bytes; "
        f"json/ours={json_b / ours:.1f}x sparkplug/ours={spb / ours:.1f}x"
    )
    print(
        f"RESULT ours_bpp={ours / points:.3f} json_bpp={json_b / points:.2f} "
        f"sparkplug_bpp={spb / points:.2f} points={points}"
    )


if __name__ == "__main__":
    main()
