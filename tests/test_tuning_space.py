"""The search space tune reads from the policies: parsed, selected, applied; bad names refused."""
from __future__ import annotations

import pytest

from streamserve.config import builtin_cluster, parse_cluster
from streamserve.policies.registry import build_router, build_scheduler, build_spec_policy
from streamserve.sim.cluster import lane_perfs
from streamserve.tuning.errors import TuningError
from streamserve.tuning.space import apply, apply_mapping, declared, parse_spec, select
from streamserve.tuning.study import current_values


def test_spec_strings_parse():
    p = parse_spec("router.w_kv", "float 0 2")
    assert (p.kind, p.low, p.high, p.log) == ("float", 0.0, 2.0, False)
    p = parse_spec("router.local_max_prompt", "int 8 4096 log")
    assert (p.kind, p.low, p.high, p.log) == ("int", 8, 4096, True)
    assert parse_spec("x.y", "choice true false 64 fcfs").choices == (True, False, 64, "fcfs")


@pytest.mark.parametrize("spec, why", [("uniform 0 1", "start with one of"), ("float 1", "expected"),
                                       ("int 0.5 3", "integers"), ("float 2 1", "LOW must be <= HIGH"),
                                       ("float 0 1 log", "LOW > 0"), ("choice", "at least one")])
def test_bad_specs_are_one_line_errors(spec, why):
    with pytest.raises(TuningError, match=why):
        parse_spec("router.w_kv", spec)


def test_the_shipped_cluster_declares_all_three_policies():
    names = set(declared(builtin_cluster("streamserve")))
    assert {"router.w_latency", "router.local_max_prompt", "spec_policy.prior_alpha", "scheduler.order",
            "scheduler.backfill"} <= names


def test_every_end_of_every_declared_range_builds_the_policy():
    """A declared range the policy itself refuses would fail trials at random."""
    cluster = builtin_cluster("streamserve")
    perf = lane_perfs(cluster)
    space = declared(cluster)
    for p in space.values():
        ends = p.choices if p.kind == "choice" else (p.low, p.high)
        for v in ends:
            c = apply(cluster, {p.name: int(v) if p.kind == "int" else v})
            router = build_router(c.router.model_dump(), perf)
            build_spec_policy(c.spec_policy.model_dump(), perf, c.speculation.k_max)
            build_scheduler(c.scheduler.model_dump(), router, perf)


def test_subclass_that_takes_fewer_parameters_declares_only_those():
    fcfs = builtin_cluster("vllm-dp")  # scheduler fcfs subclasses stream but takes no order
    assert not [n for n in declared(fcfs) if n.startswith("scheduler.")]


def test_select_subset_and_own_range():
    cluster = builtin_cluster("streamserve")
    params = select(cluster, ["router.w_latency", "router.prefill_budget=int 1024 16384 log"])
    assert [p.name for p in params] == ["router.w_latency", "router.prefill_budget"]
    assert params[1].log and params[1].high == 16384


@pytest.mark.parametrize("param, why", [
    ("router.w_foo", "not a parameter of router 'flowguard'"),
    ("router.prefill_budget", "declares no range for it"),
    ("w_latency", "SECTION.KEY"),
    ("lanes.tp", "SECTION.KEY"),
    ("router.perf", "not a parameter"),
])
def test_unknown_or_unranged_parameters_are_refused(param, why):
    with pytest.raises(TuningError, match=why):
        select(builtin_cluster("streamserve"), [param])


def test_empty_search_space_is_refused():
    with pytest.raises(TuningError, match="nothing to tune"):
        select(builtin_cluster("vllm-dp"))


def test_apply_changes_only_the_named_fields_and_the_file_stays_valid():
    cluster = builtin_cluster("streamserve")
    values = {"router.w_kv": 1.5, "scheduler.order": "edf", "spec_policy.decay": 0.9}
    tuned = apply(cluster, values)
    assert tuned.router.w_kv == 1.5 and tuned.scheduler.order == "edf" and tuned.spec_policy.decay == 0.9
    assert tuned.router.w_latency == cluster.router.w_latency and tuned.lanes == cluster.lanes
    raw = {"lanes": [{"role": "colocated"}], "router": {"name": "flowguard"}}
    c = parse_cluster(raw, "x")
    data = apply_mapping(raw, c, {"router.w_kv": 0.25, "scheduler.max_attempts": 2})
    assert data["router"] == {"name": "flowguard", "w_kv": 0.25}
    assert data["scheduler"] == {"name": "fcfs", "max_attempts": 2}  # default section: name written out
    assert parse_cluster(data, "x").router.w_kv == 0.25


def test_current_values_are_the_files_or_the_defaults():
    cluster = builtin_cluster("streamserve")
    v = current_values(cluster, select(cluster, ["router.local_max_prompt", "spec_policy.decay",
                                                 "scheduler.order"]))
    assert v == {"router.local_max_prompt": 64, "spec_policy.decay": 0.97, "scheduler.order": "fcfs"}
