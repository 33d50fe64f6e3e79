"""The simulator's promise under anything a user can configure: every request appears
exactly once in requests.csv and ends finished, rejected or failed with a reason; its
timestamps are ordered; summary.json is valid JSON; no exception escapes.

Random small clusters (1-6 lanes, colocated or disaggregated, stream pairs), random
engine limits (tiny KV included) and scheduling modes, random lane and link faults at
any time on any lane, a short KV lease, open and closed loops with and without think
time, bounded scheduler queues and ``overload: reject``. CI runs 300 examples;
``STREAMSERVE_FUZZ_EXAMPLES=5000`` runs more.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamserve.config import ClusterConfig
from streamserve.metrics import summarize, write_outputs
from streamserve.request import SLO
from streamserve.sim import run
from streamserve.workload.base import Workload

EXAMPLES = int(os.environ.get("STREAMSERVE_FUZZ_EXAMPLES", "300"))
TERMINAL = {"finished", "rejected", "failed"}


@st.composite
def engines(draw) -> dict:
    seqs = draw(st.integers(1, 8))
    block = draw(st.sampled_from([1, 4, 16]))
    return {
        "max_num_seqs": seqs,
        "max_num_batched_tokens": draw(st.integers(max(16, seqs), 2048)),
        "block_size": block,
        "kv_capacity_tokens": draw(st.integers(block, 4000)),
        "enable_chunked_prefill": draw(st.booleans()),
        "max_waiting": draw(st.integers(1, 8)),
        "scheduling": draw(st.sampled_from(["mixed", "prefill_first"])),
    }


@st.composite
def clusters(draw) -> dict:
    n = draw(st.integers(1, 6))
    if n == 1 or draw(st.booleans()):
        roles = ["colocated"] * n
    else:
        roles = ["prefill", "decode"] + draw(st.lists(st.sampled_from(["prefill", "decode"]), min_size=n - 2,
                                                       max_size=n - 2))
    paired = "prefill" in roles and draw(st.booleans())
    lanes = []
    for i, role in enumerate(roles):
        lane: dict = {"role": role}
        if paired:
            lane["pair"] = i // 2 if i < 4 else draw(st.integers(0, 2))
        if draw(st.integers(0, 3)) == 0:
            lane["engine"] = draw(engines())
        lanes.append(lane)
    spec = draw(st.sampled_from(["none", "fixed", "specustream"]))
    faults = draw(st.lists(st.fixed_dictionaries({
        "lane": st.integers(0, n - 1),
        "at": st.floats(0, 6),
        "kind": st.sampled_from(["down", "slow", "link_down", "link_slow"]),
        "duration": st.none() | st.floats(0.01, 4),
        "factor": st.floats(1, 5),
    }), max_size=4))
    scheduler: dict = {"name": draw(st.sampled_from(["fcfs", "stream"]))}
    if scheduler["name"] == "stream":
        scheduler.update(order=draw(st.sampled_from(["fcfs", "spf", "edf"])),
                         overload=draw(st.sampled_from(["queue", "reject"])),
                         max_pending=draw(st.none() | st.integers(1, 6)),
                         max_attempts=draw(st.integers(1, 3)))
        if paired:
            scheduler["pairing"] = draw(st.sampled_from(["independent", "pairs"]))
    return {
        "lanes": lanes,
        "engine": draw(engines()),
        "speculation": {"method": "none"} if spec == "none" else {"method": "draft", "k_max": 4},
        "spec_policy": {"name": "fixed", "k": 0} if spec == "none" else (
            {"name": "fixed", "k": draw(st.integers(0, 4))} if spec == "fixed" else {"name": "specustream"}),
        "router": {"name": draw(st.sampled_from(["round_robin", "least_outstanding", "flowguard"]))},
        "scheduler": scheduler,
        "faults": faults,
        "kv_lease_s": draw(st.sampled_from([30.0, 0.05, 0.5])),
    }


@st.composite
def workloads(draw) -> Workload:
    n = draw(st.integers(1, 25))
    prompts = draw(st.lists(st.integers(1, 700), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
    closed = draw(st.booleans())
    arrival = None
    concurrency = think = None
    if closed:
        concurrency = draw(st.integers(1, 4))
        think = draw(st.sampled_from([0.0, 0.05, 0.7]))
    else:
        arrival = np.cumsum(draw(st.lists(st.floats(0, 0.6), min_size=n, max_size=n)))
    slo = draw(st.none() | st.builds(SLO, st.floats(0.05, 3.0), st.none() | st.floats(0.01, 0.2)))
    return Workload(name="fuzz", prompt_len=np.asarray(prompts, dtype=np.int64),
                    output_len=np.asarray(outputs, dtype=np.int64), arrival=arrival,
                    dataset=np.zeros(n, dtype=np.int16), concurrency=concurrency, think_time=think or 0.0, slo=slo)


def _no_nan(name: str) -> float:
    raise ValueError(f"summary.json holds {name}")


def check_run(cfg: ClusterConfig, wl: Workload, seed: int, out: Path) -> None:
    result = run(cfg, wl, seed)
    summary = summarize(result, wl.slo)
    json.dumps(summary, allow_nan=False)  # no NaN or infinity, before write_outputs would null them
    write_outputs(result, summary, out)
    json.loads((out / "summary.json").read_text(), parse_constant=_no_nan)
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["id"]) for r in rows) == list(range(len(wl))), "each request exactly once"
    for r in rows:
        assert r["state"] in TERMINAL, r
        assert r["state"] == "finished" or r["reason"], r
        assert "stuck" not in r["reason"], r
        times = [float(r[k]) for k in ("arrival", "prefill_start", "prefill_end", "decode_start", "finish") if r[k]]
        assert times == sorted(times) and all(math.isfinite(t) for t in times), r
        if r["first_token"]:  # the client's first token: after the prefill, by the end
            assert float(r["prefill_end"]) <= float(r["first_token"]) <= float(r["finish"] or "inf"), r
        if r["state"] == "finished":
            assert len(times) == 5 and r["first_token"] and r["generated"] == r["output_len"], r


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 300,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(clusters(), workloads(), st.integers(0, 2**16))
def test_every_request_ends_once_whatever_happens(tmp_path, cluster, wl, seed):
    cfg = ClusterConfig.model_validate(cluster)
    check_run(cfg, wl, seed, tmp_path)
