"""Arrival processes: measured burstiness matches the configured CV; replay scaling; closed loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamserve.workload import arrivals
from streamserve.workload.arrivals import MMPP2, cv_of
from streamserve.workload.resolve import WorkloadError, resolve_workload

N = 100_000


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_cv_within_10_percent(cv: float) -> None:
    t = arrivals.gamma(N, rate=7.0, cv=cv, rng=np.random.default_rng(11))
    assert cv_of(t) == pytest.approx(cv, rel=0.10)
    assert N / t[-1] == pytest.approx(7.0, rel=0.05)


@pytest.mark.parametrize("cv,duty", [(1.5, 0.5), (2.0, 0.2), (3.0, 0.5), (4.0, 0.8)])
def test_onoff_cv_within_10_percent(cv: float, duty: float) -> None:
    process = MMPP2.from_cv(rate=5.0, cv=cv, duty=duty)
    assert process.cv() == pytest.approx(cv, rel=1e-9)  # the closed form and the MAP moments agree
    assert process.mean_rate == pytest.approx(5.0)
    t = process.sample(N, np.random.default_rng(12))
    assert len(t) == N and np.all(np.diff(t) >= 0)
    assert cv_of(t) == pytest.approx(cv, rel=0.10)
    assert N / t[-1] == pytest.approx(5.0, rel=0.10)


def test_general_mmpp_matches_its_computed_cv() -> None:
    process = MMPP2(on_rate=30.0, off_rate=2.0, on_s=1.0, off_s=4.0)
    t = process.sample(N, np.random.default_rng(13))
    assert cv_of(t) == pytest.approx(process.cv(), rel=0.10)
    assert N / t[-1] == pytest.approx(process.mean_rate, rel=0.10)
    faster = process.scaled(3.0)
    assert faster.cv() == pytest.approx(process.cv()) and faster.mean_rate == pytest.approx(3 * process.mean_rate)


def test_onoff_needs_cv_above_one() -> None:
    with pytest.raises(ValueError, match="need cv > 1"):
        MMPP2.from_cv(5.0, 0.8)
    with pytest.raises(WorkloadError, match="^--cv: an on/off process"):
        resolve_workload("gsm8k", arrival="onoff", cv=0.8)
    with pytest.raises(WorkloadError, match="^--cv: required with --arrival gamma"):
        resolve_workload("gsm8k", arrival="gamma")


def test_poisson_rate_and_cv() -> None:
    w = resolve_workload("alpaca", num_requests=N, rate=9.0, seed=3)
    assert N / w.arrival[-1] == pytest.approx(9.0, rel=0.03)
    assert cv_of(w.arrival) == pytest.approx(1.0, rel=0.05)


def test_replay_time_scaling(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    times = [0, 1, 3, 4, 10]  # 4 gaps over 10 s: 0.4 requests/s
    path.write_text("arrival,prompt_len,output_len\n" + "".join(f"{t},{10 + t},5\n" for t in times))
    w = resolve_workload(str(path))
    np.testing.assert_allclose(w.arrival, times)
    w = resolve_workload(str(path), rate=2.0)  # 5x faster
    np.testing.assert_allclose(w.arrival, np.array(times) / 5)
    w = resolve_workload(str(path), arrival="poisson", rate=50.0)  # lengths kept, times regenerated
    np.testing.assert_array_equal(w.prompt_len, [10, 11, 13, 14, 20])
    assert not np.allclose(w.arrival, times)


def test_replay_needs_timestamps() -> None:
    with pytest.raises(WorkloadError, match="^--arrival replay: gsm8k has no timestamps"):
        resolve_workload("gsm8k", arrival="replay")


def test_closed_loop() -> None:
    warnings: list[str] = []
    w = resolve_workload("humaneval", concurrency=16, num_requests=200, arrival="poisson", warn=warnings.append)
    assert w.arrival is None and w.concurrency == 16 and len(w) == 200
    assert warnings and "ignored with --concurrency" in warnings[0]
