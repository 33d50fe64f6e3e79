"""The speculation policy of a profile run: k = 0, 1, ..., k_max, 0, 1, ... step by step.

``streamserve profile`` gives it to the decode engines (``spec_policy.name =
streamserve.calibration.kcycle:CycleDepth``) so that every depth is measured at every
batch size and context of the grid, instead of the few a real policy would pick.
"""
from __future__ import annotations

from streamserve.policies.base import SpecPolicy

POLICY_NAME = "streamserve.calibration.kcycle:CycleDepth"


class CycleDepth(SpecPolicy):
    name = "kcycle"

    def __init__(self, k_max: int) -> None:
        self.k_max = int(k_max)
        self._next = 0

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        k = self._next
        self._next = 0 if k >= self.k_max else k + 1
        return k
