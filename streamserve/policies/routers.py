"""Baseline routers: the simple rules FlowGuard is measured against."""
from __future__ import annotations

from typing import Sequence

from streamserve.lanes import LaneStats
from streamserve.policies.base import Router
from streamserve.request import Phase, Request


class RoundRobin(Router):
    """Cycle through the lanes of each phase, skipping those without room."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[Phase, int] = {Phase.PREFILL: 0, Phase.DECODE: 0}

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        n = len(lanes)
        start = self._next[phase]
        for i in range(n):
            lane = lanes[(start + i) % n]
            if lane.has_room:
                self._next[phase] = (start + i + 1) % n
                return lane.lane_id
        return None
