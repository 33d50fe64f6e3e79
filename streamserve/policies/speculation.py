"""Baseline speculation-depth policies."""
from __future__ import annotations

from streamserve.lanes import LaneStats
from streamserve.policies.base import SpecPolicy


class FixedDepth(SpecPolicy):
    """The same k every step (k=0: no speculation), as vLLM's static config does."""

    name = "fixed"

    def __init__(self, k_max: int, k: int = 4) -> None:
        if k < 0:
            raise ValueError(f"k: must be >= 0, got {k}")
        self.k_max = k_max
        self.k = min(k, k_max)

    def depth(self, lane: LaneStats, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        return self.k
