"""The simulator honours the scheduler's deadlines, enforces the KV lease, and survives
link faults: every request still ends once."""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import cluster, workload
from streamserve.perfmodel import Profile, transfer_time
from streamserve.policies.base import Action, ClusterView, Fail, Scheduler, Submit
from streamserve.request import Phase, Request, State
from streamserve.sim import Cluster, run


class Patient(Scheduler):
    """Colocated lanes only: place each request on the first healthy lane with room, hold
    it otherwise, and give up on a held request ``wait[id]`` seconds after it arrived."""

    def __init__(self, wait: dict[int, float]) -> None:
        self.wait = wait
        self.held: list[Request] = []
        self.timer_calls: list[float] = []

    @property
    def pending(self) -> int:
        return len(self.held)

    def _due(self, r: Request) -> float:
        return r.arrival + self.wait[r.id]

    def _place(self, view: ClusterView) -> list[Action]:
        lanes = [lane for lane in view.lanes(Phase.PREFILL) if lane.has_room]
        if not lanes or not self.held:
            return []
        placed, self.held = self.held, []
        return [Submit(r, lanes[0].lane_id, Phase.PREFILL) for r in placed]

    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        self.held.append(request)
        return self._place(view)

    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        return []

    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        return self._place(view)

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        self.held = lost + self.held
        return self._place(view)

    def next_deadline(self) -> float | None:
        return min((self._due(r) for r in self.held), default=None)

    def on_timer(self, now: float, view: ClusterView) -> list[Action]:
        self.timer_calls.append(now)
        late = [r for r in self.held if self._due(r) <= now]
        self.held = [r for r in self.held if self._due(r) > now]
        return [Fail(r, "waited too long") for r in late]

    def drain(self, now: float) -> list[Action]:
        held, self.held = self.held, []
        return [Fail(r, "still held when the run ended") for r in held]


def test_on_timer_runs_at_each_deadline_and_an_earlier_one_replaces_the_pending_timer():
    # The only lane is down from the start, so every request waits in the scheduler;
    # later arrivals have earlier deadlines, so each one replaces the pending timer.
    arrivals = [0.0, 0.1, 0.2, 0.3]
    wait = {0: 5.0, 1: 3.0, 2: 1.0, 3: 0.5}
    cfg = cluster("vllm-dp", lanes=[{"role": "colocated"}], faults=[{"lane": 0, "at": 0.0, "kind": "down"}])
    sim = Cluster(cfg, workload([100] * 4, [10] * 4, arrivals), seed=0)
    sim.scheduler = sched = Patient(wait)
    result = sim.run()
    for r in result.requests:
        assert r.state is State.FAILED and r.reason == "waited too long"
        assert r.finish == pytest.approx(r.arrival + wait[r.id], abs=1e-12)
    assert sched.timer_calls == pytest.approx(sorted(a + wait[i] for i, a in enumerate(arrivals)))
    assert sim._timer is None  # nothing left pending once every request settled


def test_deadlines_do_not_disturb_requests_that_are_served():
    cfg = cluster("vllm-dp", lanes=[{"role": "colocated"}])
    sim = Cluster(cfg, workload([100] * 3, [5] * 3, [0.0, 0.1, 0.2]), seed=0)
    sim.scheduler = Patient({0: 9.0, 1: 9.0, 2: 9.0})
    result = sim.run()
    assert all(r.state is State.FINISHED for r in result.requests)


def test_kv_left_unpulled_past_its_lease_is_freed_and_the_decode_lane_recomputes_it():
    n = 12
    # The decode lane holds one request's KV at a time, so the others' KV waits on the
    # prefill lane, past the lease for all but the first few.
    lanes = [{"role": "prefill"}, {"role": "decode", "engine": {"kv_capacity_tokens": 448}}]
    cfg = cluster("streamserve", lanes=lanes, kv_lease_s=0.5,
                  scheduler={"name": "stream"}, spec_policy={"name": "fixed", "k": 0})
    sim = Cluster(cfg, workload([400] * n, [30] * n, np.linspace(0.1, 1.0, n)), seed=0)
    result = sim.run()
    assert all(r.state is State.FINISHED and r.generated == r.output_len for r in result.requests)
    assert result.kv_recomputes > 0
    recomputed = [r for r in result.requests if math.isnan(r.transfer_start)]
    assert len(recomputed) == result.kv_recomputes
    for r in recomputed:  # never pulled from the prefill lane: prefilled again at the decode lane
        assert r.preemptions >= 1 and r.decode_start - r.prefill_end > 0.5
    assert sim.lanes[0].kv.used == 0 and not sim.lanes[0].held  # the prefill lane kept nothing


def test_a_link_down_fails_transfers_into_recompute_and_loses_nothing():
    n = 40
    rng = np.random.default_rng(3)
    faults = [{"lane": 1, "at": 2.0, "kind": "link_down", "duration": 4.0},
              {"lane": 2, "at": 3.0, "kind": "link_down"}]
    result = run(cluster("streamserve", faults=faults, link={"bandwidth_gbps": 0.5, "latency_ms": 0.1}),
                 workload(rng.integers(200, 1500, n), rng.integers(5, 50, n), np.sort(rng.uniform(0, 8, n))), seed=1)
    assert all(r.state is State.FINISHED for r in result.requests)
    assert result.kv_recomputes > 0
    for r in result.requests:  # no transfer starts over a link while it is down
        if r.decode_lane == 1 and not math.isnan(r.transfer_start):
            assert not 2.0 <= r.transfer_start < 6.0
        if r.prefill_lane == 2 and not math.isnan(r.transfer_start):
            assert r.transfer_start < 3.0


def test_a_slow_link_stretches_the_transfer_by_its_factor():
    perf = Profile.load().lane("opt-13b", "A100-80GB", 1)
    link = cluster("streamserve").link
    xfer = transfer_time(perf.kv_bytes(800), link.bandwidth_gbps, link.latency_ms)
    cfg = cluster("streamserve", faults=[{"lane": 1, "at": 0.0, "kind": "link_slow", "factor": 4.0}],
                  router={"name": "round_robin"}, spec_policy={"name": "fixed", "k": 0})
    r = run(cfg, workload([800], [5], [1.0])).requests[0]
    assert r.decode_lane == 1
    assert r.transfer_delay == pytest.approx(4.0 * xfer, rel=1e-9)
