"""A strict pydantic schema's errors in the project's words, each at its FILE:LINE:COL.

Shared by the gateway config (:mod:`edge.config`) and the device profile files
(:mod:`edge.profiles`): both are YAML read with :func:`edge.config_yaml.read_yaml` and validated
by a pydantic model whose every refusal is said in words a technician reads ("must be from 1 to
65535 (got 0)"), at the line and column of the key or value. :func:`field_problems` also
repairs the data (an unknown key dropped, a refused value left out) so that the checks that
follow can still run, and says in :class:`Doubts` what it repaired so they stay silent about it.

Imports: pydantic, :mod:`edge.config_yaml`; nothing else of edge.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config_yaml import Positions, YamlData

__all__ = [
    "BAUD_RATES",
    "DROPPED",
    "IDENT",
    "POINT_NAME",
    "TOPIC",
    "ConfigError",
    "Doubts",
    "Ident",
    "StrictModel",
    "check_baud",
    "field_problems",
    "models_in",
    "renumbered",
]

M = TypeVar("M", bound=BaseModel)

#: Ids end up in MQTT topics and file names: no '/', '+', '#', spaces.
IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Ident = Annotated[str, Field(pattern=IDENT)]
#: MQTT topic levels: no wildcards.
TOPIC = r"^[^#+]+$"
#: A point's name: it becomes a series name, and ``<point>.<aggregate>`` names a window's.
POINT_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"

BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def check_baud(v: int) -> int:
    if v not in BAUD_RATES:
        raise ValueError(f"baud rate must be one of {', '.join(map(str, BAUD_RATES))}")
    return v


class ConfigError(Exception):
    """The configuration (or a profile file it reads) is invalid. Fatal: fix the file; nothing
    was started. ``problems`` are (file, line, column, message), each 1-based."""

    def __init__(self, problems: list[tuple[str, int, int, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{f}:{line}:{col}: {msg}" for f, line, col, msg in problems))


class StrictModel(BaseModel):
    # NaN and infinities are refused as numbers (a YAML .nan is never a setting).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


DROPPED = "<dropped>"  # a step after a list's path: an item of it was left out


class Doubts:
    """What the schema phase could not vouch for, so cross-field checks stay silent about it.

    ``bad``: values refused (left out, so a default stands in), and items left out of a list as
    ``(*list, DROPPED, id)`` (or ``(*list, DROPPED)`` when the item had no id); ``loose``:
    mappings with an unknown key, which may have been meant for any key they do not give (those
    keys hold defaults the person did not choose).
    """

    def __init__(self, pos: Positions) -> None:
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
        self.bad = renumbered(self.bad, lst, set(gone))
        self.loose = renumbered(self.loose, lst, set(gone))
        for item in gone.values():
            name = item.get("id") if isinstance(item, dict) else None
            if isinstance(name, str):
                self.bad.add((*lst, DROPPED, name))
            else:
                self.bad.add((*lst, DROPPED))


def renumbered(
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


def _model_field(root: Any, loc: tuple[Any, ...]) -> Any:
    """The pydantic FieldInfo that ``loc`` ends in (None when it cannot be told)."""
    model: Any = root
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
        models = models_in(info.annotation)
        model = models[0] if len(models) == 1 else models
    return info


def models_in(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in models_in(a)]


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
    POINT_NAME: "a name of 1 to 64 letters, digits, '_' or '-', starting with a letter or '_' "
    "(it names the point's series)",
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


def _explain(err: Any, root: Any) -> str:
    """A pydantic error in the project's words, naming what the field takes."""
    kind, loc = err["type"], tuple(err["loc"])
    value, ctx = err.get("input"), err.get("ctx", {})
    info = _model_field(root, loc)
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
        members = models_in(getattr(info, "annotation", None))
        tags = _one_of([t for m in members for t in _tags_of(m)])
        if kind == "union_tag_not_found":
            return f"needs a type: one of {tags}"
        return f"unknown type {ctx.get('tag')!r}: use {tags}"
    if kind == "value_error":
        return str(ctx.get("error", "")) or err["msg"]
    return err["msg"]


def field_problems(
    root: type[M],
    data: dict[str, Any],
    read: YamlData,
    source: str,
    stand_ins: dict[str, dict[str, Any]] | None = None,
) -> tuple[M | None, list[tuple[str, int, int, str]], Doubts]:
    """Validate ``data`` against the schema ``root``; every field problem, in one pass.

    Then, so the cross-field checks can run in the same go, the data is repaired until it
    validates: an unknown key is dropped, a refused value left out (its default stands in), and
    what lacks a required key is left out of its list or section. Each repair is written down
    in the returned :class:`_Doubts`, and the checks stay silent about what it touches. The
    model is None when it cannot be repaired. ``stand_ins``: required top-level sections, with
    a value that stands in for a missing one so the rest is still checked."""
    pos = read.pos
    doubts = Doubts(pos)
    doubts.bad |= read.left_out | read.doubtful
    doubts.loose |= read.loose
    silent = set(read.left_out)  # reported by the YAML reader already
    problems: list[tuple[str, int, int, str]] = []
    stood_in: set[str] = set()
    for attempt in range(16):
        try:
            model = root.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        else:
            doubts.freeze()
            return model, problems, doubts
        drops: dict[tuple[Any, ...], set[int]] = {}
        for err in errors:
            loc = tuple(err["loc"])
            path, present = _data_path(data, loc)
            quiet = any(path[:n] in silent for n in range(len(path) + 1))
            if attempt == 0 and not quiet:
                problems.append(_field_problem(root, err, loc, pos, source))
            if err["type"] == "extra_forbidden":
                parent = _container(data, path[:-1])
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                doubts.loose.add(path[:-1])
                continue
            if not present:  # a required key is missing: what lacks it goes
                path = path[:-1]
            if not path:  # a required top-level section is missing
                key = loc[0] if len(loc) == 1 else None
                if key not in (stand_ins or {}) or key in stood_in:
                    return None, problems, doubts
                data[key] = dict((stand_ins or {})[key])  # so the rest is checked
                stood_in.add(key)
                doubts.bad.add((key,))
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
            silent = renumbered(silent, lst, set(gone))
    return None, problems, doubts


def _field_problem(
    root: Any, err: Any, loc: tuple[Any, ...], pos: Positions, source: str
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
    return source, line, col, f"{where}: {_explain(err, root)}"
