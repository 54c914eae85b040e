"""Pins every shipped Modbus profile's read plans and simulated register images.

Converting the shipped profiles (to data files, to a generic simulator, to new point kinds) must
not change a single read plan or simulated answer. ``tests/pins/profile_pins.json`` holds, per
profile, what today's code produces:

* ``plans``: the read plan on a LAN, on the profile's factory RS-485 line, with a 10-register
  limit and no gap reading, and for every other point only; each request as
  ``[function code, address, count, [point names]]``;
* ``synthetic``: the registers the simulator serves for each request of the LAN plan when every
  point holds a fixed value (the encoding alone, no behaviour model);
* ``model``: the registers served by the shipped behaviour model (seed 1, a fixed clock), three
  polls one second apart, and the values the gateway decodes from them (``repr``).

Regenerate only for a change meant to alter them, and say so in the commit:
``PYTHONPATH=. python -m tests.test_profile_pins --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from devices import Profile
from edge.plan import LinkCost, ReadPlan, compile_plan
from edge.profiles import modbus_profiles
from protocols.modbus import DataType
from simulators import sim_unit
from simulators.modbus_device import ProfileSimUnit

PINS = Path(__file__).parent / "pins" / "profile_pins.json"
T0 = 1_763_800_000.0  # 2025-11-22 08:26:40 UTC, 15:26 in Hanoi


def _plan(plan: ReadPlan) -> list:
    return [
        [r.function_code, r.address, r.count, [p.name for p in r.points]] for r in plan.requests
    ]


def _synthetic_values(profile: Profile) -> dict[str, float | int | bool]:
    """A fixed value per point that its encoding holds exactly (so the image is the codec's)."""
    out: dict[str, float | int | bool] = {}
    for i, p in enumerate(profile.points):
        if p.dtype is DataType.BOOL:
            out[p.name] = i % 2 == 0
        elif p.dtype in (DataType.FLOAT32, DataType.FLOAT64):
            out[p.name] = (i + 1) * 1.5 + 0.25
        else:
            raw = 1000 + 37 * i
            out[p.name] = raw if p.scale == 1 else raw * p.scale
    return out


def _images(unit: ProfileSimUnit, plan: ReadPlan) -> list:
    out = []
    for r in plan.requests:
        words = unit.read(r.function_code, r.address, r.count)
        assert isinstance(words, list), f"the simulator refused {r}"
        out.append([r.function_code, r.address, r.count, [int(w) for w in words]])
    return out


def snapshot(profile: Profile) -> dict:
    every_other = [p.name for p in profile.points[::2]]
    plans = {
        "lan": _plan(compile_plan(profile)),
        "rtu_factory_line": _plan(
            compile_plan(profile, cost=LinkCost.rtu(profile.default_line, 0.02))
        ),
        "max10_no_gaps": _plan(compile_plan(profile, max_registers=10, max_gap_registers=0)),
        "every_other_point": _plan(compile_plan(profile, every_other)),
    }
    lan = compile_plan(profile)
    values = _synthetic_values(profile)
    synthetic = _images(ProfileSimUnit(profile, 1, lambda: values), lan)
    clock = [T0]
    unit = sim_unit(profile, 1, seed=1, clock=lambda: clock[0])
    polls = []
    for k in range(3):
        clock[0] = T0 + k
        images = _images(unit, lan)
        decoded = [
            [repr(v) for _, v in r.decode(img[3])]
            for r, img in zip(lan.requests, images, strict=True)
        ]
        polls.append({"images": images, "decoded": decoded})
    return {"plans": plans, "synthetic": synthetic, "model": polls}


def snapshots() -> dict:
    return {name: snapshot(p) for name, p in sorted(modbus_profiles().items())}


@pytest.mark.parametrize("name", sorted(modbus_profiles()))
def test_profile_pins__plans_and_simulated_registers_are_unchanged(name):
    pinned = json.loads(PINS.read_text())
    assert name in pinned, f"profile {name} is not pinned: regenerate {PINS.name} (see its test)"
    now = snapshot(modbus_profiles()[name])
    for part in ("plans", "synthetic", "model"):
        assert now[part] == pinned[name][part], f"{name}: {part} changed"


def test_profile_pins__every_shipped_profile_is_pinned():
    assert sorted(json.loads(PINS.read_text())) == sorted(modbus_profiles())


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: PYTHONPATH=. python -m tests.test_profile_pins --write")
    PINS.write_text(json.dumps(snapshots(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}")
