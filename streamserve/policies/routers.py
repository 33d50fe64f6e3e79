"""Baseline routers: the simple rules FlowGuard is measured against.

Every router sees all lanes of a phase and may only pick one with ``has_room``; when
none has room it returns ``None`` and the scheduler keeps the request.
"""
from __future__ import annotations

import random
from typing import Sequence

from mypy_extensions import mypyc_attr

from streamserve.lanes import LaneStats
from streamserve.policies.base import Router, usable
from streamserve.request import Phase, Request


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
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


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class RandomRouter(Router):
    """A uniformly random lane with room (seeded, so runs repeat)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        ok = usable(lanes)
        return self._rng.choice(ok).lane_id if ok else None


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class LeastOutstanding(Router):
    """The lane with the fewest requests waiting or running (ties: lowest id)."""

    name = "least_outstanding"

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        ok = usable(lanes)
        if not ok:
            return None
        return min(ok, key=lambda s: (s.outstanding, s.lane_id)).lane_id


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class PowerOfTwo(Router):
    """Power-of-two choices (Mitzenmacher): sample two lanes, keep the less loaded."""

    name = "power_of_two"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        ok = usable(lanes)
        if len(ok) <= 2:
            return min(ok, key=lambda s: (s.outstanding, s.lane_id)).lane_id if ok else None
        a, b = self._rng.sample(ok, 2)
        return (a if a.outstanding <= b.outstanding else b).lane_id


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class QueueKVScorer(Router):
    """A weighted sum of a queue score and a KV-cache score, as llm-d's scheduler does.

    Each score is min-max normalised across the candidates (1 = best): the queue score
    from waiting requests, the KV score from free KV-cache fraction. The lane with the
    highest weighted sum wins; ties go to the lowest id.
    """

    name = "queue_kv"

    def __init__(self, queue_weight: float = 1.0, kv_weight: float = 1.0) -> None:
        if queue_weight < 0 or kv_weight < 0:
            raise ValueError("queue_weight, kv_weight: must be >= 0")
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        ok = usable(lanes)
        if not ok:
            return None
        q = [s.num_waiting for s in ok]
        kv = [s.kv_usage for s in ok]
        qlo, qhi, klo, khi = min(q), max(q), min(kv), max(kv)
        best, best_score = ok[0], -1.0
        for s, qi, ki in zip(ok, q, kv):
            qs = 1.0 if qhi == qlo else (qhi - qi) / (qhi - qlo)
            ks = 1.0 if khi == klo else (khi - ki) / (khi - klo)
            score = self.queue_weight * qs + self.kv_weight * ks
            if score > best_score:
                best, best_score = s, score
        return best.lane_id
