"""StreamScheduler as pure code: a fake cluster view whose lanes change only when the
test says so, and checks that every request is accounted for."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import Profile
from streamserve.policies.base import Fail, Reject, Router, Submit
from streamserve.policies.registry import PolicyError, build_router, build_scheduler
from streamserve.policies.scheduler import FCFSScheduler, StreamScheduler
from streamserve.request import SLO, Phase, Request

PERF = Profile.load().lane("opt-13b", "A100-80GB", 1, "small-model")
PERFS = {i: PERF for i in range(4)}


class View:
    """Two stream pairs: prefill 0 -> decode 1, prefill 2 -> decode 3."""

    def __init__(self, disaggregated: bool = True) -> None:
        self.disaggregated = disaggregated
        role = LaneRole.PREFILL if disaggregated else LaneRole.COLOCATED
        self.stats = {0: LaneStats(0, role, kv_free_tokens=10**5), 2: LaneStats(2, role, kv_free_tokens=10**5)}
        if disaggregated:
            self.stats[1] = LaneStats(1, LaneRole.DECODE, kv_free_tokens=10**5)
            self.stats[3] = LaneStats(3, LaneRole.DECODE, kv_free_tokens=10**5)

    def lanes(self, phase: Phase):
        return [s for s in self.stats.values() if s.role.serves(phase)]

    def partner(self, lane_id: int):
        return {0: 1, 2: 3}.get(lane_id)

    def set(self, lane_id: int, **kw) -> None:
        self.stats[lane_id] = self.stats[lane_id]._replace(**kw)

    def fill(self, *lane_ids: int) -> None:
        """Healthy, but no room: requests for these lanes wait."""
        for lane_id in lane_ids:
            self.set(lane_id, num_waiting=self.stats[lane_id].max_waiting)

    def empty(self, *lane_ids: int) -> None:
        for lane_id in lane_ids:
            self.set(lane_id, num_waiting=0)


def req(i: int, prompt: int = 100, arrival: float = 0.0, slo: SLO | None = None) -> Request:
    return Request(id=i, arrival=arrival, prompt_len=prompt, output_len=10, slo=slo)


def sched(**kw) -> StreamScheduler:
    return StreamScheduler(build_router({"name": kw.pop("router", "flowguard")}, PERFS), PERFS, **kw)


def test_arrival_goes_to_a_lane_and_decode_follows_prefill() -> None:
    s, v = sched(), View()
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)
    assert isinstance(a, Submit) and a.phase is Phase.PREFILL and a.lane_id in (0, 2)
    r.prefill_lane, r.prefill_end, r.generated = a.lane_id, 0.2, 1
    (d,) = s.on_prefill_done(r, 0.2, v)
    assert isinstance(d, Submit) and d.phase is Phase.DECODE and d.lane_id in (1, 3)


def test_colocated_prefill_done_needs_no_decode_placement() -> None:
    s, v = sched(), View(disaggregated=False)
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)
    r.prefill_lane, r.prefill_end = a.lane_id, 0.1
    assert s.on_prefill_done(r, 0.1, v) == []


def test_pairs_mode_decodes_on_the_partner() -> None:
    s, v = sched(pairing="pairs"), View()
    for i in range(4):
        r = req(i)
        (a,) = s.on_arrival(r, 0.0, v)
        r.prefill_lane, r.prefill_end = a.lane_id, 0.1
        (d,) = s.on_prefill_done(r, 0.1, v)
        assert d.lane_id == v.partner(a.lane_id)


def test_holds_requests_beyond_the_lane_backlog_and_places_them_on_capacity() -> None:
    s, v = sched(lane_backlog_tokens=1000), View()
    v.set(0, tokens_queued=5000, num_waiting=3)
    v.set(2, tokens_queued=5000, num_waiting=3)
    assert s.on_arrival(req(1), 0.0, v) == []
    assert s.on_arrival(req(2), 0.1, v) == []
    assert s.pending == 2
    v.set(2, tokens_queued=0, num_waiting=0)
    placed = s.on_capacity(0.5, v)
    assert [a.request.id for a in placed] == [1, 2] and {a.lane_id for a in placed} == {2}
    assert s.pending == 0


def test_burst_in_one_callback_is_spread_over_lanes() -> None:
    s, v = sched(router="least_outstanding", lane_backlog_tokens=None), View()
    v.set(0, num_waiting=1024)
    v.set(2, num_waiting=1024)
    for i in range(6):
        s.on_arrival(req(i), 0.0, v)
    v.set(0, num_waiting=0)
    v.set(2, num_waiting=0)
    placed = s.on_capacity(1.0, v)
    assert sorted(a.lane_id for a in placed) == [0, 0, 0, 2, 2, 2]


@pytest.mark.parametrize("order,expected", [("fcfs", [1, 2, 3]), ("spf", [3, 1, 2]), ("edf", [2, 3, 1])])
def test_orderings(order: str, expected: list[int]) -> None:
    s, v = sched(order=order, lane_backlog_tokens=None), View()
    v.fill(0, 2)
    s.on_arrival(req(1, prompt=500, arrival=0.0, slo=SLO(ttft=5.0)), 0.0, v)
    s.on_arrival(req(2, prompt=800, arrival=0.1, slo=SLO(ttft=1.0)), 0.1, v)
    s.on_arrival(req(3, prompt=100, arrival=0.2, slo=SLO(ttft=2.0)), 0.2, v)
    v.empty(0)
    placed = s.on_capacity(0.3, v)
    assert [a.request.id for a in placed] == expected


def test_bounded_queue_rejects_with_a_reason() -> None:
    s, v = sched(max_pending=2), View()
    v.fill(0, 2)
    assert s.on_arrival(req(1), 0, v) == [] and s.on_arrival(req(2), 0, v) == []
    (a,) = s.on_arrival(req(3), 0, v)
    assert isinstance(a, Reject) and "queue full" in a.reason


def test_overload_reject_turns_away_requests_that_cannot_meet_their_slo() -> None:
    s, v = sched(overload="reject"), View()
    v.fill(0, 2)
    slo = SLO(ttft=0.5)
    assert s.on_arrival(req(1, slo=slo), 0.0, v) == []
    v.empty(0)
    (late,) = s.on_capacity(0.9, v)
    assert isinstance(late, Reject) and "TTFT SLO" in late.reason
    # a long backlog predicts a wait beyond the SLO: rejected at once
    v.set(0, tokens_queued=100_000)
    v.set(2, tokens_queued=100_000, num_waiting=0)
    (a,) = s.on_arrival(req(2, slo=slo), 1.0, v)
    assert isinstance(a, Reject) and "predicted" in a.reason
    # the queue policy serves it however late
    q = sched(overload="queue")
    assert q.on_arrival(req(3, slo=slo), 1.0, v) == [] and q.pending == 1
    assert not any(isinstance(a, Reject) for a in q.on_capacity(5.0, v))


def test_lane_failure_requeues_then_fails_after_max_attempts() -> None:
    s, v = sched(max_attempts=2), View()
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)
    r.attempts = 1
    v.set(a.lane_id, healthy=False)
    (again,) = s.on_lane_down(a.lane_id, [r], 1.0, v)
    assert isinstance(again, Submit) and again.lane_id != a.lane_id and again.phase is Phase.PREFILL
    r.attempts = 2
    (fail,) = s.on_lane_down(again.lane_id, [r], 2.0, v)
    assert isinstance(fail, Fail) and "no attempts left" in fail.reason


def test_lost_request_waiting_for_decode_is_prefilled_again() -> None:
    s, v = sched(), View()
    v.fill(1, 3)
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)
    r.prefill_lane, r.prefill_end, r.attempts = a.lane_id, 0.1, 1
    assert s.on_prefill_done(r, 0.1, v) == [] and s.pending == 1
    v.set(a.lane_id, healthy=False)
    (again,) = s.on_lane_down(a.lane_id, [r], 0.2, v)
    assert again.phase is Phase.PREFILL and again.lane_id != a.lane_id and s.pending == 0


def test_drain_fails_everything_held_with_reasons() -> None:
    s, v = sched(), View()
    v.fill(*v.stats)
    for i in range(3):
        s.on_arrival(req(i), 0.0, v)
    actions = s.drain(10.0)
    assert len(actions) == 3 and all(isinstance(a, Fail) and a.reason for a in actions)
    assert s.pending == 0


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["arrive", "block", "free", "capacity", "down", "up", "tick"]),
                              st.sampled_from([0, 2]), st.integers(1, 9000)), max_size=60),
       order=st.sampled_from(["fcfs", "spf", "edf"]), overload=st.sampled_from(["queue", "reject"]),
       router=st.sampled_from(["flowguard", "round_robin", "power_of_two"]))
def test_no_request_is_ever_lost(ops, order, overload, router) -> None:
    s = sched(order=order, overload=overload, router=router, max_pending=20, max_wait_s=10.0)
    v = View()
    arrived: list[Request] = []
    on_lane: dict[int, set[int]] = {0: set(), 2: set()}
    ended: dict[int, str] = {}

    def apply(actions, now):
        for a in actions:
            assert a.request.id not in ended, "a settled request came back"
            if isinstance(a, Submit):
                assert v.stats[a.lane_id].healthy and a.phase is Phase.PREFILL
                on_lane[a.lane_id].add(a.request.id)
                a.request.attempts += 1
            else:
                assert a.reason
                ended[a.request.id] = type(a).__name__
    now = 0.0
    for op, lane_id, x in ops:
        now += 0.1
        if op == "arrive":
            r = req(len(arrived), prompt=x, arrival=now, slo=SLO(ttft=0.3))
            arrived.append(r)
            apply(s.on_arrival(r, now, v), now)
        elif op == "block":
            v.set(lane_id, num_waiting=1024)
        elif op == "free":
            v.set(lane_id, num_waiting=0)
            apply(s.on_capacity(now, v), now)
        elif op == "capacity":
            apply(s.on_capacity(now, v), now)
        elif op == "down" and v.stats[lane_id].healthy:
            v.set(lane_id, healthy=False)
            lost = [r for r in arrived if r.id in on_lane[lane_id]]
            on_lane[lane_id].clear()
            apply(s.on_lane_down(lane_id, lost, now, v), now)
        elif op == "up":
            v.set(lane_id, healthy=True)
            apply(s.on_capacity(now, v), now)
        elif op == "tick":  # time passes with no event: the runtime fires what is due
            now += x / 500
            deadline = s.next_deadline()
            while deadline is not None and deadline <= now:
                apply(s.on_timer(deadline, v), deadline)
                assert s.next_deadline() is None or s.next_deadline() > deadline
                deadline = s.next_deadline()
        deadline = s.next_deadline()
        assert (deadline is None) == (s.pending == 0)
        assert deadline is None or deadline > now - 0.1 - 1e-9  # nothing held past its bound
        if not (v.stats[0].healthy or v.stats[2].healthy):
            assert s.pending == 0  # nothing waits for a lane that is not there
    apply(s.drain(now), now)
    placed = on_lane[0] | on_lane[2]
    assert s.pending == 0
    assert not placed & set(ended)
    assert placed | set(ended) == {r.id for r in arrived}


def test_registry_and_fcfs_baseline() -> None:
    router = build_router({"name": "round_robin"}, PERFS)
    s = build_scheduler({"name": "stream", "order": "spf", "pairing": "pairs"}, router, PERFS)
    assert isinstance(s, StreamScheduler) and s.order == "spf"
    f = build_scheduler({"name": "fcfs"}, router, PERFS)
    assert isinstance(f, FCFSScheduler) and f.lane_backlog_tokens is None and f.max_pending is None
    with pytest.raises(PolicyError, match="order"):
        build_scheduler({"name": "stream", "order": "lifo"}, router, PERFS)
    with pytest.raises(PolicyError, match="not a parameter"):
        build_scheduler({"name": "fcfs", "order": "spf"}, router, PERFS)
    assert math.isinf(StreamScheduler(router).default_deadline)


def test_pairs_mode_falls_back_to_any_decode_lane_when_the_partner_is_down() -> None:
    s, v = sched(pairing="pairs"), View()
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)
    v.set(v.partner(a.lane_id), healthy=False)
    r.prefill_lane, r.prefill_end = a.lane_id, 0.1
    (d,) = s.on_prefill_done(r, 0.1, v)
    assert d.phase is Phase.DECODE and d.lane_id != v.partner(a.lane_id) and v.stats[d.lane_id].healthy


def test_a_policy_of_ones_own_is_built_by_module_path() -> None:
    from streamserve.perfmodel import Profile
    from streamserve.policies.registry import build_spec_policy

    perf = {0: Profile.load().lane("opt-13b", "A100-80GB", 1)}
    spec = build_spec_policy({"name": "gpu_policies:BatchStep", "k_single": 3, "k_batched": 1}, perf, k_max=4)
    assert (spec.k_max, spec.k_single, spec.k_batched) == (4, 3, 1)
    with pytest.raises(PolicyError, match=r"spec_policy.name: cannot import 'nowhere:Nothing'"):
        build_spec_policy({"name": "nowhere:Nothing"}, perf, k_max=4)


def _local_sched(**kw) -> StreamScheduler:
    router = build_router({"name": "flowguard", "local_prefill": True, "local_max_prompt": 2048}, PERFS)
    return StreamScheduler(router, PERFS, lane_backlog_tokens=1024, **kw)


@pytest.mark.parametrize("order", ["fcfs", "edf"])
def test_backfill_prefills_short_prompts_behind_a_stuck_long_head_on_decode_lanes(order: str) -> None:
    s, v = _local_sched(order=order), View()
    v.set(0, tokens_queued=6000, num_waiting=3)
    v.set(2, tokens_queued=6000, num_waiting=3)
    slo = SLO(ttft=1.0)
    long_head = req(1, prompt=4000, arrival=0.0, slo=slo)  # over the local cap: only a prefill lane will do
    assert s.on_arrival(long_head, 0.0, v) == []
    assert s.on_arrival(req(2, prompt=50, arrival=0.1, slo=slo), 0.1, v) == []  # queued behind the head
    assert s.on_arrival(req(3, prompt=3000, arrival=0.2, slo=slo), 0.2, v) == []
    assert s.on_arrival(req(4, prompt=60, arrival=0.3, slo=slo), 0.3, v) == []
    placed = s.on_capacity(0.4, v)
    assert [a.request.id for a in placed] == [2, 4]
    assert all(a.phase is Phase.PREFILL and a.lane_id in (1, 3) for a in placed)
    assert s.pending == 2  # the head and the other long prompt keep their places, in order
    v.set(0, tokens_queued=0, num_waiting=0)
    assert [a.request.id for a in s.on_capacity(0.5, v)][:1] == [1]


def test_without_backfill_the_stuck_head_blocks_the_queue() -> None:
    s, v = _local_sched(backfill=0), View()
    v.set(0, tokens_queued=6000, num_waiting=3)
    v.set(2, tokens_queued=6000, num_waiting=3)
    s.on_arrival(req(1, prompt=4000), 0.0, v)
    s.on_arrival(req(2, prompt=50, arrival=0.1), 0.1, v)
    assert s.on_capacity(0.4, v) == [] and s.pending == 2


def test_backfill_looks_only_that_far_past_the_head() -> None:
    s, v = _local_sched(backfill=2), View()
    v.set(0, tokens_queued=6000, num_waiting=3)
    v.set(2, tokens_queued=6000, num_waiting=3)
    s.on_arrival(req(1, prompt=4000), 0.0, v)
    for i in range(2, 6):
        s.on_arrival(req(i, prompt=50, arrival=0.1 * i), 0.1 * i, v)
    assert [a.request.id for a in s.on_capacity(1.0, v)] == [2, 3]


def test_backfill_is_validated() -> None:
    router = build_router({"name": "flowguard"}, PERFS)
    with pytest.raises(PolicyError, match="backfill: must be >= 0, got -1"):
        build_scheduler({"name": "stream", "backfill": -1}, router, PERFS)


# ---------------------------------------------------------------- no healthy lane, bounded waits
def _prefilled(s: StreamScheduler, v: View, r: Request, now: float) -> list:
    (a,) = s.on_arrival(r, now, v)
    r.prefill_lane, r.prefill_end, r.attempts, r.generated = a.lane_id, now + 0.1, 1, 1
    return s.on_prefill_done(r, now + 0.1, v)


def test_no_healthy_decode_lane_ends_held_and_lost_requests_at_once() -> None:
    s, v = sched(), View()
    on_decode = req(1)
    assert _prefilled(s, v, on_decode, 0.0)  # placed on a decode lane
    v.fill(1, 3)
    held_for_decode = req(2)
    assert _prefilled(s, v, held_for_decode, 0.2) == [] and s.pending == 1
    v.fill(0, 2)
    queued = [req(3), req(4)]
    assert all(s.on_arrival(r, 0.3, v) == [] for r in queued) and s.pending == 3
    v.set(3, healthy=False)
    assert s.on_lane_down(3, [], 0.4, v) == []  # lane 1 is still healthy: everything waits for room
    v.set(1, healthy=False)
    on_decode.attempts = 1
    ended = s.on_lane_down(1, [on_decode], 0.5, v)
    assert {a.request.id for a in ended} == {1, 2, 3, 4} and s.pending == 0
    assert all(isinstance(a, Fail) and "no healthy decode lane (lanes 1, 3 down)" in a.reason for a in ended)
    assert s.next_deadline() is None
    (late,) = s.on_arrival(req(5), 0.6, v)
    assert isinstance(late, Reject) and "no healthy decode lane" in late.reason
    # A prefill that was running when the last decode lane went fails when it ends.
    r = req(6)
    r.prefill_lane, r.prefill_end, r.attempts, r.generated = 0, 0.7, 1, 1
    (f,) = s.on_prefill_done(r, 0.7, v)
    assert isinstance(f, Fail) and "decode" in f.reason and s.pending == 0


def test_no_healthy_prefill_lane_fails_the_prefill_queue_but_decodes_what_is_prefilled() -> None:
    s, v = sched(), View()
    v.fill(1, 3)
    held = req(1)
    assert _prefilled(s, v, held, 0.0) == []
    v.fill(0, 2)
    assert s.on_arrival(req(2), 0.2, v) == []
    v.set(0, healthy=False)
    v.set(2, healthy=False)
    v.empty(1)
    actions = s.on_lane_down(2, [], 0.3, v)  # lane 0 went quietly: the view says so
    fail, place = sorted(actions, key=lambda a: isinstance(a, Submit))
    assert isinstance(fail, Fail) and fail.request.id == 2 and "no healthy prefill lane" in fail.reason
    assert isinstance(place, Submit) and place.request is held and place.lane_id == 1
    (a,) = s.on_arrival(req(3), 0.4, v)
    assert isinstance(a, Reject) and "no healthy prefill lane (lanes 0, 2 down)" in a.reason


def test_colocated_cluster_needs_only_one_healthy_lane() -> None:
    s, v = sched(), View(disaggregated=False)
    v.set(0, healthy=False)
    (a,) = s.on_arrival(req(1), 0.0, v)
    assert isinstance(a, Submit) and a.lane_id == 2


def test_a_request_waits_for_a_full_lane_at_most_max_wait_s() -> None:
    s, v = sched(max_wait_s=5.0), View()
    v.fill(0, 2)
    assert s.next_deadline() is None
    assert s.on_arrival(req(1), 1.0, v) == [] and s.on_arrival(req(2), 2.0, v) == []
    assert s.next_deadline() == 6.0
    assert s.on_timer(5.9, v) == []
    (f,) = s.on_timer(6.0, v)
    assert isinstance(f, Fail) and f.request.id == 1 and "waited 5 s for a prefill lane" in f.reason
    assert s.next_deadline() == 7.0 and s.pending == 1
    v.empty(2)  # room again: the timer places rather than fails
    (p,) = s.on_timer(7.0, v)
    assert isinstance(p, Submit) and p.request.id == 2 and s.next_deadline() is None


def test_a_prefilled_request_holds_its_kv_at_most_max_hold_s() -> None:
    s, v = sched(max_hold_s=3.0), View()
    v.fill(1, 3)
    r = req(1)
    assert _prefilled(s, v, r, 0.0) == []
    assert s.next_deadline() == pytest.approx(3.1)
    deadline = s.next_deadline()
    assert s.on_timer(deadline - 0.01, v) == []
    (f,) = s.on_timer(deadline, v)
    assert isinstance(f, Fail) and f.request is r and "waited 3 s for a decode lane" in f.reason
    assert f"lane {r.prefill_lane}" in f.reason and "lease" in f.reason
    assert s.pending == 0 and s.next_deadline() is None


def test_wait_bounds_are_validated_and_reach_the_fcfs_baseline() -> None:
    router = build_router({"name": "round_robin"}, PERFS)
    for key in ("max_wait_s", "max_hold_s"):
        with pytest.raises(PolicyError, match=f"{key}: must be > 0 seconds, got 0"):
            build_scheduler({"name": "stream", key: 0}, router, PERFS)
    f = build_scheduler({"name": "fcfs", "max_wait_s": 2.5, "max_hold_s": 1.5}, router, PERFS)
    assert isinstance(f, FCFSScheduler) and (f.max_wait_s, f.max_hold_s) == (2.5, 1.5)
    s = StreamScheduler(router)
    assert (s.max_wait_s, s.max_hold_s) == (30.0, 20.0)


class OnlyRoute(Router):
    """A router of one's own that implements nothing optional."""

    name = "only_route"

    def route(self, request, lanes, phase, now):
        ok = [lane for lane in lanes if lane.has_room]
        return ok[-1].lane_id if ok else None


def test_a_router_without_optional_capabilities_gets_the_defaults() -> None:
    router = OnlyRoute()
    assert router.local_prefill_limit([LaneStats(1, LaneRole.DECODE)], True) == 0
    s, v = StreamScheduler(router, PERFS, pairing="pairs", lane_backlog_tokens=1000), View()
    r = req(1)
    (a,) = s.on_arrival(r, 0.0, v)  # pairs mode routes the prefill lanes alone
    assert a.lane_id == 2
    v.set(0, tokens_queued=5000)
    v.set(2, tokens_queued=5000)
    assert s.on_arrival(req(2, prompt=10), 0.1, v) == []  # backed up: no decode lane offered for a prefill
    r.prefill_lane, r.prefill_end = 2, 0.1
    (d,) = s.on_prefill_done(r, 0.2, v)
    assert d.lane_id == 3  # the partner
