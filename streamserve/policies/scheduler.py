"""Request orchestration. ``FCFSScheduler`` is the baseline: one FIFO queue, no
admission control, placement by the router, requeue after a lane failure."""
from __future__ import annotations

from collections import deque

from streamserve.policies.base import Action, ClusterView, Fail, Router, Scheduler, Submit
from streamserve.request import Phase, Request


class FCFSScheduler(Scheduler):
    name = "fcfs"

    def __init__(self, router: Router, max_attempts: int = 3, pairing: str = "independent") -> None:
        if pairing not in ("independent", "pairs"):
            raise ValueError(f"pairing: must be 'independent' or 'pairs', got {pairing!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        self.router = router
        self.max_attempts = max_attempts
        self.pairing = pairing
        self._queue: deque[tuple[Request, Phase]] = deque()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _place(self, request: Request, phase: Phase, now: float, view: ClusterView) -> Submit | None:
        lanes = view.lanes(phase)
        if phase is Phase.DECODE and self.pairing == "pairs":
            partner = view.partner(request.prefill_lane)
            if partner is not None:
                lanes = [lane for lane in lanes if lane.lane_id == partner]
        lane_id = self.router.route(request, lanes, phase, now)
        return None if lane_id is None else Submit(request, lane_id, phase)

    def _enqueue_or_place(self, request: Request, phase: Phase, now: float, view: ClusterView) -> list[Action]:
        if not self._queue:
            action = self._place(request, phase, now, view)
            if action is not None:
                return [action]
        self._queue.append((request, phase))
        return []

    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        return self._enqueue_or_place(request, Phase.PREFILL, now, view)

    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        if not view.disaggregated:
            return []  # colocated: the prefill lane decodes too
        return self._enqueue_or_place(request, Phase.DECODE, now, view)

    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        actions: list[Action] = []
        while self._queue:
            request, phase = self._queue[0]
            action = self._place(request, phase, now, view)
            if action is None:
                break
            self._queue.popleft()
            actions.append(action)
        return actions

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        actions: list[Action] = []
        gone = {id(r) for r in lost}
        self._queue = deque(item for item in self._queue if id(item[0]) not in gone)
        for request in reversed(lost):
            if request.attempts >= self.max_attempts:
                actions.append(Fail(request, f"lane {lane_id} failed; no attempts left ({request.attempts})"))
            else:
                self._queue.appendleft((request, Phase.PREFILL))
        return actions + self.on_capacity(now, view)

    def drain(self, now: float) -> list[Action]:
        actions: list[Action] = [Fail(r, f"still queued for {p.value} when the run ended") for r, p in self._queue]
        self._queue.clear()
        return actions
