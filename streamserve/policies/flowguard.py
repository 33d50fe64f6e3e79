"""FlowGuard: route each request phase to the lane with the best multi-signal score.

The paper names the signals (queue depth, latency, utilisation, speculation) but not how
they combine. Here each candidate lane gets a cost, lower is better::

    cost = w_latency * latency + w_queue * queue + w_util * util + w_kv * kv + w_accept * accept

with every signal normalised so a weight means the same thing on any cluster:

* ``latency``: the predicted latency of this request on this lane, divided by the best
  prediction among the candidates, minus one (0 for the fastest lane, 1 for a lane twice
  as slow). On prefill lanes it is the predicted TTFT: the prompt tokens queued ahead plus
  this prompt, through the lane's perf model (batched ``prefill_budget`` tokens per
  iteration; on colocated lanes plus the decode work that shares each iteration). On
  decode lanes it is the predicted TPOT with this request added to the batch: one
  speculative step at the lane's current k, divided by the tokens a step yields at the
  lane's acceptance rate. Each prediction is multiplied by a per-lane, per-phase
  correction: the exponentially averaged ratio of observed to predicted latency fed back
  through ``observe``, which is how a slowed-down or mis-profiled lane gets noticed.
* ``queue``: outstanding requests over ``max_num_seqs``, averaged with queued tokens over
  the most any candidate has queued.
* ``util``: the lane's busy fraction over the runtime's recent window.
* ``kv``: squared KV-cache occupancy after placing this request (its prompt, plus on a
  decode lane the mean output length seen so far): mild while there is room, steep near
  full, where a decode lane would start preempting.
* ``accept``: ``1 - acceptance rate`` on decode lanes (0 where nothing was drafted yet).

Default weights and why: latency is the objective and the only signal that knows about
request sizes and lane speed, so it carries weight 1. Queue depth and utilisation are
lagging proxies of the same thing; small weights (0.2, 0.1) break ties between lanes of
equal predicted latency towards the one with less in flight, which guards against the
predictor's blind spots (work a lane is doing right now, unknown output lengths). KV
pressure (0.5) matters only near full, which its square makes so. Acceptance is already
in the TPOT prediction, so its own weight is small (0.1). ``benchmarks/flowguard_weights.py``
measured these weights against alternatives, without local prefill (results in
``benchmarks/results/flowguard_weights.json``; 5000 requests x 3 seeds of the ablation's
bursty ``paper`` workload on the shipped cluster, OPT-13B on A100-80GB, token-based step
model, client-side TTFT): on a symmetric cluster every setting is within 2% of
round-robin on p99 E2E and 0.1% on goodput (routing has little to fix there; the defaults
gave 5.07 s p99 against round-robin's 5.12 s), but with one decode lane at half speed
routing matters: the defaults gave a mean TPOT of 18.3 ms (round-robin 25.1 ms) and a p99
E2E of 7.1 s against round-robin's 11.7 s, queue depth alone 9.5 s and latency alone
7.3 s. Latency and queue at equal weight did about as well (7.3 s and 17.9 ms there,
5.04 s symmetric), so the defaults stay.

Conditional disaggregation (``local_prefill``, off by default, on in the shipped
``streamserve`` cluster): when every prefill lane is backed up, the scheduler also offers
the decode lanes for a prefill, next to the backed-up prefill lanes (choosing one of those
means "wait for it"). A prompt of at most ``local_max_prompt`` tokens may then be
prefilled on a decode lane, which decodes it too with no KV transfer. Both paths are
costed whole: predicted TTFT (on a decode lane with its running batch riding along) plus
predicted decode time (the best decode lane's, for the disaggregated path), and on the
local path the delay the prefill puts on every sequence already in that decode batch.

What it is for: it rescues the TTFT of short requests stuck behind long prompts in a
burst (goodput), but each local prefill stalls the whole decode batch, and the E2E tail
is the long summarisation outputs, whose E2E is almost all decode time; the stall grows
with the prompt and the rescue does not, hence the cap. ``benchmarks/local_prefill_tradeoff.py``
measures the trade (``benchmarks/results/local_prefill_tradeoff.md``; 10000 requests x 4
seeds of the ablation's bursty ``paper`` workload on the shipped cluster, token-based
step model, client-side TTFT): at that load the prefill lanes hardly back up, so every
cap gives round-robin's goodput (23.7 requests/s) and p99 E2E 0.5-1.8% above
round-robin's, within seed noise; the earlier goodput gain (measured on the old step
model) did not survive the re-run.
What was tried to keep the larger caps' goodput without their tail cost (on the old
step model), none beyond seed noise: a larger batch-delay charge, weighting it by each
running sequence's class output length learned online, charging only the long-output
classes' sequences, gating the local path on the prefill path's predicted TTFT, steering
short-output classes' decodes away from lanes that hold long ones, keeping local
prefills on one decode lane and summarisation decodes on the other, decode placement by
predicted remaining work per lane, and prefill orders that favour long-output classes.
The local path's TTFT prediction includes the draft passes of the batch it rides with
(leaving them out makes deep-speculating decode lanes look faster at prefilling than
they are).

Whole KV blocks (with ``local_prefill``). Only whole KV blocks move from a prefill lane
to a decode lane, and the decode engine computes the prompt's last token itself: vLLM's
ExampleConnector (the CPU path) loads ``(p - 2) // B`` whole blocks of a ``p``-token
prompt (block size ``B``, ``LaneStats.block_size``, which the runtimes read from the
engines), so a 128-token prompt at ``B = 32`` moves 96 tokens and recomputes 32, and a
prompt of at most one block moves nothing and is prefilled twice. Such a prompt gains
nothing from disaggregation, so FlowGuard prefills it on the decode lane that it would
pick for a local prefill (whenever one can take it, burst or not), and a prompt within
one block is offered decode lanes at any time (``local_prefill_limit``).

Lanes that are unhealthy, full (``has_room``) or, for a decode placement, without the KV
room for the prompt are never chosen; when none is left, ``route`` returns ``None`` and
the scheduler holds the request.
"""
from __future__ import annotations

import math
from typing import ClassVar, Mapping, Sequence

from mypy_extensions import mypyc_attr

from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import LanePerf
from streamserve.policies.base import Router
from streamserve.request import Phase, Request

CORRECTION_BOUNDS = (0.25, 8.0)


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class FlowGuard(Router):
    name = "flowguard"
    # What `streamserve tune` may change, over what range (format: streamserve/tuning/space.py)
    SEARCH_SPACE: ClassVar[dict[str, str]] = {
        "w_latency": "float 0 2", "w_queue": "float 0 2", "w_util": "float 0 1", "w_kv": "float 0 2",
        "w_accept": "float 0 1", "local_prefill": "choice true false", "local_max_prompt": "int 8 4096 log"}

    def __init__(self, perf: Mapping[int, LanePerf], w_latency: float = 1.0, w_queue: float = 0.2,
                 w_util: float = 0.1, w_kv: float = 0.5, w_accept: float = 0.1,
                 prefill_budget: int = 8192, correction_rate: float = 0.1,
                 mean_output_prior: float = 128.0, local_prefill: bool = False,
                 local_max_prompt: int = 64) -> None:
        if not perf:
            raise ValueError("perf: FlowGuard needs the lanes' performance models")
        weights = dict(w_latency=w_latency, w_queue=w_queue, w_util=w_util, w_kv=w_kv, w_accept=w_accept)
        for key, w in weights.items():
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"{key}: must be a finite number >= 0, got {w}")
        if local_max_prompt < 0:
            raise ValueError(f"local_max_prompt: must be >= 0, got {local_max_prompt}")
        if prefill_budget < 1:
            raise ValueError(f"prefill_budget: must be >= 1, got {prefill_budget}")
        if not 0 < correction_rate <= 1:
            raise ValueError(f"correction_rate: must be in (0, 1], got {correction_rate}")
        self.perf = dict(perf)
        self._default_perf = next(iter(self.perf.values()))
        self.w_latency, self.w_queue, self.w_util = w_latency, w_queue, w_util
        self.w_kv, self.w_accept = w_kv, w_accept
        self.prefill_budget = prefill_budget
        self.local_prefill = local_prefill
        self.local_max_prompt = local_max_prompt
        self.correction_rate = correction_rate
        self._correction: dict[tuple[int, Phase], float] = {}
        self._predicted: dict[tuple[int, Phase], tuple[int, float]] = {}  # (req, phase) -> (lane, raw prediction)
        self._mean_prompt = 512.0
        self._mean_output = mean_output_prior

    # ------------------------------------------------------------ predictions
    def correction(self, lane_id: int, phase: Phase) -> float:
        return self._correction.get((lane_id, phase), 1.0)

    def predict_prefill(self, request: Request, lane: LaneStats) -> float:
        """Uncorrected seconds from submission to first token of ``request`` on ``lane``."""
        perf = self.perf.get(lane.lane_id, self._default_perf)
        tokens = lane.tokens_queued + request.prompt_len
        sum_sq = request.prompt_len ** 2 + lane.tokens_queued * self._mean_prompt
        iterations = max(1, -(-tokens // self.prefill_budget))
        t = perf.prefill_time(tokens, sum_sq) + (iterations - 1) * perf.step_overhead()
        if lane.role is not LaneRole.PREFILL and lane.num_running:
            # Decode work rides along in every iteration until the prompt is done: the
            # whole speculative step, drafting included (at k = 8 the draft passes are a
            # third of a small batch's step; leaving them out made a decode lane look
            # faster at prefilling than it is, most of all when SpecuStream runs deep).
            t += iterations * (perf.spec_step_time(lane.num_running, lane.context_tokens, lane.spec_k)
                               - perf.step_overhead())
        return t

    def predict_tpot(self, request: Request, lane: LaneStats, acceptance: float | None = None,
                     idle_k: int = -1) -> float:
        """Uncorrected seconds per output token of ``request`` once it joins ``lane``'s batch.

        ``acceptance``: the draft acceptance rate to expect for this request; by default
        the lane's. When routing, FlowGuard passes the mean over the candidate lanes:
        acceptance belongs mostly to the request's workload, not to the lane, and a lane's
        rate only says which requests it happens to hold, so comparing lanes on it herds
        new work onto whichever lane had a lucky streak. ``idle_k`` (when >= 0): the depth to
        expect on a lane that runs nothing yet, whose own k (0: it has taken no step) says
        nothing of the depth it will run at; without it an idle lane looks slower than a
        busy speculating one and never gets work."""
        perf = self.perf.get(lane.lane_id, self._default_perf)
        batch = lane.num_running + lane.num_waiting + 1
        context = lane.context_tokens + lane.tokens_queued + request.prompt_len
        k = idle_k if idle_k >= 0 and not lane.num_running else lane.spec_k
        acc = acceptance if acceptance is not None else (lane.acceptance_rate or 0.0)
        per_step = 1.0 + k * acc
        running = min(batch, lane.max_num_seqs)
        t = perf.spec_step_time(running, context * running // batch, k) / per_step
        if batch > lane.max_num_seqs:
            t *= batch / lane.max_num_seqs  # it waits for a slot: roughly a longer effective step
        return t

    # ------------------------------------------------------------ scoring
    def costs(self, request: Request, lanes: Sequence[LaneStats],
              phase: Phase) -> list[tuple[float, LaneStats, float, float | None]]:
        """``(cost, lane, raw predicted latency, raw predicted TPOT on a colocated lane)``
        of each lane that may take ``request``.

        A colocated lane that takes a prompt also decodes it, so there the latency compared
        is the predicted TTFT plus the predicted decode time (TPOT times the mean output
        length seen so far): a lane that prefills quickly but decodes slowly is no bargain.
        """
        decode = phase is Phase.DECODE
        prompt = request.prompt_len
        may_local = self.local_prefill and prompt <= self.local_max_prompt
        ok: list[LaneStats] = []
        rate_sum = 0.0
        rated = 0
        max_tokens = 0
        k_max_seen = 0  # the deepest k a running lane uses: what an idle lane will run at
        for lane in lanes:  # one pass: this runs for every lane of every decision
            if not lane.healthy or lane.kv_usage >= 1.0 or lane.num_waiting >= lane.max_waiting:
                continue  # not ``has_room``
            if decode or lane.role is LaneRole.DECODE:  # the request's KV will live here
                if not decode and not may_local and not (self.local_prefill and prompt <= lane.block_size):
                    continue
                free = lane.kv_free_tokens
                if free is not None and free < prompt:
                    continue  # (None: the lane does not say, as an engine not yet scraped)
            ok.append(lane)
            if lane.tokens_queued > max_tokens:
                max_tokens = lane.tokens_queued
            if lane.acceptance_rate is not None:
                rate_sum += lane.acceptance_rate
                rated += 1
            if lane.num_running and lane.spec_k > k_max_seen:
                k_max_seen = lane.spec_k
        if not ok:
            return []
        acc = rate_sum / rated if rated else 0.0
        correction = self._correction.get
        raw: list[float] = []
        lat: list[float] = []
        tpot: list[float | None] = []
        best_decode = math.inf  # the best corrected TPOT of a decode lane (a local prefill's alternative)
        for lane in ok:
            lid = lane.lane_id
            if decode:
                r = self.predict_tpot(request, lane, acc, k_max_seen)
                t = None
                latency = r * correction((lid, phase), 1.0)
            else:
                r = self.predict_prefill(request, lane)
                t = None
                latency = r * correction((lid, phase), 1.0)
                if lane.role is not LaneRole.PREFILL:
                    t = self.predict_tpot(request, lane, acc, k_max_seen)
                    decode_t = t * correction((lid, Phase.DECODE), 1.0)
                    latency += decode_t * self._mean_output
                    if lane.role is LaneRole.DECODE and decode_t < best_decode:
                        best_decode = decode_t
            raw.append(r)
            lat.append(latency)
            tpot.append(t)
        if best_decode < math.inf:
            for i, lane in enumerate(ok):
                if lane.role is LaneRole.PREFILL:
                    # Prefilling here means decoding on a decode lane later: charge prefill
                    # lanes the best decode those lanes offer, so both paths compare whole.
                    lat[i] += best_decode * self._mean_output
                elif lane.role is LaneRole.DECODE and lane.num_running:
                    # A prefill in a decode step delays every sequence of that batch
                    # by its length: charge that to the local path as well.
                    perf = self.perf.get(lane.lane_id, self._default_perf)
                    lat[i] += lane.num_running * perf.prefill_time(request.prompt_len, request.prompt_len ** 2)
        best = max(min(lat), 1e-9)
        max_tokens = max_tokens or 1
        w_latency, w_queue, w_util, w_kv, w_accept = self.w_latency, self.w_queue, self.w_util, self.w_kv, self.w_accept
        need = prompt + (self._mean_output if decode else 0.0)  # KV tokens this request will take
        out = []
        for lane, r, latency, t in zip(ok, raw, lat, tpot):
            queue = 0.5 * ((lane.num_waiting + lane.num_running) / lane.max_num_seqs + lane.tokens_queued / max_tokens)
            accept = 1.0 - lane.acceptance_rate if decode and lane.acceptance_rate is not None else 0.0
            used = lane.kv_usage  # below 1: full lanes were left out above
            free = lane.kv_free_tokens
            kv = used if not free else min(1.0, used + need / (free / (1.0 - used)))  # occupancy after placing
            cost = (w_latency * (latency / best - 1.0) + w_queue * queue + w_util * lane.utilisation
                    + w_kv * kv ** 2 + w_accept * accept)
            out.append((cost, lane, r, t))
        return out

    @staticmethod
    def _max_block(lanes: Sequence[LaneStats]) -> int:
        """The largest KV block of the decode lanes among ``lanes`` (0 if none)."""
        block = 0
        for lane in lanes:
            if lane.role is LaneRole.DECODE and lane.block_size > block:
                block = lane.block_size
        return block

    def _remember(self, request: Request, phase: Phase, lane_id: int, raw: float) -> None:
        if len(self._predicted) > 200_000:  # requests that failed never report back
            for key in list(self._predicted)[:100_000]:
                del self._predicted[key]
        self._predicted[(request.id, phase)] = (lane_id, raw)

    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        scored: list[tuple[float, LaneStats, float, float | None]] = []
        if self.local_prefill and phase is Phase.PREFILL and request.prompt_len <= self._max_block(lanes):
            # Only whole KV blocks move: a prompt within one block gains nothing from a
            # prefill lane, so the best decode lane that can take it prefills it.
            scored = self.costs(request, [lane for lane in lanes if self.in_one_block(request, lane)], phase)
        if not scored:
            scored = self.costs(request, lanes, phase)
        if not scored:
            return None
        choice = scored[0]
        for other in scored[1:]:  # lowest cost; ties to the lane with less in flight, then the lower id
            if other[0] < choice[0] or (other[0] == choice[0] and (other[1].outstanding, other[1].lane_id)
                                        < (choice[1].outstanding, choice[1].lane_id)):
                choice = other
        cost, lane, raw, tpot = choice
        self._remember(request, phase, lane.lane_id, raw)
        if tpot is not None:  # colocated: its decode will be reported against this lane too
            self._remember(request, Phase.DECODE, lane.lane_id, tpot)
        return lane.lane_id

    def local_prefill_limit(self, decode_lanes: Sequence[LaneStats], backed_up: bool) -> int:
        """Prompts that fit in one KV block of a decode lane at any time; in a burst also
        those up to ``local_max_prompt`` (0 without ``local_prefill``)."""
        if not self.local_prefill:
            return 0
        block = max((lane.block_size for lane in decode_lanes), default=0)
        return max(block, self.local_max_prompt) if backed_up else block

    @staticmethod
    def in_one_block(request: Request, lane: LaneStats) -> bool:
        """Whether ``request``'s prompt fits in one KV block of decode lane ``lane``:
        disaggregating it would move no whole block, only the prefill twice."""
        return lane.role is LaneRole.DECODE and request.prompt_len <= lane.block_size

    def route_pair(self, request: Request, pairs: Sequence[tuple[LaneStats, LaneStats]], now: float) -> int | None:
        """Stream-pair mode: pick the prefill lane whose pair (prefill + its decode partner)
        costs least; the decode phase will go to the partner."""
        best: tuple[float, float, int, float] | None = None
        for pre, dec in pairs:
            p = self.costs(request, [pre], Phase.PREFILL)
            d = self.costs(request, [dec], Phase.DECODE)
            if not p or not d:
                continue
            # Each single-lane cost has latency term 0; compare the pairs on absolute latency.
            lat = (p[0][2] * self.correction(pre.lane_id, Phase.PREFILL)
                   + d[0][2] * self.correction(dec.lane_id, Phase.DECODE) * self._mean_output)
            key = (lat, p[0][0] + d[0][0], pre.lane_id, p[0][2])
            if best is None or key[:3] < best[:3]:
                best = key
        if best is None:
            return None
        self._remember(request, Phase.PREFILL, best[2], best[3])
        return best[2]

    # ------------------------------------------------------------ feedback
    def observe(self, lane_id: int, phase: Phase, request: Request, latency: float, now: float) -> None:
        if phase is Phase.PREFILL:
            self._mean_prompt += 0.01 * (request.prompt_len - self._mean_prompt)
        elif request.generated > 0:
            self._mean_output += 0.01 * (request.generated - self._mean_output)
        entry = self._predicted.pop((request.id, phase), None)
        if entry is None or entry[0] != lane_id or entry[1] <= 0 or not latency > 0:
            return
        ratio = min(max(latency / entry[1], CORRECTION_BOUNDS[0]), CORRECTION_BOUNDS[1])
        key = (lane_id, phase)
        old = self._correction.get(key, 1.0)
        self._correction[key] = old + self.correction_rate * (ratio - old)
