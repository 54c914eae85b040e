"""The ``edge`` command: run, check, sim, consume, broker-setup, demo."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import logging
import math
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

from protocols.modbus import MAX_READ_REGISTERS
from protocols.modbus_frame import MAX_READ_BITS

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_IN_USE = 1  # edge run: another gateway holds the buffer


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro``; SIGTERM and SIGINT cancel it so it can shut down cleanly."""

    async def wrapper() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.set_exception_handler(_late_socket_callback_quiet)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            return 0

    return asyncio.run(wrapper())


_SOCKET_REGISTRATIONS = frozenset({"add_reader", "add_writer", "remove_reader", "remove_writer"})


def _late_socket_callback_quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: a socket registration that runs after its socket
    closed is one DEBUG line, not an ERROR with a traceback. aiomqtt 2.5 schedules paho's
    "register this socket for writing" with ``call_soon_threadsafe``; when the broker drops the
    connection in between (a broker node killed), ``add_writer`` meets a closed descriptor
    (EBADF). The connection is already gone and reported by the uplink in its own words, so
    nothing is lost or hidden. Every other exception goes to asyncio's default handler."""
    exc = context.get("exception")
    callback = getattr(context.get("handle"), "_callback", None)
    name = getattr(callback, "__name__", "")
    if isinstance(exc, OSError | ValueError) and name in _SOCKET_REGISTRATIONS:
        logging.getLogger("edge.uplink").debug(
            "a socket closed before its late %s ran: ignored (%s)", name, exc
        )
        return
    loop.default_exception_handler(context)


class _AsDebug(logging.Filter):
    """Shows a library's records at DEBUG: paho (logger "mqtt") logs every broken socket at
    ERROR, while the forwarder already reports the outage once in its own words (STYLE 17)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("mqtt").addFilter(_AsDebug())


def _load(path: Path, *, check_storage: bool = True):
    """The validated config, or None after printing every problem (FILE:LINE:COL: ...)."""
    from edge.config import ConfigError, load_config

    try:
        return load_config(path, check_storage=check_storage)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _load_plain(path: Path):
    """The validated config as the plain records of :mod:`edge.settings`, or None after printing
    every problem, as :func:`_load` does.

    The validation runs in a forked child that sends the records back through a pipe and exits:
    the validator (pydantic, its compiled schemas, the YAML parser; about 13 MB of RSS, measured
    with ``bench/footprint.py``) never enters the long-running gateway's memory. The child runs
    the very code ``edge check`` runs, so check and run accept and refuse the same configs.
    Without ``os.fork`` (not Linux) it validates in-process.
    """
    if not hasattr(os, "fork"):
        from edge.config import runtime_view

        loaded = _load(path)
        return None if loaded is None else runtime_view(loaded)
    import pickle

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: validate, send, exit without running the parent's cleanups
        code = 1
        try:
            os.close(read_fd)
            from edge.config import runtime_view

            loaded = _load(path)
            if loaded is None:
                code = EXIT_CONFIG
            else:
                data = pickle.dumps(runtime_view(loaded), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_fd, "wb") as out:
                    out.write(data)
                code = 0
        except BaseException:  # our bug, not the user's config: say so with its trace
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == EXIT_CONFIG:
        return None
    if code != 0 or not data:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        print(f"edge run: validating the config failed: the checker {how}", file=sys.stderr)
        return None
    return pickle.loads(data)  # our own child's bytes, through our own pipe


def _print_time(loaded) -> None:
    """The zone local windows follow, its offset now, and which windows follow it."""
    import datetime as dt

    from edge.agent.processing import LOCAL_WINDOW_MIN_S

    zone, source = loaded.time_zone()
    offset = dt.datetime.now(zone).strftime("%z")
    windows = sorted(
        {r.window_s for d in loaded.config.devices for r in d.processing if r.window_s}
    )
    local = [w for w in windows if w >= LOCAL_WINDOW_MIN_S]
    print(
        f"  time: zone {zone} ({source}, UTC{offset[:3]}:{offset[3:]} now), clock trust "
        f"{loaded.config.time.trust}"
        + (
            f"; windows of {', '.join(f'{w:g}' for w in local)} s align to local time"
            if local
            else ""
        )
        + (
            f"; {', '.join(f'{w:g}' for w in windows if w < LOCAL_WINDOW_MIN_S)} s windows "
            "align to UTC (under an hour)"
            if len(local) < len(windows)
            else ""
        )
    )


def cmd_check(args: argparse.Namespace) -> int:
    from edge.store.storage import lock_holder

    loaded = _load(args.config, check_storage=not args.config_only)
    if loaded is None:
        return EXIT_CONFIG
    cfg = loaded.config
    # The lock is looked at, never taken: checking a config beside its running gateway is fine.
    holder = None if args.config_only else lock_holder(loaded.buffer_path)
    in_use = f"; in use by a running gateway, PID {holder}" if holder is not None else ""
    print(
        f"{args.config}: valid. gateway {cfg.gateway.id} at site {cfg.gateway.site}, "
        f"broker {cfg.mqtt.url}, buffer {loaded.buffer_path} (max {cfg.buffer.max_bytes} "
        f"bytes{in_use})"
    )
    if cfg.mqtt.failover_urls:
        print(
            f"  broker failover, in turn after {cfg.mqtt.url}: {', '.join(cfg.mqtt.failover_urls)}"
        )
    _print_time(loaded)
    for name, file in sorted(loaded.profile_files.items()):
        print(f"  user profile {name}: {file}")
    for dev in cfg.devices:
        plan = loaded.plans.get(dev.id)
        t = dev.transport
        if plan is None:  # a serial sensor: its protocol decides what it sends
            print(f"  {dev.id}: {dev.profile} at {t.describe()}, every {dev.poll_interval_s:g} s")
            continue
        retry = "retry" if dev.retries == 1 else "retries"
        tries = f"timeout {dev.timeout_ms} ms, {dev.retries} {retry}"
        print(
            f"  {dev.id}: {dev.profile} at {t.describe()}, every "
            f"{dev.poll_interval_s:g} s ({tries}): {plan.summary()}"
        )
        for r in plan.requests:
            names = ", ".join(p.name for p in r.points)
            print(f"    FC{r.function_code:02d} @{r.address:#06x} x{r.count:<3} {names}")
    # The share of each RS-485 line the poll intervals ask for (one request at a time).
    load: dict[str, tuple[float, int]] = {}
    for dev in cfg.devices:
        line_s = loaded.plans[dev.id].line_time_s() if dev.id in loaded.plans else None
        if line_s is not None:
            busy, n = load.get(dev.transport.line, (0.0, 0))
            load[dev.transport.line] = (busy + line_s / dev.poll_interval_s, n + 1)
    for line, (busy, n) in load.items():
        verdict = (
            "over capacity: polls will run late, lengthen poll_interval_s or raise the baud rate"
            if busy > 1.0
            else "close to capacity: little room for retries and timeouts"
            if busy > 0.8
            else "room to spare"
        )
        print(f"  line {line}: {n} devices keep it busy {busy:.0%} of the time ({verdict})")
    park = cfg.parking
    if park.buses:
        print(f"  parking: signing key {loaded.resolve(park.key_file)}")
    for bus in park.buses:
        meters = ", ".join(f"{m.id}@{m.address}" for m in bus.meters)
        t = bus.transport
        line = ""
        if t.type == "rs485":
            from protocols.modbus_frame import LineTiming

            # POLL (12 bytes) and IDLE (21) per meter: the bus's round when nobody has news
            round_s = len(bus.meters) * LineTiming(t.baudrate, t.parity, t.stopbits).wire_s(33)
            line = f"; an idle round of polls takes {round_s * 1000:.0f} ms of wire time"
        print(
            f"  parking bus {bus.id} at {t.where}: meters {meters}; answer timeout "
            f"{bus.timeout_ms} ms, idle poll every {bus.poll_interval_s:g} s{line}"
        )
    return 0


def _lean_malloc() -> None:
    """glibc settings for a small, long-running process (before any thread starts).

    One malloc arena instead of one per thread (the buffer thread would get its own), and a fixed
    128 KiB mmap threshold: glibc otherwise raises the threshold after the first large free, so
    every later batch-sized buffer lands in the heap, whose freed holes are rarely given back.
    Measured at 100 devices x 30 points: 50.9 -> 48.1 MB RSS, CPU within the run-to-run noise.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8
    mallopt(m_arena_max, 1)
    mallopt(m_mmap_threshold, 128 * 1024)


def cmd_run(args: argparse.Namespace) -> int:
    from edge.agent.gateway import Gateway

    _lean_malloc()
    loaded = _load_plain(args.config)
    if loaded is None:
        return EXIT_CONFIG

    from edge.shared.secrets import SecretFileError
    from edge.shared.signing import SigningKeyError
    from edge.shared.tls import TlsFileError
    from edge.store.storage import BufferInUse, BufferUnavailable

    async def go() -> int:
        try:
            gateway = Gateway(loaded)
        except (SigningKeyError, SecretFileError) as exc:
            # edge check refuses these too; a file changed since it ran
            print(f"edge run: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except TlsFileError as exc:
            print(f"edge run: mqtt.tls.{exc.kind} {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            await gateway.run()
        except BufferInUse as exc:
            print(f"edge run: {exc}", file=sys.stderr)
            return EXIT_IN_USE
        except (BufferUnavailable, SigningKeyError) as exc:
            print(f"edge run: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0

    return _run(go())


def _pairs(values: list[str] | None, what: str) -> dict[int, int]:
    """UNIT:N arguments as {unit: N}."""
    out = {}
    for v in values or []:
        unit, _, n = v.partition(":")
        if not (unit.isdigit() and n.isdigit()):
            raise ValueError(
                f"{what} takes UNIT:{'CODE' if 'exception' in what else 'MS'}, not {v!r}"
            )
        out[int(unit)] = int(n)
    return out


def _symlink(link: Path, target: str | None) -> None:
    """Point ``link`` at ``target`` (None: remove it), replacing an old link."""
    link.unlink(missing_ok=True)
    if target is not None:
        link.symlink_to(target)


def _is_sensor(profile: str) -> bool:
    from devices import SensorProfile
    from edge.profiles import shipped_profiles

    return isinstance(shipped_profiles().get(profile), SensorProfile)


async def _serve_sensor(args: argparse.Namespace) -> int:
    """A PMS5003 / SDS011 on a pty whose slave is linked at --link (default /tmp/tty<profile>)."""
    from edge.profiles import get_profile
    from simulators.particulate import Pms5003Sim, Sds011Sim

    profile = get_profile(args.profile)
    cls = Pms5003Sim if profile.protocol == "pms5003" else Sds011Sim
    link = Path(args.link or f"/tmp/tty{profile.model}")
    sim = await cls(link, seed=hash(args.seed) & 0xFFFF, warmup_s=args.warmup_s).start()
    sim.garbage_bytes = args.garbage
    sim.bad_checksum_every = args.bad_checksum_every
    print(
        f"simulating a {profile.vendor} {profile.model} at {link} -> {sim.tty} "
        f"(9600 8N1, active mode until told otherwise; SIGUSR1: a power blip); in a config: "
        f"transport: {{type: uart, port: {link}}}",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, sim.power_blip)  # a fault harness's power dip
    try:
        await asyncio.Event().wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        await sim.close()
    return 0


def _log_served(units: list[Any], path: Path) -> None:
    """Append one JSON line per whole point each unit puts on the wire: ``{"ms", "unit",
    "point", "value"}`` (the value as the registers carry it), so a test or a soak can compare
    what a gateway delivered with what the device said."""
    import json
    import time

    out = path.open("a", encoding="utf-8", buffering=1)  # a line at a time; closed at exit

    def for_unit(unit_id: int) -> Callable[[str, object], None]:
        def served(point: str, value: object) -> None:
            if isinstance(value, float) and not math.isfinite(value):
                value = repr(value)  # JSON has no NaN or infinity
            line = {"ms": int(time.time() * 1000), "unit": unit_id, "point": point, "value": value}
            out.write(json.dumps(line) + "\n")

        return served

    for unit in units:
        unit.on_served = for_unit(unit.unit_id)


def cmd_sim(args: argparse.Namespace) -> int:
    from protocols.modbus_frame import LineTiming
    from simulators import serve_modbus_tcp, sim_unit
    from simulators.rtu_line import serve_rtu

    async def go() -> int:
        if args.profile and _is_sensor(args.profile):
            return await _serve_sensor(args)
        if args.profile_file is not None:
            # As `edge profile check` reads it: a file extending one beside it is read with its
            # folder, a shipped file (devices/*.yaml) as the shipped profile it is.
            args.profile = _load_profile_arg("--profile-file", str(args.profile_file))
            if args.profile is None:
                return EXIT_CONFIG
        try:
            specs = [(args.profile, u) for u in (args.unit or [1])] if args.profile else []
            for d in args.device or []:
                prof, _, unit = d.rpartition(":")
                if not prof or not unit.isdigit():
                    raise ValueError(f"--device takes PROFILE:UNIT, not {d!r}")
                specs.append((prof, int(unit)))
            if not specs:
                raise ValueError("give --profile (with --unit) or --device PROFILE:UNIT")
            units = [sim_unit(prof, u, seed=f"{args.seed}:{u}") for prof, u in specs]
            if args.served_log is not None:
                _log_served(units, args.served_log)
            exceptions = _pairs(args.exception, "--exception")
            slow = _pairs(args.slow, "--slow")
            timing = LineTiming(args.baud, args.parity, args.stopbits)
        except (KeyError, ValueError) as exc:
            print(f"edge sim: {exc.args[0]}", file=sys.stderr)
            return EXIT_CONFIG
        names = ", ".join(f"{getattr(prof, 'name', prof)} unit {u}" for prof, u in specs)
        if args.rtu:
            sim = await serve_rtu(
                units,
                timing,
                turnaround_s=args.turnaround_ms / 1000,
                unit_turnaround_s={u: ms / 1000 for u, ms in slow.items()},
                corrupt_crc_units=set(args.corrupt_crc or []),
                swapped_units=set(args.swap_words or []),
                garbage_bytes=args.garbage,
            )
            where = sim.path
            if args.link:
                _symlink(Path(args.link), sim.path)
                where = f"{args.link} -> {sim.path}"
            print(
                f"simulating {names} on an RS-485 line at {where} ({args.baud} 8"
                f"{args.parity}{args.stopbits}, paced at wire speed); in a config: "
                f"transport: {{type: modbus_rtu, port: {args.link or sim.path}, "
                f"baudrate: {args.baud}, parity: {args.parity}, stopbits: {args.stopbits}, "
                f"unit: {specs[0][1]}}}",
                flush=True,
            )
        else:
            sim = await serve_modbus_tcp(units, args.host, args.port)
            sim.unit_delay_s = {u: ms / 1000 for u, ms in slow.items()}  # --slow behind a bridge
            print(f"simulating {names} on {sim.host}:{sim.port} (Modbus TCP)", flush=True)
        sim.silent_units |= set(args.silent or [])
        sim.exception_units |= exceptions
        try:
            await asyncio.Event().wait()
        finally:
            await sim.close()
            if args.rtu and args.link:
                _symlink(Path(args.link), None)
        return 0

    return _run(go())


def cmd_sim_meters(args: argparse.Namespace) -> int:
    from protocols.modbus_frame import LineTiming
    from simulators.parking_meter import Journal, Meter, MeterLine, MeterServer

    meters: dict[int, str] = {}
    for spec in args.meter or ["1=HK-01"]:
        addr, sep, mid = spec.partition("=")
        if not sep or not addr.isdigit() or not 1 <= int(addr) <= 247 or not mid:
            print(
                f"edge sim-meters: --meter takes ADDRESS=ID (1..247), not {spec!r}", file=sys.stderr
            )
            return EXIT_CONFIG
        if int(addr) in meters:
            print(f"edge sim-meters: two meters at address {addr}", file=sys.stderr)
            return EXIT_CONFIG
        meters[int(addr)] = mid

    async def go() -> int:
        sims = {
            a: Meter(
                mid,
                Journal(args.journal_dir / f"{mid}.sqlite"),
                zone=args.zone,
                speed=args.speed,
                seed=args.seed,
            )
            for a, mid in meters.items()
        }
        server: MeterServer
        if args.rtu:
            server = MeterLine(sims, LineTiming(args.baud))
            await server.start(business=not args.no_business)
            where = server.path
            if args.link:
                _symlink(Path(args.link), server.path)
                where = f"{args.link} -> {server.path}"
            where = f"an RS-485 line at {where} ({args.baud} 8N1, paced at wire speed)"
        else:
            server = await MeterServer(sims, args.host, args.port).start(
                business=not args.no_business
            )
            where = f"{server.host}:{server.port}"
        server.corrupt_every = args.corrupt_every
        names = ", ".join(f"{m} at {a}" for a, m in meters.items())
        print(
            f"simulating parking meters {names} on {where} (meter link v1); "
            f"journals in {args.journal_dir}"
            + ("; no new business" if args.no_business else f"; {args.speed:g}x time"),
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()
            if args.rtu and args.link:
                _symlink(Path(args.link), None)
        return 0

    return _run(go())


# --------------------------------------------------------------------------- tool arguments
# Every argument of the technician's tools (scan, probe, doctor) is checked before anything is
# opened: a value out of range is one line naming the limit, exit 2, never a traceback.

#: Modbus application protocol v1.1b3 §6.1-6.4: a read asks for 1..2000 coils or discrete
#: inputs (FC01/02) or 1..125 registers (FC03/04), and addresses are 0..65535.
LAST_ADDRESS = 0xFFFF
#: Unit ids: 1..247 on a serial line (0 is the broadcast, which nothing answers; 248..255 are
#: reserved, Modbus over serial line v1.02 §2.2); behind TCP 0..255 (v1.1b3 §4.4; a bridge
#: passes 1..247 on, a TCP device may answer any).
RTU_UNITS, TCP_UNITS = (1, 247), (0, 255)
#: An answer timeout a tool may wait for, ms (the config's timeout_ms allows the same).
TIMEOUT_MS = (10, 60_000)
#: The slowest device turnaround a scan may wait for, ms (the config's turnaround_ms).
TURNAROUND_MS = (0, 5000)


class _ToolParser(argparse.ArgumentParser):
    """A sub-command's parser: a wrong argument is one line (``edge probe: --count 0 is
    outside 1..125 ...``) and exit 2, not the usage text around it."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument (\S+): ", r"\1 ", message)  # "--count 0 is outside ..."
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _whole(lo: int, hi: int | None, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number lo..hi (hi None: no bound; 0x.. accepted)."""
    span = f"{lo}..{hi}" if hi is not None else f"{lo} or more"

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"takes a whole number {span}{what}, not {text[:40]!r}"
            ) from None
        if hi is None and value < lo:
            raise argparse.ArgumentTypeError(f"{value} is below {lo}{what}")
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is outside {span}{what}")
        return value

    return parse


def _ms(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: milliseconds lo..hi (a finite number)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:  # NaN too
            raise argparse.ArgumentTypeError(f"takes {lo:g}..{hi:g} ms, not {text[:40]!r}")
        return value

    return parse


def _baud(text: str) -> int:
    from edge.config import BAUD_RATES

    if not text.isdigit() or int(text) not in BAUD_RATES:
        raise argparse.ArgumentTypeError(
            f"takes one of {', '.join(map(str, BAUD_RATES))}, not {text[:40]!r}"
        )
    return int(text)


def _data_type(text: str) -> str:
    from protocols.modbus import DataType

    if text not in {t.value for t in DataType}:
        raise argparse.ArgumentTypeError(
            f"takes one of {', '.join(t.value for t in DataType)}, not {text[:40]!r}"
        )
    return text


def _host_port(option: str, value: str, default_port: int) -> tuple[str, int]:
    """HOST[:PORT] (an IPv6 host in brackets: [::1]:502); ValueError in our words."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{option} takes HOST[:PORT] ([IPv6]:PORT), not {value[:60]!r}")
        port = rest[1:]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""  # a name, an IPv4 address, or a bare IPv6 address
    if not host:
        raise ValueError(f"{option} {value[:60]!r} has no host: give HOST[:PORT]")
    if port == "":
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{option}: the port must be 1..65535, not {port[:20]!r}")
    return host, int(port)


def _serial_port_problem(port: str) -> str | None:
    if not os.path.exists(port):
        return (
            f"--port {port} does not exist (plug in the adapter; ls /dev/serial/by-id/ "
            "lists the ports)"
        )
    return None


def _probe_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a probe's arguments together, or None (each alone is checked by
    its argparse type)."""
    from protocols.modbus import DataType, register_count

    lo, hi = TCP_UNITS if args.tcp else RTU_UNITS
    if not lo <= args.unit <= hi:
        where = "behind TCP" if args.tcp else "on a serial line (0 is the broadcast, unanswered)"
        return f"--unit {args.unit}: unit ids {where} are {lo}..{hi}"
    bits = args.fc in (1, 2)
    dtype = DataType(args.type or "float32")
    if not bits and dtype is DataType.BOOL:
        return "--type bool is a coil or discrete input: read it with --fc 1 or --fc 2"
    if bits and dtype is DataType.STRING:
        return "--type string is held in registers: read it with --fc 3 or --fc 4"
    per = 1 if bits else (args.count or 1) if dtype is DataType.STRING else register_count(dtype)
    count = per if args.count is None else args.count
    limit, unit = (MAX_READ_BITS, "coils or inputs") if bits else (MAX_READ_REGISTERS, "registers")
    if not 1 <= count <= limit:
        return f"--count {count}: FC{args.fc:02d} reads 1..{limit} {unit} at a time"
    if not bits and args.type is not None and count < per:
        return f"--count {count} is less than one {dtype} ({per} registers)"
    if args.address + count - 1 > LAST_ADDRESS:
        what = f"one {dtype}, {per} registers" if args.count is None and not bits else unit
        return (
            f"--address {args.address} with --count {count} ({what}) runs past the last "
            f"address {LAST_ADDRESS}: start at {LAST_ADDRESS + 1 - count} at the latest"
        )
    return None


def cmd_scan(args: argparse.Namespace) -> int:
    from edge.ops.scan import parse_units, scan_rtu, scan_tcp

    try:
        host, port = _host_port("--tcp", args.tcp, 502) if args.tcp else ("", 0)
        units = parse_units(
            args.units,
            *(TCP_UNITS if args.tcp else RTU_UNITS),
            " behind TCP" if args.tcp else " on a serial line",
        )
        problem = None if args.tcp else _serial_port_problem(args.port)
        if problem is not None:
            raise ValueError(problem)
    except ValueError as exc:
        print(f"edge scan: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    candidates = _scan_profiles(args.profiles or [])
    if candidates is None:
        return EXIT_CONFIG
    user = {n for n, origin in candidates.items() if origin[1]}
    profiles = {n: prof for n, (prof, _) in candidates.items()}

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    async def go() -> int:
        if user:
            progress(f"trying {len(profiles)} profiles, {len(user)} of them yours")
        if args.tcp:
            found = await scan_tcp(host, port, units, progress=progress, profiles=profiles)
        else:
            found = await scan_rtu(
                args.port,
                units,
                turnaround_s=args.turnaround_ms / 1000,
                all_settings=args.all_settings,
                progress=progress,
                profiles=profiles,
            )
        if not found:
            print("nothing answered (check wiring A/B, termination, power, and the unit range)")
            return 1
        print(f"{'unit':>4}  {'where':<16} profile (requests of its map answered)")
        for f in found:
            detail = ", ".join(f"{n} {ok}/{tot}" for n, ok, tot, _ in f.guesses[:3] if ok)
            print(f"{f.unit:>4}  {f.where:<16} {f.guess}   [{detail}]")
        return 0

    return _run(go())


def _scan_profiles(paths: list[Path]):
    """The profiles a scan ranks: {name: (profile, user file or None)}: the shipped Modbus
    profiles and those of ``--profiles`` files and folders; None after printing the problems of
    a broken one (FILE:LINE:COL)."""
    from edge.config_schema import ConfigError
    from edge.profiles import load_user_profiles, modbus_profiles, profile_files

    out: dict[str, tuple[Any, Path | None]] = {n: (p, None) for n, p in modbus_profiles().items()}
    if not paths:
        return out
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += profile_files(path)
        elif path.is_file():
            files.append(path)
        else:
            print(f"edge scan: --profiles {path} does not exist", file=sys.stderr)
            return None
    found = load_user_profiles(files)
    if found.problems:
        print(ConfigError(found.problems), file=sys.stderr)
        return None
    from devices.profile import Profile

    for name, prof in found.user.items():
        if isinstance(prof, Profile):
            out[name] = (prof, Path(found.files[name]))
    return out


def cmd_probe(args: argparse.Namespace) -> int:
    from edge.fieldbus.link import ModbusDeviceError
    from protocols.modbus import ByteOrder, DataType, WordOrder, decode_value, register_count
    from protocols.modbus_frame import LineTiming

    if args.profile is not None:
        return _probe_profile(args)
    args.fc = 4 if args.fc is None else args.fc
    args.address = 0 if args.address is None else args.address
    try:
        host, port = _host_port("--tcp", args.tcp, 502) if args.tcp else ("", 0)
        problem = _probe_problem(args) or (None if args.tcp else _serial_port_problem(args.port))
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"edge probe: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    async def go() -> int:
        if args.tcp:
            from edge.fieldbus.modbus_tcp import ModbusTcpLink

            link = ModbusTcpLink(host, port)
        else:
            from edge.fieldbus.rtu import RtuLink

            link = RtuLink(args.port, LineTiming(args.baud, args.parity, args.stopbits))
        dtype = DataType(args.type or "float32")
        if dtype is DataType.STRING:  # one string of --count registers
            per = count = args.count or 1
        else:
            per = 1 if args.fc in (1, 2) else register_count(dtype)
            count = per if args.count is None else args.count
        order = ByteOrder(args.byte_order) if args.byte_order else WordOrder(args.word_order)
        try:
            regs = await link.read(
                args.unit, args.fc, args.address, count, timeout_s=args.timeout_ms / 1000, retries=1
            )
        except ModbusDeviceError as exc:
            print(f"edge probe: {exc}", file=sys.stderr)
            return 1
        finally:
            await link.close()
        print("raw: " + " ".join(f"{r:04x}" if args.fc > 2 else str(r) for r in regs))
        if args.fc in (1, 2):
            return 0
        for i in range(0, len(regs) - per + 1, per):
            value = decode_value(regs[i : i + per], dtype, order)
            print(f"  @{args.address + i:#06x} {dtype}: {value!r}")
        return 0

    return _run(go())


def _load_profile_arg(option: str, value: str):
    """A profile named on the command line: a profile file (its problems printed at
    FILE:LINE:COL) or a shipped profile's name; None after printing why not."""
    from edge.config_schema import ConfigError
    from edge.profiles import SHIPPED_DIR, get_profile, load_profile_file, shipped_profiles

    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            print(f"{option} {value} {what}: give a profile file", file=sys.stderr)
            return None
        try:
            if path.resolve().parent == SHIPPED_DIR:  # one of ours: read with the others
                return shipped_profiles()[path.stem]
            return load_profile_file(path)
        except ConfigError as exc:
            if any("extends" in p[3] and "no such profile" in p[3] for p in exc.problems):
                # It builds on a profile beside it: read the folder, as a gateway would.
                return _load_beside(path, exc)
            print(exc, file=sys.stderr)
            return None
    try:
        return get_profile(value)
    except KeyError as exc:
        print(f"{option} {value}: {exc.args[0]}, and no such file", file=sys.stderr)
        return None


def _load_beside(path: Path, first) -> Any:
    """The profile of ``path``, read with the profile files of its folder (one it extends may
    be there); None after printing this file's problems (``first``'s when none is found)."""
    from edge.config_schema import ConfigError
    from edge.profiles import MAX_PROFILE_FILES, load_user_profiles, profile_files

    files = profile_files(path.parent)
    if len(files) > MAX_PROFILE_FILES:
        print(first, file=sys.stderr)
        return None
    found = load_user_profiles(files)
    mine = path.resolve()
    problems = [p for p in found.problems if Path(p[0]).resolve() == mine]
    if problems:
        print(ConfigError(problems), file=sys.stderr)
        return None
    for name, source in found.files.items():
        if Path(source).resolve() == mine and name in found.user:
            return found.user[name]
    if found.problems:  # fine itself, but what it extends is not: show that, at its own lines
        print(f"{path}: a profile it extends has problems:", file=sys.stderr)
        print(ConfigError(found.problems), file=sys.stderr)
        return None
    print(first, file=sys.stderr)
    return None


def _show_value(point, value) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, float):
        text = f"{value:.7g}"
    else:
        text = str(value)
    if point.labels and value in point.label_map:
        text += f" ({point.label_map[value]})"
    return f"{text} {point.unit}".rstrip()


def _probe_profile(args: argparse.Namespace) -> int:
    """edge probe --profile FILE: every point of the profile, decoded, with hints."""
    from collections import Counter

    from devices.profile import Profile
    from edge.ops.probe import probe_plan
    from edge.plan import LinkCost, PlanError, compile_plan
    from protocols.modbus_frame import LineTiming

    asked = {"--fc": args.fc, "--address": args.address, "--count": args.count}
    given = [o for o, v in {**asked, "--type": args.type}.items() if v is not None]
    problem = None
    if given:
        problem = f"{', '.join(given)}: the profile says what to read; give --profile alone"
    lo, hi = TCP_UNITS if args.tcp else RTU_UNITS
    if problem is None and not lo <= args.unit <= hi:
        on = "behind TCP" if args.tcp else "on a serial line"
        problem = f"--unit {args.unit}: unit ids {on} are {lo}..{hi}"
    try:
        host, port = _host_port("--tcp", args.tcp, 502) if args.tcp else ("", 0)
        problem = problem or (None if args.tcp else _serial_port_problem(args.port))
    except ValueError as exc:
        problem = problem or str(exc)
    if problem is not None:
        print(f"edge probe: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    profile = _load_profile_arg("edge probe: --profile", args.profile)
    if profile is None:
        return EXIT_CONFIG
    if not isinstance(profile, Profile):
        print(f"edge probe: --profile {args.profile}: a serial sensor with its own protocol, "
              "not a Modbus register map", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.byte_order:
        from edge.profiles import with_overrides

        profile = with_overrides(profile, byte_order=args.byte_order)
    timing = LineTiming(args.baud, args.parity, args.stopbits)
    cost = LinkCost.tcp(0.02) if args.tcp else LinkCost.rtu(timing, 0.02)
    try:
        plan = compile_plan(profile, cost=cost)
    except PlanError as exc:
        print(f"edge probe: --profile {args.profile}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    where = (
        f"{host}:{port}"
        if args.tcp
        else f"{args.port} at {args.baud} 8{args.parity}{args.stopbits}"
    )

    async def go() -> int:
        if args.tcp:
            from edge.fieldbus.modbus_tcp import ModbusTcpLink

            link = ModbusTcpLink(host, port)
        else:
            from edge.fieldbus.rtu import RtuLink

            link = RtuLink(args.port, timing)
        try:
            readings, failures = await probe_plan(
                link, args.unit, profile, plan, args.timeout_ms / 1000
            )
        finally:
            await link.close()
        print(f"{profile.name} at {where} unit {args.unit}: {plan.summary()}")
        width = max(len(r.point.name) for r in readings) if readings else 0
        for r in readings:
            p = r.point
            kind = str(p.dtype) + (
                f" {p.byte_order}" if p.count > 1 or p.byte_order.byte_swap else ""
            )
            head = f"  {p.name:<{width}}  {p.register_type:<8} {p.address:#06x}  {kind:<13}"
            if r.error is not None:
                print(f"{head} {r.error}")
            elif r.hints:
                print(f"{head} {_show_value(p, r.value)}   <- looks wrong: {'; '.join(r.hints)}")
            else:
                print(f"{head} {_show_value(p, r.value)}")
        for f in failures:
            print(f"failed: {f}")
        if (
            failures
            and all("exception 0x02" in f for f in failures)
            and not any(r.error is None for r in readings)
        ):
            print(
                "no register the profile names is served (exception 02 everywhere): a map that "
                "counts from 1 or writes 30001 / 40001 reads one register off; set address_base "
                "in the profile, or address_offset on the device (docs/profile-format.md)"
            )
        doubtful = sum(1 for r in readings if r.hints)
        if doubtful:
            print(f"{doubtful} of {len(readings)} values look wrong: see the hints after them")
            fixes = Counter(
                h.split(":")[0][3:] for r in readings for h in r.hints if h.startswith("as ")
            )
            if fixes:
                order, n = fixes.most_common(1)[0]
                print(
                    f"{n} of them read right as {order}: set byte_order: {order} in the "
                    "profile, or on the device in the gateway config (docs/profile-format.md §0.5)"
                )
        return 1 if failures else 0

    return _run(go())


def cmd_profile_check(args: argparse.Namespace) -> int:
    """edge profile check FILE: validate, print the read plan and its line time per poll."""
    from devices.profile import Profile
    from edge.plan import LinkCost, PlanError, compile_plan
    from protocols.modbus_frame import LineTiming

    profile = _load_profile_arg("edge profile check:", str(args.file))
    if profile is None:
        return EXIT_CONFIG
    if not isinstance(profile, Profile):
        print(f"{args.file}: valid. serial sensor {profile.name} ({profile.protocol} protocol)")
        return 0
    factory = profile.default_line
    timing = LineTiming(
        args.baud or factory.baudrate,
        args.parity or factory.parity,
        args.stopbits or factory.stopbits,
    )
    asked = any(v is not None for v in (args.baud, args.parity, args.stopbits))
    try:
        plan = compile_plan(profile, cost=LinkCost.rtu(timing, args.turnaround_ms / 1000))
        tcp = compile_plan(profile, cost=LinkCost.tcp(args.turnaround_ms / 1000))
    except PlanError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    kinds = sum(1 for p in profile.points if p.kind.value == "counter")
    print(
        f"{args.file}: valid. profile {profile.name} ({profile.vendor} {profile.model}): "
        f"{len(profile.points)} points ({kinds} counters), at most "
        f"{profile.max_registers_per_request} registers per request"
        + (", even counts" if profile.even_register_count else "")
    )
    setting = f"{timing.baudrate} 8{timing.parity}{timing.stopbits}"
    whose = "as asked" if asked else "the profile's factory line"
    print(
        f"  on an RS-485 line at {setting} ({whose}), turnaround {args.turnaround_ms:g} ms: "
        f"{plan.summary()}"
    )
    for r in plan.requests:
        names = ", ".join(p.name for p in r.points)
        ms = plan.cost.request_time_s(r.function_code, r.count) * 1000 if plan.cost else 0.0
        print(f"    FC{r.function_code:02d} @{r.address:#06x} x{r.count:<3} {ms:6.1f} ms  {names}")
    line_s = plan.line_time_s() or 0.0
    print(
        f"  a poll takes {line_s * 1000:.0f} ms of line time: at most {1 / line_s:.1f} polls per "
        "second on a line of its own"
        if line_s
        else ""
    )
    print(f"  over Modbus TCP: {tcp.summary()}")
    return 0


def cmd_profile_import(args: argparse.Namespace) -> int:
    """edge profile import FILE: a Home Assistant or Telegraf map as a profile file."""
    from edge.config_yaml import MAX_CONFIG_BYTES
    from edge.ops.profile_import import ImportFailure, import_map

    path: Path = args.file
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"is over {MAX_CONFIG_BYTES:,} bytes: is this the right file?")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"edge profile import: {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except (ValueError, UnicodeDecodeError) as exc:
        why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        print(f"edge profile import: {path} {why}", file=sys.stderr)
        return EXIT_CONFIG
    out: Path | None = args.output
    if out is not None and out.exists() and not args.force:
        print(f"edge profile import: -o {out} exists: give --force to replace it", file=sys.stderr)
        return EXIT_CONFIG
    name = args.name or (out.stem if out is not None else None)
    try:
        result = import_map(path, text, args.format, unit=args.unit, hub=args.hub, name=name)
    except ImportFailure as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    assert result.profile is not None
    if out is None:
        sys.stdout.write(result.text)
    else:
        try:
            out.write_text(result.text, encoding="utf-8")
        except OSError as exc:
            print(f"edge profile import: -o {out}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
    err = sys.stderr
    print(
        f"{path}: {len(result.profile.points)} points of {result.device} converted into "
        f"profile {result.profile.name}" + (f" in {out}" if out else ""),
        file=err,
    )
    if result.skipped:
        print(f"not converted ({len(result.skipped)}):", file=err)
        for item in result.skipped:
            print(f"  {item.line()}", file=err)
    for note in result.notes:
        print(f"  note: {note}", file=err)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.ops.doctor import run_doctor

    if not args.config.is_file():
        what = "is a folder" if args.config.is_dir() else "does not exist"
        print(f"edge doctor: --config {args.config} {what}: give the config file", file=sys.stderr)
        return EXIT_CONFIG
    return _run(run_doctor(args.config, sys.stdout))


PLATFORM_EXTRA = "edge consume --store needs the platform extra: pip install 'hanoi-edge[platform]'"


def cmd_consume(args: argparse.Namespace) -> int:
    if args.amqp and args.store is None:
        # Competing consumers each get some of the births: only a shared store names them all.
        print(
            "edge consume: --amqp needs --store postgresql://…: consumers sharing a queue each "
            "see only some births, so readings are named in the shared store",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if (args.broker is None) == (not args.amqp):
        print(
            "edge consume: give --broker mqtt://HOST:PORT or --amqp amqp://… (with --store), "
            "one or the other",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.amqp_password_file is not None and not args.amqp:
        print("edge consume: --amqp-password-file is for --amqp", file=sys.stderr)
        return EXIT_CONFIG
    if args.amqp:
        given = _amqp_password(args, "edge consume")
        if given is None:
            return EXIT_CONFIG
        args.amqp_password, args.amqp_password_source = given
    if args.store is not None:
        return _consume_store(args)
    import csv

    from edge.platform.consumer import (
        CSV_COLUMNS,
        BatchConsumer,
        Delivery,
        reading_csv,
        reading_json,
    )
    from edge.platform.ledger import EntryOutcome, TxLedger, entry_json

    args.format = args.format or "jsonl"
    writer = csv.writer(sys.stdout)
    if args.format == "csv":
        writer.writerow(CSV_COLUMNS)

    def show(batch: Delivery) -> None:
        h = batch.header
        for r in batch.readings:
            if args.format == "jsonl":
                print(reading_json(h, r))
            elif args.format == "csv":
                writer.writerow(reading_csv(h, r))
            else:
                print(f"{h.gateway} #{h.seq} {r.device}.{r.point} @{r.ts_ms} = {r.value}")
        sys.stdout.flush()

    def show_entry(gateway: str, site: str, o: EntryOutcome) -> None:
        if args.format == "jsonl":
            print(entry_json(gateway, site, o), flush=True)
        elif args.format == "text":
            print(f"{gateway} meter {o.entry.meter} #{o.entry.seq} {o.message}", flush=True)

    try:
        tls = None
        if args.ca_file or args.cert_file:
            from edge.shared.tls import client_context

            tls = client_context(args.ca_file, args.cert_file, args.key_file)
        pinned = _pinned_keys(args.trust_key)
        ledger = TxLedger(args.ledger or ":memory:", pinned=pinned)
        consumer = BatchConsumer(
            args.broker,
            tls_context=tls,
            prefix=args.prefix,
            share=args.share,
            client_id=args.client_id,
            on_batch=show,
            keep_duplicates=args.keep_duplicates,
            ledger=ledger,
            on_entry=show_entry,
        )
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"edge consume: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def go() -> int:
        try:
            if args.duration is None:
                await consumer.run()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(consumer.run(), args.duration)
        finally:
            for line in consumer.summary():
                print(line, file=sys.stderr, flush=True)
            if args.reconcile_json is not None:
                args.reconcile_json.write_text(ledger.reconcile_json() + "\n")
        return 0

    return _run(go())


def _amqp_url(text: str) -> str:
    """An argparse type: an amqp:// or amqps:// URL (the message never repeats a password)."""
    from edge.platform.amqp import check_amqp_url

    try:
        return check_amqp_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _topic_prefix(text: str) -> str:
    """An argparse type: an MQTT topic prefix as mqtt.topic_prefix takes it."""
    if not text.strip("/") or "#" in text or "+" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic prefix: give mqtt.topic_prefix of the gateways, "
            "e.g. city/v1 (no '#' or '+')"
        )
    return text


def _amqp_password(args: argparse.Namespace, prog: str) -> tuple[str | None, str] | None:
    """The AMQP password of ``--amqp-password-file`` or EDGE_AMQP_PASSWORD (the file wins) and
    where it came from; None after saying in one line why it cannot be used."""
    from edge.platform.amqp import amqp_password
    from edge.shared.secrets import SecretFileError

    try:
        return amqp_password(args.amqp_password_file)
    except (SecretFileError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def _auth_refused(prog: str, exc: Exception, source: str) -> None:
    """One line for credentials the broker refused, saying where the password came from."""
    from edge.platform.amqp import PASSWORD_HINT

    if source == "no password":
        print(f"{prog}: {exc}: {PASSWORD_HINT}", file=sys.stderr)
    else:
        print(f"{prog}: {exc}: check the user and the password in {source}", file=sys.stderr)


def cmd_broker_setup(args: argparse.Namespace) -> int:
    """Declare the RabbitMQ topology (edge/platform/amqp.py) on the first node that answers."""
    from edge.platform.amqp import (
        AmqpAuthError,
        AmqpError,
        ExtraMissing,
        declare_topology,
        redact,
    )

    given = _amqp_password(args, "edge broker-setup")
    if given is None:
        return EXIT_CONFIG
    password, source = given

    async def go() -> int:
        problems = []
        for url in args.amqp:
            try:
                lines, alternate = await declare_topology(url, args.topic_prefix, password=password)
            except AmqpAuthError as exc:  # a cluster shares its users: the others refuse too
                _auth_refused("edge broker-setup", exc, source)
                return 1
            except AmqpError as exc:
                print(f"edge broker-setup: {exc}", file=sys.stderr)
                problems.append(str(exc))
                continue
            print(f"broker {redact(url)}: topology for topics {args.topic_prefix.strip('/')}/…")
            for line in lines:
                print(line)
            sys.stdout.flush()
            return 0 if alternate else 1
        print(f"edge broker-setup: no node answered ({len(problems)} tried)", file=sys.stderr)
        return 1

    try:
        return _run(go())
    except ExtraMissing as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


def _pinned_keys(specs: list[str] | None) -> dict[str, bytes]:
    """``--trust-key GATEWAY=B64`` arguments as gateway -> Ed25519 public key (32 bytes).
    Raises ValueError naming the argument that is not one."""
    pinned = {}
    for spec in specs or []:
        gw, sep, b64 = spec.partition("=")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raw = b""
        if not sep or not gw or len(raw) != 32:
            raise ValueError(
                f"--trust-key {spec!r} must be GATEWAY=<base64 of a 32-byte Ed25519 key>"
            )
        pinned[gw] = raw
    return pinned


def _consume_store(args: argparse.Namespace) -> int:
    """``edge consume --store postgresql://…``: batches, births, statuses into PostgreSQL,
    acknowledged after the commit (edge/platform/store_consumer.py)."""
    err = sys.stderr
    if args.format is not None:
        print(
            "edge consume: --format prints readings; with --store they go to the database "
            "(query edge.readings_named): give one or the other",
            file=err,
        )
        return EXIT_CONFIG
    if args.keep_duplicates:
        print("edge consume: --keep-duplicates prints readings; not with --store", file=err)
        return EXIT_CONFIG
    if args.ledger is not None:
        print(
            "edge consume: with --store the parking ledger is in the same database (tables "
            "edge.ledger_*, shared by every consumer): --ledger FILE is for a consumer without "
            "--store",
            file=err,
        )
        return EXIT_CONFIG
    try:
        from edge.platform.pgledger import LedgerSchemaError, LedgerUnavailable, PgLedger
        from edge.platform.pgstore import PgStore, StoreSchemaError
        from edge.platform.store_consumer import MqttStoreSource, StoreConsumer, dsn_problem
    except ImportError:
        print(PLATFORM_EXTRA, file=err)
        return EXIT_CONFIG
    import psycopg

    problem = dsn_problem(args.store)
    if problem is not None:
        print(f"edge consume: {problem}", file=err)
        return EXIT_CONFIG
    try:
        tls = None
        if args.ca_file or args.cert_file:
            from edge.shared.tls import client_context

            tls = client_context(args.ca_file, args.cert_file, args.key_file)
        pinned = _pinned_keys(args.trust_key)
        consumer = StoreConsumer(
            PgStore(args.store),
            ledger_factory=functools.partial(PgLedger, args.store, pinned=pinned),
        )
        if args.amqp:
            from edge.platform.amqp import AmqpSource, ExtraMissing, require_extra

            try:
                require_extra()
            except ExtraMissing as exc:
                print(exc, file=err)
                return EXIT_CONFIG
            # The store retries an outage itself; what still escapes it stops the consumer,
            # the message unacknowledged (as the MQTT source does).
            source = AmqpSource(
                args.amqp,
                handler=consumer.handle,
                prefetch=args.prefetch,
                topic_prefix=args.prefix,
                stop_on=(Exception,),
                password=args.amqp_password,
            )
        else:
            source = MqttStoreSource(
                args.broker,
                consumer,
                tls_context=tls,
                prefix=args.prefix,
                share=args.share,
                client_id=args.client_id,
            )
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"edge consume: {exc}", file=err)
        return EXIT_CONFIG

    from edge.platform.amqp import AmqpAuthError

    async def go() -> int:
        try:
            await consumer.start()
        except (StoreSchemaError, LedgerSchemaError) as exc:
            print(f"edge consume: {exc}", file=err)
            return EXIT_CONFIG
        except psycopg.Error as exc:  # not an outage (those are retried): a refusal
            reason = " ".join(str(exc).split())
            print(f"edge consume: cannot open the store: {reason}", file=err)
            return 1
        code, refused = 0, False
        try:
            if args.duration is None:
                await source.run()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(source.run(), args.duration)
        except AmqpAuthError as exc:  # before any connection: nothing was consumed
            _auth_refused("edge consume", exc, args.amqp_password_source)
            code, refused = 1, True
        except (psycopg.Error, StoreSchemaError, sqlite3.Error) as exc:
            # Not an outage (those are retried): the schema, the server or the ledger file
            # refuses us.
            reason = " ".join(str(exc).split())
            print(
                f"edge consume: the store failed: {reason}; stopping (the message in hand "
                "was not acknowledged: the broker keeps it)",
                file=err,
            )
            code = 1
        finally:
            amqp = getattr(source, "stats", None) if args.amqp else None
            said = not refused  # refused at the door: the one line above says it all
            for line in await consumer.summary() if said else []:
                print(line, file=err, flush=True)
            if amqp is not None and said:
                print(
                    f"amqp: {amqp.acked} messages acknowledged ({amqp.redelivered} redelivered) "
                    f"over {amqp.connections} connection(s); {amqp.unroutable or 0} in "
                    "edge.unroutable (published on topics no binding takes)",
                    file=err,
                    flush=True,
                )
            ledger = consumer.ledger
            if ledger is not None:
                with contextlib.suppress(LedgerUnavailable):
                    rec = await asyncio.to_thread(ledger.reconcile)
                    if said and (rec.days or rec.meters):
                        for line in rec.lines():
                            print(line, file=err, flush=True)
                    if args.reconcile_json is not None:
                        text = await asyncio.to_thread(ledger.reconcile_json)
                        args.reconcile_json.write_text(text + "\n")
                ledger.close()
            await consumer.close()
        return code

    return _run(go())


def cmd_reconcile(args: argparse.Namespace) -> int:
    if args.store is not None:
        return _reconcile_store(args)
    from edge.platform.ledger import TxLedger

    if not args.ledger.exists():
        print(f"edge reconcile: no ledger at {args.ledger}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        ledger = TxLedger(args.ledger)
        if args.json:
            print(ledger.reconcile_json())
        else:
            print("\n".join(ledger.reconcile().lines()))
    except sqlite3.Error as exc:
        print(f"edge reconcile: {args.ledger} is not a readable ledger: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _reconcile_store(args: argparse.Namespace) -> int:
    """edge reconcile --store postgresql://...: the shared ledger in PostgreSQL."""
    try:
        from edge.platform import pgledger
    except ImportError:
        print(
            "edge reconcile --store needs the platform extra: pip install 'hanoi-edge[platform]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        ledger = pgledger.PgLedger(args.store)
        try:
            out = ledger.reconcile_json() if args.json else "\n".join(ledger.reconcile().lines())
        finally:
            ledger.close()
    except pgledger.LedgerUnavailable as exc:
        print(f"edge reconcile: {exc}", file=sys.stderr)
        return 1
    except pgledger.psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"edge reconcile: the ledger cannot be read: {first}", file=sys.stderr)
        return 1
    except pgledger.LedgerSchemaError as exc:
        print(f"edge reconcile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(out)
    return 0


def _pg_dsn(text: str) -> str:
    """argparse type for --store: a postgresql:// DSN with no password in it."""
    from edge.shared.secrets import dsn_secret_problem

    problem = dsn_secret_problem(text, "")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem.strip())
    return text


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.demo import run_demo

    try:
        return _run(
            run_demo(
                args.config, duration_s=args.duration, buffer_path=args.buffer, jsonl=args.jsonl
            )
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge", description="Hanoi smart-city edge gateway")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_ToolParser)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("--config", "-c", required=True, type=Path)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check",
        help="validate a config and this machine's paths for it, print the read plan (exit 2 "
        "if invalid); run it as the user the gateway runs as",
    )
    p.add_argument("config", type=Path)
    p.add_argument(
        "--config-only",
        action="store_true",
        help="the file alone, not this machine's paths (a config written for another machine)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "sim",
        help="run device simulators: a Modbus TCP endpoint, or an RS-485 line on a pty (--rtu)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--profile", help="the profile of every --unit")
    which.add_argument(
        "--profile-file",
        type=Path,
        metavar="FILE",
        help="a profile file (YAML, docs/profile-format.md) to serve at every --unit",
    )
    p.add_argument(
        "--served-log",
        type=Path,
        metavar="FILE",
        help="append a JSON line per point value served (ms, unit, point, value)",
    )
    p.add_argument("--unit", type=int, action="append", help="unit id (repeatable)")
    p.add_argument(
        "--device", action="append", metavar="PROFILE:UNIT", help="a device (repeatable; mixes)"
    )
    p.add_argument("--seed", default="sim", help="seed of the simulated values")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one")
    rtu = p.add_argument_group("RS-485 line (Modbus RTU on a pseudo-terminal)")
    rtu.add_argument("--rtu", action="store_true", help="serve on a pty instead of TCP")
    rtu.add_argument("--link", help="also make this path a symlink to the pty (/tmp/ttyRS485)")
    rtu.add_argument("--baud", type=int, default=9600)
    rtu.add_argument("--parity", choices=["N", "E", "O"], default="N")
    rtu.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    rtu.add_argument("--turnaround-ms", type=float, default=20.0, help="slave processing time")
    faults = p.add_argument_group("faults on demand")
    faults.add_argument("--silent", type=int, action="append", metavar="UNIT", help="never answers")
    faults.add_argument(
        "--exception", action="append", metavar="UNIT:CODE", help="answers every request with CODE"
    )
    faults.add_argument("--corrupt-crc", type=int, action="append", metavar="UNIT")
    faults.add_argument(
        "--garbage", type=int, default=0, metavar="N", help="N random bytes before every answer"
    )
    faults.add_argument(
        "--slow", action="append", metavar="UNIT:MS", help="turnaround of UNIT (TCP: its delay)"
    )
    faults.add_argument(
        "--swap-words", type=int, action="append", metavar="UNIT", help="32-bit words swapped"
    )
    serial_sensor = p.add_argument_group(
        "serial sensors (--profile plantower_pms5003 or novafitness_sds011, on a pty at --link)"
    )
    serial_sensor.add_argument("--warmup-s", type=float, default=30.0, help="fan spin-up")
    serial_sensor.add_argument(
        "--bad-checksum-every", type=int, default=0, metavar="N", help="corrupt every Nth frame"
    )
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "doctor", help="check a setup: config, ports, devices, clock, broker, buffer"
    )
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "scan", help="find the devices on an RS-485 port (and its setting) or behind a TCP gateway"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="a Modbus TCP gateway")
    p.add_argument(
        "--units",
        default="1-247",
        help="unit ids to try, e.g. 1-32 or 1,2,10-20 (1..247 on a serial line, 0..255 behind TCP)",
    )
    p.add_argument(
        "--turnaround-ms",
        type=_ms(*TURNAROUND_MS),
        default=50.0,
        help="slowest device to wait for (0..5000)",
    )
    p.add_argument(
        "--all-settings", action="store_true", help="keep trying settings after one answers"
    )
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        metavar="DIR_OR_FILE",
        help="rank your profile files too (a folder: its *.yaml files); repeatable",
    )
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser(
        "probe",
        help="read and decode registers of one unit, for a quick look; with --profile, every "
        "point of a profile, with hints where a value looks like a wrong byte order or scale",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="a profile file (or a shipped profile's name): read and decode all its points",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port")
    where.add_argument("--tcp", metavar="HOST[:PORT]")
    p.add_argument("--baud", type=_baud, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument(
        "--unit",
        type=_whole(0, None),
        required=True,
        help="unit id (1..247 on a serial line, 0..255 behind TCP)",
    )
    p.add_argument("--fc", type=int, choices=[1, 2, 3, 4], help="function code (default 4)")
    p.add_argument("--address", type=_whole(0, LAST_ADDRESS), help="0x0046 or 70 (default 0)")
    p.add_argument(
        "--count",
        type=_whole(1, None),
        help="registers (1..125) or bits (1..2000); default: one value",
    )
    p.add_argument(
        "--type",
        type=_data_type,
        help="float32 (default), uint16, int16, uint32 ...; string: --count registers of text",
    )
    p.add_argument("--word-order", choices=["big", "little"], default="big")
    p.add_argument(
        "--byte-order",
        choices=["ABCD", "CDAB", "BADC", "DCBA"],
        help="ABCD CDAB BADC DCBA (docs/profile-format.md); overrides --word-order; with "
        "--profile, read every point in this order (a device's byte_order override)",
    )
    p.add_argument(
        "--timeout-ms",
        type=_ms(*TIMEOUT_MS),
        default=500,
        help="10..60000",
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("profile", help="device profile files: check one, import a map")
    profile_sub = p.add_subparsers(dest="profile_command", required=True, parser_class=_ToolParser)
    p = profile_sub.add_parser(
        "check",
        help="validate a profile file (exit 2 at FILE:LINE:COL), print its read plan and the "
        "line time per poll",
    )
    p.add_argument("file", type=Path)
    p.add_argument(
        "--baud", type=_baud, help="the line's speed (default: the profile's factory line)"
    )
    p.add_argument("--parity", choices=["N", "E", "O"])
    p.add_argument("--stopbits", type=int, choices=[1, 2])
    p.add_argument(
        "--turnaround-ms",
        type=_ms(*TURNAROUND_MS),
        default=20.0,
        help="the device's turnaround (0..5000, default 20, as a device's turnaround_ms)",
    )
    p.set_defaults(func=cmd_profile_check)
    p = profile_sub.add_parser(
        "import",
        help="convert a Home Assistant modbus: YAML or Telegraf inputs.modbus TOML map into a "
        "profile file, listing what could not be converted",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=["ha", "telegraf"], help="default: from the file")
    p.add_argument("-o", "--output", type=Path, help="write the profile here (default: stdout)")
    p.add_argument("--force", action="store_true", help="replace -o's file if it exists")
    p.add_argument("--name", help="the profile's name (default: -o's file name, or the input's)")
    p.add_argument(
        "--unit", type=_whole(0, 255), help="the device's unit id, when the map has several"
    )
    p.add_argument("--hub", help="the HA hub / Telegraf plugin name, when two have the unit")
    p.set_defaults(func=cmd_profile_import)

    p = sub.add_parser(
        "sim-meters", help="simulated parking meters with durable journals, on the meter link"
    )
    p.add_argument(
        "--meter", action="append", metavar="ADDRESS=ID", help="a meter (repeatable; 1=HK-01)"
    )
    p.add_argument("--journal-dir", type=Path, default=Path("meter-journals"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7700, help="TCP port; 0 picks a free one")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    p.add_argument("--zone", default="HK-LTK")
    p.add_argument("--seed", default="sim")
    p.add_argument(
        "--no-business",
        action="store_true",
        help="write nothing new; only answer the gateway until the journals are delivered",
    )
    p.add_argument(
        "--corrupt-every", type=int, default=0, metavar="N", help="every Nth answer damaged"
    )
    p.add_argument("--rtu", action="store_true", help="an RS-485 bus on a pty instead of TCP")
    p.add_argument("--link", help="with --rtu: also make this path a symlink to the pty")
    p.add_argument("--baud", type=int, default=9600, help="with --rtu: the line's speed")
    p.set_defaults(func=cmd_sim_meters)

    p = sub.add_parser("consume", help="decode batches from a broker, one JSON object per reading")
    p.add_argument("--broker", help="mqtt://HOST:PORT")
    p.add_argument(
        "--amqp",
        action="append",
        type=_amqp_url,
        metavar="URL",
        help="consume the RabbitMQ queue edge.platform instead (amqp://USER@HOST:PORT/, no "
        "password: see --amqp-password-file; repeat for each node of a cluster); needs --store",
    )
    p.add_argument(
        "--amqp-password-file",
        type=Path,
        metavar="FILE",
        help="with --amqp: the user's password, alone in an owner-only file (chmod 600), used "
        "for every node; else the environment variable EDGE_AMQP_PASSWORD (the file wins when "
        "both are given)",
    )
    p.add_argument(
        "--prefetch",
        type=_whole(1, 65535),
        default=100,
        help="with --amqp: messages held unacknowledged at once (default 100)",
    )
    p.add_argument(
        "--format", choices=["jsonl", "csv", "text"], help="how readings are printed (jsonl)"
    )
    p.add_argument(
        "--store",
        metavar="POSTGRESQL_URL",
        help="write batches, births and statuses into this PostgreSQL database (schema edge, "
        "docs/platform-store.md) instead of printing; the password comes from PGPASSWORD, "
        "PGPASSFILE or ~/.pgpass, never the URL",
    )
    p.add_argument("--prefix", default="city/v1", help="topic prefix (mqtt.topic_prefix)")
    p.add_argument(
        "--share",
        metavar="GROUP",
        help="join an MQTT 5 shared subscription group (needs --client-id): "
        "consumers in one group split the batches between them",
    )
    p.add_argument("--ca-file", type=Path, help="CA to verify an mqtts:// broker")
    p.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
    p.add_argument("--key-file", type=Path, help="client key (PEM)")
    p.add_argument("--client-id", help="fixed id: a persistent session that survives restarts")
    p.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="print re-delivered batches again (they are reported either way)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument(
        "--ledger",
        type=Path,
        help="parking entries in this SQLite file: de-duplication and totals survive restarts "
        "(default: in memory)",
    )
    p.add_argument(
        "--trust-key",
        action="append",
        metavar="GATEWAY=B64",
        help="pin a gateway's Ed25519 public key (default: trust the first one its birth "
        "announces); repeatable",
    )
    p.add_argument(
        "--reconcile-json", type=Path, help="write the parking reconciliation here on exit"
    )
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser(
        "broker-setup",
        help="declare the RabbitMQ queues and bindings gateways and consumers need (before "
        "gateways connect)",
    )
    p.add_argument(
        "--amqp",
        action="append",
        required=True,
        type=_amqp_url,
        metavar="URL",
        help="a node (amqp://USER@HOST:PORT/, no password); repeat: the first that answers is used",
    )
    p.add_argument(
        "--amqp-password-file",
        type=Path,
        metavar="FILE",
        help="the user's password, alone in an owner-only file (chmod 600); else the "
        "environment variable EDGE_AMQP_PASSWORD (the file wins when both are given)",
    )
    p.add_argument(
        "--topic-prefix",
        type=_topic_prefix,
        default="city/v1",
        help="the gateways' mqtt.topic_prefix (default city/v1)",
    )
    p.set_defaults(func=cmd_broker_setup)

    p = sub.add_parser(
        "reconcile", help="the parking reconciliation per meter and day, from a consumer's ledger"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ledger", type=Path, help="a consumer's SQLite ledger file")
    src.add_argument(
        "--store",
        type=_pg_dsn,
        metavar="postgresql://USER@HOST:PORT/DB",
        help="the consumers' shared ledger in PostgreSQL (password in PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("demo", help="a simulated cabinet, the gateway and a live view, on loopback")
    p.add_argument("--config", type=Path, help="default: configs/demo.yaml")
    p.add_argument("--duration", type=float, help="stop after this many seconds (exit 0)")
    p.add_argument("--buffer", type=Path, help="buffer file (default: a temporary directory)")
    p.add_argument("--jsonl", action="store_true", help="print readings as JSON lines")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "unit", None) is None and args.command == "sim":
        args.unit = [1]
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`edge check ... | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again (Python docs, signal:
        # "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it


if __name__ == "__main__":
    sys.exit(main())
