"""Trace file formats: detection from the first line, and one reader per format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from streamserve.workload.errors import Warn, WorkloadError
from streamserve.workload.formats.readers import (
    AZURE_COLUMNS, BURSTGPT_COLUMNS, MOONCAKE_KEYS, read_azure, read_burstgpt, read_generic, read_mooncake,
)
from streamserve.workload.formats.sharegpt import read_sharegpt
from streamserve.workload.formats.table import bounded_lines, check_readable, csv_header, find_column
from streamserve.workload.formats.trace import Trace
from streamserve.workload.spec import ColumnMap, WorkloadConfig

Reader = Callable[[Path, WorkloadConfig, bool, Warn], Trace]

READERS: dict[str, Reader] = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "mooncake": read_mooncake,
    "sharegpt": read_sharegpt,
    "csv": lambda path, cfg, strict, warn: read_generic(path, cfg, strict, warn, jsonl=False),
    "jsonl": lambda path, cfg, strict, warn: read_generic(path, cfg, strict, warn, jsonl=True),
}
SPEC_SUFFIXES = (".yaml", ".yml", ".toml")


def _first_line(path: Path) -> tuple[str, int]:
    check_readable(path)
    with path.open("rb") as f:
        for lineno, raw in bounded_lines(f, path):
            text = raw.decode("utf-8-sig", errors="replace").strip()
            if text:
                return text, lineno
    raise WorkloadError(f"{path}: empty file")


def detect(path: Path, cfg: WorkloadConfig) -> str:
    """The format of ``path`` from its first non-blank line (``cfg.columns`` makes CSV/JSONL generic)."""
    first, line = _first_line(path)
    if first.startswith("["):
        return "sharegpt"
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            if path.suffix == ".json":
                return "sharegpt"  # a pretty-printed JSON document, not JSON lines
            raise WorkloadError(f"{path}:{line}: invalid JSON on the first line (truncated line?)") from None
        if not isinstance(obj, dict):
            raise WorkloadError(f"{path}:{line}: expected a JSON object per line")
        if cfg.columns is not None:
            return "jsonl"
        if all(k in obj for k in MOONCAKE_KEYS):
            return "mooncake"
        if "prompt_len" in obj and "output_len" in obj:
            return "jsonl"
        keys = ", ".join(list(obj)[:8])
        raise WorkloadError(f"{path}:{line}: unknown JSONL format (keys: {keys}); expected Mooncake keys "
                            f"({', '.join(MOONCAKE_KEYS)}) or a workload.columns mapping in the config")
    header, line = csv_header(path)
    if cfg.columns is not None:
        return "csv"
    if all(find_column(header, c) is not None for c in AZURE_COLUMNS):
        return "azure"
    if all(find_column(header, c) is not None for c in BURSTGPT_COLUMNS):
        return "burstgpt"
    if find_column(header, "prompt_len") is not None and find_column(header, "output_len") is not None:
        return "csv"
    shown = ",".join(header)[:120]
    raise WorkloadError(
        f"{path}:{line}: unknown trace format (header: {shown}); expected Azure "
        f"({','.join(AZURE_COLUMNS)}), BurstGPT ({','.join(BURSTGPT_COLUMNS)}), prompt_len/output_len "
        "columns, or name --format with a workload.columns mapping in the config")


def read_trace(path: Path, fmt: str, cfg: WorkloadConfig, strict: bool, warn: Warn) -> Trace:
    """Read ``path`` as ``fmt`` ("auto": detect it)."""
    if fmt == "auto":
        fmt = detect(path, cfg)
    if fmt not in READERS:
        raise WorkloadError(f"--format: {fmt!r} is not a trace file format (choose from {', '.join(READERS)})")
    if fmt in ("csv", "jsonl") and cfg.columns is None:
        cfg = cfg.model_copy(update={"columns": _default_columns(path, fmt == "jsonl")})
    return READERS[fmt](path, cfg, strict, warn)


def _default_columns(path: Path, jsonl: bool) -> ColumnMap:
    """Our own layout: ``prompt_len``, ``output_len``, and ``arrival``/``dataset`` when present."""
    if jsonl:
        first, _ = _first_line(path)
        try:
            names = [str(k) for k in json.loads(first)]
        except (json.JSONDecodeError, TypeError):
            names = []
    else:
        names, _ = csv_header(path)
    return ColumnMap(
        arrival="arrival" if find_column(names, "arrival") is not None else None,
        dataset="dataset" if find_column(names, "dataset") is not None else None,
    )


__all__ = ["READERS", "Trace", "detect", "read_trace", "SPEC_SUFFIXES"]
