"""What every trace reader returns, and the checks every trace must pass.

The checks run on whole arrays (NaN, negative, fractional, zero) and only then look up
the first offending row, so a clean five-million-row file costs a few vector passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamserve.workload.errors import Warn, WorkloadError, fail
from streamserve.workload.formats.table import Ragged, Table


@dataclass
class Trace:
    """Requests read from a file: lengths, and arrival times when the file has them."""

    source: str
    prompt_len: np.ndarray  # int64, >= 1
    output_len: np.ndarray  # int64, >= 1
    timestamps: np.ndarray | None = None  # float64 seconds from the first request, sorted
    hash_ids: Ragged | None = None
    prompts: Sequence[str] | None = None
    dataset: np.ndarray | None = None  # int16 codes into ``datasets``
    datasets: tuple[str, ...] = ("default",)

    def __len__(self) -> int:
        return len(self.prompt_len)

    def take(self, idx: np.ndarray) -> "Trace":
        """The rows at ``idx``, in that order (truncation, sampling, sorting)."""
        return Trace(
            source=self.source,
            prompt_len=self.prompt_len[idx], output_len=self.output_len[idx],
            timestamps=None if self.timestamps is None else self.timestamps[idx],
            hash_ids=None if self.hash_ids is None else self.hash_ids.take(idx),
            prompts=None if self.prompts is None else [self.prompts[int(i)] for i in idx],
            dataset=None if self.dataset is None else self.dataset[idx],
            datasets=self.datasets,
        )


MAX_TOKENS = 10_000_000  # per prompt or output: 10x the longest context windows offered today


def lengths(table: Table, key: str, label: str, minimum: int = 1) -> np.ndarray:
    """Column ``key`` as token counts: finite whole numbers in [``minimum``, ``MAX_TOKENS``]."""
    x = table.columns[key]
    assert isinstance(x, np.ndarray)
    bad = ~np.isfinite(x) | (x < minimum) | (x != np.floor(x)) | (x > MAX_TOKENS)
    if bad.any():
        i = int(np.argmax(bad))
        v = float(x[i])
        if np.isnan(v):
            problem = "NaN is not a token count"
        elif np.isinf(v):
            problem = f"{v} is not a token count"
        elif v < 0:
            problem = f"negative length {v:g}"
        elif v < minimum:
            problem = f"length {v:g} is below the minimum of {minimum}"
        elif v > MAX_TOKENS:
            problem = f"length {v:g} is above the bound of {MAX_TOKENS:,} tokens"
        else:
            problem = f"length {v:g} is not a whole number of tokens"
        raise fail(table.path, table.line(i), label, problem)
    return x.astype(np.int64)


def timestamps(table: Table, key: str, label: str, scale: float = 1.0) -> np.ndarray:
    """Column ``key`` as finite times, times ``scale`` (to seconds), from the first row."""
    t = table.columns[key]
    assert isinstance(t, np.ndarray)
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.argmax(bad))
        raise fail(table.path, table.line(i), label, f"{float(t[i])} is not a time")
    t = t * scale
    return t - t.min()


def sort_by_time(trace: Trace, table: Table, label: str, strict: bool, warn: Warn,
                 rows: np.ndarray | None = None) -> Trace:
    """Sort a trace whose timestamps go backwards (a warning), or refuse under ``strict``.

    ``rows`` maps the trace's rows to the table's when a filter dropped some.
    """
    t = trace.timestamps
    if t is None or len(t) < 2:
        return trace
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back) == 0:
        return trace
    first = int(back[0]) + 1
    line = table.line(first if rows is None else int(rows[first]))
    msg = (f"{table.path}:{line}: {label}: timestamps are not sorted "
           f"({len(back)} step(s) back in time, the first here)")
    if strict:
        raise WorkloadError(msg + "; sort the file, or drop --strict to have it sorted")
    warn(msg + "; sorted by time")
    return trace.take(np.argsort(t, kind="stable"))

