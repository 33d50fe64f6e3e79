"""On an idle cluster a lone request takes exactly what the performance model says."""
from __future__ import annotations

import pytest

from helpers import cluster, workload
from streamserve.perfmodel import Profile, transfer_time
from streamserve.sim import run

PERF = Profile.load().lane("opt-13b", "A100-80GB", 1)


@pytest.mark.parametrize("prompt,output", [(500, 40), (2000, 1), (1, 7)])
def test_disaggregated_single_request(prompt, output):
    # The disaggregated path: with local prefill, a prompt within one KV block would be
    # prefilled on the decode lane.
    cfg = cluster("streamserve", spec_policy={"name": "fixed", "k": 0},
                  router={"name": "flowguard", "local_prefill": False})
    r = run(cfg, workload([prompt], [output], [2.0])).requests[0]
    prefill = PERF.prefill_time(prompt, prompt * prompt)
    assert r.prefill_end - r.arrival == pytest.approx(prefill, rel=1e-9)
    if output == 1:  # the prefill's token is the whole answer: it goes to the client from there
        assert r.ttft == pytest.approx(prefill, rel=1e-9) and r.e2e == pytest.approx(prefill, rel=1e-9)
        return
    link = cfg.link
    xfer = transfer_time(PERF.kv_bytes(prompt), link.bandwidth_gbps, link.latency_ms)
    # As vLLM's decode engine does, the decode lane samples the first token again from the
    # loaded KV (step j makes token j over a KV of prompt + j - 1 tokens): the client's
    # first token comes after the hand-off and that first step.
    steps = [PERF.decode_time(1, prompt + j - 1) for j in range(1, output + 1)]
    assert r.ttft == pytest.approx(prefill + xfer + steps[0], rel=1e-9)
    assert r.e2e == pytest.approx(prefill + xfer + sum(steps), rel=1e-9)
    assert r.transfer_delay == pytest.approx(xfer, rel=1e-9)
    assert r.generated == output


def test_colocated_chunked_prefill_single_request():
    prompt, output, budget = 10_000, 20, 8192  # a model whose context window holds it
    cfg = cluster("vllm-dp", model="qwen2.5-7b")
    perf = Profile.load().lane("qwen2.5-7b", "A100-80GB", 1, role="colocated")
    r = run(cfg, workload([prompt], [output], [0.5])).requests[0]
    rest = prompt - budget
    # chunk 1 is a plain prefill, chunk 2 attends over the first chunk's KV too
    ttft = perf.prefill_time(budget, budget**2) + perf.prefill_time(rest, rest * (2 * budget + rest))
    assert r.ttft == pytest.approx(ttft, rel=1e-9)
    decode = sum(perf.decode_time(1, prompt + j - 1) for j in range(1, output))
    assert r.e2e == pytest.approx(ttft + decode, rel=1e-9)


def test_tensor_parallel_lane_uses_tp4_coefficients():
    perf4 = Profile.load().lane("opt-13b", "A100-80GB", 4, role="colocated")
    r = run(cluster("vllm-tp"), workload([800], [2], [0.0])).requests[0]
    assert r.ttft == pytest.approx(perf4.prefill_time(800, 800**2), rel=1e-9)
    assert r.e2e == pytest.approx(perf4.prefill_time(800, 800**2) + perf4.decode_time(1, 800), rel=1e-9)
