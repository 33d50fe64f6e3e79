"""The simulated cluster: lanes, KV links, faults, and the loop that carries out what
the policies decide.

The cluster owns no rule of its own about where a request goes or how deep to
speculate: it reports events to the scheduler, executes the actions it returns, and
hands each decode step to the speculation policy. Anything smarter here would be a
policy the live runtime does not have.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Generator, Sequence

import numpy as np
import simpy
from simpy.core import StopSimulation

from streamserve.config import ClusterConfig
from streamserve.lanes import LaneRole, LaneStats
from streamserve.metrics import LaneUsage, LogHistogram, RunResult
from streamserve.perfmodel import LanePerf, Profile, transfer_time
from streamserve.policies.base import Action, Fail, Reject, Scheduler, SpecPolicy, Submit
from streamserve.policies.registry import build_router, build_scheduler, build_spec_policy
from streamserve.request import Phase, Request, State
from streamserve.sim.lane import SimLane
from streamserve.workload.base import Workload

ITL_FLUSH = 1 << 16


class SimulationError(Exception):
    """A policy asked for something impossible (a bug in the policy, not in the input)."""


def lane_perfs(cfg: ClusterConfig) -> dict[int, LanePerf]:
    """The performance model of every lane, by lane id (replicas expanded in order)."""
    profile = Profile.load(cfg.profile)
    draft = cfg.speculation.draft_model if cfg.speculation.method == "draft" else (
        "ngram" if cfg.speculation.method == "ngram" else None)
    perfs: dict[int, LanePerf] = {}
    for lane_cfg in cfg.lanes:
        for _ in range(lane_cfg.replicas):
            perfs[len(perfs)] = profile.lane(cfg.model, cfg.gpu, lane_cfg.tp, draft)
    return perfs


class _View:
    """The ``ClusterView`` a scheduler sees."""

    def __init__(self, cluster: "Cluster") -> None:
        self.disaggregated = cluster.disaggregated
        self._by_phase = {phase: [lane for lane in cluster.lanes if lane.role.serves(phase)] for phase in Phase}
        self._partner = cluster.partner

        self._snap: dict[Phase, tuple[LaneStats, ...]] = {}

    def fresh(self) -> "_View":
        """The view for one scheduler callback. Lanes do not change while a callback
        runs (its actions are carried out after it returns), so each phase's snapshots
        are taken once per callback however often the scheduler asks."""
        self._snap.clear()
        return self

    def lanes(self, phase: Phase) -> Sequence[LaneStats]:
        snap = self._snap.get(phase)
        if snap is None:
            snap = self._snap[phase] = tuple([lane.stats() for lane in self._by_phase[phase]])
        return snap

    def partner(self, lane_id: int) -> int | None:
        return self._partner.get(lane_id)


class Cluster:
    def __init__(self, cfg: ClusterConfig, workload: Workload, seed: int = 0,
                 on_settled: Callable[[Request, int], None] | None = None) -> None:
        self.cfg = cfg
        self.workload = workload
        self.env = simpy.Environment()
        perfs = lane_perfs(cfg)
        k_max = cfg.speculation.k_max if cfg.speculation.method != "none" else 0
        self.spec: SpecPolicy = build_spec_policy(cfg.spec_policy.model_dump(), perfs, k_max)
        router = build_router(cfg.router.model_dump(), perfs, seed)
        self.scheduler: Scheduler = build_scheduler(cfg.scheduler.model_dump(), router, perfs)
        self.disaggregated = cfg.lanes[0].role != "colocated"
        self.itl = LogHistogram()
        self.itl_buffer: list[float] = []  # gaps recorded one by one
        self.itl_bulk: list[tuple[float, int]] = []  # (gap, count): a decode step's lockstep sequences
        self.k_trace: list[tuple[float, int, int]] = []
        self._alpha = {name: workload.alpha_of(name) for name in workload.datasets}

        rng = random.Random(seed)
        self.lanes: list[SimLane] = []
        pairs: dict[int, dict[str, int]] = {}
        for lane_cfg in cfg.lanes:
            engine = cfg.engine_for(lane_cfg)
            for _ in range(lane_cfg.replicas):
                lane_id = len(self.lanes)
                role = LaneRole(lane_cfg.role)
                self.lanes.append(SimLane(self.env, self, lane_id, role, perfs[lane_id], engine,
                                          lane_cfg.pair, self.spec, random.Random(rng.random())))
                if lane_cfg.pair is not None:
                    pairs.setdefault(lane_cfg.pair, {})[lane_cfg.role] = lane_id
        self.partner = {p["prefill"]: p["decode"] for p in pairs.values() if "prefill" in p and "decode" in p}
        self.view = _View(self)
        self._link_free: dict[tuple[int, int], float] = {}
        self._in_flight: dict[int, tuple[SimLane, int]] = {}  # request id -> (destination, blocks reserved)
        self._link = cfg.link

        self.requests: list[Request | None] = [None] * len(workload)
        self.settled = 0
        self.on_settled = on_settled
        self._all_done = self.env.event()
        self._next_index = 0
        if workload.concurrency:
            self.env.process(self._closed_loop_start(workload.concurrency))
        else:
            self.env.process(self._open_loop())
        for fault in cfg.faults:
            self.env.process(self._fault(fault.lane, fault.at, fault.kind, fault.duration, fault.factor))

    def alpha_of(self, req: Request) -> float:
        return self._alpha.get(req.dataset, 0.0)

    # ------------------------------------------------------------ arrivals
    def _open_loop(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        arrival = self.workload.arrival
        assert arrival is not None
        for i, t in enumerate(arrival.tolist()):
            if t > env.now:
                yield env.timeout(t - env.now)
            self._arrive(i, t)

    def _closed_loop_start(self, clients: int) -> Generator[simpy.Event, Any, None]:
        for _ in range(min(clients, len(self.workload))):
            self._next_arrival(0.0)
        yield self.env.timeout(0)

    def _next_arrival(self, at: float) -> None:
        i = self._next_index
        if i >= len(self.workload):
            return
        self._next_index += 1
        if at <= self.env.now:
            self._arrive(i, self.env.now)
        else:
            self.env.timeout(at - self.env.now).callbacks.append(lambda _e: self._arrive(i, at))

    def _arrive(self, i: int, t: float) -> None:
        req = self.workload.request(i, t)
        self.requests[i] = req
        self._execute(self.scheduler.on_arrival(req, t, self.view.fresh()))

    # ------------------------------------------------------------ actions
    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            req = action.request
            if isinstance(action, Submit):
                lane = self.lanes[action.lane_id]
                # Any lane can prefill (a decode lane then decodes the request itself:
                # conditional disaggregation); only decode-capable lanes take KV.
                if not lane.healthy or (action.phase is Phase.DECODE and lane.role is LaneRole.PREFILL):
                    raise SimulationError(
                        f"scheduler placed request {req.id} for {action.phase.value} on lane "
                        f"{lane.lane_id} ({lane.role.value}, healthy={lane.healthy})")
                why = lane.misfit(req)
                if why:
                    self._settle(req, State.FAILED, why)
                    continue
                if action.phase is Phase.PREFILL:
                    req.state = State.PREFILL
                    req.attempts += 1
                    req.prefill_lane = lane.lane_id
                    lane.add_prefill(req)
                else:
                    req.state = State.TRANSFER
                    req.decode_lane = lane.lane_id
                    lane.add_incoming(req)
            elif isinstance(action, Reject):
                self._settle(req, State.REJECTED, action.reason)
            elif isinstance(action, Fail):
                self._release_held(req)
                self._settle(req, State.FAILED, action.reason)

    def _release_held(self, req: Request) -> None:
        """A request the scheduler fails while it waits for a decode lane still holds its
        KV on its prefill lane: free it (else a later failure of that lane returns the
        settled request as lost)."""
        if req.prefill_lane >= 0:
            lane = self.lanes[req.prefill_lane]
            seq = lane.held.pop(req.id, None)
            if seq is not None:
                lane.free_seq(seq)
                lane.wake()

    def _settle(self, req: Request, state: State, reason: str = "", now: float | None = None) -> None:
        req.state = state
        req.reason = reason
        req.finish = self.env.now if now is None else now
        self.settled += 1
        if self.on_settled is not None:
            self.on_settled(req, self.settled)
        if self.workload.concurrency:
            self._next_arrival(self.env.now + self.workload.think_time)
        if self.settled == len(self.workload):
            self._all_done.succeed()

    # ------------------------------------------------------------ KV transfer
    def start_transfer(self, req: Request, dst: SimLane, blocks: int) -> None:
        now = self.env.now
        src_id = req.prefill_lane
        key = (src_id, dst.lane_id)
        start = max(now, self._link_free.get(key, 0.0))
        end = start + transfer_time(dst.perf.kv_bytes(req.prompt_len), self._link.bandwidth_gbps, self._link.latency_ms)
        self._link_free[key] = end
        req.transfer_start = now
        attempt = req.attempts
        self._in_flight[req.id] = (dst, blocks)
        self.env.timeout(end - now).callbacks.append(lambda _e: self._transfer_done(req, dst, blocks, attempt))

    def _transfer_done(self, req: Request, dst: SimLane, blocks: int, attempt: int) -> None:
        if req.attempts != attempt or req.state is not State.TRANSFER:
            return  # a lane failed meanwhile; the request has been requeued
        now = self.env.now
        del self._in_flight[req.id]
        src = self.lanes[req.prefill_lane]
        seq = src.held.pop(req.id)
        src.free_seq(seq)
        req.state = State.DECODE
        req.decode_start = now
        dst.receive(req, blocks, now)
        src.wake()
        self._capacity_freed()

    # ------------------------------------------------------------ lane events
    def after_step(self, lane: SimLane, prefilled: list, finished: list, now: float) -> None:
        scheduler = self.scheduler
        for seq in prefilled:
            req = seq.req
            if req.state is State.PREFILL and req.generated < req.output_len:
                if lane.role is LaneRole.PREFILL:
                    self._execute(scheduler.on_prefill_done(req, now, self.view.fresh()))
                else:
                    req.state = State.DECODE
                    req.decode_start = now
                    req.decode_lane = lane.lane_id
                    self._execute(scheduler.on_prefill_done(req, now, self.view.fresh()))
        for seq in finished:
            req = seq.req
            if req.state in (State.PREFILL, State.DECODE):
                if req.decode_lane < 0:
                    req.decode_start = now  # one-token request: nothing to decode
                self._settle(req, State.FINISHED, now=now)  # the lane's step end, exactly
                self._execute(scheduler.on_finish(req, now, self.view.fresh()))
        if lane.role is LaneRole.DECODE:
            lane.admit_incoming()
        if len(self.itl_bulk) > ITL_FLUSH:
            self._flush_itl()
        self._capacity_freed()

    def _flush_itl(self) -> None:
        self.itl.add_many(np.asarray(self.itl_buffer, dtype=np.float64))
        self.itl_buffer.clear()
        if self.itl_bulk:
            gaps, counts = zip(*self.itl_bulk)
            self.itl.add_counts(np.asarray(gaps), np.asarray(counts, dtype=np.int64))
            self.itl_bulk.clear()

    def _capacity_freed(self) -> None:
        if self.scheduler.pending:
            self._execute(self.scheduler.on_capacity(self.env.now, self.view.fresh()))

    # ------------------------------------------------------------ faults
    def _fault(self, lane_id: int, at: float, kind: str, duration: float | None, factor: float) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(at)
        lane = self.lanes[lane_id]
        if kind == "slow":
            lane.slow = factor
            if duration is not None:
                yield env.timeout(duration)
                lane.slow = 1.0
            return
        lane.healthy = False
        lost = lane.take_all()
        # Requests whose KV was on their way to or from this lane lose it as well.
        for other in self.lanes:
            if other is lane:
                continue
            for seq in list(other.held.values()):
                if seq.req.decode_lane == lane_id and seq.req.state is State.TRANSFER:
                    lost.append(seq.req)  # its KV is still here, but its destination is gone
            for req in list(other.incoming):
                if req.prefill_lane == lane_id:
                    other.incoming.remove(req)
                    other.queued_tokens -= req.prompt_len
                    lost.append(req)
        for req in lost:
            src = req.prefill_lane
            if src >= 0 and src != lane_id:
                kept = self.lanes[src].held.pop(req.id, None)
                if kept is not None:
                    self.lanes[src].free_seq(kept)
            flight = self._in_flight.pop(req.id, None)
            if flight is not None and flight[0] is not lane:
                flight[0].used_blocks -= flight[1]
            self._reset(req)
        self._execute(self.scheduler.on_lane_down(lane_id, lost, env.now, self.view.fresh()))
        for other in self.lanes:
            other.admit_incoming()
            other.wake()
        if duration is not None:
            yield env.timeout(duration)
            lane.healthy = True
            lane.wake()
            self._capacity_freed()

    @staticmethod
    def _reset(req: Request) -> None:
        req.state = State.QUEUED
        req.generated = 0
        req.prefill_start = req.first_token = req.transfer_start = req.decode_start = math.nan
        req.prefill_lane = req.decode_lane = -1

    # ------------------------------------------------------------ run
    def run(self) -> RunResult:
        # Stop when every request has settled, or when nothing is left to happen (a stall:
        # whatever is still unsettled then fails below, with the reason).
        self._all_done.callbacks.append(StopSimulation.callback)
        self.env.run()
        now = self.env.now
        self._execute(self.scheduler.drain(now))
        for req in self.requests:
            if req is not None and not req.state.terminal:
                self._settle(req, State.FAILED, f"stuck in {req.state.value} when the simulation ran out of events")
        self._flush_itl()
        usage = [LaneUsage(lane.lane_id, lane.role.value, lane.busy_time, lane.steps,
                           lane.batch_sum / lane.steps if lane.steps else 0.0,
                           lane.peak_blocks / lane.total_blocks, lane.drafted, lane.accepted)
                 for lane in self.lanes]
        reqs = [r for r in self.requests if r is not None]
        return RunResult(requests=reqs, duration=now, itl=self.itl, lanes=usage, k_trace=self.k_trace)
