"""Config fuzzing: mutations of the shipped example configs, checked as ``edge check`` does.

A technician's edit, or a hostile file, must end in exit 2 with every line ``FILE:LINE:COL:
...``, or in exit 0 -- never a traceback, never more than a few seconds or a few tens of MB.
Each example runs the real command (``edge.cli.main``) in this process, so tracemalloc sees
every allocation the check makes.
"""

from __future__ import annotations

import io
import re
import time
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.name: p.read_text() for p in sorted((ROOT / "configs").glob("*.yaml"))}

#: Bounds the issue asks for ("a few seconds or a few tens of MB"), with room for a loaded CI
#: machine: a check that takes more than this has lost its bounds, not a little speed.
MAX_SECONDS = 10.0
MAX_PEAK_MB = 40.0

ODD_VALUES = [
    "0", "-1", "70000", "1" + "0" * 30, "1" * 5000, "1e999", ".nan", ".inf", "-.inf", "'1'",
    '"1"', "true", "off", "yes", "null", "~", "[]", "{}", "[1, 2]", "{a: 1}", "''",
    "2024-01-01", "2024-13-45", "0x1F", "0o17", "0777", "1_000", "1:20", "=", "<<",
    "*undefined", '"\\0"', '"a\\nb"', "|\n  block\n  text", ">-\n  folded", "'unclosed",
    '"unclosed', "[unclosed", "{unclosed", "a: b", "- item", "&", "*", "!", "%", "@", "`",
    "mqtt://u:p@h:0", "127.0.0.1:70000", "/dev/ttyUSB0", "eastron_sdm630", "modbus_rtu",
]  # fmt: skip
TAGS = [
    "!secret", "!!python/name:os.system", "!!python/object/apply:os.system ['true']", "!!int",
    "!!float", "!!bool", "!!null", "!!str", "!!binary", "!!timestamp", "!!set", "!!omap",
    "!!map", "!!seq", "!local", "!", "!<tag:example.com,2000:x>",
]  # fmt: skip
BOMB = [
    "lol0: &l0 [x, x, x, x, x, x, x, x, x]",
    *(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)),
]

values = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)
line_no = st.integers(min_value=0, max_value=10_000)  # taken modulo the file's length

mutation = st.one_of(
    st.tuples(st.just("delete"), line_no),
    st.tuples(st.just("duplicate"), line_no),
    st.tuples(st.just("retype"), line_no, values),
    st.tuples(st.just("rename"), line_no, st.text(min_size=0, max_size=12)),
    st.tuples(st.just("indent"), line_no, st.sampled_from([-4, -2, -1, 1, 2, 3, "\t"])),
    st.tuples(st.just("alias"), line_no, line_no, st.sampled_from(["*a", "<<: *a", "*a*a"])),
    st.tuples(st.just("tag"), line_no, st.sampled_from(TAGS)),
    st.tuples(st.just("huge"), line_no, st.sampled_from([100, 4097, 70_000, 1_100_000])),
    st.tuples(st.just("insert"), line_no, st.text(max_size=20)),
    st.tuples(st.just("bomb"), line_no),
    st.tuples(st.just("nest"), line_no, st.integers(min_value=1, max_value=2000)),
)


def _split(line: str) -> tuple[str, str, str] | None:
    """A ``key: value`` line as (indent and key, ': ', value), or None."""
    m = re.match(r"^(\s*(?:- )?[^:#\s][^:#]*?)(:\s+|:$)(.*)$", line)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def mutate(text: str, ops: list[tuple]) -> str:
    lines = text.splitlines()
    for op in ops:
        if not lines:
            lines = [""]
        kind, i = op[0], op[1] % len(lines)
        line, kv = lines[i], _split(lines[i])
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, line)
        elif kind == "retype" and kv:
            lines[i] = f"{kv[0]}: {op[2]}"
        elif kind == "rename" and kv:
            indent = kv[0][: len(kv[0]) - len(kv[0].lstrip(" -"))]
            lines[i] = f"{indent}{op[2]}{kv[1]}{kv[2]}"
        elif kind == "indent":
            delta = op[2]
            if delta == "\t":
                lines[i] = "\t" + line
            elif delta > 0:
                lines[i] = " " * delta + line
            else:
                lines[i] = line[min(-delta, len(line) - len(line.lstrip(" "))) :]
        elif kind == "alias" and kv:
            j = op[2] % len(lines)
            lines[i] = f"{kv[0]}{kv[1].rstrip()} &a {kv[2]}"
            other = _split(lines[j])
            if other:
                lines[j] = (
                    f"{other[0]}:\n{' ' * (len(other[0]) - len(other[0].lstrip()) + 2)}<<: *a"
                    if op[3] == "<<: *a"
                    else f"{other[0]}: {op[3]}"
                )
        elif kind == "tag" and kv:
            lines[i] = f"{kv[0]}: {op[2]} {kv[2]}"
        elif kind == "huge" and kv:
            lines[i] = f"{kv[0]}: {'x' * op[2]}"
        elif kind == "insert":
            lines.insert(i, op[2])
        elif kind == "bomb":
            lines[i:i] = BOMB
        elif kind == "nest" and kv:
            lines[i] = f"{kv[0]}: {'[' * op[2]}{']' * op[2]}"
    return "\n".join(lines) + "\n"


def run_check(path: Path) -> tuple[int, str, str, float, float]:
    """``edge check --config-only PATH`` in this process: exit status, stdout, stderr, seconds
    and the peak of memory allocated meanwhile (MB)."""
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    start = time.monotonic()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["check", "--config-only", str(path)])
        seconds = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    return rc, out.getvalue(), err.getvalue(), seconds, peak


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    example=st.sampled_from(sorted(EXAMPLES)),
    ops=st.lists(mutation, min_size=1, max_size=4),
)
def test_check__mutated_example_configs_exit_0_or_2_at_file_line_col_within_bounds(
    tmp_path, example, ops
):
    path = tmp_path / "mutated.yaml"
    path.write_text(mutate(EXAMPLES[example], ops), encoding="utf-8")
    rc, out, err, seconds, peak = run_check(path)
    assert "Traceback" not in err + out
    assert rc in (0, 2), (rc, err)
    if rc == 0:
        assert out.startswith(f"{path}: valid."), out
    else:
        assert out == ""
        lines = err.splitlines()
        assert lines, "exit 2 says why"
        located = re.compile(rf"^{re.escape(str(path))}:\d+:\d+: \S")
        assert all(located.match(line) for line in lines), err
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s"
    assert peak < MAX_PEAK_MB, f"{peak:.1f} MB"
