"""The request record shared by workloads, policies, runtimes and metrics.

A runtime owns the timestamps: it sets them as the request moves, and metrics are
computed from them alone, so a policy can never make its own numbers look better.
Policies may read everything except ``output_len``, which only the simulator knows
(a live engine learns it when the model stops); routing on it would be cheating.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Phase(enum.Enum):
    """Which kind of lane a request is being placed on."""

    PREFILL = "prefill"
    DECODE = "decode"

    # Members are singletons, so identity hashing is exact, and it spares the simulator's
    # hot dictionaries Enum's Python-level ``__hash__``.
    __hash__ = object.__hash__


class State(enum.Enum):
    QUEUED = "queued"  # held by the scheduler, on no lane yet
    PREFILL = "prefill"  # on a prefill or colocated lane, before its first token
    TRANSFER = "transfer"  # KV on its way from the prefill lane to a decode lane
    DECODE = "decode"  # producing tokens after the first
    FINISHED = "finished"
    REJECTED = "rejected"
    FAILED = "failed"

    __hash__ = object.__hash__  # as Phase's

    @property
    def terminal(self) -> bool:
        return self in (State.FINISHED, State.REJECTED, State.FAILED)


@dataclass(slots=True)
class SLO:
    """Latency objective of one request, in seconds (``None``: no bound)."""

    ttft: float | None = None
    tpot: float | None = None

    def met_by(self, ttft: float, tpot: float) -> bool:
        if self.ttft is not None and not ttft <= self.ttft:
            return False
        if self.tpot is not None and not tpot <= self.tpot:
            return False
        return True


@dataclass(slots=True, eq=False)
class Request:
    """One inference request and everything that happened to it.

    Times are seconds on the runtime's clock (simulated, or wall time since the run
    started). ``NaN`` means "has not happened".
    """

    id: int
    arrival: float
    prompt_len: int
    output_len: int  # tokens to generate; the simulator's ground truth, hidden from policies
    dataset: str = "default"
    slo: SLO | None = None
    prompt: str | None = None  # text, for runtimes that need it (live engines)
    hash_ids: tuple[int, ...] | None = None  # prefix-block hashes from traces that carry them
    priority: int = 0

    # Set by the runtime.
    state: State = State.QUEUED
    prefill_start: float = math.nan
    prefill_end: float = math.nan  # the prompt is computed: the first output token exists on the prefill lane
    first_token: float = math.nan  # the client receives its first output token (TTFT ends here)
    transfer_start: float = math.nan
    decode_start: float = math.nan  # KV is on the decode lane
    finish: float = math.nan
    generated: int = 0
    prefill_lane: int = -1
    decode_lane: int = -1
    attempts: int = 0  # prefills started (more than one after a lane failure or preemption)
    preemptions: int = 0
    reason: str = ""  # why it was rejected or failed
    extra: dict | None = None  # runtime-specific notes (e.g. live response ids)

    @property
    def done(self) -> bool:
        return self.state.terminal

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (vLLM's definition); 0 for one token."""
        if self.generated <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.generated - 1)

    @property
    def queue_delay(self) -> float:
        return self.prefill_start - self.arrival

    @property
    def transfer_delay(self) -> float:
        if math.isnan(self.transfer_start):
            return 0.0
        return self.decode_start - self.transfer_start
