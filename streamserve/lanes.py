"""The lane contract: what a runtime offers and what a policy may see of it.

A lane is one unit of serving capacity (one engine on one or more GPUs). Policies see a
lane only as a ``LaneStats`` snapshot taken by the runtime and act only through the
actions in ``streamserve.policies.base``, which the runtime carries out on its engines
(simulated or real). That split is what lets the same policy objects drive a SimPy
model and real vLLM engines.
"""
from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

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


class LaneStats(NamedTuple):
    """A read-only snapshot of one lane, as a policy sees it.

    A NamedTuple rather than a frozen dataclass: it is immutable and several times
    cheaper to build, and the simulator builds one per lane per decision.

    Rates and times are smoothed by the runtime over its recent window; the fields are
    the signals the StreamServe paper routes on, named as vLLM's metrics name them where
    such a metric exists.
    """

    lane_id: int
    role: LaneRole
    healthy: bool = True
    num_waiting: int = 0  # requests on the lane that have not started (vllm:num_requests_waiting)
    num_running: int = 0  # requests in the running batch (vllm:num_requests_running)
    tokens_queued: int = 0  # prompt tokens still to prefill, plus KV tokens still to arrive
    kv_usage: float = 0.0  # fraction of KV blocks in use (vllm:kv_cache_usage_perc)
    kv_free_tokens: int | None = None  # tokens that still fit in free KV blocks; None: not known
    max_num_seqs: int = 256
    max_waiting: int = 1024  # the lane's bounded queue; beyond it the lane is full
    step_time: float = 0.0  # smoothed duration of recent steps, seconds
    utilisation: float = 0.0  # busy fraction over the recent window
    acceptance_rate: float | None = None  # smoothed accepted/drafted, None before any draft
    spec_k: int = 0  # speculation depth of the last decode step
    pair: int | None = None  # the stream pair the lane belongs to, if any
    tp: int = 1
    context_tokens: int = 0  # KV tokens held by running requests (decode cost driver)
    block_size: int = 16  # tokens per KV block (vllm:cache_config_info); only whole blocks move between lanes

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
