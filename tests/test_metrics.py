"""Summary figures from timestamps, and the ITL histogram's accuracy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.metrics import LogHistogram, RunResult, parse_slo, summarize
from streamserve.request import SLO, Request, State


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-5, 100.0), min_size=1, max_size=500), st.sampled_from([50, 90, 99]))
def test_histogram_percentiles_within_bin_width(values, q):
    h = LogHistogram()
    h.add_many(np.asarray(values))
    assert h.mean == pytest.approx(np.mean(values), rel=1e-9)
    exact = np.percentile(values, q, method="lower")
    assert h.percentile(q) == pytest.approx(exact, rel=0.011)


def test_weighted_adds_equal_repeated_adds():
    a, b = LogHistogram(), LogHistogram()
    a.add_counts(np.array([0.01, 0.5]), np.array([3, 2]))
    b.add_many(np.array([0.01, 0.01, 0.01, 0.5, 0.5]))
    assert (a.counts == b.counts).all() and a.n == b.n == 5 and a.mean == pytest.approx(b.mean)


def _req(i, arrival, first, finish, n, state=State.FINISHED):
    r = Request(id=i, arrival=arrival, prompt_len=10, output_len=n)
    r.prefill_start, r.first_token, r.decode_start, r.finish, r.generated, r.state = arrival, first, first, finish, n, state
    return r


def test_summary_fields_and_goodput():
    reqs = [_req(0, 0.0, 0.1, 1.1, 11), _req(1, 1.0, 1.5, 2.5, 11), _req(2, 2.0, 2.0, 2.0, 0, State.REJECTED)]
    s = summarize(RunResult(reqs, duration=4.0, itl=LogHistogram()), SLO(ttft=0.2, tpot=0.2))
    assert s["completed"] == 2 and s["rejected"] == 1 and s["failed"] == 0
    assert s["mean_ttft_ms"] == pytest.approx(300.0)
    assert s["mean_tpot_ms"] == pytest.approx(100.0)
    assert s["mean_e2el_ms"] == pytest.approx(1300.0)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["request_goodput"] == pytest.approx(0.25)  # only request 0 meets TTFT <= 200 ms
    assert s["output_throughput"] == pytest.approx(22 / 4)


def test_parse_slo():
    slo = parse_slo(["ttft:200", "tpot:50"])
    assert (slo.ttft, slo.tpot) == (0.2, 0.05)
    with pytest.raises(ValueError, match="tpot must be > 0"):
        parse_slo(["tpot:0"])
