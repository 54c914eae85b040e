"""The shape of edge/: imports flow one way, down the wings, and never in a circle.

Every import of every module is read with ``ast``, those inside functions and under
``TYPE_CHECKING`` too (a deferred import is still a dependency). The table below is the
architecture; a module that needs a wing it may not import belongs somewhere else, or needs a
small interface (a ``typing.Protocol``) beside it, as the command handler and the status page have.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "edge"

#: Which wings each wing may import, besides itself (and the standard library, third-party
#: packages and protocols/). Low to high: shared < store < config < fieldbus, uplink < ops <
#: agent < top; platform (the integrator's side of the broker) stands on shared alone.
BELOW = {
    "shared": set(),
    "store": {"shared"},
    "config": {"shared", "store"},
    "fieldbus": {"shared", "store", "config"},
    "uplink": {"shared", "store", "config"},
    "ops": {"shared", "store", "config", "fieldbus", "uplink"},
    "agent": {"shared", "store", "config", "fieldbus", "uplink", "ops"},
    "platform": {"shared"},
    "top": {"shared", "store", "config", "fieldbus", "uplink", "ops", "agent", "platform"},
}
SUBPACKAGES = ("shared", "store", "fieldbus", "uplink", "ops", "agent", "platform")
#: The modules at the top of edge/ and their wing; a new one must be given a place here.
TOP_MODULES = {
    "edge": "shared",  # the package: its version
    "edge.plan": "shared",  # read plans: pure, imports nothing of edge
    "edge.config": "config",
    "edge.settings": "config",  # the config's plain records, what the running gateway reads
    "edge.config_yaml": "config",  # the config's YAML reader, with its bounds
    "edge.config_schema": "config",  # a schema's errors in our words, at FILE:LINE:COL
    "edge.profiles": "config",  # device profile files (YAML): shipped, user, per device
    "edge.cli": "top",
    "edge.demo": "top",
    "edge.__main__": "top",
    "edge.consumer": "top",  # old path, re-exports edge.platform.consumer until 0.2
    "edge.ledger": "top",  # old path, re-exports edge.platform.ledger until 0.2
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(top: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(top.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from edge.shared import faults`` imports the module edge.shared.faults.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import edge.x.y`` of a name inside
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


EDGE_MODULES = modules(EDGE)
GRAPH = {n: imports(n, p, set(EDGE_MODULES)) for n, p in EDGE_MODULES.items()}


def wing(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    if name not in TOP_MODULES:
        pytest.fail(f"{name} has no wing: put it in a subpackage, or in TOP_MODULES")
    return TOP_MODULES[name]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_edge_imports__all_modules_no_circle():
    assert circles(GRAPH) == []


def test_edge_imports__each_wing_only_itself_and_the_wings_below():
    wrong = [
        f"{a} ({wing(a)}) imports {b} ({wing(b)})"
        for a, targets in sorted(GRAPH.items())
        for b in sorted(targets)
        if wing(b) != wing(a) and wing(b) not in BELOW[wing(a)]
    ]
    assert wrong == []


def test_wing_table__lower_wings_never_reach_up():
    """The table itself flows one way: no wing may import one that may import it back."""
    for a, below in BELOW.items():
        for b in below:
            assert a not in BELOW[b], f"{a} and {b} may import each other"


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_wing_package__opens_with_docstring_exposes_all_imports_nothing(sub: str):
    path = EDGE / sub / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree)
    assert doc and "May import" in doc, f"{path}: say what it owns and what it may import"
    (exposed,) = [
        n.value for n in tree.body
        if isinstance(n, ast.Assign) and [t.id for t in n.targets] == ["__all__"]
    ]  # fmt: skip
    names = sorted(ast.literal_eval(exposed))
    assert names == sorted(p.stem for p in (EDGE / sub).glob("*.py") if p.stem != "__init__")
    # Importing a wing loads nothing: its modules are imported only where they are used.
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_protocols_imports__wire_formats_nothing_of_edge():
    known = set(EDGE_MODULES) | set(modules(ROOT / "protocols"))
    wrong = {
        name: sorted(t for t in imports(name, path, known) if t.split(".")[0] == "edge")
        for name, path in modules(ROOT / "protocols").items()
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_old_paths__consumer_and_ledger_reexport_the_platform():
    """Integrators' imports of edge.consumer / edge.ledger keep working until 0.2."""
    import edge.consumer
    import edge.ledger
    import edge.platform.consumer
    import edge.platform.ledger

    for old, new in ((edge.consumer, edge.platform.consumer), (edge.ledger, edge.platform.ledger)):
        assert old.__all__ == new.__all__
        assert all(getattr(old, n) is getattr(new, n) for n in new.__all__)


def test_footprint__a_modbus_tcp_gateway_loads_neither_cryptography_nor_the_serial_driver(
    tmp_path,
):
    """cryptography brings its own OpenSSL (about 6.5 MB of RSS) and pyserial-asyncio-fast some
    1.4 MB: only parking meters need the one and serial lines the other (issue 16), so a cabinet
    of Modbus TCP devices builds its gateway without importing either."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge.config import load_config\n"
        "from edge.agent.gateway import Gateway\n"
        "loaded = load_config(Path(sys.argv[1]))\n"
        "Gateway(loaded)\n"
        "loaded = [m for m in ('cryptography', 'serial_asyncio_fast') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    cfg = tmp_path / "cabinet.yaml"
    cfg.write_text(
        f"gateway: {{id: gw, site: s}}\nbuffer: {{path: {tmp_path / 'b.sqlite'}}}\n"
        "devices:\n  - {id: m, profile: eastron_sdm630, "
        "transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
