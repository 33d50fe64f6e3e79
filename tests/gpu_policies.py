"""Policies for the live tests: k on a known rule, so a test can predict what the
engine's spec-decode counters must show, and schedulers with one known rule each, so a
test can check that the runtime carries out what a policy decides."""
from __future__ import annotations

from streamserve.policies.base import Action, ClusterView, Fail, Router, Scheduler, SpecPolicy
from streamserve.policies.scheduler import FCFSScheduler
from streamserve.request import Phase, Request


class BatchStep(SpecPolicy):
    """``k_single`` for a batch of one sequence, ``k_batched`` for larger batches; a
    batch of one class listed in ``k_class`` gets that class's k (so a test sees the
    request's class reach the engine's policy)."""

    name = "batch_step"

    def __init__(self, k_max: int, k_single: int, k_batched: int, k_class: dict[str, int] | None = None) -> None:
        self.k_max = k_max
        self.k_single = k_single
        self.k_batched = k_batched
        self.k_class = dict(k_class or {})

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        if classes and len(classes) == 1 and next(iter(classes)) in self.k_class:
            return self.k_class[next(iter(classes))]
        return self.k_single if batch_size <= 1 else self.k_batched


class HoldThenFail(Scheduler):
    """Holds every arrival and fails it ``max_wait_s`` later, through ``next_deadline``
    and ``on_timer`` only: a runtime that does not arm the timer leaves it waiting."""

    name = "hold_then_fail"

    def __init__(self, router: Router, max_wait_s: float = 0.3) -> None:
        self.router = router
        self.max_wait_s = max_wait_s
        self.held: dict[int, tuple[float, Request]] = {}

    @property
    def pending(self) -> int:
        return len(self.held)

    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        self.held[request.id] = (now + self.max_wait_s, request)
        return []

    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        return []

    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        return []

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        return [Fail(r, "lane down") for r in lost]

    def next_deadline(self) -> float | None:
        return min((t for t, _ in self.held.values()), default=None)

    def on_timer(self, now: float, view: ClusterView) -> list[Action]:
        due = [r for t, r in self.held.values() if t <= now]
        for r in due:
            del self.held[r.id]
        return [Fail(r, f"waited {self.max_wait_s:g} s for a lane") for r in due]

    def drain(self, now: float) -> list[Action]:
        out: list[Action] = [Fail(r, "run ended") for _, r in self.held.values()]
        self.held.clear()
        return out


class FailWithoutLane(FCFSScheduler):
    """FCFS, but requests lost with their lane end at once when no healthy lane of the
    phase they need is left (the rule the runtime must carry out without delay)."""

    name = "fail_without_lane"

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        if not any(lane.healthy for lane in view.lanes(Phase.DECODE)):
            return [Fail(r, f"lane {lane_id} failed and no decode lane is healthy") for r in lost]
        return super().on_lane_down(lane_id, lost, now, view)
