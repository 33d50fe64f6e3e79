"""Injected failures and slowdowns: nothing is lost, work moves off the dead lane."""
from __future__ import annotations

import numpy as np

from helpers import cluster, workload
from streamserve.request import State
from streamserve.sim import run


def _load(n=400, rate=3.0, seed=5):
    rng = np.random.default_rng(seed)
    return workload(rng.integers(100, 1700, n), rng.integers(20, 300, n),  # within OPT-13B's 2048 window
                    np.cumsum(rng.exponential(1 / rate, n)))


def test_decode_lane_failure_requeues_and_avoids_the_dead_lane():
    down_at, duration = 20.0, 30.0
    cfg = cluster("streamserve", faults=[{"lane": 1, "at": down_at, "kind": "down", "duration": duration}])
    result = run(cfg, _load(), seed=2)
    reqs = result.requests
    assert all(r.state.terminal for r in reqs)
    retried = [r for r in reqs if r.attempts > 1]
    assert retried, "the failure hit requests in flight; they must have been retried"
    for r in reqs:
        if r.state is State.FAILED:
            assert r.reason
        else:
            assert r.state is State.FINISHED and r.generated == r.output_len
    # While lane 1 is down no request starts decoding on it.
    during = [r for r in reqs if r.state is State.FINISHED and down_at < r.decode_start < down_at + duration]
    assert during and all(r.decode_lane != 1 for r in during)
    # After it comes back it takes work again.
    assert any(r.decode_lane == 1 and r.decode_start > down_at + duration for r in reqs)


def test_prefill_lane_failure_without_recovery_fails_nothing_silently():
    cfg = cluster("streamserve", faults=[{"lane": 0, "at": 10.0, "kind": "down"}])
    result = run(cfg, _load(), seed=3)
    assert all(r.state.terminal for r in result.requests)
    assert all(r.prefill_lane != 0 for r in result.requests if r.prefill_start > 10.0)
    assert sum(r.state is State.FINISHED for r in result.requests) == len(result.requests)


def test_slowdown_stretches_latency_only_while_it_lasts():
    base = run(cluster("vllm-dp"), _load(rate=1.0), seed=1)
    slow = run(cluster("vllm-dp", faults=[{"lane": i, "at": 0.0, "kind": "slow", "factor": 3.0, "duration": 5000.0}
                                          for i in range(4)]), _load(rate=1.0), seed=1)
    assert np.mean([r.tpot for r in slow.requests]) > 2.5 * np.mean([r.tpot for r in base.requests])
