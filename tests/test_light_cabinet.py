"""The street-lighting cabinet model: the sun over Hanoi, automatic mode, commands, faults."""

from __future__ import annotations

import datetime as dt

import pytest

from simulators.light_cabinet import LightCabinetModel, sun_elevation_deg

ICT = dt.timezone(dt.timedelta(hours=7))


def at(day: str, hhmm: str) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}:00").replace(tzinfo=ICT).timestamp()


@pytest.mark.parametrize(
    ("day", "sunrise", "sunset"),
    [
        ("2026-06-21", "05:12", "18:41"),  # published Hanoi times, ±5 min
        ("2026-12-21", "06:31", "17:20"),
    ],
)
def test_sun__rises_and_sets_over_hanoi_when_the_almanac_says(day, sunrise, sunset):
    def elevation(hhmm: str, minutes: int) -> float:
        return sun_elevation_deg(at(day, hhmm) + minutes * 60)

    # the upper limb crosses the horizon at about -0.83° of centre elevation
    assert elevation(sunrise, -6) < -0.83 < elevation(sunrise, 6)
    assert elevation(sunset, -6) > -0.83 > elevation(sunset, 6)


def run(model: LightCabinetModel, clock: list[float], seconds: int) -> dict:
    values = model.sample()
    for _ in range(seconds):
        clock[0] += 1.0
        values = model.sample()
    return values


def test_cabinet__automatic_mode_lights_at_night_dims_after_23_and_goes_dark_by_day():
    clock = [at("2026-11-22", "20:00")]
    model = LightCabinetModel(seed=1, clock=lambda: clock[0])
    night = model.sample()
    assert night["photocell_dark"] is True
    assert all(night[f"relay_segment_{n}"] for n in range(1, 5))
    assert night["dim_level_segment_1"] == 100
    assert night["total_power"] > 1000.0
    clock[0] = at("2026-11-22", "23:30")
    late = model.sample()
    assert late["dim_level_segment_1"] == 60 and late["total_power"] < night["total_power"]
    clock[0] = at("2026-11-23", "10:00")
    day = model.sample()
    assert day["photocell_dark"] is False and not any(
        day[f"relay_segment_{n}"] for n in range(1, 5)
    )
    assert 5.0 < day["total_power"] < 30.0  # only the controller itself
    assert day["import_energy"] > night["import_energy"]  # the meter kept counting


def test_cabinet__commands_and_faults_change_what_the_meter_measures():
    clock = [at("2026-11-22", "20:00")]
    commanded: dict = {}
    model = LightCabinetModel(seed=2, clock=lambda: clock[0], commanded=commanded)
    base = run(model, clock, 3)["total_power"]
    commanded["relay_segment_1"] = False
    off = run(model, clock, 2)
    assert off["relay_segment_1"] is False and off["total_power"] < base
    commanded["dim_level_segment_2"] = 20
    dimmed = run(model, clock, 2)
    assert dimmed["dim_level_segment_2"] == 20 and dimmed["total_power"] < off["total_power"]
    model.faults.add("leakage_trip")
    tripped = run(model, clock, 2)
    assert tripped["leakage_trip"] is True and tripped["total_power"] < 30.0
    model.faults.clear()
    model.faults.add("door_open")
    assert run(model, clock, 2)["door_open"] is True
    # Daytime with the manual switch on: every segment draws power although relays are open.
    clock[0] = at("2026-11-23", "10:00")
    model.faults = {"local_override"}
    commanded.clear()
    day = run(model, clock, 2)
    assert day["local_override"] is True and day["total_power"] > 1000.0
