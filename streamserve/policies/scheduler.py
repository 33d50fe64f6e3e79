"""StreamScheduler: the request lifecycle as callbacks a runtime drives.

arrival -> (admission) -> prefill queue -> prefill lane -> first token -> decode queue ->
decode lane (KV handoff) -> finish. The scheduler holds requests no lane can take yet and
places them when a lane frees capacity; the router (FlowGuard or a baseline) picks lanes.

What it adds over a plain FIFO, and why:

* **Late binding.** A request goes to a prefill lane only while that lane has fewer than
  ``lane_backlog_tokens`` prompt tokens queued (default 1024, about one median prompt);
  the rest wait here. A request bound early to a lane queue is stuck behind whatever that
  lane got, while one held here goes to whichever lane frees first, with the router
  deciding on fresh lane state. And a prefill iteration finishes all its prompts at
  once, so a lane handed 8192 tokens in one go makes its first prompt wait for its last;
  fed about one prompt at a time it pays one more iteration overhead per prompt instead.
  ``None`` turns this off (lanes queue up to their own ``max_waiting``).
* **Ordering** of the held prefill queue: ``fcfs`` (default), ``spf`` (shortest prompt
  first: lower mean TTFT, but long prompts wait under load), ``edf`` (earliest TTFT
  deadline first; requests without an SLO use ``arrival + default_deadline``, or come
  after every request with one when it is ``None``, the default).
  Requests whose lane failed go first in every order. Each order is one
  ``RequestQueue`` class (``policies/queues.py``), chosen once from the config.
* **Backfill** (``backfill``, default 8; 0 turns it off). With conditional
  disaggregation, a head-of-queue prompt too long for a local prefill must wait for a
  backed-up prefill lane; up to ``backfill`` requests behind it may meanwhile be
  prefilled on a decode lane if the router picks that (``_backfill``; the router
  declares how long a prompt it may prefill locally, ``Router.local_prefill_limit``).
* **Decode before prefill.** A request waiting for a decode lane already holds KV on its
  prefill lane; placing it first frees that memory and finishes work already paid for.
* **Backpressure and overload.** At most ``max_pending`` requests are held; beyond that
  arrivals are rejected ("queue full"). With ``overload: reject`` an arrival whose TTFT
  SLO cannot be met by the predicted queueing delay is rejected at once, and a held
  request whose TTFT SLO has passed is rejected instead of being served late.
  ``overload: queue`` (default) serves everything, however late.
* **Failures.** Requests on a failed lane lost their KV; they are requeued (at the front)
  to prefill again, up to ``max_attempts`` prefills, then failed with a reason.
* **No healthy lane.** When no healthy lane serves a phase (every decode lane down, say),
  nothing tells when one will return, so nothing waits for it: arrivals are rejected,
  and every held or lost request that needs that phase fails at once with the reason
  ("no healthy decode lane (lanes 1, 3 down)"); the live front end answers 503 or an SSE
  error event, the simulator records the failure. A request prefilling when the last
  decode lane goes fails when its prefill ends.
* **Bounded waits.** A lane that exists but is full is waited for, within bounds that the
  runtime enforces by calling ``on_timer`` at ``next_deadline()`` (O(1): both queues are
  in order of joining): ``max_wait_s`` (default 30) for a request held for a prefill lane
  (from when it joined the queue, again after a lane loss), ``max_hold_s`` (default 20)
  for a prefilled request whose KV waits on its prefill lane for a decode lane. The
  latter must stay below the engines' KV lease (vLLM's NIXL ``kv_lease_duration``,
  30 s by default), after which the prefill engine frees that KV. Either ends the
  request with a ``Fail`` naming the bound. Held KV is failed rather than prefilled
  again: a decode backlog that lasted ``max_hold_s`` is not relieved by more prefill
  work, and the request would rejoin the back of the same backlog.
* **Stream pairs.** ``pairing: pairs`` sends decode to the prefill lane's partner (to any
  decode lane while the partner is down); with a router that scores pairs (FlowGuard's
  ``route_pair``) the prefill lane is chosen for the pair as a whole.
* **Feedback.** The router is told the observed latency of each phase it placed
  (submission to first token; TPOT), which FlowGuard uses to correct its predictions.

Every request ends finished (by the runtime), rejected or failed, each with a reason.
"""
from __future__ import annotations

import math
from collections import deque
from typing import ClassVar, Mapping, Sequence

from mypy_extensions import mypyc_attr

from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import LanePerf
from streamserve.policies.base import Action, ClusterView, Fail, Reject, Router, Scheduler, Submit
from streamserve.policies.queues import make_queue
from streamserve.request import Phase, Request

OVERLOAD = ("queue", "reject")
PAIRING = ("independent", "pairs")


class _Shadow:
    """Placements made during one callback, applied to the (stale) lane snapshots.

    The runtime carries out the returned actions after the callback, so a snapshot taken
    inside it does not show requests placed a moment earlier in the same callback.
    Without this, a burst placed in one go would all pick the same "least loaded" lane.
    One per callback, passed down as a local.
    """

    def __init__(self) -> None:
        self.extra: dict[int, tuple[int, int]] = {}

    def add(self, lane_id: int, tokens: int) -> None:
        n, t = self.extra.get(lane_id, (0, 0))
        self.extra[lane_id] = (n + 1, t + tokens)

    def apply(self, lanes: Sequence[LaneStats]) -> list[LaneStats]:
        if not self.extra:
            return list(lanes)
        out = []
        for lane in lanes:
            e = self.extra.get(lane.lane_id)
            if e is not None:
                lane = lane._replace(num_waiting=lane.num_waiting + e[0], tokens_queued=lane.tokens_queued + e[1])
            out.append(lane)
        return out


class _Offer:
    """The lanes offered to the router for one prefill placement.

    ``hold_if``: backed-up prefill lanes offered only as "wait for me" next to decode
    lanes for a local prefill; ``limit``: the router's local-prefill limit at the time;
    ``backed_up``: every prefill lane was over the backlog bound."""

    __slots__ = ("lanes", "hold_if", "limit", "backed_up")

    def __init__(self, lanes: list[LaneStats], hold_if: set[int], limit: int, backed_up: bool) -> None:
        self.lanes = lanes
        self.hold_if = hold_if
        self.limit = limit
        self.backed_up = backed_up


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class StreamScheduler(Scheduler):
    name = "stream"
    # What `streamserve tune` may change, over what range (format: streamserve/tuning/space.py)
    SEARCH_SPACE: ClassVar[dict[str, str]] = {
        "order": "choice fcfs spf edf", "backfill": "int 0 32", "lane_backlog_tokens": "int 256 16384 log",
        "max_pending": "int 64 100000 log", "overload": "choice queue reject"}

    def __init__(self, router: Router, perf: Mapping[int, LanePerf] | None = None, order: str = "fcfs",
                 pairing: str = "independent", max_attempts: int = 3, max_pending: int | None = 100_000,
                 overload: str = "queue", lane_backlog_tokens: int | None = 1024,
                 default_deadline: float | None = None, backfill: int = 8,
                 max_wait_s: float = 30.0, max_hold_s: float = 20.0) -> None:
        if pairing not in PAIRING:
            raise ValueError(f"pairing: must be 'independent' or 'pairs', got {pairing!r}")
        if overload not in OVERLOAD:
            raise ValueError(f"overload: must be 'queue' or 'reject', got {overload!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending: must be >= 1, got {max_pending}")
        if backfill < 0:
            raise ValueError(f"backfill: must be >= 0, got {backfill}")
        if lane_backlog_tokens is not None and lane_backlog_tokens < 1:
            raise ValueError(f"lane_backlog_tokens: must be >= 1, got {lane_backlog_tokens}")
        for key, value in (("max_wait_s", max_wait_s), ("max_hold_s", max_hold_s)):
            if not value > 0:
                raise ValueError(f"{key}: must be > 0 seconds, got {value}")
        self.router = router
        self.order = order
        self.pairing = pairing
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.overload = overload
        self.lane_backlog_tokens = lane_backlog_tokens
        self.default_deadline = math.inf if default_deadline is None else default_deadline
        self.backfill = backfill
        self.max_wait_s = float(max_wait_s)
        self.max_hold_s = float(max_hold_s)
        perf = dict(perf or {})
        # Seconds per prompt token on one prefill lane, for the overload predictor.
        self._sec_per_token = min((p.prefill_seconds_per_token() for p in perf.values()), default=0.0)
        self._queue = make_queue(order, self.default_deadline)  # held for a prefill lane
        self._decode: deque[tuple[float, Request]] = deque()  # (held since, request): prefilled, KV held
        self._submitted: dict[int, float] = {}  # request id -> time of its prefill submission

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._decode)

    # ------------------------------------------------------------ placement
    def _prefill_lanes(self, request: Request, view: ClusterView, shadow: _Shadow) -> _Offer:
        all_prefill = shadow.apply(view.lanes(Phase.PREFILL))
        lanes = self._backlog_ok(all_prefill)
        backed_up = not lanes
        hold_if: set[int] = set()
        limit = 0
        if view.disaggregated:
            limit = self.router.local_prefill_limit(view.lanes(Phase.DECODE), backed_up)
            if request.prompt_len <= limit:
                # The router may prefill this prompt on a decode lane, which then decodes
                # it with no KV transfer (conditional disaggregation). In a burst it weighs
                # that against waiting for the backed-up prefill lanes, which stay
                # candidates: choosing one means "hold the request here".
                local = self._backlog_ok(shadow.apply(view.lanes(Phase.DECODE)))
                if local and backed_up:
                    hold_if = {lane.lane_id for lane in all_prefill}
                    lanes = all_prefill + local
                elif local:
                    lanes = lanes + local
        return _Offer(lanes, hold_if, limit, backed_up)

    def _backlog_ok(self, lanes: list[LaneStats]) -> list[LaneStats]:
        if self.lane_backlog_tokens is None:
            return lanes
        # Hold requests here rather than in a lane queue beyond the backlog bound. A lane
        # with nothing queued always qualifies, so one huge prompt is never stuck.
        return [lane for lane in lanes if lane.tokens_queued == 0 or lane.tokens_queued < self.lane_backlog_tokens]

    def _place_prefill(self, request: Request, now: float, view: ClusterView, shadow: _Shadow,
                       offer: _Offer | None = None) -> Submit | None:
        if offer is None:
            offer = self._prefill_lanes(request, view, shadow)
        lanes = offer.lanes
        if not lanes:
            return None
        lane_id: int | None
        if self.pairing == "pairs" and view.disaggregated:
            decode = {lane.lane_id: lane for lane in shadow.apply(view.lanes(Phase.DECODE))}
            pairs = []
            for lane in lanes:
                if lane.role is LaneRole.DECODE:
                    continue
                partner = view.partner(lane.lane_id)
                if partner is not None and partner in decode and decode[partner].has_room:
                    pairs.append((lane, decode[partner]))
            lane_id = self.router.route_pair(request, pairs, now)
        else:
            lane_id = self.router.route(request, lanes, Phase.PREFILL, now)
        if lane_id is None or lane_id in offer.hold_if:
            return None
        shadow.add(lane_id, request.prompt_len)
        self._submitted[request.id] = now
        return Submit(request, lane_id, Phase.PREFILL)

    def _place_decode(self, request: Request, now: float, view: ClusterView, shadow: _Shadow) -> Submit | None:
        lanes = shadow.apply(view.lanes(Phase.DECODE))
        if self.pairing == "pairs":
            partner = view.partner(request.prefill_lane)
            paired = [lane for lane in lanes if lane.lane_id == partner and lane.healthy]
            if paired:  # a failed partner does not strand its pair's requests: any lane will do
                lanes = paired
        lane_id = self.router.route(request, lanes, Phase.DECODE, now)
        if lane_id is None:
            return None
        shadow.add(lane_id, request.prompt_len)
        return Submit(request, lane_id, Phase.DECODE)

    def _missed_ttft(self, request: Request, now: float) -> float | None:
        """The TTFT SLO a queued request can no longer meet, when overload rejects it."""
        slo = request.slo
        if self.overload == "reject" and slo is not None and slo.ttft is not None and now - request.arrival > slo.ttft:
            return slo.ttft
        return None

    def _dispatch(self, now: float, view: ClusterView, shadow: _Shadow) -> list[Action]:
        actions: list[Action] = []
        decode = self._decode
        while decode:
            action = self._place_decode(decode[0][1], now, view, shadow)
            if action is None:
                break
            decode.popleft()
            actions.append(action)
        queue = self._queue
        while True:
            request = queue.peek()
            if request is None:
                break
            missed = self._missed_ttft(request, now)
            if missed is not None:
                queue.pop()
                actions.append(Reject(request, f"TTFT SLO {missed * 1e3:.0f} ms passed while queued"))
                continue
            offer = self._prefill_lanes(request, view, shadow)
            action = self._place_prefill(request, now, view, shadow, offer)
            if action is None:
                if (self.backfill and offer.backed_up and request.prompt_len > offer.limit > 0
                        and not queue.retrying):
                    actions += self._backfill(now, view, shadow, offer.limit)
                break
            queue.pop()
            actions.append(action)
        return actions

    def _backfill(self, now: float, view: ClusterView, shadow: _Shadow, limit: int) -> list[Action]:
        """Place requests behind a head that cannot be prefilled locally.

        Called when every prefill lane is backed up and the head's prompt is over the
        router's local-prefill limit: it can only wait for a prefill lane, and without
        this every short prompt behind it would wait too, though a decode lane could
        take it now (head-of-line blocking). Up to ``backfill`` requests past the head
        are offered to the router in queue order; those over the limit are skipped
        without a routing call, and the router may still hold the others. The head
        keeps its place. Cost: at most ``backfill`` routing calls per dispatch, only
        while the head is stuck.
        """
        if not self._backlog_ok(shadow.apply(view.lanes(Phase.DECODE))):
            return []  # no decode lane could take a local prefill either
        placed: list[Action] = []

        def take(request: Request) -> bool:
            if request.prompt_len > limit:
                return False
            action = self._place_prefill(request, now, view, shadow)
            if action is None:
                return False
            placed.append(action)
            return True

        self._queue.backfill(self.backfill, take)
        return placed

    def _predicted_wait(self, view: ClusterView) -> float:
        """Queueing delay a new arrival would see: the prompt tokens ahead of it, here and
        in lane queues, spread over the healthy prefill lanes (0 with none: the arrival
        is then turned away for want of a lane)."""
        lanes = [lane for lane in view.lanes(Phase.PREFILL) if lane.healthy]
        if not lanes:
            return 0.0
        ahead = self._queue.tokens + min(lane.tokens_queued for lane in lanes) * len(lanes)
        return ahead * self._sec_per_token / len(lanes)

    # ------------------------------------------------------------ no lane, waiting too long
    @staticmethod
    def _no_lane(view: ClusterView, phase: Phase) -> str:
        """Why no request can be served in ``phase`` now ("" when a healthy lane exists)."""
        lanes = view.lanes(phase)
        for lane in lanes:
            if lane.healthy:
                return ""
        down = ", ".join(str(lane.lane_id) for lane in lanes)
        return f"no healthy {phase.value} lane (lanes {down} down)" if lanes else f"no {phase.value} lane"

    def _end_stranded(self, view: ClusterView) -> list[Action]:
        """Fail every held request that needs a phase no healthy lane serves.

        A lane may come back, but nothing says when: a request waiting for it would
        wait unboundedly while its client waits too, so it ends at once with the
        reason, and the runtime answers (HTTP 503 or an SSE error event) instead.
        Requests waiting only for room on a healthy lane wait, up to ``max_wait_s``."""
        actions: list[Action] = []
        no_decode = self._no_lane(view, Phase.DECODE) if view.disaggregated else ""
        if no_decode:
            for _, request in self._decode:
                actions.append(Fail(request, f"{no_decode} to take its KV from lane {request.prefill_lane}"))
            self._decode.clear()
        why = self._no_lane(view, Phase.PREFILL) or no_decode
        if why and len(self._queue):
            for request in self._queue.clear():
                self._submitted.pop(request.id, None)
                actions.append(Fail(request, why))
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time a held request reaches its bound: ``max_wait_s`` after it
        joined the prefill queue, or ``max_hold_s`` after its prefill ended while it
        waits for a decode lane. O(1) amortised: both queues are in order of joining."""
        t = self._queue.oldest()
        deadline = math.inf if t is None else t + self.max_wait_s
        if self._decode:
            deadline = min(deadline, self._decode[0][0] + self.max_hold_s)
        return None if deadline == math.inf else deadline

    # ------------------------------------------------------------ callbacks
    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        why = self._no_lane(view, Phase.PREFILL) or (self._no_lane(view, Phase.DECODE) if view.disaggregated else "")
        if why:
            return [Reject(request, why)]
        if self.max_pending is not None and self.pending >= self.max_pending:
            return [Reject(request, f"scheduler queue full ({self.max_pending} requests held)")]
        if self.overload == "reject" and request.slo is not None and request.slo.ttft is not None:
            wait = self._predicted_wait(view)
            if wait > request.slo.ttft:
                return [Reject(request, f"predicted queueing {wait * 1e3:.0f} ms exceeds TTFT SLO "
                                        f"{request.slo.ttft * 1e3:.0f} ms")]
        if len(self._queue) == 0:
            action = self._place_prefill(request, now, view, _Shadow())
            if action is not None:
                return [action]
        self._queue.add(request, now)  # lanes are busy or others wait: on_capacity places it
        return []

    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        submitted = self._submitted.pop(request.id, None)
        if submitted is not None:
            self.router.observe(request.prefill_lane, Phase.PREFILL, request, now - submitted, now)
        if not view.disaggregated or request.decode_lane >= 0:
            return []  # prefilled where it decodes (a colocated lane, or a local prefill)
        if not self._decode:
            action = self._place_decode(request, now, view, _Shadow())
            if action is not None:
                return [action]
        self._decode.append((now, request))
        if self._no_lane(view, Phase.DECODE):
            return self._end_stranded(view)
        return []

    def on_finish(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        if request.generated > 1:
            lane = request.decode_lane if request.decode_lane >= 0 else request.prefill_lane
            self.router.observe(lane, Phase.DECODE, request, request.tpot, now)
        return []  # both runtimes follow a finish with ``on_capacity``, which places what waits

    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        return self._dispatch(now, view, _Shadow())

    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        gone = {id(r) for r in lost}
        if self._decode:
            self._decode = deque(e for e in self._decode if id(e[1]) not in gone)
        actions: list[Action] = []
        retry: list[Request] = []
        for request in lost:
            self._submitted.pop(request.id, None)
            if request.attempts >= self.max_attempts:
                actions.append(Fail(request, f"lane {lane_id} failed; no attempts left ({request.attempts})"))
            else:
                retry.append(request)
        self._queue.prepend(retry, now)  # at the front, in their order: they have waited already
        return actions + self._end_stranded(view) + self._dispatch(now, view, _Shadow())

    def on_timer(self, now: float, view: ClusterView) -> list[Action]:
        """Place what a lane can take now; then end what waited past its bound: held for
        a prefill lane ``max_wait_s``, or holding KV for a decode lane ``max_hold_s``."""
        actions = self._end_stranded(view) + self._dispatch(now, view, _Shadow())
        for request in self._queue.expire(now, self.max_wait_s):
            self._submitted.pop(request.id, None)
            actions.append(Fail(request, f"waited {self.max_wait_s:g} s for a prefill lane with room"))
        decode = self._decode
        while decode and decode[0][0] + self.max_hold_s <= now:
            request = decode.popleft()[1]
            actions.append(Fail(request, f"waited {self.max_hold_s:g} s for a decode lane with room; its KV "
                                         f"on lane {request.prefill_lane} is released before the engine's lease ends"))
        return actions

    def drain(self, now: float) -> list[Action]:
        actions: list[Action] = [Fail(r, "still waiting for a decode lane when the run ended") for _, r in self._decode]
        actions += [Fail(r, "still queued for prefill when the run ended") for r in self._queue.clear()]
        self._decode.clear()
        self._submitted.clear()
        return actions


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class FCFSScheduler(StreamScheduler):
    """The simple baseline: one FIFO queue, requests bound to lane queues at once, no
    admission control beyond the lanes' own bounds (waits are bounded as StreamScheduler's)."""

    name = "fcfs"

    def __init__(self, router: Router, max_attempts: int = 3, pairing: str = "independent",
                 max_wait_s: float = 30.0, max_hold_s: float = 20.0) -> None:
        super().__init__(router, order="fcfs", pairing=pairing, max_attempts=max_attempts,
                         max_pending=None, overload="queue", lane_backlog_tokens=None, backfill=0,
                         max_wait_s=max_wait_s, max_hold_s=max_hold_s)
