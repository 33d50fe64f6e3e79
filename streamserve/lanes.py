"""The lane contract: what a runtime offers and what a policy may see of it.

A lane is one unit of serving capacity (one engine on one or more GPUs). Policies see a
lane only as a ``LaneStats`` snapshot taken by the runtime and act only through the
actions in ``streamserve.policies.base``, which the runtime carries out on its engines
(simulated or real). That split is what lets the same policy objects drive a SimPy
model and real vLLM engines.
"""
from __future__ import annotations

import enum
from typing import Any, Final, Protocol

from streamserve.request import Phase


class LaneRole(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    COLOCATED = "colocated"  # prefill and decode on one engine, as plain vLLM does

    __hash__ = object.__hash__  # as Phase's

    def serves(self, phase: Phase) -> bool:
        if self is LaneRole.COLOCATED:
            return True
        return self.value == phase.value


_FIELDS = ("lane_id", "role", "healthy", "num_waiting", "num_running", "tokens_queued", "kv_usage",
           "kv_free_tokens", "max_num_seqs", "max_waiting", "step_time", "utilisation", "acceptance_rate",
           "spec_k", "pair", "tp", "context_tokens", "block_size")  # LaneStats's, in order


class LaneStats:
    """A read-only snapshot of one lane, as a policy sees it.

    A plain class with an explicit ``__init__`` rather than a NamedTuple or a dataclass:
    compiled by mypyc it is a native class, built by one C call, where a NamedTuple's
    ``__new__`` and a dataclass's generated ``__init__`` run as interpreted Python; the
    simulator builds one per lane per decision, and that was the largest single cost of
    a decision. The fields are ``Final`` (type checkers refuse assignments); ``_replace``
    makes a changed copy, as a NamedTuple's does.

    Rates and times are smoothed by the runtime over its recent window; the fields are
    the signals the StreamServe paper routes on, named as vLLM's metrics name them where
    such a metric exists.
    """

    def __init__(
        self,
        lane_id: int,
        role: LaneRole,
        healthy: bool = True,
        num_waiting: int = 0,  # requests on the lane that have not started (vllm:num_requests_waiting)
        num_running: int = 0,  # requests in the running batch (vllm:num_requests_running)
        tokens_queued: int = 0,  # prompt tokens still to prefill, plus KV tokens still to arrive
        kv_usage: float = 0.0,  # fraction of KV blocks in use (vllm:kv_cache_usage_perc)
        kv_free_tokens: int | None = None,  # tokens that still fit in free KV blocks; None: not known
        max_num_seqs: int = 256,
        max_waiting: int = 1024,  # the lane's bounded queue; beyond it the lane is full
        step_time: float = 0.0,  # smoothed duration of recent steps, seconds
        utilisation: float = 0.0,  # busy fraction over the recent window
        acceptance_rate: float | None = None,  # smoothed accepted/drafted, None before any draft
        spec_k: int = 0,  # speculation depth of the last decode step
        pair: int | None = None,  # the stream pair the lane belongs to, if any
        tp: int = 1,
        context_tokens: int = 0,  # KV tokens held by running requests (decode cost driver)
        block_size: int = 16,  # tokens per KV block (vllm:cache_config_info); only whole blocks move between lanes
    ) -> None:
        self.lane_id: Final = lane_id
        self.role: Final = role
        self.healthy: Final = healthy
        self.num_waiting: Final = num_waiting
        self.num_running: Final = num_running
        self.tokens_queued: Final = tokens_queued
        self.kv_usage: Final = kv_usage
        self.kv_free_tokens: Final = kv_free_tokens
        self.max_num_seqs: Final = max_num_seqs
        self.max_waiting: Final = max_waiting
        self.step_time: Final = step_time
        self.utilisation: Final = utilisation
        self.acceptance_rate: Final = acceptance_rate
        self.spec_k: Final = spec_k
        self.pair: Final = pair
        self.tp: Final = tp
        self.context_tokens: Final = context_tokens
        self.block_size: Final = block_size

    def _replace(self, **changes: Any) -> "LaneStats":
        """A copy with ``changes`` (field name -> value) applied, as a NamedTuple's ``_replace``."""
        for name in changes:
            if name not in _FIELDS:
                raise TypeError(f"LaneStats has no field {name!r}")
        get = changes.get
        return LaneStats(
            get("lane_id", self.lane_id), get("role", self.role), get("healthy", self.healthy),
            get("num_waiting", self.num_waiting), get("num_running", self.num_running),
            get("tokens_queued", self.tokens_queued), get("kv_usage", self.kv_usage),
            get("kv_free_tokens", self.kv_free_tokens), get("max_num_seqs", self.max_num_seqs),
            get("max_waiting", self.max_waiting), get("step_time", self.step_time),
            get("utilisation", self.utilisation), get("acceptance_rate", self.acceptance_rate),
            get("spec_k", self.spec_k), get("pair", self.pair), get("tp", self.tp),
            get("context_tokens", self.context_tokens), get("block_size", self.block_size))

    def __repr__(self) -> str:
        return "LaneStats(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS) + ")"

    @property
    def outstanding(self) -> int:
        return self.num_waiting + self.num_running

    @property
    def has_room(self) -> bool:
        """Whether a new request could be placed here without overrunning the lane."""
        return self.healthy and self.kv_usage < 1.0 and self.num_waiting < self.max_waiting


class Lane(Protocol):
    """What each runtime's lane object offers (``sim.lane.SimLane``, ``gpu.lanes.LiveLane``).

    Policies never hold one: they get ``stats()`` snapshots, and the runtime carries out
    the actions they return (a simulated queue, or an HTTP request to an engine).
    """

    lane_id: int
    role: LaneRole

    def stats(self) -> LaneStats: ...
