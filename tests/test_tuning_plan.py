"""`streamserve plan`: every placement in the budget, ranked as a brute-force scan of rates
ranks them; one-line errors and a plain "no placement meets the SLO"."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from streamserve.cli import main
from streamserve.config import builtin_cluster
from streamserve.request import SLO
from streamserve.tuning.evaluate import RunTask, WorkloadArgs, evaluate_run
from streamserve.tuning.placement import fitting_tps, lane_perfs, placements, run_plan

FIXED = "random:input_len=512,output_len=128,range_ratio=0"  # DistServe's fixed-length check
SLO_ = SLO(0.5, 0.06)
STEP = 1.0  # req/s: the brute force's rate grid


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def brute_force_rate(cluster, workload: WorkloadArgs, target: float) -> float:
    """The last rate on a grid below the first rate that misses the target."""
    rate = STEP
    while True:
        r = evaluate_run(RunTask(cluster.model_dump(), workload, 0, (SLO_.ttft, SLO_.tpot), ("attainment",),
                                 rate=rate))
        if r.values["attainment"] < target:
            return rate - STEP
        rate += STEP


def test_enumeration_covers_every_placement_in_the_budget():
    got = {(p.colocated, p.prefill, p.prefill_tp, p.decode, p.decode_tp, p.paired) for p in placements(4, [1, 2, 4])}
    want = set()
    for tp in (1, 2, 4):
        want |= {(True, n, tp, 0, 0, False) for n in range(1, 4 // tp + 1)}
    for tp_p in (1, 2, 4):
        for tp_d in (1, 2, 4):
            for p in range(1, 5):
                for d in range(1, 5):
                    if p * tp_p + d * tp_d <= 4:
                        want.add((False, p, tp_p, d, tp_d, False))
                        if p == d > 1:
                            want.add((False, p, tp_p, d, tp_d, True))
    assert got == want and len(got) == 19
    assert all(p.gpus <= 4 for p in placements(4, [1, 2, 4]))


def test_plan_ranks_placements_as_a_brute_force_scan_does():
    base = builtin_cluster("streamserve")
    workload = WorkloadArgs(FIXED, num_requests=120)
    plan = run_plan(base, 2, workload, (0,), SLO_, 0.9, tolerance=0.02)
    assert {r.placement.name for r in plan} == {"1 colocated x TP1", "2 colocated x TP1", "1 colocated x TP2",
                                                "1P x TP1 + 1D x TP1"}
    assert all(r.error is None and r.max_rate > 0 for r in plan)
    brute = {r.placement.name: brute_force_rate(r.placement.cluster(base), workload, 0.9) for r in plan}
    for r in plan:  # bisection lands between the grid's last hit and its first miss
        assert brute[r.placement.name] - 0.05 <= r.max_rate <= brute[r.placement.name] + STEP + 0.05, r.placement.name
    per_gpu = [brute[r.placement.name] / r.placement.gpus for r in plan]
    for i in range(len(plan)):  # plan's order is the brute force's, up to the grid's resolution
        for j in range(i + 1, len(plan)):
            assert per_gpu[i] >= per_gpu[j] - STEP, (plan[i].placement.name, plan[j].placement.name, per_gpu)
    assert max(per_gpu) - per_gpu[0] <= STEP / 2


def test_plan_cli_writes_a_cluster_file_that_simulates(tmp_path, capsys):
    out = tmp_path / "plan"
    assert run_cli(["plan", "--gpus", "2", "--workload", FIXED, "-n", "100", "--slo", "ttft:500,tpot:60",
                    "--tolerance", "0.05", "-q", "--out", str(out)]) == 0
    assert "best: " in capsys.readouterr().out
    assert (out / "plan.png").stat().st_size > 1000 and len((out / "plan.csv").read_text().splitlines()) == 5
    assert run_cli(["simulate", "--config", str(out / "best.yaml"), "-n", "50", "-q", "--out", str(tmp_path / "s")]) == 0


def test_an_slo_no_placement_meets_is_a_plain_result(tmp_path, capsys):
    code = run_cli(["plan", "--gpus", "1", "--workload", FIXED, "-n", "50", "--slo", "ttft:1", "-q",
                    "--out", str(tmp_path / "p")])
    out = capsys.readouterr()
    assert code == 1 and "no placement meets the SLO" in out.out and "Traceback" not in out.err
    assert not (tmp_path / "p" / "best.yaml").exists()


def test_a_budget_too_small_for_the_model_is_one_line(tmp_path, capsys):
    # Llama-3-70B's ~141 GB of weights need two A100-80GB (roofline: the profile has no entry)
    assert run_cli(["plan", "--model", "llama-3-70b", "--gpu", "A100-80GB", "--gpus", "1", "--workload", FIXED,
                    "--slo", "ttft:500", "-q", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: --gpus 1: llama-3-70b does not fit") and "needs TP 2" in err and err.count("\n") == 1


def test_plan_offers_every_power_of_two_tp_from_the_roofline_when_the_profile_has_none():
    perfs = lane_perfs("llama-3-8b", "A800-40GB", None, 4)  # the paper's setting: no fitted entry
    assert sorted(perfs) == [1, 2, 4] and all(p.source.startswith("roofline") for p in perfs.values())
    assert fitting_tps(perfs, 0.9, 8192) == [1, 2, 4]
    assert sorted(lane_perfs("llama-3-8b", "A800-40GB", None, 6)) == [1, 2, 4]
    big = lane_perfs("llama-3-70b", "A800-40GB", None, 8)
    assert fitting_tps(big, 0.9, 2048) == [4, 8]  # 141 GB of weights: not on 1 or 2 x 40 GB


def test_a_fitted_profile_entry_wins_over_the_roofline_for_the_lane_role(tmp_path):
    profile = json.loads(resources.files("streamserve.profiles").joinpath("default-a100.json").read_text())
    entry = next(e for e in profile["entries"] if e["tp"] == 2)
    entry["roles"]["prefill"]["prompt"]["overhead_ms"] = 123.0  # only the prefill role's prompt set
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(profile))
    prefill = lane_perfs("opt-13b", "A100-80GB", str(path), 8, role="prefill")
    decode = lane_perfs("opt-13b", "A100-80GB", str(path), 8, role="decode")
    assert sorted(prefill) == [1, 2, 4, 8]
    assert all(prefill[tp].source.startswith("profile") for tp in (1, 2, 4)) and prefill[8].source.startswith("roofline")
    assert prefill[2].prompt.overhead_ms == 123.0 and decode[2].prompt.overhead_ms != 123.0


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-7b"], "unknown model 'llama-7b'"),
    (["--slo", "ttft:-5"], "ttft"),
])
def test_unknown_model_or_bad_slo_is_one_line(tmp_path, capsys, args, message):
    base = ["plan", "--gpus", "2", "--workload", FIXED, "-q", "--out", str(tmp_path / "p")]
    assert run_cli(base + (args if "--slo" in args else args + ["--slo", "ttft:500"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
