"""Speculation policies for the live tests: k on a known rule, so a test can predict
what the engine's spec-decode counters must show."""
from __future__ import annotations

from streamserve.policies.base import SpecPolicy


class BatchStep(SpecPolicy):
    """``k_single`` for a batch of one sequence, ``k_batched`` for larger batches."""

    name = "batch_step"

    def __init__(self, k_max: int, k_single: int, k_batched: int) -> None:
        self.k_max = k_max
        self.k_single = k_single
        self.k_batched = k_batched

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        return self.k_single if batch_size <= 1 else self.k_batched
