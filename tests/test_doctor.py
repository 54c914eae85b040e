"""edge doctor: passes on a working setup, fails with the right line for each broken part."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge.uplink.broker import free_port
from tests.conftest import gateway_yaml, password_broker


async def doctor(tmp_path, text: str) -> tuple[int, str]:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "doctor", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


def fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


@pytest.mark.system
async def test_doctor__a_working_setup_passes(mosquitto, sim_sdm630, tmp_path):
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port
    )
    code, out = await doctor(tmp_path, text)
    assert code == 0, out
    assert "PASS  device meter-1" in out and "PASS  device meter-2" in out
    assert f"PASS  broker mqtt://127.0.0.1:{mosquitto.port} accepts this gateway" in out
    assert "PASS  buffer folder" in out and "all checks passed" in out


@pytest.mark.system
async def test_doctor__stopped_broker_wrong_password_missing_port(sim_sdm630, tmp_path):
    # A stopped broker: nothing listens on the port.
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=free_port(), sim_port=sim_sdm630.port
    )
    code, out = await doctor(tmp_path, text)
    assert code == 1 and len(fails(out)) == 1, out
    assert fails(out)[0].startswith("FAIL  broker mqtt://127.0.0.1:")

    # A broker that refuses the password.
    broker = await asyncio.to_thread(password_broker, tmp_path, "gw-test", "right")
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=broker.port,
            sim_port=sim_sdm630.port,
            extra_mqtt="  username: gw-test\n  password: wrong\n",
        )
        code, out = await doctor(tmp_path, text)
    finally:
        broker.stop()
    assert code == 1 and len(fails(out)) == 1, out
    assert "refused" in fails(out)[0] and "password" in out.lower()

    # A serial port that is not there.
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=free_port(), sim_port=sim_sdm630.port
    )
    text += """  - id: lighting
    profile: street_light_cabinet
    transport: {type: modbus_rtu, port: /dev/ttyUSB9, unit: 1}
"""
    code, out = await doctor(tmp_path, text)
    assert "FAIL  serial port /dev/ttyUSB9 does not exist" in out
    assert "ls /dev/serial/by-id/" in out
    assert "FAIL  device lighting: not tried, /dev/ttyUSB9 is missing" in out
