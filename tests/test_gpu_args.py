"""The engine command lines and configs the GPU path generates, checked against what
vLLM 0.32 itself accepts (its KVTransferConfig, its k-table builder, its `vllm serve`
parser, its scheduler source), without starting an engine or needing a GPU."""
from __future__ import annotations

import importlib.metadata
import inspect
import json
import socket
from pathlib import Path

import pytest
import yaml

from streamserve.config import ConfigError
from streamserve.gpu.config import VLLM_KV_LEASE_S, parse_live
from streamserve.gpu.engine_args import (ENTRY_MODULE, SPEC_SCHEDULER_CLS, busy_ports, engine_specs, k_table,
                                         kv_transfer_config, speculative_config)
from streamserve.gpu.engines import Engine, EngineError
from streamserve.gpu.vllm_main import version_lookup


def _gpu(**over) -> dict:
    """A one-pair NIXL deployment on two GPUs."""
    data = {"model": "/models/m", "device": "cuda", "attention_backend": "FLASH_ATTN",
            "engines": [{"role": "prefill", "port": 8201, "devices": [0]},
                        {"role": "decode", "port": 8202, "devices": [1]}],
            "speculation": {"method": "ngram", "k_max": 4}, "frontend": {"port": 8200}}
    data.update(over)
    return data


def _cfg(**over):
    return parse_live(_gpu(**over), "live.yaml")


def _arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _json_arg(argv: list[str], flag: str) -> dict | None:
    value = _arg(argv, flag)
    return None if value is None else json.loads(value)


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_live(data, "live.yaml")
    text = str(e.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- 1. KV roles
@pytest.mark.parametrize("device,connector", [("cuda", "NixlConnector"), ("cpu", "ExampleConnector")])
def test_prefill_produces_decode_consumes_and_recomputes_failed_loads(device, connector):
    data = _gpu() if device == "cuda" else {
        "model": "tiny", "engines": [{"role": "prefill", "port": 8201}, {"role": "decode", "port": 8202}]}
    prefill, decode = engine_specs(parse_live(data, "x.yaml"), base_env={})
    kp = _json_arg(prefill.argv, "--kv-transfer-config")
    kd = _json_arg(decode.argv, "--kv-transfer-config")
    if connector == "ExampleConnector":  # ours, with a bounded folder (gpu/kvstore.py)
        connector = "BoundedExampleConnector"
    assert (kp["kv_connector"], kp["kv_role"]) == (connector, "kv_producer")
    assert (kd["kv_connector"], kd["kv_role"]) == (connector, "kv_consumer")
    assert "kv_load_failure_policy" not in kp and kd["kv_load_failure_policy"] == "recompute"
    failing = dict(data, kv={"load_failure_policy": "fail"})
    assert _json_arg(engine_specs(parse_live(failing, "x.yaml"), base_env={})[1].argv,
                     "--kv-transfer-config")["kv_load_failure_policy"] == "fail"


def test_an_example_connector_prefill_engine_never_splits_a_prompt():
    """ExampleConnector saves a prompt's KV in the step that schedules it; a prompt chunked
    over two steps was saved half and the decode engine died loading it (profile run of a
    16 x 600-token burst against an 8,192-token budget)."""
    data = {"model": "tiny", "max_model_len": 1024,
            "engines": [{"role": "prefill", "port": 8201}, {"role": "decode", "port": 8202}]}
    prefill, decode = engine_specs(parse_live(data, "x.yaml"), base_env={})
    assert "--no-enable-chunked-prefill" in prefill.argv and _arg(prefill.argv, "--max-num-batched-tokens") == "1024"
    assert "--no-enable-chunked-prefill" not in decode.argv
    data["engines"][0]["extra_args"] = ["--max-num-batched-tokens", "8192"]
    argv = engine_specs(parse_live(data, "x.yaml"), base_env={})[0].argv
    assert argv[len(argv) - 1 - argv[::-1].index("--max-num-batched-tokens") + 1] == "8192"  # the config's, last, wins
    nixl = engine_specs(_cfg(), base_env={})[0].argv
    assert "--no-enable-chunked-prefill" not in nixl  # NIXL moves whole requests' blocks after the prefill


def test_cpu_engines_are_bound_to_their_cores_when_the_config_names_them():
    data = {"model": "tiny", "engines": [{"role": "prefill", "port": 8201, "cpu_cores": [0]},
                                         {"role": "decode", "port": 8202, "cpu_cores": [1, 2]}]}
    prefill, decode = engine_specs(parse_live(data, "x.yaml"), base_env={})
    assert (prefill.env["VLLM_CPU_OMP_THREADS_BIND"], prefill.env["OMP_NUM_THREADS"]) == ("0", "1")
    assert (decode.env["VLLM_CPU_OMP_THREADS_BIND"], decode.env["OMP_NUM_THREADS"]) == ("1,2", "2")
    assert (prefill.env["STREAMSERVE_CPU_CORES"], decode.env["STREAMSERVE_CPU_CORES"]) == ("0", "1,2")
    data["engines"][1].pop("cpu_cores")
    unbound = engine_specs(parse_live(data, "x.yaml"), base_env={})[1].env
    assert unbound["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and "STREAMSERVE_CPU_CORES" not in unbound
    data["engines"][0].update(cpu_threads=2)
    assert "2 cores for cpu_threads" not in _error(data) and "cpu_threads=2" in _error(data)
    data["engines"][0].update(cpu_threads=None, cpu_cores=[1, 1])
    assert "distinct core ids" in _error(data)
    assert "only for device: cpu" in _error(_gpu(engines=[{"role": "prefill", "port": 8201, "devices": [0],
                                                            "cpu_cores": [0]},
                                                           {"role": "decode", "port": 8202, "devices": [1]}]))


def test_colocated_engines_move_no_kv():
    cfg = _cfg(engines=[{"role": "colocated", "port": 8201, "devices": [0]}])
    assert kv_transfer_config(cfg.engines[0], cfg) is None
    (spec,) = engine_specs(cfg, base_env={})
    assert "--kv-transfer-config" not in spec.argv and "VLLM_NIXL_SIDE_CHANNEL_PORT" not in spec.env


def test_generated_kv_configs_are_valid_vllm_kv_transfer_configs():
    kv_transfer = pytest.importorskip("vllm.config.kv_transfer", reason="needs vLLM")
    for data in (_gpu(), {"model": "tiny", "engines": [{"role": "prefill", "port": 8201},
                                                       {"role": "decode", "port": 8202}]}):
        cfg = parse_live(data, "x.yaml")
        for entry in cfg.engines:
            conf = kv_transfer.KVTransferConfig(**kv_transfer_config(entry, cfg))
            assert conf.is_kv_producer == (entry.role == "prefill")
            assert conf.is_kv_consumer == (entry.role == "decode")


# ---------------------------------------------------------------- 2. KV lease
def test_lease_reaches_both_sides_of_nixl_and_defaults_to_vllms():
    assert _cfg().kv_lease_s == VLLM_KV_LEASE_S == 30
    for s in engine_specs(_cfg(kv_lease_s=12), base_env={}):
        assert _json_arg(s.argv, "--kv-transfer-config")["kv_connector_extra_config"] == {"kv_lease_duration": 12}


def test_lease_knob_and_default_are_the_installed_vllms():
    nixl = pytest.importorskip("vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_scheduler",
                               reason="needs vLLM")
    source = inspect.getsource(nixl)
    assert f'"kv_lease_duration", {VLLM_KV_LEASE_S}' in " ".join(source.split())


def test_hold_must_stay_below_the_lease():
    text = _error(_gpu(scheduler={"name": "stream", "max_hold_s": 30}))
    assert "scheduler.max_hold_s" in text and "kv_lease_s = 30" in text
    assert "scheduler.max_hold_s" in _error(_gpu(scheduler={"name": "stream", "max_hold_s": 50}, kv_lease_s=40))
    assert _cfg(scheduler={"name": "stream", "max_hold_s": 20}).scheduler.model_dump()["max_hold_s"] == 20


class _Unbounded:
    def __init__(self, router, max_hold_s: float | None = None) -> None:
        self.max_hold_s = max_hold_s


class _Bounded:
    def __init__(self, router, max_hold_s: float | None = 8.0) -> None:
        self.max_hold_s = max_hold_s


def test_unset_hold_defaults_below_the_lease(monkeypatch):
    from streamserve.policies import registry

    monkeypatch.setitem(registry.SCHEDULERS, "unbounded", _Unbounded)
    monkeypatch.setitem(registry.SCHEDULERS, "bounded", _Bounded)
    assert _cfg(scheduler={"name": "unbounded"}).scheduler.model_dump()["max_hold_s"] == 15
    assert _cfg(scheduler={"name": "unbounded"}, kv_lease_s=10).scheduler.model_dump()["max_hold_s"] == 5
    assert "max_hold_s" not in _cfg(scheduler={"name": "bounded"}).scheduler.model_dump()  # its 8 s is fine
    assert _cfg(scheduler={"name": "bounded"}, kv_lease_s=6).scheduler.model_dump()["max_hold_s"] == 3
    colocated = _cfg(scheduler={"name": "unbounded"}, engines=[{"role": "colocated", "port": 8201, "devices": [0]}])
    assert "max_hold_s" not in colocated.scheduler.model_dump()  # no KV is ever held


# ---------------------------------------------------------------- 3. speculation with NIXL
@pytest.mark.parametrize("method,vllm_method", [("draft", "draft_model"), ("eagle", "eagle"), ("eagle3", "eagle3")])
def test_model_drafters_run_on_the_prefill_engine_at_one_token(method, vllm_method):
    spec = {"method": method, "k_max": 3, "draft_model": "/models/drafter"}
    prefill, decode = engine_specs(_cfg(speculation=spec), base_env={})
    sp = _json_arg(prefill.argv, "--speculative-config")
    sd = _json_arg(decode.argv, "--speculative-config")
    assert sp == {"method": vllm_method, "model": "/models/drafter", "num_speculative_tokens": 1}
    assert (sd["method"], sd["model"], sd["num_speculative_tokens"]) == (vllm_method, "/models/drafter", 3)
    assert "--scheduler-cls" not in prefill.argv and _arg(decode.argv, "--scheduler-cls") == SPEC_SCHEDULER_CLS


def test_ngram_speculates_on_the_decode_engine_only():
    prefill, decode = engine_specs(_cfg(), base_env={})
    assert "--speculative-config" not in prefill.argv and "STREAMSERVE_SPEC_POLICY" not in prefill.env
    sd = _json_arg(decode.argv, "--speculative-config")
    assert (sd["method"], sd["num_speculative_tokens"]) == ("ngram", 4)


def test_drafter_needs_a_model():
    assert "draft_model: required for method=eagle3" in _error(_gpu(speculation={"method": "eagle3"}))


# ---------------------------------------------------------------- 4. CUDA graphs for every k
@pytest.mark.parametrize("k_max,max_num_seqs", [(1, 2), (4, 5), (4, 128), (8, 9), (16, 512)])
def test_k_table_makes_vllm_plan_every_k(k_max, max_num_seqs):
    dynamic = pytest.importorskip("vllm.v1.spec_decode.dynamic.utils", reason="needs vLLM")
    table = k_table(k_max, max_num_seqs)
    dense = dynamic.build_dynamic_sd_schedule_lookup(table, vllm_max_batch_size=max_num_seqs,
                                                     vllm_num_speculative_tokens=k_max)
    assert sorted(set(dense[1:])) == list(range(k_max + 1))


def test_k_table_is_what_the_decode_engine_gets():
    _, decode = engine_specs(_cfg(), base_env={})
    sd = _json_arg(decode.argv, "--speculative-config")
    assert sd["num_speculative_tokens_per_batch_size"] == k_table(4, 32)
    assert sorted({k for _, _, k in sd["num_speculative_tokens_per_batch_size"]}) == [0, 1, 2, 3, 4]


def test_too_few_sequences_for_every_k_is_a_config_error():
    data = _gpu()
    data["engines"][1]["max_num_seqs"] = 4
    assert "engines.1.max_num_seqs: 4 is below k_max + 1 = 5" in _error(data)
    data["speculation"] = {"method": "none"}
    parse_live(data, "x.yaml")  # no speculation, no table


# ---------------------------------------------------------------- 5. hook check
def test_hook_check_passes_on_the_installed_vllm():
    specsched = pytest.importorskip("streamserve.gpu.specsched", reason="needs vLLM")
    specsched.check_vllm_hooks()
    specsched.check_k_table([0, 0, 1, 2, 3, 4, 4], 4)


def test_hook_check_fails_loudly_on_a_changed_scheduler():
    specsched = pytest.importorskip("streamserve.gpu.specsched", reason="needs vLLM")
    version = specsched.vllm_version()

    class ReadsAMethod(specsched.Scheduler):
        def schedule(self, *args, **kwargs):  # a restructured lookup, as vLLM proposals would make it
            num_spec_tokens_to_schedule = self.dynamic_sd.k_for(len(self.running))
            return num_spec_tokens_to_schedule

    class NewStats(specsched.Scheduler):
        def make_spec_decoding_stats(self, stats, request_id):
            return stats

    for changed, what in ((ReadsAMethod, "no longer reads k as self.dynamic_sd_lookup"),
                          (NewStats, "make_spec_decoding_stats takes")):
        with pytest.raises(specsched.VllmHookError) as e:
            specsched.check_vllm_hooks(changed)
        assert str(e.value).startswith(f"vLLM {version}: ") and what in str(e.value)
    with pytest.raises(specsched.VllmHookError, match=r"dynamic_sd_lookup is NoneType"):
        specsched.check_k_table(None, 4)
    with pytest.raises(specsched.VllmHookError, match=r"lists k = \[0, 4\], not every k from 0 to 4"):
        specsched.check_k_table([0, 0, 4, 4], 4)


# ---------------------------------------------------------------- 6. entry point
def test_engines_start_through_vllm_serve_as_a_module():
    for s in engine_specs(_cfg(), base_env={}):
        assert s.argv[1:5] == ["-m", ENTRY_MODULE, "serve", "/models/m"]
        assert "vllm.entrypoints.openai.api_server" not in s.argv


def test_version_lookup_names_the_build_that_provides_vllm(monkeypatch):
    def original(name: str) -> str:
        if name == "vllm-cpu":
            return "0.32.0"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"vllm": ["vllm-cpu"]})
    lookup = version_lookup(original)
    assert lookup("vllm") == "0.32.0+cpu"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        lookup("numpy")
    assert version_lookup(lambda name: "0.32.0")("vllm") == "0.32.0"  # the CUDA build: untouched


def test_an_engine_bound_to_cores_runs_every_process_there(monkeypatch):
    """vllm_main sets the affinity before vLLM starts its EngineCore and worker, which inherit it."""
    import sys
    import types

    from streamserve.gpu import vllm_main

    seen: dict = {}
    fake = types.ModuleType("vllm.entrypoints.cli.main")
    fake.main = lambda: seen.setdefault("argv", list(sys.argv))
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.cli.main", fake)
    monkeypatch.setattr(vllm_main.os, "sched_setaffinity", lambda pid, cores: seen.setdefault("cores", cores))
    monkeypatch.setattr(importlib.metadata, "version", importlib.metadata.version)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("STREAMSERVE_CPU_CORES", "1,3")
    vllm_main.main(["serve", "m"])
    assert seen == {"cores": {1, 3}, "argv": ["vllm", "serve", "m"]}


@pytest.fixture(scope="module")
def serve_parser():
    pytest.importorskip("vllm", reason="needs vLLM")
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    return parser


@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_vllm_serve_accepts_every_generated_command_line(serve_parser, method):
    spec = {"method": method, "k_max": 4, "draft_model": "/models/drafter"}
    for s in engine_specs(_cfg(speculation=spec), base_env={}):
        args = serve_parser.parse_args(s.argv[3:])
        assert (args.subparser, args.model_tag, args.port) == ("serve", "/models/m", s.entry.port)
        assert args.kv_transfer_config.kv_role == _json_arg(s.argv, "--kv-transfer-config")["kv_role"]
        assert str(args.attention_backend).endswith("FLASH_ATTN")
        if s.entry.role == "decode":
            assert args.scheduler_cls == SPEC_SCHEDULER_CLS and args.async_scheduling is False
            assert args.speculative_config["num_speculative_tokens_per_batch_size"] == k_table(4, 32)


# ---------------------------------------------------------------- 7. placement
def test_tp_sizes_must_divide_one_another():
    def pair(tp_p: int, tp_d: int) -> dict:
        return _gpu(engines=[{"role": "prefill", "port": 8201, "tp": tp_p, "devices": list(range(tp_p))},
                             {"role": "decode", "port": 8202, "tp": tp_d, "devices": list(range(4, 4 + tp_d))}])

    assert "engines.0.tp: prefill tp=3 and decode tp=2 (engines.1) must divide one another" in _error(pair(3, 2))
    for tp_p, tp_d in ((1, 2), (4, 2), (2, 2), (1, 4)):
        parse_live(pair(tp_p, tp_d), "x.yaml")


def test_side_channel_ports_are_spaced_by_tp_and_distinct():
    cfg = _cfg(engines=[{"role": "prefill", "port": 8201, "tp": 2, "devices": [0, 1]},
                        {"role": "decode", "port": 8202, "devices": [2]},
                        {"role": "prefill", "port": 8203, "devices": [3]},
                        {"role": "decode", "port": 8204, "tp": 2, "devices": [4, 5]}])
    specs = engine_specs(cfg, base_env={})
    assert [s.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] for s in specs] == ["5600", "5602", "5603", "5604"]
    assert [s.side_ports for s in specs] == [[5600, 5601], [5602], [5603], [5604, 5605]]
    assert all(s.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1" for s in specs)
    assert specs[3].ports() == [8204, 5604, 5605]


@pytest.mark.parametrize("base,whose", [(8201, "engines.0"), (8202, "engines.1"), (8199, "the front end")])
def test_side_channel_ports_never_meet_http_ports(base, whose):
    data = _gpu(kv={"side_channel_base": base})
    data["engines"][0].update(tp=2, devices=[0, 1])
    data["engines"][1]["devices"] = [2]
    text = _error(data)
    assert "kv.side_channel_base" in text and f"is the HTTP port of {whose}" in text


def test_busy_side_channel_port_stops_the_start(tmp_path):
    data = _gpu(kv={"side_channel_base": 8290}, log_dir=str(tmp_path))
    spec = engine_specs(parse_live(data, "x.yaml"), base_env={})[1]
    assert busy_ports(spec) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 8291))
        s.listen()
        assert busy_ports(spec) == [8291]
        with pytest.raises(EngineError, match="engine 1 \\(decode\\): port 8291 is already in use"):
            Engine(spec).start()
    assert not spec.log_path.exists()  # nothing was started


def test_both_sides_get_the_same_attention_backend():
    specs = engine_specs(_cfg(attention_backend="FLASHINFER"), base_env={})
    assert {_arg(s.argv, "--attention-backend") for s in specs} == {"FLASHINFER"}
    assert "attention_backend: required with NixlConnector" in _error(_gpu(attention_backend=None))
    data = _gpu()
    data["engines"][1]["extra_args"] = ["--attention-backend=TRITON_ATTN"]
    assert "engines.1.extra_args: --attention-backend is generated" in _error(data)


def test_one_gpu_runs_prefill_and_decode_only_in_test_mode():
    shared = {"engines": [{"role": "prefill", "port": 8201, "devices": [0]},
                          {"role": "decode", "port": 8202, "devices": [0]}], "gpu_memory_utilization": 0.4}
    assert "GPU 0 is given to more than one engine (test_shared_gpu: true allows it" in _error(_gpu(**shared))
    specs = engine_specs(_cfg(test_shared_gpu=True, **shared), base_env={})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "0"]
    assert {_arg(s.argv, "--gpu-memory-utilization") for s in specs} == {"0.4"}
    crowded = dict(shared, gpu_memory_utilization=0.5)
    assert "2 engines share GPU 0, so 2 x 0.5 must be <= 0.9" in _error(_gpu(test_shared_gpu=True, **crowded))


def test_shipped_gpu_configs_still_parse():
    from importlib import resources

    for name in ("live-gpu.yaml", "live-gpu-dp.yaml", "live-cpu.yaml"):
        text = resources.files("streamserve.configs").joinpath(name).read_text()
        engine_specs(parse_live(yaml.safe_load(text), name), base_env={}, log_dir=Path("/tmp/x"))


def test_lease_is_whole_seconds_of_at_least_six():
    assert "kv_lease_s" in _error(_gpu(kv_lease_s=5))
    assert "kv_lease_s" in _error(_gpu(kv_lease_s=7.5))
