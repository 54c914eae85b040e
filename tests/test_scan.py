"""edge scan / probe: find units and their setting on an RS-485 line, and behind a TCP gateway."""

from __future__ import annotations

import asyncio
import os
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


# --------------------------------------------------------------------------- tool arguments

NO_PORT = "/dev/no-such-rs485-adapter"


def tool(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``edge`` in this process; its exit status and stderr (stdout must stay empty)."""
    from edge.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing an argument
        code = exc.code
    out, err = capsys.readouterr()
    assert out == "", out
    return code, err


PROBE = ["probe", "--tcp", "127.0.0.1:1502", "--unit", "1"]
RTU_PROBE = ["probe", "--port", os.devnull]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([*PROBE, "--count", "126"], "--count 126: FC04 reads 1..125 registers"),
        ([*PROBE, "--fc", "3", "--count", "200"], "FC03 reads 1..125 registers"),
        ([*PROBE, "--fc", "1", "--count", "2001"], "FC01 reads 1..2000 coils"),
        ([*PROBE, "--count", "0"], "--count 0 is below 1"),
        ([*PROBE, "--count", "many"], "--count takes a whole number"),
        ([*PROBE, "--address", "65535", "--type", "float32"], "runs past the last address 65535"),
        ([*PROBE, "--address", "65535", "--type", "float64"], "start at 65532 at the latest"),
        ([*PROBE, "--address", "65500", "--count", "100"], "start at 65436 at the latest"),
        ([*PROBE, "--fc", "2", "--address", "65000", "--count", "600"], "start at 64936"),
        ([*PROBE, "--address", "65536"], "--address 65536 is outside 0..65535"),
        ([*PROBE, "--address", "0x10000"], "is outside 0..65535"),
        ([*PROBE, "--address", "-1"], "is outside 0..65535"),
        ([*PROBE, "--address", "forty"], "--address takes a whole number 0..65535"),
        ([*PROBE, "--count", "1", "--type", "float64"], "less than one float64 (4 registers)"),
        ([*PROBE, "--type", "float33"], "--type takes one of uint16"),
        ([*PROBE, "--type", "bool"], "read it with --fc 1 or --fc 2"),
        ([*PROBE, "--fc", "5"], "choose from 1, 2, 3, 4"),
        ([*PROBE, "--word-order", "middle"], "choose from 'big', 'little'"),
        ([*PROBE, "--timeout-ms", "0"], "--timeout-ms takes 10..60000 ms"),
        ([*PROBE, "--timeout-ms", "nan"], "--timeout-ms takes 10..60000 ms"),
        ([*PROBE, "--timeout-ms", "1e9"], "--timeout-ms takes 10..60000 ms"),
        (["probe", "--tcp", "127.0.0.1:1", "--unit", "256"], "unit ids behind TCP are 0..255"),
        (["probe", "--tcp", "127.0.0.1:0", "--unit", "1"], "the port must be 1..65535"),
        (["probe", "--tcp", "127.0.0.1:99999", "--unit", "1"], "the port must be 1..65535"),
        (["probe", "--tcp", ":502", "--unit", "1"], "has no host"),
        (
            [*RTU_PROBE, "--unit", "0"],
            "on a serial line (0 is the broadcast, unanswered) are 1..247",
        ),
        ([*RTU_PROBE, "--unit", "248"], "are 1..247"),
        ([*RTU_PROBE, "--unit", "-1"], "--unit -1 is below 0"),
        ([*RTU_PROBE, "--unit", "1", "--baud", "9601"], "--baud takes one of 1200, 2400"),
        ([*RTU_PROBE, "--unit", "1", "--stopbits", "3"], "choose from 1, 2"),
        ([*RTU_PROBE, "--unit", "1", "--parity", "X"], "choose from 'N', 'E', 'O'"),
        (["probe", "--port", NO_PORT, "--unit", "1"], f"--port {NO_PORT} does not exist"),
        (["probe", "--unit", "1"], "one of the arguments --port --tcp is required"),
        (["scan", "--tcp", "127.0.0.1:70000"], "the port must be 1..65535"),
        (["scan", "--tcp", "127.0.0.1", "--units", "0-300"], "unit ids behind TCP are 0..255"),
        (["scan", "--port", os.devnull, "--units", "0"], "unit ids on a serial line are 1..247"),
        (["scan", "--port", os.devnull, "--units", "1-248"], "are 1..247"),
        (["scan", "--port", os.devnull, "--units", "x"], "--units takes unit ids and ranges"),
        (["scan", "--port", os.devnull, "--units", "1-"], "--units takes unit ids and ranges"),
        (["scan", "--port", os.devnull, "--units", "9-3"], "a range low to high"),
        (["scan", "--port", os.devnull, "--turnaround-ms", "-1"], "takes 0..5000 ms"),
        (["scan", "--port", os.devnull, "--turnaround-ms", "inf"], "takes 0..5000 ms"),
        (["scan", "--port", NO_PORT], f"--port {NO_PORT} does not exist"),
        (["doctor", "--config", "/no/such/gw.yaml"], "--config /no/such/gw.yaml does not exist"),
        (["doctor", "--config", "/"], "--config / is a folder"),
    ],
    ids=lambda v: " ".join(v[1:]) if isinstance(v, list) else None,
)
def test_tools__an_argument_out_of_range_is_one_line_naming_the_limit_exit_2(args, says, capsys):
    """Every argument of scan, probe and doctor is checked before anything is opened: one
    line in our words naming the limit, exit 2, never a traceback (edge probe --count 126
    ended in a ValueError traceback, --address 65535 --type float32 in one blaming the count)."""
    code, err = tool(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"edge {args[0]}: "), err
    assert says in err, err
    assert "Traceback" not in err and "Error" not in err


async def test_probe__the_reads_no_device_can_answer_are_refused_before_the_wire():
    """The issue's two commands, against a real unit: one line, exit 2, and no request sent."""
    server = await serve_modbus_tcp([sim_unit("eastron_sdm630", 1, seed=1)])
    try:
        for extra in (["--count", "126"], ["--address", "65535", "--type", "float32"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge", "probe", "--tcp", f"127.0.0.1:{server.port}",
                "--unit", "1", *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 2, err.decode()
            assert out == b"" and len(err.decode().splitlines()) == 1, err.decode()
            assert "Traceback" not in err.decode()
        assert server.requests == 0
    finally:
        await server.close()
