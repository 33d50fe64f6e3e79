"""The KV hand-off from a prefill lane to a decode lane, in one place.

A move goes: queue on the destination until it has free blocks, reserve them, send the
KV over the link (one transfer at a time per lane pair, at the link's bandwidth), then
the destination receives the request and the source releases its copy. Every move in
progress is in ``moves``, so a failure on either end, or on the link, undoes exactly
the moves it touches, once.

When the KV cannot come (the source freed it when its lease ran out, or a link fault
broke the transfer) the destination recomputes the prompt itself, as vLLM's
``kv_load_failure_policy: recompute`` does, rather than losing the request.
"""
from __future__ import annotations

from typing import Callable

import simpy

from streamserve.config import LinkConfig
from streamserve.request import Request, State
from streamserve.perfmodel import transfer_time
from streamserve.sim.lane import SimLane


class Move:
    """One request's KV on its way from ``src`` to ``dst`` (a plain class: mypyc builds
    it natively, where a dataclass's ``__init__`` would run interpreted)."""

    __slots__ = ("req", "src", "dst", "sending")

    def __init__(self, req: Request, src: SimLane, dst: SimLane) -> None:
        self.req = req
        self.src = src
        self.dst = dst
        self.sending = False


class Handoff:
    def __init__(self, env: simpy.Environment, lanes: list[SimLane], link: LinkConfig,
                 on_freed: Callable[[], None]) -> None:
        self.env = env
        self.on_freed = on_freed  # told when an arrival freed KV at a prefill lane
        self.lanes = lanes
        self.link = link
        self.moves: dict[int, Move] = {}  # request id -> its move, from placement to arrival
        self._link_free: dict[tuple[int, int], float] = {}
        self.link_down: dict[int, int] = {}  # lane id -> link faults holding its link down
        self.link_slow: dict[int, float] = {}  # lane id -> slowdown of transfers over its link
        self.recomputed = 0

    def start(self, req: Request, dst: SimLane) -> None:
        """Move ``req``'s KV from its prefill lane to ``dst`` (a placement for decode)."""
        src = self.lanes[req.prefill_lane]
        req.decode_lane = dst.lane_id
        if not src.holds(req.id):  # the lease ran out: there is nothing to pull
            self._recompute(req, dst)
            return
        req.state = State.TRANSFER
        self.moves[req.id] = Move(req, src, dst)
        dst.enqueue_incoming(req)
        self.pump(dst)

    def pump(self, dst: SimLane) -> None:
        """Start the transfers ``dst`` now has free blocks for."""
        while True:
            req = dst.reserve_next()
            if req is None:
                return
            move = self.moves[req.id]
            if not move.src.holds(req.id) or self._broken(move):
                del self.moves[req.id]
                dst.cancel_incoming(req)
                if move.src.holds(req.id):
                    move.src.release(req.id)
                self._recompute(req, dst)
                continue
            self._send(move)

    def _broken(self, move: Move) -> bool:
        return bool(self.link_down.get(move.src.lane_id) or self.link_down.get(move.dst.lane_id))

    def _send(self, move: Move) -> None:
        env, req = self.env, move.req
        now = env.now
        move.sending = True
        move.src.pin(req.id)
        key = (move.src.lane_id, move.dst.lane_id)
        slow = max(self.link_slow.get(key[0], 1.0), self.link_slow.get(key[1], 1.0))
        start = max(now, self._link_free.get(key, 0.0))
        end = start + transfer_time(move.dst.perf.kv_bytes(req.prompt_len), self.link.bandwidth_gbps,
                                    self.link.latency_ms) * slow
        self._link_free[key] = end
        req.transfer_start = now
        env.timeout(end - now).callbacks.append(lambda _e: self._arrived(move))

    def _arrived(self, move: Move) -> None:
        req = move.req
        if self.moves.get(req.id) is not move:
            return  # undone by a failure meanwhile
        del self.moves[req.id]
        req.state = State.DECODE
        req.decode_start = self.env.now
        move.dst.receive(req)
        move.src.release(req.id)
        self.on_freed()

    def _recompute(self, req: Request, dst: SimLane) -> None:
        req.state = State.DECODE
        req.decode_start = self.env.now
        req.preemptions += 1  # its KV is recomputed, as after a preemption
        self.recomputed += 1
        dst.recompute(req)

    # ------------------------------------------------------------ failures
    def lane_failed(self, lane: SimLane, lost: list[Request]) -> list[Request]:
        """``lane`` failed and ``lost`` came off it: undo the moves it was part of, at the
        other end. Returns the requests of those moves that were not in ``lost``: KV on
        its way to the failed lane (the source still held it; the destination is gone)."""
        ids = {req.id for req in lost}
        extra: list[Request] = []
        for move in [m for m in self.moves.values() if m.dst is lane or (m.src is lane and m.req.id in ids)]:
            req = move.req
            del self.moves[req.id]
            if move.src is not lane and move.src.holds(req.id):
                move.src.release(req.id)
            if move.dst is not lane:
                move.dst.cancel_incoming(req)
            if req.id not in ids:
                extra.append(req)
        # A move from the failed lane whose KV had already been freed (its lease ran
        # out) goes on: its destination recomputes the prompt when it has room.
        return extra

    def withdraw(self, req: Request) -> None:
        """``req`` ends before its KV moved: free what it holds on both ends."""
        move = self.moves.pop(req.id, None)
        if move is not None:
            move.dst.cancel_incoming(req)
            src = move.src
        else:
            src = self.lanes[req.prefill_lane]
        if src.holds(req.id):
            src.release(req.id)

    def link_fault(self, lane_id: int, delta: int) -> None:
        """A ``link_down`` fault on ``lane_id``'s link began (+1) or ended (-1). Transfers
        under way over a link that goes down fail: their destination recomputes."""
        self.link_down[lane_id] = self.link_down.get(lane_id, 0) + delta
        if delta <= 0:
            return
        for move in [m for m in self.moves.values() if m.sending and lane_id in (m.src.lane_id, m.dst.lane_id)]:
            req = move.req
            del self.moves[req.id]
            move.src.release(req.id)
            move.dst.cancel_incoming(req)
            self._recompute(req, move.dst)

    def slow_link(self, lane_id: int, factor: float) -> None:
        """Transfers over ``lane_id``'s link that start from now on take ``factor`` times as long."""
        self.link_slow[lane_id] = factor
