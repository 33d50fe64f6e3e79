"""The scheduler of a profile run: a burst's decodes start once the whole burst is prefilled.

A grid cell sends its requests at once. On a disaggregated deployment the decode engine
would start on the first prefilled request while the prefill engine still works on the
rest, so most of the cell's steps would run while the other engine was busy too. On a
machine where engines share cores (the CPU build) such a step is slowed by the other
engine by a varying amount, and the step model would be fitted to that noise. With this
scheduler the steps of a burst cell run one engine at a time: the prefill engine's alone,
then the decode engine's, at the cell's batch size. How much engines slow each other is
measured apart, by the grid's ``contend`` cells, whose requests arrive spaced out and so
are not held (``grid.py``; the fit's ``contention`` term, ``roles.overlap``).

``streamserve profile`` gives it to the front end it starts (``profiling_config``); a
``--attach`` run uses whatever scheduler the running front end has, and the fit tells the
overlapping steps apart by their ``overlap`` instead.

It wraps ``FCFSScheduler``, which keeps owning the queues; this class only delays the
``on_prefill_done`` of requests whose burst is not yet prefilled.
"""
from __future__ import annotations

from streamserve.policies.base import Action, ClusterView, Fail, Reject, Router, Scheduler
from streamserve.policies.scheduler import FCFSScheduler
from streamserve.request import Request

SCHEDULER_NAME = "streamserve.calibration.gather:GatherBursts"


class GatherBursts(Scheduler):
    """FCFS, with the decodes of requests that arrived within ``window_s`` of each other
    held until every one of them is prefilled (or has ended), for at most ``max_gather_s``."""

    name = "gather"

    def __init__(self, router: Router, window_s: float = 0.05, max_gather_s: float = 15.0) -> None:
        self.inner = FCFSScheduler(router)
        self.window_s = float(window_s)
        # Below the KV lease (the KV store drops a prefill no decode took within 30 s,
        # gpu/kvstore.py): past this a held request decodes even if its burst is not done.
        self.max_gather_s = float(max_gather_s)
        self._prefilling: dict[int, Request] = {}  # arrived, first token not made yet
        self._held: list[tuple[float, Request]] = []  # prefilled, waiting for their burst

    @property
    def pending(self) -> int:
        return self.inner.pending + len(self._held)

    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        actions = self.inner.on_arrival(request, now, view)
        if not any(isinstance(a, (Reject, Fail)) and a.request is request for a in actions):
            self._prefilling[request.id] = request
        return actions

    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        self._prefilling.pop(request.id, None)
        self._held.append((now, request))
        return self._release(now, view)

    def _release(self, now: float, view: ClusterView) -> list[Action]:
        """Hand the inner scheduler every held request none of whose burst still prefills."""
        for rid in [rid for rid, r in self._prefilling.items() if r.state.terminal]:
            del self._prefilling[rid]  # failed or rejected on its way: its burst does not wait for it
        if not self._held:
            return []
        arrivals = [r.arrival for r in self._prefilling.values()]
        actions: list[Action] = []
        waiting: list[tuple[float, Request]] = []
        for done_at, request in self._held:
            if now - done_at < self.max_gather_s and any(abs(a - request.arrival) <= self.window_s for a in arrivals):
                waiting.append((done_at, request))
            else:
                actions += self.inner.on_prefill_done(request, now, view)
        self._held = waiting
        return actions

    def on_finish(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        return self.inner.on_finish(request, now, view)

    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        return self._release(now, view) + self.inner.on_capacity(now, view)

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        gone = {id(r) for r in lost}
        for _, request in self._held:
            if id(request) in gone:  # its KV is lost: it prefills again, and its burst waits for it
                self._prefilling[request.id] = request
        self._held = [(t, r) for t, r in self._held if id(r) not in gone]
        return self.inner.on_lane_down(lane_id, lost, now, view) + self._release(now, view)

    def next_deadline(self) -> float | None:
        inner = self.inner.next_deadline()
        if not self._held:
            return inner
        held = min(t for t, _ in self._held) + self.max_gather_s
        return held if inner is None else min(held, inner)

    def on_timer(self, now: float, view: ClusterView) -> list[Action]:
        return self._release(now, view) + self.inner.on_timer(now, view)

    def drain(self, now: float) -> list[Action]:
        actions: list[Action] = [Fail(r, "still waiting for its burst to prefill when the run ended")
                                 for _, r in self._held]
        self._held.clear()
        self._prefilling.clear()
        return actions + self.inner.drain(now)
