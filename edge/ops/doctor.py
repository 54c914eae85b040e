"""``edge doctor``: check a gateway's setup, one line per check, with the fix when it fails.

Checks, in the order a technician would look: the config; the serial ports (present, and usable
by this user); each device (one read); the clock; the broker (reachable, TLS, credentials); the
buffer (directory writable, free space, which gateway has it open, what it holds). It never
changes anything: the buffer is opened read-only and its lock is only looked at (in
/proc/locks), never taken, so a running gateway is not disturbed and a starting one is not
refused because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge.config import (
    ConfigError,
    LoadedConfig,
    ModbusRtuTransport,
    UartTransport,
    load_config,
)
from edge.shared.secrets import SecretFileError
from edge.shared.tls import TlsFileError

__all__ = ["Check", "run_doctor"]

#: No gateway ever ran before this date: an earlier clock has not been set since boot.
CLOCK_FLOOR = 1_763_000_000  # 2025-11-13


@dataclass
class Check:
    ok: bool | None  # None: could not tell
    what: str
    fix: str = ""


async def run_doctor(config: Path, out: TextIO) -> int:
    checks: list[Check] = []

    def say(c: Check) -> None:
        checks.append(c)
        mark = {True: "PASS", False: "FAIL", None: "WARN"}[c.ok]
        print(f"{mark}  {c.what}", file=out, flush=True)
        if c.fix and c.ok is not True:
            print(f"      fix: {c.fix}", file=out, flush=True)

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        say(Check(False, f"config {config} is not valid:\n{exc}", "correct the lines above"))
        return 1
    except OSError as exc:
        say(Check(False, f"config {config} cannot be read: {exc}"))
        return 1
    cfg = loaded.config
    say(Check(True, f"config {config} is valid ({len(cfg.devices)} devices)"))
    for c in _ports(loaded):
        say(c)
    for c in await _devices(loaded):
        say(c)
    say(_clock())
    for url in loaded.config.mqtt.urls:  # mqtt.url, then each of mqtt.failover_urls
        say(await _broker(loaded, url))
    for c in _buffer(loaded):
        say(c)
    failed = sum(1 for c in checks if c.ok is False)
    print(f"{failed} check(s) failed" if failed else "all checks passed", file=out)
    return 1 if failed else 0


def _ports(loaded: LoadedConfig) -> list[Check]:
    out = []
    ports = sorted(
        {
            d.transport.port
            for d in loaded.config.devices
            if isinstance(d.transport, (ModbusRtuTransport, UartTransport))
        }
    )
    for port in ports:
        if not os.path.exists(port):
            out.append(
                Check(
                    False,
                    f"serial port {port} does not exist",
                    "plug in the USB-RS485 adapter; list ports with ls /dev/serial/by-id/ and use "
                    "that stable name in the config",
                )
            )
        elif not os.access(port, os.R_OK | os.W_OK):
            try:
                group = grp.getgrgid(os.stat(port).st_gid).gr_name
            except KeyError:
                group = "dialout"
            out.append(
                Check(
                    False,
                    f"serial port {port} is not readable and writable by this user",
                    f"sudo usermod -aG {group} $USER, then log in again (or run the service as a "
                    f"member of {group})",
                )
            )
        else:
            out.append(Check(True, f"serial port {port} is usable"))
    return out


async def _devices(loaded: LoadedConfig) -> list[Check]:
    from edge.fieldbus.link import ModbusDeviceError
    from edge.fieldbus.modbus_tcp import ModbusTcpLink
    from edge.fieldbus.rtu import RtuLink

    out = []
    links: dict[str, ModbusTcpLink | RtuLink] = {}
    try:
        for dev in loaded.config.devices:
            t = dev.transport
            if isinstance(t, UartTransport):
                out.append(await _serial_sensor(loaded, dev))
                continue
            if isinstance(t, ModbusRtuTransport) and not _exists(t.port):
                out.append(Check(False, f"device {dev.id}: not tried, {t.port} is missing"))
                continue
            link = links.get(t.line)
            if link is None:
                link = links[t.line] = (
                    RtuLink(t.port, t.timing(), late_answer_s=t.late_answer_s)
                    if isinstance(t, ModbusRtuTransport)
                    else ModbusTcpLink(t.host, t.port)
                )
            req = loaded.plans[dev.id].requests[0]
            try:
                await link.read(
                    t.unit,
                    req.function_code,
                    req.address,
                    req.count,
                    timeout_s=dev.timeout_ms / 1000,
                    retries=dev.retries,
                )
                out.append(Check(True, f"device {dev.id} ({t.describe()}) answers"))
            except ModbusDeviceError as exc:
                out.append(
                    Check(
                        False,
                        f"device {dev.id} ({t.describe()}) does not answer: {exc}",
                        "check power, wiring (A/B), address and line settings; "
                        "edge scan finds what answers",
                    )
                )
    finally:
        for link in links.values():
            await link.close()
    return out


async def _serial_sensor(loaded: LoadedConfig, dev) -> Check:
    from devices import SensorProfile
    from edge.fieldbus.uart_sensor import SensorPoller

    t = dev.transport
    if not _exists(t.port):
        return Check(False, f"device {dev.id}: not tried, {t.port} is missing")
    profile = loaded.profiles[dev.id]
    assert isinstance(profile, SensorProfile)
    poller = SensorPoller(dev, profile, asyncio.Queue())
    try:
        await poller._open()
        poller._send(poller.proto.wake())
        poller._send(poller.proto.passive())
        await asyncio.sleep(0.2)
        await poller._drain()
        values = await poller._sample()
    except Exception as exc:  # the port itself failed
        return Check(False, f"device {dev.id} ({t.describe()}): {exc}")
    finally:
        poller._close()
    if values is None:
        return Check(
            False, f"device {dev.id} ({t.describe()}) does not answer", "check TX/RX and 5 V"
        )
    return Check(True, f"device {dev.id} ({t.describe()}) answers")


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _clock() -> Check:
    now = time.time()
    if now < CLOCK_FLOOR:
        return Check(
            False,
            f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}: it was never set",
            "give the Pi network time (NTP): systemctl status systemd-timesyncd",
        )
    synced: bool | None = None
    if shutil.which("timedatectl"):
        with contextlib.suppress(Exception):
            res = subprocess.run(
                ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
            if res.returncode == 0 and res.stdout.strip() in ("yes", "no"):
                synced = res.stdout.strip() == "yes"
    if synced is None and os.path.exists("/run/systemd/timesync/synchronized"):
        synced = True
    if synced is None:
        return Check(None, "clock plausible, but whether NTP synchronised it cannot be told here")
    if not synced:
        return Check(
            False, "clock not synchronised by NTP", "systemctl enable --now systemd-timesyncd"
        )
    return Check(True, "clock synchronised (NTP)")


async def _broker(loaded: LoadedConfig, url: str) -> Check:
    import aiomqtt

    from edge.uplink.forwarder import describe_mqtt_error

    m = loaded.config.mqtt
    host, port = m.endpoint(url)
    try:
        password, tls = loaded.mqtt_password(), loaded.tls_context()
    except (SecretFileError, TlsFileError) as exc:  # changed since the config was checked
        return Check(False, f"broker {url}: not tried, {exc}", "correct that file")
    try:
        client = aiomqtt.Client(
            host,
            port,
            identifier=f"{loaded.config.gateway.id}-doctor",
            username=m.username,
            password=password,
            tls_context=tls,
            timeout=5,
        )
        async with asyncio.timeout(10):
            async with client:
                pass
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        text = describe_mqtt_error(exc) if isinstance(exc, aiomqtt.MqttError) else str(exc)
        return Check(
            False,
            f"broker {url}: {text or 'no answer in 10 s'}",
            "check the broker address and that it runs, the firewall, the CA and credentials",
        )
    tls = " over TLS" if m.uses_tls else ""
    who = f" as {m.username}" if m.username else ""
    return Check(True, f"broker {url} accepts this gateway{tls}{who}")


def _buffer(loaded: LoadedConfig) -> list[Check]:
    from edge.store.storage import is_full, lock_holder

    path = loaded.buffer_path
    folder = path.parent
    out = []
    if not folder.is_dir():
        # load_config found that this user can create it: the gateway will
        return [Check(True, f"buffer folder {folder} does not exist yet; the gateway creates it")]
    holder = lock_holder(path)
    if holder is not None:
        out.append(Check(True, f"buffer {path} is open in a running gateway (PID {holder})"))
    else:
        out.append(
            Check(None, f"no gateway has the buffer {path} open", "start it: systemctl start edge")
        )
    if not os.access(folder, os.W_OK):
        out.append(
            Check(
                False,
                f"buffer folder {folder} is not writable",
                "chown the folder to the service user",
            )
        )
    else:
        out.append(Check(True, f"buffer folder {folder} is writable"))
    free = shutil.disk_usage(folder).free
    limit = loaded.config.buffer.max_bytes
    used = path.stat().st_size if path.exists() else 0
    ok = free + used >= limit
    out.append(
        Check(
            ok,
            f"free space {free / 1e6:.0f} MB for a buffer limit of {limit / 1e6:.0f} MB",
            ""
            if ok
            else "lower buffer.max_bytes or free space: when the disk fills first, the "
            "oldest telemetry is evicted to stay within it (counted) and parking meters are "
            "answered BUSY",
        )
    )
    if path.exists():
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                pending = db.execute("SELECT count(*) FROM readings").fetchone()[0]
                batches = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
                row = db.execute("SELECT ts_ms FROM readings ORDER BY id LIMIT 1").fetchone()
            finally:
                db.close()
            age = (
                ""
                if row is None
                else f", the oldest unsent taken {time.time() - row[0] / 1000:.0f} s ago"
            )
            out.append(
                Check(
                    True,
                    f"buffer holds {pending} unsent readings and {batches} batches awaiting "
                    f"acknowledgement{age}",
                )
            )
        except sqlite3.Error as exc:
            full = is_full(exc, path)
            out.append(
                Check(
                    False,
                    f"buffer {path} cannot be read: {exc}"
                    + (" (the disk is full)" if full else ""),
                    "free space on that disk"
                    if full
                    else "the gateway quarantines a damaged file at start",
                )
            )
    else:
        out.append(Check(True, f"buffer {path} not created yet (the gateway creates it)"))
    return out
