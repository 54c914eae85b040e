"""The config's YAML, read with bounds, into plain data and the position of every key and value.

A config file comes from a person and is read by a process that must stay small, so the reader
refuses, at the line and column of the cause, what no gateway config needs:

* a file over :data:`MAX_CONFIG_BYTES`;
* nesting deeper than :data:`MAX_DEPTH` (the schema is 5 levels deep);
* more than :data:`MAX_VALUES` values or :data:`MAX_VALUE_CHARS` characters of values once every
  alias is written out (an alias bomb of a few hundred bytes otherwise grows past a gigabyte);
* one value over :data:`MAX_SCALAR_CHARS` characters (the longest path Linux takes), or holding
  a control character or a line break;
* an alias to the value it is inside (it has no end), or to an anchor not defined before it;
* any tag but the YAML ones it reads, ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``
  (``!!map``, ``!!seq``): no ``!secret``, no ``!!python/...``, no ``!!binary``, no
  ``!!timestamp`` (no setting takes bytes or dates); a tagged value that is not what its tag
  says (``!!int abc``) is an error of that value;
* a second document in the file.

Merge keys work as in YAML 1.1: ``<<: *defaults`` (or a list of aliases, the first winning)
copies the keys the mapping does not give itself; a key given beside the merge overrides it.
A plain date (``2024-05-01``) stays text: no setting is a date.

The events come from libyaml's parser (PyYAML's C binding) when installed, else PyYAML's own,
and the data is built here, without PyYAML's node graph: memory is what the data and positions
take. Problems that leave the rest readable (a duplicate key, a bad tag, a value too long) are
collected and the reading goes on; the others (syntax, the limits above) end it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_SCALAR_CHARS",
    "MAX_VALUES",
    "MAX_VALUE_CHARS",
    "Positions",
    "YamlData",
    "YamlError",
    "read_yaml",
]

#: The largest config file read (bytes). A cabinet's config is a few KB; 1 MiB holds thousands of
#: devices. Larger is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024
#: Nesting levels (the schema has 5: parking.buses[].meters[].address).
MAX_DEPTH = 20
#: Values (each key, scalar, list and mapping) with every alias written out.
MAX_VALUES = 100_000
#: Characters of scalar values with every alias written out.
MAX_VALUE_CHARS = 4 * MAX_CONFIG_BYTES
#: The longest single value: PATH_MAX on Linux, and no setting needs more.
MAX_SCALAR_CHARS = 4096

Path = tuple[Any, ...]
Problem = tuple[int, int, str]  # line, column (both 1-based), message

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null")} | {"!"}
_MAP_TAGS = {f"{_CORE}map", "!"}
_SEQ_TAGS = {f"{_CORE}seq", "!"}
_ALLOWED = "!!str, !!int, !!float, !!bool and !!null"
_KIND = {
    f"{_CORE}int": "an integer",
    f"{_CORE}float": "a number",
    f"{_CORE}bool": "true or false",
    f"{_CORE}null": "null",
}
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()
_CONSTRUCT = {
    f"{_CORE}int": _CONSTRUCTOR.construct_yaml_int,
    f"{_CORE}float": _CONSTRUCTOR.construct_yaml_float,
    f"{_CORE}bool": _CONSTRUCTOR.construct_yaml_bool,
    f"{_CORE}null": _CONSTRUCTOR.construct_yaml_null,
}
_NULL_WORDS = ("", "~", "null", "Null", "NULL")
#: Control characters and line breaks: no setting holds one (a tab is allowed).
_CONTROL = {chr(c) for c in range(32) if c != 9} | {"\x7f", "\x85", "\u2028", "\u2029"}
_SKIP = object()  # a value left out: it was reported, the rest of the file is read on


class YamlError(Exception):
    """The file cannot be read as a config; ``problems`` are (line, column, message)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(f"{line}:{col}: {msg}" for line, col, msg in problems))


class Positions:
    """Source positions (1-based line, column) of every key and value, by path."""

    def __init__(self) -> None:
        self.key: dict[Path, tuple[int, int]] = {}
        self.value: dict[Path, tuple[int, int]] = {}

    def known_path(self, loc: Path) -> Path:
        """The steps of ``loc`` that are in the data (pydantic's union tags are not)."""
        path: Path = ()
        for step in loc:
            if (*path, step) in self.value or (*path, step) in self.key:
                path = (*path, step)
        return path

    def locate(self, loc: Path, *, prefer_key: bool) -> tuple[int, int]:
        """Position of the deepest known step of ``loc``."""
        path = self.known_path(loc)
        if prefer_key and path in self.key:
            return self.key[path]
        return self.value.get(path, (1, 1))

    def drop_items(self, lst: Path, gone: set[int]) -> None:
        """Forget the items ``gone`` of the list at ``lst`` and renumber those after them."""
        if not gone:
            return
        order = sorted(gone)
        n = len(lst)
        for table in (self.key, self.value):
            moved: dict[Path, tuple[int, int]] = {}
            for path in [p for p in table if len(p) > n and p[:n] == lst]:
                where = table.pop(path)
                i = path[n]
                if i in gone:
                    continue
                shift = sum(1 for g in order if g < i)
                moved[(*lst, i - shift, *path[n + 1 :])] = where
            table.update(moved)


@dataclass
class YamlData:
    """What :func:`read_yaml` read: the data, where each part of it is, and what is doubtful.

    ``problems`` did not stop the reading: the values they name were left out (``left_out``)
    or, for a duplicate key, the first one kept (``doubtful``). ``loose``: mappings with a key
    that was not a name, which may have meant any key they lack."""

    data: Any
    pos: Positions
    problems: list[Problem] = field(default_factory=list)
    left_out: set[Path] = field(default_factory=set)
    doubtful: set[Path] = field(default_factory=set)
    loose: set[Path] = field(default_factory=set)


@dataclass
class _Anchor:
    value: Any
    mark: tuple[int, int]
    values: int  # values in it, its aliases written out
    chars: int
    height: int  # nesting levels below it
    records: list[tuple[int, Path, tuple[int, int]]]  # (kind, path inside it, position)


# record kinds: the position of a key or a value; a path left out, doubtful or loose
_KEY, _VALUE, _LEFT_OUT, _DOUBTFUL, _LOOSE = range(5)


def _mark(event: Event) -> tuple[int, int]:
    return event.start_mark.line + 1, event.start_mark.column + 1


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


def _short(text: str, n: int = 40) -> str:
    return repr(text) if len(text) <= n else repr(text[:n]) + f"... ({len(text)} characters)"


class _Stop(Exception):
    """A problem after which nothing more can be read."""

    def __init__(self, where: tuple[int, int], msg: str):
        self.problem = (*where, msg)


class _Reader:
    def __init__(self, text: str, number_keys: bool = False) -> None:
        self.number_keys = number_keys
        loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        self.loader = loader_class(text)
        self.out = YamlData(None, Positions())
        self.anchors: dict[str, _Anchor] = {}
        self.open: list[tuple[str, tuple[int, int]]] = []  # anchors being read, innermost last
        self.log: list[tuple[int, Path, tuple[int, int]]] = []  # records while an anchor is open
        self.values = 0
        self.chars = 0
        self.last: Event | None = None

    # ----------------------------------------------------------------- events and records

    def next(self) -> Event:
        self.last = event = self.loader.get_event()
        return event

    def record(self, kind: int, path: Path, where: tuple[int, int]) -> None:
        if kind == _KEY:
            self.out.pos.key[path] = where
        elif kind == _VALUE:
            self.out.pos.value[path] = where
        else:
            (self.out.left_out, self.out.doubtful, self.out.loose)[kind - 2].add(path)
        if self.open:
            self.log.append((kind, path, where))

    def problem(self, where: tuple[int, int], msg: str) -> None:
        self.out.problems.append((*where, msg))

    def count(self, values: int, chars: int, where: tuple[int, int], what: str) -> None:
        self.values += values
        self.chars += chars
        if self.values <= MAX_VALUES and self.chars <= MAX_VALUE_CHARS:
            return
        limit = (
            f"{MAX_VALUES:,} values"
            if self.values > MAX_VALUES
            else f"{MAX_VALUE_CHARS:,} characters of values"
        )
        aliases = " with its aliases written out" if self.anchors else ""
        hint = ": is an alias repeated by mistake?" if what.startswith("alias") else ""
        raise _Stop(
            where,
            f"{what} takes the config past {limit}{aliases}, more than any gateway needs{hint}",
        )

    # ----------------------------------------------------------------- the document

    def document(self) -> YamlData:
        self.next()  # StreamStartEvent
        event = self.next()
        if isinstance(event, StreamEndEvent):
            return self.out
        assert isinstance(event, DocumentStartEvent)
        self.out.data = self.node(self.next(), (), 1)
        self.next()  # DocumentEndEvent
        event = self.next()
        if isinstance(event, DocumentStartEvent):
            raise _Stop(
                _mark(event),
                "a second YAML document begins here: a config is one document (remove the "
                "'---' line, or split the file)",
            )
        if self.out.data is _SKIP:
            self.out.data = None
        return self.out

    def node(self, event: Event, path: Path, depth: int) -> Any:
        """The value that starts with ``event``, or _SKIP when it was left out (reported)."""
        where = _mark(event)
        if depth > MAX_DEPTH:
            raise _Stop(
                where, f"nested more than {MAX_DEPTH} levels deep; a gateway config needs 5"
            )
        anchor = None if isinstance(event, AliasEvent) else event.anchor
        if anchor is not None:
            self.open.append((anchor, where))
            start, values, chars = len(self.log), self.values, self.chars
        if isinstance(event, AliasEvent):
            value = self.alias(event, path, depth)
        elif isinstance(event, ScalarEvent):
            self.count(1, len(event.value), where, "this value")
            value = self.scalar(event)
        elif isinstance(event, MappingStartEvent):
            self.count(1, 0, where, "this mapping")
            value = self.mapping(event, path, depth)
        elif isinstance(event, SequenceStartEvent):
            self.count(1, 0, where, "this list")
            value = self.sequence(event, path, depth)
        else:  # pragma: no cover - the parser emits nothing else here
            raise _Stop(where, f"unexpected {type(event).__name__}")
        self.record(_LEFT_OUT if value is _SKIP else _VALUE, path, where)
        if anchor is not None:
            self.open.pop()
            n = len(path)
            records = [(k, p[n:], w) for k, p, w in self.log[start:]]
            if not self.open:
                self.log.clear()
            height = max((len(p) for _, p, _ in records), default=0)
            self.anchors[anchor] = _Anchor(
                value, where, self.values - values, self.chars - chars, height, records
            )
        return value

    def alias(self, event: AliasEvent, path: Path, depth: int) -> Any:
        where, name = _mark(event), event.anchor
        inside = [w for n, w in self.open if n == name]
        if inside:
            line, col = inside[-1]
            raise _Stop(
                where,
                f"alias *{name} is inside the value it names (&{name} at line {line}, column "
                f"{col}): a recursive alias has no end",
            )
        anchor = self.anchors.get(name)
        if anchor is None:
            self.count(1, 0, where, f"alias *{name}")  # it leaves a record, as a value does
            self.problem(where, f"alias *{name} names no anchor: write &{name} on a value above")
            return _SKIP
        if depth + anchor.height > MAX_DEPTH:
            raise _Stop(where, f"alias *{name} nests the config more than {MAX_DEPTH} levels deep")
        self.count(anchor.values, anchor.chars, where, f"alias *{name}")
        for kind, rel, at in anchor.records:
            if rel:  # the alias itself is where the value is used
                self.record(kind, (*path, *rel), at)
        return anchor.value if anchor.value is _SKIP else _copy(anchor.value)

    # ----------------------------------------------------------------- scalars

    def scalar(self, event: ScalarEvent) -> Any:
        """The value of a scalar, or _SKIP (reported)."""
        where, value, tag = _mark(event), event.value, event.tag
        plain = event.implicit[0] and not event.style
        if tag is None:
            tag = _RESOLVER.resolve(ScalarNode, value, (True, False)) if plain else _CORE + "str"
            if tag in (_CORE + "timestamp", _CORE + "value"):
                tag = _CORE + "str"  # no setting is a date; '=' is only text
        elif tag not in _SCALAR_TAGS:
            self.problem(where, self.tag_problem(tag))
            return _SKIP
        if len(value) > MAX_SCALAR_CHARS:
            self.problem(
                where,
                f"a value of {len(value):,} characters: no setting takes more than "
                f"{MAX_SCALAR_CHARS} (the longest path Linux accepts)",
            )
            return _SKIP
        if tag in (_CORE + "str", "!"):
            bad = next((c for c in value if c in _CONTROL), None)
            if bad is not None:
                self.problem(
                    where,
                    f"{_short(value)} holds a control character or line break ({bad!r}); "
                    "no setting takes one",
                )
                return _SKIP
            return value
        if tag == _CORE + "merge":
            return _MERGE
        if tag == _CORE + "null" and event.tag is not None and value not in _NULL_WORDS:
            self.problem(where, f"!!null {_short(value)}: a null has no value (write null or ~)")
            return _SKIP
        try:
            return _CONSTRUCT[tag](ScalarNode(tag, value))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            if "digits" in str(exc):
                msg = f"a number of {len(value):,} digits: far past what any setting takes"
            else:
                msg = f"{_short(value)} is not {_KIND[tag]}"
                if event.tag is not None:
                    msg = f"{_show_tag(tag)} {msg}"
            self.problem(where, msg)
            return _SKIP

    @staticmethod
    def tag_problem(tag: str) -> str:
        hint = ""
        if tag in ("!secret", "!env", "!include"):
            hint = "; a secret goes in a file of its own (mqtt.password_file, status.token_file)"
        return (
            f"tag {_show_tag(tag)}: this config defines no tags, and of YAML's it reads only "
            f"{_ALLOWED}{hint}"
        )

    # ----------------------------------------------------------------- collections

    def collection_tag(self, event: CollectionStartEvent, allowed: set[str], path: Path) -> bool:
        if event.tag is None or event.tag in allowed:
            return True
        self.problem(_mark(event), self.tag_problem(event.tag))
        self.skip(event)
        return False

    def sequence(self, event: SequenceStartEvent, path: Path, depth: int) -> Any:
        if not self.collection_tag(event, _SEQ_TAGS, path):
            return _SKIP
        out: list[Any] = []
        while not isinstance(item := self.next(), SequenceEndEvent):
            value = self.node(item, (*path, len(out)), depth + 1)
            if value is _SKIP:
                # Keep the list's length and numbering: the item is reported, and None stands
                # in for it (the schema phase is told to leave it alone).
                value = None
            out.append(value)
        return out

    def mapping(self, event: MappingStartEvent, path: Path, depth: int) -> Any:
        if not self.collection_tag(event, _MAP_TAGS, path):
            return _SKIP
        out: dict[str, Any] = {}
        seen: dict[str, tuple[int, int]] = {}  # keys given here, kept or not
        merges: list[tuple[tuple[int, int], Any, list[tuple[int, Path, tuple[int, int]]]]] = []
        while not isinstance(kev := self.next(), MappingEndEvent):
            kwhere = _mark(kev)
            key = self.key(kev, path)
            if key is _MERGE:
                merges.append(self.merge_source(self.next(), path, depth))
                continue
            if key is _SKIP:
                self.record(_LOOSE, path, kwhere)
                self.skip(self.next())
                continue
            if key in seen:
                line, col = seen[key]
                self.problem(kwhere, f"duplicate key {key!r} (first at line {line}, column {col})")
                self.record(_DOUBTFUL, (*path, key), kwhere)
                self.skip(self.next())
                continue
            seen[key] = kwhere
            self.record(_KEY, (*path, key), kwhere)
            value = self.node(self.next(), (*path, key), depth + 1)
            if value is not _SKIP:
                out[key] = value
        # Keys given beside the merge win; among merged mappings, the first one listed.
        for _where, source, records in merges:
            for key, value in source.items():
                if key in seen:
                    continue
                seen[key] = _where
                out[key] = value
                for kind, rel, at in records:
                    if rel[:1] == (key,):
                        self.record(kind, (*path, *rel), at)
        return out

    def key(self, event: Event, path: Path) -> Any:
        """A mapping key: a name (text), or _MERGE; _SKIP when it is neither (reported)."""
        where = _mark(event)
        if isinstance(event, CollectionStartEvent):
            self.problem(where, "a key must be a name, not a list or a mapping")
            self.skip(event)
            return _SKIP
        if isinstance(event, AliasEvent):
            anchor = self.anchors.get(event.anchor)
            if anchor is not None and isinstance(anchor.value, str):
                self.count(1, len(anchor.value), where, f"alias *{event.anchor}")
                return anchor.value
            self.problem(where, f"a key must be a name: *{event.anchor} is not one")
            return _SKIP
        assert isinstance(event, ScalarEvent)
        self.count(1, len(event.value), where, "this key")
        mark = len(self.out.problems)
        key = self.scalar(event)
        if key is _MERGE or isinstance(key, str):
            return key
        if self.number_keys and isinstance(key, int) and not isinstance(key, bool):
            return key
        if key is not _SKIP and len(self.out.problems) == mark:
            self.problem(
                where,
                f"key {_short(event.value)} must be a name (YAML reads it as {key!r}: quote it "
                "if it is one)",
            )
        return _SKIP

    def merge_source(
        self, event: Event, path: Path, depth: int
    ) -> tuple[tuple[int, int], dict[str, Any], list[tuple[int, Path, tuple[int, int]]]]:
        """What ``<<:`` merges: one mapping, or the keys of several, the first one winning;
        with the records of where each key and value is, relative to the mapping."""
        where = _mark(event)
        scratch = (*path, _MERGE)
        self.open.append(("<<", where))  # capture the records of what is read here
        start = len(self.log)
        value = self.node(event, scratch, depth + 1)
        self.open.pop()
        n = len(scratch)
        records = [(k, p[n:], w) for k, p, w in self.log[start:] if p[:n] == scratch]
        if not self.open:
            self.log.clear()
        for kind, rel, _ in records:  # the scratch path is no place in the config
            full = (*scratch, *rel)
            (self.out.pos.key if kind == _KEY else self.out.pos.value).pop(full, None)
            for s in (self.out.left_out, self.out.doubtful, self.out.loose):
                s.discard(full)
        self.out.pos.value.pop(scratch, None)
        sources: list[tuple[dict[str, Any], Path]] = []
        if isinstance(value, dict):
            sources = [(value, ())]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            sources = [(v, (i,)) for i, v in enumerate(value)]
        elif value is not _SKIP:
            self.problem(
                where,
                "<< merges a mapping (<<: *defaults) or a list of them (<<: [*a, *b]); "
                f"this is {_kind_of(value)}",
            )
        merged: dict[str, Any] = {}
        out_records: list[tuple[int, Path, tuple[int, int]]] = []
        for source, prefix in sources:
            n = len(prefix)
            for key, v in source.items():
                if key in merged:
                    continue
                merged[key] = v
                out_records += [
                    (k, rel[n:], w)
                    for k, rel, w in records
                    if rel[:n] == prefix and rel[n : n + 1] == (key,)
                ]
        return where, merged, out_records

    def skip(self, event: Event) -> None:
        """Read past the value that starts with ``event`` (it was reported)."""
        if not isinstance(event, CollectionStartEvent):
            return
        level = 1
        while level:
            e = self.next()
            if isinstance(e, CollectionStartEvent):
                level += 1
                if level > MAX_DEPTH:
                    raise _Stop(_mark(e), f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(e, MappingEndEvent | SequenceEndEvent):
                level -= 1


class _Merge:
    def __repr__(self) -> str:
        return "<<"


_MERGE: Any = _Merge()


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list of other things than mappings"
    if isinstance(value, str):
        return f"the text {_short(value)}"
    return f"the value {value!r}"


def _copy(value: Any) -> Any:
    """A copy of the lists and mappings in ``value`` (scalars are shared: they do not change)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _syntax(exc: yaml.YAMLError, text: str, last: Event | None) -> Problem:
    """The YAML syntax error at the position of its cause, in words a technician reads."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return line, col, f"YAML syntax: the character {char!r} is not allowed in a YAML file"
    assert isinstance(exc, yaml.MarkedYAMLError)
    problem, context = exc.problem or str(exc), exc.context or ""
    pm, cm = exc.problem_mark, exc.context_mark
    at_end = pm is not None and (pm.index >= len(text) - 1 or "end of stream" in problem)
    # A quoted value that is never closed swallows the lines after it: the parser stumbles
    # later on; the cause is its opening quote (the last thing read, spanning lines).
    if (
        isinstance(last, ScalarEvent)
        and last.style in ("'", '"')
        and last.end_mark.line > last.start_mark.line
        and pm is not None
        and pm.line >= last.end_mark.line
    ):
        return (
            *_mark(last),
            f"YAML syntax: the quoted value that opens here runs on to line "
            f"{last.end_mark.line + 1}; is its closing quote missing? (then: {problem} at "
            f"line {pm.line + 1}, column {pm.column + 1})",
        )
    if "quoted scalar" in context and cm is not None:
        return (
            cm.line + 1,
            cm.column + 1,
            "YAML syntax: the quoted value that opens here is never closed",
        )
    if at_end and cm is not None and ("flow" in context):
        opener = "[ list" if "sequence" in context else "{ mapping"
        return (
            cm.line + 1,
            cm.column + 1,
            f"YAML syntax: the {opener} that opens here is never closed",
        )
    if "maximum nesting depth" in problem:
        problem = f"nested more than {MAX_DEPTH} levels deep; a gateway config needs 5"
    elif "tab" in problem or _char_at(text, pm) == "\t":
        problem = "a tab: YAML indents with spaces"
    elif "mapping values are not allowed" in problem:
        problem = "a ':' where no key can start (a value holding ': ' needs quotes)"
    elif (
        ("did not find expected key" in problem or "expected <block end>" in problem)
        and "block mapping" in context
        and cm is not None
    ):
        problem = (
            f"this line does not line up with the keys of the mapping at line {cm.line + 1} "
            "(check its indentation)"
        )
    where = pm or cm
    line, col = (where.line + 1, where.column + 1) if where else (1, 1)
    return line, col, f"YAML syntax: {problem}"


def _char_at(text: str, mark: Any) -> str:
    if mark is None:
        return ""
    lines = text.split("\n")
    line = lines[mark.line] if mark.line < len(lines) else ""
    return line[mark.column : mark.column + 1]


def read_yaml(text: str, *, number_keys: bool = False) -> YamlData:
    """Read one YAML document within the bounds above. ``number_keys``: a mapping key may be a
    whole number too (a profile's ``labels: {0: stopped}``); otherwise every key is a name.

    Raises :class:`YamlError` when nothing can be read (syntax, a limit, a recursive alias);
    problems that leave the rest readable are in :attr:`YamlData.problems`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise YamlError(
            [(1, 1, f"the config is {len(text):,} characters; a config may have at most "
              f"{MAX_CONFIG_BYTES:,} bytes (a cabinet's is a few KB): is this the right file?")]
        )  # fmt: skip
    reader = None
    try:
        reader = _Reader(text, number_keys)
        return reader.document()
    except _Stop as stop:  # with what was found before it
        raise YamlError([*reader.out.problems, stop.problem]) from None  # type: ignore[union-attr]
    except yaml.YAMLError as exc:
        found = reader.out.problems if reader else []
        raise YamlError([*found, _syntax(exc, text, reader.last if reader else None)]) from None
    finally:
        if reader is not None:
            reader.loader.dispose()
