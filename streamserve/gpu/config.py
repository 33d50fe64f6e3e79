"""The live-serving config: which vLLM engines to start, on which devices, joined how,
and which policies drive them.

One file describes a whole deployment so that ``streamserve serve --config live.yaml``
is the only command a user runs; the CPU and GPU examples differ only in ``device``,
the connector and the device lists, which is what lets CI test the GPU path's code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamserve.config import PolicyConfig, check_role_mix, parse_as, read_mapping

VLLM_KV_LEASE_S = 30  # vLLM's default kv_lease_duration (NIXL): a prefill engine frees unclaimed KV after it
MODEL_DRAFTERS = ("draft", "eagle", "eagle3")  # speculation methods that run a draft model
# Flags the config generates for every engine; setting them in extra_args would let the
# two sides of a KV hand-off disagree.
GENERATED_FLAGS = ("--attention-backend", "--kv-transfer-config", "--speculative-config")
SHARED_GPU_BUDGET = 0.9  # test_shared_gpu: the engines on one GPU may claim this much of it together


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineEntry(_Strict):
    """One vLLM engine, i.e. one lane."""

    role: Literal["prefill", "decode", "colocated"]
    port: int = Field(ge=1, le=65535)
    devices: list[int] = Field(default_factory=list)  # GPU indices (CUDA_VISIBLE_DEVICES); empty on CPU
    tp: int = Field(1, ge=1)
    pair: int | None = None
    max_num_seqs: int = Field(32, ge=1)
    cpu_threads: int | None = Field(None, ge=1)  # CPU only: OpenMP threads for this engine
    # CPU only: cores the whole engine (API server, EngineCore, worker) and its torch threads
    # are bound to; empty: not bound. Engines on cores of their own do not slow each other.
    cpu_cores: list[int] = Field(default_factory=list)
    extra_args: list[str] = Field(default_factory=list)  # passed to `vllm serve` verbatim


class KVConfig(_Strict):
    """How KV moves from prefill to decode engines.

    Prefill engines are KV producers and decode engines KV consumers (vLLM deprecates
    ``kv_both`` for NIXL); a decode engine that cannot load a prompt's KV recomputes it
    by default instead of failing the request.
    """

    connector: Literal["auto", "NixlConnector", "ExampleConnector"] = "auto"  # auto: by device
    shared_storage_path: str = "/tmp/streamserve-kv"  # ExampleConnector only
    load_failure_policy: Literal["recompute", "fail"] = "recompute"  # decode engines' kv_load_failure_policy
    side_channel_base: int = Field(5600, ge=1024, le=65535)  # NIXL handshake ports start here (vLLM's default)


class LiveSpeculation(_Strict):
    method: Literal["none", "ngram", "draft", "eagle", "eagle3"] = "none"
    k_max: int = Field(4, ge=1, le=16)  # vLLM's num_speculative_tokens: the most k can be
    draft_model: str | None = None  # draft/eagle/eagle3: path of the drafter
    prompt_lookup_min: int = Field(2, ge=1)  # method=ngram
    prompt_lookup_max: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "LiveSpeculation":
        if self.method in MODEL_DRAFTERS and not self.draft_model:
            raise ValueError(f"draft_model: required for method={self.method}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min: must be <= prompt_lookup_max")
        return self


class PerfRef(_Strict):
    """Which performance model the policies predict with (a profile entry).

    Policies such as FlowGuard and SpecuStream weigh costs with a ``LanePerf``; on live
    engines they get the profile entry named here. Only relative costs matter to them,
    so the shipped A100 profile is a usable stand-in until one is fitted for the
    deployment's own hardware.
    """

    profile: str | None = None  # None: the profile shipped with streamserve
    model: str = "opt-13b"
    gpu: str = "A100-80GB"
    # The profile's ``drafts`` entry that costs the drafter (e.g. "small-model" in the
    # shipped profile); None: "ngram" for ngram speculation, no drafter cost otherwise.
    draft: str | None = None


class FrontendConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    metrics_interval_s: float = Field(0.5, gt=0)  # how often lanes scrape their engine's /metrics
    request_timeout_s: float = Field(600.0, gt=0)


class LiveConfig(_Strict):
    name: str = "live"
    model: str  # a model folder vLLM can load, or `tiny`/`smollm2` (see `streamserve models prepare`)
    served_model_name: str | None = None  # the name clients use; default: the folder name
    device: Literal["cpu", "cuda"] = "cpu"
    max_model_len: int = Field(2048, ge=16)
    dtype: str = "auto"
    block_size: int | None = Field(None, ge=1)  # KV block size; None: vLLM's default for the device
    seed: int = 0
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    attention_backend: str | None = None  # vLLM's --attention-backend for every engine; required with NIXL
    # NIXL kv_lease_duration: a prefill keeps unclaimed KV this long. vLLM renews a claimed
    # lease every kv_lease_s // 6 s (integer seconds), so below 6 it would renew every step.
    kv_lease_s: int = Field(VLLM_KV_LEASE_S, ge=6)
    test_shared_gpu: bool = False  # tests only: let engines share a GPU (at low gpu_memory_utilization)
    cpu_kvcache_space_gib: int = Field(1, ge=1)  # VLLM_CPU_KVCACHE_SPACE on CPU
    engines: list[EngineEntry] = Field(min_length=1)
    kv: KVConfig = KVConfig()
    speculation: LiveSpeculation = LiveSpeculation()
    frontend: FrontendConfig = FrontendConfig()
    # StreamServe's policies by default; the baselines are {name: fcfs}, {name: round_robin}
    # and {name: fixed, k: 4}.
    scheduler: PolicyConfig = PolicyConfig(name="stream")
    router: PolicyConfig = PolicyConfig(name="flowguard")
    spec_policy: PolicyConfig = PolicyConfig(name="specustream")
    perf: PerfRef = PerfRef()
    profile_steps: bool = False  # every engine logs every step (log_dir/steps-lane{i}.jsonl) for calibrate
    log_dir: str = "streamserve-logs"
    startup_timeout_s: float = Field(600.0, gt=0)
    python: str | None = None  # interpreter that has vLLM; default: the one running streamserve

    @model_validator(mode="after")
    def _check(self) -> "LiveConfig":
        check_role_mix({e.role for e in self.engines}, "engines")
        seen = {self.frontend.port}
        for i, e in enumerate(self.engines):
            if e.port in seen:
                raise ValueError(f"engines.{i}.port: port {e.port} is used twice")
            seen.add(e.port)
            if self.device == "cuda":
                if len(e.devices) != e.tp:
                    raise ValueError(f"engines.{i}.devices: needs {e.tp} GPU indices for tp={e.tp}, got {e.devices}")
            elif e.devices or e.tp != 1:
                raise ValueError(f"engines.{i}: devices and tp > 1 need device: cuda")
            if e.cpu_cores:
                if self.device != "cpu":
                    raise ValueError(f"engines.{i}.cpu_cores: only for device: cpu (GPU engines take devices)")
                if min(e.cpu_cores) < 0 or len(set(e.cpu_cores)) != len(e.cpu_cores):
                    raise ValueError(f"engines.{i}.cpu_cores: distinct core ids >= 0, got {e.cpu_cores}")
                if e.cpu_threads is not None and e.cpu_threads != len(e.cpu_cores):
                    raise ValueError(f"engines.{i}.cpu_cores: {len(e.cpu_cores)} cores for cpu_threads="
                                     f"{e.cpu_threads}; give one core per thread (or leave cpu_threads out)")
            for flag in GENERATED_FLAGS:
                if any(a == flag or a.startswith(flag + "=") for a in e.extra_args):
                    raise ValueError(f"engines.{i}.extra_args: {flag} is generated for every engine from the config; "
                                     "set it there")
        if self.device == "cuda":
            self._check_gpu_sharing()
        if self.kv.connector == "NixlConnector" and self.device == "cpu":
            raise ValueError("kv.connector: NixlConnector needs device: cuda (use ExampleConnector on CPU)")
        self._check_speculation()
        if self.disaggregated:
            self._check_tp_ratios()
            if self.connector == "NixlConnector":
                self._check_nixl()
            self._bound_hold()
        return self

    def _check_gpu_sharing(self) -> None:
        per_gpu: dict[int, int] = {}
        for e in self.engines:
            for d in e.devices:
                per_gpu[d] = per_gpu.get(d, 0) + 1
        shared = sorted(d for d, n in per_gpu.items() if n > 1)
        if not shared:
            return
        gpu, n = shared[0], per_gpu[shared[0]]
        if not self.test_shared_gpu:
            raise ValueError(f"engines: GPU {gpu} is given to more than one engine "
                             "(test_shared_gpu: true allows it, for tests on one GPU)")
        if n * self.gpu_memory_utilization > SHARED_GPU_BUDGET:
            raise ValueError(f"gpu_memory_utilization: {n} engines share GPU {gpu}, so "
                             f"{n} x {self.gpu_memory_utilization} must be <= {SHARED_GPU_BUDGET}")

    def _check_speculation(self) -> None:
        """vLLM's per-batch-size k table (see ``engine_args.k_table``) needs a batch size
        for every k from 0 to k_max, so that graphs are captured for each."""
        if self.speculation.method == "none":
            return
        need = self.speculation.k_max + 1
        for i, e in enumerate(self.engines):
            if e.role != "prefill" and e.max_num_seqs < need:
                raise ValueError(f"engines.{i}.max_num_seqs: {e.max_num_seqs} is below k_max + 1 = {need}; "
                                 "the engine's per-batch-size k table must list every k from 0 to k_max")

    def _check_tp_ratios(self) -> None:
        """NIXL moves KV between different TP sizes only when one divides the other."""
        prefill = [(i, e.tp) for i, e in enumerate(self.engines) if e.role == "prefill"]
        decode = [(j, e.tp) for j, e in enumerate(self.engines) if e.role == "decode"]
        for i, p in prefill:
            for j, d in decode:
                if max(p, d) % min(p, d):
                    raise ValueError(f"engines.{i}.tp: prefill tp={p} and decode tp={d} (engines.{j}) "
                                     "must divide one another for KV transfer")

    def _check_nixl(self) -> None:
        if self.attention_backend is None:
            raise ValueError("attention_backend: required with NixlConnector, so prefill and decode engines use "
                             "the same one (e.g. FLASH_ATTN)")
        http = {self.frontend.port: "the front end"} | {e.port: f"engines.{j}" for j, e in enumerate(self.engines)}
        for i, ports in enumerate(self.side_channel_ports()):
            for port in ports:
                if port > 65535:
                    raise ValueError(f"kv.side_channel_base: engines.{i}'s NIXL side-channel port {port} is over 65535")
                if port in http:
                    raise ValueError(f"kv.side_channel_base: engines.{i}'s NIXL side-channel port {port} is the HTTP "
                                     f"port of {http[port]}")

    def _bound_hold(self) -> None:
        """A prefilled request may wait for a decode lane only while the prefill engine
        keeps its KV: the scheduler's ``max_hold_s`` must be below ``kv_lease_s``. When
        the config leaves it unset and the scheduler's own default is unbounded or too
        long, half the lease is used, leaving the other half for the hand-off itself."""
        opts = self.scheduler.model_dump()
        if "max_hold_s" in opts:
            hold = opts["max_hold_s"]
            if not isinstance(hold, (int, float)) or isinstance(hold, bool) or not 0 < hold < self.kv_lease_s:
                raise ValueError(f"scheduler.max_hold_s: must be a number of seconds in (0, kv_lease_s = "
                                 f"{self.kv_lease_s}), got {hold!r}: the prefill engine frees KV held longer")
            return
        default = scheduler_default(opts["name"], "max_hold_s")
        if default is _ABSENT:
            return
        if default is None or not default < self.kv_lease_s:
            self.scheduler = PolicyConfig.model_validate({**opts, "max_hold_s": self.kv_lease_s / 2})

    def side_channel_ports(self) -> list[list[int]]:
        """Each engine's NIXL handshake ports: one block of ``tp`` ports per engine,
        from ``kv.side_channel_base`` up, as vLLM's NIXL scripts space them."""
        out, port = [], self.kv.side_channel_base
        for e in self.engines:
            out.append(list(range(port, port + e.tp)))
            port += e.tp
        return out

    @property
    def disaggregated(self) -> bool:
        return any(e.role != "colocated" for e in self.engines)

    @property
    def connector(self) -> str:
        if self.kv.connector != "auto":
            return self.kv.connector
        return "NixlConnector" if self.device == "cuda" else "ExampleConnector"

    @property
    def draft_profile_name(self) -> str | None:
        """The profile's draft-cost entry for the drafter: ``perf.draft`` when given (a
        model drafter's cost depends on which model it is, so the config names it)."""
        if self.perf.draft is not None or self.speculation.method == "none":
            return self.perf.draft
        return "ngram" if self.speculation.method == "ngram" else None

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).name


_ABSENT = object()


def scheduler_default(name: str, param: str) -> Any:
    """The default of ``param`` in the registered scheduler ``name`` (``_ABSENT`` when it
    has no such parameter, or is not a registered name)."""
    import inspect

    from streamserve.policies.registry import SCHEDULERS

    factory = SCHEDULERS.get(name)
    if factory is None:
        return _ABSENT
    p = inspect.signature(factory).parameters.get(param)
    return _ABSENT if p is None or p.default is inspect.Parameter.empty else p.default


def parse_live(data: dict[str, Any], origin: str, text: str | None = None) -> LiveConfig:
    return parse_as(LiveConfig, data, origin, text)


def load_live(path: str | Path) -> LiveConfig:
    data, text = read_mapping(path)
    return parse_live(data, str(path), text)
