"""The batch decoders under test, behind one interface, and the golden JSON form they answer in.

A *decoder* here is a function from a list of payloads (MQTT messages on ``.../data``) to one
document per payload in the golden JSON form of docs/batch-format-v1.md §7:

    {"header": {...}, "points": [[sid, ts_ms, type, value, tq], ...]}   a batch
    {"error": code, "gw": str | None, "seq": int | None}                 a malformed batch

Every decoder of the contract is listed in :data:`DECODERS`; the golden-vector test, the
property test and the capture test from a real gateway run each decoder in it and compare
reading by reading (series, time, value bit for bit, time quality). A decoder in another
language joins by adding a function that runs it on the payloads (one process for the list).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocols.batch import BatchDecodeError, WirePoint, decode_batch_wire

__all__ = [
    "DECODERS",
    "JS_DIR",
    "disagreements",
    "ensure_js_decoder",
    "expected_point",
    "js_decoder",
    "point_json",
    "python_decoder",
    "readings",
    "wire_type",
]

Decoder = Callable[[list[bytes]], list[dict[str, Any]]]


def point_json(p: WirePoint) -> list[Any]:
    """A point in the golden form: [sid, ts_ms, type, value, tq], 64-bit integers as decimal
    strings, a float as its IEEE word in hex (8 digits for f32, 16 for f64)."""
    if p.type == "f32":
        value: Any = f"{p.value:08x}"
    elif p.type == "f64":
        value = f"{p.value:016x}"
    elif p.type in ("i64", "u64"):
        value = str(p.value)
    else:
        value = p.value
    return [str(p.sid), str(p.ts_ms), p.type, value, p.tq]


def python_decoder(payloads: list[bytes]) -> list[dict[str, Any]]:
    """protocols/batch.py, the reference decoder."""
    out = []
    for payload in payloads:
        try:
            batch = decode_batch_wire(payload)
        except BatchDecodeError as exc:
            out.append({"error": exc.code, "gw": exc.gateway, "seq": exc.seq})
            continue
        h = batch.header
        out.append(
            {
                "header": {
                    "v": h.version,
                    "gw": h.gateway,
                    "seq": h.seq,
                    "boot": h.boot,
                    "created": h.created_ms,
                    "dropped": h.dropped,
                    "n": h.points,
                    "part": list(h.part),
                    "dropped_why": dict(h.dropped_why),
                },
                "points": [point_json(p) for p in batch.points],
            }
        )
    return out


#: protocols/js: the second decoder, written in JavaScript from the spec alone.
JS_DIR = Path(__file__).resolve().parent.parent / "protocols" / "js"
_JS_INSTALL = (
    "install Node.js 18 or newer and npm (Debian: apt-get install nodejs npm), then run "
    "`npm ci` in protocols/js (CI does both; pytest runs `npm ci` itself when npm is there)"
)


def _node() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def ensure_js_decoder() -> None:
    """Runs `npm ci` in protocols/js when its node_modules is missing and npm is on PATH, so a
    new clone's pytest runs the JavaScript decoder too. Quiet when npm is missing or fails:
    :func:`js_decoder` then fails the tests that need it, saying how to install."""
    npm = shutil.which("npm")
    if (JS_DIR / "node_modules").is_dir() or npm is None or _node() is None:
        return
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=JS_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )


def js_decoder(payloads: list[bytes]) -> list[dict[str, Any]]:
    """protocols/js (Node.js), one `node protocols/js/cli.mjs -` for the list: payloads on its
    stdin, each after its length (4 bytes, big-endian); one golden JSON line back per payload.

    Raises RuntimeError, saying how to install, when node or protocols/js/node_modules is
    missing (a test fails then, it is never skipped), or when the CLI itself fails."""
    node = _node()
    if node is None:
        raise RuntimeError(
            f"the JavaScript decoder needs Node.js, which is not on PATH: {_JS_INSTALL}"
        )
    if not (JS_DIR / "node_modules" / "zstddec").is_dir():
        raise RuntimeError(
            f"the JavaScript decoder's npm packages are not in {JS_DIR / 'node_modules'}: "
            + _JS_INSTALL
        )
    stdin = b"".join(len(p).to_bytes(4, "big") + p for p in payloads)
    run = subprocess.run(
        [node, str(JS_DIR / "cli.mjs"), "-"], input=stdin, capture_output=True, timeout=600
    )
    if run.returncode != 0:
        raise RuntimeError(
            f"node protocols/js/cli.mjs exited {run.returncode}: {run.stderr.decode()[-2000:]}"
        )
    # One JSON text a line; JSON escapes every newline in a string, but not U+2028, so split
    # on "\n" alone (str.splitlines would cut such a string).
    lines = run.stdout.decode().split("\n")
    if lines[-1:] == [""]:
        lines.pop()
    if len(lines) != len(payloads):
        raise RuntimeError(
            f"node protocols/js/cli.mjs gave {len(lines)} lines for {len(payloads)} payloads"
        )
    return [json.loads(line) for line in lines]


#: Every decoder the contract's tests run.
DECODERS: dict[str, Decoder] = {"python": python_decoder, "javascript": js_decoder}


def readings(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A decoded batch as (gw, seq, part, sid, ts_ms, type, value, tq) per reading, in order."""
    h = doc["header"]
    return [(h["gw"], h["seq"], tuple(h["part"]), *p) for p in doc["points"]]


_F32 = struct.Struct("<f")


def wire_type(value: object) -> tuple[str, Any]:
    """The column a value travels in and its golden form, by the spec's rules (§2.7, §2.9)
    rather than by protocols/batch.py: a float goes as f32 when its 64 bits survive a round
    trip through float32, else as f64."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return ("i64" if value < 2**63 else "u64"), str(value)
    if isinstance(value, float):
        bits64 = struct.pack("<d", value)
        try:
            narrow = _F32.pack(value)
        except OverflowError:
            narrow = None
        if narrow is not None and struct.pack("<d", _F32.unpack(narrow)[0]) == bits64:
            return "f32", narrow[::-1].hex()
        return "f64", bits64[::-1].hex()
    if isinstance(value, str):
        return "str", value
    raise TypeError(f"no column for {type(value).__name__}")


def expected_point(sid: int, ts_ms: int, value: object, tq: int = 0) -> list[Any]:
    """What a decoder must give for a point the gateway sealed, in the golden form."""
    kind, v = wire_type(value)
    return [str(sid), str(ts_ms), kind, v, tq]


def disagreements(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """How a decoder's document differs from a golden .json, in words ([] when it agrees).

    A valid vector's header and points must be equal, points in order; the largest vectors list
    ``point_count`` and some ``points_at`` [index, point] instead of every point. A malformed
    vector's ``error``, ``gw`` and ``seq`` must be equal."""
    if "error" in expected:
        want = {k: expected[k] for k in ("error", "gw", "seq")}
        have = {k: got.get(k) for k in ("error", "gw", "seq")}
        return [] if want == have else [f"expected {want}, got {have}"]
    if "error" in got:
        return [f"expected a batch, got error {got['error']} (gw {got['gw']}, seq {got['seq']})"]
    out = []
    if got["header"] != expected["header"]:
        out.append(f"header {got['header']} is not {expected['header']}")
    points = got["points"]
    if "points" in expected:
        want_points = expected["points"]
        if len(points) != len(want_points):
            out.append(f"{len(points)} points, expected {len(want_points)}")
        pairs = enumerate(zip(points, want_points, strict=False))
        bad = [(i, g, w) for i, (g, w) in pairs if g != w]
        out += [f"point {i}: {g} is not {w}" for i, g, w in bad[:5]]
    else:
        if len(points) != expected["point_count"]:
            out.append(f"{len(points)} points, expected {expected['point_count']}")
        for i, w in expected["points_at"]:
            if i >= len(points) or points[i] != w:
                out.append(f"point {i}: {points[i] if i < len(points) else None} is not {w}")
    return out
