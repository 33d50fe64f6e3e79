"""Colocated step modes (engine ``scheduling``): vLLM v1's mixed chunked-prefill steps
against vLLM v0's prefill-first steps, as in DistServe's vLLM baseline."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import cluster, workload
from streamserve.perfmodel import Profile
from streamserve.sim import run


def _run(mode: str):
    rng = np.random.default_rng(2)
    n = 300
    cfg = cluster("vllm-dp", lanes=[{"role": "colocated"}], engine={"scheduling": mode})
    return run(cfg, workload(rng.integers(200, 1500, n), rng.integers(50, 200, n), np.cumsum(rng.exponential(0.5, n))),
               seed=3)


def test_prefill_first_trades_decode_speed_for_first_tokens():
    mixed, first = _run("mixed"), _run("prefill_first")
    assert all(r.state.value == "finished" for r in mixed.requests + first.requests)
    ttft = {name: np.mean([r.ttft for r in res.requests]) for name, res in (("mixed", mixed), ("first", first))}
    tpot = {name: np.mean([r.tpot for r in res.requests]) for name, res in (("mixed", mixed), ("first", first))}
    assert ttft["first"] < ttft["mixed"]  # prompts never wait behind the decode batch ...
    assert tpot["first"] > 1.05 * tpot["mixed"]  # ... while decodes stall during prefill-only steps
    # the stalls show up in the inter-token gaps too: ITL mean matches TPOT
    assert first.itl.mean > mixed.itl.mean


def test_a_prompt_arriving_during_decode_runs_alone_in_prefill_first():
    perf = Profile.load().lane("opt-13b", "A100-80GB", 1, role="colocated")
    cfg = cluster("vllm-dp", lanes=[{"role": "colocated"}], engine={"scheduling": "prefill_first"},
                  spec_policy={"name": "fixed", "k": 0})
    a, b = run(cfg, workload([500, 300], [40, 5], [0.0, 0.5])).requests
    # b's prompt is a step of its own: its first token takes exactly one prefill step
    # after the decode step under way when it arrived.
    start = b.prefill_start
    assert b.first_token - start == pytest.approx(perf.prefill_time(300, 300 * 300), rel=1e-9)
    assert a.state.value == "finished" and a.generated == 40


def test_scheduling_is_validated():
    with pytest.raises(ValueError, match="scheduling"):
        cluster("vllm-dp", engine={"scheduling": "sjf"})
