"""The policies in the simulator, on the ablation's bursty workload (the paper's four
datasets, gamma arrivals with CV 3 at 70% of the measured capacity).

Figures over more requests and seeds: benchmarks/ablation_scenarios.py (results in
benchmarks/results/). These runs use a few thousand requests so the file stays fast.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from streamserve.config import builtin_cluster
from streamserve.experiments.ablate import VARIANTS, format_table, run_ablation, write_report

pytest.importorskip("simpy")

# The paper's setup (as benchmarks/ablation_scenarios.py): OPT-13B's 2,048-token window
# would turn most SUM requests away. Thresholds re-measured with the token-based step
# model (issue 12); the means over 3 seeds x 10,000 requests are in
# benchmarks/results/ablation_scenarios.md.
PAPER = builtin_cluster("streamserve").model_copy(update={"model": "llama-3-8b", "gpu": "A800-40GB"})


def rows(report) -> dict[str, dict]:
    return {r["variant"]: r for r in report["rows"]}


@pytest.mark.parametrize("seed", [0, 1])
def test_full_streamserve_beats_fixed_k_and_round_robin_on_a_symmetric_cluster(seed: int) -> None:
    r = rows(run_ablation(n=4000, seed=seed, scenario="paper", variants=VARIANTS[:3], base=PAPER))
    full, rr, fixed = r["streamserve"], r["no-flowguard"], r["no-specustream"]
    assert all(x["completed"] == 4000 for x in (full, rr, fixed))
    # SpecuStream: faster decoding, a shorter tail, more requests within a tight TPOT SLO.
    assert full["p99_e2el_ms"] < fixed["p99_e2el_ms"]
    assert full["mean_tpot_ms"] < 0.95 * fixed["mean_tpot_ms"]
    assert full["request_goodput_tight"] > fixed["request_goodput_tight"]
    # FlowGuard: prefilling short prompts on decode lanes during bursts cuts TTFT. Those
    # prompts are capped (local_max_prompt: 64) so that the decode stalls they cause do
    # not lengthen the tail of long outputs: one run's p99 E2E is round-robin's within
    # noise here. With the token-based step model and the client's TTFT the goodput edge
    # is small: +1.9%, and +1.1% under the tight SLO, over 3 seeds x 10,000 requests
    # (benchmarks/results/ablation_scenarios.md); these 4000-request runs give +1.0%
    # (seed 0) and +1.5% (seed 1) under the tight SLO, so 0.5% is the bar.
    assert full["p99_ttft_ms"] < 0.97 * rr["p99_ttft_ms"]
    assert full["request_goodput"] > rr["request_goodput"]
    assert full["request_goodput_tight"] > 1.005 * rr["request_goodput_tight"]
    assert full["p99_e2el_ms"] < 1.05 * rr["p99_e2el_ms"]


@pytest.mark.parametrize("seed", [0, 1])
def test_full_streamserve_beats_both_ablations_with_a_straggler(seed: int) -> None:
    r = rows(run_ablation(n=4000, seed=seed, scenario="straggler", variants=VARIANTS[:3], base=PAPER))
    full, rr, fixed = r["streamserve"], r["no-flowguard"], r["no-specustream"]
    assert all(x["completed"] == 4000 for x in (full, rr, fixed))
    assert full["p99_e2el_ms"] < 0.97 * rr["p99_e2el_ms"]
    assert full["p99_e2el_ms"] < 0.97 * fixed["p99_e2el_ms"]
    assert full["mean_tpot_ms"] < 0.85 * rr["mean_tpot_ms"]
    assert full["request_goodput"] > rr["request_goodput"]
    assert full["request_goodput_tight"] > 1.02 * fixed["request_goodput_tight"]


def test_ablation_report_accounts_for_every_request_and_writes_table_and_plot(tmp_path: Path) -> None:
    report = run_ablation(n=800, seed=3, scenario="paper", capacity=14.0)
    assert [r["variant"] for r in report["rows"]] == [v.name for v in VARIANTS]
    for r in report["rows"]:
        assert r["completed"] + r["rejected"] + r["failed"] == 800
    assert report["rate_rps"] == pytest.approx(0.7 * 14.0)
    table = format_table(report)
    assert table.count("\n") == 1 + len(VARIANTS) and "no-specustream" in table
    paths = write_report(report, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
