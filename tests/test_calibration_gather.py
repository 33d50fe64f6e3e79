"""The profile run's scheduler: a burst decodes only once all of it is prefilled."""
from __future__ import annotations

import json

import pytest
from test_policies_scheduler import PERFS, View, req

from streamserve.calibration.gather import SCHEDULER_NAME, GatherBursts
from streamserve.calibration.grid import Cell, build_grid
from streamserve.calibration.profile import ProfileRunError, cell_gap_s, cell_workload
from streamserve.policies.base import Fail, Submit
from streamserve.policies.registry import build_router, build_scheduler
from streamserve.request import Phase, State


def gather(**kw) -> GatherBursts:
    return GatherBursts(build_router({"name": "round_robin"}, PERFS), **kw)


def prefilled(s: GatherBursts, v: View, r, now: float) -> list:
    r.prefill_end, r.generated, r.state = now, 1, State.TRANSFER
    return s.on_prefill_done(r, now, v)


def arrive(s: GatherBursts, v: View, requests) -> None:
    for r in requests:
        (a,) = s.on_arrival(r, r.arrival, v)
        assert isinstance(a, Submit) and a.phase is Phase.PREFILL
        r.prefill_lane, r.state = a.lane_id, State.PREFILL


def test_a_burst_decodes_when_its_last_request_is_prefilled() -> None:
    s, v = gather(), View()
    burst = [req(i, arrival=0.001 * i) for i in range(3)]
    arrive(s, v, burst)
    assert prefilled(s, v, burst[0], 1.0) == [] and prefilled(s, v, burst[2], 2.0) == []
    assert s.pending == 2
    actions = prefilled(s, v, burst[1], 3.0)
    assert sorted(a.request.id for a in actions) == [0, 1, 2]
    assert all(isinstance(a, Submit) and a.phase is Phase.DECODE for a in actions)
    assert s.pending == 0


def test_requests_arriving_apart_are_not_held() -> None:
    s, v = gather(), View()
    spaced = [req(i, arrival=0.5 * i) for i in range(3)]
    arrive(s, v, spaced)
    for i, r in enumerate(spaced):
        (a,) = prefilled(s, v, r, 1.0 + i)
        assert isinstance(a, Submit) and a.phase is Phase.DECODE and a.request is r


def test_a_member_that_failed_does_not_hold_its_burst() -> None:
    s, v = gather(), View()
    burst = [req(i) for i in range(2)]
    arrive(s, v, burst)
    assert prefilled(s, v, burst[0], 1.0) == []
    burst[1].state = State.FAILED  # e.g. its prefill call failed; the runtime ended it
    (a,) = s.on_capacity(1.5, v)
    assert isinstance(a, Submit) and a.request is burst[0]


def test_a_held_request_whose_kv_is_lost_prefills_again_and_its_burst_waits() -> None:
    s, v = gather(), View()
    burst = [req(i) for i in range(2)]
    arrive(s, v, burst)
    assert prefilled(s, v, burst[0], 1.0) == []
    lane = burst[0].prefill_lane
    actions = s.on_lane_down(lane, [burst[0]], 1.2, v)
    assert not [a for a in actions if isinstance(a, Submit) and a.phase is Phase.DECODE]
    assert prefilled(s, v, burst[1], 2.0) == []  # burst[0] prefills again first


def test_a_burst_waits_at_most_max_gather_s_then_decodes_and_drain_ends_the_rest() -> None:
    s, v = gather(max_gather_s=10.0), View()
    burst = [req(i) for i in range(3)]
    arrive(s, v, burst)
    assert prefilled(s, v, burst[0], 1.0) == []
    assert s.next_deadline() == pytest.approx(11.0)
    assert s.on_timer(10.9, v) == []
    (a,) = s.on_timer(11.0, v)  # its KV would not outlive the lease: decode without the rest
    assert isinstance(a, Submit) and a.phase is Phase.DECODE and a.request is burst[0]
    assert prefilled(s, v, burst[1], 12.0) == []
    ends = s.drain(13.0)
    assert burst[1] in [a.request for a in ends] and all(isinstance(a, Fail) and a.reason for a in ends)


def test_the_config_names_it_as_a_policy_of_ones_own() -> None:
    router = build_router({"name": "round_robin"}, PERFS)
    s = build_scheduler({"name": SCHEDULER_NAME, "window_s": 0.1}, router, PERFS)
    assert isinstance(s, GatherBursts) and s.window_s == 0.1


def test_contend_cells_only_where_engines_can_overlap() -> None:
    assert not [c for c in build_grid(2048, 16, True, "small", engines=1) if c.phase == "contend"]
    contend = [c for c in build_grid(2048, 16, True, "small", engines=2) if c.phase == "contend"]
    assert [c.prompt_len for c in contend] == [64, 256] and all(c.spacing > 0 for c in contend)


def test_contend_cells_are_spaced_by_the_measured_single_prompt_ttft(tmp_path) -> None:
    cell = Cell("contend-64", "contend", 64, 32, 1, 4, "prose", spacing=1.25)
    with pytest.raises(ProfileRunError, match="no single prompt of 64 tokens"):
        cell_gap_s(tmp_path, cell)
    rows = [{"cell": "prefill-64-r0", "ttft": 0.4}, {"cell": "prefill-64-r1", "ttft": 0.6},
            {"cell": "prefill-128-r0", "ttft": 9.0}, {"cell": "prefill-64-r2", "ttft": 0.5}]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gap = cell_gap_s(tmp_path, cell)
    assert gap == pytest.approx(1.25 * 0.5)
    w = cell_workload(cell, gap)
    assert w.concurrency is None and list(w.arrival) == pytest.approx([0, gap, 2 * gap, 3 * gap])
    burst = cell_workload(Cell("decode-4x64-prose", "decode", 64, 32, 4, 4, "prose"))
    assert burst.arrival is None and burst.concurrency == 4
