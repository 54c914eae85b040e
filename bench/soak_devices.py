"""The soak's simulated cabinet as one process, logging every value it puts on the wire.

    python bench/soak_devices.py DIR

Serves, from the same profiles and models as ``edge sim``:

* Modbus TCP ``127.0.0.1:<port>``: two Eastron SDM630 (units 1 and 2);
* Modbus TCP ``127.0.0.1:<port>``: a street-lighting cabinet controller (unit 3);
* an RS-485 line on a pseudo-terminal at 9600 8N1, paced at wire speed: an SDM630 (unit 5).

Writes ``DIR/devices.json`` ({"tcp": {unit: port}, "rtu": pty path}) once everything listens.
Reads ``DIR/control.json`` every 50 ms for the faults the harness switches on:

* ``"special": true``  unit 2 serves, on six of its float32 points, values that are not ordinary
  numbers: NaN (0x7FC00000), +inf, -inf, -0.0, a float32 subnormal (2**-140), and a NaN with a
  payload (0x7FA00001), rotating each second;
* ``"slow": true``     unit 5 answers 450 ms after a request (the gateway waits 300 ms): every
  answer arrives late, after the master gave up on it.

Appends one line per value served to ``DIR/served.log``: ``<unix ms> <device> <point> <value>``,
the device named as the soak's config names it (``<profile>-<unit>``) and the value as the wire
carried it, decoded back: ``f:<float64 bits in hex>`` or ``i:<int>``. The harness compares each
delivered reading with this record (``wrong_value``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols.modbus_frame import LineTiming  # noqa: E402
from simulators import serve_modbus_tcp, sim_unit  # noqa: E402
from simulators.modbus_device import ProfileSimUnit  # noqa: E402
from simulators.rtu_line import serve_rtu  # noqa: E402

SPECIAL_POINTS = ("voltage_l3", "current_l3", "power_l3", "frequency", "total_power", "power_l2")


def _f32(bits: int) -> float:
    return struct.unpack(">f", bits.to_bytes(4, "big"))[0]


SPECIALS = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    _f32(0x00000400),  # 2**-140, a float32 subnormal
    _f32(0x7FA00001),  # a NaN with a payload (signalling in IEEE 754-2008 terms)
)


def value_key(value: float | int | bool) -> str:
    """A value as compared by the harness: float64 bits for floats, the integer otherwise."""
    if isinstance(value, float):
        return "f:" + struct.pack(">d", value).hex()
    return f"i:{int(value)}"


def read_served(path: Path) -> dict[tuple[str, str], tuple[list[int], list[str]]]:
    """``served.log`` as (device, point) -> (times in ms, value keys), in serving order."""
    served: dict[tuple[str, str], tuple[list[int], list[str]]] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue  # the last line, cut by the devices' stop
            ts, device, point, key = parts
            times, keys = served.setdefault((device, point), ([], []))
            times.append(int(ts))
            keys.append(key)
    return served


class Cabinet:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.control: dict[str, bool] = {}
        self.log = open(folder / "served.log", "a", buffering=1 << 16)

    def served(self, device: str):
        def record(point: str, value: float | int) -> None:
            self.log.write(f"{int(time.time() * 1000)} {device} {point} {value_key(value)}\n")

        return record

    def unit(self, profile: str, unit_id: int, special: bool = False) -> ProfileSimUnit:
        sim = sim_unit(profile, unit_id, seed=f"soak:{unit_id}")
        sim.on_served = self.served(f"{profile}-{unit_id}")
        if special:
            base = sim._model

            def model() -> dict[str, float | int | bool]:
                values = dict(base())
                if self.control.get("special"):
                    second = int(time.time())
                    for i, name in enumerate(SPECIAL_POINTS):
                        values[name] = SPECIALS[(second + i) % len(SPECIALS)]
                return values

            sim._model = model
        return sim

    async def run(self) -> None:
        meters = await serve_modbus_tcp(
            [self.unit("eastron_sdm630", 1), self.unit("eastron_sdm630", 2, special=True)]
        )
        lights = await serve_modbus_tcp([self.unit("street_light_cabinet", 3)])
        line = await serve_rtu([self.unit("eastron_sdm630", 5)], LineTiming(9600))
        where = {"tcp": {1: meters.port, 2: meters.port, 3: lights.port}, "rtu": line.path}
        tmp = self.dir / "devices.json.tmp"
        tmp.write_text(json.dumps(where))
        os.replace(tmp, self.dir / "devices.json")
        control = self.dir / "control.json"
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            while True:
                await asyncio.sleep(0.05)
                try:
                    self.control = json.loads(control.read_text())
                except (OSError, ValueError):
                    pass  # not written yet, or being replaced
                line.unit_turnaround_s = {5: 0.450} if self.control.get("slow") else {}
                self.log.flush()
        finally:
            self.log.flush()
            for s in (meters, lights, line):
                await s.close()


def main() -> None:
    folder = Path(sys.argv[1])
    try:
        asyncio.run(Cabinet(folder).run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


if __name__ == "__main__":
    main()
