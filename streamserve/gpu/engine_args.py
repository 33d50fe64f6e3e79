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
from dataclasses import dataclass, field
from pathlib import Path

from streamserve.gpu.config import EngineEntry, LiveConfig
from streamserve.gpu.vllm_main import ENV_CPU_CORES

SPEC_SCHEDULER_CLS = "streamserve.gpu.specsched.SpecuStreamScheduler"
STEPLOG_SCHEDULER_CLS = "streamserve.gpu.steplog.StepLogScheduler"  # profile_steps on engines that do not speculate
ENTRY_MODULE = "streamserve.gpu.vllm_main"  # runs `vllm serve` on every vLLM build (see that module)
ENV_SPEC_POLICY = "STREAMSERVE_SPEC_POLICY"  # JSON: the policy config the engine's scheduler builds
ENV_K_TRACE = "STREAMSERVE_K_TRACE"  # file the engine's scheduler appends k changes to
ENV_STEP_LOG = "STREAMSERVE_STEP_LOG"  # file it appends every step to (profile_steps: true)
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}  # colocated engines move no KV
VLLM_SPEC_METHODS = {"ngram": "ngram", "draft": "draft_model", "eagle": "eagle", "eagle3": "eagle3"}


@dataclass
class EngineSpec:
    """Everything needed to start one engine: fully resolved, no defaults left."""

    lane_id: int
    entry: EngineEntry
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    k_trace_path: Path | None
    side_ports: list[int] = field(default_factory=list)  # NIXL handshake ports it will listen on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry.port}"

    def ports(self) -> list[int]:
        """Every port the engine binds: its HTTP port, then its NIXL side channels."""
        return [self.entry.port, *self.side_ports]


def repo_root() -> Path:
    """The folder holding the ``streamserve`` package, put on the engines' PYTHONPATH so
    vLLM can import our scheduler class."""
    return Path(__file__).resolve().parents[2]

BOUNDED_EXAMPLE_CONNECTOR = ("BoundedExampleConnector", "streamserve.gpu.kvstore")  # class, module


def kv_transfer_config(entry: EngineEntry, cfg: LiveConfig) -> dict[str, object] | None:
    """vLLM's ``--kv-transfer-config`` for one engine (None: a colocated engine).

    Prefill engines produce KV and decode engines consume it, the roles vLLM's NIXL
    references use (0.32 warns that ``kv_both`` is deprecated). Both sides get the same
    KV lease (``kv_lease_duration``: the producer frees a request's blocks when no
    consumer has claimed them for that long; the consumer's heartbeats renew it), and
    a decode engine whose KV load fails recomputes the prompt rather than failing the
    request, unless ``kv.load_failure_policy`` says fail.
    """
    if entry.role == "colocated":
        return None
    conf: dict[str, object] = {"kv_connector": cfg.connector, "kv_role": KV_ROLES[entry.role]}
    if cfg.connector == "ExampleConnector":  # ours: the same, with a bounded folder (gpu/kvstore.py)
        conf.update(kv_connector=BOUNDED_EXAMPLE_CONNECTOR[0], kv_connector_module_path=BOUNDED_EXAMPLE_CONNECTOR[1],
                    kv_connector_extra_config={"shared_storage_path": cfg.kv.shared_storage_path})
    else:
        conf["kv_connector_extra_config"] = {"kv_lease_duration": cfg.kv_lease_s}
    if entry.role == "decode":
        conf["kv_load_failure_policy"] = cfg.kv.load_failure_policy
    return conf


def k_table(k_max: int, max_num_seqs: int) -> list[list[int]]:
    """vLLM's ``num_speculative_tokens_per_batch_size`` listing every k from 0 to k_max.

    SpecuStream picks k itself (the scheduler subclass replaces vLLM's lookup), so the
    table's only job is to tell vLLM which k occur: the model runner then captures CUDA
    graphs for each verify length 1 + k (and the drafter's graphs for each k), instead
    of for 1 + k_max alone, and the step costs SpecuStream observes are those of graphs
    at every k. Batch size b < k_max + 1 is listed with k = b - 1, larger batches with
    k_max. Needs ``max_num_seqs >= k_max + 1`` (the config checks it).
    """
    table = [[k + 1, k + 1, k] for k in range(k_max)]
    return table + [[k_max + 1, max(max_num_seqs, k_max + 1), k_max]]


def speculative_config(entry: EngineEntry, cfg: LiveConfig) -> dict[str, object] | None:
    """vLLM's ``--speculative-config`` for one engine (None: it does not speculate).

    Decode and colocated engines speculate up to ``k_max`` with the k table. A prefill
    engine speculates only when the drafter is a model: vLLM's NIXL references start it
    with the same drafter at ``num_speculative_tokens: 1``, so that the drafter's KV
    exists on both sides and EAGLE's settings enter both NIXL compatibility hashes
    alike. n-gram needs nothing on the prefill side.
    """
    spec = cfg.speculation
    if spec.method == "none":
        return None
    method = VLLM_SPEC_METHODS[spec.method]
    if entry.role == "prefill":
        if spec.method == "ngram":
            return None
        return {"method": method, "model": resolve_model(spec.draft_model or ""), "num_speculative_tokens": 1}
    conf: dict[str, object] = {"method": method, "num_speculative_tokens": spec.k_max,
                               "num_speculative_tokens_per_batch_size": k_table(spec.k_max, entry.max_num_seqs)}
    if spec.method == "ngram":
        conf.update(prompt_lookup_min=spec.prompt_lookup_min, prompt_lookup_max=spec.prompt_lookup_max)
    else:
        conf["model"] = resolve_model(spec.draft_model or "")
    return conf


def speculates(entry: EngineEntry, cfg: LiveConfig) -> bool:
    """Speculation with a policy-chosen k runs where tokens are decoded: decode and
    colocated engines."""
    return cfg.speculation.method != "none" and entry.role != "prefill"


def resolve_model(model: str) -> str:
    """``tiny``/``smollm2`` name a prepared model in the cache; anything else is a path."""
    from streamserve.gpu.models import MODEL_NAMES, model_dir

    if model in MODEL_NAMES and not Path(model).exists():
        return str(model_dir(model))
    return model


def engine_command(lane_id: int, entry: EngineEntry, cfg: LiveConfig, python: str) -> list[str]:
    """``vllm serve`` for one engine, run as a module of the engine's interpreter."""
    argv = [
        python, "-m", ENTRY_MODULE, "serve", resolve_model(cfg.model),
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
    if cfg.attention_backend is not None:
        argv += ["--attention-backend", cfg.attention_backend]
    if cfg.device == "cuda":
        argv += ["--tensor-parallel-size", str(entry.tp),
                 "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    kv = kv_transfer_config(entry, cfg)
    if kv is not None:
        argv += ["--kv-transfer-config", json.dumps(kv, sort_keys=True)]
    spec = speculative_config(entry, cfg)
    if spec is not None:
        argv += ["--speculative-config", json.dumps(spec, sort_keys=True)]
    if speculates(entry, cfg):
        # Our scheduler subclasses the synchronous Scheduler; vLLM would otherwise pick
        # async scheduling on GPUs for some drafters and bypass it.
        argv += ["--scheduler-cls", SPEC_SCHEDULER_CLS, "--no-async-scheduling"]
    elif cfg.profile_steps:  # every engine logs its steps (one JSON line each: cheap next to a step)
        argv += ["--scheduler-cls", STEPLOG_SCHEDULER_CLS, "--no-async-scheduling"]
    if entry.role == "prefill" and cfg.connector == "ExampleConnector":
        # ExampleConnector saves a prompt's KV in the step that schedules it: a prompt split
        # over two steps (chunked prefill, when a burst passes the step's token budget) is
        # saved half, and the decode engine that loads it dies on the shape mismatch. Whole
        # prompts only, with a budget that fits the longest (extra_args may raise it).
        argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(cfg.max_model_len)]
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
        side = side_ports(cfg)[lane_id]
        if side:
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(side[0])
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
    else:
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        threads = entry.cpu_threads or len(entry.cpu_cores) or 1
        env["OMP_NUM_THREADS"] = str(threads)
        # vLLM's n-gram drafter runs numba's OpenMP pool, sized by default to every core of the
        # machine; its idle threads spin in a barrier, taking CPU from the engines (measured:
        # 3 of 10 s of a core on the 2-core machine of docs/results/fidelity/). Same budget as torch.
        env["NUMBA_NUM_THREADS"] = str(threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, entry.cpu_cores)) or "nobind"
        if entry.cpu_cores:
            # the whole engine, not only its torch threads: its API server and EngineCore
            # (which spins on sched_yield while the worker computes) stay off other engines' cores
            env[ENV_CPU_CORES] = env["VLLM_CPU_OMP_THREADS_BIND"]
    if speculates(entry, cfg):
        policy = cfg.spec_policy.model_dump()
        perf = cfg.perf.model_dump()
        if perf["profile"] is not None:  # the engine may run elsewhere than the config's folder
            perf["profile"] = str(Path(perf["profile"]).resolve())
        env[ENV_SPEC_POLICY] = json.dumps({
            "lane_id": lane_id, "tp": entry.tp, "role": entry.role, "policy": policy,
            "perf": perf, "draft": cfg.draft_profile_name,
        }, sort_keys=True)
        if k_trace is not None:
            env[ENV_K_TRACE] = str(k_trace)
    return env


def engine_specs(cfg: LiveConfig, base_env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> list[EngineSpec]:
    """The resolved start recipe of every engine in ``cfg``, in lane order."""
    base = dict(os.environ if base_env is None else base_env)
    logs = Path(log_dir or cfg.log_dir)
    python = cfg.python or sys.executable
    specs = []
    side = side_ports(cfg)
    for lane_id, entry in enumerate(cfg.engines):
        k_trace = logs / f"k-trace-lane{lane_id}.jsonl" if speculates(entry, cfg) else None
        env = engine_env(lane_id, entry, cfg, base, k_trace)
        if cfg.profile_steps:
            env[ENV_STEP_LOG] = str(logs / f"steps-lane{lane_id}.jsonl")
        specs.append(EngineSpec(
            lane_id=lane_id, entry=entry,
            argv=engine_command(lane_id, entry, cfg, python),
            env=env,
            log_path=logs / f"engine-{lane_id}-{entry.role}.log",
            k_trace_path=k_trace,
            side_ports=side[lane_id],
        ))
    return specs


def side_ports(cfg: LiveConfig) -> list[list[int]]:
    """Each engine's NIXL side-channel ports (none without NIXL on a disaggregated
    deployment). vLLM listens on ``VLLM_NIXL_SIDE_CHANNEL_PORT`` (plus the data-parallel
    rank); each engine gets a block of ``tp`` ports, as vLLM's NIXL scripts space them,
    so no two engines' ranks can meet whichever port per rank a vLLM version opens."""
    if cfg.device != "cuda" or not cfg.disaggregated or cfg.connector != "NixlConnector":
        return [[] for _ in cfg.engines]
    return cfg.side_channel_ports()


def busy_ports(spec: EngineSpec) -> list[int]:
    """The ports of ``spec`` that something else already holds."""
    return [p for p in spec.ports() if not port_free(p)]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
