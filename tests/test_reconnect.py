"""Reconnect discipline: after a broker restart, a city's gateways do not come back in lockstep."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time

import pytest

from edge.config import MqttConfig
from edge.store.buffer import AsyncBuffer
from edge.uplink.forwarder import Forwarder, full_jitter
from tests.conftest import wait_until

N_GATEWAYS = 50


def test_full_jitter__stays_between_floor_and_the_capped_doubling():
    random.seed(7)
    for attempt in range(1, 12):
        delays = [full_jitter(1.0, 60.0, attempt) for _ in range(2000)]
        top = min(60.0, 2.0**attempt)
        assert min(delays) >= 1.0 and max(delays) <= top
        # spread over the whole range, not a band near its top
        assert min(delays) < 1.0 + 0.05 * (top - 1.0) and max(delays) > top - 0.05 * (top - 1.0)


@pytest.mark.system
@pytest.mark.slow
async def test_reconnect__fifty_gateways_spread_out_after_a_broker_restart(mosquitto, tmp_path):
    cfg = MqttConfig(
        url=f"mqtt://127.0.0.1:{mosquitto.port}",
        reconnect_min_s=1.0,
        reconnect_max_s=30.0,
        stable_after_s=1.0,
        keepalive_s=5,
        publish_timeout_s=2,
    )
    forwarders, tasks = [], []
    for i in range(N_GATEWAYS):
        buf = await AsyncBuffer(tmp_path / f"gw{i}.sqlite", max_bytes=8 * 2**20).open()
        fw = Forwarder(buf, cfg, gateway_id=f"gw-{i}", site="herd")
        forwarders.append(fw)
        tasks.append(asyncio.create_task(fw.run()))
    try:
        await wait_until(
            lambda: all(f.stats.connected for f in forwarders), 30, what="every gateway up"
        )
        await asyncio.sleep(1.5)  # stable sessions: the backoff starts over when they break
        sessions = [f.stats.sessions for f in forwarders]
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(mosquitto.start)
        back_at = time.monotonic()
        reconnected: dict[int, float] = {}

        def all_back() -> bool:
            now = time.monotonic()
            for i, f in enumerate(forwarders):
                if i not in reconnected and f.stats.sessions > sessions[i]:
                    reconnected[i] = now - back_at
            return len(reconnected) == N_GATEWAYS

        try:
            await wait_until(all_back, 60, interval=0.02, what="every gateway back")
        except AssertionError:
            missing = [forwarders[i].stats for i in range(N_GATEWAYS) if i not in reconnected]
            raise AssertionError(f"{len(missing)} not back: {missing[:2]}") from None
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    per_second = collections.Counter(int(max(0.0, s)) for s in reconnected.values())
    print("reconnects per second after the broker came back:", sorted(per_second.items()))
    # Lockstep would put all 50 in one second; full jitter spreads them over several.
    assert max(per_second.values()) <= 0.3 * N_GATEWAYS, per_second
    assert len(per_second) >= 4


def test_cli_loop__a_socket_registration_after_its_socket_closed_is_one_debug_line(caplog):
    """aiomqtt schedules paho's write registration from another thread; a broker node that
    dies in between leaves it a closed descriptor. That is a DEBUG line, not an asyncio ERROR
    with a traceback in the gateway's log; any other failing callback is still an ERROR."""
    import logging
    import socket

    from edge.cli import _run

    def boom() -> None:
        raise RuntimeError("a real bug in a callback")

    async def go() -> int:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        fd = a.fileno()
        a.close()
        b.close()
        loop.call_soon(loop.add_writer, fd, lambda: None)
        loop.call_soon(boom)
        await asyncio.sleep(0.05)
        return 0

    with caplog.at_level(logging.DEBUG):
        assert _run(go()) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "a real bug in a callback" in str(errors[0].exc_info[1])
    assert any(
        r.levelno == logging.DEBUG and "late add_writer ran: ignored" in r.getMessage()
        for r in caplog.records
    )
