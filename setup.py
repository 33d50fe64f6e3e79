"""Build streamserve, compiling the simulator's hot path with mypyc.

The request records, the performance model, the policies and the SimPy lanes run once
per request or per engine step, which makes their interpreter overhead the simulator's
speed limit: compiled, the same code runs with far less of it. Compilation is optional. Without a C compiler, when
mypyc cannot build them, or with STREAMSERVE_PURE=1 (handy while editing a policy), the
modules install as plain Python, with identical results.
"""
from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "streamserve/request.py",
    "streamserve/perfmodel.py",
    "streamserve/lanes.py",
    "streamserve/metrics.py",
    "streamserve/policies/base.py",
    "streamserve/policies/routers.py",
    "streamserve/policies/speculation.py",
    "streamserve/policies/flowguard.py",
    "streamserve/policies/specustream.py",
    "streamserve/policies/queues.py",
    "streamserve/policies/scheduler.py",
    "streamserve/sim/kv.py",
    "streamserve/sim/record.py",
    "streamserve/sim/lane.py",
    "streamserve/sim/handoff.py",
    "streamserve/sim/cluster.py",
]


def _warn(why: str) -> None:
    print(f"streamserve: installing as plain Python ({why}); the simulator runs slower", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python modules in place instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler failure means: stay pure
            _warn(f"compiling failed: {e}")


def _extensions() -> list:
    if os.environ.get("STREAMSERVE_PURE"):
        _warn("STREAMSERVE_PURE is set")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        return []
    try:
        return mypycify(["--ignore-missing-imports", "--follow-imports=silent",
                         *COMPILED], opt_level="3")
    except (SystemExit, Exception) as e:  # mypyc exits on a type error
        _warn(f"mypyc refused: {e}")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
