"""Device profiles as data: profile files (YAML) read strictly, every problem at FILE:LINE:COL.

A profile file (docs/profile-format.md §0) is read with the gateway config's bounded reader
(:func:`edge.config_yaml.read_yaml`) and checked in two phases, as the config is: the schema
(:class:`ProfileSpec`, every key, type and range, in :mod:`edge.config_schema`'s words), then the
profile's own rules (:class:`devices.profile.Point` and :class:`devices.profile.Profile`: overlaps,
bits, labels, scale registers ...), each reported at the key it is about.

* **Shipped profiles** are ``devices/*.yaml`` and the serial sensors' Python profiles
  (``devices/<name>.py`` defining ``PROFILE``, a :class:`devices.profile.SensorProfile`: their
  protocol is code). :func:`shipped_profiles` reads them once per process.
* **User profiles** are the files and folders a gateway config names (``profiles:``, default the
  folder ``profiles/`` beside it): :func:`load_user_profiles`. A user profile may ``extend`` a
  shipped one or another user profile; its name may be neither's.
* **Per-device overrides** (a device's ``byte_order``, ``address_offset``, ``max_registers``)
  give the profile a device is polled with: :func:`with_overrides`.

The running gateway never imports this module (it brings pydantic and the YAML parser): the
profiles travel, resolved per device, in :attr:`edge.settings.LoadedConfig.profiles`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

import devices
from devices import AnyProfile
from devices.profile import (
    Point,
    Profile,
    ProfileError,
    RegisterType,
    SensorProfile,
)
from devices.simulate import SimHint, SimModel
from edge.config_schema import (
    POINT_NAME,
    ConfigError,
    Doubts,
    Ident,
    StrictModel,
    check_baud,
    field_problems,
)
from edge.config_yaml import MAX_CONFIG_BYTES, Positions, YamlError, read_yaml
from protocols.modbus import ByteOrder
from protocols.modbus_frame import LineTiming

__all__ = [
    "MAX_PROFILE_FILES",
    "AnyProfile",
    "PointSpec",
    "ProfileSet",
    "ProfileSpec",
    "get_profile",
    "load_profile_file",
    "load_user_profiles",
    "modbus_profiles",
    "shipped_profiles",
    "shown",
    "with_overrides",
]


#: Profile files one gateway reads at most (a folder of more is refused: is it the right one?).
MAX_PROFILE_FILES = 1000
SHIPPED_DIR = Path(devices.__file__).resolve().parent
#: Python modules of devices/ that are not profiles.
_NOT_PROFILES = {"profile", "simulate", "units"}

Problem = tuple[str, int, int, str]  # file, line, column, message
Table = Literal["input", "holding", "coil", "discrete"]
DataTypeName = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "string"
]
ByteOrderName = Literal["ABCD", "CDAB", "BADC", "DCBA"]
KindName = Literal["gauge", "counter"]
ShapeName = Literal["load", "temperature", "humidity", "sun", "night"]  # devices.simulate.SHAPES
ModelName = Literal["energy_meter", "lighting", "weather", "thermo_hygro", "water_level"]
#: ``address_base`` -> the table it numbers (None: every table).
ADDRESS_BASES: dict[int, RegisterType | None] = {
    0: None,
    1: None,
    10001: RegisterType.DISCRETE,
    30001: RegisterType.INPUT,
    40001: RegisterType.HOLDING,
}
#: Point and Profile fields whose key in the file is spelled otherwise.
_KEY_OF_FIELD = {"dtype": "data_type", "register_type": "table"}


# --------------------------------------------------------------------------- the schema


def _pair(v: object, what: str, example: str) -> object:
    if isinstance(v, list) and len(v) != 2:
        raise ValueError(f"takes {what} ({example}), not a list of {len(v)}")
    return v


class LineSpec(StrictModel):
    """``default_line``: the serial setting the device leaves the factory with."""

    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    _baud = field_validator("baudrate")(classmethod(lambda cls, v: check_baud(v)))


class PointDefaults(StrictModel):
    """``defaults``: what each point of the file takes when it does not say."""

    table: Table | None = None
    data_type: DataTypeName | None = None
    byte_order: ByteOrderName | None = None
    scale: float | None = None
    unit: str | None = None
    kind: KindName | None = None
    writable: bool | None = None


class PointSimSpec(StrictModel):
    """A point's ``simulate:``: value hints for its simulator (docs/profile-format.md §16)."""

    nominal: float | None = None
    range: list[float] | None = None
    noise: float | None = Field(None, ge=0)
    daily: ShapeName | None = None
    rate_per_h: float | None = Field(None, ge=0)
    values: list[bool | int | float] | None = Field(None, min_length=1, max_length=256)
    text: str | None = Field(None, max_length=250)
    quantity: str | None = Field(None, pattern=POINT_NAME)

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, v: object) -> object:
        return _pair(v, "[low, high]", "range: [207, 253]")

    def hint(self) -> SimHint:
        return SimHint(
            nominal=self.nominal,
            range=(self.range[0], self.range[1]) if self.range is not None else None,
            noise=self.noise,
            daily=self.daily,
            rate_per_h=self.rate_per_h,
            values=tuple(self.values or ()),
            text=self.text,
            quantity=self.quantity,
        )


class ProfileSimSpec(StrictModel):
    """A profile's ``simulate:``: the behaviour model its simulator follows (§16)."""

    model: ModelName
    phases: Literal[1, 3] | None = None
    peak_kw: float | None = Field(None, gt=0, le=100_000)

    def spec(self) -> SimModel:
        return SimModel(self.model, self.phases, self.peak_kw)


class PointSpec(StrictModel):
    """One entry of ``points`` (docs/profile-format.md §0.2)."""

    name: str = Field(pattern=POINT_NAME)
    #: As the file numbers it (``address_base``); the PDU address is this minus the base.
    address: int = Field(ge=0, le=999_999)
    table: Table | None = None
    data_type: DataTypeName | None = None
    byte_order: ByteOrderName | None = None
    word_order: Literal["big", "little"] | None = None
    scale: float | None = None
    offset: float = 0.0
    scale_register: str | None = Field(None, pattern=POINT_NAME)
    bits: list[int] | None = None
    labels: dict[int, str] | None = None
    length: int | None = Field(None, ge=1, le=125)
    unit: str | None = None
    kind: KindName | None = None
    wrap: float | None = None
    writable: bool | None = None
    limits: list[float] | None = None
    description: str = ""
    simulate: PointSimSpec | None = None
    key: bool = False

    @field_validator("bits", mode="before")
    @classmethod
    def _bits(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v, v]  # one bit
        return _pair(v, "a bit number n or [first, last]", "bits: 3, bits: [4, 6]")

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, v: object) -> object:
        return _pair(v, "[low, high]", "limits: [0, 100]")


class ProfileSpec(StrictModel):
    """A profile file (docs/profile-format.md §0.1). Keys required without ``extends`` are
    checked after the schema (:func:`_required`)."""

    name: Ident | None = None
    extends: Ident | None = None
    vendor: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)
    source: str | None = Field(None, min_length=1)
    description: str | None = None
    address_base: Literal[0, 1, 10001, 30001, 40001] = 0
    max_registers_per_request: int | None = Field(None, ge=1, le=125)
    max_bits_per_request: int | None = Field(None, ge=1, le=2000)
    even_register_count: bool | None = None
    readable_ranges: dict[Table, list[list[int]]] | None = None
    default_port: int | None = Field(None, ge=1, le=65535)
    default_line: LineSpec | None = None
    defaults: PointDefaults | None = None
    points: list[PointSpec] | None = None
    remove_points: list[str] | None = None
    simulate: ProfileSimSpec | None = None

    @field_validator("readable_ranges", mode="before")
    @classmethod
    def _ranges(cls, v: object) -> object:
        if isinstance(v, dict):
            for ranges in v.values():
                if isinstance(ranges, list):
                    for r in ranges:
                        _pair(r, "[start, end] (end: one past the last)", "[0x0000, 0x0050]")
        return v


# --------------------------------------------------------------------------- one file


@dataclass
class _Draft:
    """A profile file after the schema phase."""

    source: str  # the file, as problems name it
    spec: ProfileSpec | None
    pos: Positions
    doubts: Doubts | None
    problems: list[Problem] = field(default_factory=list)

    def doubtful(self, path: tuple[Any, ...]) -> bool:
        """Whether a value at ``path`` was repaired after a field problem (stay silent)."""
        return self.doubts is not None and self.doubts(path)

    def at(self, path: tuple[Any, ...], msg: str, *, key: bool = False) -> None:
        if not self.doubtful(path):
            self.problems.append((self.source, *self.pos.locate(path, prefer_key=key), msg))

    def line(self, path: tuple[Any, ...]) -> int:
        return self.pos.locate(path, prefer_key=False)[0]


def shown(path: Path) -> str:
    """A file as problems name it: relative to the working folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _read_draft(path: Path) -> _Draft:
    """Read one profile file and check it against the schema (:class:`ProfileSpec`)."""
    source = shown(path)
    empty = Positions()

    def fail(line: int, col: int, msg: str) -> _Draft:
        return _Draft(source, None, empty, None, [(source, line, col, msg)])

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        return fail(1, 1, f"cannot read the profile: {exc.strerror or exc}")
    if len(raw) > MAX_CONFIG_BYTES:
        return fail(1, 1, f"over {MAX_CONFIG_BYTES:,} bytes, the most a profile file may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return fail(line, col, "not UTF-8 text: save the profile as UTF-8")
    try:
        read = read_yaml(text, number_keys=True)
    except YamlError as exc:
        return _Draft(source, None, empty, None, [(source, *p) for p in exc.problems])
    problems: list[Problem] = [(source, *p) for p in read.problems]
    if not isinstance(read.data, dict):
        if read.data is not None or not problems:
            problems.append((source, 1, 1, "a profile is a YAML mapping (name: ..., points: ...)"))
        return _Draft(source, None, read.pos, None, problems)
    spec, schema, doubts = field_problems(ProfileSpec, read.data, read, source)
    return _Draft(source, spec, read.pos, doubts, problems + schema)


def _complete(d: _Draft) -> bool:
    """The keys a profile needs unless it extends another; False when one is missing."""
    spec = d.spec
    assert spec is not None
    need = (
        ("name",) if spec.extends is not None else ("name", "vendor", "model", "source", "points")
    )
    missing = [k for k in need if getattr(spec, k) is None and not d.doubtful((k,))]
    for k in missing:
        d.at((), f"missing required key {k!r} in top level")
    if spec.extends is None and spec.remove_points is not None:
        d.at(
            ("remove_points",), "remove_points leaves out points of a base: give extends", key=True
        )
    if spec.extends is None and spec.points == []:
        d.at(("points",), "a profile needs at least one point")
    return not missing and spec.name is not None


# --------------------------------------------------------------------------- building


#: point name -> (file, line, column) of its entry: where a problem about it is reported.
Origins = dict[str, tuple[str, int, int]]


def _key_path(d: _Draft, i: int, fld: str | None) -> tuple[Any, ...]:
    """The point's key a problem about ``fld`` is reported at (the point when it is not in the
    file: it came from ``defaults`` or was left at its default)."""
    key = _KEY_OF_FIELD.get(fld or "", fld)
    if key is not None and ("points", i, key) in d.pos.value:
        return ("points", i, key)
    return ("points", i)


def _point(d: _Draft, i: int, ps: PointSpec, defaults: PointDefaults, base: int) -> Point | None:
    """The point of entry ``i``, or None (its problem reported)."""
    table = RegisterType(ps.table or defaults.table or "input")
    dtype = ps.data_type or defaults.data_type
    if dtype is None:
        d.at(
            ("points", i),
            f"missing required key 'data_type' in points.{i} (or give it in defaults)",
        )
        return None
    address = ps.address - base
    numbered = ADDRESS_BASES[base]
    where = ("points", i, "address")
    if address < 0:
        d.at(where, f"point {ps.name!r}: address {ps.address} is below address_base {base}")
        return None
    if numbered is not None and table is not numbered:
        d.at(
            where,
            f"point {ps.name!r}: address_base {base} numbers {numbered} registers, and this point "
            f"is in table {table}: give its PDU address in a file with address_base 0 or 1",
        )
        return None
    if address > 0xFFFF:
        d.at(where, f"point {ps.name!r}: address {ps.address} is PDU address {address}, past 65535")
        return None
    if ps.byte_order is not None and ps.word_order is not None:
        # Point itself cannot tell an explicit ABCD from its default: refuse the pair here.
        if ByteOrder(ps.byte_order).word_order.value != ps.word_order:
            d.at(
                ("points", i, "word_order"),
                f"point {ps.name!r}: word_order {ps.word_order} contradicts byte_order "
                f"{ps.byte_order}; give byte_order alone",
            )
            return None
    byte_order = ps.byte_order or (defaults.byte_order if ps.word_order is None else None)
    try:
        return Point(
            ps.name,
            address,
            dtype,  # type: ignore[arg-type]  # a DataType value: Point converts it
            ps.unit if ps.unit is not None else defaults.unit or "",
            register_type=table,
            word_order=ps.word_order,  # type: ignore[arg-type]
            scale=ps.scale if ps.scale is not None else defaults.scale or 1.0,
            description=ps.description,
            writable=ps.writable if ps.writable is not None else bool(defaults.writable),
            limits=(ps.limits[0], ps.limits[1]) if ps.limits is not None else None,
            byte_order=ByteOrder(byte_order or "ABCD"),
            offset=ps.offset,
            bits=(ps.bits[0], ps.bits[1]) if ps.bits is not None else None,
            length=ps.length,
            labels=tuple(sorted((ps.labels or {}).items())),
            scale_register=ps.scale_register,
            kind=ps.kind or defaults.kind or "gauge",  # type: ignore[arg-type]
            wrap=ps.wrap,
            simulate=ps.simulate.hint() if ps.simulate is not None else None,
            key=ps.key,
        )
    except ProfileError as exc:
        d.at(_key_path(d, i, exc.field), str(exc))
        return None


def _pick(spec: ProfileSpec, base: Profile | None, key: str, default: Any) -> Any:
    value = getattr(spec, key)
    if value is not None:
        return value
    return getattr(base, key) if base is not None else default


def _build(
    d: _Draft, base: Profile | None, base_origins: Origins
) -> tuple[Profile, Origins] | None:
    """The profile of a complete draft on its base; None when it has a problem (reported)."""
    spec = d.spec
    assert spec is not None and spec.name is not None
    points: dict[str, Point] = {p.name: p for p in base.points} if base is not None else {}
    origins = dict(base_origins)
    for i, name in enumerate(spec.remove_points or []):
        if base is not None and name not in points:
            d.at(("remove_points", i), f"{base.name} has no point {name!r} to remove")
        points.pop(name, None)
        origins.pop(name, None)
    ok = not d.doubtful(("remove_points",))
    defaults = spec.defaults or PointDefaults()
    own: dict[str, int] = {}  # this file's points: name -> index in points
    for i, ps in enumerate(spec.points or []):
        if d.doubtful(("points", i)):
            ok = False
            continue
        if ps.name in own:
            first = d.line(("points", own[ps.name]))
            d.at(
                ("points", i, "name"),
                f"point {ps.name!r} is declared twice (first at line {first})",
            )
            ok = False
            continue
        own[ps.name] = i
        point = _point(d, i, ps, defaults, spec.address_base)
        if point is None:
            ok = False
            continue
        points[ps.name] = point  # a base point of this name is replaced where it stood
        origins[ps.name] = (d.source, *d.pos.locate(("points", i), prefer_key=False))
    if d.doubtful(("readable_ranges",)) or d.doubtful(("defaults",)) or d.doubtful(("simulate",)):
        return None
    ranges = base.readable_ranges if base is not None else {}
    if spec.readable_ranges is not None:
        b = spec.address_base
        ranges = {
            RegisterType(t): tuple((lo - b, hi - b) for lo, hi in pairs)
            for t, pairs in spec.readable_ranges.items()
        }
    line = spec.default_line
    try:
        profile = Profile(
            name=spec.name,
            vendor=_pick(spec, base, "vendor", ""),
            model=_pick(spec, base, "model", ""),
            points=tuple(points.values()),
            max_registers_per_request=_pick(spec, base, "max_registers_per_request", 125),
            max_bits_per_request=_pick(spec, base, "max_bits_per_request", 2000),
            even_register_count=_pick(spec, base, "even_register_count", False),
            readable_ranges=ranges,
            default_port=_pick(spec, base, "default_port", 502),
            default_line=(
                LineTiming(line.baudrate, line.parity, line.stopbits)
                if line is not None
                else base.default_line
                if base is not None
                else LineTiming()
            ),
            description=_pick(spec, base, "description", ""),
            source=_pick(spec, base, "source", ""),
            simulate=(
                spec.simulate.spec()
                if spec.simulate is not None
                else base.simulate
                if base is not None
                else None
            ),
        )
    except ProfileError as exc:
        # Without the points refused above a scale register may be missing: not a problem.
        if ok or exc.field != "scale_register":
            _report(d, exc, own, origins)
        return None
    # The points that were refused are reported; the others were still checked together.
    return (profile, origins) if ok else None


def _report(d: _Draft, exc: ProfileError, own: dict[str, int], origins: Origins) -> None:
    """A profile-wide problem, at the point it blames (the last of its points that is this
    file's), naming where the other one is."""
    blame = next((n for n in reversed(exc.points) if n in own), None)
    msg = str(exc)
    for other in dict.fromkeys(exc.points):
        if other == blame or other not in origins:
            continue
        file, line, _ = origins[other]
        msg += f" ({other!r} at {'line ' + str(line) if file == d.source else f'{file}:{line}'})"
    if blame is not None:
        d.at(_key_path(d, own[blame], exc.field), msg)
    elif exc.field is not None and (exc.field,) in d.pos.value:
        d.at((exc.field,), msg)
    else:
        d.at(("name",), msg)


# --------------------------------------------------------------------------- sets of files


@dataclass
class ProfileSet:
    """Profiles by name: the shipped ones and the user files read beside a config.

    ``broken``: user profiles (by name) whose file has a problem (reported in ``problems``): a
    device naming one is not reported again."""

    shipped: dict[str, AnyProfile]
    user: dict[str, Profile] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # user profile name -> its file
    broken: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    #: Files that gave no profile name at all (not YAML, not a mapping, over a bound): any
    #: device's profile may be in one of them.
    unnamed: list[str] = field(default_factory=list)

    def get(self, name: str) -> AnyProfile | None:
        return self.user.get(name) or self.shipped.get(name)

    def names(self) -> list[str]:
        return sorted({*self.shipped, *self.user})


def _resolve(
    drafts: list[_Draft],
    known: dict[str, AnyProfile],
    known_origins: dict[str, Origins],
    *,
    reserved: bool,
) -> tuple[dict[str, Profile], dict[str, Origins], set[str]]:
    """Build every draft, on its base (another draft, or one of ``known``). ``reserved``: the
    names of ``known`` may not be taken (user files beside the shipped profiles)."""
    by_name: dict[str, _Draft] = {}
    broken: set[str] = set()
    for d in drafts:
        if d.spec is None:
            continue
        name = d.spec.name
        if not _complete(d):
            if name is not None:
                broken.add(name)
            continue
        assert name is not None
        if reserved and name in known:
            d.at(
                ("name",),
                f"{name!r} is a shipped profile: give yours a name of its own (extends: {name} "
                "builds on it)",
            )
        elif name in by_name:
            other = by_name[name]
            d.at(("name",), f"profile {name!r} is defined in {other.source} too")
        else:
            by_name[name] = d
            continue
        broken.add(name)
    built: dict[str, tuple[Profile, Origins] | None] = {}

    def build(name: str, stack: tuple[str, ...]) -> tuple[Profile, Origins] | None:
        if name in built:
            return built[name]
        d = by_name[name]
        assert d.spec is not None
        base: Profile | None = None
        base_origins: Origins = {}
        parent = d.spec.extends
        result = None
        if parent is None:
            result = _build(d, None, {})
        elif parent in stack or parent == name:
            chain = (
                " -> ".join((*stack[stack.index(parent) :], name, parent))
                if parent in stack
                else f"{name} -> {name}"
            )
            d.at(("extends",), f"extends {parent!r} makes a circle: {chain}")
        elif parent in by_name:
            got = build(parent, (*stack, name))
            if got is not None:
                base, base_origins = got
                result = _build(d, base, base_origins)
        elif isinstance(known.get(parent), Profile):
            base = known[parent]  # type: ignore[assignment]
            result = _build(d, base, known_origins.get(parent, {}))
        elif parent in known:
            d.at(
                ("extends",),
                f"{parent!r} is a serial sensor's profile (its protocol is code): "
                "only a Modbus profile can be extended",
            )
        else:
            names = ", ".join(sorted({*known, *by_name}))
            d.at(("extends",), f"extends {parent!r}: there is no such profile (known: {names})")
        built[name] = result
        if result is None:
            broken.add(name)
        return result

    for name in by_name:
        build(name, ())
    profiles = {n: r[0] for n, r in built.items() if r is not None}
    origins = {n: r[1] for n, r in built.items() if r is not None}
    return profiles, origins, broken


@cache
def _shipped() -> tuple[dict[str, AnyProfile], dict[str, Origins]]:
    found: dict[str, AnyProfile] = {}
    for mod in pkgutil.iter_modules(devices.__path__):
        if mod.name in _NOT_PROFILES or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"devices.{mod.name}")
        profile = getattr(module, "PROFILE", None)
        if isinstance(profile, SensorProfile):
            found[profile.name] = profile
    drafts = [_read_draft(path) for path in sorted(SHIPPED_DIR.glob("*.yaml"))]
    profiles, origins, _ = _resolve(drafts, dict(found), {}, reserved=False)
    problems = [p for d in drafts for p in d.problems]
    for name, profile in profiles.items():
        if name in found:
            problems.append((SHIPPED_DIR.name, 1, 1, f"profile {name!r} is defined twice"))
        found[name] = profile
    if problems:  # a bug in a file we ship: say where, as for any profile
        raise ConfigError(problems)
    return found, origins


def shipped_profiles() -> dict[str, AnyProfile]:
    """Every profile shipped in devices/, by name (read once per process).

    Raises :class:`edge.config_schema.ConfigError` when a shipped file is broken (our bug)."""
    return _shipped()[0]


def modbus_profiles() -> dict[str, Profile]:
    """The shipped Modbus profiles (not the serial sensors), by name."""
    return {k: v for k, v in shipped_profiles().items() if isinstance(v, Profile)}


def get_profile(name: str) -> AnyProfile:
    """A shipped profile by name; KeyError naming the known ones."""
    try:
        return shipped_profiles()[name]
    except KeyError:
        known = ", ".join(sorted(shipped_profiles()))
        raise KeyError(f"unknown device profile {name!r} (known: {known})") from None


def profile_files(folder: Path) -> list[Path]:
    """The profile files of a folder: its ``*.yaml`` and ``*.yml`` files (not its subfolders,
    nor hidden files), in name order."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_user_profiles(files: Iterable[Path]) -> ProfileSet:
    """Read user profile files beside the shipped profiles; every problem is in
    :attr:`ProfileSet.problems` (a file with one gives no profile)."""
    shipped = shipped_profiles()
    drafts = [_read_draft(Path(f)) for f in files]
    user, _, broken = _resolve(drafts, shipped, _shipped()[1], reserved=True)
    files_by_name = {d.spec.name: d.source for d in drafts if d.spec is not None and d.spec.name}
    return ProfileSet(
        shipped,
        user,
        {n: files_by_name[n] for n in user},
        broken,
        [p for d in drafts for p in d.problems],
        [d.source for d in drafts if d.spec is None or not d.spec.name],
    )


def load_profile_file(path: Path) -> Profile:
    """One user profile file (it may extend a shipped profile). Raises
    :class:`edge.config_schema.ConfigError` listing its problems."""
    found = load_user_profiles([path])
    if found.problems:
        raise ConfigError(found.problems)
    if not found.user:
        raise ConfigError([(str(path), 1, 1, "no profile in this file")])
    return next(iter(found.user.values()))


# --------------------------------------------------------------------------- per device


def with_overrides(
    profile: Profile,
    *,
    byte_order: str | None = None,
    address_offset: int = 0,
    max_registers: int | None = None,
) -> Profile:
    """The profile one device is polled with (docs/profile-format.md §0.5): every point in
    ``byte_order``, every address (points and readable ranges) moved by ``address_offset``,
    at most ``max_registers`` per request. The same object when nothing changes.

    Raises :class:`devices.profile.ProfileError` when the result is not a valid profile (an
    address moved outside 0..65535: ``field`` is then ``address`` or ``readable_ranges``)."""
    limit = profile.max_registers_per_request
    if max_registers is not None:
        limit = min(limit, max_registers)
    if byte_order is None and not address_offset and limit == profile.max_registers_per_request:
        return profile
    changes: dict[str, Any] = {}
    if byte_order is not None:
        changes = {"byte_order": ByteOrder(byte_order), "word_order": None}
    points = tuple(
        dataclasses.replace(p, address=p.address + address_offset, **changes)
        for p in profile.points
    )
    ranges = {
        t: tuple((lo + address_offset, hi + address_offset) for lo, hi in rs)
        for t, rs in profile.readable_ranges.items()
    }
    return dataclasses.replace(
        profile, points=points, readable_ranges=ranges, max_registers_per_request=limit
    )
