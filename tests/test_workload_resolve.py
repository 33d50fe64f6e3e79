"""resolve_workload: defaults, config validation, precedence, spec files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamserve.workload.resolve import DEFAULT_NUM_REQUESTS, WorkloadError, resolve_workload


def test_default_synthetic() -> None:
    w = resolve_workload(None)
    assert len(w) == DEFAULT_NUM_REQUESTS and w.name == "synthetic"
    assert DEFAULT_NUM_REQUESTS / w.arrival[-1] == pytest.approx(5.0, rel=0.15)
    again = resolve_workload(None)
    np.testing.assert_array_equal(w.arrival, again.arrival)  # deterministic for a seed
    other = resolve_workload(None, seed=1)
    assert not np.array_equal(w.prompt_len, other.prompt_len)


def test_config_errors_are_one_line() -> None:
    with pytest.raises(WorkloadError) as e:
        resolve_workload(None, config={"arival": "poisson"}, config_origin="cluster.yaml")
    assert str(e.value) == "cluster.yaml: workload.arival: Extra inputs are not permitted"
    with pytest.raises(WorkloadError, match=r"^cluster.yaml: workload.cv: Input should be greater than 0"):
        resolve_workload(None, config={"cv": -1}, config_origin="cluster.yaml")
    with pytest.raises(WorkloadError, match=r"^config: workload.columns.arrival: Input should be a valid string"):
        resolve_workload(None, config={"columns": {"arrival": 3}})
    with pytest.raises(WorkloadError, match=r"^config: workload.alpha.x: Input should be less than 1"):
        resolve_workload(None, config={"alpha": {"x": 1.5}})


def test_cli_option_errors_name_the_flag() -> None:
    with pytest.raises(WorkloadError, match="^--rate: Input should be greater than 0"):
        resolve_workload("gsm8k", rate=-2)
    with pytest.raises(WorkloadError, match="^--arrival: Input should be 'replay', 'poisson', 'gamma' or 'onoff'"):
        resolve_workload("gsm8k", arrival="bursty")
    with pytest.raises(WorkloadError, match="^--workload: 'random:input_len=abc'"):
        resolve_workload("random:input_len=abc")


def test_cli_overrides_config() -> None:
    cfg = {"source": "alpaca", "num_requests": 50, "rate": 1.0, "arrival": "gamma", "cv": 2.0}
    w = resolve_workload(None, config=cfg)
    assert w.name == "alpaca" and len(w) == 50
    w = resolve_workload("sum", num_requests=20, config=cfg)
    assert w.name == "sum" and len(w) == 20


def test_spec_file_relative_source(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("arrival,prompt_len,output_len\n0,5,6\n2,7,8\n")
    spec = tmp_path / "w.yaml"
    spec.write_text("workload:\n  source: t.csv\n  rate: 2\n")
    w = resolve_workload(str(spec))
    np.testing.assert_allclose(w.arrival, [0.0, 0.5])
    spec.write_text("source: t.csv\nratee: 2\n")
    with pytest.raises(WorkloadError) as e:
        resolve_workload(str(spec))
    assert str(e.value) == f"{spec}:2: ratee: Extra inputs are not permitted"
    spec.write_text("source: [unclosed\n")
    with pytest.raises(WorkloadError, match=r"w.yaml:2: invalid YAML"):
        resolve_workload(str(spec))


def test_num_requests_samples_untimed_traces(tmp_path: Path) -> None:
    import json

    convs = [{"conversations": [{"from": "human", "value": "x" * (4 * (i + 1))},
                                {"from": "gpt", "value": "y"}]} for i in range(30)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(convs))
    a = resolve_workload(str(path), num_requests=10, seed=4)
    b = resolve_workload(str(path), num_requests=10, seed=4)
    assert len(a) == 10 and len(set(a.prompt_len.tolist())) == 10
    np.testing.assert_array_equal(a.prompt_len, b.prompt_len)
    assert a.prompt_len.tolist() != list(range(1, 11))  # a sample, not the head
    warnings: list[str] = []
    c = resolve_workload(str(path), num_requests=100, warn=warnings.append)
    assert len(c) == 30 and "only 30 requests" in warnings[0]


def test_alpha_overrides_and_default() -> None:
    w = resolve_workload("mix:gsm8k=1,sum=1", num_requests=10, config={"alpha": {"sum": 0.5, "default": 0.6}})
    assert w.alpha["sum"] == 0.5 and w.alpha["gsm8k"] > 0.8 and w.alpha["default"] == 0.6
    warnings: list[str] = []
    resolve_workload("gsm8k", num_requests=5, config={"alpha": {"chat": 0.5}}, warn=warnings.append)
    assert "workload.alpha.chat: no requests carry this dataset tag" in warnings[0]


def test_config_source_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("arrival,prompt_len,output_len\n0,5,6\n")
    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text("workload:\n  source: t.csv\n")
    w = resolve_workload(None, config={"source": "t.csv"}, config_origin=str(cfg_file))
    assert w.prompt_len.tolist() == [5]


def test_ignored_options_are_reported() -> None:
    warnings: list[str] = []
    resolve_workload("gsm8k", num_requests=5, concurrency=2, rate=3.0, warn=warnings.append)
    assert warnings == ["--rate 3.0: ignored with --concurrency (a closed loop sends on completion)"]
    warnings.clear()
    resolve_workload("gsm8k", num_requests=5, cv=2.0, warn=warnings.append)
    assert warnings == ["--cv 2.0: ignored with --arrival default (it shapes gamma and onoff)"]
