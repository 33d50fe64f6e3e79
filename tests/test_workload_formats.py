"""Each trace format loads with exactly its rows, lengths and times."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamserve.workload.formats import detect, read_trace
from streamserve.workload.resolve import WorkloadError, resolve_workload
from streamserve.workload.spec import ColumnMap, WorkloadConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TRACES = REPO / "traces"
AZURE_CONV = DATA / "traces" / "AzureLLMInferenceTrace_conv.csv"


def _quiet(msg: str) -> None:
    raise AssertionError(f"unexpected warning: {msg}")


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.round(np.cumsum(rng.exponential(0.5, n)), 3)
    return t, rng.integers(1, 9000, n), rng.integers(1, 2000, n)


def test_azure_2023_exact_rows(tmp_path: Path) -> None:
    t, p, o = _rows(500)
    path = tmp_path / "az.csv"
    base = np.datetime64("2023-11-16T18:15:46.0000000", "ns")
    stamps = np.datetime_as_string(base + (t * 1e9).astype("timedelta64[ns]"), unit="ns")
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"{s[:10]} {s[11:27]},{a},{b}\n" for s, a, b in zip(stamps, p, o)))
    w = resolve_workload(str(path), warn=_quiet)
    assert len(w) == 500
    np.testing.assert_array_equal(w.prompt_len, p)
    np.testing.assert_array_equal(w.output_len, o)
    np.testing.assert_allclose(w.arrival, t - t[0], atol=1e-6)
    assert w.name == "az.csv"


def test_azure_2024_utc_offset(tmp_path: Path) -> None:
    path = tmp_path / "az24.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2024-05-10 00:00:00.009930+00:00,100,10\n"
                    "2024-05-10 00:00:01.509930+00:00,200,20\n"
                    "2024-05-10 01:00:00+00:00,300,30\n")
    w = resolve_workload(str(path), warn=_quiet)
    np.testing.assert_allclose(w.arrival, [0.0, 1.5, 3600 - 0.00993], atol=1e-6)
    np.testing.assert_array_equal(w.prompt_len, [100, 200, 300])


@pytest.mark.skipif(not AZURE_CONV.exists(), reason=f"shared data absent: {AZURE_CONV}")
def test_real_azure_conversation_trace() -> None:
    w = resolve_workload(str(AZURE_CONV), warn=_quiet)
    raw = np.genfromtxt(AZURE_CONV, delimiter=",", skip_header=1, usecols=(1, 2), dtype=np.int64)
    assert len(w) == len(raw) == 19366
    np.testing.assert_array_equal(w.prompt_len, raw[:, 0])
    np.testing.assert_array_equal(w.output_len, raw[:, 1])
    assert w.arrival[0] == 0.0 and np.all(np.diff(w.arrival) >= 0)
    # 2023-11-16 18:15:46.6805900 to 19:14:08.4025270 (first and last rows)
    assert w.arrival[-1] == pytest.approx(3501.72194, abs=1e-4)


def test_burstgpt_model_filter_and_failed_rows(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5,ChatGPT,472,18,490,Conversation log\n"
                    "45,ChatGPT,1087,230,1317,Conversation log\n"
                    "118,GPT-4,417,276,693,Conversation log\n"
                    "120,GPT-4,100,0,100,API log\n"
                    "130,ChatGPT,50,60,110,API log\n")
    warnings: list[str] = []
    w = resolve_workload(str(path), warn=warnings.append)
    np.testing.assert_array_equal(w.prompt_len, [472, 1087, 417, 50])
    np.testing.assert_array_equal(w.arrival, [0, 40, 113, 125])
    assert len(warnings) == 1 and "1 row(s) with 0 tokens" in warnings[0] and "Response tokens" in warnings[0]
    w = resolve_workload(None, config={"source": str(path), "model": "chatgpt"}, warn=lambda m: None)
    np.testing.assert_array_equal(w.output_len, [18, 230, 60])
    w = resolve_workload(None, config={"source": str(path), "model": "ChatGPT", "log_type": "API log"},
                         warn=lambda m: None)
    np.testing.assert_array_equal(w.output_len, [60])
    with pytest.raises(WorkloadError, match=r"b.csv: Model: no rows for model 'Claude'.*ChatGPT, GPT-4"):
        resolve_workload(None, config={"source": str(path), "model": "Claude"}, warn=lambda m: None)


def test_mooncake_keeps_hash_ids(tmp_path: Path) -> None:
    rows = [{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
            {"timestamp": 250, "input_length": 1100, "output_length": 7, "hash_ids": [1, 2, 3]},
            {"timestamp": 1250, "input_length": 90, "output_length": 9, "hash_ids": []}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = resolve_workload(str(path), warn=_quiet)
    np.testing.assert_allclose(w.arrival, [0, 0.25, 1.25])
    np.testing.assert_array_equal(w.prompt_len, [600, 1100, 90])
    assert [w.hash_ids[i] for i in range(3)] == [(1, 2), (1, 2, 3), ()]
    assert w.request(1, 0.25).hash_ids == (1, 2, 3)
    # num_requests truncates a timed trace to its first rows, hash ids along.
    w2 = resolve_workload(str(path), num_requests=2, warn=_quiet)
    assert len(w2) == 2 and w2.hash_ids[1] == (1, 2, 3)


def test_sharegpt_estimate_and_pairs(tmp_path: Path) -> None:
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "y" * 9}]},
        {"id": "b", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                                      {"from": "gpt", "value": "z" * 400}]},
        {"id": "c", "conversations": [{"from": "human", "value": "unanswered"}]},
        {"id": "d", "messages": [{"role": "user", "content": "q" * 8}, {"role": "assistant", "content": "a" * 8}]},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(convs, indent=2))
    warnings: list[str] = []
    w = resolve_workload(str(path), warn=warnings.append)
    np.testing.assert_array_equal(w.prompt_len, [10, 1, 2])  # ceil(chars / 4)
    np.testing.assert_array_equal(w.output_len, [3, 100, 2])
    assert list(w.prompts) == ["x" * 40, "hi", "q" * 8]
    assert w.arrival is not None and len(w.arrival) == 3  # Poisson at the default rate
    assert any("1 conversation(s)" in m for m in warnings)
    w = resolve_workload(None, config={"source": str(path), "chars_per_token": 2}, warn=lambda m: None)
    np.testing.assert_array_equal(w.prompt_len, [20, 1, 4])


def test_sharegpt_tokenizer_needs_transformers(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]))
    try:
        import transformers  # noqa: F401
        pytest.skip("transformers is installed")
    except ImportError:
        pass
    with pytest.raises(WorkloadError, match="workload.tokenizer: 'gpt2' needs the 'transformers' package"):
        resolve_workload(None, config={"source": str(path), "tokenizer": "gpt2"})


def test_generic_csv_and_jsonl_with_mapping(tmp_path: Path) -> None:
    t, p, o = _rows(50, seed=3)
    csv_path = tmp_path / "g.csv"
    csv_path.write_text("when_ms,in,out,kind\n" + "".join(
        f"{a * 1000:.0f},{b},{c},{'x' if i % 3 else 'y'}\n" for i, (a, b, c) in enumerate(zip(t, p, o))))
    cols = {"arrival": "when_ms", "prompt_len": "in", "output_len": "out", "dataset": "kind"}
    w = resolve_workload(None, config={"source": str(csv_path), "columns": cols, "time_unit": "ms",
                                       "alpha": {"x": 0.5}}, warn=_quiet)
    np.testing.assert_array_equal(w.prompt_len, p)
    np.testing.assert_allclose(w.arrival, np.round(t * 1000) / 1000 - np.round(t[0] * 1000) / 1000, atol=1e-9)
    assert w.datasets == ("x", "y")
    assert [w.datasets[c] for c in w.dataset[:4]] == ["y", "x", "x", "y"]
    assert w.alpha["x"] == 0.5 and w.alpha["y"] == w.alpha["default"]
    jl = tmp_path / "g.jsonl"
    jl.write_text("".join(json.dumps({"in": int(b), "out": int(c), "ids": [int(b) % 7]}) + "\n"
                          for b, c in zip(p, o)))
    w = resolve_workload(None, config={"source": str(jl), "format": "jsonl",
                                       "columns": {"prompt_len": "in", "output_len": "out", "hash_ids": "ids"}},
                         rate=2.0, warn=_quiet)
    np.testing.assert_array_equal(w.output_len, o)
    assert w.hash_ids[4] == (int(p[4]) % 7,)


def test_vllm_random_spec() -> None:
    w = resolve_workload("random:input_len=100,output_len=20,range_ratio=0.5,prefix_len=10",
                         num_requests=2000, seed=1)
    assert w.prompt_len.min() >= 60 and w.prompt_len.max() <= 160
    assert w.output_len.min() >= 10 and w.output_len.max() <= 30
    assert abs(w.prompt_len.mean() - 110) < 3
    w = resolve_workload("random", num_requests=5)
    assert set(w.prompt_len.tolist()) == {1024} and set(w.output_len.tolist()) == {128}


@pytest.mark.parametrize("name,fmt", [
    ("azure_2023_sample.csv", "azure"), ("azure_2024_sample.csv", "azure"),
    ("burstgpt_sample.csv", "burstgpt"), ("mooncake_sample.jsonl", "mooncake"),
    ("sharegpt_sample.json", "sharegpt"), ("generic.csv", "csv"),
])
def test_detects_sample_traces(name: str, fmt: str) -> None:
    assert detect(TRACES / name, WorkloadConfig()) == fmt
    trace = read_trace(TRACES / name, fmt, WorkloadConfig(), strict=True, warn=lambda m: None)
    assert len(trace) > 10 and trace.prompt_len.min() >= 1


@pytest.mark.parametrize("spec", ["generic_jsonl.yaml", "random.yaml", "burstgpt_gpt4.yaml", "onoff.yaml"])
def test_sample_spec_files(spec: str) -> None:
    w = resolve_workload(str(TRACES / spec), warn=lambda m: None)
    assert len(w) > 0 and (w.arrival is not None)


def test_format_named_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "weird.txt"
    path.write_text("a,b,prompt_len,output_len\n1,2,3,4\n")
    w = resolve_workload(str(path), fmt="csv", warn=_quiet)
    assert w.prompt_len.tolist() == [3] and w.output_len.tolist() == [4]
    cfg = WorkloadConfig(columns=ColumnMap(prompt_len="a", output_len="b"))
    assert read_trace(path, "csv", cfg, False, _quiet).prompt_len.tolist() == [1]
