"""Engine supervision without vLLM: an "engine" process that serves /health and
/metrics and forks a child (as vLLM's API server forks its EngineCore). When the API
server dies, its whole process group is reaped; a restart, by `--restart` or by hand,
brings the lane back healthy."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fake_engine import free_port
from streamserve.gpu.config import parse_live
from streamserve.gpu.engine_args import EngineSpec
from streamserve.gpu.engines import Engine, EngineSet
from streamserve.gpu.executor import Executor
from streamserve.gpu.lanes import LiveLane
from streamserve.lanes import LaneRole
from streamserve.policies.registry import build_router, build_scheduler

ENGINE = '''
import http.server, os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[2], "a").write(f"{child.pid}\\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"vllm:num_requests_running 0.0\\n" if self.path == "/metrics" else b"ok"
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def _spec(tmp: Path, port: int) -> EngineSpec:
    cfg = parse_live({"model": "m", "engines": [{"role": "colocated", "port": port}]}, "t.yaml")
    script = tmp / "engine.py"
    script.write_text(ENGINE)
    return EngineSpec(lane_id=0, entry=cfg.engines[0], argv=[sys.executable, str(script), str(port),
                                                             str(tmp / "children")],
                      env=dict(os.environ), log_path=tmp / "engine.log", k_trace_path=None)


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _children(tmp: Path) -> list[int]:
    return [int(line) for line in (tmp / "children").read_text().split()]


def test_dead_api_server_is_reaped_with_its_children_and_restarted(tmp_path):
    port = free_port()
    engines = EngineSet([_spec(tmp_path, port)])
    engine = engines.engines[0]
    said: list[str] = []
    try:
        engines.start(timeout=30)
        (child,) = _children(tmp_path)
        os.kill(engine.proc.pid, signal.SIGKILL)  # the API server alone dies; its child lives on
        engine.proc.wait(timeout=5)
        assert not _gone(child, within=0.3)
        engines.supervise(restart=False, timeout=30, echo=said.append)
        assert _gone(child), "the dead engine's child outlived it"
        assert "exited with code -9" in said[0] and "reaped" in said[0]
        engines.supervise(restart=True, timeout=30, echo=said.append)  # reported once: no restart of a reported death
        assert len(said) == 1
        engines._reported.clear()
        engines.supervise(restart=True, timeout=30, echo=said.append)
        end = time.monotonic() + 30
        while not (engine.alive() and engine.healthy()) and time.monotonic() < end:
            time.sleep(0.1)
        assert engine.healthy() and engine.restarts == 1 and len(_children(tmp_path)) == 2
        end = time.monotonic() + 5
        while "is back" not in said[-1] and time.monotonic() < end:
            time.sleep(0.05)
        assert said[-1] == "engine 0 (colocated) is back"
    finally:
        engines.stop()
    assert all(_gone(pid) for pid in _children(tmp_path))


def test_a_lane_whose_engine_comes_back_is_used_again(tmp_path):
    """The front end takes a lane down when its engine dies and back once the engine,
    restarted by hand on the same port, answers /health."""
    port = free_port()
    engine = Engine(_spec(tmp_path, port))
    lanes = [LiveLane(0, LaneRole.COLOCATED, f"http://127.0.0.1:{port}", 8)]
    router = build_router({"name": "round_robin"}, {})
    ex = Executor(lanes, build_scheduler({"name": "stream"}, router, {}), metrics_interval=0.1)
    by_hand: subprocess.Popen | None = None

    async def scenario() -> list[bool]:
        nonlocal by_hand
        seen = []
        engine.start()
        engine.wait_ready(time.monotonic() + 30)
        await ex.start()
        try:
            await asyncio.sleep(0.3)
            seen.append(lanes[0].healthy)
            engine.kill()
            await asyncio.sleep(0.5)
            seen.append(lanes[0].healthy)
            by_hand = subprocess.Popen(engine.spec.argv, start_new_session=True)  # as a user would
            end = time.monotonic() + 20
            while not lanes[0].healthy and time.monotonic() < end:
                await asyncio.sleep(0.1)
            seen.append(lanes[0].healthy)
        finally:
            await ex.close()
        return seen

    try:
        assert asyncio.run(scenario()) == [True, False, True]
    finally:
        engine.stop()
        if by_hand is not None:
            os.killpg(by_hand.pid, signal.SIGKILL)
            by_hand.wait()
