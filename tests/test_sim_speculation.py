"""Speculative steps emit, on average, (1 - alpha^(k+1)) / (1 - alpha) tokens."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import cluster, workload
from streamserve.sim import run


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.8, 0.9])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_tokens_per_step_match_the_acceptance_model(alpha, k):
    n = 200
    cfg = cluster("streamserve", speculation={"method": "draft", "k_max": 8}, spec_policy={"name": "fixed", "k": k})
    result = run(cfg, workload([100] * n, [400] * n, np.arange(n) * 0.05, alpha=alpha), seed=3)
    drafted = sum(u.drafted for u in result.lanes)
    accepted = sum(u.accepted for u in result.lanes)
    tokens_per_step = 1 + k * accepted / drafted
    expected = (1 - alpha ** (k + 1)) / (1 - alpha)
    assert tokens_per_step == pytest.approx(expected, rel=0.02)
    assert all(r.generated == 400 for r in result.requests)


def test_no_speculation_means_one_token_per_step():
    cfg = cluster("streamserve", spec_policy={"name": "fixed", "k": 0})
    result = run(cfg, workload([50] * 20, [30] * 20, np.arange(20) * 0.1))
    assert sum(u.drafted for u in result.lanes) == 0
    # one ITL sample per token after the first
    assert result.itl.n == 20 * 29
