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
