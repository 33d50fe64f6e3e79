"""profile / calibrate / fidelity without engines: the profile directory, one-line
errors, the grid, the simulated twin of a live config, and --max-error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamserve.calibration import records
from streamserve.calibration.fidelity import (Calibration, FidelityError, bound_violations, check_profile_covers,
                                              cluster_from_live)
from streamserve.calibration.grid import build_grid
from streamserve.cli import main
from streamserve.gpu.config import parse_live
from streamserve.perfmodel import Profile
from streamserve.sim import run
from test_calibration_fit import synthetic_steps

SMOLLM2 = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
           "intermediate_size": 1536, "vocab_size": 49152, "dtype": "float32"}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def model_folder(tmp_path, hf=SMOLLM2):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    return folder


def live_config(tmp_path, **changes):
    data = {"name": "t", "model": str(model_folder(tmp_path)), "device": "cpu", "dtype": "float32",
            "block_size": 32, "cpu_kvcache_space_gib": 1, "log_dir": str(tmp_path / "logs"),
            "engines": [{"role": "prefill", "port": 8391, "max_num_seqs": 8},
                        {"role": "decode", "port": 8392, "max_num_seqs": 16,
                         "extra_args": ["--max-num-batched-tokens", "1024"]}],
            "speculation": {"method": "ngram", "k_max": 3}, "frontend": {"port": 8390},
            "scheduler": {"name": "stream"}, "router": {"name": "flowguard"}, "spec_policy": {"name": "specustream"},
            "perf": {"model": "smollm2-135m", "gpu": "cpu"}}
    data.update(changes)
    path = tmp_path / "live.yaml"
    path.write_text(json.dumps(data))
    return path, parse_live(data, "t")


def profile_dir(tmp_path, n=600, model="smollm2-135m"):
    folder = tmp_path / "prof"
    folder.mkdir()
    meta = {"format": records.FORMAT, "version": records.VERSION, "model": "/m", "served_model_name": "m",
            "perf_model": model, "gpu": "cpu", "device": "cpu", "dtype": "float32",
            "lanes": [{"lane": 0, "role": "prefill", "tp": 1, "max_num_seqs": 8},
                      {"lane": 1, "role": "decode", "tp": 1, "max_num_seqs": 16}],
            "speculation": {"method": "ngram", "k_max": 4}, "kv_bytes_per_token": 46080}
    (folder / records.META).write_text(json.dumps(meta))
    cols = synthetic_steps(n, noise=0.01)
    rows = []
    for i in range(n):
        row = {f: (str(cols[f][i]) if f in ("dataset", "role") else float(cols[f][i]))
               for f in records.STEP_FIELDS if f in cols}
        row.update(lane=1, cell="c0", dt=float(cols["dt"][i]), t=0.0)
        rows.append(row)
    records.write_jsonl(folder / records.STEPS, rows)
    records.write_jsonl(folder / records.CELLS, [{"id": "c0", "steps": n}])
    return folder


def test_calibrate_writes_a_profile_the_simulator_loads(tmp_path, capsys):
    folder = profile_dir(tmp_path)
    out = tmp_path / "p.json"
    code, stdout, _ = run_cli(["calibrate", str(folder), "--out", str(out)], capsys)
    assert code == 0
    assert "held-out" in stdout and "decode.per_ctx_ms" in stdout and "acceptance per class" in stdout
    assert (tmp_path / "p-residuals.png").stat().st_size > 10_000
    lane = Profile.load(out).lane("smollm2-135m", "cpu", 1, "ngram", "decode")
    assert lane.source.startswith("profile") and lane.draft.method == "ngram"
    assert lane.decode.per_ctx_ms == pytest.approx(2e-4, rel=0.1)
    assert lane.draft.host_ms_per_seq == pytest.approx(0.05, rel=0.2)  # the fitted draft cost is used


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such profile directory"),
    (lambda p: p.mkdir(), "not a profile directory (no meta.json"),
    (lambda p: (p.mkdir(), (p / "meta.json").write_text("{oops")), "meta.json:1: invalid JSON"),
])
def test_calibrate_refuses_a_missing_or_empty_directory_in_one_line(tmp_path, capsys, setup, message):
    setup(tmp_path / "d")
    code, _, err = run_cli(["calibrate", str(tmp_path / "d"), "--out", str(tmp_path / "p.json")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_calibrate_refuses_a_corrupt_step_line(tmp_path, capsys):
    folder = profile_dir(tmp_path, n=50)
    with open(folder / records.STEPS, "a") as f:
        f.write('{"lane": 1, "cell": "c0", "dt": \n')
    code, _, err = run_cli(["calibrate", str(folder), "--out", str(tmp_path / "p.json")], capsys)
    assert code == 2 and "steps.jsonl:51: invalid JSON" in err


def test_steps_of_an_unfinished_cell_are_ignored(tmp_path):
    folder = profile_dir(tmp_path, n=50)
    records.write_jsonl(folder / records.STEPS, [{"cell": "cut-off", "dt": 1.0}])
    _, steps = records.read_steps(folder)
    assert len(steps) == 50


def test_profile_of_a_missing_model_is_one_line(tmp_path, capsys):
    path, _ = live_config(tmp_path, model=str(tmp_path / "nowhere"))
    code, _, err = run_cli(["profile", "--config", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nowhere/config.json" in err and len(err.strip().splitlines()) == 1


def test_profile_needs_a_model_spec_matching_the_served_model(tmp_path, capsys):
    path, _ = live_config(tmp_path)
    (tmp_path / "model" / "config.json").write_text(json.dumps({**SMOLLM2, "hidden_size": 1000}))
    code, _, err = run_cli(["profile", "--config", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "does not describe" in err


def test_fidelity_refuses_a_profile_of_another_model(tmp_path, capsys):
    folder = profile_dir(tmp_path, model="tiny-random")
    prof = tmp_path / "tiny.json"
    assert run_cli(["calibrate", str(folder), "--out", str(prof)], capsys)[0] == 0
    path, _ = live_config(tmp_path)
    code, _, err = run_cli(["fidelity", "--config", str(path), "--profile", str(prof), "-n", "3", "--rate", "1"], capsys)
    assert code == 2 and "no fitted entry for smollm2-135m on cpu" in err and "tiny-random" in err


def test_fidelity_whose_live_side_cannot_run_is_one_line(tmp_path, capsys):
    folder = profile_dir(tmp_path)
    prof = tmp_path / "p.json"
    assert run_cli(["calibrate", str(folder), "--out", str(prof)], capsys)[0] == 0
    path, _ = live_config(tmp_path)
    code, _, err = run_cli(["fidelity", "--config", str(path), "--profile", str(prof), "-n", "3", "--rate", "1",
                            "--attach", "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "Error: --attach: nothing listens on http://127.0.0.1:8390" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: ")


def test_simulated_twin_has_the_live_shape_and_runs(tmp_path, capsys):
    folder = profile_dir(tmp_path)
    prof = tmp_path / "p.json"
    assert run_cli(["calibrate", str(folder), "--out", str(prof)], capsys)[0] == 0
    _, cfg = live_config(tmp_path)
    cal = Calibration.load(prof)
    check_profile_covers(cal, "smollm2-135m", "cpu", {1})
    with pytest.raises(FidelityError, match="tp 2"):
        check_profile_covers(cal, "smollm2-135m", "cpu", {2})
    cluster = cluster_from_live(cfg, cal, "smollm2-135m", "cpu")
    assert [lane.role for lane in cluster.lanes] == ["prefill", "decode"]
    assert cluster.engine_for(cluster.lanes[1]).max_num_batched_tokens == 1024
    assert cluster.engine_for(cluster.lanes[0]).max_num_seqs == 8
    assert cluster.engine.kv_capacity_tokens == 2**30 // (2 * 30 * 3 * 64 * 4)  # float32 KV
    assert cluster.link.latency_ms == cal.params["handoff_ms"] > 0  # the fitted hand-off cost is the link's latency
    assert (cluster.scheduler.name, cluster.router.name, cluster.spec_policy.name) == ("stream", "flowguard",
                                                                                         "specustream")
    from streamserve.workload.base import Workload
    wl = Workload("w", np.full(20, 100), np.full(20, 20), np.arange(20) * 0.1, np.zeros(20, dtype=np.int16),
                  alpha={"default": 0.5})
    result = run(cluster, wl, 0)
    assert all(r.state.name == "FINISHED" for r in result.requests)


def test_grid_covers_every_phase_within_the_engine_limits():
    cells = build_grid(max_model_len=1024, max_num_seqs=8, speculation=True, size="small")
    phases = {c.phase for c in cells}
    assert phases == {"prefill", "batch", "decode"}
    assert max(c.concurrency for c in cells) <= 8
    assert all(c.prompt_len + c.output_len <= 1024 for c in cells)
    assert {c.dataset for c in cells if c.phase == "decode"} == {"prose", "code"}
    assert len({c.id for c in cells}) == len(cells)
    assert {c.dataset for c in build_grid(1024, 8, False, "ci")} == {"prose"}


def test_max_error_bounds():
    rows = [{"metric": "TTFT mean", "key": "mean_ttft_ms", "error_pct": 7.0},
            {"metric": "TTFT p90", "key": "p90_ttft_ms", "error_pct": -9.0},
            {"metric": "mean k", "key": "mean_k", "error_pct": 50.0}]
    assert bound_violations(rows, {"mean": 5, "p90": 10}) == ["TTFT mean: +7.0% (bound 5%)"]
    assert bound_violations(rows, {"mean": 5, "mean_ttft_ms": 8}) == []
    assert bound_violations(rows, {"mean_k": 10}) == ["mean k: +50.0% (bound 10%)"]


def test_gpu_fidelity_script_dry_run(tmp_path):
    """scripts/gpu-fidelity.sh cannot run here (no GPU); its dry run checks the config it
    would run and prints the three commands."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from streamserve.gpu.config import load_live

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "GPU": "H100",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(root / "scripts/gpu-fidelity.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert [line.split()[4] for line in lines] == ["profile", "calibrate", "fidelity"]
    cfg = load_live(tmp_path / "out" / "live.yaml")
    assert cfg.device == "cuda" and cfg.perf.gpu == "H100" and cfg.perf.profile == str(tmp_path / "out" / "profile.json")
    assert cfg.profile_steps


def test_fidelity_replays_a_recorded_live_run_with_another_profile(tmp_path, capsys):
    from streamserve.metrics import LogHistogram, RunResult, summarize, write_outputs
    from streamserve.request import Request, State

    folder = profile_dir(tmp_path)
    prof = tmp_path / "p.json"
    assert run_cli(["calibrate", str(folder), "--out", str(prof)], capsys)[0] == 0
    path, _ = live_config(tmp_path)
    reqs = []
    for i in range(12):  # a recorded live run: arrivals 1 s apart, 0.3 s to the first token, 20 tokens
        r = Request(id=i, arrival=float(i), prompt_len=100, output_len=20, dataset="humaneval" if i % 2 else "alpaca")
        r.first_token, r.finish, r.generated, r.state = i + 0.3, i + 2.0, 20, State.FINISHED
        reqs.append(r)
    live = RunResult(requests=reqs, duration=13.0, itl=LogHistogram())
    recorded = tmp_path / "recorded"
    write_outputs(live, summarize(live), recorded / "live")
    (recorded / "fidelity.json").write_text(json.dumps({"live": {**summarize(live), "workload": "w"}}))
    code, out, _ = run_cli(["fidelity", "--config", str(path), "--profile", str(prof), "--replay-live",
                            str(recorded), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "again" / "fidelity.json").read_text())
    assert result["sim"]["completed"] == 12 and result["live"]["mean_ttft_ms"] == pytest.approx(300.0)
    assert {r["key"] for r in result["rows"]} >= {"mean_ttft_ms", "p90_e2el_ms", "request_throughput"}
    code, _, err = run_cli(["fidelity", "--config", str(path), "--profile", str(prof), "--replay-live",
                            str(tmp_path / "nothing")], capsys)
    assert code == 2 and "not a fidelity run" in err
