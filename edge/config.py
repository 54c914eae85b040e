"""Gateway configuration: YAML, a strict typed schema, errors that name FILE:LINE:COL.

Validation runs in two phases (house style §13): the pydantic schema checks every field (unknown
keys, types, ranges, missing keys), then cross-field checks run on the validated model (duplicate
device ids, unknown profiles and points, timeout budget versus poll interval, the read plan).
Every error found is reported at once, each at the position of the offending key or value.

Each model subclasses its plain record in :mod:`edge.settings`, which holds what the running
gateway computes from the fields; :func:`runtime_view` turns a validated config into those plain
records, which load without pydantic (``edge run`` validates in a child process and keeps only
them).

:func:`load_config` (what ``edge check``, ``edge run`` and ``edge doctor`` use) also checks this
machine for what the config names: the buffer path must be a file the gateway can create or
write, as the user running the command (edge/store/storage.py), and the secret files (password,
token, TLS, signing key) must be ones ``edge run`` can use (edge/shared/secrets.py, tls.py,
signing.py). So whatever ``edge check`` accepts, ``edge run`` as the same user starts with,
and whatever ``edge run`` refuses in the config, ``edge check`` refuses at the same line.
(``check_storage=False``: a config written for another machine.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices import SensorProfile, get_profile
from edge import settings
from edge.config_yaml import MAX_CONFIG_BYTES, YamlData, YamlError, read_yaml
from edge.config_yaml import Positions as _Positions
from edge.plan import LinkCost, PlanError, ReadPlan, compile_plan
from edge.settings import LoadedConfig
from edge.shared.clock import load_zone
from edge.shared.secrets import secret_file_problem, url_secret_problem
from edge.shared.tls import TlsFileError
from edge.store.storage import path_problem

__all__ = [
    "BufferConfig",
    "CommandsConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "LoadedConfig",
    "ModbusTcpTransport",
    "MqttConfig",
    "ProcessingRule",
    "TimeConfig",
    "TlsConfig",
    "UartTransport",
    "load_config",
    "parse_config",
    "runtime_view",
]

#: Ids end up in MQTT topics and file names: no '/', '+', '#', spaces.
IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Ident = Annotated[str, Field(pattern=IDENT)]
#: MQTT topic levels: no wildcards.
TOPIC = r"^[^#+]+$"
#: A host name or address (RFC 1035: 253 characters at most).
Host = Annotated[str, Field(min_length=1, max_length=253)]
#: A TCP port to connect to or listen on: 0 would mean "any", which no peer answers on.
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(Exception):
    """The configuration is invalid. Fatal: fix the file; nothing was started."""

    def __init__(self, problems: list[tuple[str, int, int, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{f}:{line}:{col}: {msg}" for f, line, col, msg in problems))


class _Model(BaseModel):
    # NaN and infinities are refused as numbers (a YAML .nan is never a setting).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class GatewayConfig(_Model, settings.GatewayConfig):
    id: Ident
    site: Ident = "default"


class BufferConfig(_Model, settings.BufferConfig):
    #: The buffer file (relative: to the config's folder). Beside it the gateway keeps
    #: <name>-wal, <name>-shm and <name>.lock (one gateway per buffer).
    path: str = "buffer.sqlite"
    #: 1 MiB to 1 TiB (far past any cabinet's disk; the disk's own room limits it further).
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, le=1024**4)
    commit_interval_ms: int = Field(200, ge=1, le=60_000)
    synchronous: Literal["normal", "full"] = "normal"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "empty (it would name the config's own folder): give a file name, e.g. "
                "buffer.sqlite"
            )
        if v.endswith(("/", "/.", "/..")) or v in (".", "..", "~"):
            raise ValueError(
                f"{v!r} names a folder: give the buffer file in it, e.g. "
                f"{v.rstrip('/') or '/'}/buffer.sqlite"
            )
        return v


class TimeConfig(_Model, settings.TimeConfig):
    """When the gateway trusts its clock (edge/shared/clock.py)."""

    #: ntp: only once the kernel says NTP synchronised it; plausible: any time above the
    #: build-date floor until the clock steps; auto: ntp when an NTP client runs
    #: (systemd-timesyncd, chrony, ntpd), else plausible, said once in the log.
    trust: Literal["auto", "ntp", "plausible"] = "auto"
    #: Readings stamped while the clock is untrusted wait this long for it, then go out as
    #: 'uncertain' with the wall clock's guess.
    max_hold_s: float = Field(900.0, ge=0, le=7 * 86_400)
    #: Where local days and hours begin (an IANA name, e.g. Asia/Ho_Chi_Minh; default the
    #: system's zone): processing windows of an hour or more start at local midnight and at
    #: local multiples of their length. Every timestamp sent stays UTC.
    zone: str | None = None

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            load_zone(v)  # UnknownZone is a ValueError: reported at the value's line
        return v


class TlsConfig(_Model, settings.TlsConfig):
    """TLS to the broker (use an mqtts:// url). Paths are relative to the config file."""

    ca_file: str | None = None  # None: the system's CA store
    cert_file: str | None = None  # client certificate (PEM), when the broker requires one
    key_file: str | None = None  # its private key (PEM), unless inside cert_file


class MqttConfig(_Model, settings.MqttConfig):
    url: str = "mqtt://127.0.0.1:1883"
    tls: TlsConfig | None = None
    username: str | None = None
    #: Prefer password_file: the config file is shared more widely than a secret should be.
    password: str | None = Field(None, repr=False)
    #: A file holding the password alone, readable by its owner only (chmod 600).
    password_file: str | None = None
    client_id: Ident | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    publish_timeout_s: float = Field(5.0, gt=0, le=120)
    batch_max_readings: int = Field(5000, ge=1, le=1_000_000)
    #: Encoded batch size cap; keep it below the broker's maximum packet size.
    batch_max_bytes: int = Field(256 * 1024, ge=1024, le=256 * 1024 * 1024)
    #: MQTT version: "auto" speaks MQTT 5 and falls back to 3.1.1 when the broker refuses 5.
    protocol_version: Literal["auto", "5", "3.1.1"] = "auto"
    #: The broker's largest packet (the whole MQTT packet, bytes; Mosquitto: max_packet_size).
    #: Every message is kept under it, the birth sent in parts if need be. MQTT 5 brokers
    #: announce their own limit (the smaller one applies); under 3.1.1 a broker cannot, and
    #: may drop a larger message while acknowledging it: set this there.
    max_packet_bytes: int | None = Field(None, ge=512, le=268_435_460)
    batch_max_delay_ms: int = Field(5000, ge=0, le=3_600_000)
    #: Batches waiting for their PUBACK at once.
    max_inflight_batches: int = Field(4, ge=1, le=100)
    #: After an outage, held data drains at most this fast (0: no limit); fresh data goes first.
    drain_max_batches_per_s: float = Field(2.0, ge=0, le=1000)
    reconnect_min_s: float = Field(1.0, gt=0, le=600)
    reconnect_max_s: float = Field(60.0, gt=0, le=3600)
    stable_after_s: float = Field(60.0, ge=0, le=3600)
    topic_prefix: str = Field("city/v1", pattern=TOPIC)

    @field_validator("protocol_version", mode="before")
    @classmethod
    def _protocol_version(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool) and v == 5:
            return "5"  # YAML reads `protocol_version: 5` as a number
        if v not in ("auto", "5", "3.1.1"):
            raise ValueError(f'protocol_version must be auto, 5 or "3.1.1" (got {v!r})')
        return v

    @field_validator("url", mode="before")
    @classmethod
    def _url_secret(cls, v: object) -> object:
        # Never echo the value: a URL may carry a password (edge/shared/secrets.py).
        if not isinstance(v, str):
            raise ValueError("broker url must be text, e.g. mqtt://HOST:PORT")
        problem = url_secret_problem(v, "broker url")
        if problem is not None and "@" in v:
            raise ValueError(
                f"{problem}: give the user as mqtt.username and the password in "
                "mqtt.password_file (a file only its owner can read: chmod 600)"
            )
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("password", mode="before")
    @classmethod
    def _password(cls, v: object) -> object:
        # Never echo the value (a wrong type would otherwise be shown as "got ...").
        if v is not None and not isinstance(v, str):
            raise ValueError("must be text in quotes (better: the password in password_file)")
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: give the password, or leave mqtt.password out")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                "broker url must look like mqtt://HOST:PORT or mqtts://HOST:PORT "
                f"(got scheme {parts.scheme!r})"
            )
        if not parts.hostname:
            raise ValueError("broker url has no host")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(
                "broker url port must be from 1 to 65535 (or left out: 1883, 8883 for mqtts)"
            )
        return v


class ModbusTcpTransport(_Model, settings.ModbusTcpTransport):
    type: Literal["modbus_tcp"]
    host: Host
    port: Port = 502
    unit: int = Field(1, ge=0, le=255)
    #: Connections the gateway may open to this endpoint (a bridge serving several RS-485
    #: ports can answer in parallel; many devices and bridges allow only 1-4 clients).
    #: Devices on the endpoint are spread over them, each always on the same one.
    max_connections: int = Field(1, ge=1, le=8)


BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _check_baud(v: int) -> int:
    if v not in BAUD_RATES:
        raise ValueError(f"baud rate must be one of {', '.join(map(str, BAUD_RATES))}")
    return v


class ModbusRtuTransport(_Model, settings.ModbusRtuTransport):
    """A device on an RS-485 line; every device on one port shares it (one owner)."""

    type: Literal["modbus_rtu"]
    port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/serial/by-id/..., /dev/ttyAMA0
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit: int = Field(1, ge=1, le=247)
    #: After a request timed out, how long the line stays unused for its late answer (which
    #: RTU cannot tell from the next request's answer); what arrives meanwhile is discarded
    #: and counted. Default (unset): as long as that request's timeout_ms. A line setting:
    #: every device on the port gives the same value (edge/fieldbus/rtu.py, "Late answers").
    late_answer_ms: int | None = Field(None, ge=0, le=60_000)

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: _check_baud(v)))


class UartTransport(_Model, settings.UartTransport):
    """A serial sensor with its own protocol (PMS5003, SDS011) alone on its port."""

    type: Literal["uart"]
    port: str = Field(min_length=1)
    baudrate: int = 9600
    unit: int = 0  # no addresses on a point-to-point link

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: _check_baud(v)))

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: int) -> int:
        if v != 0:
            raise ValueError("a serial sensor has no address: leave unit out (or 0)")
        return v


Transport = Annotated[
    ModbusTcpTransport | ModbusRtuTransport | UartTransport, Field(discriminator="type")
]


AGGREGATES = ("mean", "min", "max", "first", "last", "count")


class ProcessingRule(_Model, settings.ProcessingRule):
    """What the gateway sends for some points of a device instead of every raw reading.

    * ``window_s``: one value per aggregate per window (windows aligned to the clock, stamped
      with the window's start), as series ``<point>.<aggregate>``; aggregates from mean, min,
      max, first, last, count and percentiles ``p1`` .. ``p99``;
    * ``deadband``: report a reading only when it moved more than this from the last one
      reported, and at least every ``heartbeat_s`` so a quiet value still reports;
    * ``raw: true`` with a window also sends every raw reading.
    """

    points: list[str] | None = None  # None: every point of the device
    window_s: float | None = Field(None, gt=0, le=86_400)
    aggregates: list[str] = Field(default_factory=lambda: ["mean", "min", "max", "count"])
    deadband: float | None = Field(None, ge=0)
    heartbeat_s: float = Field(300.0, gt=0, le=86_400)
    raw: bool = False

    @field_validator("aggregates")
    @classmethod
    def _aggregates(cls, v: list[str]) -> list[str]:
        for a in v:
            if a in AGGREGATES:
                continue
            if a.startswith("p") and a[1:].isdigit() and 1 <= int(a[1:]) <= 99:
                continue
            raise ValueError(
                f"unknown aggregate {a!r}; use {', '.join(AGGREGATES)} or a percentile p1..p99"
            )
        if not v or len(set(v)) != len(v):
            raise ValueError("aggregates must be a non-empty list without repeats")
        return v


class DeviceConfig(_Model, settings.DeviceConfig):
    id: Ident
    profile: str
    transport: Transport
    poll_interval_s: float = Field(5.0, ge=0.05, le=86_400)
    #: How long one request waits for its answer, and how many times a request that got none is
    #: tried again. Left out, they follow from the poll interval (see :func:`derive_timing`):
    #: 1000 ms and 1 retry when the interval allows, less when it is short.
    timeout_ms: int = Field(1000, ge=10, le=60_000)
    retries: int = Field(1, ge=0, le=5)
    points: list[str] | None = Field(None, min_length=1)
    max_registers: int | None = Field(None, ge=1, le=125)
    #: Read through unmapped gaps up to this many registers; by default the cost model decides
    #: from the line's timing and the device's turnaround (edge/plan.py).
    max_gap_registers: int | None = Field(None, ge=0, le=125)
    #: How long the device takes to start answering (the planner's cost model uses it).
    turnaround_ms: float = Field(20.0, ge=0, le=5000)
    #: Quiet time the device needs before a request to it (at least t3.5 on an RTU line).
    inter_request_delay_ms: float = Field(0.0, ge=0, le=5000)
    #: Serial sensors: "passive" (asked for each sample; duty-cycled when the interval allows)
    #: or "active" (the sensor streams, the latest frame is reported once per interval).
    mode: Literal["passive", "active"] = "passive"
    #: Serial sensors: seconds awake before a sample counts (default: the profile's, 30 s).
    warmup_s: float | None = Field(None, ge=0, le=600)
    #: Edge processing of this device's readings (windows, deadbands); raw when absent.
    processing: list[ProcessingRule] = Field(default_factory=list)


class WritablePoint(_Model, settings.WritablePoint):
    device: Ident
    point: str


class CommandsConfig(_Model, settings.CommandsConfig):
    """Platform commands on <prefix>/<site>/<gateway>/cmd."""

    enabled: bool = True
    max_payload_bytes: int = Field(4096, ge=64, le=1024 * 1024)
    #: The only points a ``write`` command may set; each must be writable in its profile.
    writable: list[WritablePoint] = Field(default_factory=list)
    #: Parking meter commands the platform may send (none unless listed): a tariff changes
    #: what people pay, so it is opened on purpose.
    meters: list[Literal["tariff", "time_sync", "enable"]] = Field(default_factory=list)


class StatusConfig(_Model, settings.StatusConfig):
    """The local status page (/) and Prometheus metrics (/metrics), read-only."""

    enabled: bool = True
    #: host:port; loopback by default. Any other address exposes the page and needs a token.
    listen: str = "127.0.0.1:8080"
    token_file: str | None = None  # a secret asked for as ?token= or "Authorization: Bearer"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or ":" in host or any(c.isspace() for c in host) or len(host) > 253:
            raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080 (got {v!r})")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"port must be from 1 to 65535 (got {port!r})")
        return v


class MeterConfig(_Model, settings.MeterConfig):
    id: Ident  # the meter's id on the platform (it names the meter in every signed entry)
    address: int = Field(ge=1, le=247)


class MeterLinkTcp(_Model, settings.MeterLinkTcp):
    """A pay station, or an RS-485 meter bus behind a TCP converter."""

    type: Literal["tcp"]
    host: Host
    port: Port


class MeterLinkRs485(_Model, settings.MeterLinkRs485):
    """Meters on an RS-485 bus on one of the gateway's serial ports (the bus owns the port)."""

    type: Literal["rs485"]
    port: str = Field(min_length=1)  # /dev/ttyUSB1, /dev/serial/by-id/...
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: _check_baud(v)))


MeterLink = Annotated[MeterLinkTcp | MeterLinkRs485, Field(discriminator="type")]


class ParkingBusConfig(_Model, settings.ParkingBusConfig):
    """Meters behind one link, polled in turn (docs/meter-link-v1.md). ``timeout_ms`` is how
    long a meter has to start answering (the spec's 1 s on TCP, 200 ms on RS-485); an answer
    that has started may take its wire time to finish."""

    id: Ident
    transport: MeterLink
    meters: list[MeterConfig] = Field(min_length=1)
    poll_interval_s: float = Field(1.0, ge=0.01, le=3600)  # per meter, when it has nothing
    timeout_ms: int = Field(1000, ge=10, le=60_000)


class ParkingConfig(_Model, settings.ParkingConfig):
    key_file: str = "gateway-ed25519.key"  # created 0600 on first use, beside the config
    buses: list[ParkingBusConfig] = Field(default_factory=list)
    max_entries_per_message: int = Field(200, ge=1, le=10_000)


class Config(_Model, settings.Config):
    gateway: GatewayConfig
    buffer: BufferConfig = BufferConfig()
    mqtt: MqttConfig = MqttConfig()
    commands: CommandsConfig = CommandsConfig()
    status: StatusConfig = StatusConfig()
    time: TimeConfig = TimeConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)
    parking: ParkingConfig = ParkingConfig()


def _check_processing(dev: DeviceConfig, base: tuple[Any, ...], points: list[str], at: Any) -> None:
    covered: dict[str, int] = {}
    for k, rule in enumerate(dev.processing):
        where = (*base, "processing", k)
        names = rule.points if rule.points is not None else points
        for j, name in enumerate(rule.points or []):
            if name not in points:
                at(
                    (*where, "points", j),
                    f"device {dev.id!r} does not read a point {name!r}",
                    uses=((*where, "points", j), (*base, "points"), (*base, "profile")),
                )
        for name in names:
            if name in covered:
                at(
                    where,
                    f"device {dev.id!r}: point {name!r} is in processing rules {covered[name]} "
                    f"and {k}; one rule per point",
                    uses=(
                        (*where, "points"),
                        (*base, "processing", covered[name], "points"),
                        (*base, "points"),
                    ),
                )
            covered.setdefault(name, k)
        if (rule.window_s is None) == (rule.deadband is None):
            at(
                where,
                "a processing rule takes either window_s or deadband",
                uses=((*where, "window_s"), (*where, "deadband")),
            )
        if rule.window_s is not None and rule.window_s < dev.poll_interval_s:
            at(
                (*where, "window_s"),
                f"window_s {rule.window_s:g} s is shorter than poll_interval_s "
                f"{dev.poll_interval_s:g} s: a window would hold at most one sample",
                uses=((*where, "window_s"), (*base, "poll_interval_s")),
            )
        if rule.raw and rule.window_s is None:
            at(
                (*where, "raw"),
                "raw: true goes with window_s (a deadband filters the raw values)",
                uses=((*where, "raw"), (*where, "window_s")),
            )


def _plan_inputs(base: tuple[Any, ...]) -> tuple[tuple[Any, ...], ...]:
    """What a device's read plan is compiled from (the paths of its settings)."""
    device = ("profile", "points", "max_registers", "max_gap_registers", "turnaround_ms")
    line = ("type", "baudrate", "parity", "stopbits")
    return (
        *((*base, k) for k in (*device, "inter_request_delay_ms")),
        *((*base, "transport", k) for k in line),
    )


def link_cost(dev: DeviceConfig) -> LinkCost:
    """The planner's cost model for one device on its link."""
    t = dev.transport
    if isinstance(t, ModbusRtuTransport):
        return LinkCost.rtu(t.timing(), dev.turnaround_ms / 1000, dev.inter_request_delay_ms / 1000)
    return LinkCost.tcp(dev.turnaround_ms / 1000)


def _check_lines(cfg: Config, at: Any) -> None:
    """Devices on one line: one unit id each; on one serial port, one set of line settings;
    a serial sensor alone on its port. Each check reads the named settings of two devices."""
    seen: dict[tuple[str, int], int] = {}
    settings: dict[str, int] = {}
    tcp: dict[str, int] = {}
    serial: dict[str, int] = {}  # serial port -> the first device on it
    devices = cfg.devices
    line_keys = ("type", "host", "port")
    for i, dev in enumerate(devices):
        t = dev.transport

        def other(j: int, *keys: str, i: int = i) -> tuple[Any, str, tuple[tuple[Any, ...], ...]]:
            """Device j's transport and id, and the settings of i and j a check reads."""
            uses = tuple(("devices", d, "transport", k) for d in (i, j) for k in keys)
            return devices[j].transport, devices[j].id, uses

        where = ("devices", i, "transport")
        if isinstance(t, ModbusRtuTransport | UartTransport):
            first, first_id, uses = other(serial.setdefault(t.port, i), *line_keys)
            if first is not t and "uart" in (t.type, first.type):
                at(
                    (*where, "port"),
                    f"device {dev.id!r}: serial port {t.port} is taken by {first_id!r}; a serial "
                    "sensor (type uart) has its port to itself",
                    uses=uses,
                )
                continue
        first, first_id, uses = other(seen.setdefault((t.line, t.unit), i), *line_keys, "unit")
        if first is not t:
            at(
                (*where, "unit"),
                f"device {dev.id!r}: unit {t.unit} on {t.line} is {first_id!r} too",
                uses=uses,
            )
        if isinstance(t, ModbusTcpTransport):
            keys = (*line_keys, "max_connections")
            first, first_id, uses = other(tcp.setdefault(t.line, i), *keys)
            if first.max_connections != t.max_connections:
                at(
                    (*where, "max_connections"),
                    f"device {dev.id!r}: {t.line} allows {first.max_connections} "
                    f"connection(s) for {first_id!r}; one endpoint has one limit",
                    uses=uses,
                )
        if isinstance(t, ModbusRtuTransport):
            keys = (*line_keys, "baudrate", "parity", "stopbits", "late_answer_ms")
            first, first_id, uses = other(settings.setdefault(t.port, i), *keys)
            if first.timing() != t.timing():
                at(
                    (*where, "baudrate"),
                    f"device {dev.id!r}: {t.port} runs at {first.baudrate} "
                    f"{first.parity}{first.stopbits} for {first_id!r}; one line has one setting",
                    uses=uses,
                )
            elif first.late_answer_ms != t.late_answer_ms:
                theirs = "unset" if first.late_answer_ms is None else f"{first.late_answer_ms} ms"
                at(
                    (*where, "late_answer_ms"),
                    f"device {dev.id!r}: {t.port} has late_answer_ms {theirs} for {first_id!r}; "
                    "one line has one setting",
                    uses=uses,
                )


# --------------------------------------------------------------------------- field problems

_DROPPED = "<dropped>"  # a step after a list's path: an item of it was left out


class _Doubts:
    """What the schema phase could not vouch for, so cross-field checks stay silent about it.

    ``bad``: values refused (left out, so a default stands in), and items left out of a list as
    ``(*list, _DROPPED, id)`` (or ``(*list, _DROPPED)`` when the item had no id); ``loose``:
    mappings with an unknown key, which may have been meant for any key they do not give (those
    keys hold defaults the person did not choose).
    """

    def __init__(self, pos: _Positions) -> None:
        self.pos = pos
        self.bad: set[tuple[Any, ...]] = set()
        self.loose: set[tuple[Any, ...]] = set()
        self._covered: set[tuple[Any, ...]] = set()  # every prefix of a bad or loose path

    def freeze(self) -> None:
        for path in self.bad | self.loose:
            self._covered.update(path[:n] for n in range(len(path) + 1))

    def __call__(self, *paths: tuple[Any, ...]) -> bool:
        """Whether a check that reads ``paths`` (values, or whole sections) may be misled."""
        for path in paths:
            if path in self._covered:  # the path holds a doubtful part
                return True
            for n in range(len(path)):
                head = path[:n]
                if head in self.bad:
                    return True
                if head in self.loose and (*head, path[n]) not in self.pos.key:
                    return True  # a default, and the unknown key may have been meant for it
        return False

    def renumber(self, lst: tuple[Any, ...], gone: dict[int, Any]) -> None:
        """Items ``gone`` (index: the item) were left out of the list at ``lst``."""
        self.bad = _renumbered(self.bad, lst, set(gone))
        self.loose = _renumbered(self.loose, lst, set(gone))
        for item in gone.values():
            name = item.get("id") if isinstance(item, dict) else None
            if isinstance(name, str):
                self.bad.add((*lst, _DROPPED, name))
            else:
                self.bad.add((*lst, _DROPPED))


def _renumbered(
    paths: set[tuple[Any, ...]], lst: tuple[Any, ...], gone: set[int]
) -> set[tuple[Any, ...]]:
    n, out = len(lst), set()
    for path in paths:
        if len(path) > n and path[:n] == lst and isinstance(path[n], int):
            if path[n] in gone:
                continue
            path = (*lst, path[n] - sum(1 for g in gone if g < path[n]), *path[n + 1 :])
        out.add(path)
    return out


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """The steps of pydantic's ``loc`` that are in ``data`` (union tags are not), and whether
    the last one is there (not for a missing key)."""
    path: tuple[Any, ...] = ()
    cur = data
    for i, step in enumerate(loc):
        if isinstance(cur, dict) and step in cur:
            cur = cur[step]
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            cur = cur[step]
        elif i == len(loc) - 1:
            return (*path, step), False
        else:
            continue
        path = (*path, step)
    return path, True


def _container(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _model_field(loc: tuple[Any, ...]) -> Any:
    """The pydantic FieldInfo that ``loc`` ends in (None when it cannot be told)."""
    model: Any = Config
    info = None
    for step in loc:
        if isinstance(step, int):
            continue
        if isinstance(model, list):  # a union: the step is the tag
            model = next((m for m in model if _tags_of(m) == [step]), None)
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None or step not in fields:
            return None
        info = fields[step]
        models = _models_in(info.annotation)
        model = models[0] if len(models) == 1 else models
    return info


def _models_in(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def _tags_of(model: Any) -> list[Any]:
    field = getattr(model, "model_fields", {}).get("type")
    return list(get_args(field.annotation)) if field is not None else []


def _one_of(values: list[Any]) -> str:
    shown = [str(v) for v in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _got(value: Any) -> str:
    """What a refused value was, shortly ("got the text '1'")."""
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, float) and not math.isfinite(value):
        return "got .nan" if math.isnan(value) else f"got {'-' if value < 0 else ''}.inf"
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"got a number of {len(str(abs(value)))} digits"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return f"got the text {text!r}"
    if isinstance(value, dict):
        return "got a mapping"
    if isinstance(value, list):
        return "got a list"
    return f"got {value!r}"


_TYPES = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list (lines starting with '- ', or [a, b])",
    "model_type": "a mapping (key: value lines, or {key: value})",
    "dict_type": "a mapping (key: value lines, or {key: value})",
}
_PATTERNS = {
    IDENT: "a name of 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
    "(it goes into MQTT topics and file names)",
    TOPIC: "text without '#' or '+' (MQTT wildcards)",
}


def _range(info: Any) -> str | None:
    """The range a number field takes, in words ("from 1 to 65535")."""
    low = high = None
    for m in info.metadata if info is not None else ():
        if getattr(m, "ge", None) is not None:
            low = ("from", "at least", m.ge)
        if getattr(m, "gt", None) is not None:
            low = ("more than", "more than", m.gt)
        if getattr(m, "le", None) is not None:
            high = ("to", "at most", m.le)
        if getattr(m, "lt", None) is not None:
            high = ("below", "below", m.lt)
    if low and high:
        if low[0] == "from" and high[0] == "to":
            return f"from {low[2]} to {high[2]}"
        return f"{low[1]} {low[2]} and {high[1]} {high[2]}"
    if low or high:
        word, bound = (low or high)[1:]  # type: ignore[misc]
        return f"{word} {bound}"
    return None


def _looks_like(kind: str, text: str) -> bool:
    """Whether quoted ``text`` would be the value a field of this type wants, unquoted."""
    if kind == "bool_type":
        return text.lower() in ("true", "false")
    try:
        (int if kind == "int_type" else float)(text.replace("_", ""))
    except ValueError:
        return False
    return True


def _explain(err: Any) -> str:
    """A pydantic error in the project's words, naming what the field takes."""
    kind, loc = err["type"], tuple(err["loc"])
    value, ctx = err.get("input"), err.get("ctx", {})
    info = _model_field(loc)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"must be {_range(info) or err['msg'].lower()} ({_got(value)})"
    if kind == "finite_number":
        return f"must be a finite number ({_got(value)}; .nan and .inf are not settings)"
    if kind in _TYPES:
        msg = f"must be {_TYPES[kind]}"
        if kind in ("int_type", "float_type") and _range(info):
            msg += f" {_range(info)}"
        hint = ""
        if isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
            hint = ": write it without quotes" if _looks_like(kind, value) else ""
        elif kind == "string_type" and isinstance(value, int | float):
            hint = ": put it in quotes if it is meant as text"
        return f"{msg} ({_got(value)}{hint})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        allowed = [v.strip("'") for v in expected.split(", ")]
        hint = ""
        if isinstance(value, str) and value in allowed:
            hint = ": write it without quotes"
        elif isinstance(value, bool):
            hint = ": YAML reads yes, no, on and off as true or false; put the word in quotes"
        choice = _one_of(allowed) if len(allowed) < 3 else f"one of {_one_of(allowed)}"
        return f"must be {choice} ({_got(value)}{hint})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(value)})"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s) (got {ctx.get('actual_length')})"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        return f"must be {_PATTERNS.get(pattern, f'text of the form {pattern}')} ({_got(value)})"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        members = _models_in(getattr(info, "annotation", None))
        tags = _one_of([t for m in members for t in _tags_of(m)])
        if kind == "union_tag_not_found":
            return f"needs a type: one of {tags}"
        return f"unknown type {ctx.get('tag')!r}: use {tags}"
    if kind == "value_error":
        return str(ctx.get("error", "")) or err["msg"]
    return err["msg"]


def _field_problems(
    data: dict[str, Any], read: YamlData, source: str
) -> tuple[Config | None, list[tuple[str, int, int, str]], _Doubts]:
    """Validate ``data`` against the schema; every field problem, in one pass.

    Then, so the cross-field checks can run in the same go, the data is repaired until it
    validates: an unknown key is dropped, a refused value left out (its default stands in), and
    what lacks a required key is left out of its list or section. Each repair is written down
    in the returned :class:`_Doubts`, and the checks stay silent about what it touches. The
    config is None when it cannot be repaired."""
    pos = read.pos
    doubts = _Doubts(pos)
    doubts.bad |= read.left_out | read.doubtful
    doubts.loose |= read.loose
    silent = set(read.left_out)  # reported by the YAML reader already
    problems: list[tuple[str, int, int, str]] = []
    stand_in: dict[str, str] | None = None
    for attempt in range(16):
        try:
            cfg = Config.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        else:
            doubts.freeze()
            return cfg, problems, doubts
        drops: dict[tuple[Any, ...], set[int]] = {}
        for err in errors:
            loc = tuple(err["loc"])
            path, present = _data_path(data, loc)
            quiet = any(path[:n] in silent for n in range(len(path) + 1))
            if attempt == 0 and not quiet:
                problems.append(_field_problem(err, loc, pos, source))
            if err["type"] == "extra_forbidden":
                parent = _container(data, path[:-1])
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                doubts.loose.add(path[:-1])
                continue
            if not present:  # a required key is missing: what lacks it goes
                path = path[:-1]
            if not path:  # only the gateway section is required at the top
                if loc != ("gateway",) or stand_in:
                    return None, problems, doubts
                data["gateway"] = stand_in = {"id": "gateway"}  # so the rest is checked
                doubts.bad.add(("gateway",))
                continue
            parent = _container(data, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
                doubts.bad.add(path)
                if quiet:
                    silent.add(path)
            elif isinstance(parent, list) and isinstance(path[-1], int):
                drops.setdefault(path[:-1], set()).add(path[-1])
        for lst in sorted(drops, key=len, reverse=True):  # inner lists first: indices hold
            items = _container(data, lst)
            if not isinstance(items, list):
                continue
            gone = {i: items[i] for i in drops[lst]}
            items[:] = [v for i, v in enumerate(items) if i not in gone]
            pos.drop_items(lst, set(gone))
            doubts.renumber(lst, gone)
            silent = _renumbered(silent, lst, set(gone))
    return None, problems, doubts


def _field_problem(
    err: Any, loc: tuple[Any, ...], pos: _Positions, source: str
) -> tuple[str, int, int, str]:
    kind = err["type"]
    if kind == "extra_forbidden":
        line, col = pos.locate(loc, prefer_key=True)
        parent = ".".join(str(x) for x in pos.known_path(loc[:-1])) or "top level"
        return source, line, col, f"unknown key {loc[-1]!r} in {parent}"
    if kind == "missing":
        line, col = pos.locate(loc[:-1], prefer_key=False)
        parent = ".".join(str(x) for x in pos.known_path(loc[:-1])) or "top level"
        return source, line, col, f"missing required key {loc[-1]!r} in {parent}"
    line, col = pos.locate(loc, prefer_key=False)
    where = ".".join(str(x) for x in pos.known_path(loc)) or "(top level)"
    return source, line, col, f"{where}: {_explain(err)}"


#: A timeout left out waits this long when the poll interval leaves room (ms), with this many
#: retries.
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_RETRIES = 1
#: A derived timeout is at least twice the device's slowest answer (its turnaround plus, on
#: RS-485, the request's and answer's wire time at the line's speed), and at least this (ms):
#: a timeout as short as the answer itself gives up on a device that is merely slow.
MIN_TIMEOUT_MS = 100


@dataclass(frozen=True)
class Timing:
    """A device's request timeout and retries, each as chosen or as derived; ``problem`` says
    what is wrong with a choice (reported at ``problem_key``)."""

    timeout_ms: int
    retries: int
    problem: str | None = None
    problem_key: str = "timeout_ms"


def derive_timing(dev: DeviceConfig, plan: ReadPlan | None) -> Timing:
    """``timeout_ms`` and ``retries`` for ``dev``: what the config gives, and for what it leaves
    out, the most that lets a dead device still keep its poll rate.

    A dead device costs, per request, every try's timeout, and on RS-485 each timeout also holds
    the line for the late-answer window (``late_answer_ms``, by default the timeout itself;
    edge/fieldbus/rtu.py, "Late answers"): ``(timeout + window) × (retries + 1)`` must fit in
    the poll interval. Left out, ``retries`` is 1, or 0 when a retry would leave a timeout
    shorter than :data:`MIN_TIMEOUT_MS` / twice the slowest answer; ``timeout_ms`` is the
    largest that fits, at most :data:`DEFAULT_TIMEOUT_MS`. Only a value the config gives is
    ever refused: both given and too long for the interval; or an interval (or retries) given
    that leaves no timeout the device could answer within.
    """
    chosen = dev.model_fields_set
    t = dev.transport
    budget_ms = dev.poll_interval_s * 1000
    rtu = isinstance(t, ModbusRtuTransport)
    fixed_window = t.late_answer_ms if rtu else None

    def per_try(timeout: float) -> float:
        if not rtu:
            return timeout
        return timeout + (timeout if fixed_window is None else fixed_window)

    def largest(retries: int) -> int:
        share = budget_ms / (retries + 1)
        if rtu:
            share = share / 2 if fixed_window is None else share - fixed_window
        return min(DEFAULT_TIMEOUT_MS, math.floor(share))

    need_ms = dev.turnaround_ms
    if plan is not None and plan.cost is not None and plan.requests:
        slowest = max(plan.cost.request_time_s(r.function_code, r.count) for r in plan.requests)
        need_ms = max(need_ms, slowest * 1000)
    floor_ms = max(MIN_TIMEOUT_MS, math.ceil(2 * need_ms))
    formula = "(timeout_ms + late-answer window)" if rtu else "timeout_ms"
    speed = f" at {t.baudrate} baud" if rtu else ""

    if "timeout_ms" in chosen:
        timeout = dev.timeout_ms
        if "retries" in chosen:
            options = [dev.retries]
        else:
            options = [DEFAULT_RETRIES, 0]
        for retries in options:
            if per_try(timeout) * (retries + 1) <= budget_ms:
                return Timing(timeout, retries)
        retries = options[-1]
        return Timing(
            timeout,
            retries,
            f"{formula} × (retries + 1) = {per_try(timeout) * (retries + 1):g} ms exceeds "
            f"poll_interval_s = {dev.poll_interval_s:g} s; a dead device could never keep its "
            "rate: shorten timeout_ms"
            + (", lower retries" if "retries" in chosen and retries else "")
            + " or lengthen poll_interval_s",
        )
    options = [dev.retries] if "retries" in chosen else [DEFAULT_RETRIES, 0]
    for retries in options:
        timeout = largest(retries)
        if timeout >= floor_ms:
            return Timing(timeout, retries)
    retries = options[-1]
    shortest_s = math.ceil(per_try(floor_ms) * (retries + 1) / 100) / 10
    return Timing(
        max(largest(retries), 10),
        retries,
        f"poll_interval_s = {dev.poll_interval_s:g} s leaves a timeout of at most "
        f"{max(largest(retries), 0)} ms for {retries + 1} tr{'ies' if retries else 'y'}"
        + (" (each timeout also holds the line as long again for a late answer)" if rtu else "")
        + f", and this device needs about "
        f"{floor_ms} ms (twice its slowest answer, {need_ms:.0f} ms{speed}): poll every "
        f"{shortest_s:g} s or more"
        + (", or lower retries" if retries else "")
        + (", or raise the line's baud rate" if rtu else ""),
        "retries" if "retries" in chosen and "poll_interval_s" not in chosen else "poll_interval_s",
    )


def _with_timing(cfg: Config, derived: dict[int, Timing]) -> Config:
    """``cfg`` with each device's derived timeout and retries in place of the defaults."""
    devices = list(cfg.devices)
    for i, timing in derived.items():
        devices[i] = devices[i].model_copy(
            update={"timeout_ms": timing.timeout_ms, "retries": timing.retries}
        )
    return cfg.model_copy(update={"devices": devices})


def _cross_checks(
    cfg: Config, pos: _Positions, source: str, base_dir: Path, doubts: _Doubts | None = None
) -> tuple[dict[str, ReadPlan], list[tuple[str, int, int, str]], dict[int, Timing]]:
    problems: list[tuple[str, int, int, str]] = []
    plans: dict[str, ReadPlan] = {}
    derived: dict[int, Timing] = {}  # device index -> timing that differs from the defaults

    def at(
        path: tuple[Any, ...],
        msg: str,
        *,
        key: bool = False,
        uses: tuple[tuple[Any, ...], ...] | None = None,
    ) -> None:
        """Report ``msg`` at ``path``, unless a value the check read (``uses``, by default the
        path itself) was repaired after a field problem: the check may be misled by it."""
        if doubts is not None and doubts(*(uses if uses is not None else (path,))):
            return
        problems.append((source, *pos.locate(path, prefer_key=key), msg))

    seen: dict[str, int] = {}
    for i, dev in enumerate(cfg.devices):
        base = ("devices", i)
        if dev.id in seen:
            first = pos.locate(("devices", seen[dev.id], "id"), prefer_key=False)
            at(
                (*base, "id"),
                f"duplicate device id {dev.id!r} (first defined at line {first[0]})",
                uses=((*base, "id"), ("devices", seen[dev.id], "id")),
            )
        else:
            seen[dev.id] = i
        try:
            profile = get_profile(dev.profile)
        except KeyError as exc:
            at((*base, "profile"), str(exc.args[0]))
            continue
        if dev.points is not None:
            for j, name in enumerate(dev.points):
                if name not in profile.point_names:
                    at(
                        (*base, "points", j),
                        f"profile {profile.name} has no point {name!r}",
                        uses=((*base, "points", j), (*base, "profile")),
                    )
            if len(set(dev.points)) != len(dev.points):
                at((*base, "points"), f"device {dev.id!r}: a point is listed twice")
        _check_processing(dev, base, dev.points or list(profile.point_names), at)
        is_uart = isinstance(dev.transport, UartTransport)
        if is_uart != isinstance(profile, SensorProfile):
            at(
                (*base, "transport", "type"),
                f"device {dev.id!r}: profile {profile.name} is "
                + (
                    f"a serial sensor ({profile.protocol}): use transport type uart"
                    if isinstance(profile, SensorProfile)
                    else "a Modbus device: use transport type modbus_tcp or modbus_rtu"
                ),
                uses=((*base, "transport", "type"), (*base, "profile")),
            )
            continue
        if not is_uart:  # a serial sensor's protocol says what it sends: no register plan
            try:
                plans[dev.id] = compile_plan(
                    profile,
                    dev.points,
                    max_registers=dev.max_registers,
                    max_gap_registers=dev.max_gap_registers,
                    cost=link_cost(dev),
                )
            except PlanError as exc:
                if dev.points is None or all(n in profile.point_names for n in dev.points):
                    at(base, f"device {dev.id!r}: {exc}", uses=_plan_inputs(base))
        timing = derive_timing(dev, plans.get(dev.id))
        if timing.problem is not None:
            at(
                (*base, timing.problem_key),
                f"device {dev.id!r}: {timing.problem}",
                uses=(
                    *((*base, k) for k in ("timeout_ms", "retries", "poll_interval_s")),
                    *((*base, "transport", k) for k in ("type", "late_answer_ms", "baudrate")),
                ),
            )
        elif (timing.timeout_ms, timing.retries) != (dev.timeout_ms, dev.retries):
            derived[i] = timing
    _check_lines(cfg, at)
    st = cfg.status
    if st.enabled and st.host not in ("127.0.0.1", "localhost", "::1") and not st.token_file:
        at(
            ("status", "listen"),
            f"status.listen {st.listen} exposes the status page beyond this machine: "
            "set status.token_file (a file holding the token) too",
            uses=(("status",),),
        )
    if st.token_file and not (base_dir / st.token_file).expanduser().is_file():
        at(("status", "token_file"), f"status.token_file {st.token_file} does not exist")
    by_id = {d.id: (i, d) for i, d in enumerate(cfg.devices)}
    for i, w in enumerate(cfg.commands.writable):
        where = ("commands", "writable", i)
        if w.device not in by_id:
            at(
                (*where, "device"),
                f"commands.writable: no device {w.device!r}",
                uses=((*where, "device"), ("devices", _DROPPED, w.device)),  # left out?
            )
            continue
        d, dev = by_id[w.device]
        uses = ((*where, "point"), ("devices", d, "profile"))
        try:
            point = get_profile(dev.profile).point(w.point)
        except KeyError:
            at(
                (*where, "point"),
                f"commands.writable: profile {dev.profile} has no point {w.point!r}",
                uses=uses,
            )
            continue
        if not point.writable:
            at(
                (*where, "point"),
                f"commands.writable: {dev.profile} point {w.point!r} is not writable "
                "in its profile",
                uses=uses,
            )
    tls = cfg.mqtt.tls
    if tls is not None and not cfg.mqtt.uses_tls:
        at(
            ("mqtt", "tls"),
            "mqtt.tls is set but mqtt.url is not mqtts://: the link would be plain",
            uses=(("mqtt", "tls"), ("mqtt", "url")),
        )
    if tls is not None:
        if tls.key_file and not tls.cert_file:
            at(
                ("mqtt", "tls", "key_file"),
                "key_file without cert_file",
                uses=(("mqtt", "tls", "key_file"), ("mqtt", "tls", "cert_file")),
            )
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, name)
            if (
                value
                and not (
                    base_dir / value if not Path(value).is_absolute() else Path(value)
                ).is_file()
            ):
                at(("mqtt", "tls", name), f"mqtt.tls.{name}: no such file {value!r}")
    if cfg.mqtt.reconnect_min_s > cfg.mqtt.reconnect_max_s:
        at(
            ("mqtt", "reconnect_min_s"),
            "reconnect_min_s is larger than reconnect_max_s",
            uses=(("mqtt", "reconnect_min_s"), ("mqtt", "reconnect_max_s")),
        )
    if cfg.mqtt.password is not None and cfg.mqtt.password_file is not None:
        at(("mqtt", "password_file"), "give either password or password_file, not both")
    if (cfg.mqtt.password is not None or cfg.mqtt.password_file) and cfg.mqtt.username is None:
        at(("mqtt",), "a password needs a username")
    meter_ids: dict[str, tuple[Any, ...]] = {}
    # A serial port has one owner: a Modbus line, a serial sensor, or one meter bus.
    ports = {
        d.transport.port: f"device {d.id!r}"
        for d in cfg.devices
        if isinstance(d.transport, ModbusRtuTransport | UartTransport)
    }
    for b, bus in enumerate(cfg.parking.buses):
        if isinstance(bus.transport, MeterLinkRs485):
            owner = ports.get(bus.transport.port)
            if owner is not None:
                at(
                    ("parking", "buses", b, "transport", "port"),
                    f"serial port {bus.transport.port} is already used by {owner}",
                )
            ports.setdefault(bus.transport.port, f"meter bus {bus.id!r}")
        addresses: set[int] = set()
        for k, meter in enumerate(bus.meters):
            where = ("parking", "buses", b, "meters", k)
            if meter.id in meter_ids:
                first = pos.locate((*meter_ids[meter.id], "id"), prefer_key=False)[0]
                at((*where, "id"), f"duplicate meter id {meter.id!r} (first at line {first})")
            meter_ids.setdefault(meter.id, where)
            if meter.address in addresses:
                at(
                    (*where, "address"),
                    f"bus {bus.id!r}: two meters at address {meter.address}",
                )
            addresses.add(meter.address)
    return plans, problems, derived


# --------------------------------------------------------------------------- loading


def _check_storage(
    cfg: Config, pos: _Positions, source: str, base_dir: Path
) -> list[tuple[str, int, int, str]]:
    """This machine, for what the config names: the buffer path (edge/store/storage.py)."""
    loaded = LoadedConfig(cfg, source, {}, base_dir)
    where = pos.locate(("buffer", "path"), prefer_key=False)
    path = loaded.buffer_path
    problem = path_problem(path)
    if problem is not None:
        problem = f"buffer.path: {problem}"
    else:
        # Files the gateway only reads must never be taken for its buffer (a salvage would
        # move them aside): the config itself, the key, the password and token files, TLS.
        t = cfg.mqtt.tls
        named = {
            "the config file itself": source,
            "parking.key_file": cfg.parking.key_file if cfg.parking.buses else None,
            "mqtt.password_file": cfg.mqtt.password_file,
            "status.token_file": cfg.status.token_file,
            "mqtt.tls.ca_file": t.ca_file if t else None,
            "mqtt.tls.cert_file": t.cert_file if t else None,
            "mqtt.tls.key_file": t.key_file if t else None,
        }
        for what, other in named.items():
            if other is None:
                continue
            other_path = Path(other) if what == "the config file itself" else loaded.resolve(other)
            if other_path.exists() and path.exists() and path.samefile(other_path):
                problem = f"buffer.path: {path} is {what}: give the buffer its own file"
            elif path.resolve() == other_path.resolve():
                problem = f"buffer.path: {path} is {what}: give the buffer its own file"
    return [] if problem is None else [(source, *where, problem)]


def _check_secrets(
    loaded: LoadedConfig, pos: _Positions, doubts: _Doubts | None = None
) -> list[tuple[str, int, int, str]]:
    """This machine, for the secrets the config names: what ``edge run`` would refuse when it
    reads them (the password and token files, the TLS files, the parking signing key). Silent on
    a setting the field checks already refused (``doubts``: it holds a default now)."""
    cfg, source = loaded.config, loaded.source
    problems: list[tuple[str, int, int, str]] = []

    def at(path: tuple[Any, ...], msg: str) -> None:
        if doubts is None or not doubts(path):
            problems.append((source, *pos.locate(path, prefer_key=False), msg))

    m = cfg.mqtt
    if m.password_file:
        problem = secret_file_problem(loaded.resolve(m.password_file), "mqtt.password_file")
        if problem is not None:
            at(("mqtt", "password_file"), problem)
    st = cfg.status
    if st.enabled and st.token_file and loaded.resolve(st.token_file).is_file():
        # (a missing one is reported with the other cross-field checks)
        problem = secret_file_problem(loaded.resolve(st.token_file), "status.token_file")
        if problem is not None:
            at(("status", "token_file"), problem)
    t = m.tls
    named = [getattr(t, k) for k in ("ca_file", "cert_file", "key_file")] if t else []
    if m.uses_tls and all(loaded.resolve(f).is_file() for f in named if f):
        try:
            loaded.tls_context()
        except TlsFileError as exc:
            at(("mqtt", "tls", exc.kind), f"mqtt.tls.{exc.kind} {exc}")
    if cfg.parking.buses:
        from edge.shared.signing import Signer

        problem = Signer.problem(loaded.resolve(cfg.parking.key_file))
        if problem is not None:
            at(("parking", "key_file"), f"parking.key_file: {problem}")
    return problems


def parse_config(
    text: str,
    source: str = "<config>",
    base_dir: Path | None = None,
    *,
    check_storage: bool = False,
) -> LoadedConfig:
    """Validate config text; raise :class:`ConfigError` listing every problem found: the YAML
    reader's, the schema's and the cross-field checks', in one go (see :func:`_field_problems`).
    ``check_storage``: also check this machine's paths (see the module doc)."""
    try:
        read = read_yaml(text)
    except YamlError as exc:
        raise ConfigError([(source, *p) for p in exc.problems]) from None
    problems = [(source, *p) for p in read.problems]
    if not isinstance(read.data, dict):
        if read.data is not None or not problems:
            problems.append((source, 1, 1, "the config must be a YAML mapping (key: value)"))
        raise ConfigError(problems)
    cfg, field_problems, doubts = _field_problems(read.data, read, source)
    problems += field_problems
    if cfg is None:
        raise ConfigError(problems)
    base = base_dir or Path.cwd()
    plans, cross, derived = _cross_checks(cfg, read.pos, source, base, doubts)
    if derived:
        cfg = _with_timing(cfg, derived)
    problems += cross
    if check_storage and not doubts(("buffer",)):
        problems += _check_storage(cfg, read.pos, source, base)
    if check_storage:
        problems += _check_secrets(LoadedConfig(cfg, source, plans, base), read.pos, doubts)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p[1], p[2])))
    return LoadedConfig(cfg, source, plans, base)


def load_config(path: str | Path, *, check_storage: bool = True) -> LoadedConfig:
    """Read and validate a config file, with this machine's paths unless ``check_storage`` is
    False (a config written for another machine). :class:`ConfigError` lists every problem.
    A file over :data:`edge.config_yaml.MAX_CONFIG_BYTES` is refused unread."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([(str(p), 1, 1, f"cannot read config: {exc}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [(str(p), 1, 1, f"the config is over {MAX_CONFIG_BYTES:,} bytes, the most a config "
              "may have (a cabinet's is a few KB): is this the right file?")]
        )  # fmt: skip
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [(str(p), line, col, "not UTF-8 text: save the config as UTF-8")]
        ) from None
    return parse_config(text, str(p), p.resolve().parent, check_storage=check_storage)


def runtime_view(loaded: LoadedConfig) -> LoadedConfig:
    """``loaded`` with its config as the plain records of :mod:`edge.settings`: the same fields
    and values, no pydantic model inside, so it pickles into a process that never imports
    pydantic (``edge run``, see :mod:`edge.settings`)."""
    return LoadedConfig(_plain(loaded.config), loaded.source, loaded.plans, loaded.base_dir)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        record = next(
            c for c in type(value).__mro__ if c.__module__ == settings.__name__
        )  # every model here subclasses its record
        return record(**{name: _plain(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
