"""The paper's named workloads: lengths, acceptance rates, mixes, and SUM against its source."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from streamserve.workload.datasets import DATASETS, EAGLE2_TAU, SUM_TABLE, QuantileTable, alpha_from_tau, parse_mix
from streamserve.workload.resolve import WorkloadError, resolve_workload

ARXIV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces" / "arxiv_summarization_lengths_llama2.csv"


@pytest.mark.parametrize("name", ["alpaca", "gsm8k", "humaneval", "sum"])
def test_named_workloads_with_rate_or_concurrency(name: str) -> None:
    w = resolve_workload(name, rate=4.0, num_requests=400, seed=5)
    assert len(w) == 400 and w.datasets == (name,) and w.arrival is not None
    assert w.alpha_of(name) == DATASETS[name].alpha
    assert w.prompt_len.min() >= 1 and w.output_len.min() >= 1
    c = resolve_workload(name, concurrency=8, num_requests=80)
    assert c.arrival is None and c.concurrency == 8


def test_alpaca_means_match_the_published_figures() -> None:
    p, o = DATASETS["alpaca"].sample(200_000, np.random.default_rng(0))
    assert p.mean() == pytest.approx(19.31, rel=0.05)  # vLLM (SOSP'23), Fig. 11
    assert o.mean() == pytest.approx(58.45, rel=0.05)


def test_alpha_from_tau_inverts_the_expected_accepted_length() -> None:
    for tau in EAGLE2_TAU.values():
        a = alpha_from_tau(tau)
        assert (1 - a ** 7) / (1 - a) == pytest.approx(tau, rel=1e-6)
    # the ordering EAGLE-2 reports: code highest, summarisation lowest
    order = sorted(DATASETS, key=lambda k: DATASETS[k].alpha)
    assert order[0] == "sum" and order[-1] == "humaneval"


def test_mix_counts_are_exact() -> None:
    w = resolve_workload("mix", num_requests=320, rate=5.0)
    assert w.datasets == ("alpaca", "gsm8k", "humaneval", "sum")
    assert np.bincount(w.dataset, minlength=4).tolist() == [80, 80, 80, 80]  # the paper's 80 per task
    w = resolve_workload("mix:gsm8k=3,sum=1", num_requests=101)
    assert w.datasets == ("gsm8k", "sum") and np.bincount(w.dataset).tolist() == [76, 25]
    sums = w.prompt_len[w.dataset == 1]
    assert sums.mean() > 1000 > w.prompt_len[w.dataset == 0].mean()
    assert w.request(0, 0.0).dataset in ("gsm8k", "sum")


@pytest.mark.parametrize("spec,match", [
    ("mix:alpaca=1,foo=2", "unknown dataset 'foo'"),
    ("mix:alpaca=x", "is not a number"),
    ("mix:alpaca=0", "sum to 0"),
    ("mix:alpaca=-1", "finite number >= 0"),
])
def test_bad_mix(spec: str, match: str) -> None:
    with pytest.raises(WorkloadError, match=match):
        resolve_workload(spec)
    with pytest.raises(ValueError):
        parse_mix(spec)


@pytest.mark.skipif(not ARXIV.exists(), reason=f"shared data absent: {ARXIV}")
def test_sum_table_matches_the_vidur_file() -> None:
    data = np.loadtxt(ARXIV, delimiter=",", skiprows=1, usecols=(0, 1))
    refit = QuantileTable.fit(data[:, 0], data[:, 1])
    np.testing.assert_array_equal(refit.prompt_q, SUM_TABLE.prompt_q)  # the figures in the module are the fit
    np.testing.assert_array_equal(refit.output_q, SUM_TABLE.output_q)
    p, o = SUM_TABLE.sample(50_000, np.random.default_rng(1))
    assert stats.ks_2samp(p, data[:, 0]).statistic < 0.02
    assert stats.ks_2samp(o, data[:, 1]).statistic < 0.02
    assert np.median(p) == pytest.approx(np.median(data[:, 0]), rel=0.02)
    assert np.mean(o) == pytest.approx(np.mean(data[:, 1]), rel=0.06)
    # the joint shape survives: prompt and output are negatively correlated, as in the file
    r_model = stats.spearmanr(p, o).statistic
    r_file = stats.spearmanr(data[:, 0], data[:, 1]).statistic
    assert r_model == pytest.approx(r_file, abs=0.1) and r_model < 0


def test_sum_works_without_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUM's figures live in the module: building it opens no file at all."""
    import builtins

    def no_files(*args, **kwargs):
        raise AssertionError(f"opened a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_files)
    monkeypatch.setattr(Path, "open", no_files)
    monkeypatch.setattr(np, "loadtxt", no_files)
    w = resolve_workload("sum", num_requests=1000, seed=2)
    assert 2400 < np.median(w.prompt_len) < 3000 and 140 < np.median(w.output_len) < 200
