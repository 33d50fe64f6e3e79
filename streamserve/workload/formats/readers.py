"""Readers for the public trace formats and for generic CSV/JSONL with a column map.

Each reader names the file's own column headers in its messages, so a user sees the
name they would search for in their file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streamserve.workload.errors import Warn, WorkloadError, fail
from streamserve.workload.formats.table import Kind, read_csv, read_jsonl
from streamserve.workload.formats.trace import Trace, lengths, sort_by_time, timestamps
from streamserve.workload.spec import TIME_UNITS, ColumnMap, WorkloadConfig

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def read_azure(path: Path, cfg: WorkloadConfig, strict: bool, warn: Warn) -> Trace:
    """Azure LLM inference traces, 2023 (Splitwise) and 2024 (DynamoLLM).

    ``TIMESTAMP`` is a wall-clock datetime (2023: naive, 7 fractional digits; 2024: with
    a ``+00:00`` offset); arrivals are seconds after the first request.
    """
    t_col, p_col, o_col = AZURE_COLUMNS
    table = read_csv(path, {"t": (t_col, "time"), "p": (p_col, "float"), "o": (o_col, "float")})
    trace = Trace(source=str(path), prompt_len=lengths(table, "p", p_col),
                  output_len=lengths(table, "o", o_col), timestamps=timestamps(table, "t", t_col))
    return sort_by_time(trace, table, t_col, strict, warn)


def read_burstgpt(path: Path, cfg: WorkloadConfig, strict: bool, warn: Warn) -> Trace:
    """BurstGPT (Wang et al., 2024): ``Timestamp`` in seconds, per-model rows.

    Rows with ``Response tokens`` = 0 are requests that failed in the original service;
    they are dropped with a warning (counted), since they produced no output to simulate.
    """
    t_col, m_col, p_col, o_col = BURSTGPT_COLUMNS
    cols: dict[str, tuple[str, Kind]] = {"t": (t_col, "time"), "m": (m_col, "text"),
                                         "p": (p_col, "float"), "o": (o_col, "float")}
    if cfg.log_type is not None:
        cols["l"] = ("Log Type", "text")
    table = read_csv(path, cols)
    p = lengths(table, "p", p_col)
    o = lengths(table, "o", o_col, minimum=0)
    t = timestamps(table, "t", t_col)
    keep = o >= 1
    if cfg.model is not None:
        models = np.char.lower(np.char.strip(table.columns["m"]))  # type: ignore[arg-type]
        keep &= models == cfg.model.strip().lower().encode()
        if not keep.any():
            found = sorted({bytes(x).decode(errors="replace").strip()
                            for x in np.unique(table.columns["m"])})[:10]  # type: ignore[arg-type]
            raise fail(path, None, m_col, f"no rows for model {cfg.model!r} (models in the file: {', '.join(found)})")
    if cfg.log_type is not None:
        logs = np.char.lower(np.char.strip(table.columns["l"]))  # type: ignore[arg-type]
        keep &= logs == cfg.log_type.strip().lower().encode()
    failed = int(np.count_nonzero(o == 0))
    if failed:
        warn(f"{path}: {o_col}: {failed} row(s) with 0 tokens (failed in the original service) skipped")
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise fail(path, None, None, "no rows left after the model/log-type filters and failed rows")
    trace = Trace(source=str(path), prompt_len=p[rows], output_len=o[rows], timestamps=t[rows])
    return sort_by_time(trace, table, t_col, strict, warn, rows=rows)


def read_mooncake(path: Path, cfg: WorkloadConfig, strict: bool, warn: Warn) -> Trace:
    """Mooncake (FAST'25) JSONL: ``timestamp`` in ms, lengths, and ``hash_ids``.

    ``hash_ids`` are the ids of the prompt's 512-token blocks; equal ids mean a shared
    prefix, so they are kept on each request for prefix-caching studies.
    """
    t_key, p_key, o_key = MOONCAKE_KEYS
    table = read_jsonl(path, {"t": (t_key, "time"), "p": (p_key, "float"), "o": (o_key, "float"),
                              "h": ("hash_ids", "ints")}, optional=("h",))
    trace = Trace(source=str(path), prompt_len=lengths(table, "p", p_key),
                  output_len=lengths(table, "o", o_key),
                  timestamps=timestamps(table, "t", t_key, scale=1e-3),
                  hash_ids=table.columns.get("h"))  # type: ignore[arg-type]
    return sort_by_time(trace, table, t_key, strict, warn)


def read_generic(path: Path, cfg: WorkloadConfig, strict: bool, warn: Warn, jsonl: bool) -> Trace:
    """Any CSV (with a header) or JSONL file, through ``workload.columns``."""
    cmap = cfg.columns or ColumnMap()
    cols: dict[str, tuple[str, Kind]] = {"p": (cmap.prompt_len, "float"), "o": (cmap.output_len, "float")}
    if cmap.arrival:
        cols["t"] = (cmap.arrival, "time")
    if cmap.dataset:
        cols["d"] = (cmap.dataset, "text")
    if cmap.prompt:
        cols["x"] = (cmap.prompt, "text")
    if cmap.hash_ids:
        if not jsonl:
            raise WorkloadError(f"workload.columns.hash_ids: lists of hash ids need a JSONL file, {path} is CSV")
        cols["h"] = (cmap.hash_ids, "ints")
    table = read_jsonl(path, cols) if jsonl else read_csv(path, cols)
    trace = Trace(source=str(path), prompt_len=lengths(table, "p", cmap.prompt_len),
                  output_len=lengths(table, "o", cmap.output_len))
    if cmap.arrival:
        unit = 1.0 if table.time_is_datetime.get("t") else TIME_UNITS[cfg.time_unit]
        trace.timestamps = timestamps(table, "t", cmap.arrival, scale=unit)
    if cmap.dataset:
        tags = [x.decode(errors="replace").strip() if isinstance(x, bytes) else str(x).strip()
                for x in table.columns["d"]]  # type: ignore[union-attr]
        names, codes = np.unique(np.asarray(tags, dtype=object).astype(str), return_inverse=True)
        trace.datasets = tuple(str(n) for n in names)
        trace.dataset = codes.astype(np.int16)
    if cmap.prompt:
        trace.prompts = [x.decode(errors="replace") if isinstance(x, bytes) else str(x)
                         for x in table.columns["x"]]  # type: ignore[union-attr]
    if cmap.hash_ids:
        trace.hash_ids = table.columns["h"]  # type: ignore[assignment]
    return sort_by_time(trace, table, cmap.arrival or "", strict, warn)
