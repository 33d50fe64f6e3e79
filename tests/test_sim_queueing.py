"""A one-at-a-time lane with deterministic service is an M/D/1 queue."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import cluster, workload
from streamserve.perfmodel import Profile
from streamserve.sim import run


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mean_queueing_delay_matches_pollaczek_khinchine(rho):
    prompt, output, n = 600, 30, 30_000
    perf = Profile.load().lane("opt-13b", "A100-80GB", 1, role="colocated")
    service = perf.prefill_time(prompt, prompt**2) + sum(perf.decode_time(1, prompt + j - 1) for j in range(1, output))
    rate = rho / service
    rng = np.random.default_rng(7)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    cfg = cluster("vllm-dp", lanes=[{"role": "colocated", "tp": 1}], engine={"max_num_seqs": 1})
    result = run(cfg, workload([prompt] * n, [output] * n, arrivals))
    wq = np.mean([r.queue_delay for r in result.requests])
    expected = rho * service / (2 * (1 - rho))
    assert wq == pytest.approx(expected, rel=0.10)
    # service itself is deterministic: E2E minus queueing is the same for everyone
    assert np.ptp([r.e2e - r.queue_delay for r in result.requests]) < 1e-9
