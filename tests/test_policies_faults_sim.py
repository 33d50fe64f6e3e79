"""The no-healthy-lane rule through the simulator: the policy decides, the runtime only
carries out its Fail and Reject actions."""
from __future__ import annotations

import numpy as np

from helpers import cluster, workload
from streamserve.request import State
from streamserve.sim import run


def _load(n: int = 300, rate: float = 4.0, seed: int = 5):
    rng = np.random.default_rng(seed)
    return workload(rng.integers(100, 1700, n), rng.integers(20, 300, n), np.cumsum(rng.exponential(1 / rate, n)))


def test_all_decode_lanes_down_ends_every_request_at_once_with_the_reason() -> None:
    down = 20.0
    cfg = cluster("streamserve", faults=[{"lane": 1, "at": down, "kind": "down"}, {"lane": 3, "at": down, "kind": "down"}])
    result = run(cfg, _load(), seed=1)
    reqs = result.requests
    assert len(reqs) == 300 and all(r.state.terminal for r in reqs)  # none lost
    ended = [r for r in reqs if r.state is not State.FINISHED]
    assert ended and all(r.finish >= down for r in ended)
    assert sum(r.arrival < down for r in ended) > 0  # requests in flight at the fault, not only later arrivals
    for r in ended:
        assert "no healthy decode lane (lanes 1, 3 down)" in r.reason, r.reason
        # At once: at the fault, at arrival, or when a prefill running at the fault ends.
        assert r.finish - max(r.arrival, down) < 1.0, (r.id, r.arrival, r.finish, r.reason)
    late = [r for r in reqs if r.arrival > down]
    assert late and all(r.state is State.REJECTED and r.finish == r.arrival for r in late)
    assert all(r.finish <= down for r in reqs if r.state is State.FINISHED)


def test_every_lane_down_in_turn_ends_each_request_exactly_once() -> None:
    """Decode lanes first (prefilled requests fail while their KV is held on a prefill
    lane), then the prefill lanes (which must not hand those settled requests back)."""
    faults = [{"lane": lane, "at": at, "kind": "down"} for lane, at in ((1, 20.0), (3, 20.0), (0, 21.0), (2, 21.0))]
    settled: list[int] = []
    result = run(cluster("streamserve", faults=faults), _load(), seed=1, on_settled=lambda r, n: settled.append(r.id))
    assert sorted(settled) == list(range(300))  # each once, none lost, none twice
    reasons = {r.reason.split(" (")[0] for r in result.requests if r.state is not State.FINISHED}
    assert reasons == {"no healthy decode lane", "no healthy prefill lane"}
