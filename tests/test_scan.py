"""edge scan / probe: find units and their setting on an RS-485 line, and behind a TCP gateway."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge.ops.scan import parse_units, scan_rtu, scan_tcp
from protocols.modbus_frame import LineTiming
from simulators import serve_modbus_tcp, sim_unit
from simulators.rtu_line import serve_rtu

DEVICES = {3: "eastron_sdm630", 7: "street_light_cabinet", 12: "dfrobot_urm14"}


@pytest.mark.slow
async def test_scan__finds_every_unit_and_the_line_setting_it_was_not_told():
    # A line at 19200 baud with two stop bits. (On a pty Linux refuses parity, so the setting
    # the scan must discover differs in speed and framing; see simulators/rtu_line.py.)
    units = [sim_unit(p, u, seed=u) for u, p in DEVICES.items()]
    line = await serve_rtu(units, LineTiming(19200, "N", 2), turnaround_s=0.01)
    steps: list[str] = []
    try:
        found = await scan_rtu(line.path, parse_units("1-14"), progress=steps.append)
    finally:
        await line.close()
    assert {f.unit: f.guess for f in found} == DEVICES
    assert {f.where for f in found} == {"19200 8N2"}
    assert line.mismatched_frames > 0  # the wrong settings were tried and heard as noise
    assert any("9600 8N1: 0 units" in s for s in steps)


async def test_scan__behind_a_tcp_gateway():
    units = [sim_unit("eastron_sdm120", 2, seed=2), sim_unit("sht20_xy_md02", 5, seed=5)]
    server = await serve_modbus_tcp(units)
    try:
        found = await scan_tcp("127.0.0.1", server.port, parse_units("1-8"), timeout_s=0.2)
    finally:
        await server.close()
    assert {f.unit: f.guess for f in found} == {2: "eastron_sdm120", 5: "sht20_xy_md02"}


async def test_probe__decodes_what_it_reads():
    server = await serve_modbus_tcp([sim_unit("eastron_sdm630", 1, seed=1)])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "probe", "--tcp", f"127.0.0.1:{server.port}",
            "--unit", "1", "--fc", "4", "--address", "0x0046", "--type", "float32",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.close()
    assert proc.returncode == 0, err.decode()
    res_lines = out.decode().splitlines()
    hz = float(res_lines[-1].split(": ")[-1])
    assert 49.5 < hz < 50.5
