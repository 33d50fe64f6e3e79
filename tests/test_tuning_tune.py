"""`streamserve tune`: files written, best.yaml accepted by simulate, resumable, reproducible
wherever the runs go, and one-line errors for bad input."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import streamserve
from tuning_helpers import trial_values

from streamserve.cli import main
from streamserve.tuning.evaluate import Estimate
from streamserve.tuning.runners import LocalPool

BASE = ["tune", "--workload", "mix", "--arrival", "gamma", "--cv", "3", "--rate", "10", "-n", "120",
        "--seeds", "2", "--validation-seeds", "2", "--slo", "ttft:1000,tpot:50", "--batch", "2", "-q"]
TUNE = BASE + ["--param", "router.w_latency", "--param", "router.local_max_prompt"]
DP = str(Path(streamserve.__file__).parent / "configs" / "vllm-dp.yaml")


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def test_tune_writes_its_files_and_best_yaml_simulates(tmp_path, capsys):
    out = tmp_path / "t"
    live = Path(streamserve.__file__).parent / "configs" / "live-cpu.yaml"
    assert run_cli(TUNE + ["--trials", "4", "--out", str(out), "--live-config", str(live)]) == 0
    text = capsys.readouterr().out
    assert "unseen seeds" in text and "winner: trial" in text
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["router.w_latency"] == "1.0" and rows[0]["router.local_max_prompt"] == "64"  # shipped first
    for r in rows:
        per_seed = [float(v) for v in r["goodput_per_seed"].split(";")]
        assert len(per_seed) == 2 and float(r["goodput_mean"]) == pytest.approx(sum(per_seed) / 2, rel=1e-5)
    assert (out / "tune.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation_seeds"] == [1_000_000, 1_000_001]
    winner = summary["validated"][0]
    best = (out / "best.yaml").read_text()
    assert f"trial {winner['trial']}" in best
    assert run_cli(["simulate", "--config", str(out / "best.yaml"), "-n", "50", "-q", "--out", str(tmp_path / "s")]) == 0
    from streamserve.gpu.config import load_live

    tuned = load_live(out / "best-live.yaml")  # what serve --config reads
    assert tuned.router.w_latency == pytest.approx(float(winner["params"]["router.w_latency"]))
    assert tuned.engines == load_live(live).engines

    # resumed: the 4 stored trials are kept, 2 more are run
    assert run_cli(TUNE + ["--trials", "6", "--out", str(out)]) == 0
    rows2 = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows2) == 6 and rows2[:4] == rows


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "t"
    assert run_cli(TUNE + ["--trials", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert run_cli(TUNE + ["--trials", "2", "--out", str(out), "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings" in err


@pytest.mark.parametrize("args, message", [
    (TUNE + ["--param", "router.w_foo"], "not a parameter of router 'flowguard'"),
    (TUNE + ["--param", "router.w_kv=float 2 1"], "LOW must be <= HIGH"),
    (BASE + ["--config", DP], "nothing to tune"),
    (TUNE + ["--objective", "goodput", "--objective", "p99_e2e", "--objective", "mean_tpot"], "--objective"),
    (TUNE + ["--workload", "no-such-file.csv"], "no-such-file"),
    (TUNE + ["--param", "router.w_kv=float -2 -1"], "no trial finished"),  # FlowGuard refuses every value
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert run_cli(args + ["--trials", "1", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_two_objectives_give_a_pareto_front(tmp_path, capsys):
    out = tmp_path / "p"
    assert run_cli(TUNE + ["--trials", "4", "--out", str(out), "--objective", "goodput",
                           "--objective", "p99_e2e"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    front = summary["validated"]
    assert 1 <= len(front) <= 4 and all("p99_e2e" in v["tuned"] for v in front)
    searched = {int(r["trial"]): float(r["goodput_mean"]) for r in csv.DictReader(open(out / "trials.csv"))}
    goodput = [searched[v["trial"]] for v in front]
    assert goodput == sorted(goodput, reverse=True)  # best first by the first objective


def test_a_trial_gives_the_same_values_in_this_process_and_in_a_process_pool():
    inline = trial_values(LocalPool(1))
    pool = LocalPool(2)
    try:
        pooled = trial_values(pool)
    finally:
        pool.close()
    assert pooled == inline
    assert len({json_key(p) for _, p, _ in inline}) == 4  # the sampler did propose different points


def json_key(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


def test_estimate_is_mean_with_a_student_t_interval():
    e = Estimate.of([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.half_width == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(Estimate.of([5.0]).half_width)
