"""The configuration as the running gateway reads it: plain frozen records, no validator.

:mod:`edge.config` reads a file and validates it (pydantic, every problem at ``FILE:LINE:COL``);
its models are subclasses of the classes here, so code that reads a config — the gateway, the
pollers, the forwarder — imports only this module and works with either. Field names, types,
defaults and limits are written once, in :mod:`edge.config`; this module holds what the running
gateway computes from them (a transport's line, a broker url's port, a line's timing).

``edge run`` validates in a short-lived child process and receives the config as these plain
records (:func:`edge.config.runtime_view`), so the validator — pydantic, its compiled schemas and
the ``importlib.metadata`` it brings, about 13 MB of RSS measured on a fresh install
(``bench/footprint.py``, issue 16) — never enters the long-running gateway's memory.

Imports: :mod:`edge.shared`, :mod:`edge.plan`, protocols; never pydantic, never :mod:`edge.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge.shared.clock import load_zone, system_zone
from protocols.modbus_frame import LineTiming

if TYPE_CHECKING:
    import ssl
    from zoneinfo import ZoneInfo

    from devices import AnyProfile
    from edge.plan import ReadPlan

__all__ = [
    "BufferConfig",
    "CommandsConfig",
    "Config",
    "DeviceConfig",
    "GatewayConfig",
    "LoadedConfig",
    "MeterConfig",
    "MeterLinkRs485",
    "MeterLinkTcp",
    "ModbusRtuTransport",
    "ModbusTcpTransport",
    "MqttConfig",
    "ParkingBusConfig",
    "ParkingConfig",
    "ProcessingRule",
    "Record",
    "StatusConfig",
    "TimeConfig",
    "TlsConfig",
    "UartTransport",
    "WritablePoint",
]

#: Fields whose value is a secret: a record's repr shows that they are set, never what they hold.
SECRET_FIELDS = frozenset({"password"})


class Record:
    """Named fields, set once at construction (``Record(a=1)``), compared by value.

    The validated models of :mod:`edge.config` subclass these records' subclasses too; for them
    pydantic's own methods come first, so everything below applies to the plain records only.
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only (the config file is the truth)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only (the config file is the truth)")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.__dict__.items())))

    def __repr__(self) -> str:
        shown = (
            f"{k}={'***' if k in SECRET_FIELDS and v is not None else repr(v)}"
            for k, v in self.__dict__.items()
        )
        return f"{type(self).__name__}({', '.join(shown)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[Record], fields: dict[str, Any]) -> Record:
    return cls(**fields)


class GatewayConfig(Record):
    """``gateway:`` (edge/config.py)."""


class BufferConfig(Record):
    """``buffer:`` (edge/config.py)."""


class TimeConfig(Record):
    """``time:``, when the gateway trusts its clock (edge/config.py, edge/shared/clock.py)."""


class TlsConfig(Record):
    """``mqtt.tls:`` (edge/config.py)."""


class MqttConfig(Record):
    """``mqtt:`` (edge/config.py)."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The url's port, else the IANA one: 1883 for mqtt://, 8883 for mqtts://."""
        return urlsplit(self.url).port or (8883 if self.uses_tls else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def urls(self) -> list[str]:
        """``url``, then ``failover_urls``: the nodes the uplink tries in turn."""
        return [self.url, *getattr(self, "failover_urls", ())]

    def endpoint(self, url: str) -> tuple[str, int]:
        """(host, port) of one of :attr:`urls` (port: the url's, else 1883 / 8883)."""
        parts = urlsplit(url)
        return parts.hostname or "", parts.port or (8883 if parts.scheme == "mqtts" else 1883)


class ModbusTcpTransport(Record):
    """A device behind a Modbus TCP endpoint (edge/config.py)."""

    @property
    def line(self) -> str:
        """Devices with the same line share one connection."""
        return f"modbus_tcp://{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.host}:{self.port} unit {self.unit}"


class ModbusRtuTransport(Record):
    """A device on an RS-485 line; every device on one port shares it (edge/config.py)."""

    @property
    def line(self) -> str:
        return f"modbus_rtu://{self.port}"

    @property
    def late_answer_s(self) -> float | None:
        return None if self.late_answer_ms is None else self.late_answer_ms / 1000

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} 8{self.parity}{self.stopbits} unit {self.unit}"

    def timing(self) -> LineTiming:
        return LineTiming(self.baudrate, self.parity, self.stopbits)


class UartTransport(Record):
    """A serial sensor with its own protocol (PMS5003, SDS011) alone on its port."""

    @property
    def line(self) -> str:
        return f"uart://{self.port}"

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} 8N1"


class ProcessingRule(Record):
    """What the gateway sends for some points instead of every raw reading (edge/config.py)."""


class DeviceConfig(Record):
    """One entry of ``devices:`` (edge/config.py)."""


class WritablePoint(Record):
    """A (device, point) a ``write`` command may set."""


class CommandsConfig(Record):
    """``commands:`` (edge/config.py)."""


class StatusConfig(Record):
    """``status:``, the local status page and metrics (edge/config.py)."""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class MeterConfig(Record):
    """A parking meter on a bus: its platform id and bus address."""


class MeterLinkTcp(Record):
    """A pay station, or an RS-485 meter bus behind a TCP converter."""

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class MeterLinkRs485(Record):
    """Meters on an RS-485 bus on one of the gateway's serial ports (the bus owns the port)."""

    @property
    def where(self) -> str:
        return f"{self.port} {self.baudrate} 8{self.parity}{self.stopbits}"


class ParkingBusConfig(Record):
    """Meters behind one link, polled in turn (docs/meter-link-v1.md)."""


class ParkingConfig(Record):
    """``parking:`` (edge/config.py)."""


class Config(Record):
    """The whole file (edge/config.py)."""


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus what was compiled from it."""

    config: Config
    source: str
    plans: dict[str, ReadPlan]  # device id -> plan
    base_dir: Path
    #: device id -> the profile it is polled with: shipped or a user file's, its per-device
    #: overrides applied (docs/profile-format.md §0.5). The running gateway reads profiles
    #: only here: it never reads a profile file (edge.profiles brings pydantic and YAML).
    profiles: dict[str, AnyProfile] = field(default_factory=dict)
    #: user profile name -> the file it was read from (shown by ``edge check``).
    profile_files: dict[str, str] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def time_zone(self) -> tuple[ZoneInfo, str]:
        """The zone local windows follow, and where it came from (``time.zone`` or the
        system's, see :func:`edge.shared.clock.system_zone`)."""
        name = self.config.time.zone
        if name is not None:
            return load_zone(name), "time.zone"
        return system_zone()

    @property
    def buffer_path(self) -> Path:
        return self.resolve(self.config.buffer.path)

    def tls_context(self) -> ssl.SSLContext | None:
        """The client SSL context for an mqtts:// broker, else None."""
        from edge.shared.tls import client_context

        m = self.config.mqtt
        if not m.uses_tls:
            return None
        t = m.tls
        return client_context(
            self.resolve(t.ca_file) if t and t.ca_file else None,
            self.resolve(t.cert_file) if t and t.cert_file else None,
            self.resolve(t.key_file) if t and t.key_file else None,
        )

    def mqtt_password(self) -> str | None:
        """The broker password: ``mqtt.password_file``'s content, or ``mqtt.password``.
        :class:`edge.shared.secrets.SecretFileError` when the file cannot be used."""
        from edge.shared.secrets import read_secret

        m = self.config.mqtt
        if m.password_file:
            return read_secret(self.resolve(m.password_file), "mqtt.password_file")
        return m.password
