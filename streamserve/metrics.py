"""Latency and throughput figures from request timestamps, named as ``vllm bench serve``
names them, so results from the simulator, our live bench and vLLM's own bench compare
field by field."""
from __future__ import annotations

import csv
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from streamserve.request import SLO, Request, State

# The SLO goodput is measured against when none is given (``--slo``, or a cluster's
# ``slo:``): a chat service's first token within 1 s and >= 20 tokens/s after it.
DEFAULT_SLO = SLO(ttft=1.0, tpot=0.05)
FORMATS = ("csv", "parquet")


def describe_slo(slo: SLO) -> str:
    parts = [f"{name} {v * 1e3:g} ms" for name, v in (("TTFT", slo.ttft), ("TPOT", slo.tpot)) if v is not None]
    return ", ".join(parts) or "none"


class LogHistogram:
    """Latencies in log-spaced bins (1% wide) from 1 us to ~3 h.

    Inter-token latencies number one per decode step per request: millions on a long
    trace. Keeping them as bin counts holds memory constant; the mean stays exact and
    percentiles are within the 1% bin width.
    """

    LO = 1e-6
    RATIO = 1.01

    def __init__(self) -> None:
        self._log_ratio = math.log(self.RATIO)
        self.nbins = int(math.log(1e4 / self.LO) / self._log_ratio) + 2
        self.counts = np.zeros(self.nbins, dtype=np.int64)
        self.total = 0.0
        self.n = 0

    def _bin(self, x: np.ndarray | float) -> np.ndarray:
        b = np.floor(np.log(np.maximum(x, self.LO) / self.LO) / self._log_ratio).astype(np.int64) + 1
        return np.clip(b, 0, self.nbins - 1)

    def add(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[int(self._bin(value))] += count
        self.total += value * count
        self.n += count

    def add_many(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self.counts += np.bincount(self._bin(values), minlength=self.nbins)
        self.total += float(np.sum(values))
        self.n += len(values)

    def add_counts(self, values: np.ndarray, counts: np.ndarray) -> None:
        """``counts[i]`` occurrences of ``values[i]``."""
        if len(values) == 0:
            return
        self.counts += np.bincount(self._bin(values), weights=counts, minlength=self.nbins).astype(np.int64)
        self.total += float(np.dot(values, counts))
        self.n += int(counts.sum())

    def merge(self, other: "LogHistogram") -> None:
        self.counts += other.counts
        self.total += other.total
        self.n += other.n

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def percentile(self, q: float) -> float:
        if not self.n:
            return 0.0
        # the j-th smallest sample, j = floor(q% of n-1) (numpy's method="lower")
        j = int(q / 100.0 * (self.n - 1))
        b = int(np.searchsorted(np.cumsum(self.counts), j + 1, side="left"))
        if b == 0:
            return 0.0
        return self.LO * self.RATIO ** (b - 0.5)


@dataclass
class LaneUsage:
    lane_id: int
    role: str
    busy_time: float
    steps: int
    mean_batch: float
    peak_kv_usage: float
    drafted: int = 0
    accepted: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, busy s so far, KV usage)


@dataclass
class RunResult:
    """Everything a runtime reports about one run."""

    requests: list[Request]
    duration: float  # seconds from the start to the last request settled
    itl: LogHistogram
    lanes: list[LaneUsage] = field(default_factory=list)
    k_trace: list[tuple[float, int, int]] = field(default_factory=list)  # (time, lane, k) at each k change
    kv_recomputes: int = 0  # decode placements whose KV was gone (lease ended, link failed): prompt recomputed


def _stats(prefix: str, values_s: np.ndarray) -> dict[str, float]:
    if len(values_s) == 0:
        return {f"mean_{prefix}_ms": 0.0, f"median_{prefix}_ms": 0.0, f"std_{prefix}_ms": 0.0,
                f"p90_{prefix}_ms": 0.0, f"p99_{prefix}_ms": 0.0}
    ms = values_s * 1e3
    return {
        f"mean_{prefix}_ms": float(np.mean(ms)),
        f"median_{prefix}_ms": float(np.median(ms)),
        f"std_{prefix}_ms": float(np.std(ms)),
        f"p90_{prefix}_ms": float(np.percentile(ms, 90)),
        f"p99_{prefix}_ms": float(np.percentile(ms, 99)),
    }


def parse_slo(items: Iterable[str]) -> SLO:
    """``["ttft:200", "tpot:50"]`` (milliseconds) -> SLO in seconds."""
    slo = SLO()
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in ("ttft", "tpot"):
            raise ValueError(f"--slo: expected ttft:MS or tpot:MS, got {item!r}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--slo: {key} needs a number of milliseconds, got {value!r}") from None
        if not ms > 0:
            raise ValueError(f"--slo: {key} must be > 0 ms, got {value}")
        setattr(slo, key, ms / 1e3)
    return slo


def summarize(result: RunResult, slo: SLO | None = None) -> dict[str, object]:
    reqs = result.requests
    done = [r for r in reqs if r.state is State.FINISHED]
    dur = result.duration if result.duration > 0 else 1e-9
    ttft = np.array([r.ttft for r in done])
    e2e = np.array([r.e2e for r in done])
    tpot = np.array([r.tpot for r in done if r.generated > 1])
    out_tokens = int(sum(r.generated for r in done))
    in_tokens = int(sum(r.prompt_len for r in done))
    summary: dict[str, object] = {
        "duration": result.duration,
        "completed": len(done),
        "failed": sum(r.state is State.FAILED for r in reqs),
        "rejected": sum(r.state is State.REJECTED for r in reqs),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(done) / dur,
        "output_throughput": out_tokens / dur,
        "total_token_throughput": (in_tokens + out_tokens) / dur,
    }
    summary.update(_stats("ttft", ttft))
    summary.update(_stats("tpot", tpot))
    itl = result.itl
    summary.update({
        "mean_itl_ms": itl.mean * 1e3, "median_itl_ms": itl.percentile(50) * 1e3,
        "p90_itl_ms": itl.percentile(90) * 1e3, "p99_itl_ms": itl.percentile(99) * 1e3,
    })
    summary.update(_stats("e2el", e2e))
    summary["mean_queue_ms"] = float(np.mean([r.queue_delay for r in done]) * 1e3) if done else 0.0
    summary["mean_transfer_ms"] = float(np.mean([r.transfer_delay for r in done]) * 1e3) if done else 0.0
    if slo is not None and (slo.ttft is not None or slo.tpot is not None):
        good = sum(slo.met_by(r.ttft, r.tpot) for r in done)
        summary["request_goodput"] = good / dur
        summary["slo_attainment"] = good / len(reqs) if reqs else 0.0
        summary["slo"] = {"ttft_ms": None if slo.ttft is None else slo.ttft * 1e3,
                          "tpot_ms": None if slo.tpot is None else slo.tpot * 1e3}
    if result.kv_recomputes:
        summary["kv_recomputes"] = result.kv_recomputes
    drafted = sum(u.drafted for u in result.lanes)
    if drafted:
        summary["spec_acceptance_rate"] = sum(u.accepted for u in result.lanes) / drafted
    summary["lanes"] = [
        {"lane": u.lane_id, "role": u.role, "utilisation": u.busy_time / dur, "steps": u.steps,
         "mean_batch": u.mean_batch, "peak_kv_usage": u.peak_kv_usage}
        for u in result.lanes
    ]
    return summary


REQUEST_COLUMNS = ("id", "dataset", "state", "reason", "prompt_len", "output_len", "generated",
                   "arrival", "prefill_start", "prefill_end", "first_token", "decode_start", "finish",
                   "ttft_ms", "tpot_ms", "e2el_ms", "queue_ms", "transfer_ms",
                   "prefill_lane", "decode_lane", "attempts", "preemptions")


def _ms(x: float) -> str:
    return "" if math.isnan(x) else f"{x * 1e3:.3f}"


def _s(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def write_requests_csv(requests: Sequence[Request], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for r in requests:
            fin = r.state is State.FINISHED
            w.writerow((r.id, r.dataset, r.state.value, r.reason, r.prompt_len, r.output_len, r.generated,
                        _s(r.arrival), _s(r.prefill_start), _s(r.prefill_end), _s(r.first_token), _s(r.decode_start), _s(r.finish),
                        _ms(r.ttft), _ms(r.tpot) if fin else "", _ms(r.e2e), _ms(r.queue_delay),
                        _ms(r.transfer_delay) if fin else "", r.prefill_lane, r.decode_lane,
                        r.attempts, r.preemptions))


def _requests_table(requests: Sequence[Request]) -> dict[str, list]:
    """REQUEST_COLUMNS as typed columns (``None`` where the CSV has an empty cell)."""
    def opt(x: float, scale: float = 1.0) -> float | None:
        return None if math.isnan(x) else x * scale

    cols: dict[str, list] = {c: [] for c in REQUEST_COLUMNS}
    for r in requests:
        fin = r.state is State.FINISHED
        row = (r.id, r.dataset, r.state.value, r.reason, r.prompt_len, r.output_len, r.generated,
               opt(r.arrival), opt(r.prefill_start), opt(r.prefill_end), opt(r.first_token), opt(r.decode_start), opt(r.finish),
               opt(r.ttft, 1e3), opt(r.tpot, 1e3) if fin else None, opt(r.e2e, 1e3), opt(r.queue_delay, 1e3),
               opt(r.transfer_delay, 1e3) if fin else None, r.prefill_lane, r.decode_lane, r.attempts, r.preemptions)
        for c, v in zip(REQUEST_COLUMNS, row):
            cols[c].append(v)
    return cols


def write_requests_parquet(requests: Sequence[Request], path: Path) -> None:
    """The CSV's columns in Parquet: typed, compressed, and far faster to write and read
    for million-request runs. Needs pyarrow (``pip install streamserve[parquet]``)."""
    pa, pq = parquet_modules()
    pq.write_table(pa.table(_requests_table(requests)), path)


def parquet_modules() -> tuple:
    # importlib, not an import statement: this module is compiled, and mypyc's import
    # takes a module that sys.modules blocks (None) as found
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise OSError("--out-format parquet needs pyarrow: pip install 'streamserve[parquet]' (or pyarrow)") from None
    return pa, pq


def _strict(value: object) -> object:
    """``value`` with NaN and infinities as null: JSON has no such numbers, and a reader
    that meets ``NaN`` in summary.json fails. (A simulated run never produces them;
    tests/test_sim_fuzz.py checks the summary itself.)"""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_outputs(result: RunResult, summary: dict[str, object], out_dir: Path, fmt: str = "csv") -> Path:
    """summary.json and the per-request records (requests.csv or requests.parquet); returns the latter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "summary.json", "w") as f:
        json.dump(_strict(summary), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    path = out_dir / f"requests.{fmt}"
    if fmt == "parquet":
        write_requests_parquet(result.requests, path)
    else:
        write_requests_csv(result.requests, path)
    return path
