"""FlowGuard and the baseline routers, as pure code on hand-made lane snapshots."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import Profile
from streamserve.policies.flowguard import FlowGuard
from streamserve.policies.registry import ROUTERS, PolicyError, build_router
from streamserve.request import Phase, Request

PERF = Profile.load().lane("opt-13b", "A100-80GB", 1, "small-model")
PERFS = {i: PERF for i in range(8)}


def req(i: int = 0, prompt: int = 1000) -> Request:
    return Request(id=i, arrival=0.0, prompt_len=prompt, output_len=100)


def lane(i: int, role: LaneRole = LaneRole.PREFILL, **kw) -> LaneStats:
    kw.setdefault("kv_free_tokens", 50_000)
    return LaneStats(lane_id=i, role=role, **kw)


lanes_strategy = st.lists(
    st.builds(
        lambda i, healthy, waiting, running, tokens, kv, free, util, acc, k: LaneStats(
            lane_id=i, role=LaneRole.DECODE, healthy=healthy, num_waiting=waiting, num_running=running,
            tokens_queued=tokens, kv_usage=kv, kv_free_tokens=free, max_waiting=8, utilisation=util,
            acceptance_rate=acc, spec_k=k, context_tokens=running * 500),
        st.integers(0, 7), st.booleans(), st.integers(0, 10), st.integers(0, 300), st.integers(0, 100_000),
        st.sampled_from([0.0, 0.3, 0.99, 1.0]), st.one_of(st.none(), st.integers(0, 60_000)), st.floats(0, 1),
        st.one_of(st.none(), st.floats(0, 1)), st.integers(0, 8)),
    min_size=0, max_size=6, unique_by=lambda s: s.lane_id)


@settings(max_examples=150, deadline=None)
@given(lanes=lanes_strategy, name=st.sampled_from(sorted(ROUTERS)), phase=st.sampled_from(list(Phase)),
       prompt=st.integers(1, 8000))
@pytest.mark.parametrize("local", [False, True])
def test_routes_only_to_healthy_lanes_with_room(local, lanes, name, phase, prompt) -> None:
    params = {"name": name, "local_prefill": local} if name == "flowguard" else {"name": name}
    router = build_router(params, PERFS, seed=1)
    r = req(prompt=prompt)
    choice = router.route(r, lanes, phase, 0.0)
    ok = [s for s in lanes if s.has_room]
    if choice is None:
        if name != "flowguard":
            assert not ok
        else:  # FlowGuard also refuses a decode lane without KV room for the prompt, and
            # prefills on a decode lane only with local_prefill on, for prompts up to local_max_prompt
            local_ok = router.local_prefill and prompt <= router.local_max_prompt
            assert all((s.kv_free_tokens is not None and s.kv_free_tokens < prompt)
                       or (phase is Phase.PREFILL and not local_ok) for s in ok)
    else:
        chosen = next(s for s in lanes if s.lane_id == choice)
        assert chosen.has_room and chosen.healthy
        if name == "flowguard":  # every lane in this test is a decode lane
            # (None: the lane does not say how much KV is free, as an engine not yet scraped)
            assert chosen.kv_free_tokens is None or chosen.kv_free_tokens >= prompt


def test_says_none_when_nothing_can_take_the_request() -> None:
    fg = FlowGuard(PERFS)
    lanes = [lane(0, healthy=False), lane(1, num_waiting=1024), lane(2, kv_usage=1.0)]
    assert fg.route(req(), lanes, Phase.PREFILL, 0.0) is None
    assert fg.route(req(), [], Phase.DECODE, 0.0) is None


@pytest.mark.parametrize("phase", list(Phase))
def test_skewed_load_moves_new_work_to_the_lighter_lane(phase: Phase) -> None:
    role = LaneRole.DECODE if phase is Phase.DECODE else LaneRole.PREFILL
    loaded = dict(num_waiting=6, num_running=40, tokens_queued=12_000, context_tokens=60_000,
                  kv_usage=0.7, utilisation=0.95, spec_k=4, acceptance_rate=0.5)
    stats = {0: lane(0, role, **loaded), 1: lane(1, role, spec_k=4, acceptance_rate=0.5)}
    fg = FlowGuard(PERFS)
    picks = []
    for i in range(30):
        choice = fg.route(req(i, 800), list(stats.values()), phase, float(i))
        picks.append(choice)
        s = stats[choice]  # the chosen lane gets the request, as a runtime would show next time
        stats[choice] = s._replace(num_waiting=s.num_waiting + 1, tokens_queued=s.tokens_queued + 800,
                                   kv_usage=min(1.0, s.kv_usage + 0.01))
    assert picks[:5] == [1] * 5
    assert picks.count(1) > 2 * picks.count(0)


def test_observed_slowness_steers_work_away() -> None:
    fg = FlowGuard(PERFS)
    lanes = [lane(0), lane(1)]
    for i in range(40):  # lane 0 keeps taking three times as long as predicted
        r = req(i)
        chosen = fg.route(r, [lanes[0]], Phase.PREFILL, float(i))
        predicted = fg.predict_prefill(r, lanes[0])
        r.generated = 1
        fg.observe(chosen, Phase.PREFILL, r, 3 * predicted, float(i))
    assert fg.correction(0, Phase.PREFILL) > 2.5
    assert fg.route(req(99), lanes, Phase.PREFILL, 50.0) == 1
    # ... and a modest queue on the healthy lane still beats the slow one
    lanes[1] = lane(1, num_waiting=1, tokens_queued=1000)
    assert fg.route(req(100), lanes, Phase.PREFILL, 51.0) == 1


def test_decode_prefers_faster_speculation() -> None:
    fg = FlowGuard(PERFS)
    base = dict(num_running=8, context_tokens=8000, spec_k=4)
    slow = lane(0, LaneRole.DECODE, acceptance_rate=0.1, **base)
    fast = lane(1, LaneRole.DECODE, acceptance_rate=0.8, **base)
    assert fg.predict_tpot(req(), fast) < fg.predict_tpot(req(), slow)
    assert fg.route(req(), [slow, fast], Phase.DECODE, 0.0) == 1


def test_an_idle_decode_lane_is_predicted_at_the_depth_busy_lanes_run() -> None:
    """An idle lane reports k = 0 (it has taken no step); scored at that depth it looked
    slower than a lightly loaded speculating lane, so under a speculative step model every
    decode went to one lane and the other stayed empty."""
    fg = FlowGuard(PERFS)
    busy = lane(0, LaneRole.DECODE, num_running=2, context_tokens=2000, spec_k=4, acceptance_rate=0.8)
    idle = lane(1, LaneRole.DECODE, spec_k=0, acceptance_rate=None)
    assert fg.predict_tpot(req(), idle, 0.8) > fg.predict_tpot(req(), busy, 0.8)  # what misled it
    assert fg.predict_tpot(req(), idle, 0.8, idle_k=4) < fg.predict_tpot(req(), busy, 0.8)
    assert fg.route(req(), [busy, idle], Phase.DECODE, 0.0) == 1


def test_both_decode_lanes_of_the_default_cluster_get_decodes_at_light_load() -> None:
    from streamserve.config import builtin_cluster
    from streamserve.sim import run
    from streamserve.workload.synthetic import synthetic

    result = run(builtin_cluster("streamserve"), synthetic(400, 4.0, 3), seed=3)  # light load: few decodes at once
    counts: dict[int, int] = {}
    for r in result.requests:
        if r.decode_lane >= 0:
            counts[r.decode_lane] = counts.get(r.decode_lane, 0) + 1
    assert len(counts) == 2 and min(counts.values()) > 0.3 * sum(counts.values()), counts


def test_pair_mode_scores_prefill_and_partner_together() -> None:
    fg = FlowGuard(PERFS)
    p0, d0 = lane(0), lane(1, LaneRole.DECODE, num_running=150, context_tokens=200_000, kv_usage=0.8)
    p2, d3 = lane(2, num_waiting=1, tokens_queued=500), lane(3, LaneRole.DECODE)
    assert fg.route_pair(req(), [(p0, d0), (p2, d3)], 0.0) == 2
    assert fg.route_pair(req(), [(p0, d0._replace(healthy=False))], 0.0) is None


def test_weights_are_validated() -> None:
    with pytest.raises(PolicyError, match="w_queue"):
        build_router({"name": "flowguard", "w_queue": -1}, PERFS)
    with pytest.raises(PolicyError, match="not a parameter"):
        build_router({"name": "flowguard", "w_speed": 1}, PERFS)


def test_baselines_behave_as_named() -> None:
    lanes = [lane(0, num_waiting=3), lane(1, num_waiting=1, num_running=1), lane(2, num_waiting=5)]
    assert build_router({"name": "least_outstanding"}, PERFS).route(req(), lanes, Phase.PREFILL, 0) == 1
    rr = build_router({"name": "round_robin"}, PERFS)
    assert [rr.route(req(), lanes, Phase.PREFILL, 0) for _ in range(4)] == [0, 1, 2, 0]
    p2 = build_router({"name": "power_of_two"}, PERFS, seed=3)
    picks = {p2.route(req(), lanes, Phase.PREFILL, 0) for _ in range(50)}
    assert 2 not in picks or picks == {2}  # it never keeps the worse of its two samples
    assert picks <= {0, 1}
    kv = [lane(0, kv_usage=0.9), lane(1, kv_usage=0.1)]
    assert build_router({"name": "queue_kv"}, PERFS).route(req(), kv, Phase.DECODE, 0) == 1
    rnd = build_router({"name": "random"}, PERFS, seed=5)
    assert {rnd.route(req(), lanes, Phase.PREFILL, 0) for _ in range(60)} == {0, 1, 2}


def test_local_prefill_prediction_counts_the_draft_passes_of_the_batch_it_rides_with() -> None:
    fg = FlowGuard(PERFS, local_prefill=True)
    r = req(prompt=200)
    busy = dict(num_running=8, context_tokens=8000)
    deep = fg.predict_prefill(r, lane(1, LaneRole.DECODE, spec_k=8, **busy))
    plain = fg.predict_prefill(r, lane(1, LaneRole.DECODE, spec_k=0, **busy))
    # one iteration: the step with k = 8 is longer by its verify tokens and its 8 draft passes
    assert deep - plain == pytest.approx(PERF.spec_step_time(8, 8000, 8) - PERF.spec_step_time(8, 8000, 0))
    assert deep - plain > PERF.draft_time(8, 8000, 8)


def test_a_prompt_within_one_kv_block_is_prefilled_on_a_decode_lane() -> None:
    """Only whole KV blocks move between engines: a prompt that fits in one block gains
    nothing from a prefill lane, so FlowGuard (with local prefill) prefills it where it
    will decode, whatever the prefill lanes' state; one block more goes the usual way."""
    fg = FlowGuard(PERFS, local_prefill=True, local_max_prompt=64)
    idle_prefill = lane(0)
    decode = [lane(1, LaneRole.DECODE, num_running=20, context_tokens=20 * 800, block_size=32),
              lane(3, LaneRole.DECODE, num_running=2, context_tokens=2 * 800, block_size=32)]
    assert fg.local_prefill_limit(decode, backed_up=False) == 32
    assert fg.local_prefill_limit(decode, backed_up=True) == 64
    assert fg.route(req(prompt=32), [idle_prefill, *decode], Phase.PREFILL, 0.0) == 3  # the lighter decode lane
    assert fg.route(req(prompt=33), [idle_prefill, *decode], Phase.PREFILL, 0.0) == 0
    # A decode lane without room is no candidate: the prefill lane takes it after all.
    full = [d._replace(num_waiting=d.max_waiting) for d in decode]
    assert fg.route(req(prompt=8), [idle_prefill, *full], Phase.PREFILL, 0.0) == 0
    # The block size is the lane's: at 16 tokens per block a 32-token prompt moves a block.
    small = [d._replace(block_size=16) for d in decode]
    assert fg.route(req(prompt=32), [idle_prefill, *small], Phase.PREFILL, 0.0) == 0
    # Without local prefill FlowGuard disaggregates everything.
    plain = FlowGuard(PERFS)
    assert plain.local_prefill_limit(decode, backed_up=True) == 0
    assert plain.route(req(prompt=8), [idle_prefill, *decode], Phase.PREFILL, 0.0) == 0


def test_scheduler_offers_decode_lanes_to_a_prompt_within_one_block_without_a_burst() -> None:
    from streamserve.policies.scheduler import StreamScheduler

    class View:
        disaggregated = True

        def __init__(self) -> None:
            self.stats = [lane(0), lane(1, LaneRole.DECODE, block_size=32), lane(2), lane(3, LaneRole.DECODE, block_size=32)]

        def lanes(self, phase):
            return [s for s in self.stats if s.role.serves(phase)]

        def partner(self, lane_id):
            return None

    s, v = StreamScheduler(FlowGuard(PERFS, local_prefill=True), PERFS), View()
    (tiny,) = s.on_arrival(req(1, prompt=20), 0.0, v)
    (usual,) = s.on_arrival(req(2, prompt=200), 0.0, v)
    assert tiny.phase is Phase.PREFILL and tiny.lane_id in (1, 3)
    assert usual.lane_id in (0, 2)
