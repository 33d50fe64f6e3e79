"""Properties every simulated run must have, whatever the workload and cluster."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import cluster, workload
from streamserve.request import State
from streamserve.specs import MODELS
from streamserve.sim import Cluster

ARCHES = ("streamserve", "vllm-tp", "vllm-dp")


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 40))
    prompts = draw(st.lists(st.integers(1, 3000), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    gaps = draw(st.lists(st.floats(0, 0.5), min_size=n, max_size=n))
    arch = draw(st.sampled_from(ARCHES))
    # Small KV and batch limits force queueing, chunking and recompute preemption.
    engine = {
        "max_num_seqs": draw(st.integers(1, 16)),
        "max_num_batched_tokens": draw(st.integers(64, 4096)),
        "kv_capacity_tokens": draw(st.integers(3400, 20000)),
        "block_size": draw(st.sampled_from([1, 16, 32])),
        "enable_chunked_prefill": draw(st.booleans()),
    }
    k = draw(st.integers(0, 6))
    alpha = draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    seed = draw(st.integers(0, 2**16))
    return arch, engine, k, alpha, seed, prompts, outputs, np.cumsum(gaps)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_request_settles_once_with_consistent_timestamps(scenario):
    arch, engine, k, alpha, seed, prompts, outputs, arrivals = scenario
    spec = {"method": "draft", "draft_model": "small-model", "k_max": 8} if k else {"method": "none", "k_max": 4}
    cfg = cluster(arch, engine=engine, speculation=spec, spec_policy={"name": "fixed", "k": k})
    w = workload(prompts, outputs, arrivals, alpha=alpha)
    settled: list[int] = []
    result = Cluster(cfg, w, seed, on_settled=lambda req, _: settled.append(req.id)).run()

    assert sorted(settled) == list(range(len(prompts)))  # each exactly once
    assert all(u.peak_kv_usage <= 1.0 for u in result.lanes)  # the lanes' high-water mark of used blocks
    for r in result.requests:
        need = r.prompt_len + r.output_len
        infeasible = need > engine["kv_capacity_tokens"] // engine["block_size"] * engine["block_size"] or (
            not engine["enable_chunked_prefill"] and need > engine["max_num_batched_tokens"])
        if need > MODELS[cfg.model].max_model_len:  # beyond the context window: rejected, as vLLM answers 400
            assert r.state is State.REJECTED and "context window" in r.reason, (r.id, r.state)
            continue
        if infeasible:  # vLLM would refuse it too; it must say why
            assert r.state is State.FAILED and r.reason, (r.id, r.state)
            continue
        assert r.state is State.FINISHED, (r.id, r.state, r.reason)
        assert r.generated == r.output_len
        times = [r.arrival, r.prefill_start, r.prefill_end, r.decode_start, r.finish]
        assert not any(math.isnan(t) for t in times)
        assert times == sorted(times), times
        assert r.prefill_end <= r.first_token <= r.finish
        assert r.ttft <= r.e2e
    assert result.itl.n == 0 or result.itl.counts.sum() == result.itl.n
