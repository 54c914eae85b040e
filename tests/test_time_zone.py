"""Processing windows of an hour or more follow the gateway's local time zone (``time.zone``).

Windows under an hour align to the Unix epoch; from an hour up, a window starts at local
midnight and whenever the local clock reads a multiple of its length after midnight (or jumps
over one). Every timestamp stays UTC: a window's readings are stamped with its start instant.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.agent.processing import Processor, WindowClock
from edge.config import ConfigError, parse_config
from edge.shared.clock import PENDING, FileClock, system_zone
from protocols.batch import Reading

UTC = dt.UTC


def ms(iso: str) -> int:
    """Unix ms of an ISO time with its offset ("2025-11-22T19:00+07:00")."""
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def local(ts_ms: int, zone: str) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(zone)).isoformat(timespec="minutes")


def config(processing: str, zone: str | None, interval: float = 1.0):
    time_section = f"time: {{zone: {zone}}}\n" if zone else ""
    return parse_config(
        f"""gateway: {{id: g}}
{time_section}devices:
  - id: pm
    profile: plantower_pms5003
    transport: {{type: uart, port: /dev/ttyUSB1}}
    poll_interval_s: {interval}
    timeout_ms: 500
    retries: 0
    points: [pm2_5, pm10]
    processing:
      - {processing}
""",
        "zone.yaml",
    )


def processor(window_s: float, zone: str | None) -> Processor:
    loaded = config(f"{{points: [pm2_5], window_s: {window_s}, aggregates: [first, count]}}", zone)
    return Processor(loaded.config.devices, {"pm": ["pm2_5", "pm10"]}, loaded.time_zone()[0])


def windows(proc: Processor, stamps: list[int]) -> list[tuple[int, int]]:
    """(start, count) of every window the readings at ``stamps`` fall in, in order."""
    out = proc.process([Reading("pm", "pm2_5", t, i) for i, t in enumerate(stamps)])
    out += proc.flush(stamps[-1], everything=True)
    return [(r.ts_ms, r.value) for r in out if r.point == "pm2_5.count"]


# --------------------------------------------------------------------------- the field case


def test_processing__hanoi_day_window_cuts_at_local_midnight_not_at_utc():
    """19:00 on day D and 01:00 on D+1 in Hanoi are two days: their windows start 00:00 local
    on D and on D+1 (17:00 UTC the day before), not one window starting 07:00 local."""
    proc = processor(86_400, "Asia/Ho_Chi_Minh")
    got = windows(proc, [ms("2025-11-22T19:00+07:00"), ms("2025-11-23T01:00+07:00")])
    assert got == [(ms("2025-11-22T00:00+07:00"), 1), (ms("2025-11-23T00:00+07:00"), 1)]
    assert got[0][0] == ms("2025-11-21T17:00Z")


# --------------------------------------------------------------------------- the kind

CASES = [
    # zone, window_s, reading times, the (local start, count) of each window
    pytest.param(
        "Europe/Berlin", 86_400,
        ["2025-03-29T23:30+01:00", "2025-03-30T01:59+01:00", "2025-03-30T03:01+02:00",
         "2025-03-30T23:59+02:00", "2025-03-31T00:00+02:00"],
        [("2025-03-29T00:00+01:00", 1), ("2025-03-30T00:00+01:00", 3),
         ("2025-03-31T00:00+02:00", 1)],
        id="berlin-spring-forward-day-is-23h",
    ),
    pytest.param(
        "Europe/Berlin", 86_400,
        ["2025-10-26T00:10+02:00", "2025-10-26T02:30+02:00", "2025-10-26T02:30+01:00",
         "2025-10-26T23:59+01:00", "2025-10-27T00:00+01:00"],
        [("2025-10-26T00:00+02:00", 4), ("2025-10-27T00:00+01:00", 1)],
        id="berlin-fall-back-day-is-25h",
    ),
    pytest.param(
        "Europe/Berlin", 3600,
        ["2025-10-26T02:10+02:00", "2025-10-26T02:50+02:00", "2025-10-26T02:10+01:00",
         "2025-10-26T03:10+01:00"],
        [("2025-10-26T02:00+02:00", 2), ("2025-10-26T02:00+01:00", 1),
         ("2025-10-26T03:00+01:00", 1)],
        id="berlin-hourly-the-repeated-hour-is-two-windows",
    ),
    pytest.param(
        "Europe/Berlin", 3600,
        ["2025-03-30T01:10+01:00", "2025-03-30T01:59+01:00", "2025-03-30T03:00+02:00",
         "2025-03-30T03:59+02:00"],
        [("2025-03-30T01:00+01:00", 2), ("2025-03-30T03:00+02:00", 2)],
        id="berlin-hourly-across-the-skipped-hour",
    ),
    pytest.param(
        "Europe/Berlin", 10_800,
        ["2025-03-30T00:10+01:00", "2025-03-30T03:30+02:00", "2025-10-26T02:30+02:00",
         "2025-10-26T02:30+01:00", "2025-10-26T03:00+01:00"],
        [("2025-03-30T00:00+01:00", 1), ("2025-03-30T03:00+02:00", 1),
         ("2025-10-26T00:00+02:00", 2), ("2025-10-26T03:00+01:00", 1)],
        id="berlin-3h-windows-are-2h-and-4h-on-change-days",
    ),
    pytest.param(
        "Asia/Kolkata", 3600,
        ["2025-11-22T10:00+05:30", "2025-11-22T10:59+05:30", "2025-11-22T11:00+05:30"],
        [("2025-11-22T10:00+05:30", 2), ("2025-11-22T11:00+05:30", 1)],
        id="kolkata-hourly-starts-at-local-00",
    ),
    pytest.param(
        "Asia/Kathmandu", 3600,
        ["2025-11-22T10:10+05:45", "2025-11-22T10:50+05:45", "2025-11-22T11:05+05:45"],
        [("2025-11-22T10:00+05:45", 2), ("2025-11-22T11:00+05:45", 1)],
        id="kathmandu-hourly-starts-at-local-00",
    ),
    pytest.param(
        "Asia/Kathmandu", 1800,
        ["2025-11-22T10:10+05:45", "2025-11-22T10:20+05:45"],
        [("2025-11-22T09:45+05:45", 1), ("2025-11-22T10:15+05:45", 1)],
        id="kathmandu-under-an-hour-stays-on-the-epoch",
    ),
    pytest.param(
        "Asia/Ho_Chi_Minh", 25_200,
        ["2025-11-22T06:59+07:00", "2025-11-22T20:00+07:00", "2025-11-22T21:00+07:00",
         "2025-11-22T23:59+07:00", "2025-11-23T00:00+07:00"],
        [("2025-11-22T00:00+07:00", 1), ("2025-11-22T14:00+07:00", 1),
         ("2025-11-22T21:00+07:00", 2), ("2025-11-23T00:00+07:00", 1)],
        id="hanoi-7h-window-that-does-not-divide-a-day-ends-at-midnight",
    ),
    pytest.param(
        "Asia/Ho_Chi_Minh", 5400,
        ["2025-11-22T01:29+07:00", "2025-11-22T01:30+07:00", "2025-11-22T23:59+07:00"],
        [("2025-11-22T00:00+07:00", 1), ("2025-11-22T01:30+07:00", 1),
         ("2025-11-22T22:30+07:00", 1)],
        id="hanoi-90-min-windows-from-local-midnight",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "window_s", "readings", "want"), CASES)
def test_processing__windows_of_an_hour_or_more_start_at_local_time(zone, window_s, readings, want):
    got = windows(processor(window_s, zone), [ms(t) for t in readings])
    assert [(local(start, zone), n) for start, n in got] == [
        (local(ms(start), zone), n) for start, n in want
    ]
    assert [start for start, _ in got] == [ms(start) for start, _ in want]


def test_processing__without_a_zone_windows_align_to_utc():
    proc = Processor(
        config("{points: [pm2_5], window_s: 86400}", "Asia/Ho_Chi_Minh").config.devices, {}
    )
    assert proc.windows[("pm", "pm2_5")].clock.bounds(ms("2025-11-22T19:00+07:00")) == (
        ms("2025-11-22T00:00Z"),
        ms("2025-11-23T00:00Z"),
    )


def test_processing__held_samples_keep_their_boot_time_in_a_local_window():
    """Samples stamped while the clock was untrusted (a 1970 wall clock) make a held window
    that the buffer re-times like its samples; a wild clock past year 9999 falls back to UTC
    alignment instead of failing."""
    proc = processor(86_400, "Asia/Ho_Chi_Minh")
    held = [
        Reading("pm", "pm2_5", 5_000 + i * 1000, 10 + i, PENDING, 9_000 + i * 1000) for i in (0, 1)
    ]
    out = proc.process(held) + proc.flush(0, everything=True)
    first = next(r for r in out if r.point == "pm2_5.first")
    assert first.tq == PENDING and first.value == 10
    assert first.boot_ms - first.ts_ms == held[-1].boot_ms - held[-1].ts_ms
    assert first.ts_ms == ms("1970-01-01T00:00+08:00")  # Saigon kept UTC+08 until 1975
    wild = 400_000_000_000_000  # year 14645
    start, end = proc.windows[("pm", "pm2_5")].clock.bounds(wild)
    assert start <= wild < end and start % 86_400_000 == 0


# --------------------------------------------------------------------------- a reference


def _on_slot(wall: dt.datetime, window_s: int) -> bool:
    return (wall.hour * 3600 + wall.minute * 60 + wall.second) % window_s == 0


@functools.lru_cache(maxsize=200_000)
def _wall(zone: str, minute: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(minute * 60, ZoneInfo(zone)).replace(tzinfo=None)


def _is_boundary(zone: str, window_s: int, minute: int) -> bool:
    """Whether a window starts at this UTC minute: the local clock reads a multiple of the
    window after midnight, or just jumped forward over one (every offset here is whole
    minutes, so every boundary is on a UTC minute)."""
    prev, cur = _wall(zone, minute - 1), _wall(zone, minute)
    if _on_slot(cur, window_s):
        return True
    skipped = prev + dt.timedelta(minutes=1)
    while skipped < cur:
        if _on_slot(skipped, window_s):
            return True
        skipped += dt.timedelta(minutes=1)
    return False


def reference_bounds(zone: str, window_s: int, ts_ms: int) -> tuple[int, int]:
    """Walk minute by minute from ``ts_ms`` back to the last boundary and on to the next."""
    start = ts_ms // 60_000
    while not _is_boundary(zone, window_s, start):
        start -= 1
    end = start + 1
    while not _is_boundary(zone, window_s, end):
        end += 1
    return start * 60_000, end * 60_000


ZONES = [
    "Europe/Berlin",  # DST at 02:00 / 03:00
    "America/New_York",
    "America/Havana",  # DST at midnight: some days have no 00:00
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Asia/Ho_Chi_Minh",
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]


@functools.cache
def _changes(zone: str) -> list[int]:
    """Unix ms of every change of the zone's UTC offset, 2000-2035."""
    z, out = ZoneInfo(zone), []

    def offset(t: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(t / 1000, z).utcoffset()

    day, last = ms("2000-01-01T00:00Z"), None
    while day < ms("2036-01-01T00:00Z"):
        if last is not None and offset(day) != last:
            lo, hi = day - 86_400_000, day  # the change lies in between: find its second
            while hi - lo > 1000:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == last else (lo, mid)
            out.append(hi)
        last = offset(day)
        day += 86_400_000
    return out


@st.composite
def instants(draw, zone: str) -> int:
    changes = _changes(zone)
    near = draw(st.sampled_from(["change", "day", "anywhere"] if changes else ["anywhere"]))
    if near == "anywhere":
        return draw(st.integers(ms("2000-01-01T00:00Z"), ms("2035-12-31T00:00Z")))
    hours = 3 if near == "change" else 40  # where windows bend
    return draw(st.sampled_from(changes)) + draw(st.integers(-hours * 3_600_000, hours * 3_600_000))


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_window_clock__starts_where_the_local_clock_reads_a_multiple_of_the_window(data):
    zone = data.draw(st.sampled_from(ZONES))
    window_s = data.draw(st.sampled_from([3600, 5400, 7200, 10_800, 21_600, 25_200, 86_400]))
    ts = data.draw(instants(zone))
    assert WindowClock(window_s, ZoneInfo(zone)).bounds(ts) == reference_bounds(
        zone, window_s, ts
    ), (zone, window_s, local(ts, zone))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ("Asia/Hanoi", "unknown time zone 'Asia/Hanoi': an IANA name such as Asia/Ho_Chi_Minh"),
        (
            "asia/ho_chi_minh",
            "unknown time zone 'asia/ho_chi_minh': did you mean Asia/Ho_Chi_Minh?",
        ),
        ("/etc/passwd", "unknown time zone '/etc/passwd'"),
        ("'+07:00'", "unknown time zone '+07:00'"),
    ],
)
def test_config__an_unknown_time_zone_is_an_error_at_its_place(zone, message):
    with pytest.raises(ConfigError) as info:
        config("{window_s: 3600}", zone)
    assert f"zone.yaml:2:14: time.zone: {message}" in str(info.value)


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ("localtime", "leave time.zone out to follow the system's zone"),
        ("posixrules", "the zone database's default rules file"),
        ("right/Asia/Ho_Chi_Minh", "count leap seconds (27 s off UTC): use Asia/Ho_Chi_Minh"),
        ("posix/Europe/Berlin", "use Europe/Berlin"),
    ],
)
def test_config__a_zone_file_that_is_not_an_iana_name_is_an_error_at_its_place(zone, message):
    """These load from the zone database, but the birth's time_zone would name nothing a
    consumer can look up (``localtime`` is the gateway's own machine's zone)."""
    with pytest.raises(ConfigError) as info:
        config("{window_s: 3600}", zone)
    assert f"zone.yaml:2:14: time.zone: time zone {zone!r} is not an IANA" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("tzpath", [None, ""], ids=["os-database", "tzdata-only"])
def test_config__a_system_zone_from_a_copied_file_is_named_by_its_iana_name(tmp_path, tzpath):
    """A machine whose /etc/localtime (or TZ=<path>) is a copy, not a link: the zone is named
    by the database zone with the same bytes (the birth's time_zone), never by the path or
    'localtime'; a link's real path names it too (TZ pointing at right/ or an alias)."""
    copy = tmp_path / "localtime"
    copy.write_bytes(
        importlib.resources.files("tzdata").joinpath("zoneinfo", "Asia", "Ho_Chi_Minh").read_bytes()
    )
    path = tmp_path / "g.yaml"
    path.write_text("gateway: {id: g}\n")
    env = {**os.environ, "TZ": str(copy)}
    if tzpath is not None:
        env["PYTHONTZPATH"] = tzpath
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )
    assert f"zone Asia/Ho_Chi_Minh (TZ={copy}, UTC+07:00 now)" in res.stdout, (
        res.stdout + res.stderr
    )


def test_config__a_system_zone_linked_to_an_alias_or_a_right_zone_is_named(monkeypatch):
    if not Path("/usr/share/zoneinfo/right/Asia/Ho_Chi_Minh").exists():
        pytest.skip("this machine's zone database has no right/ zones")
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/right/Asia/Ho_Chi_Minh")
    assert str(system_zone()[0]) == "Asia/Ho_Chi_Minh"
    monkeypatch.setenv("TZ", "localtime")  # not a name: the machine's zone, named
    assert str(system_zone()[0]) != "localtime"


def test_config__the_zone_defaults_to_the_system_one(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    zone, source = config("{window_s: 3600}", None).time_zone()
    assert str(zone) == "Asia/Kolkata" and source == "TZ"
    monkeypatch.setenv("TZ", "Asia/Ho_Chi_Minh")
    assert config("{window_s: 3600}", "Europe/Berlin").time_zone() == (
        ZoneInfo("Europe/Berlin"),
        "time.zone",
    )


def test_config__zones_resolve_without_the_os_database(tmp_path):
    """A machine without /usr/share/zoneinfo (a slim container) still knows every zone: the
    ``tzdata`` dependency is zoneinfo's fallback (PYTHONTZPATH empty hides the OS's)."""
    path = tmp_path / "g.yaml"
    path.write_text("gateway: {id: g}\ntime: {zone: Asia/Ho_Chi_Minh}\n")
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONTZPATH": ""},
    )
    assert res.returncode == 0, res.stderr
    assert "time: zone Asia/Ho_Chi_Minh (time.zone, UTC+07:00 now)" in res.stdout


def test_check__prints_the_zone_and_which_windows_follow_it(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        """gateway: {id: g}
time: {zone: Asia/Kathmandu}
devices:
  - id: pm
    profile: plantower_pms5003
    transport: {type: uart, port: /dev/ttyUSB1}
    poll_interval_s: 1
    timeout_ms: 500
    retries: 0
    points: [pm2_5, pm10]
    processing:
      - {points: [pm2_5], window_s: 3600}
      - {points: [pm10], window_s: 60}
"""
    )
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check", str(path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert (
        "time: zone Asia/Kathmandu (time.zone, UTC+05:45 now), clock trust auto; windows of "
        "3600 s align to local time; 60 s windows align to UTC (under an hour)"
    ) in res.stdout


# --------------------------------------------------------------------------- end to end


@pytest.mark.system
async def test_gateway__hourly_window_in_kathmandu_is_stamped_with_the_local_hour(
    tmp_path, mosquitto, sim_sdm630, monkeypatch
):
    """A gateway in Asia/Kathmandu (+05:45) whose clock is 8 s before a local hour:
    the window that closes there reaches the platform stamped at that hour's local :00 (UTC
    :15), and the birth names the zone."""
    from tests.conftest import gateway_yaml, wait_until
    from tests.test_system import Collector, start_gateway, stop

    offset_ms = (5 * 60 + 45) * 60_000
    now = int(time.time() * 1000)
    hour = 3_600_000
    boundary = ((now + offset_ms) // hour + 1) * hour - offset_ms  # the next local :00
    clock = tmp_path / "clock.json"
    FileClock.write(clock, boundary - now - 8000, synced=True)  # 8 s before it
    monkeypatch.setenv("EDGE_CLOCK_FILE", str(clock))
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port,
        units=(1,),
    )  # fmt: skip
    text = text.replace("devices:", "time: {trust: plausible, zone: Asia/Kathmandu}\ndevices:")
    text += "    processing:\n      - {points: [frequency], window_s: 3600, aggregates: [count]}\n"
    async with Collector(mosquitto.url) as col:
        gateway, task = await start_gateway(tmp_path, text)
        try:
            await wait_until(
                lambda: any(r.point == "frequency.count" for r in col.readings),
                40,
                what="the window that closed at the local hour",
            )
        finally:
            await stop(task)
    closed = [r for r in col.readings if r.point == "frequency.count"]
    assert closed[0].ts_ms == boundary - hour, local(closed[0].ts_ms, "Asia/Kathmandu")
    assert local(closed[0].ts_ms, "Asia/Kathmandu").endswith(":00+05:45")
    assert closed[0].value >= 3  # the polls of the seconds before the hour
    assert not [r for r in col.readings if r.point == "frequency"]  # no raw: the window only
    assert col.tally().birth is not None
    assert col.tally().birth.extra["time_zone"] == "Asia/Kathmandu"
    assert gateway.zone == ZoneInfo("Asia/Kathmandu")
