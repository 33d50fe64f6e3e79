"""The front end carries out what the scheduler decides, at once, and its gauges show
what is really in flight: a deadline from ``next_deadline`` ends a waiting request, a
``Fail`` after a lane dies answers every client, and no ended request stays counted.
Fake engines; no vLLM needed."""
from __future__ import annotations

import json
import threading
import time

import httpx

from fake_engine import FakeEngine, free_port
from streamserve.gpu.app import ServerThread, create_app
from streamserve.gpu.executor import Executor
from streamserve.gpu.lanes import LiveLane
from streamserve.gpu.telemetry import parse_metrics
from streamserve.lanes import LaneRole
from streamserve.policies.registry import build_router, build_scheduler


def _front(engines, scheduler: dict, timeout: float = 30.0):
    lanes = [LiveLane(lane_id=i, role=role, url=e.url, max_num_seqs=16) for i, (e, role) in enumerate(engines)]
    router = build_router({"name": "round_robin"}, {})
    ex = Executor(lanes, build_scheduler(scheduler, router, {}), metrics_interval=0.1, request_timeout=timeout)
    port = free_port()
    server = ServerThread(create_app(ex, "m", 4096), "127.0.0.1", port)
    server.start()
    return ex, server, f"http://127.0.0.1:{port}"


def _gauges(url: str) -> dict[str, float]:
    return parse_metrics(httpx.get(url + "/metrics", timeout=10).text)


def test_a_deadline_the_scheduler_sets_ends_the_waiting_request():
    p, d = FakeEngine("p").start(), FakeEngine("d").start()
    ex, server, url = _front([(p, LaneRole.PREFILL), (d, LaneRole.DECODE)],
                             {"name": "gpu_policies:HoldThenFail", "max_wait_s": 0.3})
    try:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3}, timeout=30)
        s = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True}, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 503 and "waited 0.3 s" in r.json()["error"]["message"]
        assert s.status_code == 503 and s.json()["error"]["type"] == "RequestFailed"  # before the stream began
        assert took < 3.0  # not the 30 s request timeout
        assert not p.received and not d.received
        g = _gauges(url)
        assert g["streamserve_scheduler_pending"] == 0 and g["streamserve_requests_open"] == 0
        assert g['streamserve_requests_total'] == 2
    finally:
        server.stop()
        p.stop()
        d.stop()


def test_killing_the_only_decode_engine_answers_every_client_within_5_s():
    p, d = FakeEngine("p").start(), FakeEngine("d", delay=0.05).start()
    ex, server, url = _front([(p, LaneRole.PREFILL), (d, LaneRole.DECODE)], {"name": "gpu_policies:FailWithoutLane"})
    answered: dict[int, tuple[float, int, str]] = {}
    streamed = [i for i in range(8) if i % 2 == 1]
    first_bytes = {i: threading.Event() for i in streamed}

    def call(i: int) -> None:
        body = {"prompt": f"q {i}", "max_tokens": 400, "stream": i % 2 == 1}
        parts = []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for piece in r.iter_text():
                parts.append(piece)
                if i in first_bytes:
                    first_bytes[i].set()
        answered[i] = (time.monotonic(), r.status_code, "".join(parts))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        # the engine holds all eight, and every streamed client has its first tokens (a stream
        # that has sent nothing yet is answered 503, like a non-streamed request: CI, loaded)
        while (d.streaming < 8 or not all(e.is_set() for e in first_bytes.values())) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.streaming == 8, "the decode engine never held all eight requests"
        assert all(e.is_set() for e in first_bytes.values()), "a streamed client never got its first tokens"
        g = _gauges(url)
        assert g["streamserve_lane_in_flight"] == 8 and g["streamserve_requests_open"] == 8
        killed = time.monotonic()
        d.stop()
        for t in threads:
            t.join(timeout=30)
        assert len(answered) == 8
        assert max(at for at, _, _ in answered.values()) - killed < 5.0
        for i, (_, status, text) in answered.items():
            if i % 2 == 0:  # non-streamed: a 503 saying why, at once
                assert status == 503 and "no decode lane is healthy" in json.loads(text)["error"]["message"], text
            else:  # streamed, tokens already sent: the stream ends with an error event
                events = [e for e in text.split("\n\n") if e]
                assert status == 200 and events[-1] == "data: [DONE]"
                assert json.loads(events[-2][6:])["error"]["type"] == "LaneDown"
        time.sleep(0.3)  # one scrape
        g = _gauges(url)
        assert g["streamserve_lane_in_flight"] == 0  # nothing counted on the dead lane, nor anywhere
        assert g["streamserve_scheduler_pending"] == 0 and g["streamserve_requests_open"] == 0
        assert not any(lane.in_flight for lane in ex.lanes) and not ex.tickets
        assert httpx.get(url + "/health").status_code == 503
    finally:
        server.stop()
        p.stop()
        d.stop()
