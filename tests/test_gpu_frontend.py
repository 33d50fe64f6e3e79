"""The front end against fake engines: disaggregated handoff, streaming, OpenAI errors,
metrics, lane failure, and `bench` writing simulate's outputs. No vLLM needed."""
from __future__ import annotations

import asyncio
import csv
import json
import threading
import time

import httpx
import pytest

from fake_engine import FakeEngine, free_port
from streamserve.gpu.bench import BenchOptions, run_bench
from streamserve.gpu.app import ServerThread, create_app
from streamserve.gpu.executor import Executor
from streamserve.gpu.lanes import LiveLane
from streamserve.gpu.protocol import parse_request
from streamserve.gpu.prompts import fill_prompts
from streamserve.lanes import LaneRole
from streamserve.metrics import summarize, write_outputs
from streamserve.perfmodel import Profile
from streamserve.policies.base import Submit
from streamserve.policies.registry import build_router, build_scheduler
from streamserve.request import Phase
from streamserve.workload.synthetic import LengthDist, synthetic


def _front(engines: list[tuple[FakeEngine, LaneRole]], timeout: float = 20.0, router: str = "round_robin",
           scheduler: str = "fcfs"):
    lanes = [LiveLane(lane_id=i, role=role, url=e.url, max_num_seqs=8) for i, (e, role) in enumerate(engines)]
    perf = {lane.lane_id: Profile.load().lane("opt-13b", "A100-80GB", 1, "small-model") for lane in lanes}
    router = build_router({"name": router}, perf)
    scheduler = build_scheduler({"name": scheduler}, router, perf)
    fe = Executor(lanes, scheduler, metrics_interval=0.1, request_timeout=timeout)
    port = free_port()
    server = ServerThread(create_app(fe, "m", 512), "127.0.0.1", port)
    server.start()
    return fe, server, f"http://127.0.0.1:{port}"


@pytest.fixture()
def disagg():
    p, d = FakeEngine("p").start(), FakeEngine("d", delay=0.002).start()
    fe, server, url = _front([(p, LaneRole.PREFILL), (d, LaneRole.DECODE)])
    yield p, d, fe, url
    server.stop()
    p.stop()
    d.stop()


def test_disaggregated_handoff_sends_prefill_then_decode_with_kv_params(disagg):
    p, d, fe, url = disagg
    r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "a b c", "max_tokens": 5}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "d0 d1 d2 d3 d4"
    assert len(p.received) == 1 and len(d.received) == 1
    pre, dec = p.received[0], d.received[0]
    assert pre["max_tokens"] == 1 and pre["kv_transfer_params"]["do_remote_decode"] is True
    assert dec["kv_transfer_params"] == {"from": "p"}  # what the prefill engine returned
    assert dec["max_tokens"] == 5 and dec["prompt"] == "a b c"


def test_streaming_chat_relays_chunks_and_hides_usage_unless_asked(disagg):
    _, d, _, url = disagg
    body = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "d0 d1 d2 d3"
    assert all("usage" not in c for c in chunks)
    assert d.received[0]["stream"] is True


@pytest.mark.parametrize("endpoint,body,status,param", [  # status and param as vLLM 0.32 answers
    ("completions", b"{oops", 400, "body.1"),
    ("completions", json.dumps({"model": "other", "prompt": "x"}).encode(), 404, "model"),
    ("completions", json.dumps({"model": "m", "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    ("completions", json.dumps({"model": "m", "prompt": "x", "max_tokens": -3}).encode(), 400, "max_tokens"),
    ("completions", json.dumps({"model": "m", "prompt": "x", "max_tokens": 4.5}).encode(), 400, "body.max_tokens"),
    ("completions", json.dumps({"model": "m", "prompt": 5}).encode(), 400, "body.prompt"),
    ("completions", json.dumps({"model": "m"}).encode(), 400, "prompt"),
    ("chat/completions", json.dumps({"model": "m", "max_tokens": 3}).encode(), 400, "body.messages"),
    ("chat/completions", json.dumps({"model": "m", "messages": "hi", "stream": True}).encode(), 400, "body.messages"),
])
def test_bad_requests_get_openai_errors(disagg, endpoint, body, status, param):
    _, _, _, url = disagg
    r = httpx.post(f"{url}/v1/{endpoint}", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["param"] == param and err["code"] == status


def test_models_health_and_metrics(disagg):
    _, _, _, url = disagg
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "m"
    assert httpx.get(url + "/health").status_code == 200
    httpx.post(url + "/v1/completions", json={"prompt": "a b", "max_tokens": 3, "stream": True}, timeout=10)
    time.sleep(0.3)
    text = httpx.get(url + "/metrics").text
    assert 'streamserve_lane_requests_total{lane="0",phase="prefill",role="prefill"} 1.0' in text
    assert 'streamserve_lane_requests_total{lane="1",phase="decode",role="decode"} 1.0' in text
    assert "streamserve_ttft_seconds_count 1.0" in text
    assert "streamserve_tpot_seconds_count 1.0" in text
    assert 'streamserve_spec_k{lane="1"}' in text
    assert 'streamserve_lane_spec_draft_tokens{lane="1"} 40.0' in text  # one request: 10 drafts of 4


def test_paper_policies_keep_both_decode_lanes_busy():
    """FlowGuard places a decode only where the prompt's KV fits, which it reads from
    the engine's cache_config_info and KV usage. (Live lanes once reported no free KV at
    all, so a decode lane that held any request was passed over until it drained.)"""
    p = FakeEngine("p").start()
    d1, d2 = FakeEngine("a", delay=0.05).start(), FakeEngine("b", delay=0.05).start()
    fe, server, url = _front([(p, LaneRole.PREFILL), (d1, LaneRole.DECODE), (d2, LaneRole.DECODE)], timeout=5.0,
                             router="flowguard", scheduler="stream")
    try:
        time.sleep(0.3)  # a scrape: the decode lanes report KV in use
        assert all(lane.stats().kv_free_tokens == 12_000 for lane in fe.lanes)
        results: list[httpx.Response] = []

        def call(i: int) -> None:
            results.append(httpx.post(url + "/v1/completions", json={"prompt": f"q {i}", "max_tokens": 20}, timeout=30))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 6
        assert len(d1.received) + len(d2.received) == 6 and d1.received and d2.received
        assert d1.max_streaming + d2.max_streaming >= 4  # decoded side by side, not one at a time per lane
    finally:
        server.stop()
        for e in (p, d1, d2):
            e.stop()


def test_dead_decode_lane_retries_elsewhere_and_is_avoided():
    p = FakeEngine("p").start()
    d1, d2 = FakeEngine("a", delay=0.05).start(), FakeEngine("b", delay=0.05).start()
    fe, server, url = _front([(p, LaneRole.PREFILL), (d1, LaneRole.DECODE), (d2, LaneRole.DECODE)])
    try:
        results: list[httpx.Response] = []

        def call(i: int) -> None:
            results.append(httpx.post(url + "/v1/completions", json={"prompt": f"q {i}", "max_tokens": 40}, timeout=30))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.6)  # both decode lanes are mid-way through their requests
        d1.stop()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 4  # non-streamed: retried invisibly
        assert all(r.json()["choices"][0]["text"].startswith("b0") for r in results)
        assert not fe.lanes[1].healthy
        r = httpx.post(url + "/v1/completions", json={"prompt": "after", "max_tokens": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "b0 b1 b2"
        assert httpx.get(url + "/health").status_code == 200
    finally:
        server.stop()
        for e in (p, d1, d2):
            e.stop()


def test_a_lane_lost_between_placement_and_use_does_not_strand_the_request():
    """Seen on vLLM in CI: a decode placement onto lane 1 is made, lane 1 is found dead
    before the request's handler acts on it, and the re-placement from prefill must not
    be lost behind the stale placement (it was, and the request waited until timeout)."""
    p, a, b = FakeEngine("p").start(), FakeEngine("a").start(), FakeEngine("b").start()
    lanes = [LiveLane(lane_id=i, role=role, url=e.url, max_num_seqs=8)
             for i, (e, role) in enumerate([(p, LaneRole.PREFILL), (a, LaneRole.DECODE), (b, LaneRole.DECODE)])]
    router = build_router({"name": "round_robin"}, {})
    dead: set[int] = set()
    fe = Executor(lanes, build_scheduler({"name": "fcfs"}, router, {}),
                  request_timeout=3.0)
    apply = fe._apply

    def apply_then_kill(actions) -> None:
        apply(actions)
        if not dead and any(isinstance(x, Submit) and x.lane_id == 1 and x.phase is Phase.DECODE for x in actions):
            dead.add(1)
            a.stop()  # its engine dies, and the lane is checked before the handler runs again
            asyncio.get_running_loop().create_task(fe.lane_failed(1, "killed by the test"))

    async def scenario() -> dict:
        await fe.start()
        fe._apply = apply_then_kill
        try:
            raw = json.dumps({"prompt": "x y", "max_tokens": 3}).encode()
            ticket = await fe.admit(parse_request("completions", raw, "m"))
            return await fe.run(ticket, None)
        finally:
            await fe.close()

    try:
        answer = asyncio.run(scenario())
        assert dead == {1} and not fe.lanes[1].healthy
        assert answer["choices"][0]["text"] == "b0 b1 b2"  # prefilled again, decoded on lane 2
        assert [body["max_tokens"] for body in p.received] == [1, 1]
        assert not any(lane.in_flight for lane in fe.lanes)
    finally:
        for e in (p, a, b):
            e.stop()


def test_streamed_request_on_dead_lane_ends_with_error_event():
    p, d = FakeEngine("p").start(), FakeEngine("d", delay=0.05).start()
    fe, server, url = _front([(p, LaneRole.PREFILL), (d, LaneRole.DECODE)], timeout=3.0)
    try:
        lines: list[str] = []
        with httpx.stream("POST", url + "/v1/completions", json={"prompt": "x y", "max_tokens": 100, "stream": True},
                          timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if len(lines) == 5:
                        d.stop()
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])["error"]
        assert err["type"] == "LaneDown" and err["code"] == 502 and "lane 1" in err["message"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=10)
        assert r.status_code == 503 and "lane 1 down" in r.json()["error"]["message"]
        assert httpx.get(url + "/health").status_code == 503  # up, and says why it cannot serve
    finally:
        server.stop()
        p.stop()


def test_colocated_lanes_take_whole_requests_round_robin():
    a, b = FakeEngine("a").start(), FakeEngine("b").start()
    fe, server, url = _front([(a, LaneRole.COLOCATED), (b, LaneRole.COLOCATED)])
    try:
        texts = [httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10).json()
                 ["choices"][0]["text"] for _ in range(4)]
        assert texts == ["a0 a1", "b0 b1", "a0 a1", "b0 b1"]
        assert all("kv_transfer_params" not in body for body in a.received + b.received)
    finally:
        server.stop()
        a.stop()
        b.stop()


def test_bench_writes_simulate_outputs(disagg, tmp_path):
    _, _, _, url = disagg
    wl = synthetic(12, 50.0, seed=1, prompt=LengthDist(dist="fixed", value=8),
                   output=LengthDist(dist="uniform", low=2, high=6))
    result, extra = run_bench(wl, fill_prompts(wl, 1), BenchOptions(endpoint=url, k_sample_s=0.05))
    summary = summarize(result)
    summary.update(extra)
    write_outputs(result, summary, tmp_path)
    assert summary["completed"] == 12 and summary["failed"] == 0
    for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "request_throughput", "output_throughput"):
        assert summary[key] > 0, key
    assert summary["total_output_tokens"] == int(wl.output_len.sum())
    rows = list(csv.DictReader(open(tmp_path / "requests.csv")))
    assert len(rows) == 12 and {r["state"] for r in rows} == {"finished"}
    assert json.loads((tmp_path / "summary.json").read_text())["completed"] == 12


def test_streamed_request_an_engine_refuses_gets_400_before_any_stream(disagg):
    """vLLM answers an invalid field with 400 even when the client asks to stream."""
    _, _, _, url = disagg
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 4, "temperature": "hot",
                                                  "stream": True}, timeout=10)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "body.temperature"


def test_min_tokens_goes_to_the_decode_request_only(disagg):
    p, d, _, url = disagg
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 8.0, "min_tokens": 5}, timeout=10)
    assert r.status_code == 200, r.text
    assert "min_tokens" not in p.received[0] and p.received[0]["max_tokens"] == 1
    assert d.received[0]["min_tokens"] == 5 and d.received[0]["max_tokens"] == 8


def test_a_list_of_prompts_is_answered_as_one_batch(disagg):
    _, _, _, url = disagg
    r = httpx.post(url + "/v1/completions", json={"prompt": ["a", "b c"], "max_tokens": 2}, timeout=10)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [c["index"] for c in answer["choices"]] == [0, 1] and answer["usage"]["completion_tokens"] == 4
    body = {"prompt": ["a", "b c"], "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=10) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    tokens = [e for e in events if e["choices"]]
    assert sorted(c["choices"][0]["index"] for c in tokens) == [0, 0, 0, 1, 1, 1]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6  # one usage, summed


def test_every_engine_chunk_reaches_the_client_as_its_own_event(disagg):
    """The front end relays each engine event as one event: it never merges tokens the
    engine sent apart (which would lengthen a client's measured ITL)."""
    _, d, _, url = disagg
    body = {"prompt": "a", "max_tokens": 30, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=10) as r:
        raw = b"".join(r.iter_bytes())
    events = [e for e in raw.split(b"\n\n") if e]
    assert len(events) == 30 + 1  # 30 token chunks (usage not asked for), then [DONE]
    assert all(e.startswith(b"data: ") and e.count(b"data: ") == 1 for e in events)
