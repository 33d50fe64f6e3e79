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
    extra_args: list[str] = Field(default_factory=list)  # passed to vLLM's api_server verbatim


class KVConfig(_Strict):
    """How KV moves from prefill to decode engines."""

    connector: Literal["auto", "NixlConnector", "ExampleConnector"] = "auto"  # auto: by device
    shared_storage_path: str = "/tmp/streamserve-kv"  # ExampleConnector only


class LiveSpeculation(_Strict):
    method: Literal["none", "ngram", "draft"] = "none"
    k_max: int = Field(4, ge=1, le=16)  # vLLM's num_speculative_tokens: the most k can be
    draft_model: str | None = None  # method=draft: path of the draft model
    prompt_lookup_min: int = Field(2, ge=1)  # method=ngram
    prompt_lookup_max: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "LiveSpeculation":
        if self.method == "draft" and not self.draft_model:
            raise ValueError("draft_model: required for method=draft")
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
    profile_steps: bool = False  # log every speculative step (tokens, duration) to fit `perf`
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
        if self.device == "cuda":
            used = [d for e in self.engines for d in e.devices]
            dup = sorted({d for d in used if used.count(d) > 1})
            if dup:
                raise ValueError(f"engines: GPU {dup[0]} is given to more than one engine")
        if self.kv.connector == "NixlConnector" and self.device == "cpu":
            raise ValueError("kv.connector: NixlConnector needs device: cuda (use ExampleConnector on CPU)")
        return self

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
        """The profile's draft-cost entry for the drafter: ``perf.draft`` when given."""
        if self.perf.draft is not None or self.speculation.method == "none":
            return self.perf.draft
        return "ngram" if self.speculation.method == "ngram" else None

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).name


def parse_live(data: dict[str, Any], origin: str, text: str | None = None) -> LiveConfig:
    return parse_as(LiveConfig, data, origin, text)


def load_live(path: str | Path) -> LiveConfig:
    data, text = read_mapping(path)
    return parse_live(data, str(path), text)
