"""Live lanes: one per vLLM engine, seen by the policies as ``LaneStats``.

A lane's snapshot joins two sources: what the engine last reported on its Prometheus
``/metrics`` (queue, running batch, KV usage, speculation counters), and what the
front end has sent it and not yet seen come back. The second matters because scrapes
are periodic: without it, a burst of arrivals between two scrapes would all see the
same "empty" lane and be routed to it.

The speculation depth a decode engine's SpecuStream chose is read from the engine's own
counters as vLLM counts them: drafted tokens per draft since the last scrape (the mean
k of the steps in between), so no side channel from the engine is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from streamserve.lanes import LaneRole, LaneStats
from streamserve.request import Request, State

# The engine metrics a lane reads (vLLM v1 names).
M_WAITING = "vllm:num_requests_waiting"
M_RUNNING = "vllm:num_requests_running"
M_KV_USAGE = "vllm:kv_cache_usage_perc"
M_DRAFTS = "vllm:spec_decode_num_drafts_total"
M_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
M_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
M_EXTERNAL_PROMPT = "vllm:prompt_tokens_by_source_total"  # source="external_kv_transfer"
M_CACHE_INFO = "vllm:cache_config_info"  # an info gauge: the KV cache's size is in its labels
KV_BLOCKS = M_CACHE_INFO + ":num_gpu_blocks"
KV_BLOCK_SIZE = M_CACHE_INFO + ":block_size"
LANE_FAMILIES = (M_WAITING, M_RUNNING, M_KV_USAGE, M_DRAFTS, M_DRAFT_TOKENS, M_ACCEPTED, M_CACHE_INFO)
SMOOTHING = 0.8  # EWMA weight of the past for acceptance rate


@dataclass
class SpecCounters:
    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0

    @classmethod
    def of(cls, metrics: dict[str, float]) -> "SpecCounters":
        return cls(metrics.get(M_DRAFTS, 0.0), metrics.get(M_DRAFT_TOKENS, 0.0), metrics.get(M_ACCEPTED, 0.0))


@dataclass
class LiveLane:
    """The front end's view of one engine."""

    lane_id: int
    role: LaneRole
    url: str
    max_num_seqs: int
    pair: int | None = None
    tp: int = 1
    healthy: bool = True
    down_reason: str = ""
    in_flight: dict[int, Request] = field(default_factory=dict)
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    kv_tokens: int = 0  # the KV cache's size in tokens, once the engine has reported it
    acceptance: float | None = None
    spec: SpecCounters = field(default_factory=SpecCounters)
    spec_k: int = 0

    def update(self, metrics: dict[str, float]) -> None:
        """Fold in one scrape of the engine's /metrics."""
        self.waiting = int(metrics.get(M_WAITING, 0))
        self.running = int(metrics.get(M_RUNNING, 0))
        usage = metrics.get(M_KV_USAGE, 0.0)
        self.kv_usage = usage if math.isfinite(usage) else 0.0
        if metrics.get(KV_BLOCKS) and metrics.get(KV_BLOCK_SIZE):
            self.kv_tokens = int(metrics[KV_BLOCKS] * metrics[KV_BLOCK_SIZE])
        new = SpecCounters.of(metrics)
        d_draft = new.draft_tokens - self.spec.draft_tokens
        d_acc = new.accepted - self.spec.accepted
        d_drafts = new.drafts - self.spec.drafts
        if d_draft > 0:
            rate = d_acc / d_draft
            self.acceptance = rate if self.acceptance is None else SMOOTHING * self.acceptance + (1 - SMOOTHING) * rate
        if d_drafts > 0:
            self.spec_k = round(d_draft / d_drafts)
        self.spec = new

    def stats(self) -> LaneStats:
        """The policy's snapshot: the engine's last report, corrected by what the front
        end sent since (requests it has not seen running count as waiting)."""
        mine = len(self.in_flight)
        seen = self.waiting + self.running
        queued = context = 0
        for req in self.in_flight.values():
            if req.state in (State.QUEUED, State.PREFILL, State.TRANSFER):
                queued += req.prompt_len  # still to prefill here, or KV still to arrive
            else:
                context += req.prompt_len  # decoding: its KV is held here
        return LaneStats(
            lane_id=self.lane_id, role=self.role, healthy=self.healthy,
            num_waiting=self.waiting + max(0, mine - seen), num_running=self.running,
            tokens_queued=queued, context_tokens=context,
            kv_usage=self.kv_usage, max_num_seqs=self.max_num_seqs,
            kv_free_tokens=int((1.0 - self.kv_usage) * self.kv_tokens) if self.kv_tokens else None,
            acceptance_rate=self.acceptance, spec_k=self.spec_k, pair=self.pair, tp=self.tp,
        )
