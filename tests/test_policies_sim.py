"""The policies in the simulator: each part of StreamServe beats its ablation where it
has something to adapt to, and the ablation runner reports and writes what it measured.

Figures over more requests and seeds: benchmarks/ablation_scenarios.py (results in
benchmarks/results/). These runs use a few thousand requests so the file stays fast.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from streamserve.config import builtin_cluster
from streamserve.experiments.ablate import VARIANTS, format_table, run_ablation, write_report

pytest.importorskip("simpy")
BASE = builtin_cluster("streamserve")
CAPACITY = {"paper": 7.11, "chat": 6.49, "code": 7.33}  # measure_capacity() on the builtin cluster


def rows(report) -> dict[str, dict]:
    return {r["variant"]: r for r in report["rows"]}


@pytest.mark.parametrize("seed", [0, 1])
def test_flowguard_steers_around_a_slow_decode_lane(seed: int) -> None:
    report = run_ablation(n=3000, seed=seed, scenario="straggler", variants=VARIANTS[:2], capacity=CAPACITY["paper"])
    r = rows(report)
    full, rr = r["streamserve"], r["no-flowguard"]
    assert full["completed"] == rr["completed"] == 3000
    assert full["p99_e2el_ms"] < 0.8 * rr["p99_e2el_ms"]
    assert full["request_goodput"] > 1.1 * rr["request_goodput"]
    assert full["mean_tpot_ms"] < rr["mean_tpot_ms"]


@pytest.mark.parametrize("scenario", ["chat", "code"])
def test_specustream_beats_fixed_depth_when_acceptance_is_off_its_tuning(scenario: str) -> None:
    report = run_ablation(n=3000, seed=0, scenario=scenario, variants=(VARIANTS[0], VARIANTS[2]),
                          capacity=CAPACITY[scenario])
    r = rows(report)
    full, fixed = r["streamserve"], r["no-specustream"]
    assert full["mean_tpot_ms"] < 0.985 * fixed["mean_tpot_ms"]
    assert full["p99_e2el_ms"] < fixed["p99_e2el_ms"]
    assert full["mean_k"] != pytest.approx(4.0, abs=0.3)  # it did move away from the fixed depth


def test_ablation_report_accounts_for_every_request_and_writes_table_and_plot(tmp_path: Path) -> None:
    report = run_ablation(n=800, seed=3, scenario="paper", capacity=CAPACITY["paper"])
    assert [r["variant"] for r in report["rows"]] == [v.name for v in VARIANTS]
    for r in report["rows"]:
        assert r["completed"] + r["rejected"] + r["failed"] == 800
    assert report["rate_rps"] == pytest.approx(0.7 * CAPACITY["paper"])
    table = format_table(report)
    assert table.count("\n") == 1 + len(VARIANTS) and "no-specustream" in table
    paths = write_report(report, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
