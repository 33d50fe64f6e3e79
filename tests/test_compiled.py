"""The mypyc-compiled hot path (setup.py) is the same simulator as its Python source:
identical output for the same seed, and never a stale build running edited code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamserve

ROOT = Path(streamserve.__file__).parent
BUILT = [p for p in ROOT.rglob("*.so") if p.with_name(p.name.split(".")[0] + ".py").exists()]


def simulate(out: Path, pure: bool, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STREAMSERVE_PURE"}
    if pure:
        env["STREAMSERVE_PURE"] = "1"
    code = ("import sys, streamserve; from streamserve.cli import main; "
            f"assert streamserve.COMPILED is {not pure}, streamserve.COMPILED; main(sys.argv[1:])")
    subprocess.run([sys.executable, "-c", code, "simulate", "--quiet", "--out", str(out), *args],
                   env=env, check=True, capture_output=True, text=True)


@pytest.mark.skipif(not BUILT, reason="streamserve is installed as plain Python here (no C compiler at install)")
@pytest.mark.parametrize("args", [
    ("--arch", "streamserve", "--num-requests", "400", "--seed", "3"),
    ("--arch", "vllm-dp", "--num-requests", "300", "--seed", "1"),
    ("--arch", "streamserve", "--num-requests", "300", "--workload", "mix", "--rate", "6"),
])
def test_compiled_and_pure_python_simulate_identically(tmp_path: Path, args: tuple[str, ...]) -> None:
    simulate(tmp_path / "compiled", False, *args)
    simulate(tmp_path / "pure", True, *args)
    for name in ("summary.json", "requests.csv"):
        assert (tmp_path / "compiled" / name).read_bytes() == (tmp_path / "pure" / name).read_bytes(), name


@pytest.mark.skipif(not BUILT, reason="streamserve is installed as plain Python here (no C compiler at install)")
def test_an_edited_source_is_run_instead_of_its_stale_build(tmp_path: Path) -> None:
    source = ROOT / "policies" / "routers.py"
    if "site-packages" in source.parts:
        pytest.skip("an installed wheel is not edited in place")
    stat = source.stat()
    try:
        os.utime(source, (stat.st_atime, max(p.stat().st_mtime for p in BUILT) + 10))
        run = subprocess.run([sys.executable, "-c", "import streamserve, streamserve.policies.routers as r; "
                              "print(streamserve.COMPILED, r.__file__)"],
                             capture_output=True, text=True, check=True)
    finally:
        os.utime(source, (stat.st_atime, stat.st_mtime))
    assert run.stdout.split() == ["False", str(source)]
    assert "streamserve.policies.routers changed since it was compiled" in run.stderr
