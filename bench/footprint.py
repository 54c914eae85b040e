"""The gateway's CPU and memory, measured from the OS, in three situations.

The gateway runs as its own process (``edge run``) against simulated Modbus TCP meters (``edge sim``
processes, ten units each) and a local Mosquitto (or the embedded amqtt when Mosquitto is not
installed); its CPU time and RSS are read from /proc/<pid> over a measuring window after a
warm-up:

* idle: no device to poll (the uplink connected, the status page listening);
* 10 devices x 10 float32 points, polled every second;
* 100 devices x 30 float32 points, polled every second.

    python bench/footprint.py --seconds 30
    /path/to/venv/bin/python bench/footprint.py --installed --seconds 30

``--installed`` runs every process outside the checkout, so ``edge`` is the one installed in the
interpreter's environment (a fresh ``pip install .``, not editable), as on a gateway; the script
prints which ``edge`` it measured.

Last line: RESULT idle_cpu_pct=<n> cpu_pct_10x10=<n> cpu_pct_100x30=<n> rss_mb_idle=<n>
rss_mb_10x10=<n> rss_mb_100x30=<n> us_per_point=<n>   (CPU % of one core; us_per_point = gateway
CPU time per polled point at 100x30)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT  # where the processes start; a scratch directory with --installed
TEN = "[voltage_l1, voltage_l2, voltage_l3, current_l1, current_l2, current_l3, power_l1, power_l2, power_l3, power_factor_l1]"  # noqa: E501
THIRTY = (
    "[voltage_l1, voltage_l2, voltage_l3, current_l1, current_l2, current_l3, power_l1, power_l2,"
    " power_l3, apparent_power_l1, apparent_power_l2, apparent_power_l3, reactive_power_l1,"
    " reactive_power_l2, reactive_power_l3, power_factor_l1, power_factor_l2, power_factor_l3,"
    " voltage_avg, current_sum, total_power, total_apparent_power, total_reactive_power,"
    " total_power_factor, total_phase_angle, frequency, import_energy, export_energy,"
    " import_reactive_energy, export_reactive_energy]"
)
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_broker(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if mosquitto:
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        name = "mosquitto"
    else:
        code = (
            "import asyncio\nfrom edge.uplink.broker import EmbeddedBroker\n"
            f"async def m():\n    await EmbeddedBroker(port={port}).start()\n"
            "    await asyncio.Event().wait()\n"
            "asyncio.run(m())\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=RUN_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        name = "amqtt"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                print(f"broker: {name} on 127.0.0.1:{port}")
                return proc, port
        time.sleep(0.1)
    raise RuntimeError("the broker did not start")


def start_sims(n_devices: int) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    for first in range(1, n_devices + 1, 10):
        port = free_port()
        units = [str(u) for u in range(first, min(first + 10, n_devices + 1))]
        args = [
            sys.executable,
            "-m",
            "edge",
            "sim",
            "--profile",
            "eastron_sdm630",
            "--port",
            str(port),
        ]
        for u in units:
            args += ["--unit", u]
        procs.append(
            subprocess.Popen(
                args, cwd=RUN_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        ports.append(port)
    for port in ports:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("a simulator did not start")
            time.sleep(0.1)
    return procs, ports


def config(tmp: Path, broker_port: int, sim_ports: list[int], n_devices: int, points: str) -> Path:
    text = f"""gateway: {{id: bench-footprint}}
buffer: {{path: {tmp}/buffer.sqlite}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
status: {{listen: "127.0.0.1:{free_port()}"}}
devices:
"""
    for d in range(1, n_devices + 1):
        port = sim_ports[(d - 1) // 10]
        text += (
            f"  - {{id: m{d}, profile: eastron_sdm630, poll_interval_s: 1, timeout_ms: 300, "
            f"retries: 1, transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, "
            f"unit: {d}}}, "
            f"points: {points}}}\n"
        )
    if n_devices == 0:
        text += "  []\n"
        text = text.replace("devices:\n  []", "devices: []")
    path = tmp / f"gw-{n_devices}.yaml"
    path.write_text(text)
    return path


def measure(
    name: str,
    tmp: Path,
    broker_port: int,
    n: int,
    points: str,
    n_points: int,
    warmup: float,
    seconds: float,
):
    sims, ports = start_sims(n) if n else ([], [])
    cfg = config(tmp, broker_port, ports, n, points)
    (tmp / "buffer.sqlite").unlink(missing_ok=True)
    gw = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
        cwd=RUN_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(warmup)
        if gw.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gw.returncode}")
        c0, t0 = cpu_s(gw.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_s(gw.pid), time.monotonic()
        rss, peak = rss_mb(gw.pid), rss_mb(gw.pid, "VmHWM")
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(20)
        except subprocess.TimeoutExpired:
            gw.kill()
        for p in sims:
            p.terminate()
        for p in sims:
            p.wait(10)
    pct = (c1 - c0) / (t1 - t0) * 100
    polled = n * n_points * (t1 - t0)
    us = (c1 - c0) / polled * 1e6 if polled else 0.0
    print(
        f"{name:<10} cpu {pct:5.2f} % of one core, RSS {rss:5.1f} MB (peak {peak:5.1f} MB)"
        + (f", {us:.1f} us CPU per polled point" if polled else "")
    )
    return pct, rss, us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measuring window per case")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument(
        "--installed",
        action="store_true",
        help="measure the edge installed in this interpreter's environment, not the checkout",
    )
    args = ap.parse_args()
    global RUN_DIR
    with tempfile.TemporaryDirectory(prefix="edge-footprint-") as d:
        tmp = Path(d)
        if args.installed:
            RUN_DIR = tmp
        where = subprocess.run(
            [sys.executable, "-c", "import edge; print(edge.__file__)"],
            cwd=RUN_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if args.installed and (not where or Path(where).resolve().is_relative_to(ROOT)):
            raise SystemExit(
                f"--installed: edge is not installed in {sys.executable}'s environment "
                f"(found {where or 'nothing'}); run `pip install .` into it first"
            )
        print(f"edge measured: {where}")
        broker, port = start_broker(tmp)
        try:
            idle, rss_idle, _ = measure("idle", tmp, port, 0, "", 0, args.warmup, args.seconds)
            small, rss_small, _ = measure(
                "10x10", tmp, port, 10, TEN, 10, args.warmup, args.seconds
            )
            big, rss, us = measure("100x30", tmp, port, 100, THIRTY, 30, args.warmup, args.seconds)
        finally:
            broker.terminate()
            broker.wait(10)
    print("targets: idle <= 0.3 %, 10x10 <= 0.6 %, RSS <= 40 MB idle and <= 45 MB at 100x30")
    print(
        f"RESULT idle_cpu_pct={idle:.2f} cpu_pct_10x10={small:.2f} cpu_pct_100x30={big:.2f} "
        f"rss_mb_idle={rss_idle:.1f} rss_mb_10x10={rss_small:.1f} rss_mb_100x30={rss:.1f} "
        f"us_per_point={us:.1f}"
    )


if __name__ == "__main__":
    main()
