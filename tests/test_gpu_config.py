"""Live configs and the engine command lines they produce, CPU and GPU alike, and the
supervisor's start-up errors and clean shutdown. No vLLM needed: engines here are
plain Python processes."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import yaml

from streamserve.config import ConfigError
from streamserve.gpu.config import load_live, parse_live
from streamserve.gpu.engine_args import SPEC_SCHEDULER_CLS, EngineSpec, engine_specs, repo_root
from streamserve.gpu.engines import Engine, EngineError, EngineSet, check_model
from streamserve.gpu.policyload import build_engine_spec_policy
from streamserve.gpu.serve import build_lanes
from streamserve.lanes import LaneRole


def _shipped(name: str) -> Path:
    return Path(str(resources.files("streamserve.configs").joinpath(name)))


def _argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_gpu_example_places_engines_on_gpus_with_nixl():
    cfg = load_live(_shipped("live-gpu.yaml"))
    specs = engine_specs(cfg, base_env={"PATH": "/usr/bin"}, log_dir=Path("/tmp/logs"))
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1", "2", "3"]
    side_ports = {s.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] for s in specs}
    assert len(side_ports) == 4  # one NIXL handshake port per engine on the host
    for s in specs:
        kv = json.loads(_argv_value(s.argv, "--kv-transfer-config"))
        assert kv["kv_connector"] == "NixlConnector"
        assert kv["kv_role"] == {"prefill": "kv_producer", "decode": "kv_consumer"}[s.entry.role]
        assert _argv_value(s.argv, "--tensor-parallel-size") == "1"
        assert _argv_value(s.argv, "--port") == str(s.entry.port)
        assert "VLLM_CPU_KVCACHE_SPACE" not in s.env
        assert s.env["HF_HUB_OFFLINE"] == "1"
    prefill, decode = specs[0], specs[1]
    assert "--speculative-config" not in prefill.argv and "--scheduler-cls" not in prefill.argv
    spec = json.loads(_argv_value(decode.argv, "--speculative-config"))
    assert {k: spec[k] for k in ("method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max")} == \
        {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    assert _argv_value(decode.argv, "--scheduler-cls") == SPEC_SCHEDULER_CLS
    assert "--no-async-scheduling" in decode.argv
    policy = json.loads(decode.env["STREAMSERVE_SPEC_POLICY"])
    assert policy["policy"] == {"name": "specustream"} and policy["lane_id"] == 1
    assert decode.env["PYTHONPATH"].split(os.pathsep)[0] == str(repo_root())


def test_tensor_parallel_engine_gets_all_its_gpus():
    data = yaml.safe_load(_shipped("live-gpu.yaml").read_text())
    data["engines"] = [{"role": "prefill", "port": 9001, "devices": [0, 1], "tp": 2},
                       {"role": "decode", "port": 9002, "devices": [2, 3], "tp": 2}]
    specs = engine_specs(parse_live(data, "x.yaml"), base_env={})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0,1", "2,3"]
    assert all(_argv_value(s.argv, "--tensor-parallel-size") == "2" for s in specs)


def test_cpu_example_uses_example_connector_and_no_gpu_settings(tmp_path):
    cfg = load_live(_shipped("live-cpu.yaml"))
    specs = engine_specs(cfg, base_env={}, log_dir=tmp_path)
    for s in specs:
        kv = json.loads(_argv_value(s.argv, "--kv-transfer-config"))
        assert (kv["kv_connector"], kv["kv_connector_module_path"]) == ("BoundedExampleConnector",
                                                                        "streamserve.gpu.kvstore")
        assert kv["kv_connector_extra_config"] == {"shared_storage_path": "/tmp/streamserve-kv"}
        assert "CUDA_VISIBLE_DEVICES" not in s.env and "--tensor-parallel-size" not in s.argv
        assert s.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and s.env["OMP_NUM_THREADS"] == "1"
        assert _argv_value(s.argv, "--block-size") == "32"
        assert s.log_path.parent == tmp_path
    assert specs[1].k_trace_path == tmp_path / "k-trace-lane1.jsonl"
    assert specs[1].env["STREAMSERVE_K_TRACE"] == str(tmp_path / "k-trace-lane1.jsonl")
    assert "STREAMSERVE_STEP_LOG" not in specs[1].env
    assert "streamserve.gpu.steplog.StepLogScheduler" not in specs[0].argv
    cfg.profile_steps = True  # every engine logs its steps: the prefill engine through StepLogScheduler
    logged = engine_specs(cfg, base_env={}, log_dir=tmp_path)
    for lane, s in enumerate(logged):
        assert s.env["STREAMSERVE_STEP_LOG"] == str(tmp_path / f"steps-lane{lane}.jsonl")
        assert "--no-async-scheduling" in s.argv
    assert _argv_value(logged[0].argv, "--scheduler-cls") == "streamserve.gpu.steplog.StepLogScheduler"
    assert _argv_value(logged[1].argv, "--scheduler-cls") == "streamserve.gpu.specsched.SpecuStreamScheduler"


def test_gpu_data_parallel_example_is_four_colocated_engines():
    specs = engine_specs(load_live(_shipped("live-gpu-dp.yaml")), base_env={})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1", "2", "3"]
    for s in specs:  # no KV transfer; SpecuStream drives ngram speculation in each
        assert "--kv-transfer-config" not in s.argv and "--speculative-config" in s.argv
        assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in s.env


def test_colocated_config_has_no_kv_connector():
    data = {"model": "tiny", "engines": [{"role": "colocated", "port": 9001}, {"role": "colocated", "port": 9002}],
            "speculation": {"method": "none"}}
    for s in engine_specs(parse_live(data, "c.yaml"), base_env={}):
        assert "--kv-transfer-config" not in s.argv and "--speculative-config" not in s.argv
    lanes = build_lanes(parse_live(data, "c.yaml"))
    assert [lane.role for lane in lanes] == [LaneRole.COLOCATED] * 2


@pytest.mark.parametrize("change,message", [
    ({"engines": [{"role": "prefill", "port": 9001}, {"role": "decode", "port": 9001}]}, "engines.1.port: port 9001 is used twice"),
    ({"engines": [{"role": "prefill", "port": 9001}]}, "needs at least one prefill and one decode"),
    ({"engines": [{"role": "colocated", "port": 9001}, {"role": "decode", "port": 9002}]}, "mix colocated"),
    ({"engines": [{"role": "prefill", "port": 9001, "devices": [0]}, {"role": "decode", "port": 9002}]},
     "engines.0: devices and tp > 1 need device: cuda"),
    ({"device": "cuda", "engines": [{"role": "prefill", "port": 9001, "devices": [0]},
                                    {"role": "decode", "port": 9002, "devices": [0]}]}, "GPU 0 is given to more than one"),
    ({"device": "cuda", "engines": [{"role": "prefill", "port": 9001, "devices": [0], "tp": 2},
                                    {"role": "decode", "port": 9002, "devices": [1]}]}, "needs 2 GPU indices"),
    ({"kv": {"connector": "NixlConnector"}}, "NixlConnector needs device: cuda"),
    ({"speculation": {"method": "draft"}}, "draft_model: required"),
    ({"engines": [{"role": "prefill", "port": 0}, {"role": "decode", "port": 9002}]}, "engines.0.port"),
])
def test_bad_live_configs_give_one_line_errors(tmp_path, change, message):
    data = yaml.safe_load(_shipped("live-cpu.yaml").read_text())
    data.update(change)
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_live(path)
    text = str(e.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_missing_model_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSERVE_MODELS", str(tmp_path))
    with pytest.raises(EngineError, match=r"no config.json in .*tiny \(run `streamserve models prepare tiny`\)"):
        check_model("tiny")
    with pytest.raises(EngineError, match="no config.json"):
        check_model(str(tmp_path / "nowhere"))


def _spec(tmp_path: Path, code: str, port: int) -> EngineSpec:
    cfg = parse_live({"model": "m", "engines": [{"role": "colocated", "port": port}]}, "t.yaml")
    entry = cfg.engines[0]
    return EngineSpec(lane_id=0, entry=entry, argv=[sys.executable, "-c", code], env=dict(os.environ),
                      log_path=tmp_path / "engine.log", k_trace_path=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_reported_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        engine = Engine(_spec(tmp_path, "pass", port))
        with pytest.raises(EngineError, match=f"port {port} is already in use"):
            engine.start()


def test_engine_crash_at_start_shows_its_log_tail(tmp_path):
    code = "import sys; print('loading model'); print('RuntimeError: no kernel for head_dim=16'); sys.exit(3)"
    engines = EngineSet([_spec(tmp_path, code, _free_port())])
    with pytest.raises(EngineError) as e:
        engines.start(timeout=30)
    assert "exited with code 3 during start-up" in str(e.value)
    assert "no kernel for head_dim=16" in str(e.value)


def test_start_timeout_is_an_error_and_stops_the_engine(tmp_path):
    engines = EngineSet([_spec(tmp_path, "import time; print('compiling', flush=True); time.sleep(60)", _free_port())])
    t = time.monotonic()
    with pytest.raises(EngineError, match="did not become healthy before the start-up timeout"):
        engines.start(timeout=1.5)
    assert time.monotonic() - t < 20
    assert not engines.engines[0].alive()


def test_stop_leaves_no_orphans(tmp_path):
    # The engine forks a grandchild (as vLLM forks its engine core) and ignores SIGTERM.
    pid_file = tmp_path / "child.pid"
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
            "time.sleep(300)\n")
    engine = Engine(_spec(tmp_path, code, _free_port()))
    engine.start()
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    engine.stop(grace=0.5)
    assert not engine.alive()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the engine's child process outlived stop()")


def test_engine_spec_policy_is_built_from_the_registry_or_an_import_path():
    conf = {"lane_id": 1, "tp": 1, "perf": {"profile": None, "model": "opt-13b", "gpu": "A100-80GB"},
            "draft": "ngram", "policy": {"name": "fixed", "k": 3}}
    assert build_engine_spec_policy(conf, k_max=4).depth(1, 1, 0, 0.0) == 3
    conf["policy"] = {"name": "gpu_policies:BatchStep", "k_single": 4, "k_batched": 1}
    policy = build_engine_spec_policy(conf, k_max=4)
    assert (policy.depth(1, 1, 0, 0.0), policy.depth(1, 5, 0, 0.0)) == (4, 1)
