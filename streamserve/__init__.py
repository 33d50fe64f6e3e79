"""streamserve: disaggregated, speculation-aware LLM serving policies, simulated and live.

setup.py compiles the simulator's hot path with mypyc; an editable install puts the
compiled modules next to their sources. Python imports a compiled module before its
source, so an edit made since the last build (or a checkout that changed a file) would
silently not run. Instead, when in a source checkout any compiled module is older than
its source, or when STREAMSERVE_PURE is set, every compiled module is imported from
source: all or none, because compiled modules call each other directly.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Sequence

_ROOT = Path(__file__).parent


def _compiled_sources() -> dict[str, tuple[Path, Path]]:
    """Module name -> (its .py, its compiled extension) for each compiled module here."""
    found: dict[str, tuple[Path, Path]] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for ext in _ROOT.rglob(f"*{suffix}"):
            source = ext.with_name(ext.name[: -len(suffix)] + ".py")
            if source.exists():
                parts = source.relative_to(_ROOT).with_suffix("").parts
                found[".".join((__name__, *parts))] = (source, ext)
    return found


class _SourceFirst:
    """A meta-path finder that loads the named modules from their .py files."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


def _choose() -> bool:
    compiled = _compiled_sources()
    if not compiled:
        return False
    # Only a source checkout is edited; an installed wheel's files get arbitrary mtimes.
    checkout = not {"site-packages", "dist-packages"} & set(_ROOT.parts)
    stale = sorted(name for name, (py, ext) in compiled.items()
                   if checkout and py.stat().st_mtime > ext.stat().st_mtime)
    if stale or os.environ.get("STREAMSERVE_PURE"):
        if stale:
            warnings.warn(f"streamserve: {', '.join(stale)} changed since it was compiled; running all compiled "
                          "modules from source (slower). `pip install -e .` compiles them again.",
                          RuntimeWarning, stacklevel=2)
        sys.meta_path.insert(0, _SourceFirst({name: py for name, (py, _) in compiled.items()}))
        return False
    return True


COMPILED: bool = _choose()
"""Whether the simulator's hot path runs compiled (see setup.py)."""
