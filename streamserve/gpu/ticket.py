"""A client request's ticket through the live executor, and the scheduler's view of the
live lanes: the records the executor keeps, apart from how it acts on them."""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from streamserve.gpu.lanes import LiveLane
from streamserve.gpu.protocol import APIError
from streamserve.lanes import LaneRole, LaneStats
from streamserve.request import Phase, Request, State


@dataclass
class Ticket:
    """One request being served (one prompt of a client's batch).

    Placements queue up rather than sit in one future: a lane can fail between the
    moment a placement is made and the moment the handler acts on it, and the
    re-placement that follows must not be lost behind the stale one.
    """

    request: Request
    endpoint: str
    body: dict[str, Any]
    placements: asyncio.Queue = field(default_factory=asyncio.Queue)  # (lane_id, phase) or APIError
    kv_params: dict[str, Any] | None = None
    streamed: bool = False  # a token already reached the client: no invisible retry
    complete: bool = False  # the engine sent [DONE]: nothing is left to lose
    closed: bool = False
    local: bool = False  # this attempt prefills on the lane that decodes it
    last_chunk: float = math.nan  # when the latest token reached the front end
    io: tuple[int, asyncio.Task] | None = None  # the engine call under way, and its lane
    lane_lost: bool = False  # ``io`` was cancelled because its lane went down

    def place(self, lane_id: int, phase: Phase) -> None:
        self.placements.put_nowait((lane_id, phase))

    def refuse(self, error: APIError) -> None:
        self.placements.put_nowait(error)

    def forget(self) -> None:
        """Drop the placements not yet acted on: they name the lane just lost."""
        while not self.placements.empty():
            self.placements.get_nowait()


class LiveView:
    """The scheduler's ClusterView of the live lanes."""

    def __init__(self, lanes: list[LiveLane]) -> None:
        self._lanes = lanes
        self.disaggregated = any(lane.role is not LaneRole.COLOCATED for lane in lanes)

    def lanes(self, phase: Phase) -> list[LaneStats]:
        return [lane.stats() for lane in self._lanes if lane.role.serves(phase)]

    def partner(self, lane_id: int) -> int | None:
        """The decode lane of prefill lane ``lane_id``'s stream pair; as in the
        simulator, only a prefill lane has a partner."""
        me = self._lanes[lane_id]
        if me.pair is None or me.role is not LaneRole.PREFILL:
            return None
        for lane in self._lanes:
            if lane.pair == me.pair and lane.role is LaneRole.DECODE:
                return lane.lane_id
        return None


def reset(req: Request) -> None:
    """A request that lost its lane starts over: no phase of it has happened."""
    req.state = State.QUEUED
    req.generated = 0
    req.prefill_start = req.prefill_end = req.first_token = req.transfer_start = req.decode_start = math.nan
    req.prefill_lane = req.decode_lane = -1
