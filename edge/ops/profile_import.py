"""``edge profile import``: a register map a technician already has, as a profile file.

Two sources are read, as their own documentation names the options:

* **Home Assistant** ``modbus:`` YAML (home-assistant.io/integrations/modbus): hubs (``type``,
  ``host``, ``port``, ``baudrate``, ``parity``, ``stopbits``) with ``sensors`` (``address``,
  ``input_type``, ``data_type``, ``count``, ``structure``, ``swap``, ``scale``, ``offset``,
  ``unit_of_measurement``, ``state_class``, ``slave`` / ``device_address``,
  ``slave_count`` / ``virtual_count``), ``binary_sensors`` and the on/off platforms
  (``switches``, ``lights``, ``fans``). The file may be a whole ``configuration.yaml``, the
  ``modbus:`` list alone, or one hub; it is read with the gateway config's bounded reader
  (:mod:`edge.config_yaml`), so ``!secret`` and ``!include`` are reported, never followed.
* **Telegraf** ``[[inputs.modbus]]`` TOML (plugins/inputs/modbus/README.md) in each of its
  ``configuration_type`` styles: ``register`` (``holding_registers``, ``input_registers``,
  ``coils``, ``discrete_inputs`` with ``name``, ``address`` lists, ``data_type``,
  ``byte_order``, ``scale``), ``request`` (``[[inputs.modbus.request]]`` with ``slave_id``,
  ``register``, ``byte_order`` and ``fields`` of ``address``, ``name``, ``type``, ``length``,
  ``bit``, ``scale``, ``output``, ``omit``) and ``metric`` (the same fields, each with its own
  ``register``). Read with the standard library's ``tomllib``.

What maps onto a profile point (docs/profile-format.md) is converted; everything else is
listed, item by item, with why: a ``nan_value`` or ``min_value`` (no such rule in a point), a
half-precision float, a signed byte, a climate entity, a ``!secret``. Both sources number
registers from 0 as they go on the wire, as a profile does, so addresses are copied as they
are. HA's ``swap`` (``byte``, ``word``, ``word_byte``) becomes ``byte_order`` BADC, CDAB, DCBA;
Telegraf's orders are already ours (its 16-bit ``AB``/``BA`` and 64-bit ``ABCDEFGH``...
spellings, and ``MSW-BE``..., are folded as its ``normalizeByteOrder`` does).

Every point is built as the gateway builds it (:class:`devices.profile.Point`), and the whole
as a :class:`devices.profile.Profile`, so a point the profile rules refuse (an overlap, a unit
not in the table) is listed instead of written. The result is YAML text; nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.profile import Kind, Point, Profile, ProfileError, RegisterType
from devices.units import UNITS, unit_hint
from edge.config_yaml import YamlError, read_yaml
from protocols.modbus import ByteOrder, DataType, register_count

__all__ = [
    "FORMATS",
    "ImportFailure",
    "Imported",
    "NotConverted",
    "detect_format",
    "import_map",
]

#: The formats ``edge profile import --format`` takes.
FORMATS = ("ha", "telegraf")

_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
_PROFILE_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class ImportFailure(ValueError):
    """The file cannot be converted at all (unreadable, no Modbus map in it, or several devices
    and no choice among them); ``lines`` say why, each ``FILE:LINE:COL: ...`` where known."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class NotConverted:
    """One item of the source that is not in the profile: where it is, what it is, and why."""

    where: str  # FILE:LINE:COL, or FILE when no line is known
    what: str  # sensors "Import energy": nan_value
    why: str

    def line(self) -> str:
        return f"{self.where}: {self.what}: {self.why}"


@dataclass
class Imported:
    """A converted map: the profile file's text, its points, and what was left out."""

    text: str
    profile: Profile | None
    skipped: list[NotConverted] = field(default_factory=list)
    #: Converted, with a difference worth knowing (a renamed point, a unit respelled).
    notes: list[str] = field(default_factory=list)
    device: str = ""  # which device of the source: 'hub "meter" unit 3'


@dataclass
class _Candidate:
    """A point as the source describes it, before the profile rules check it."""

    name: str
    where: str  # FILE:LINE:COL of the entry
    what: str  # 'sensors "L1 voltage"'
    kw: dict[str, Any]


@dataclass
class _Device:
    """One unit of one hub / plugin of the source, with its candidate points."""

    hub: str
    unit: int | None
    transport: str  # what goes in a gateway config's transport, for the header
    line: tuple[int, str, int] | None = None  # a serial hub's setting
    points: list[_Candidate] = field(default_factory=list)
    skipped: list[NotConverted] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def detect_format(path: Path, text: str) -> str:
    """'telegraf' for a ``.toml`` / ``.conf`` file or one with ``[[inputs.modbus``, else 'ha'."""
    if path.suffix.lower() in (".toml", ".conf"):
        return "telegraf"
    if path.suffix.lower() in (".yaml", ".yml"):
        return "ha"
    return "telegraf" if re.search(r"^\s*\[\[\s*inputs\.modbus", text, re.M) else "ha"


def import_map(
    path: Path,
    text: str,
    fmt: str | None = None,
    *,
    unit: int | None = None,
    hub: str | None = None,
    name: str | None = None,
) -> Imported:
    """Convert the map in ``text`` (read from ``path``, named in messages) into a profile.

    ``fmt`` is 'ha' or 'telegraf' (None: :func:`detect_format`). A source with several devices
    (hubs, plugins, unit ids) needs ``unit`` (and ``hub`` where a unit id is on two). ``name``
    is the profile's name (default: the file's stem). Raises :class:`ImportFailure` when nothing
    can be converted; items left out are in :attr:`Imported.skipped`."""
    fmt = fmt or detect_format(path, text)
    if fmt not in FORMATS:
        raise ImportFailure([f"{path}: --format takes {' or '.join(FORMATS)}, not {fmt!r}"])
    reader = _HomeAssistant(path, text) if fmt == "ha" else _Telegraf(path, text)
    devices, skipped = reader.read()
    dev = _choose(path, devices, unit, hub, reader.kind, skipped)
    if dev.unit is None and unit is not None:
        dev.unit = unit  # the map names none: the one given
    prof_name = name or _profile_name(path.stem)
    if not _PROFILE_NAME_OK.match(prof_name):
        raise ImportFailure(
            [
                f"{path}: the profile name {prof_name!r} is not 1 to 64 letters, digits, '_', "
                "'.' or '-' starting with a letter or digit: give --name"
            ]
        )
    return _finish(path, reader.kind, prof_name, dev, skipped + dev.skipped)


# --------------------------------------------------------------------------- common


def _profile_name(stem: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-")
    return (text or "imported")[:64]


def _ascii(text: str) -> str:
    """Letters without their marks (Vietnamese 'Điện áp pha' -> 'Dien ap pha')."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _point_name(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_-]+", "_", _ascii(text).strip()).strip("_").lower()
    if not out:
        out = "point"
    if not (out[0].isalpha() or out[0] == "_"):
        out = "p_" + out
    return out[:64]


def _choose(
    path: Path,
    devices: list[_Device],
    unit: int | None,
    hub: str | None,
    kind: str,
    skipped: list[NotConverted],
) -> _Device:
    if hub is not None:
        devices = [d for d in devices if d.hub == hub]
    if unit is not None:
        # entries that name no unit are any unit's (Home Assistant then asks unit 0)
        devices = [d for d in devices if d.unit == unit] or [d for d in devices if d.unit is None]
    if len(devices) == 1:
        return devices[0]
    all_devices = devices

    def listing(ds: list[_Device]) -> str:
        return "; ".join(
            f'{kind} "{d.hub}" unit {d.unit if d.unit is not None else "(not given)"}: '
            f"{len(d.points)} {'entry' if len(d.points) == 1 else 'entries'}"
            for d in ds
        )

    if not all_devices:
        wanted = " ".join(
            x
            for x in (f'hub "{hub}"' if hub else "", f"unit {unit}" if unit is not None else "")
            if x
        )
        raise ImportFailure(
            [f"{path}: no {wanted or 'Modbus device'} in this file"]
            + [item.line() for item in sorted(skipped, key=_source_order)]
        )
    many = {d.hub for d in all_devices}
    how = "--unit N" if len(many) == 1 else "--unit N and, where two have one unit, --hub NAME"
    raise ImportFailure(
        [
            f"{path}: the file describes {len(all_devices)} devices; a profile is one device "
            f"model: choose one with {how} ({listing(all_devices)})"
        ]
    )


def _unit_symbol(raw: str, what: str, where: str, dev: _Device) -> str:
    if raw in UNITS:
        return raw
    hint = unit_hint(raw)
    if hint.startswith("write "):
        symbol = hint[len("write ") :].strip("'\"")
        if symbol in UNITS:
            dev.notes.append(f"{what}: unit {raw!r} written {symbol!r}")
            return symbol
    dev.skipped.append(
        NotConverted(
            where,
            f"{what}: unit {raw!r}",
            "not a unit symbol the gateway knows (docs/profile-format.md §10); the point is "
            "kept without a unit: add the right one",
        )
    )
    return ""


def _fmt_number(x: float | int) -> str:
    """A number as YAML 1.1 reads it back (1e-05 alone would be text: write 1.0e-05)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return repr(float(x))  # 10.0
    text = repr(x)
    if "e" in text and "." not in text.split("e")[0]:
        mant, exp = text.split("e")
        text = f"{mant}.0e{exp}"
    return text


def _fmt_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _point_yaml(p: Point) -> str:
    parts = [f"name: {p.name}", f"address: {p.address}"]
    if p.register_type is not RegisterType.INPUT:
        parts.append(f"table: {p.register_type.value}")
    parts.append(f"data_type: {p.dtype.value}")
    if p.byte_order is not ByteOrder.ABCD:
        parts.append(f"byte_order: {p.byte_order.value}")
    if p.bits is not None:
        first, last = p.bits
        parts.append(f"bits: {first}" if first == last else f"bits: [{first}, {last}]")
    if p.length is not None:
        parts.append(f"length: {p.length}")
    if p.scale != 1:
        parts.append(f"scale: {_fmt_number(p.scale)}")
    if p.offset != 0:
        parts.append(f"offset: {_fmt_number(p.offset)}")
    if p.unit:
        parts.append(f"unit: {_fmt_text(p.unit)}")
    if p.kind is not Kind.GAUGE:
        parts.append(f"kind: {p.kind.value}")
    if p.labels:
        labels = ", ".join(f"{v}: {_fmt_text(text)}" for v, text in p.labels)
        parts.append(f"labels: {{{labels}}}")
    if p.writable:
        parts.append("writable: true")
    if p.description:
        parts.append(f"description: {_fmt_text(p.description)}")
    return "  - {" + ", ".join(parts) + "}"


def _comment(text: str) -> str:
    return "# " + re.sub(r"[\r\n]+", " ", text)


def _finish(
    path: Path, kind: str, prof_name: str, dev: _Device, skipped: list[NotConverted]
) -> Imported:
    notes = list(dev.notes)
    points: list[Point] = []
    names: dict[str, int] = {}
    for cand in dev.points:
        name = _point_name(cand.name)
        if name in names:
            names[name] += 1
            new = f"{name[:60]}_{names[name]}"
            notes.append(f"{cand.what}: named {new!r} ({name!r} was taken)")
            name = new
        else:
            names[name] = 1
        try:
            point = Point(name=name, **cand.kw)
            Profile(prof_name, "imported", "imported", (*points, point))
        except ProfileError as exc:
            skipped.append(NotConverted(cand.where, cand.what, str(exc)))
            continue
        points.append(point)
    device = f'{kind} "{dev.hub}" unit {dev.unit if dev.unit is not None else "(not given)"}'
    skipped.sort(key=_source_order)
    if not points:
        raise ImportFailure(
            [f"{path}: nothing could be converted from {device}"] + [s.line() for s in skipped]
        )
    line = None
    if dev.line is not None and dev.line[0] in _BAUDS:
        line = dev.line
    source = (
        f"imported by edge profile import from {path.name} ({kind} {dev.hub!r}, unit "
        f"{dev.unit if dev.unit is not None else 'not given'}): check each point against the "
        "vendor's register map and write its title and version here"
    )
    profile = Profile(
        prof_name,
        "unknown",
        dev.hub,
        tuple(points),
        **({"default_line": _line(line)} if line else {}),
    )
    out = [
        _comment(f"Converted by `edge profile import` from {path} ({device})."),
        _comment("Check every point against the device's register map, then fill in vendor,"),
        _comment("model and source. `edge profile check` validates it, `edge probe` reads it."),
    ]
    if skipped:
        out.append("#")
        out.append(_comment(f"Not converted ({len(skipped)}):"))
        out.extend(_comment("  " + s.line()) for s in skipped)
    if notes:
        out.append("#")
        out.append(_comment(f"Notes ({len(notes)}):"))
        out.extend(_comment("  " + n) for n in notes)
    out.append("#")
    out.append(_comment("In the gateway config:"))
    out.append(_comment("  devices:"))
    out.append(_comment(f"    - id: {prof_name.replace('.', '-')}-1"))
    out.append(_comment(f"      profile: {prof_name}"))
    out.append(
        _comment(
            f"      transport: {{{dev.transport}, unit: {dev.unit if dev.unit is not None else 1}}}"
        )
    )
    out += [
        f"name: {prof_name}",
        f"vendor: {_fmt_text('unknown')}",
        f"model: {_fmt_text(dev.hub)}",
        f"source: {_fmt_text(source)}",
    ]
    if line is not None:
        baud, parity, stop = line
        out.append(f"default_line: {{baudrate: {baud}, parity: {parity}, stopbits: {stop}}}")
    out.append("points:")
    out.extend(_point_yaml(p) for p in points)
    return Imported("\n".join(out) + "\n", profile, skipped, notes, device)


def _source_order(item: NotConverted) -> tuple[int, int]:
    m = re.search(r":(\d+):(\d+)$", item.where)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _line(line: tuple[int, str, int]) -> Any:
    from protocols.modbus_frame import LineTiming

    return LineTiming(*line)


# --------------------------------------------------------------------------- Home Assistant

#: HA's ``swap`` -> our byte order (HA swaps the bytes in each register, then the registers).
_HA_SWAP = {None: ByteOrder.ABCD, "none": ByteOrder.ABCD, "byte": ByteOrder.BADC,
            "word": ByteOrder.CDAB, "word_byte": ByteOrder.DCBA}  # fmt: skip
_HA_TYPES = {
    "int16": DataType.INT16, "uint16": DataType.UINT16, "int32": DataType.INT32,
    "uint32": DataType.UINT32, "int64": DataType.INT64, "uint64": DataType.UINT64,
    "float32": DataType.FLOAT32, "float64": DataType.FLOAT64, "string": DataType.STRING,
}  # fmt: skip
#: The old spellings HA still accepts, by register count (HA: "int/uint are silently converted").
_HA_OLD = {
    "int": {1: DataType.INT16, 2: DataType.INT32, 4: DataType.INT64},
    "integer": {1: DataType.INT16, 2: DataType.INT32, 4: DataType.INT64},
    "uint": {1: DataType.UINT16, 2: DataType.UINT32, 4: DataType.UINT64},
    "float": {2: DataType.FLOAT32, 4: DataType.FLOAT64},
}
#: struct codes of a ``data_type: custom`` structure that are one of our types.
_STRUCT_CODES = {"h": DataType.INT16, "H": DataType.UINT16, "i": DataType.INT32,
                 "I": DataType.UINT32, "l": DataType.INT32, "L": DataType.UINT32,
                 "q": DataType.INT64, "Q": DataType.UINT64, "f": DataType.FLOAT32,
                 "d": DataType.FLOAT64}  # fmt: skip
_HA_TABLES = {"holding": RegisterType.HOLDING, "input": RegisterType.INPUT,
              "coil": RegisterType.COIL, "discrete_input": RegisterType.DISCRETE}  # fmt: skip
#: Keys that are Home Assistant's presentation or scheduling, not the register map.
_HA_IGNORED = {"name", "unique_id", "device_class", "precision", "scan_interval",
               "lazy_error_count", "hub", "icon", "entity_category"}  # fmt: skip
_HA_VALUE_RULES = {
    "nan_value": "a raw value meaning 'no reading'; a profile point has no such rule, so the "
    "gateway delivers that raw value as a reading: filter it downstream",
    "zero_suppress": "values near zero shown as 0 is presentation; the gateway delivers them "
    "as read",
    "min_value": "Home Assistant clamps the value to it; the gateway delivers it as read",
    "max_value": "Home Assistant clamps the value to it; the gateway delivers it as read",
}
_HA_HUB_KEYS = {"name", "type", "host", "port", "baudrate", "bytesize", "method", "parity",
                "stopbits", "timeout", "delay", "message_wait_milliseconds",
                "close_comm_on_error", "retries", "retry_on_empty",
                "sensors", "binary_sensors", "switches", "lights", "fans", "climates",
                "covers"}  # fmt: skip


class _HomeAssistant:
    kind = "hub"

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def where(self, loc: tuple[Any, ...], key: bool = False) -> str:
        table = self.doc.pos.key if key else self.doc.pos.value
        for n in range(len(loc), 0, -1):
            at = table.get(loc[:n]) or self.doc.pos.key.get(loc[:n])
            if at is not None:
                return f"{self.path}:{at[0]}:{at[1]}"
        return str(self.path)

    def read(self) -> tuple[list[_Device], list[NotConverted]]:
        try:
            self.doc = read_yaml(self.text)
        except YamlError as exc:
            raise ImportFailure(
                [f"{self.path}:{line}:{col}: {msg}" for line, col, msg in exc.problems]
            ) from None
        data = self.doc.data
        base: tuple[Any, ...] = ()
        if isinstance(data, Mapping) and "modbus" in data:
            base, hubs = ("modbus",), data["modbus"]
        elif isinstance(data, list):
            hubs = data
        elif isinstance(data, Mapping) and ({"sensors", "binary_sensors", "type"} & set(data)):
            hubs = [data]
            base = ("<hub>",)
        else:
            raise ImportFailure(
                [
                    f"{self.path}: no Home Assistant Modbus map here: expected a `modbus:` "
                    "section, its list of hubs, or one hub with `sensors:`" + self._tag_hint(())
                ]
            )
        skipped = self._yaml_problems(base)
        if isinstance(hubs, Mapping):
            hubs = [hubs]
            base = (*base, "<hub>")
        if not isinstance(hubs, list):
            raise ImportFailure(
                [f"{self.where(base)}: `modbus:` holds {type(hubs).__name__}, not a list of hubs"]
            )
        devices: list[_Device] = []
        for i, hub in enumerate(hubs):
            loc = base if base and base[-1] == "<hub>" else (*base, i)
            loc = tuple(x for x in loc if x != "<hub>")
            if not isinstance(hub, Mapping):
                skipped.append(NotConverted(self.where(loc), f"hub {i + 1}", "not a mapping"))
                continue
            devices += self._hub(hub, loc, skipped)
        return devices, skipped

    def _tag_hint(self, base: tuple[Any, ...]) -> str:
        tags = [msg for _, _, msg in self.doc.problems if msg.startswith("tag !")]
        return (
            f" ({tags[0].split(':')[0]} is not followed: import the file it names)" if tags else ""
        )

    def _yaml_problems(self, base: tuple[Any, ...]) -> list[NotConverted]:
        """YAML problems (a ``!secret``, a duplicate key) inside the Modbus part, as items not
        converted; those elsewhere in a configuration.yaml are none of the import's business."""
        lo, hi = 1, math.inf
        if base == ("modbus",):
            lo = self.doc.pos.key[("modbus",)][0]
            later = [at[0] for p, at in self.doc.pos.key.items() if len(p) == 1 and at[0] > lo]
            hi = min(later, default=math.inf)
        out = []
        keys_on = {}  # line -> (column, key) of the keys written on it
        for p, (kline, kcol) in self.doc.pos.key.items():
            if p and isinstance(p[-1], str):
                keys_on.setdefault(kline, []).append((kcol, p[-1]))
        lines = self.text.splitlines()
        for line, col, msg in self.doc.problems:
            if not lo <= line < hi:
                continue
            m = re.match(r"tag (![^\s:]+)", msg)
            if m:
                tag = m.group(1)
                written = (
                    lines[line - 1][col - 1 :].split("#")[0].strip() if line <= len(lines) else tag
                )
                key = max((k for k in keys_on.get(line, []) if k[0] < col), default=(0, ""))[1]
                why = (
                    "Home Assistant reads it from secrets.yaml; the import does not, so the "
                    "value it stands for is left out"
                    if tag == "!secret"
                    else f"{tag} is Home Assistant's, the import does not follow it: import the "
                    "file it names on its own"
                )
                what = f"{key}: {written}" if key else written
                out.append(NotConverted(f"{self.path}:{line}:{col}", what, why))
            else:
                out.append(NotConverted(f"{self.path}:{line}:{col}", "YAML", msg))
        return out

    def _hub(
        self, hub: Mapping[str, Any], loc: tuple[Any, ...], skipped: list[NotConverted]
    ) -> list[_Device]:
        hub_name = str(hub.get("name", "modbus_hub"))
        typ = hub.get("type")
        if typ == "serial":
            transport = f"type: modbus_rtu, port: {hub.get('port', '/dev/ttyUSB0')}"
            try:
                line = (int(hub["baudrate"]), str(hub["parity"]), int(hub["stopbits"]))
            except (KeyError, TypeError, ValueError):
                line = None
            if hub.get("method") == "ascii":
                skipped.append(
                    NotConverted(
                        self.where((*loc, "method")),
                        f'hub "{hub_name}": method ascii',
                        "the gateway speaks Modbus RTU on a serial line, not ASCII",
                    )
                )
        else:
            line = None
            transport = f"type: modbus_tcp, host: {hub.get('host', 'HOST')}, port: " + str(
                hub.get("port", 502)
            )
            if typ in ("rtuovertcp", "udp"):
                skipped.append(
                    NotConverted(
                        self.where((*loc, "type")),
                        f'hub "{hub_name}": type {typ}',
                        "the gateway speaks Modbus TCP to a network device; "
                        f"{typ} is not converted (transport given as modbus_tcp)",
                    )
                )
        for key in ("timeout", "delay", "message_wait_milliseconds", "retries"):
            if key in hub:
                skipped.append(
                    NotConverted(
                        self.where((*loc, key), key=True),
                        f'hub "{hub_name}": {key} {hub[key]!r}',
                        "timing is the gateway config's, per device (timeout_ms, retries, "
                        "poll_interval_s), not the profile's",
                    )
                )
        for key in hub:
            if key not in _HA_HUB_KEYS:
                skipped.append(
                    NotConverted(
                        self.where((*loc, key), key=True),
                        f'hub "{hub_name}": {key}',
                        "not a Home Assistant modbus hub option the import knows",
                    )
                )
        devices: dict[int | None, _Device] = {}

        def device(unit: int | None) -> _Device:
            if unit not in devices:
                devices[unit] = _Device(hub_name, unit, transport, line)
            return devices[unit]

        for platform, convert in (
            ("sensors", self._sensor),
            ("binary_sensors", self._binary),
            ("switches", self._switch),
            ("lights", self._switch),
            ("fans", self._switch),
        ):
            entries = hub.get(platform) or []
            if isinstance(entries, Mapping):
                entries = [entries]
            for j, entry in enumerate(entries if isinstance(entries, list) else []):
                eloc = (*loc, platform, j)
                if not isinstance(entry, Mapping):
                    skipped.append(
                        NotConverted(self.where(eloc), f"{platform}[{j}]", "not a mapping")
                    )
                    continue
                unit = entry.get("device_address", entry.get("slave"))
                unit = unit if isinstance(unit, int) and not isinstance(unit, bool) else None
                convert(device(unit), platform, entry, eloc)
        for platform in ("climates", "covers"):
            for j, entry in enumerate(hub.get(platform) or []):
                name = entry.get("name", j) if isinstance(entry, Mapping) else j
                skipped.append(
                    NotConverted(
                        self.where((*loc, platform, j)),
                        f'{platform} "{name}"',
                        "a Home Assistant entity built of several registers and states, not "
                        "a register map: add its registers as points by hand",
                    )
                )
        shown = sorted(
            {
                key
                for platform in ("sensors", "binary_sensors", "switches", "lights", "fans")
                for entry in (hub.get(platform) or [])
                if isinstance(entry, Mapping)
                for key in entry
                if key in _HA_IGNORED - {"name"}
            }
        )
        if shown:
            for dev in devices.values():
                dev.notes.append(
                    f"{', '.join(shown)}: Home Assistant's display and scheduling, not the "
                    "register map (the gateway delivers values unrounded; poll_interval_s is "
                    "set per device in its config)"
                )
        return list(devices.values())

    # -- entities

    def _common(
        self,
        dev: _Device,
        platform: str,
        entry: Mapping[str, Any],
        loc: tuple[Any, ...],
        known: set[str],
    ) -> tuple[str, str, str, int] | None:
        name = str(entry.get("name", f"{platform}_{loc[-1]}"))
        what = f'{platform} "{name}"'
        where = self.where(loc)
        for key in entry:
            if key in known or key in _HA_IGNORED:
                continue
            if key in _HA_VALUE_RULES:
                dev.skipped.append(
                    NotConverted(
                        self.where((*loc, key), key=True),
                        f"{what}: {key} {entry[key]!r}",
                        _HA_VALUE_RULES[key],
                    )
                )
            else:
                dev.skipped.append(
                    NotConverted(
                        self.where((*loc, key), key=True),
                        f"{what}: {key}",
                        f"not a {platform} option the import knows; left out",
                    )
                )
        address = entry.get("address")
        if not isinstance(address, int) or isinstance(address, bool):
            dev.skipped.append(NotConverted(where, what, "no whole-number address"))
            return None
        return name, what, where, address

    def _virtual(self, entry: Mapping[str, Any]) -> int:
        n = entry.get("virtual_count", entry.get("slave_count", 0))
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0

    def _sensor(
        self, dev: _Device, platform: str, entry: Mapping[str, Any], loc: tuple[Any, ...]
    ) -> None:
        known = {"address", "input_type", "data_type", "count", "structure", "swap", "scale",
                 "offset", "unit_of_measurement", "state_class", "slave", "device_address",
                 "virtual_count", "slave_count"}  # fmt: skip
        head = self._common(dev, platform, entry, loc, known)
        if head is None:
            return
        name, what, where, address = head

        def skip(why: str, key: str | None = None) -> None:
            at = self.where((*loc, key), key=True) if key in entry else where
            dev.skipped.append(NotConverted(at, what, why))

        table = _HA_TABLES.get(str(entry.get("input_type", "holding")))
        if table not in (RegisterType.HOLDING, RegisterType.INPUT):
            return skip(
                f"input_type {entry.get('input_type')!r}: a sensor reads holding or input",
                "input_type",
            )
        raw_type = str(entry.get("data_type", "int16"))
        count = entry.get("count")
        swap = entry.get("swap")
        if swap not in _HA_SWAP:
            return skip(f"swap {swap!r} is not none, byte, word or word_byte", "swap")
        order = _HA_SWAP[swap]
        length = None
        if raw_type in _HA_TYPES:
            dtype = _HA_TYPES[raw_type]
            if dtype is DataType.STRING:
                if not isinstance(count, int) or count < 1:
                    return skip("a string needs count (its registers)", "data_type")
                length = count
                if swap in ("word", "word_byte"):
                    return skip(
                        f"swap {swap} of a string (registers reversed) has no profile form", "swap"
                    )
            elif count is not None and count != register_count(dtype):
                n = register_count(dtype)
                return skip(f"count {count} does not fit {raw_type} ({n} registers)", "count")
        elif raw_type in _HA_OLD:
            dtype = _HA_OLD[raw_type].get(count if isinstance(count, int) else 1)
            if dtype is None:
                return skip(
                    f"data_type {raw_type} with count {count} has no profile type", "data_type"
                )
            dev.notes.append(f"{what}: data_type {raw_type} (count {count or 1}) read as {dtype}")
        elif raw_type == "custom":
            got = self._custom(entry, count)
            if isinstance(got, str):
                return skip(got, "structure")
            dtype, order = got
        elif raw_type in ("float16", "int8", "uint8"):
            what_not = "half-precision float" if raw_type == "float16" else "byte-wide number"
            return skip(f"data_type {raw_type}: a profile has no {what_not}", "data_type")
        else:
            return skip(
                f"data_type {raw_type!r} is not a Home Assistant type the import knows", "data_type"
            )
        if dtype.is_integer or dtype.is_float:
            if register_count(dtype) == 1 and swap in ("word", "word_byte"):
                return skip(
                    f"swap {swap} on a one-register {dtype}: Home Assistant refuses it too", "swap"
                )
        scale, offset = entry.get("scale", 1), entry.get("offset", 0)
        if not _number(scale) or not _number(offset):
            return skip("scale and offset must be numbers", "scale")
        if dtype is DataType.STRING and (scale != 1 or offset != 0):
            return skip("a string takes no scale or offset", "scale")
        unit = ""
        if entry.get("unit_of_measurement") is not None:
            unit = _unit_symbol(str(entry["unit_of_measurement"]), what, where, dev)
        kind = Kind.COUNTER if entry.get("state_class") == "total_increasing" else Kind.GAUGE
        if dtype is DataType.STRING:
            kind = Kind.GAUGE
        kw: dict[str, Any] = {
            "address": address, "register_type": table, "dtype": dtype, "byte_order": order,
            "scale": float(scale), "offset": float(offset), "unit": unit, "kind": kind,
            "length": length, "description": name,
        }  # fmt: skip
        n = self._virtual(entry)
        step = register_count(dtype, length)
        for i in range(n + 1):
            suffix = f"_{i}" if i else ""
            dev.points.append(
                _Candidate(
                    name + suffix,
                    where,
                    what + (f" virtual {i}" if i else ""),
                    {**kw, "address": address + i * step},
                )
            )
        if n:
            dev.notes.append(f"{what}: virtual_count {n} gave {n} more points after it")

    def _custom(self, entry: Mapping[str, Any], count: Any) -> tuple[DataType, ByteOrder] | str:
        structure = str(entry.get("structure", ""))
        m = re.fullmatch(r"([<>!=@]?)([hHiIlLqQfd])", structure)
        if not m:
            return (
                f"data_type custom with structure {structure!r}: only one value of a plain "
                "type (>h, >i, >f, >d ...) has a profile form"
            )
        prefix, code = m.groups()
        dtype = _STRUCT_CODES[code]
        if count is not None and count != register_count(dtype):
            return f"count {count} does not fit structure {structure!r}"
        if entry.get("swap") not in (None, "none"):
            return "data_type custom with a swap: convert the pair by hand"
        little = prefix == "<"
        if little:
            order = ByteOrder.BADC if register_count(dtype) == 1 else ByteOrder.DCBA
        else:
            order = ByteOrder.ABCD
        return dtype, order

    def _binary(
        self, dev: _Device, platform: str, entry: Mapping[str, Any], loc: tuple[Any, ...]
    ) -> None:
        known = {"address", "input_type", "slave", "device_address", "virtual_count",
                 "slave_count"}  # fmt: skip
        head = self._common(dev, platform, entry, loc, known)
        if head is None:
            return
        name, what, where, address = head
        table = _HA_TABLES.get(str(entry.get("input_type", "coil")))
        if table is None:
            dev.skipped.append(
                NotConverted(
                    where,
                    what,
                    f"input_type {entry.get('input_type')!r} is not coil, "
                    "discrete_input, holding or input",
                )
            )
            return
        kw: dict[str, Any] = {
            "address": address,
            "register_type": table,
            "dtype": DataType.BOOL,
            "description": name,
        }
        if not table.is_bits:
            kw["bits"] = (0, 0)  # Home Assistant: the register's bit 0 (value & 1)
            dev.notes.append(
                f"{what}: bit 0 of {table} register {address}, as Home Assistant reads it"
            )
        for i in range(self._virtual(entry) + 1):
            suffix = f"_{i}" if i else ""
            dev.points.append(
                _Candidate(
                    name + suffix,
                    where,
                    what + (f" virtual {i}" if i else ""),
                    {**kw, "address": address + i},
                )
            )

    def _switch(
        self, dev: _Device, platform: str, entry: Mapping[str, Any], loc: tuple[Any, ...]
    ) -> None:
        known = {"address", "write_type", "command_on", "command_off", "verify", "slave",
                 "device_address"}  # fmt: skip
        head = self._common(dev, platform, entry, loc, known)
        if head is None:
            return
        name, what, where, address = head
        write_type = entry.get("write_type", "holding")
        verify = entry.get("verify")
        if isinstance(verify, Mapping) and (
            verify.get("address", address) != address
            or verify.get("input_type", write_type) != write_type
            or "state_on" in verify
            or "state_off" in verify
        ):
            dev.skipped.append(
                NotConverted(
                    self.where((*loc, "verify"), key=True),
                    f"{what}: verify",
                    "its state is read elsewhere than it is written; the point is "
                    "the written register: map the state register as its own point",
                )
            )
        if write_type == "coil":
            kw: dict[str, Any] = {
                "address": address,
                "register_type": RegisterType.COIL,
                "dtype": DataType.BOOL,
                "writable": True,
                "description": name,
            }
        elif write_type == "holding":
            on, off = entry.get("command_on", 1), entry.get("command_off", 0)
            if not all(isinstance(x, int) and 0 <= x <= 0xFFFF for x in (on, off)) or on == off:
                dev.skipped.append(
                    NotConverted(
                        where, what, "command_on / command_off are not two register values"
                    )
                )
                return
            kw = {
                "address": address,
                "register_type": RegisterType.HOLDING,
                "dtype": DataType.UINT16,
                "writable": True,
                "labels": {off: "off", on: "on"},
                "description": name,
            }
        else:
            dev.skipped.append(
                NotConverted(
                    where,
                    what,
                    f"write_type {write_type}: several coils or registers "
                    "written as one entity have no single-point form",
                )
            )
            return
        dev.points.append(_Candidate(name, where, what, kw))


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- Telegraf

#: Telegraf's byte orders, folded as its normalizeByteOrder does.
_TG_ORDERS = {
    "AB": ByteOrder.ABCD, "ABCD": ByteOrder.ABCD, "ABCDEFGH": ByteOrder.ABCD,
    "MSW-BE": ByteOrder.ABCD, "BA": ByteOrder.DCBA, "DCBA": ByteOrder.DCBA,
    "HGFEDCBA": ByteOrder.DCBA, "LSW-LE": ByteOrder.DCBA, "BADC": ByteOrder.BADC,
    "BADCFEHG": ByteOrder.BADC, "MSW-LE": ByteOrder.BADC, "CDAB": ByteOrder.CDAB,
    "GHEFCDAB": ByteOrder.CDAB, "LSW-BE": ByteOrder.CDAB,
}  # fmt: skip
_TG_TYPES = {
    "INT16": DataType.INT16, "UINT16": DataType.UINT16, "INT32": DataType.INT32,
    "UINT32": DataType.UINT32, "INT64": DataType.INT64, "UINT64": DataType.UINT64,
    "FLOAT32": DataType.FLOAT32, "FLOAT64": DataType.FLOAT64,
}  # fmt: skip
#: The register style's own names: FIXED / UFIXED (and the deprecated FLOAT32) are integers
#: (signed / unsigned) of as many registers as the address list has.
_TG_FIXED = {
    "FIXED": {1: DataType.INT16, 2: DataType.INT32, 4: DataType.INT64},
    "UFIXED": {1: DataType.UINT16, 2: DataType.UINT32, 4: DataType.UINT64},
    "FLOAT32": {1: DataType.UINT16, 2: DataType.UINT32, 4: DataType.UINT64},
}
_TG_TABLES = {"holding_registers": RegisterType.HOLDING, "input_registers": RegisterType.INPUT,
              "coils": RegisterType.COIL, "discrete_inputs": RegisterType.DISCRETE}  # fmt: skip
_TG_REGISTER = {"holding": RegisterType.HOLDING, "input": RegisterType.INPUT,
                "coil": RegisterType.COIL, "discrete": RegisterType.DISCRETE}  # fmt: skip
_TG_PLUGIN_KEYS = {"name", "slave_id", "timeout", "busy_retries", "busy_retries_wait",
                   "controller", "baud_rate", "data_bits", "parity", "stop_bits",
                   "transmission_mode", "debug_connection", "configuration_type",
                   "exclude_register_type_tag", "holding_registers", "input_registers",
                   "coils", "discrete_inputs", "request", "metric", "workarounds",
                   "optimization", "optimization_max_register_fill", "tags", "name_override",
                   "name_prefix", "name_suffix", "interval", "alias", "log_level",
                   "pause_after_connect", "pause_between_requests",
                   "close_connection_after_gather", "rs485"}  # fmt: skip


class _Telegraf:
    kind = "plugin"

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self._seen: dict[str, int] = {}

    def where_name(self, name: str) -> str:
        """FILE:LINE:COL of the next ``name = "<name>"`` in the file (TOML keeps no positions:
        the entries are found in file order)."""
        pattern = re.compile(r"""\bname\s*=\s*(["'])""" + re.escape(name) + r"\1")
        found = [m for m in pattern.finditer(self.text)]
        k = self._seen.get(name, 0)
        self._seen[name] = k + 1
        if k < len(found):
            at = found[k].start()
            line = self.text.count("\n", 0, at) + 1
            col = at - (self.text.rfind("\n", 0, at) + 1) + 1
            return f"{self.path}:{line}:{col}"
        return str(self.path)

    def read(self) -> tuple[list[_Device], list[NotConverted]]:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            where = f"{self.path}:{m.group(1)}:{m.group(2)}" if m else str(self.path)
            msg = re.sub(r" \(at line.*", "", msg)
            raise ImportFailure([f"{where}: not TOML: {msg}"]) from None
        plugins = (
            data.get("inputs", {}).get("modbus") if isinstance(data.get("inputs"), dict) else None
        )
        if isinstance(plugins, dict):
            plugins = [plugins]
        if not plugins:
            raise ImportFailure([f"{self.path}: no [[inputs.modbus]] section in this file"])
        devices: list[_Device] = []
        skipped: list[NotConverted] = []
        for plugin in plugins:
            devices += self._plugin(plugin, skipped)
        return devices, skipped

    def _plugin(self, plugin: dict[str, Any], skipped: list[NotConverted]) -> list[_Device]:
        name = str(plugin.get("name", "Device"))
        where = self.where_name(name) if "name" in plugin else str(self.path)
        controller = str(plugin.get("controller", "tcp://localhost:502"))
        line = None
        if controller.startswith("tcp://"):
            host, _, port = controller[len("tcp://") :].partition(":")
            transport = f"type: modbus_tcp, host: {host}, port: {port or 502}"
            if plugin.get("transmission_mode", "TCP") != "TCP":
                skipped.append(
                    NotConverted(
                        where,
                        f'plugin "{name}": transmission_mode {plugin["transmission_mode"]}',
                        "the gateway speaks Modbus TCP "
                        "to a network device (transport given as modbus_tcp)",
                    )
                )
        else:
            port = controller[len("file://") :] if controller.startswith("file://") else controller
            transport = f"type: modbus_rtu, port: {port}"
            try:
                line = (
                    int(plugin.get("baud_rate", 9600)),
                    str(plugin.get("parity", "N")),
                    int(plugin.get("stop_bits", 1)),
                )
            except (TypeError, ValueError):
                line = None
            if plugin.get("transmission_mode", "RTU") == "ASCII":
                skipped.append(
                    NotConverted(
                        where,
                        f'plugin "{name}": transmission_mode ASCII',
                        "the gateway speaks Modbus RTU, not ASCII",
                    )
                )
        for key in plugin:
            if key not in _TG_PLUGIN_KEYS:
                skipped.append(
                    NotConverted(
                        where,
                        f'plugin "{name}": {key}',
                        "not an inputs.modbus option the import knows",
                    )
                )
        style = plugin.get("configuration_type", "register")
        devices: dict[int, _Device] = {}

        def device(unit: int) -> _Device:
            if unit not in devices:
                devices[unit] = _Device(name, unit, transport, line)
                devices[unit].notes.append(
                    "Telegraf maps carry no units or counter kinds: add unit: (and kind: "
                    "counter for energy registers) to each point; the birth tells integrators"
                )
            return devices[unit]

        if style == "register":
            unit = plugin.get("slave_id", 0)
            dev = device(unit if isinstance(unit, int) else 0)
            for key, table in _TG_TABLES.items():
                for entry in plugin.get(key, []) or []:
                    self._register_field(dev, key, table, entry)
        elif style in ("request", "metric"):
            for section in plugin.get(style, []) or []:
                unit = section.get("slave_id", 0)
                dev = device(unit if isinstance(unit, int) else 0)
                order_name = str(section.get("byte_order", "ABCD"))
                order = _TG_ORDERS.get(order_name)
                register = section.get("register", "holding")
                if order is None:
                    skipped.append(
                        NotConverted(
                            where, f"{style} byte_order {order_name!r}", "not a Telegraf byte order"
                        )
                    )
                    continue
                for key in ("tags",):
                    if section.get(key):
                        dev.notes.append(
                            f"{style} of unit {unit}: tags left to the gateway "
                            "config (a profile describes the device, not the site)"
                        )
                for f in section.get("fields", []) or []:
                    table = _TG_REGISTER.get(
                        str(f.get("register", register)) if style == "metric" else str(register)
                    )
                    self._request_field(dev, style, table, order, f)
        else:
            skipped.append(
                NotConverted(
                    where,
                    f'plugin "{name}": configuration_type {style!r}',
                    "not register, request or metric",
                )
            )
        if plugin.get("workarounds"):
            skipped.append(
                NotConverted(
                    where,
                    f'plugin "{name}": workarounds',
                    "device quirks are the gateway's per-device settings "
                    "(max_registers, timing): set them in its config",
                )
            )
        return list(devices.values())

    def _register_field(
        self, dev: _Device, key: str, table: RegisterType, entry: dict[str, Any]
    ) -> None:
        name = str(entry.get("name", ""))
        what = f'{key} "{name}"'
        where = self.where_name(name) if name else str(self.path)

        def skip(why: str) -> None:
            dev.skipped.append(NotConverted(where, what, why))

        addresses = entry.get("address", [])
        if isinstance(addresses, int):
            addresses = [addresses]
        if not name:
            return skip("no name")
        if not addresses or not all(isinstance(a, int) for a in addresses):
            return skip("no address list")
        if addresses != list(range(addresses[0], addresses[0] + len(addresses))):
            return skip(f"addresses {addresses} are not consecutive (Telegraf refuses it too)")
        desc = name + (f" ({entry['measurement']})" if entry.get("measurement") else "")
        if table.is_bits:
            if len(addresses) != 1:
                return skip("a coil or discrete input has one address")
            dev.points.append(
                _Candidate(
                    name,
                    where,
                    what,
                    {
                        "address": addresses[0],
                        "register_type": table,
                        "dtype": DataType.BOOL,
                        "description": desc,
                    },
                )
            )
            return
        raw_type = str(entry.get("data_type", "INT16" if len(addresses) == 1 else ""))
        n = len(addresses)
        order_name = str(entry.get("byte_order", "AB" if n == 1 else "ABCD"))
        order = _TG_ORDERS.get(order_name)
        if order is None or len(order_name) not in (2 * n, 6):
            return skip(f"byte_order {order_name!r} does not fit {n} registers")
        bits = None
        if raw_type in _TG_FIXED:
            dtype = _TG_FIXED[raw_type].get(n)
            if dtype is None:
                return skip(f"data_type {raw_type} over {n} registers")
            if raw_type == "FLOAT32":
                dev.notes.append(
                    f"{what}: data_type FLOAT32 is Telegraf's old name of UFIXED: "
                    f"read as {dtype} (FLOAT32-IEEE is the float)"
                )
        elif raw_type in ("FLOAT32-IEEE", "FLOAT64-IEEE"):
            dtype = DataType.FLOAT32 if raw_type == "FLOAT32-IEEE" else DataType.FLOAT64
        elif raw_type in _TG_TYPES:
            dtype = _TG_TYPES[raw_type]
        elif raw_type in ("UINT8L", "UINT8H"):
            dtype, bits = DataType.UINT16, ((0, 7) if raw_type == "UINT8L" else (8, 15))
        elif raw_type in ("INT8L", "INT8H", "FLOAT16-IEEE"):
            return skip(
                f"data_type {raw_type}: a profile has no signed byte or half-precision float"
            )
        else:
            return skip(f"data_type {raw_type!r} is not a Telegraf register type the import knows")
        if register_count(dtype) != n:
            return skip(f"{n} addresses for a {raw_type} ({register_count(dtype)} registers)")
        scale = entry.get("scale", 1.0)
        if not _number(scale) or scale == 0:
            return skip(f"scale {scale!r} (Telegraf refuses 0 too)")
        dev.points.append(
            _Candidate(
                name,
                where,
                what,
                {
                    "address": addresses[0],
                    "register_type": table,
                    "dtype": dtype,
                    "byte_order": order,
                    "scale": float(scale),
                    "bits": bits,
                    "description": desc,
                },
            )
        )

    def _request_field(
        self,
        dev: _Device,
        style: str,
        table: RegisterType | None,
        order: ByteOrder,
        f: dict[str, Any],
    ) -> None:
        if f.get("omit"):
            return  # a gap filler: the planner decides what to read through
        name = str(f.get("name", ""))
        what = f'{style} field "{name}"'
        where = self.where_name(name) if name else str(self.path)

        def skip(why: str) -> None:
            dev.skipped.append(NotConverted(where, what, why))

        address = f.get("address")
        if not name:
            return skip("no name")
        if table is None:
            return skip(f"register {f.get('register')!r} is not coil, discrete, holding or input")
        if not isinstance(address, int):
            return skip("no address")
        desc = name + (f" ({f['measurement']})" if f.get("measurement") else "")
        if table.is_bits:
            dev.points.append(
                _Candidate(
                    name,
                    where,
                    what,
                    {
                        "address": address,
                        "register_type": table,
                        "dtype": DataType.BOOL,
                        "description": desc,
                    },
                )
            )
            return
        raw_type = str(f.get("type", ""))
        bits, length = None, None
        if raw_type in _TG_TYPES:
            dtype = _TG_TYPES[raw_type]
        elif raw_type == "BIT":
            bit = f.get("bit", 0)
            if not isinstance(bit, int) or not 0 <= bit <= 15:
                return skip(f"bit {bit!r} is not 0..15")
            dtype, bits = DataType.BOOL, (bit, bit)
        elif raw_type in ("UINT8L", "UINT8H"):
            dtype, bits = DataType.UINT16, ((0, 7) if raw_type == "UINT8L" else (8, 15))
        elif raw_type == "STRING":
            length = f.get("length")
            if not isinstance(length, int) or length < 1:
                return skip("a STRING needs length (its registers)")
            dtype = DataType.STRING
        elif raw_type in ("INT8L", "INT8H", "FLOAT16"):
            return skip(f"type {raw_type}: a profile has no signed byte or half-precision float")
        elif not raw_type:
            return skip("no type (Telegraf needs one for holding and input registers)")
        else:
            return skip(f"type {raw_type!r} is not a Telegraf field type the import knows")
        scale = f.get("scale", 0.0)
        if not _number(scale):
            return skip(f"scale {scale!r} is not a number")
        scale = float(scale) or 1.0  # Telegraf: 0 (unset) means no scaling
        if dtype in (DataType.BOOL, DataType.STRING) and scale != 1.0:
            return skip(f"a {raw_type} takes no scale")
        output = f.get("output")
        if (output == "INT64" and scale != 1.0) or (
            output in ("INT64", "UINT64") and dtype.is_float
        ):
            dev.notes.append(
                f"{what}: output {output}: the gateway keeps the fraction Telegraf cuts off"
            )
        dev.points.append(
            _Candidate(
                name,
                where,
                what,
                {
                    "address": address,
                    "register_type": table,
                    "dtype": dtype,
                    "byte_order": order,
                    "scale": scale,
                    "bits": bits,
                    "length": length,
                    "description": desc,
                },
            )
        )
