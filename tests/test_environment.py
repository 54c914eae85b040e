"""The environmental sensor models: plausible Hanoi values, water that rises with rain."""

from __future__ import annotations

from simulators.environment import ThermoHygroModel, WaterLevelModel, WeatherStationModel

T0 = 1_763_780_400.0  # 2025-11-22 10:00 in Hanoi


def test_water_level__rises_while_it_rains_and_drains_after():
    t = [T0]
    model = WaterLevelModel(seed=4, clock=lambda: t[0])
    dry = model.sample()["distance"]
    assert 2300 < dry < 2400  # 2.5 m mount over ~12 cm of standing water
    model.weather._storm_left_s, model.weather.rain_mm_h = 1800.0, 40.0  # a downpour starts
    for _ in range(1800):
        t[0] += 1.0
        model.sample()
    wet = model.sample()["distance"]
    assert wet < dry - 200  # the street flooded by more than 20 cm
    model.weather._storm_left_s, model.weather.rain_mm_h = 0.0, 0.0
    for _ in range(3 * 3600 // 5):
        t[0] += 5.0
        model.sample()
    assert model.sample()["distance"] > wet + 150  # and it drained


def test_weather_and_climate__plausible_over_a_day():
    t = [T0]
    station = WeatherStationModel(seed=1, clock=lambda: t[0])
    air = ThermoHygroModel(seed=2, clock=lambda: t[0])
    noon = night = None
    for minute in range(24 * 60):
        t[0] = T0 + minute * 60
        w, a = station.sample(), air.sample()
        assert 5 < w["air_temperature"] < 35 and 20 <= w["air_humidity"] <= 100
        assert 99_000 < w["barometric_pressure"] < 104_000
        assert 0 <= w["wind_speed_min"] <= w["wind_speed_avg"] <= w["wind_speed_max"] < 40
        assert 0 <= w["wind_direction_avg"] < 360
        assert 5 < a["temperature"] < 40 and 0 <= a["humidity"] <= 100
        if minute == 2 * 60:  # 12:00
            noon = w["light_intensity"]
        if minute == 14 * 60:  # 00:00
            night = w["light_intensity"]
    assert noon > 10_000 and night == 0.0
