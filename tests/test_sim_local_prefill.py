"""Conditional disaggregation in the simulator: a burst spills short prompts onto decode
lanes, which then decode them with no KV transfer."""
from __future__ import annotations

import math

import numpy as np

from helpers import cluster, workload
from streamserve.lanes import LaneRole
from streamserve.request import State
from streamserve.sim import Cluster, run


def _burst(n=100, span=2.0, seed=4, shortest=100):
    """50 requests/s for two seconds: several times what two prefill lanes absorb."""
    rng = np.random.default_rng(seed)
    return workload(rng.integers(shortest, 1500, n), rng.integers(20, 200, n), np.sort(rng.uniform(0, span, n)))


LOCAL_UP_TO_2048 = {"name": "flowguard", "local_prefill": True, "local_max_prompt": 2048}


def test_a_burst_spills_short_prompts_onto_decode_lanes():
    cfg = cluster("streamserve")
    cap = cfg.router.local_max_prompt
    sim = Cluster(cfg, _burst(n=300, span=6.0, shortest=8), seed=1)
    decode_lanes = {lane.lane_id for lane in sim.lanes if lane.role is LaneRole.DECODE}
    result = sim.run()
    local = [r for r in result.requests if r.prefill_lane in decode_lanes]
    assert local, "the burst must back up two prefill lanes"
    for r in local:
        assert r.state is State.FINISHED and r.generated == r.output_len
        assert r.decode_lane == r.prefill_lane and math.isnan(r.transfer_start) and r.transfer_delay == 0.0
        assert r.prompt_len <= cap
    remote = [r for r in result.requests if r.prefill_lane not in decode_lanes]
    assert remote and all(r.decode_lane in decode_lanes and r.transfer_delay > 0 for r in remote)


def test_local_prefill_off_keeps_prefill_on_prefill_lanes():
    cfg = cluster("streamserve", router={"name": "flowguard", "local_prefill": False})
    result = run(cfg, _burst(), seed=1)
    assert all(r.prefill_lane in (0, 2) for r in result.requests)
    local_on = run(cluster("streamserve", router=LOCAL_UP_TO_2048), _burst(), seed=1)
    # spilling the burst onto idle decode capacity shortens the wait for a first token
    assert np.mean([r.ttft for r in local_on.requests]) < 0.9 * np.mean([r.ttft for r in result.requests])
    assert np.mean([r.e2e for r in local_on.requests]) < 0.95 * np.mean([r.e2e for r in result.requests])
