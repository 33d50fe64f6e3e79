"""Validated configuration: a cluster (lanes, links, policies) and a run around it.

Files are YAML or TOML. Every validation error is reported as one line naming the file,
the field path and, for YAML, the line, e.g.
``cluster.yaml:7: lanes.1.tp: Input should be greater than or equal to 1``.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamserve.specs import GPUS, MODELS

ARCHITECTURES = ("streamserve", "vllm-tp", "vllm-dp")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (one line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Strict):
    """vLLM engine knobs that shape batching and memory (same names as vLLM's)."""

    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=16)
    block_size: int = Field(16, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_chunked_prefill: bool = True
    max_waiting: int = Field(4096, ge=1)  # the lane's bounded queue
    kv_capacity_tokens: int | None = Field(None, ge=1)  # override the profile-derived capacity
    # Steps of a lane that both prefills and decodes: ``mixed`` puts prompt chunks beside
    # the decodes in one step (vLLM v1's chunked prefill); ``prefill_first`` runs a
    # prefill-only step whenever a prompt can be scheduled (vLLM v0, DistServe's baseline).
    scheduling: Literal["mixed", "prefill_first"] = "mixed"

    @model_validator(mode="after")
    def _budget_covers_batch(self) -> "EngineConfig":
        if self.max_num_batched_tokens < self.max_num_seqs:  # vLLM refuses this too
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                             f"max_num_seqs ({self.max_num_seqs})")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < self.block_size:
            raise ValueError(f"kv_capacity_tokens ({self.kv_capacity_tokens}) must hold at least one block "
                             f"(block_size {self.block_size})")
        return self


class LaneConfig(_Strict):
    role: Literal["prefill", "decode", "colocated"]
    tp: int = Field(1, ge=1)
    pair: int | None = None  # stream pair id: a prefill and a decode lane sharing one
    replicas: int = Field(1, ge=1)
    engine: dict[str, Any] = Field(default_factory=dict)  # per-lane EngineConfig overrides


class LinkConfig(_Strict):
    """The fabric KV moves over between a prefill and a decode lane."""

    bandwidth_gbps: float = Field(25.0, gt=0)  # GB/s; PCIe 4.0 x16 effective by default
    latency_ms: float = Field(0.1, ge=0)


class SpeculationConfig(_Strict):
    """How drafts are made; which k to use each step is the speculation policy's job."""

    method: Literal["none", "ngram", "draft", "eagle"] = "none"
    draft_model: str = "small-model"  # method=draft: a draft model spec name, or the target family's default
    k_max: int = Field(4, ge=0, le=16)


class PolicyConfig(BaseModel):
    """A policy by registry name, plus its own parameters (checked by the policy)."""

    model_config = ConfigDict(extra="allow")
    name: str


class FaultConfig(_Strict):
    """A fault injected into a simulated run. ``down``/``slow`` hit the lane's engine;
    ``link_down``/``link_slow`` hit its KV link: every transfer into or out of the lane
    (one that fails is recomputed on its decode lane)."""

    lane: int = Field(ge=0)
    at: float = Field(ge=0, allow_inf_nan=False)  # seconds of simulated time
    kind: Literal["down", "slow", "link_down", "link_slow"]
    duration: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: for the rest of the run
    factor: float = Field(2.0, ge=1, allow_inf_nan=False)  # slowdown factor, for kind=slow and link_slow


def check_role_mix(roles: set[str], field: str) -> None:
    """Colocated lanes alone, or prefill and decode lanes together: the two shapes both
    runtimes know how to drive."""
    if "colocated" in roles and len(roles) > 1:
        raise ValueError(f"{field}: mix colocated lanes with prefill/decode lanes in separate clusters")
    if roles & {"prefill", "decode"} and roles != {"prefill", "decode"}:
        raise ValueError(f"{field}: a disaggregated cluster needs at least one prefill and one decode lane")


class SLOConfig(_Strict):
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)


class ClusterConfig(_Strict):
    name: str = "custom"
    model: str = "opt-13b"
    gpu: str = "A100-80GB"
    profile: str | None = None  # path to a profile JSON; None: the built-in one (roofline for pairs it lacks)
    engine: EngineConfig = EngineConfig()
    lanes: list[LaneConfig] = Field(min_length=1)
    link: LinkConfig = LinkConfig()
    speculation: SpeculationConfig = SpeculationConfig()
    scheduler: PolicyConfig = PolicyConfig(name="fcfs")
    router: PolicyConfig = PolicyConfig(name="round_robin")
    spec_policy: PolicyConfig = PolicyConfig(name="fixed", k=0)
    faults: list[FaultConfig] = Field(default_factory=list)
    # Seconds a prefill lane keeps KV that no decode lane has pulled; then it frees it and
    # a decode lane placed later recomputes the prompt (vLLM's NIXL default is 30 s).
    kv_lease_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    slo: SLOConfig = Field(default_factory=lambda: SLOConfig())
    workload: dict[str, Any] | None = None  # checked by streamserve.workload

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model {v!r} (known: {', '.join(MODELS)})")
        return v

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v not in GPUS:
            raise ValueError(f"unknown GPU {v!r} (known: {', '.join(GPUS)})")
        return v

    @model_validator(mode="after")
    def _check_roles(self) -> "ClusterConfig":
        check_role_mix({lane.role for lane in self.lanes}, "lanes")
        for i, lane in enumerate(self.lanes):
            try:
                EngineConfig(**{**self.engine.model_dump(), **lane.engine})
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"lanes.{i}.engine.{loc}: {err['msg']}") from None
        extra = self.scheduler.model_extra or {}
        if extra.get("pairing") == "pairs" and not any(
                lane.pair is not None for lane in self.lanes if lane.role == "prefill"):
            raise ValueError("scheduler.pairing: 'pairs' needs lanes with pair ids (a prefill and a decode "
                             "lane sharing one, e.g. {role: prefill, pair: 0})")
        k = (self.spec_policy.model_extra or {}).get("k")
        if self.spec_policy.name == "fixed" and isinstance(k, int) and k > self.speculation.k_max:
            raise ValueError(f"spec_policy.k: {k} exceeds speculation.k_max ({self.speculation.k_max})")
        n_lanes = sum(lane.replicas for lane in self.lanes)
        for j, fault in enumerate(self.faults):
            if fault.lane >= n_lanes:
                raise ValueError(f"faults.{j}.lane: lane {fault.lane} does not exist (cluster has {n_lanes})")
        return self

    def engine_for(self, lane: LaneConfig) -> EngineConfig:
        return EngineConfig(**{**self.engine.model_dump(), **lane.engine})


# ---------------------------------------------------------------- loading
def _yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the YAML node at ``loc`` (pydantic's error path), for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def read_mapping(path: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a YAML or TOML file into a dict, with syntax errors as ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {e.start}: {e.reason}); a config is YAML or TOML "
                          "text") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of fields at the top level")
    return data, text


def _field_of(msg: str) -> tuple[Any, ...]:
    """The field path a whole-model check names at the start of its message
    (``faults.1.lane: ...`` -> ("faults", 1, "lane")), to find its line."""
    head, sep, _ = msg.partition(": ")
    if not sep or " " in head:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in head.split("."))


def field_line(text: str | None, path: str) -> int | None:
    """The YAML line of the field at dotted ``path`` (None when unknown)."""
    return _yaml_line(text, _field_of(path + ": x")) if text is not None else None


def validation_message(e: ValidationError, origin: str, text: str | None = None, prefix: str = "") -> str:
    """Pydantic's first error as ``origin[:line]: field.path: message``."""
    err = e.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"].removeprefix("Value error, ")
    line = _yaml_line(text, loc or _field_of(msg)) if text is not None else None
    where = f"{origin}:{line}" if line else origin
    field = prefix + ".".join(str(p) for p in loc)
    if msg.startswith(field + ":") or not field:
        return f"{where}: {msg}"
    return f"{where}: {field}: {msg}"


M = TypeVar("M", bound=BaseModel)


def parse_as(model: type[M], data: dict[str, Any], origin: str, text: str | None = None) -> M:
    """Validate ``data`` as ``model``; the first problem becomes a one-line ``ConfigError``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, origin, text)) from None


def parse_cluster(data: dict[str, Any], origin: str, text: str | None = None) -> ClusterConfig:
    return parse_as(ClusterConfig, data, origin, text)


def load_cluster(path: str | Path) -> ClusterConfig:
    data, text = read_mapping(path)
    return parse_cluster(data, str(path), text)


def builtin_cluster(arch: str) -> ClusterConfig:
    """One of the shipped architectures (``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch: unknown architecture {arch!r} (choose from {', '.join(ARCHITECTURES)})")
    text = resources.files("streamserve.configs").joinpath(f"{arch}.yaml").read_text()
    return parse_cluster(yaml.safe_load(text), f"<builtin {arch}>", text)
