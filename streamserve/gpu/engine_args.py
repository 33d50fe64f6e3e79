"""The command line and environment of every vLLM engine of a live config.

Pure functions of the config (``engine_command``, ``engine_env``, ``engine_specs``):
they start nothing, so the GPU path (NixlConnector, CUDA_VISIBLE_DEVICES, TP) is unit
tested on machines that have no GPU. ``engines.py`` starts and supervises the
processes these recipes describe.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from streamserve.gpu.config import EngineEntry, LiveConfig

SPEC_SCHEDULER_CLS = "streamserve.gpu.specsched.SpecuStreamScheduler"
ENV_SPEC_POLICY = "STREAMSERVE_SPEC_POLICY"  # JSON: the policy config the engine's scheduler builds
ENV_K_TRACE = "STREAMSERVE_K_TRACE"  # file the engine's scheduler appends k changes to
ENV_STEP_LOG = "STREAMSERVE_STEP_LOG"  # file it appends every step to (profile_steps: true)
NIXL_SIDE_CHANNEL_BASE = 5600  # one NIXL handshake port per engine on a host


@dataclass
class EngineSpec:
    """Everything needed to start one engine: fully resolved, no defaults left."""

    lane_id: int
    entry: EngineEntry
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    k_trace_path: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry.port}"


def repo_root() -> Path:
    """The folder holding the ``streamserve`` package, put on the engines' PYTHONPATH so
    vLLM can import our scheduler class."""
    return Path(__file__).resolve().parents[2]


def kv_transfer_config(cfg: LiveConfig) -> dict[str, object] | None:
    """vLLM's ``--kv-transfer-config`` for a disaggregated deployment (None: colocated).

    Every engine is ``kv_both``: the front end, not the engine's role, decides per request
    whether it prefills for a remote decode or decodes a remote prefill (through the
    request's ``kv_transfer_params``), as vLLM's own disaggregated proxy does.
    """
    if not cfg.disaggregated:
        return None
    conf: dict[str, object] = {"kv_connector": cfg.connector, "kv_role": "kv_both"}
    if cfg.connector == "ExampleConnector":
        conf["kv_connector_extra_config"] = {"shared_storage_path": cfg.kv.shared_storage_path}
    return conf


def speculative_config(cfg: LiveConfig) -> dict[str, object] | None:
    spec = cfg.speculation
    if spec.method == "none":
        return None
    conf: dict[str, object] = {"num_speculative_tokens": spec.k_max}
    if spec.method == "ngram":
        conf.update(method="ngram", prompt_lookup_min=spec.prompt_lookup_min,
                    prompt_lookup_max=spec.prompt_lookup_max)
    else:
        conf.update(model=spec.draft_model)
    return conf


def speculates(entry: EngineEntry, cfg: LiveConfig) -> bool:
    """Speculation runs where tokens are decoded: decode and colocated engines."""
    return cfg.speculation.method != "none" and entry.role != "prefill"


def resolve_model(model: str) -> str:
    """``tiny``/``smollm2`` name a prepared model in the cache; anything else is a path."""
    from streamserve.gpu.models import MODEL_NAMES, model_dir

    if model in MODEL_NAMES and not Path(model).exists():
        return str(model_dir(model))
    return model


def engine_command(lane_id: int, entry: EngineEntry, cfg: LiveConfig, python: str) -> list[str]:
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model(cfg.model),
        "--served-model-name", cfg.model_name,
        "--host", "127.0.0.1", "--port", str(entry.port),
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-seqs", str(entry.max_num_seqs),
        "--dtype", cfg.dtype,
        "--seed", str(cfg.seed),
        "--disable-uvicorn-access-log",
    ]
    if cfg.block_size is not None:
        argv += ["--block-size", str(cfg.block_size)]
    if cfg.device == "cuda":
        argv += ["--tensor-parallel-size", str(entry.tp),
                 "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    kv = kv_transfer_config(cfg)
    if kv is not None:
        argv += ["--kv-transfer-config", json.dumps(kv, sort_keys=True)]
    if speculates(entry, cfg):
        # Our scheduler subclasses the synchronous Scheduler; vLLM would otherwise pick
        # async scheduling on GPUs for some drafters and bypass it.
        argv += ["--speculative-config", json.dumps(speculative_config(cfg), sort_keys=True),
                 "--scheduler-cls", SPEC_SCHEDULER_CLS, "--no-async-scheduling"]
    return argv + list(entry.extra_args)


def engine_env(lane_id: int, entry: EngineEntry, cfg: LiveConfig, base: dict[str, str],
               k_trace: Path | None) -> dict[str, str]:
    env = dict(base)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)
    if cfg.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in entry.devices)
        if cfg.disaggregated and cfg.connector == "NixlConnector":
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(NIXL_SIDE_CHANNEL_BASE + lane_id)
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
    else:
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        threads = entry.cpu_threads or 1
        env["OMP_NUM_THREADS"] = str(threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    if speculates(entry, cfg):
        policy = cfg.spec_policy.model_dump()
        perf = cfg.perf.model_dump()
        if perf["profile"] is not None:  # the engine may run elsewhere than the config's folder
            perf["profile"] = str(Path(perf["profile"]).resolve())
        env[ENV_SPEC_POLICY] = json.dumps({
            "lane_id": lane_id, "tp": entry.tp, "policy": policy,
            "perf": perf, "draft": cfg.draft_profile_name,
        }, sort_keys=True)
        if k_trace is not None:
            env[ENV_K_TRACE] = str(k_trace)
            if cfg.profile_steps:
                env[ENV_STEP_LOG] = str(k_trace.with_name(f"steps-lane{lane_id}.jsonl"))
    return env


def engine_specs(cfg: LiveConfig, base_env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> list[EngineSpec]:
    """The resolved start recipe of every engine in ``cfg``, in lane order."""
    base = dict(os.environ if base_env is None else base_env)
    logs = Path(log_dir or cfg.log_dir)
    python = cfg.python or sys.executable
    specs = []
    for lane_id, entry in enumerate(cfg.engines):
        k_trace = logs / f"k-trace-lane{lane_id}.jsonl" if speculates(entry, cfg) else None
        specs.append(EngineSpec(
            lane_id=lane_id, entry=entry,
            argv=engine_command(lane_id, entry, cfg, python),
            env=engine_env(lane_id, entry, cfg, base, k_trace),
            log_path=logs / f"engine-{lane_id}-{entry.role}.log",
            k_trace_path=k_trace,
        ))
    return specs


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
