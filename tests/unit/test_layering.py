"""The packages import each other in one direction only (read from the source, not from sys.modules).

    contracts  <-  models  <-  robots  <-  edge_node  <-  training
        ^            ^                        ^
        +------------+---- control_plane      +---- bench, lineside (the CLI and the demo: the top)

``contracts`` imports none of the others; ``control_plane`` and ``edge_node`` never import each
other (they talk over HTTP and MQTT, in the shapes ``contracts`` defines); ``robots`` runs on a
robot's small computer, so it imports neither the server side nor Ray or ONNX Runtime.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "contracts",
    "models",
    "robots",
    "edge_node",
    "training",
    "control_plane",
    "bench",
    "bridges",
    "lineside",
    "docs",
)
HEAVY = ("ray", "onnxruntime", "fastapi", "sqlmodel", "sqlalchemy", "torch")


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level modules each file of ``package`` imports: {file: {module, ...}}."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def _graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> files that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for package in PACKAGES:
        for file, names in _imports(package).items():
            for name in names & set(PACKAGES) - {package}:
                graph[package][name].append(file)
    return graph


def test_contracts_import_no_other_package() -> None:
    assert dict(_graph()["contracts"]) == {}


def test_control_plane_and_edge_node_do_not_import_each_other() -> None:
    graph = _graph()
    assert graph["control_plane"].get("edge_node") is None, graph["control_plane"]["edge_node"]
    assert graph["edge_node"].get("control_plane") is None, graph["edge_node"]["control_plane"]


def test_robot_code_needs_no_server_side() -> None:
    graph = _graph()
    assert set(graph["robots"]) <= {"contracts", "models"}, dict(graph["robots"])
    heavy = {f: n & set(HEAVY) for f, n in _imports("robots").items() if n & set(HEAVY)}
    assert not heavy, heavy


def test_a_bridge_needs_only_the_wire() -> None:
    """``lineside bridge opcua`` runs beside a PLC on a small plant computer: the wire contract, paho and
    asyncua, no Ray, ONNX Runtime, database or web framework."""
    graph = _graph()
    assert set(graph["bridges"]) <= {"contracts"}, dict(graph["bridges"])
    heavy = {f: n & set(HEAVY) for f, n in _imports("bridges").items() if n & set(HEAVY)}
    assert not heavy, heavy


def test_no_cycle_between_packages() -> None:
    graph = _graph()

    def visit(package: str, path: tuple[str, ...]) -> None:
        for imported in graph[package]:
            if imported in path:
                cycle = " -> ".join((*path[path.index(imported) :], imported))
                pytest.fail(f"import cycle {cycle} (first file: {graph[package][imported][0]})")
            visit(imported, (*path, imported))

    for package in PACKAGES:
        visit(package, (package,))


def test_an_ingress_replica_loads_no_onnx_runtime() -> None:
    """Ingress replicas import ``edge_node.serving`` (their class lives there) but never run a model: ONNX
    Runtime would add about 20 MB to each (issue 16, memory). Only the model replica imports it, when it starts."""
    probe = "import sys, edge_node.serving; print(sorted(m for m in sys.modules if m.startswith('onnxruntime')))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
