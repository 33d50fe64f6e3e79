"""The three policy interfaces and the actions they return.

Policies are sans-I/O: a runtime calls them with the current time and lane snapshots,
and carries out the actions they return. Nothing here may read a clock, sleep, or touch
a runtime; ``tests/test_layering.py`` enforces that.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, Sequence

from mypy_extensions import mypyc_attr

from streamserve.lanes import LaneStats
from streamserve.request import Phase, Request


# ---------------------------------------------------------------- actions
# The actions and ``StepObservation`` are records written as plain classes with an
# explicit ``__init__`` rather than dataclasses: mypyc compiles those to native
# constructors, while a dataclass's generated ``__init__`` runs as interpreted Python,
# several times slower, and the simulator makes one per placement or engine step.
class Submit:
    """Place ``request`` on ``lane_id`` for ``phase`` (for DECODE: move its KV there)."""

    __slots__ = ("request", "lane_id", "phase")

    def __init__(self, request: Request, lane_id: int, phase: Phase) -> None:
        self.request = request
        self.lane_id = lane_id
        self.phase = phase

    def __repr__(self) -> str:
        return f"Submit(request={self.request.id}, lane_id={self.lane_id}, phase={self.phase.value})"


class Reject:
    """Turn ``request`` away before it used any capacity."""

    __slots__ = ("request", "reason")

    def __init__(self, request: Request, reason: str) -> None:
        self.request = request
        self.reason = reason

    def __repr__(self) -> str:
        return f"Reject(request={self.request.id}, reason={self.reason!r})"


class Fail:
    """End ``request`` unfinished after it was admitted (e.g. out of retries)."""

    __slots__ = ("request", "reason")

    def __init__(self, request: Request, reason: str) -> None:
        self.request = request
        self.reason = reason

    def __repr__(self) -> str:
        return f"Fail(request={self.request.id}, reason={self.reason!r})"


Action = Submit | Reject | Fail


class ClusterView(Protocol):
    """What the runtime shows a scheduler of the cluster at one instant."""

    disaggregated: bool  # prefill and decode on separate lanes (else colocated)

    def lanes(self, phase: Phase) -> Sequence[LaneStats]:
        """Snapshots of every lane that can serve ``phase``, healthy or not."""

    def partner(self, lane_id: int) -> int | None:
        """The decode lane paired with prefill lane ``lane_id`` (stream pairs), if any."""


# ---------------------------------------------------------------- routing
@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class Router(ABC):
    """Chooses a lane for one phase of one request."""

    name: str = "router"

    @abstractmethod
    def route(self, request: Request, lanes: Sequence[LaneStats], phase: Phase, now: float) -> int | None:
        """The id of the lane to use, or ``None`` when no lane can take the request now.

        ``lanes`` holds every candidate, healthy or not; a router must never pick an
        unhealthy or full one (``LaneStats.has_room``).
        """

    def observe(self, lane_id: int, phase: Phase, request: Request, latency: float, now: float) -> None:
        """Feedback after a phase ends on a lane: the observed latency of that phase.

        For PREFILL it is the time from submission to the first token, for DECODE the
        request's TPOT. Routers that predict latency correct themselves with it.
        """

    # Optional capabilities: the scheduler asks every router, and these defaults say
    # "not supported", so a router of one's own implements only what it does.
    def local_prefill_limit(self, decode_lanes: Sequence[LaneStats], backed_up: bool) -> int:
        """The longest prompt, in tokens, this router may prefill on a decode lane, which
        then decodes the request with no KV transfer (conditional disaggregation); 0:
        never (the default).

        On disaggregated clusters the scheduler offers ``decode_lanes`` next to the
        prefill lanes to ``route`` for a prompt up to this limit. ``backed_up``: every
        prefill lane is over the scheduler's backlog bound (a burst); the backed-up
        prefill lanes are then offered too, and choosing one means "wait for it". While
        the head of the queue is over the limit in a burst, the scheduler may offer
        requests behind it (backfill)."""
        return 0

    def route_pair(self, request: Request, pairs: Sequence[tuple[LaneStats, LaneStats]], now: float) -> int | None:
        """Stream-pair mode: the prefill lane of one of ``pairs`` (prefill lane, its decode
        partner, both with room); the decode phase will go to the partner. By default
        the prefill lanes are routed alone."""
        return self.route(request, [pre for pre, _ in pairs], Phase.PREFILL, now)


def usable(lanes: Sequence[LaneStats]) -> list[LaneStats]:
    """The lanes a router may choose from."""
    return [lane for lane in lanes if lane.has_room]


# ---------------------------------------------------------------- speculation
class StepObservation:
    """What one speculative decode step on a lane did, reported by the runtime (a plain
    class for mypyc's native constructor, as the actions above)."""

    __slots__ = ("lane_id", "k", "batch_size", "context_tokens", "drafted", "accepted", "step_time", "now",
                 "by_class")

    def __init__(self, lane_id: int, k: int, batch_size: int, context_tokens: int, drafted: int, accepted: int,
                 step_time: float, now: float, by_class: dict[str, tuple[int, int]] | None = None) -> None:
        self.lane_id = lane_id
        self.k = k
        self.batch_size = batch_size
        self.context_tokens = context_tokens
        self.drafted = drafted  # draft tokens proposed over the batch (k * sequences that drafted)
        self.accepted = accepted  # of those, accepted by the verifier
        self.step_time = step_time  # seconds, the whole step (drafting included)
        self.now = now
        self.by_class = by_class  # dataset -> (drafted, accepted)


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class SpecPolicy(ABC):
    """Chooses the speculation depth k of each decode step on a lane."""

    name: str = "spec"
    k_max: int = 0

    @abstractmethod
    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        """k for the next step on lane ``lane_id``, in ``[0, k_max]``; ``classes`` counts
        the batch by dataset.

        It runs before every engine step, so it gets plain numbers rather than a
        ``LaneStats`` snapshot (building one per step would cost more than most decisions).
        The runtime reserves KV for ``k_max`` draft tokens per sequence whatever k is, as
        vLLM reserves lookahead slots for its drafter."""

    def observe(self, obs: StepObservation) -> None:
        """Learn from a finished step."""


# ---------------------------------------------------------------- orchestration
@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class Scheduler(ABC):
    """Request lifecycle: decides what happens at each event the runtime reports."""

    name: str = "scheduler"

    @property
    @abstractmethod
    def pending(self) -> int:
        """Requests the scheduler holds (admitted, on no lane)."""

    @abstractmethod
    def on_arrival(self, request: Request, now: float, view: ClusterView) -> list[Action]: ...

    @abstractmethod
    def on_prefill_done(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        """The first token exists; on disaggregated clusters pick where to decode."""

    def on_finish(self, request: Request, now: float, view: ClusterView) -> list[Action]:
        """``request`` finished; the runtime calls ``on_capacity`` next (once per engine
        step, however many finished in it), so placing held requests belongs there."""
        return []

    @abstractmethod
    def on_capacity(self, now: float, view: ClusterView) -> list[Action]:
        """A lane freed capacity: place what the scheduler holds, if it can."""

    @abstractmethod
    def on_lane_down(self, lane_id: int, lost: list[Request], now: float, view: ClusterView) -> list[Action]:
        """Lane ``lane_id`` failed; ``lost`` were on it and have lost their KV."""

    def next_deadline(self) -> float | None:
        """The earliest time at which something the scheduler holds must be looked at
        again even if no event happens (a request may wait only so long for a lane, a
        prefilled request only so long for its KV to be pulled); ``None`` when nothing
        waits on time.

        The runtime asks after carrying out the actions of every callback and arranges
        to call ``on_timer`` at that time (a policy has no clock of its own)."""
        return None

    def on_timer(self, now: float, view: ClusterView) -> list[Action]:
        """A deadline given by ``next_deadline`` has come: end or re-place what waited
        too long."""
        return []

    @abstractmethod
    def drain(self, now: float) -> list[Action]:
        """The run is over: settle every request still held (normally ``Fail``)."""
