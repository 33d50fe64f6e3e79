"""Generated workloads: lengths from simple distributions, arrivals from a process."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamserve.workload import arrivals
from streamserve.workload.base import DEFAULT_ALPHA, Workload


class LengthDist(BaseModel):
    """A token-length distribution. ``lognormal`` is parameterised by its median."""

    model_config = ConfigDict(extra="forbid")
    dist: Literal["fixed", "uniform", "lognormal"] = "lognormal"
    value: int | None = Field(None, ge=1)  # fixed
    low: int | None = Field(None, ge=1)  # uniform, inclusive
    high: int | None = Field(None, ge=1)
    median: float | None = Field(None, gt=0)  # lognormal
    sigma: float = Field(1.0, ge=0)
    min: int = Field(1, ge=1)
    max: int = Field(1 << 20, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "LengthDist":
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("median",)}[self.dist]
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: required for dist={self.dist}")
        if self.dist == "uniform" and self.low > self.high:
            raise ValueError("low: must be <= high")
        if self.min > self.max:
            raise ValueError("min: must be <= max")
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "fixed":
            x = np.full(n, self.value, dtype=np.int64)
        elif self.dist == "uniform":
            x = rng.integers(self.low, self.high + 1, size=n)
        else:
            x = np.rint(rng.lognormal(np.log(self.median), self.sigma, size=n)).astype(np.int64)
        return np.clip(x, self.min, self.max).astype(np.int64)


# Azure LLM inference trace 2023, conversation part: median prompt ~1k tokens, median
# output ~130 tokens (Splitwise, ISCA'24, Fig. 3); lognormal widths chosen to match.
DEFAULT_PROMPT = LengthDist(dist="lognormal", median=1020, sigma=0.9, min=4, max=8000)
DEFAULT_OUTPUT = LengthDist(dist="lognormal", median=130, sigma=0.9, min=1, max=2000)


def synthetic(n: int, rate: float | None, seed: int, prompt: LengthDist = DEFAULT_PROMPT,
              output: LengthDist = DEFAULT_OUTPUT, concurrency: int | None = None,
              alpha: float = DEFAULT_ALPHA, name: str = "synthetic") -> Workload:
    """``n`` requests with Poisson arrivals at ``rate`` (or a closed loop of ``concurrency``)."""
    if n < 1:
        raise ValueError(f"num_requests: must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    p = prompt.sample(n, rng)
    o = output.sample(n, rng)
    arrival = None if concurrency else arrivals.poisson(n, rate if rate is not None else 1.0, rng)
    return Workload(name=name, prompt_len=p, output_len=o, arrival=arrival,
                    dataset=np.zeros(n, dtype=np.int16), datasets=("default",),
                    alpha={"default": alpha}, concurrency=concurrency)


def vllm_random(n: int, input_len: int, output_len: int, range_ratio: float, prefix_len: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lengths as ``vllm bench serve --dataset-name random`` draws them.

    Input and output lengths are uniform integers in [L * (1 - r), L * (1 + r)] for
    ``range_ratio`` r in [0, 1) (vLLM's current semantics), and every prompt starts with
    the same ``prefix_len`` tokens, which are added to the input length.
    """
    if not 0 <= range_ratio < 1:
        raise ValueError(f"range_ratio: must be in [0, 1), got {range_ratio}")

    def draw(length: int) -> np.ndarray:
        lo = max(1, int(np.floor(length * (1 - range_ratio))))
        hi = max(lo, int(np.ceil(length * (1 + range_ratio))))
        return rng.integers(lo, hi + 1, size=n, dtype=np.int64)

    return draw(input_len) + prefix_len, draw(output_len)
