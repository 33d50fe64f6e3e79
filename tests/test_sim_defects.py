"""Regression tests for the simulator defects of issue 11 (1-4): each failed on 558d8f0.

Each run must account for every request exactly once, end it with a reason when it did
not finish, and produce a summary that is valid JSON."""
from __future__ import annotations

import json

import numpy as np

from helpers import cluster, workload
from streamserve.metrics import summarize
from streamserve.request import State
from streamserve.sim import run
from streamserve.workload.base import Workload

FCFS = {"scheduler": {"name": "fcfs"}, "router": {"name": "round_robin"}}


def _closed(n: int, clients: int, think: float = 0.0, prompt: int = 300, output: int = 20) -> Workload:
    return Workload(name="closed", prompt_len=np.full(n, prompt), output_len=np.full(n, output), arrival=None,
                    dataset=np.zeros(n, dtype=np.int16), concurrency=clients, think_time=think)


def _accounted(result, n: int) -> None:
    ids = sorted(r.id for r in result.requests)
    assert ids == list(range(n))  # each exactly once
    for r in result.requests:
        assert r.state.terminal and (r.state is State.FINISHED or r.reason), (r.id, r.state, r.reason)
        assert "stuck" not in r.reason, r.reason
    json.dumps(summarize(result), allow_nan=False)


def test_1_a_decode_lane_failing_under_transfers_requeues_each_request_once():
    # 1P1D, decode KV for three requests, so others wait for blocks with their KV held
    # on the prefill lane; the decode lane then fails. On main both the prefill lane's
    # held KV and the decode lane's incoming list handed the same request back.
    # A second decode lane stays up: with none, the policy fails what the dead lane held.
    lanes = [{"role": "prefill"}, {"role": "decode", "engine": {"kv_capacity_tokens": 4000}},
             {"role": "decode", "engine": {"kv_capacity_tokens": 4000}}]
    n = 15
    cfg = cluster("streamserve", lanes=lanes, faults=[{"lane": 1, "at": 1.0, "kind": "down", "duration": 5.0}], **FCFS)
    result = run(cfg, workload([1000] * n, [200] * n, np.linspace(0, 1.4, n)), seed=0)
    _accounted(result, n)
    assert all(r.state is State.FINISHED for r in result.requests)
    assert any(r.attempts > 1 for r in result.requests)


def test_2_closed_loop_with_think_time_and_no_decode_lane_loses_nothing():
    n = 60
    faults = [{"lane": lane, "at": 3.1, "kind": "down"} for lane in (1, 3)]  # both decode lanes, for good
    result = run(cluster("streamserve", faults=faults), _closed(n, clients=4, think=0.5), seed=0)
    _accounted(result, n)
    assert any(r.state is State.FAILED for r in result.requests)


def test_3_stream_pairs_with_one_client_settle_each_request_once():
    n = 20
    cfg = cluster("streamserve", scheduler={"name": "stream", "pairing": "pairs"},
                  faults=[{"lane": 0, "at": 1.0, "kind": "down"}, {"lane": 2, "at": 1.0, "kind": "down"}])
    result = run(cfg, _closed(n, clients=1), seed=0)
    _accounted(result, n)


def test_3_all_prefill_lanes_down_with_a_bounded_queue():
    # main: RuntimeError "<Event> has already been triggered" from a re-entrant settle
    n = 20
    cfg = cluster("streamserve", scheduler={"name": "stream", "max_pending": 10},
                  faults=[{"lane": 0, "at": 0.5, "kind": "down"}, {"lane": 2, "at": 0.5, "kind": "down"}])
    result = run(cfg, _closed(n, clients=1), seed=0)
    _accounted(result, n)
    assert any(r.state is State.REJECTED for r in result.requests) or any(
        r.state is State.FAILED for r in result.requests)


def test_4_a_long_closed_loop_of_failing_requests_does_not_recurse():
    # Every request is too long for the lane's KV, so each fails the moment it arrives;
    # on main the next arrival was made inside that settle, one stack frame deeper each.
    n = 3000
    result = run(cluster("vllm-dp", engine={"kv_capacity_tokens": 1000}), _closed(n, clients=1, prompt=1500), seed=0)  # within the 2,048-token window
    _accounted(result, n)
    assert all(r.state is State.FAILED and "KV tokens" in r.reason for r in result.requests)


def test_kv_in_flight_to_a_lane_that_fails_is_requeued_not_lost():
    # Found by the property test in a first version of sim/handoff.py (main passes it): a
    # transfer under way to a decode lane that fails must give its request back.
    lanes = [{"role": "prefill"}, {"role": "decode"}, {"role": "decode"}]  # one decode lane stays up
    cfg = cluster("streamserve", lanes=lanes, link={"bandwidth_gbps": 1.0, "latency_ms": 0.1},
                  faults=[{"lane": 1, "at": 0.5, "kind": "down", "duration": 1.0}], **FCFS)
    result = run(cfg, workload([1000, 1000], [20, 20], [0.0, 0.05]), seed=0)
    _accounted(result, 2)
    assert all(r.state is State.FINISHED for r in result.requests)
    again = [r for r in result.requests if r.attempts == 2]
    assert again and all(r.decode_lane == 2 for r in again)  # given back, placed on the lane still up
