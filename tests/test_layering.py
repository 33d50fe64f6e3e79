"""The policies are pure decision code: nothing in streamserve/policies may import a
runtime, a clock, or an I/O library (DESIGN.md, "Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

POLICIES = Path(__file__).resolve().parents[1] / "streamserve" / "policies"
FORBIDDEN = ("streamserve.sim", "streamserve.gpu", "simpy", "asyncio", "time", "httpx", "fastapi", "vllm",
             "socket", "requests", "threading", "subprocess")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against streamserve.policies
                base = "streamserve.policies" if node.level == 1 else "streamserve"
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            names.append("<dynamic __import__>")
    return names


def forbidden(name: str) -> bool:
    return name.startswith("<dynamic") or any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.py")), ids=lambda p: p.name)
def test_policy_module_imports_no_runtime_clock_or_io(path: Path) -> None:
    bad = [name for name in imported_modules(path) if forbidden(name)]
    assert not bad, f"{path.name} imports {bad}"


def test_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    p = tmp_path / "bad.py"
    p.write_text("import time\nfrom streamserve.sim.cluster import Cluster\nfrom simpy import Environment\n"
                 "import os.path\n")
    assert [n for n in imported_modules(p) if forbidden(n)] == ["time", "streamserve.sim.cluster", "simpy"]


def test_there_are_policy_modules_to_check() -> None:
    names = {p.name for p in POLICIES.glob("*.py")}
    assert {"flowguard.py", "specustream.py", "scheduler.py", "routers.py", "speculation.py"} <= names


# ---------------------------------------------------------------- runtimes
PACKAGE = POLICIES.parent


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(folder: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``folder`` it imports (at any level of its code, also
    under ``TYPE_CHECKING``: a circle there is still two owners of one idea)."""
    modules = {module_name(p, folder.parent): p for p in sorted(folder.glob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in imported_modules(path):
            # the most specific module it names (``streamserve.sim.lane``, not the package)
            hits = [other for other in modules if imported == other or imported.startswith(other + ".")]
            target = max(hits, key=len, default=None)
            if target is not None and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the list of its modules (depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def runtime_crossings(package: Path) -> list[str]:
    """Imports from sim/ into gpu/ and back: the two runtimes share only core and policies."""
    bad = []
    for runtime, other in (("sim", "gpu"), ("gpu", "sim")):
        for path in sorted((package / runtime).glob("*.py")):
            hits = [n for n in imported_modules(path)
                    if n == f"streamserve.{other}" or n.startswith(f"streamserve.{other}.")]
            bad += [f"{runtime}/{path.name} imports {n}" for n in hits]
    return bad


def test_sim_and_gpu_never_import_each_other() -> None:
    assert runtime_crossings(PACKAGE) == []


def test_sim_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE / "sim")
    assert len(graph) >= 5, graph  # lane, cluster, kv, handoff, record at least
    assert cycles(graph) == []


def test_the_circle_check_finds_a_circle(tmp_path: Path) -> None:
    pkg = tmp_path / "streamserve" / "sim"
    pkg.mkdir(parents=True)
    (pkg / "lane.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from streamserve.sim.cluster import Cluster\n")
    (pkg / "cluster.py").write_text("from streamserve.sim.lane import SimLane\nimport streamserve.gpu.lanes\n")
    (pkg / "kv.py").write_text("import math\n")
    assert cycles(import_graph(pkg)) == [["streamserve.sim.cluster", "streamserve.sim.lane", "streamserve.sim.cluster"]]
    (tmp_path / "streamserve" / "gpu").mkdir()
    assert runtime_crossings(tmp_path / "streamserve") == ["sim/cluster.py imports streamserve.gpu.lanes"]
