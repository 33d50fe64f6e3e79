"""SpecuStream and the baseline speculation policies, as pure code against a synthetic
step generator: truncated-geometric acceptance (as in the simulator) and step times from
the same performance model the policy plans with."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import Profile
from streamserve.policies.base import StepObservation
from streamserve.policies.registry import PolicyError, build_spec_policy
from streamserve.policies.speculation import BatchSizeTable, FixedDepth, NoSpeculation
from streamserve.policies.specustream import SpecuStream, best_depth, expected_tokens

PERF = Profile.load().lane("opt-13b", "A100-80GB", 1, "small-model")
K_MAX = 8
LANE = LaneStats(lane_id=1, role=LaneRole.DECODE)


def drive(policy: SpecuStream, alphas: list[float], batch: int, steps_each: int, seed: int = 0,
          cls: str = "default") -> list[int]:
    """Run ``steps_each`` steps at each acceptance rate in turn; the k chosen each step."""
    rng = np.random.default_rng(seed)
    context = batch * 1000
    ks = []
    for alpha in alphas:
        for i in range(steps_each):
            k = policy.depth(LANE.lane_id, batch, context, float(i), {cls: batch})
            ks.append(k)
            accepted = 0
            if k:
                accepted = int(np.minimum(rng.geometric(1.0 - alpha, size=batch) - 1, k).sum())
            policy.observe(StepObservation(LANE.lane_id, k, batch, context, k * batch, accepted,
                                           PERF.spec_step_time(batch, context, k), float(i)))
    return ks


def optimum(alpha: float, batch: int) -> int:
    return best_depth(PERF, batch, batch * 1000, {"c": alpha}, {"c": batch}, K_MAX)[0]


@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.8, 0.9])
def test_settles_within_one_of_the_analytic_optimum_in_200_steps(alpha: float, batch: int) -> None:
    best, rates = best_depth(PERF, batch, batch * 1000, {"c": alpha}, {"c": batch}, K_MAX)
    ks = drive(SpecuStream({1: PERF}, K_MAX), [alpha], batch, 400, seed=int(alpha * 100) + batch)
    late = ks[200:]
    # within one of the optimum, or (on a flat optimum) within 2% of its goodput
    assert all(abs(k - best) <= 1 or rates[k] >= 0.98 * rates[best] for k in late), (best, sorted(set(late)))


@pytest.mark.parametrize("before,after", [(0.9, 0.3), (0.3, 0.9), (0.8, 0.6)])
@pytest.mark.parametrize("batch", [1, 16])
def test_resettles_within_200_steps_after_a_step_change(before: float, after: float, batch: int) -> None:
    policy = SpecuStream({1: PERF}, K_MAX)
    ks = drive(policy, [before, after], batch, 400, seed=7)
    new_best = optimum(after, batch)
    assert abs(ks[399] - optimum(before, batch)) <= 1
    assert all(abs(k - new_best) <= 1 for k in ks[600:]), (new_best, sorted(set(ks[600:])))


def test_no_speculation_at_large_batch_and_low_acceptance_but_probes() -> None:
    assert optimum(0.1, 200) == 0  # the premise: verification does not pay here
    policy = SpecuStream({1: PERF}, K_MAX, probe_every=32)
    ks = drive(policy, [0.1], 200, 320)
    tail = ks[100:]
    assert tail.count(0) >= 0.9 * len(tail)
    assert set(tail) <= {0, 1}  # only the periodic k = 1 probes interrupt it


def test_probes_let_it_leave_k0_when_acceptance_rises() -> None:
    policy = SpecuStream({1: PERF}, K_MAX)
    ks = drive(policy, [0.05, 0.95], 64, 400)
    assert ks[399] == 0
    assert ks[-1] >= optimum(0.95, 64) - 1


def test_acceptance_estimate_corrects_for_truncation() -> None:
    """accepted/drafted at k = 8 and alpha = 0.8 is ~0.52; the estimator must say ~0.8."""
    policy = SpecuStream({1: PERF}, K_MAX, prior_alpha=0.5)
    rng = np.random.default_rng(3)
    drafted = accepted = 0
    for i in range(300):
        a = int(np.minimum(rng.geometric(0.2, size=32) - 1, 8).sum())
        drafted, accepted = drafted + 256, accepted + a
        policy.observe(StepObservation(1, 8, 32, 32000, 256, a, 0.05, float(i), {"code": (256, a)}))
    assert accepted / drafted < 0.6
    assert abs(policy.alpha(1, "code") - 0.8) < 0.03
    assert abs(policy.alpha(2, "code") - 0.8) < 0.05  # another lane starts from the pooled estimate


def test_class_mix_in_the_batch_moves_k() -> None:
    policy = SpecuStream({1: PERF}, K_MAX, prior_alpha=0.5)
    for i in range(200):
        policy.observe(StepObservation(1, 4, 32, 32000, 128 * 2, 0, 0.05, float(i),
                                       {"chat": (128, 16), "code": (128, 110)}))
    low = policy.depth(LANE.lane_id, 32, 32000, 0.0, {"chat": 30, "code": 2})
    high = policy.depth(LANE.lane_id, 32, 32000, 1.0, {"chat": 2, "code": 30})
    assert low < high


@settings(max_examples=200, deadline=None)
@given(batch=st.integers(0, 512), context=st.integers(0, 2_000_000), k_max=st.integers(0, 16),
       obs=st.lists(st.tuples(st.integers(0, 16), st.integers(1, 256), st.floats(0, 1)), max_size=20),
       classes=st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 64))))
def test_k_always_within_bounds(batch: int, context: int, k_max: int, obs, classes) -> None:
    policy = SpecuStream({1: PERF}, k_max)
    for k, n, frac in obs:
        k = min(k, k_max)
        policy.observe(StepObservation(1, k, n, context, k * n, int(frac * k * n), 0.03, 0.0))
        d = policy.depth(LANE.lane_id, batch, context, 0.0, classes)
        assert 0 <= d <= k_max
    assert 0 <= policy.depth(LANE.lane_id, batch, context, 0.0, classes) <= k_max


def test_expected_tokens_formula() -> None:
    assert expected_tokens(0.0, 5) == pytest.approx(1.0)
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(1.0, 3) <= 4.0


def test_baselines() -> None:
    assert NoSpeculation().depth(LANE.lane_id, 8, 100, 0.0) == 0
    assert FixedDepth(k_max=8, k=4).depth(LANE.lane_id, 8, 100, 0.0) == 4
    assert FixedDepth(k_max=3, k=4).depth(LANE.lane_id, 8, 100, 0.0) == 3
    table = BatchSizeTable(k_max=6, table=[[1, 1, 5], [2, 6, 3], [7, 20, 9]])
    assert [table.depth(LANE.lane_id, b, 0, 0.0) for b in (1, 2, 6, 7, 21)] == [5, 3, 3, 6, 6]
    default = BatchSizeTable(k_max=8)
    assert default.depth(LANE.lane_id, 1, 0, 0.0) == 5 and default.depth(LANE.lane_id, 200, 0, 0.0) == 0
    with pytest.raises(ValueError, match=r"table\[0\]"):
        BatchSizeTable(k_max=4, table=[[3, 1, 2]])


def test_registry_builds_spec_policies_by_name() -> None:
    perf = {1: PERF}
    assert isinstance(build_spec_policy({"name": "specustream", "decay": 0.9}, perf, 8), SpecuStream)
    assert build_spec_policy({"name": "none"}, perf, 8).depth(LANE.lane_id, 1, 10, 0.0) == 0
    assert isinstance(build_spec_policy({"name": "batch_table"}, perf, 8), BatchSizeTable)
    with pytest.raises(PolicyError, match="decay"):
        build_spec_policy({"name": "specustream", "decay": 1.5}, perf, 8)


@settings(max_examples=80, deadline=None)
@given(rates=st.lists(st.floats(0.05, 0.97), min_size=1, max_size=4),
       counts=st.lists(st.integers(1, 40), min_size=4, max_size=4),
       context=st.integers(100, 300_000), objective=st.sampled_from(["latency", "throughput"]))
def test_climb_finds_the_brute_force_optimum_for_class_mixes(rates, counts, context, objective) -> None:
    policy = SpecuStream({1: PERF}, K_MAX, switch_margin=0.0, objective=objective)
    names = [f"c{i}" for i in range(len(rates))]
    for i in range(60):  # teach it each class's acceptance
        by_class = {}
        for name, a in zip(names, rates):
            accepted = round(4 * a * (1 - a ** 4) / (1 - a))  # 4 sequences at k = 4, in expectation
            by_class[name] = (16, accepted)
        policy.observe(StepObservation(1, 4, 4 * len(names), 4000, 16 * len(names),
                                       sum(a for _, a in by_class.values()), 0.03, float(i), by_class))
    mix = {name: n for name, n in zip(names, counts)}
    batch = sum(mix.values())
    alphas = {c: policy.alpha(1, c) for c in names}
    best, values = best_depth(PERF, batch, context, alphas, mix, K_MAX, objective=objective)
    k = policy.depth(LANE.lane_id, batch, context, 0.0, mix)
    assert values[k] >= values[best] * (1 - 1e-9)


def _steps(policy: SpecuStream, lane: int, alpha: float, n: int, classes: dict[str, int] | None,
           split: bool, seed: int = 0) -> None:
    """``n`` steps on ``lane`` at acceptance ``alpha`` for every class; ``classes`` goes to
    depth() (None: the runtime does not count classes), ``split``: observe() gets by_class."""
    rng = np.random.default_rng(seed)
    batch = sum(classes.values()) if classes else 16
    mix = classes or {"x": batch}
    for i in range(n):
        k = max(1, policy.depth(lane, batch, batch * 1000, float(i), classes))
        by_class = {c: (k * m, int(np.minimum(rng.geometric(1 - alpha, size=m) - 1, k).sum())) for c, m in mix.items()}
        policy.observe(StepObservation(lane, k, batch, batch * 1000, sum(d for d, _ in by_class.values()),
                                       sum(a for _, a in by_class.values()), 0.05, float(i),
                                       by_class if split else None))


@pytest.mark.parametrize("classes,split", [({"chat": 8, "code": 8}, False), (None, True), (None, False)])
def test_learns_whatever_class_inputs_the_runtime_passes(classes, split) -> None:
    """Classes to depth() only, outcomes per class to observe() only, or neither: the
    estimate depth() reads is one that the observations update."""
    fresh = SpecuStream({1: PERF}, K_MAX, prior_alpha=0.3)
    k_prior = fresh.depth(1, 16, 16000, 0.0, classes)
    policy = SpecuStream({1: PERF}, K_MAX, prior_alpha=0.3)
    _steps(policy, 1, 0.9, 300, classes, split)
    for cls in (classes or {"*": 0}):
        assert abs(policy.alpha(1, cls) - 0.9) < 0.05, cls
    assert policy.depth(1, 16, 16000, 1e3, classes) > k_prior + 1


def test_pooled_estimate_forms_from_several_lanes_reporting_to_one_object() -> None:
    """One policy object for the cluster (as the simulator shares one): each lane's steps
    feed the class's pooled estimate, which a lane that has seen none of that class starts
    from, while each lane's own estimate stays its own."""
    policy = SpecuStream({i: PERF for i in range(3)}, K_MAX, prior_alpha=0.3)
    _steps(policy, 0, 0.9, 300, {"code": 16}, split=True, seed=1)
    _steps(policy, 1, 0.6, 300, {"code": 16}, split=True, seed=2)
    assert abs(policy.alpha(0, "code") - 0.9) < 0.05 and abs(policy.alpha(1, "code") - 0.6) < 0.05
    pooled = policy.pooled_alpha("code")
    assert 0.6 < pooled < 0.9 and policy.alpha(2, "code") == pooled
    assert policy.depth(2, 16, 16000, 0.0, {"code": 16}) > SpecuStream({2: PERF}, K_MAX, prior_alpha=0.3).depth(
        2, 16, 16000, 0.0, {"code": 16})
