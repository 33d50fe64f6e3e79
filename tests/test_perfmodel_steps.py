"""The step model: DistServe's published numbers reproduced, the roofline's shape, the
context window, and a roofline-only (model, GPU) pair simulated end to end."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cluster, workload
from streamserve.perfmodel import Profile
from streamserve.request import State
from streamserve.sim import run
from streamserve.specs import GPUS, MODELS

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data/profiles")
TARGETS = [m for m in MODELS if m in ("opt-13b", "llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3-70b",
                                      "qwen2.5-7b", "qwen2.5-14b")]


def _distserve_profile(tmp_path: Path) -> Path:
    if not (DATA / "distserve-a100-80g.distserve.json").is_file():
        pytest.skip(f"DistServe's fitted profiles are not in {DATA} (public data, not shipped)")
    spec = importlib.util.spec_from_file_location("pfd", ROOT / "scripts/profile_from_distserve.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = mod.convert(json.loads((DATA / "distserve-a100-80g.distserve.json").read_text()),
                       json.loads((DATA / "distserve-a100-80g.vllm.json").read_text()), "A100-80GB", "test")
    p = tmp_path / "distserve.json"
    p.write_text(json.dumps(data))
    return p


def test_distserve_time_estimator_values(tmp_path):
    """DistServe's simulator (simdistserve: time_estimator.py + worker.py add_ray_overhead)
    gives these for OPT-13B on one A100-80GB; the converted profile must too."""
    prof = Profile.load(_distserve_profile(tmp_path))
    pre = prof.lane("opt-13b", "A100-80GB", 1, role="prefill")
    dec = prof.lane("opt-13b", "A100-80GB", 1, role="decode")
    assert pre.prefill_time(512, 512**2) * 1e3 == pytest.approx(75.20, abs=0.005)
    assert pre.prefill_time(4 * 512, 4 * 512**2) * 1e3 == pytest.approx(237.49, abs=0.005)
    assert dec.decode_time(1, 576) * 1e3 == pytest.approx(22.39, abs=0.005)
    assert dec.decode_time(64, 64 * 576) * 1e3 == pytest.approx(51.24, abs=0.005)


def test_distserve_check_in_the_simulator(tmp_path):
    """Instant links, unchunked prefill: a lone 512-token prompt and four at once take
    DistServe's times to the first token; the first decode step over 576 tokens of KV too."""
    prof = _distserve_profile(tmp_path)
    cfg = cluster("streamserve", profile=str(prof), link={"bandwidth_gbps": 1e12, "latency_ms": 0.0},
                  engine={"enable_chunked_prefill": False}, speculation={"method": "none", "k_max": 0},
                  scheduler={"name": "fcfs"}, router={"name": "round_robin"}, spec_policy={"name": "fixed", "k": 0},
                  lanes=[{"role": "prefill", "tp": 1}, {"role": "decode", "tp": 1}])
    r = run(cfg, workload([512], [1], [0.0])).requests[0]
    assert r.ttft * 1e3 == pytest.approx(75.20, abs=0.005)
    rs = run(cfg, workload([512] * 4, [1] * 4, [0.0] * 4)).requests
    assert [x.ttft * 1e3 for x in rs] == pytest.approx([237.49] * 4, abs=0.005)
    r = run(cfg, workload([576], [2], [0.0])).requests[0]
    assert (r.e2e - r.ttft) * 1e3 == pytest.approx(22.39, abs=0.01)


@pytest.mark.parametrize("model", TARGETS)
@pytest.mark.parametrize("gpu", list(GPUS))
def test_roofline_shape(model, gpu):
    tp = 8 if model == "llama-3-70b" else 1
    perf = Profile({"format": "streamserve-profile", "version": 2}, "empty").lane(model, gpu, tp)
    assert perf.source.startswith("roofline")
    ctx = 500
    times = [perf.decode_time(b, b * ctx) for b in range(1, 1025, 8)]
    assert all(b > a for a, b in zip(times, times[1:]))  # grows with batch tokens
    # flat, then rising: weights-bound below the knee, compute-bound past it
    small = perf.decode_time(2, 0) - perf.decode_time(1, 0)
    large = perf.decode_time(4001, 0) - perf.decode_time(4000, 0)
    assert large - small == pytest.approx(perf.decode.compute_ms_per_token * 1e-3, rel=1e-6)
    # verifying k tokens costs what k + 1 decode tokens per sequence cost, across the knee
    for batch in (1, 8, 64, 256):
        for k in (1, 4, 8):
            assert perf.decode_time(batch, batch * ctx, k) == pytest.approx(
                perf.decode_time(batch * (k + 1), batch * ctx, 0), rel=1e-12)
    assert perf.prefill_time(2048, 2048**2) > 2 * perf.prefill_time(512, 512**2)


def test_draft_methods_cost_what_they_run():
    prof = Profile.load()
    base = prof.lane("llama-3-8b", "H100", 1)
    ngram = prof.lane("llama-3-8b", "H100", 1, "ngram")
    eagle = prof.lane("llama-3-8b", "H100", 1, "eagle")
    small = prof.lane("llama-3-8b", "H100", 1, "small-model")
    assert base.draft_time(16, 16000, 4) == 0.0
    assert 0 < ngram.draft_time(16, 16000, 4) < eagle.draft_time(16, 16000, 4) < small.draft_time(16, 16000, 4)
    assert small.draft.method == "draft:llama-3.2-1b"
    for p in (ngram, eagle, small):  # the draft is paid only when drafting
        assert p.spec_step_time(16, 16000, 0) == base.spec_step_time(16, 16000, 0)


def test_request_beyond_the_context_window_is_rejected_with_the_reason():
    res = run(cluster("streamserve"), workload([2000, 500], [100, 20], [0.0, 0.0]))
    big, ok = res.requests
    assert big.state is State.REJECTED and "context window of 2048" in big.reason and big.attempts == 0
    assert ok.state is State.FINISHED


def test_roofline_model_and_gpu_simulate_end_to_end(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model: llama-3-8b\ngpu: A800-40GB\nlanes:\n  - {role: prefill, tp: 1, pair: 0}\n"
        "  - {role: decode, tp: 1, pair: 0}\nspeculation: {method: eagle, k_max: 4}\n"
        "spec_policy: {name: specustream}\n")
    p = subprocess.run([sys.executable, "-m", "streamserve.cli", "simulate", "--config", "c.yaml", "--workload", "mix",
                        "--num-requests", "40", "--rate", "2", "-q", "--out", "out"],
                       capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    (tmp_path / "bad.yaml").write_text("model: llama-9\nlanes:\n  - {role: colocated}\n")
    p = subprocess.run([sys.executable, "-m", "streamserve.cli", "simulate", "--config", "bad.yaml", "-q"],
                       capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2
    line, = p.stderr.strip().splitlines()
    assert "bad.yaml:1: model: unknown model 'llama-9' (known: opt-13b, llama-2-7b" in line


def test_acceptance_follows_the_draft_method():
    from streamserve.sim import Cluster
    from streamserve.workload.datasets import DATASETS
    from streamserve.workload.resolve import resolve_workload

    w = resolve_workload("mix", num_requests=40, rate=1.0, config={"alpha": {"sum": 0.5}})
    for method in ("ngram", "draft", "eagle"):
        spec = {"method": method, "k_max": 4}
        c = Cluster(cluster("streamserve", speculation=spec), w, 0)
        assert c._alpha["gsm8k"] == DATASETS["gsm8k"].acceptance[method]
        assert c._alpha["sum"] == 0.5  # the config's figure wins
    table = DATASETS["sum"].acceptance
    assert table["ngram"] < table["eagle"] and DATASETS["alpaca"].acceptance["ngram"] < table["ngram"]


@pytest.mark.parametrize("body,message", [
    ({"roles": {"decode": {"decode": {"overhead_ms": -1}}}}, r"roles.decode.decode.overhead_ms: must be >= 0"),
    ({"roles": {"decode": {"decode": {"a": 1}}}}, r"unknown field 'a'"),
    ({"roles": {"gpu": {"decode": {}}}}, r"unknown role 'gpu'"),
    ({"roles": {"decode": {}}}, r"needs a 'prompt' or a 'decode' set"),
    ({}, r"needs model, gpu, tp and roles"),
])
def test_bad_profile_entries_name_the_field(body, message):
    from streamserve.perfmodel import ProfileError

    entry = {"model": "opt-13b", "gpu": "A100-80GB", "tp": 1, **body}
    with pytest.raises(ProfileError, match=r"^p.json: entries\[0\].*" + message):
        Profile({"format": "streamserve-profile", "version": 2, "entries": [entry]}, "p.json")


def test_window_warning_names_the_share_over_the_window():
    from streamserve.workload.datasets import window_note
    from streamserve.workload.resolve import resolve_workload

    w = resolve_workload("sum", num_requests=200, rate=1.0)
    note = window_note(w, "opt-13b")
    assert note.startswith("workload sum: ") and "opt-13b's context window of 2048 tokens" in note
    assert window_note(w, "llama-3-8b") == ""
