"""The status page in a real headless Chromium, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from edge.uplink.broker import free_port
from tests.chromium import BINARY, Chromium
from tests.conftest import gateway_yaml, wait_until
from tests.test_system import start_gateway, stop

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
needs_chromium = pytest.mark.skipif(
    BINARY is None and not os.environ.get("EDGE_REQUIRE_CHROMIUM"),
    reason="chromium is not installed (apt-get install chromium); CI installs it",
)


def status_yaml(tmp_path, broker_port: int, sim_port: int, page_port: int, extra: str = "") -> str:
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=broker_port, sim_port=sim_port, timeout_ms=150
    )
    return text.replace(
        "devices:", f"status: {{listen: '127.0.0.1:{page_port}'{extra}}}\ndevices:", 1
    )


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.system
@needs_chromium
async def test_status_page__shows_a_device_going_offline_in_a_real_browser(
    mosquitto, sim_sdm630, tmp_path
):
    port = free_port()
    gateway, task = await start_gateway(
        tmp_path, status_yaml(tmp_path, mosquitto.port, sim_sdm630.port, port)
    )
    browser = await asyncio.to_thread(Chromium)
    try:
        await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 1, 15, what="a batch")
        await asyncio.to_thread(browser.open, f"http://127.0.0.1:{port}/")

        async def text(selector: str) -> str:
            js = f"(document.querySelector({selector!r}) || {{innerText: ''}}).innerText"
            return await asyncio.to_thread(browser.evaluate, js) or ""

        await wait_until_async(lambda: text("#dev-meter-2"), "online", 10)
        assert "connected" in await text("#uplink")
        meter = await text("#dev-meter-1")
        assert "voltage_l1" in meter and " V" in meter and " Hz" in meter, meter
        clock = await text("#clock")
        assert "trusted" in clock and "readings held 0" in clock, clock
        sim_sdm630.silent_units.add(2)  # meter-2 dies
        # The page refreshes itself every 2 s: the same page, not a reload, shows it.
        await wait_until_async(lambda: text("#dev-meter-2"), "offline", 8)
        assert "online" in await text("#dev-meter-1")
        since = await text("#dev-meter-2 .since")
        assert re.fullmatch(r"since \d\d:\d\d:\d\d", since), since  # today, 24 h
        await asyncio.to_thread(browser.screenshot, ARTIFACTS / "status-page.png")
        assert (ARTIFACTS / "status-page.png").stat().st_size > 5000
        await asyncio.to_thread(browser.screenshot, tmp_path / "status-page-en.png")
    finally:
        await asyncio.to_thread(browser.close)
        await stop(task)


@pytest.mark.system
@pytest.mark.slow
@needs_chromium
async def test_status_page__in_vietnamese_key_points_first_with_units_trends_and_offline_since(
    mosquitto, sim_sdm630, tmp_path
):
    """A browser asking for Vietnamese gets the page in Vietnamese with decimal commas; each
    value has its unit; the profile's key points (voltage, frequency) come first in profile
    order, the rest folded behind a tap; a key point draws its trend; an offline device says
    since when, 24 h."""
    port = free_port()
    points = "[power_factor_l1, frequency, apparent_power_l1, voltage_l1]"  # not profile order
    text_ = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port,
        timeout_ms=150, points=points,
    ).replace("devices:", f"status: {{listen: '127.0.0.1:{port}'}}\ndevices:", 1)  # fmt: skip
    gateway, task = await start_gateway(tmp_path, text_)
    browser = await asyncio.to_thread(Chromium)
    try:
        await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 1, 15, what="a batch")
        await asyncio.to_thread(
            browser.open, f"http://127.0.0.1:{port}/", "vi-VN,vi;q=0.9,en;q=0.5"
        )

        async def js(expr: str):
            return await asyncio.to_thread(browser.evaluate, expr)

        async def text(selector: str) -> str:
            return (
                await js(f"(document.querySelector({selector!r}) || {{innerText: ''}}).innerText")
                or ""
            )

        await wait_until_async(lambda: text("#dev-meter-2"), "trực tuyến", 10)
        assert await js("document.documentElement.lang") == "vi"
        words = (await text("body")).lower()  # what is shown (headings are upper-cased)
        assert "thiết bị" in words and "devices" not in words and "online" not in words
        shown = await js(
            "[...document.querySelectorAll('#dev-meter-1 > .vals .val')].map(e => e.dataset.point)"
        )
        assert shown == ["voltage_l1", "frequency"], shown  # key points, profile order
        folded = await js(
            "[...document.querySelectorAll('#dev-meter-1 details .val')].map(e => e.dataset.point)"
        )
        assert folded == ["apparent_power_l1", "power_factor_l1"], folded
        volts = await text("#dev-meter-1 [data-point=voltage_l1]")
        assert re.search(r"\d+,\d+ V$", volts), volts  # decimal comma, unit
        assert (await text("#dev-meter-1 [data-point=frequency]")).endswith(" Hz")
        assert "VA" in await js(
            "document.querySelector('#dev-meter-1 details [data-point=apparent_power_l1]')"
            ".textContent"
        )
        # A trend from the samples the gateway kept (one every 5 s), drawn inline.
        deadline = asyncio.get_running_loop().time() + 20
        while not await js(
            "!!document.querySelector('#dev-meter-1 [data-point=voltage_l1] svg polyline')"
        ):
            assert asyncio.get_running_loop().time() < deadline, "no trend drawn"
            await asyncio.sleep(0.5)
        assert not await js("!!document.querySelector('details svg')")  # key points only
        await asyncio.to_thread(browser.screenshot, tmp_path / "status-page-vi.png")
        sim_sdm630.silent_units.add(2)  # meter-2 dies
        await wait_until_async(lambda: text("#dev-meter-2"), "ngoại tuyến", 8)
        since = await text("#dev-meter-2 .since")
        assert re.fullmatch(r"từ \d\d:\d\d:\d\d", since), since
        # A moment not today shows its date, the Vietnamese way.
        day = await js('when({time: "23:05:09", date: "2026-11-29"})')
        assert day == "29/11/2026 23:05:09", day
        await asyncio.to_thread(browser.screenshot, tmp_path / "status-page-vi-offline.png")
        assert (tmp_path / "status-page-vi-offline.png").stat().st_size > 5000
    finally:
        await asyncio.to_thread(browser.close)
        await stop(task)


async def wait_until_async(get_text, needle: str, within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    last = ""
    while asyncio.get_running_loop().time() < deadline:
        last = await get_text()
        if needle in last:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{needle!r} never appeared; last text: {last!r}")


@pytest.mark.system
async def test_metrics_and_token(mosquitto, sim_sdm630, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o600)  # a secret file: owner-only, or the page stays closed
    port = free_port()
    text = status_yaml(
        tmp_path, mosquitto.port, sim_sdm630.port, port, ", token_file: token"
    ).replace("'127.0.0.1:", "'0.0.0.0:")
    gateway, task = await start_gateway(tmp_path, text)
    try:
        await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 1, 15, what="a batch")
        base = f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(get, base + "/metrics"))[0] == 401
        status, body = await asyncio.to_thread(get, base + "/metrics?token=s3cret")
        assert status == 200
        assert 'edge_polls_total{device="meter-1"}' in body
        assert "edge_uplink_connected 1" in body and "edge_batches_sent_total" in body
        assert 'edge_readings_dropped_total{reason="buffer_full_evicted"} 0' in body
        assert 'edge_readings_dropped_total{reason="buffer_corrupt_lost"} 0' in body
        assert "edge_clock_steps_total 0" in body and "edge_readings_held 0" in body
        endpoint = f'{{endpoint="modbus_tcp://127.0.0.1:{sim_sdm630.port}",connection="0"}}'
        assert f"edge_tcp_connects_total{endpoint} 1" in body, body
        assert f"edge_tcp_stale_answers_total{endpoint} 0" in body
        status, raw = await asyncio.to_thread(
            get, base + "/status.json", {"Authorization": "Bearer s3cret"}
        )
        assert status == 200
        state = json.loads(raw)
        assert state["clock"]["held_readings"] == 0 and state["clock"]["why"]
        assert state["buffer"]["corrupt_lost_total"] == 0
    finally:
        await stop(task)


def test_status__exposing_the_page_needs_a_token(tmp_path):
    from edge.config import ConfigError, parse_config

    text = status_yaml(tmp_path, 1883, 5020, 8080).replace("'127.0.0.1:", "'0.0.0.0:")
    with pytest.raises(ConfigError, match=r"set status\.token_file"):
        parse_config(text, "s.yaml", tmp_path)


@pytest.mark.system
async def test_status_page__refused_commands_never_push_device_problems_off_recent(
    mosquitto, sim_sdm630, tmp_path
):
    """Forty refused commands pushed a device's real error off "recent problems" (one list of
    30). Refused commands have a budget of their own: the device's problem stays."""
    import aiomqtt

    sim_sdm630.silent_units.add(2)  # meter-2 never answers: one ERROR, then DEBUG
    port = free_port()
    gateway, task = await start_gateway(
        tmp_path, status_yaml(tmp_path, mosquitto.port, sim_sdm630.port, port)
    )
    base = f"http://127.0.0.1:{port}"

    async def recent() -> list[dict]:
        status, raw = await asyncio.to_thread(get, base + "/status.json")
        assert status == 200
        return json.loads(raw)["recent"]

    try:
        await wait_until(lambda: gateway.forwarder.stats.commands_subscribed, 15, what="cmd sub")
        deadline = asyncio.get_running_loop().time() + 15
        while not any("device meter-2" in e["message"] for e in await recent()):
            assert asyncio.get_running_loop().time() < deadline, "meter-2's error never shown"
            await asyncio.sleep(0.2)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as platform:
            for i in range(100):
                await platform.publish(
                    "city/v1/test/gw-test/cmd", json.dumps({"id": i, "cmd": "nope"}), qos=1
                )
        await wait_until(lambda: gateway.commands.stats.refused >= 100, 15, what="refusals")
        shown = await recent()
        device = [e for e in shown if "device meter-2" in e["message"]]
        assert device, shown
        assert device[0]["category"] == "gateway" and device[0]["level"] == "ERROR"
        refused = [e for e in shown if "refused" in e["message"]]
        assert refused and all(e["category"] == "command" for e in refused)
        assert "command 99 refused" in refused[0]["message"]  # the newest first
        times = [e["time"] for e in shown]
        assert times == sorted(times, reverse=True)  # newest first, across both budgets
    finally:
        await stop(task)


async def test_status__rs485_lines_offline_since_and_times_in_the_gateways_zone(tmp_path):
    """/status.json gives each RS-485 line's busy share and error counters, an offline
    device's "since", and times 24 h in time.zone (Hanoi here, the machine runs UTC), with the
    date when it is not today there; the language is the browser's by q, or the setting's."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from edge.agent.gateway import Gateway
    from edge.config import parse_config
    from edge.ops.status import StatusServer
    from protocols.modbus_frame import LineTiming
    from simulators import sim_unit
    from simulators.rtu_line import serve_rtu

    units = [sim_unit("eastron_sdm630", 1, seed="page"), sim_unit("sht20_xy_md02", 3, seed="p")]
    sim = await serve_rtu(units, LineTiming(9600, "N", 1))
    devices = "".join(
        f"""
  - id: m{u}
    profile: eastron_sdm630
    transport: {{type: modbus_rtu, port: {sim.path}, baudrate: 9600, unit: {u}}}
    timeout_ms: 150
    retries: 0
    points: [voltage_l1, frequency]
"""
        for u in (1, 2)  # unit 2 is not on the line: offline
    )
    devices += f"""
  - id: climate
    profile: sht20_xy_md02
    transport: {{type: modbus_rtu, port: {sim.path}, baudrate: 9600, unit: 3}}
    timeout_ms: 150
"""  # no key point in its profile: every value shows, in profile order
    text = f"gateway: {{id: gw-page}}\ntime: {{zone: Asia/Ho_Chi_Minh}}\ndevices:{devices}"
    gateway = Gateway(parse_config(text, "t.yaml", tmp_path))
    [[link]] = gateway.links.values()
    await gateway.buffer.open()
    try:
        server = StatusServer(gateway, "127.0.0.1", 0, None)
        await server.snapshot()  # the busy share counts from here
        for _ in range(2):
            for poller in gateway.pollers:
                await poller.poll_once()  # type: ignore[union-attr]
        await asyncio.sleep(1.0)
        state = await server.snapshot()
    finally:
        await gateway.buffer.close()
        await link.close()
        await sim.close()
    [line] = state["lines"]
    assert line["line"] == f"modbus_rtu://{sim.path}"
    assert 0 < line["busy_share"] <= 1 and line["timeouts"] >= 2, line
    assert line["crc_errors"] == 0 and line["garbage_bytes"] == 0
    hanoi = ZoneInfo("Asia/Ho_Chi_Minh")
    now = state["time"]
    assert state["now"] == {"time": datetime.fromtimestamp(now, hanoi).strftime("%H:%M:%S"),
                            "date": None}  # fmt: skip
    m1, m2, climate = state["devices"]
    assert [(v["name"], v["key"]) for v in climate["points"]] == [
        ("temperature", False), ("humidity", False),
        ("temperature_offset", False), ("humidity_offset", False),
    ]  # fmt: skip
    assert m1["status"] == "online" and m2["status"] == "offline"
    went = gateway.pollers[1].status_since  # type: ignore[attr-defined]
    assert 0 <= now - went < 30
    assert m2["since"] == {"time": datetime.fromtimestamp(went, hanoi).strftime("%H:%M:%S"),
                           "date": None}  # fmt: skip
    yesterday = server.when(now - 86400, now)
    assert yesterday == {
        "time": datetime.fromtimestamp(now - 86400, hanoi).strftime("%H:%M:%S"),
        "date": datetime.fromtimestamp(now - 86400, hanoi).date().isoformat(),
    }
    assert [v["unit"] for v in m1["points"]] == ["V", "Hz"]
    assert server.language("vi-VN,vi;q=0.9,en;q=0.5") == "vi"
    assert server.language("en;q=0.2, vi") == "vi"  # by q, not by place
    assert server.language("fr-FR,fr;q=0.9") == "en"
    assert server.language("") == "en"
    fixed = Gateway(parse_config(text + "status: {language: vi}\n", "t.yaml", tmp_path))
    assert StatusServer(fixed, "127.0.0.1", 0, None).language("en-US") == "vi"
