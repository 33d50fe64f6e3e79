"""One simulation run: the unit of work every runner executes, and what a run measures.

``evaluate_run`` is the only function a worker runs, in a local process or as a Ray
task. Its input (``RunTask``) is plain data (the cluster as a dict, the workload as the
options that build it, a seed) and the run is deterministic for its seed, so a value
does not depend on where it was computed. A run that the configuration makes
impossible (a policy refusing a parameter combination) comes back as an error string,
not an exception, so one bad trial fails alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from streamserve.config import ClusterConfig, ConfigError
from streamserve.metrics import RunResult, summarize
from streamserve.perfmodel import ProfileError
from streamserve.policies.registry import PolicyError
from streamserve.request import SLO
from streamserve.workload.base import Workload
from streamserve.workload.resolve import WorkloadError, resolve_workload

LONG_OUTPUT = 1000  # output tokens: the "long" requests of long_tpot / long_ttft


@dataclass(frozen=True)
class Metric:
    """A number taken from one run; ``maximize`` says which way is better."""

    label: str
    maximize: bool
    read: Callable[[dict[str, Any], RunResult], float]


def _long(result: RunResult, attr: str) -> float:
    vals = [getattr(r, attr) for r in result.requests if r.generated > 1 and r.output_len > LONG_OUTPUT]
    return float(np.mean(vals)) * 1e3 if vals else math.nan


def _local_share(result: RunResult) -> float:
    done = [r for r in result.requests if r.generated > 1]
    return float(np.mean([r.prefill_lane == r.decode_lane for r in done])) if done else 0.0


METRICS: dict[str, Metric] = {
    "goodput": Metric("goodput (req/s within SLO)", True, lambda s, _: float(s["request_goodput"])),
    "attainment": Metric("SLO attainment", True, lambda s, _: float(s["slo_attainment"])),
    "throughput": Metric("request throughput (req/s)", True, lambda s, _: float(s["request_throughput"])),
    "p99_e2e": Metric("p99 E2E (ms)", False, lambda s, _: float(s["p99_e2el_ms"])),
    "mean_e2e": Metric("mean E2E (ms)", False, lambda s, _: float(s["mean_e2el_ms"])),
    "p99_ttft": Metric("p99 TTFT (ms)", False, lambda s, _: float(s["p99_ttft_ms"])),
    "mean_ttft": Metric("mean TTFT (ms)", False, lambda s, _: float(s["mean_ttft_ms"])),
    "mean_tpot": Metric("mean TPOT (ms)", False, lambda s, _: float(s["mean_tpot_ms"])),
    "p99_tpot": Metric("p99 TPOT (ms)", False, lambda s, _: float(s["p99_tpot_ms"])),
    "long_tpot": Metric(f"mean TPOT of outputs > {LONG_OUTPUT} tokens (ms)", False, lambda _, r: _long(r, "tpot")),
    "long_ttft": Metric(f"mean TTFT of outputs > {LONG_OUTPUT} tokens (ms)", False, lambda _, r: _long(r, "ttft")),
    "local_share": Metric("share prefilled on a decode lane", False, lambda _, r: _local_share(r)),
}


def _quiet(_: str) -> None:
    """Workers build the workload again per run; its warnings were shown once already."""


@dataclass(frozen=True)
class WorkloadArgs:
    """The options that build a workload (as ``simulate`` takes them); the seed comes per run."""

    spec: str | None = None
    fmt: str | None = None
    num_requests: int | None = None
    rate: float | None = None
    arrival: str | None = None
    cv: float | None = None
    concurrency: int | None = None
    config: dict[str, Any] | None = None  # the cluster file's workload: mapping
    origin: str = "config"

    def build(self, seed: int, rate: float | None = None, slo: SLO | None = None,
              warn: Callable[[str], None] = _quiet) -> Workload:
        wl = resolve_workload(self.spec, fmt=self.fmt, num_requests=self.num_requests,
                              rate=self.rate if rate is None else rate, arrival=self.arrival, cv=self.cv,
                              concurrency=self.concurrency, seed=seed, config=self.config,
                              config_origin=self.origin, warn=warn)
        wl.slo = slo  # requests carry the SLO, so deadline orders and overload rejection see it
        return wl


@dataclass(frozen=True)
class RunTask:
    """One simulation: a cluster (``ClusterConfig.model_dump()``), a workload, a seed."""

    cluster: dict[str, Any]
    workload: WorkloadArgs
    seed: int
    slo: tuple[float | None, float | None]  # TTFT, TPOT in seconds
    metrics: tuple[str, ...]
    rate: float | None = None  # overrides workload.rate (plan's bisection)
    tag: Any = field(default=None, compare=False)  # the caller's bookkeeping, returned as is


@dataclass(frozen=True)
class RunResultValues:
    tag: Any
    values: dict[str, float]
    error: str | None = None


def evaluate_run(task: RunTask) -> RunResultValues:
    """Simulate ``task`` and read its metrics (the one function every runner calls)."""
    from streamserve.sim import SimulationError, run  # the runtime, imported where it is used

    slo = SLO(*task.slo)
    try:
        cluster = ClusterConfig.model_validate(task.cluster)
        wl = task.workload.build(task.seed, task.rate, slo)
        result = run(cluster, wl, task.seed)
    except (ConfigError, PolicyError, ProfileError, WorkloadError, SimulationError, ValueError) as e:
        return RunResultValues(task.tag, {}, f"{type(e).__name__}: {e}")
    summary = summarize(result, slo)
    return RunResultValues(task.tag, {m: METRICS[m].read(summary, result) for m in task.metrics})


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a two-sided 95% Student-t confidence interval (half-width)."""

    mean: float
    half_width: float  # nan with one seed
    n: int

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> "Estimate":
        from scipy.stats import t

        v = np.asarray(values, dtype=float)
        n = len(v)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        if n == 1:
            return cls(float(v[0]), math.nan, 1)
        return cls(float(v.mean()), float(t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)), n)

    def __str__(self) -> str:
        return f"{self.mean:.4g}" + ("" if math.isnan(self.half_width) else f" ± {self.half_width:.2g}")
