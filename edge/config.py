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

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, field_validator

from devices import AnyProfile, ProfileError, SensorProfile
from edge import settings
from edge.config_schema import BAUD_RATES as BAUD_RATES  # the baud rates a line may take
from edge.config_schema import DROPPED as _DROPPED
from edge.config_schema import TOPIC, ConfigError, Ident, check_baud
from edge.config_schema import Doubts as _Doubts
from edge.config_schema import StrictModel as _Model
from edge.config_schema import field_problems as _schema_problems
from edge.config_schema import models_in as _models_in  # noqa: F401 (tests sweep the schema)
from edge.config_yaml import MAX_CONFIG_BYTES, YamlError, read_yaml
from edge.config_yaml import Positions as _Positions
from edge.plan import LinkCost, PlanError, ReadPlan, compile_plan
from edge.profiles import (
    MAX_PROFILE_FILES,
    ProfileSet,
    load_user_profiles,
    profile_files,
    with_overrides,
)
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

#: A host name or address (RFC 1035: 253 characters at most).
Host = Annotated[str, Field(min_length=1, max_length=253)]
#: A TCP port to connect to or listen on: 0 would mean "any", which no peer answers on.
Port = Annotated[int, Field(ge=1, le=65535)]


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


def _broker_url_text(v: object) -> object:
    """A broker URL's first check: text, and no credentials in it (never echo the value: a URL
    may carry a password, edge/shared/secrets.py)."""
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


def _broker_url(v: str) -> str:
    """mqtt:// or mqtts://, a host, a port 1..65535 or none."""
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


#: A broker URL, checked as mqtt.url is (an item of mqtt.failover_urls).
BrokerUrl = Annotated[str, BeforeValidator(_broker_url_text), AfterValidator(_broker_url)]


class MqttConfig(_Model, settings.MqttConfig):
    url: str = "mqtt://127.0.0.1:1883"
    #: Other nodes of the same broker cluster (same credentials and TLS as url): when a
    #: connection to one fails or is lost, the gateway tries the next, round robin.
    failover_urls: list[BrokerUrl] = Field(default_factory=list, max_length=16)
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
        return _broker_url_text(v)

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
        return _broker_url(v)


class ModbusTcpTransport(_Model, settings.ModbusTcpTransport):
    type: Literal["modbus_tcp"]
    host: Host
    port: Port = 502
    unit: int = Field(1, ge=0, le=255)
    #: Connections the gateway may open to this endpoint (a bridge serving several RS-485
    #: ports can answer in parallel; many devices and bridges allow only 1-4 clients).
    #: Devices on the endpoint are spread over them, each always on the same one.
    max_connections: int = Field(1, ge=1, le=8)


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

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: check_baud(v)))


class UartTransport(_Model, settings.UartTransport):
    """A serial sensor with its own protocol (PMS5003, SDS011) alone on its port."""

    type: Literal["uart"]
    port: str = Field(min_length=1)
    baudrate: int = 9600
    unit: int = 0  # no addresses on a point-to-point link

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: check_baud(v)))

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
    #: Per-device overrides of the profile (docs/profile-format.md §0.5): every point read in
    #: this byte order; every address of the profile moved by this many registers.
    byte_order: Literal["ABCD", "CDAB", "BADC", "DCBA"] | None = None
    address_offset: int = Field(0, ge=-65535, le=65535)


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
    #: The page's language: vi or en, or auto (the browser's Accept-Language; English else).
    language: Literal["auto", "vi", "en"] = "auto"

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

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: check_baud(v)))


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
    #: User profile files and folders, relative to the config's folder (docs/profile-format.md
    #: §0.4); None: the folder profiles/ beside the config, when there is one.
    profiles: list[Annotated[str, Field(min_length=1)]] | None = None


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
    cfg: Config,
    pos: _Positions,
    source: str,
    base_dir: Path,
    doubts: _Doubts | None = None,
    profiles: dict[str, AnyProfile] | None = None,
) -> tuple[dict[str, ReadPlan], list[tuple[str, int, int, str]], dict[int, Timing]]:
    """Checks across fields; ``profiles``: each device's (:func:`_device_profiles`), a device
    without one (unknown or broken: reported there) is not checked further."""
    profiles = profiles or {}
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
        profile = profiles.get(dev.id)
        if profile is None:
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
        if dev.id not in profiles:
            continue
        try:
            point = profiles[dev.id].point(w.point)
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
    for i, other in enumerate(cfg.mqtt.failover_urls):
        if urlsplit(other).scheme != urlsplit(cfg.mqtt.url).scheme:
            at(
                ("mqtt", "failover_urls", i),
                f"mqtt.failover_urls: {other} is {urlsplit(other).scheme}:// but mqtt.url is "
                f"{urlsplit(cfg.mqtt.url).scheme}://: every node is reached with mqtt.url's TLS "
                "and credentials, so give the same scheme",
                uses=(("mqtt", "failover_urls", i), ("mqtt", "url")),
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


# --------------------------------------------------------------------------- profiles


def _user_profiles(
    cfg: Config, pos: _Positions, source: str, base_dir: Path, doubts: _Doubts
) -> tuple[ProfileSet, list[tuple[str, int, int, str]]]:
    """The user profile files the config names (``profiles:``, default the folder profiles/
    beside it), read beside the shipped ones; their problems at their own FILE:LINE:COL, the
    config's (a path that does not exist) at its line."""
    problems: list[tuple[str, int, int, str]] = []
    files: list[Path] = []

    def folder(path: Path, where: tuple[Any, ...]) -> None:
        try:
            files.extend(profile_files(path))
        except OSError as exc:
            problems.append(
                (source, *pos.locate(where, prefer_key=False), f"profiles: cannot read {path}: "
                 f"{exc.strerror or exc}")
            )  # fmt: skip

    if cfg.profiles is None:
        if (base_dir / "profiles").is_dir():
            folder(base_dir / "profiles", ())
    else:
        for j, entry in enumerate(cfg.profiles):
            where = ("profiles", j)
            path = Path(os.path.normpath(base_dir / Path(entry).expanduser()))
            if doubts(where):
                continue
            if path.is_dir():
                folder(path, where)
            elif path.is_file():
                files.append(path)
            else:
                problems.append(
                    (source, *pos.locate(where, prefer_key=False), f"profiles: {entry} does not "
                     "exist (a profile file or a folder of them, relative to the config's folder)")
                )  # fmt: skip
    unique = list({p.resolve(): p for p in files}.values())  # a file named twice is read once
    if len(unique) > MAX_PROFILE_FILES:
        problems.append(
            (source, *pos.locate(("profiles",), prefer_key=True), f"profiles: {len(unique)} "
             f"files, more than the {MAX_PROFILE_FILES} a gateway reads: is it the right folder?")
        )  # fmt: skip
        unique = []
    user = load_user_profiles(unique)
    return user, problems + user.problems


def _device_profiles(
    cfg: Config, user: ProfileSet, pos: _Positions, source: str, doubts: _Doubts
) -> tuple[dict[str, AnyProfile], list[tuple[str, int, int, str]]]:
    """Each device's profile, its overrides applied (``byte_order``, ``address_offset``,
    ``max_registers``: docs/profile-format.md §0.5). A device naming an unknown profile is
    reported at its ``profile``; one naming a broken profile file is not (the file is)."""
    problems: list[tuple[str, int, int, str]] = []
    out: dict[str, AnyProfile] = {}

    def at(path: tuple[Any, ...], msg: str, *uses: tuple[Any, ...]) -> None:
        if not doubts(*(uses or (path,))):
            problems.append((source, *pos.locate(path, prefer_key=False), msg))

    for i, dev in enumerate(cfg.devices):
        base = ("devices", i)
        profile = user.get(dev.profile)
        if profile is None:
            if dev.profile not in user.broken:
                if user.unnamed:  # it may be in a file that could not be read: say so first
                    at(
                        (*base, "profile"),
                        f"unknown device profile {dev.profile!r}, unless it is in "
                        f"{', '.join(user.unnamed)}, which could not be read (see its problem)",
                    )
                    continue
                known = ", ".join(user.names())
                at((*base, "profile"), f"unknown device profile {dev.profile!r} (known: {known})")
            continue
        if isinstance(profile, SensorProfile):
            for key in ("byte_order", "address_offset"):
                if (*base, key) in pos.key:
                    at(
                        (*base, key),
                        f"device {dev.id!r}: {key} is for Modbus devices; {profile.name} is a "
                        "serial sensor with its own protocol",
                    )
            out[dev.id] = profile
            continue
        try:
            out[dev.id] = with_overrides(
                profile,
                byte_order=dev.byte_order,
                address_offset=dev.address_offset,
                max_registers=dev.max_registers,
            )
        except ProfileError as exc:
            at(
                (*base, "address_offset"),
                f"device {dev.id!r}: address_offset {dev.address_offset} does not fit profile "
                f"{profile.name}: {exc}",
                (*base, "address_offset"),
                (*base, "profile"),
            )
    return out, problems


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
    cfg, field_problems, doubts = _schema_problems(
        Config, read.data, read, source, {"gateway": {"id": "gateway"}}
    )
    problems += field_problems
    if cfg is None:
        raise ConfigError(problems)
    base = base_dir or Path.cwd()
    user, found = _user_profiles(cfg, read.pos, source, base, doubts)
    problems += found
    profiles, found = _device_profiles(cfg, user, read.pos, source, doubts)
    problems += found
    plans, cross, derived = _cross_checks(cfg, read.pos, source, base, doubts, profiles)
    if derived:
        cfg = _with_timing(cfg, derived)
    problems += cross
    if check_storage and not doubts(("buffer",)):
        problems += _check_storage(cfg, read.pos, source, base)
    if check_storage:
        problems += _check_secrets(LoadedConfig(cfg, source, plans, base), read.pos, doubts)
    if problems:
        # The config's own first, then each profile file's.
        raise ConfigError(sorted(problems, key=lambda p: (p[0] != source, p[0], p[1], p[2])))
    return LoadedConfig(cfg, source, plans, base, profiles, user.files)


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
    return dataclasses.replace(loaded, config=_plain(loaded.config))


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
