"""``edge demo``: a simulated cabinet, the gateway and a live view, in one process, on loopback.

Starts the embedded broker (amqtt) on a free port, a simulator for every device in the demo
config (devices sharing a host:port share one simulated bridge) and for every parking meter bus,
the gateway pointed at them, and a consumer that prints decoded readings as batches arrive and
each parking payment its ledger accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import shutil
import sys
import tempfile
import zlib
from datetime import datetime
from importlib import resources
from pathlib import Path

from devices import Profile, SensorProfile
from edge.agent.gateway import Gateway
from edge.config import LoadedConfig, ModbusRtuTransport, UartTransport, load_config
from edge.platform.consumer import BatchConsumer, Delivery, reading_json
from edge.platform.ledger import EntryOutcome, entry_json
from edge.uplink.broker import EmbeddedBroker
from protocols.meterlink import Method, Payment
from simulators import ProfileSimUnit, SimServer, serve_modbus_tcp, sim_unit
from simulators.parking_meter import Journal, Meter, MeterServer
from simulators.particulate import Pms5003Sim, Sds011Sim, UartSim
from simulators.rtu_line import RtuSimLine, serve_rtu

__all__ = ["SimulatedCabinet", "default_demo_config", "run_demo", "simulate_cabinet"]

log = logging.getLogger(__name__)

#: Series shown besides the profile's key points (by point name: ``pm2_5`` covers ``pm2_5.mean``).
HEADLINE = (
    "voltage_l1",
    "voltage",
    "current_l1",
    "current",
    "total_power",
    "power",
    "total_power_factor",
    "power_factor",
    "frequency",
    "import_energy",
    "temperature",
    "humidity",
    "distance",
    "air_temperature",
    "air_humidity",
    "wind_speed_avg",
    "light_intensity",
    "co2",
    "pm2_5",
    "pm10",
)


def default_demo_config() -> Path:
    local = Path("configs/demo.yaml")
    if local.is_file():
        return local
    return Path(str(resources.files("edge") / "data" / "demo.yaml"))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.1f}"
    return str(value)


ALARMS = ("door_open", "leakage_trip", "breaker_trip", "local_override")


def _lighting(values: dict[str, object]) -> list[str]:
    """A lighting controller's state in a few words: segments on/off with dim levels, alarms."""
    relays = sorted(k for k in values if k.startswith("relay_segment_"))
    out = []
    if relays:
        segs = []
        for k in relays:
            n = k.rsplit("_", 1)[1]
            dim = values.get(f"dim_level_segment_{n}")
            state = "on" if values[k] else "off"
            segs.append(f"{n}:{state}" + (f"@{dim}%" if values[k] and dim is not None else ""))
        out.append("segments " + " ".join(segs))
    if "photocell_dark" in values:
        out.append("photocell " + ("dark" if values["photocell_dark"] else "light"))
    out += [f"ALARM {a}" for a in ALARMS if values.get(a) is True]
    return out


class LiveView:
    """Prints one line per device per batch with its headline values (or JSON lines)."""

    def __init__(self, loaded: LoadedConfig, *, jsonl: bool, out=sys.stdout) -> None:
        self.jsonl = jsonl
        self.out = out
        #: device -> its profile's points, in profile order: name -> (unit, key)
        self.points = {
            d.id: {p.name: (p.unit, p.key) for p in loaded.profiles[d.id].points}
            for d in loaded.config.devices
        }
        self.zone = loaded.time_zone()[0]
        self.readings = 0
        self.batches = 0
        self.entries = 0

    def __call__(self, batch: Delivery) -> None:
        self.batches += 1
        self.readings += len(batch.readings)
        header = batch.header
        if self.jsonl:
            for r in batch.readings:
                print(reading_json(header, r), file=self.out)
            self.out.flush()
            return
        latest: dict[str, dict[str, object]] = {}
        counts: dict[str, int] = {}
        for r in batch.readings:
            latest.setdefault(r.device, {})[r.point] = r.value
            counts[r.device] = counts.get(r.device, 0) + 1
        clock = datetime.fromtimestamp(header.created_ms / 1000, self.zone).strftime("%H:%M:%S")
        for device, values in latest.items():
            shown = self.headline(device, values)
            print(
                f"{clock} batch {header.seq:<4} {device:<19} {counts[device]:>3} readings  "
                + "  ".join(shown),
                file=self.out,
            )
        if header.dropped:
            print(
                f"{clock} batch {header.seq}: gateway evicted {header.dropped} readings",
                file=self.out,
            )
        self.out.flush()

    def headline(self, device: str, values: dict[str, object]) -> list[str]:
        """What one line shows of a device's batch, never nothing: its key points and the
        usual headline series, each window aggregate (``pm2_5.mean``) with its point's unit, in
        profile order; else its first values; else its health (``_status`` ...)."""
        points = self.points.get(device, {})
        order = {name: i for i, name in enumerate(points)}

        def base(name: str) -> str:
            return name.split(".")[0]

        def show(name: str) -> str:
            unit = "" if name.endswith(".count") else points.get(base(name), ("", False))[0]
            return f"{name}={_fmt(values[name])}{(' ' + unit) if unit else ''}"

        data = sorted(
            (n for n in values if not n.startswith("_")),
            key=lambda n: (order.get(base(n), len(order)), n),
        )
        chosen = [
            n for n in data if points.get(base(n), ("", False))[1] or base(n) in HEADLINE
        ] or data[:6]
        shown = [show(n) for n in chosen] + _lighting(values)
        if not shown:  # health only (a window not yet closed, a device offline)
            shown = [f"{n.lstrip('_')}={_fmt(v)}" for n, v in sorted(values.items())]
        return shown

    def entry(self, gateway: str, site: str, o: EntryOutcome) -> None:
        """A parking meter entry the ledger accepted (signature verified, first time seen)."""
        self.entries += 1
        if self.jsonl:
            print(entry_json(gateway, site, o), file=self.out, flush=True)
            return
        msg = o.message
        if isinstance(msg, Payment):
            try:
                method = Method(msg.method).name.lower()
            except ValueError:
                method = str(msg.method)
            clock = datetime.now(self.zone).strftime("%H:%M:%S")
            print(
                f"{clock} parking  {o.entry.meter:<12} #{o.entry.seq:<5} paid "
                f"{msg.amount_vnd:>9,} VND by {method:<15} {msg.transaction_id} (signed)",
                file=self.out,
                flush=True,
            )


@dataclasses.dataclass
class SimulatedCabinet:
    """Simulators for every device of a config, and the config rewritten to use them."""

    loaded: LoadedConfig
    servers: list[SimServer | RtuSimLine | UartSim | MeterServer]
    where: dict[str, str]  # config line -> where its simulator listens
    tty_dir: Path | None = None  # where the serial sensors' port links live

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        if self.tty_dir is not None:
            shutil.rmtree(self.tty_dir, ignore_errors=True)


async def simulate_cabinet(
    loaded: LoadedConfig, *, broker_url: str, buffer_path: Path, **mqtt: object
) -> SimulatedCabinet:
    """Start one simulator per line of the config, with its devices' unit ids on it: a Modbus
    TCP endpoint on a free loopback port (as a TCP-to-RTU bridge), or an RS-485 line on a
    pseudo-terminal paced at the line's baud rate. Return the config pointed at them, at
    ``broker_url`` and at ``buffer_path`` (plus any ``mqtt`` field overrides)."""
    cfg = loaded.config
    lines: dict[str, list[ProfileSimUnit]] = {}
    for dev in cfg.devices:
        t = dev.transport
        if not isinstance(t, UartTransport):
            profile = loaded.profiles[dev.id]  # as the gateway polls it (its overrides too)
            assert isinstance(profile, Profile)
            lines.setdefault(t.line, []).append(sim_unit(profile, t.unit, seed=dev.id))
    servers: list[SimServer | RtuSimLine | UartSim | MeterServer] = []
    moved: dict[str, dict[str, object]] = {}
    where: dict[str, str] = {}
    ttys = Path(tempfile.mkdtemp(prefix="edge-demo-tty-"))
    for dev in cfg.devices:
        t = dev.transport
        if t.line in moved:
            continue
        if isinstance(t, UartTransport):
            kind = loaded.profiles[dev.id]
            assert isinstance(kind, SensorProfile)
            sim_cls = Pms5003Sim if kind.protocol == "pms5003" else Sds011Sim
            warmup = kind.warmup_s if dev.warmup_s is None else dev.warmup_s
            sensor = await sim_cls(
                ttys / dev.id, seed=zlib.crc32(dev.id.encode()), warmup_s=warmup
            ).start()
            servers.append(sensor)
            moved[t.line] = {"port": str(sensor.path)}
            where[t.line] = f"UART {sensor.path}"
            continue
        units = lines[t.line]
        if isinstance(t, ModbusRtuTransport):
            line = await serve_rtu(units, t.timing())
            servers.append(line)
            moved[t.line] = {"port": line.path}
            where[t.line] = f"RS-485 {line.path} {t.baudrate} 8{t.parity}{t.stopbits}"
        else:
            server = await serve_modbus_tcp(units)
            servers.append(server)
            moved[t.line] = {"host": "127.0.0.1", "port": server.port}
            where[t.line] = f"Modbus TCP 127.0.0.1:{server.port}"
    devices = [
        d.model_copy(update={"transport": d.transport.model_copy(update=moved[d.transport.line])})
        for d in cfg.devices
    ]
    buses = []
    for bus in cfg.parking.buses:  # each bus: simulated meters on a free loopback port
        meters = {
            m.address: Meter(m.id, Journal(ttys / f"journal-{m.id}.sqlite"), speed=600, seed=m.id)
            for m in bus.meters
        }
        station = await MeterServer(meters).start()
        servers.append(station)
        where[f"parking:{bus.id}"] = f"parking meters 127.0.0.1:{station.port}"
        link = {"type": "tcp", "host": "127.0.0.1", "port": station.port}
        buses.append(bus.model_copy(update={"transport": type(bus.transport)(**link)}))
    parking = cfg.parking.model_copy(
        update={"buses": buses, "key_file": str(buffer_path.parent / "demo-gateway.key")}
    )
    new_cfg = cfg.model_copy(
        update={
            "devices": devices,
            "parking": parking,
            "mqtt": cfg.mqtt.model_copy(update={"url": broker_url, **mqtt}),
            "buffer": cfg.buffer.model_copy(update={"path": str(buffer_path)}),
            # a free port: never clash with a gateway already running on this machine
            "status": cfg.status.model_copy(update={"listen": "127.0.0.1:0"}),
        }
    )
    return SimulatedCabinet(dataclasses.replace(loaded, config=new_cfg), servers, where, ttys)


async def run_demo(
    config: Path | None = None,
    *,
    duration_s: float | None = None,
    buffer_path: Path | None = None,
    jsonl: bool = False,
) -> int:
    # The buffer goes to buffer_path (a temporary folder by default), not to the config's path.
    loaded = load_config(config or default_demo_config(), check_storage=False)
    cfg = loaded.config
    broker = await EmbeddedBroker().start()
    cabinet: SimulatedCabinet | None = None
    tmp = None
    try:
        if buffer_path is None:
            tmp = tempfile.TemporaryDirectory(prefix="edge-demo-")
            buffer_path = Path(tmp.name) / "buffer.sqlite"
        cabinet = await simulate_cabinet(loaded, broker_url=broker.url, buffer_path=buffer_path)
        demo = cabinet.loaded
        view = LiveView(demo, jsonl=jsonl)
        consumer = BatchConsumer(
            broker.url, prefix=cfg.mqtt.topic_prefix, on_batch=view, on_entry=view.entry
        )
        gateway = Gateway(demo)
        say = sys.stderr if jsonl else sys.stdout
        print(
            f"edge demo: broker {broker.url} (embedded amqtt), "
            f"{len(cfg.devices)} simulated devices on "
            + ", ".join(cabinet.where.values())
            + f", buffer {buffer_path}",
            file=say,
            flush=True,
        )
        print(
            "Ctrl-C stops." if duration_s is None else f"running {duration_s:g} s",
            file=say,
            flush=True,
        )
        consumer_task = asyncio.create_task(consumer.run(), name="consumer")
        await asyncio.wait_for(consumer.subscribed.wait(), 10)
        gateway_task = asyncio.create_task(gateway.run(), name="gateway")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await gateway.started.wait()
        if gateway.status_page is not None:
            print(f"status page: {gateway.status_page.url}", file=say, flush=True)
        try:
            if duration_s is None:
                await gateway_task
            else:
                done, _ = await asyncio.wait({gateway_task}, timeout=duration_s)
                if done:
                    gateway_task.result()  # the gateway died: surface its error
        finally:
            gateway_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gateway_task
            await asyncio.sleep(0.3)  # let the last acknowledged batch reach the view
            consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer_task
        polled = sum(p.stats.readings for p in gateway.pollers)
        f = gateway.forwarder.stats
        unsent = gateway.writer_stats.accepted - f.readings_sent
        kept = f"kept in {buffer_path}" if tmp is None else "discarded with the temporary buffer"
        print(
            f"edge demo: polled {polled} readings, accepted {gateway.writer_stats.accepted}, "
            f"sent {f.readings_sent} in {f.batches_sent} batches; the consumer decoded "
            f"{view.readings} readings and {view.entries} parking entries; {unsent} accepted but "
            f"unsent at exit ({kept})",
            file=say,
            flush=True,
        )
        for line in consumer.summary():
            print(f"edge demo: {line}", file=say, flush=True)
        return 0 if view.readings > 0 else 1
    finally:
        if cabinet is not None:
            await cabinet.close()
        await broker.stop()
        if tmp is not None:
            tmp.cleanup()
