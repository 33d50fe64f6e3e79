"""scripts/gpu-smoke.sh and scripts/gpu-step-times.py on a CPU: the smoke's dry run (its
own logic, the commands it would start, the hook check), its one-line answer on a box
without vLLM, and the PyTorch step timer on a tiny spec."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu-smoke.sh"), *args], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=ROOT)


def test_dry_run_passes_every_check_and_writes_its_evidence(tmp_path):
    done = _run(["--dry-run", "--out", str(tmp_path)])
    lines = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert lines and all(line.startswith("PASS ") for line in lines), lines
    names = {line.split(" ")[1].rstrip(":") for line in lines}
    assert {"dry.configs.1gpu", "dry.configs.2gpu", "dry.commands", "dry.hook", "dry.canned.lease.garbage",
            "dry.canned.steps.over_k", "dry.canned.logs.mismatch"} <= names
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == names and (tmp_path / "smoke.txt").read_text().splitlines() == lines
    if importlib.util.find_spec("vllm") is not None:  # then the installed vLLM parsed every command line
        assert "vllm serve parser: accepts all" in results["dry.commands"]["detail"]
        assert results["dry.hook"]["detail"].startswith("vLLM ")
    assert done.stdout.strip().splitlines()[-1].startswith(f"gpu-smoke: {len(lines)}/{len(lines)} passed")


def test_without_vllm_it_says_so_in_one_line_and_times_steps_with_pytorch(tmp_path):
    pytest.importorskip("torch")
    block = tmp_path / "block" / "vllm"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('no vLLM on this box')\n")
    out = tmp_path / "steps.json"
    done = _run([], env={"PYTHONPATH": str(block.parent),
                         "GPU_STEP_TIMES_ARGS": f"--model tiny --device cpu --quick --repeats 2 --out {out}"})
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("gpu-smoke: SKIP vLLM is not importable") and "gpu-step-times.py" in first
    profile = json.loads(out.read_text())
    assert profile["format"] == "streamserve-step-times" and profile["model"] == "tiny"
    assert [(r["batch"], r["prompt_len"]) for r in profile["prefill"]] == [(1, 16), (1, 64), (2, 16), (2, 64)]
    assert {(r["batch"], r["k"]) for r in profile["decode"]} == {(1, 0), (1, 2), (4, 0), (4, 2)}
    assert all(r["ms"] > 0 for r in profile["prefill"] + profile["decode"])


def _step_times():
    spec = importlib.util.spec_from_file_location("gpu_step_times", ROOT / "scripts" / "gpu-step-times.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_step_timer_verify_step_sees_the_cache_as_a_prefill_would():
    """The timed decode/verify step computes what a real one does: prefill 10 tokens into
    the cache, verify 3 more, and the last logits match one causal pass over all 13."""
    torch = pytest.importorskip("torch")
    st = _step_times()
    a = st.FALLBACK["tiny"]
    m = st.build(a, torch.device("cpu"), torch.float32)
    tokens = torch.randint(0, a.vocab, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = st.forward(a, m, tokens, None, 0)
        cache = [(torch.zeros(2, a.num_kv_heads, 13, a.head_dim), torch.zeros(2, a.num_kv_heads, 13, a.head_dim))
                 for _ in range(a.num_layers)]
        st.forward(a, m, tokens[:, :10], cache, 0)
        verified = st.forward(a, m, tokens[:, 10:], cache, 10)
    assert torch.allclose(whole, verified, atol=1e-4)


def test_step_timer_names_gpus_as_the_specs_do():
    st = _step_times()
    assert st.gpu_spec_name("NVIDIA H200") == "H200"
    assert st.gpu_spec_name("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert st.gpu_spec_name("NVIDIA GeForce RTX 4090") is None
