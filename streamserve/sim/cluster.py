"""The simulated cluster: it carries out what the policies decide, injects faults and
settles requests.

The cluster owns no rule of its own about where a request goes or how deep to
speculate: it reports events to the scheduler, executes the actions it returns, and
calls the scheduler back at the deadline it asks for. Lanes own their queues and KV;
``handoff`` moves KV between them; the cluster only calls their methods.

Every request settles exactly once (``_settle`` refuses a second time): it is in at most
one place at a time (the scheduler, a lane's queue or batch, a lane's held KV, a move),
and a failure hands each one back once.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Generator, Sequence

import simpy
from simpy.core import StopSimulation

from streamserve.config import ClusterConfig, FaultConfig
from streamserve.lanes import LaneRole, LaneStats
from streamserve.metrics import LaneUsage, RunResult
from streamserve.perfmodel import LanePerf, Profile
from streamserve.policies.base import Action, Fail, Reject, Scheduler, SpecPolicy, Submit
from streamserve.policies.registry import build_router, build_scheduler, build_spec_policy
from streamserve.request import Phase, Request, State
from streamserve.sim.handoff import Handoff
from streamserve.sim.kv import Seq
from streamserve.sim.lane import SimLane
from streamserve.sim.record import Recorder
from streamserve.workload.base import Workload


class SimulationError(Exception):
    """A policy asked for something impossible (a bug in the policy, not in the input)."""


def lane_perfs(cfg: ClusterConfig) -> dict[int, LanePerf]:
    """The performance model of every lane, by lane id (replicas expanded in order)."""
    profile = Profile.load(cfg.profile)
    method = cfg.speculation.method
    draft = cfg.speculation.draft_model if method == "draft" else (None if method == "none" else method)
    perfs: dict[int, LanePerf] = {}
    for lane_cfg in cfg.lanes:
        for _ in range(lane_cfg.replicas):
            perfs[len(perfs)] = profile.lane(cfg.model, cfg.gpu, lane_cfg.tp, draft, lane_cfg.role)
    return perfs


class _View:
    """The ``ClusterView`` a scheduler sees."""

    def __init__(self, lanes: list[SimLane], disaggregated: bool, partner: dict[int, int]) -> None:
        self.disaggregated = disaggregated
        self._by_phase = {phase: [lane for lane in lanes if lane.role.serves(phase)] for phase in Phase}
        self._partner = partner
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
        self.max_model_len = min(p.max_model_len for p in perfs.values())
        k_max = cfg.speculation.k_max if cfg.speculation.method != "none" else 0
        self.spec: SpecPolicy = build_spec_policy(cfg.spec_policy.model_dump(), perfs, k_max)
        router = build_router(cfg.router.model_dump(), perfs, seed)
        self.scheduler: Scheduler = build_scheduler(cfg.scheduler.model_dump(), router, perfs)
        self.disaggregated = cfg.lanes[0].role != "colocated"
        self.rec = Recorder()
        method = cfg.speculation.method  # acceptance matches the draft that makes the tokens
        self._alpha = {name: workload.alpha_of(name, method) for name in workload.datasets}

        rng = random.Random(seed)
        self.lanes: list[SimLane] = []
        pairs: dict[int, dict[str, int]] = {}
        for lane_cfg in cfg.lanes:
            engine = cfg.engine_for(lane_cfg)
            for _ in range(lane_cfg.replicas):
                lane_id = len(self.lanes)
                self.lanes.append(SimLane(self.env, self, lane_id, LaneRole(lane_cfg.role), perfs[lane_id], engine,
                                          lane_cfg.pair, self.spec, random.Random(rng.random()), self.rec,
                                          cfg.kv_lease_s))
                if lane_cfg.pair is not None:
                    pairs.setdefault(lane_cfg.pair, {})[lane_cfg.role] = lane_id
        self.partner = {p["prefill"]: p["decode"] for p in pairs.values() if "prefill" in p and "decode" in p}
        self.view = _View(self.lanes, self.disaggregated, self.partner)
        self.handoff = Handoff(self.env, self.lanes, cfg.link, self._capacity_freed)

        self.requests: list[Request | None] = [None] * len(workload)
        self.settled = 0
        self.on_settled = on_settled
        self._all_done = self.env.event()
        self._waiting_client: dict[int, simpy.Event] = {}  # request id -> its closed-loop client
        self._released = 0  # clients released so far
        self._next_index = 0
        self._timer: simpy.Event | None = None  # the scheduler's pending deadline, if any
        self._timer_at = math.inf
        if workload.concurrency:
            for _ in range(min(workload.concurrency, len(workload))):
                self.env.process(self._client())
        else:
            self.env.process(self._open_loop())
        for fault in cfg.faults:
            self.env.process(self._fault(fault))

    # ------------------------------------------------------------ LaneHost
    def alpha_of(self, req: Request) -> float:
        return self._alpha.get(req.dataset, 0.0)

    def step_done(self, lane: SimLane, prefilled: list[Seq], finished: list[Seq], now: float) -> bool:
        scheduler = self.scheduler
        released = self._released
        for seq in prefilled:
            req = seq.req
            if req.state is State.PREFILL and req.generated < req.output_len:
                if lane.role is not LaneRole.PREFILL:
                    req.state = State.DECODE
                    req.decode_start = now
                    req.decode_lane = lane.lane_id
                self._callback(scheduler.on_prefill_done(req, now, self.view.fresh()))
        for seq in finished:
            req = seq.req
            if req.state in (State.PREFILL, State.DECODE):
                if req.decode_lane < 0:
                    req.decode_start = now  # one-token request: nothing to decode
                self._settle(req, State.FINISHED, now=now)  # the lane's step end, exactly
                self._callback(scheduler.on_finish(req, now, self.view.fresh()))
        if lane.role is LaneRole.DECODE:
            self.handoff.pump(lane)
        self.rec.maybe_flush()
        self._capacity_freed()
        return self._released > released  # a client's next request comes at this instant

    def memory_freed(self, lane: SimLane) -> None:
        self._capacity_freed()

    # ------------------------------------------------------------ arrivals
    def _open_loop(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        arrival = self.workload.arrival
        assert arrival is not None
        for i, t in enumerate(arrival.tolist()):
            if t > env.now:
                yield env.timeout(t - env.now)
            self._arrive(i, t)

    def _client(self) -> Generator[simpy.Event, Any, None]:
        """One closed-loop client: send a request, wait until it settles, think, repeat."""
        env, n, think = self.env, len(self.workload), self.workload.think_time
        while self._next_index < n:
            i = self._next_index
            self._next_index += 1
            settled = self._waiting_client[i] = env.event()
            self._arrive(i, env.now)
            yield settled
            if think > 0:
                yield env.timeout(think)

    def _arrive(self, i: int, t: float) -> None:
        req = self.workload.request(i, t)
        self.requests[i] = req
        if req.prompt_len + req.output_len > self.max_model_len:  # vLLM's front end answers 400
            self._settle(req, State.REJECTED, f"prompt + output = {req.prompt_len + req.output_len} tokens "
                         f"exceeds the model's context window of {self.max_model_len}")
            return
        self._callback(self.scheduler.on_arrival(req, t, self.view.fresh()))

    # ------------------------------------------------------------ actions
    def _callback(self, actions: list[Action]) -> None:
        """Carry out a scheduler callback's actions, then honour its next deadline."""
        if actions:
            self._execute(actions)
        self._arm_timer()

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            req = action.request
            if isinstance(action, Submit):
                lane = self.lanes[action.lane_id]
                decode = action.phase is Phase.DECODE
                # Any lane can prefill (a decode lane then decodes the request itself:
                # conditional disaggregation); only decode-capable lanes take KV.
                if not lane.healthy or (decode and lane.role is LaneRole.PREFILL):
                    raise SimulationError(
                        f"scheduler placed request {req.id} for {action.phase.value} on lane "
                        f"{lane.lane_id} ({lane.role.value}, healthy={lane.healthy})")
                if decode != self._awaits_decode(req) or (not decode and req.state is not State.QUEUED):
                    raise SimulationError(f"scheduler placed request {req.id} for {action.phase.value} "
                                          f"while it is {req.state.value}")
                why = lane.misfit(req)
                if why:
                    self._end(req, State.FAILED, why)
                    continue
                if decode:
                    self.handoff.start(req, lane)
                else:
                    req.state = State.PREFILL
                    req.attempts += 1
                    req.prefill_lane = lane.lane_id
                    lane.add_prefill(req)
            elif isinstance(action, Reject):
                self._end(req, State.REJECTED, action.reason)
            elif isinstance(action, Fail):
                self._end(req, State.FAILED, action.reason)

    @staticmethod
    def _awaits_decode(req: Request) -> bool:
        """Prefilled on a prefill lane, waiting to be placed for decode."""
        return req.state is State.PREFILL and req.prefill_end == req.prefill_end and req.decode_lane < 0

    def _end(self, req: Request, state: State, reason: str) -> None:
        """End a request the scheduler still holds (it is on no lane's queue or batch)."""
        if req.state.terminal:
            raise SimulationError(f"request {req.id} settled twice ({req.state.value}, then {state.value})")
        if self._awaits_decode(req):
            self.handoff.withdraw(req)  # free its KV at the prefill lane
        elif req.state is not State.QUEUED:
            raise SimulationError(f"scheduler ended request {req.id} while it is {req.state.value} on a lane")
        self._settle(req, state, reason)

    def _settle(self, req: Request, state: State, reason: str = "", now: float | None = None) -> None:
        if req.state.terminal:
            raise SimulationError(f"request {req.id} settled twice ({req.state.value}, then {state.value})")
        req.state = state
        req.reason = reason
        req.finish = self.env.now if now is None else now
        self.settled += 1
        if self.on_settled is not None:
            self.on_settled(req, self.settled)
        client = self._waiting_client.pop(req.id, None)
        if client is not None:
            client.succeed()
            self._released += 1
        if self.settled == len(self.workload):
            self._all_done.succeed()

    def _capacity_freed(self) -> None:
        if self.scheduler.pending:
            self._callback(self.scheduler.on_capacity(self.env.now, self.view.fresh()))

    # ------------------------------------------------------------ the scheduler's deadlines
    def _arm_timer(self) -> None:
        """Make sure ``on_timer`` runs at the scheduler's next deadline: one pending
        timeout, replaced when an earlier deadline appears."""
        at = self.scheduler.next_deadline()
        if at is None or at >= self._timer_at:
            return
        self._timer_at = at
        timer = self._timer = self.env.timeout(max(at - self.env.now, 0.0))
        timer.callbacks.append(self._deadline)

    def _deadline(self, timer: simpy.Event) -> None:
        if timer is not self._timer:
            return  # replaced by an earlier one
        self._timer = None
        self._timer_at = math.inf
        now = self.env.now
        self._callback(self.scheduler.on_timer(now, self.view.fresh()))
        again = self.scheduler.next_deadline()
        if again is not None and again <= now:
            raise SimulationError(f"scheduler's next deadline ({again}) did not move past now ({now}) after on_timer")

    # ------------------------------------------------------------ faults
    def _fault(self, fault: FaultConfig) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(fault.at)
        lane = self.lanes[fault.lane]
        if fault.kind == "slow":
            lane.slow = fault.factor
        elif fault.kind == "link_slow":
            self.handoff.slow_link(lane.lane_id, fault.factor)
        elif fault.kind == "link_down":
            self.handoff.link_fault(lane.lane_id, +1)
            self._after_kv_change()
        else:
            self._lane_down(lane)
        if fault.duration is None:
            return
        yield env.timeout(fault.duration)
        if fault.kind == "slow":
            lane.slow = 1.0
        elif fault.kind == "link_slow":
            self.handoff.slow_link(lane.lane_id, 1.0)
        elif fault.kind == "link_down":
            self.handoff.link_fault(lane.lane_id, -1)
        else:
            lane.recover()
            self._capacity_freed()

    def _lane_down(self, lane: SimLane) -> None:
        was_up = lane.healthy
        lost = lane.fail()
        if not was_up:
            return
        # Requests whose KV was on its way to or from this lane lose it as well.
        lost += self.handoff.lane_failed(lane, lost)
        for req in lost:
            self._reset(req)
        self._callback(self.scheduler.on_lane_down(lane.lane_id, lost, self.env.now, self.view.fresh()))
        self._after_kv_change()

    def _after_kv_change(self) -> None:
        for other in self.lanes:
            self.handoff.pump(other)
            other.wake()

    @staticmethod
    def _reset(req: Request) -> None:
        req.state = State.QUEUED
        req.generated = 0
        req.prefill_start = req.prefill_end = req.first_token = req.transfer_start = req.decode_start = math.nan
        req.prefill_lane = req.decode_lane = -1

    # ------------------------------------------------------------ run
    def run(self) -> RunResult:
        # Stop when every request has settled. When nothing is left to happen first (a
        # stall), what the scheduler holds is failed, and so is anything stranded on a
        # lane; closed-loop clients then go on sending, so the loop runs again.
        self._all_done.callbacks.append(StopSimulation.callback)
        n = len(self.workload)
        while True:
            self.env.run()
            if self.settled == n:
                break
            before = self.settled
            self._callback(self.scheduler.drain(self.env.now))
            self._fail_stranded()
            if self.settled == n:
                break
            if self.settled == before:
                raise SimulationError(f"the run stalled with {n - self.settled} requests never sent")
        self.rec.flush()
        for lane in self.lanes:
            if lane.samples[-1][0] < self.env.now:
                lane.sample(self.env.now)
        usage = [LaneUsage(lane.lane_id, lane.role.value, lane.busy_time, lane.steps,
                           lane.batch_sum / lane.steps if lane.steps else 0.0,
                           lane.kv.peak / lane.kv.total, lane.drafted, lane.accepted, lane.samples)
                 for lane in self.lanes]
        reqs = [r for r in self.requests if r is not None]
        return RunResult(requests=reqs, duration=self.env.now, itl=self.rec.itl, lanes=usage,
                         k_trace=self.rec.k_trace, kv_recomputes=self.handoff.recomputed)

    def _fail_stranded(self) -> None:
        stranded = [r for r in self.requests if r is not None and not r.state.terminal]
        if not stranded:
            return
        for lane in self.lanes:  # take them off the lanes, so nothing can settle them again
            lane.evacuate()
        self.handoff.moves.clear()
        for req in stranded:
            self._settle(req, State.FAILED, f"stuck in {req.state.value} when the simulation ran out of events")
