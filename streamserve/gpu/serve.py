"""`streamserve serve`: engines and front end from one live config."""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from fastapi import FastAPI

from streamserve.gpu.config import LiveConfig
from streamserve.gpu.app import ServerThread, create_app
from streamserve.gpu.engine_args import ENV_SPEC_POLICY, engine_specs
from streamserve.gpu.engines import EngineSet
from streamserve.gpu.executor import Executor
from streamserve.gpu.lanes import LiveLane
from streamserve.gpu.policyload import build_engine_spec_policy, build_front_scheduler, lane_perf
from streamserve.lanes import LaneRole


def build_lanes(cfg: LiveConfig, log_dir: Path | None = None) -> list[LiveLane]:
    specs = engine_specs(cfg, log_dir=log_dir)
    return [LiveLane(lane_id=s.lane_id, role=LaneRole(s.entry.role), url=s.url, max_num_seqs=s.entry.max_num_seqs,
                     pair=s.entry.pair, tp=s.entry.tp) for s in specs]


def build_frontend(cfg: LiveConfig, log_dir: Path | None = None) -> Executor:
    """The front end for ``cfg``'s engines."""
    lanes = build_lanes(cfg, log_dir)
    perf = lane_perf(cfg.perf.model_dump(), [(lane.lane_id, lane.tp, lane.role.value) for lane in lanes], cfg.draft_profile_name)
    scheduler = build_front_scheduler(cfg.router.model_dump(), cfg.scheduler.model_dump(), perf, cfg.seed)
    return Executor(lanes, scheduler, metrics_interval=cfg.frontend.metrics_interval_s,
                    request_timeout=cfg.frontend.request_timeout_s)


def build_app(cfg: LiveConfig, ex: Executor) -> FastAPI:
    return create_app(ex, cfg.model_name, cfg.max_model_len)


def check_engine_policies(engines: EngineSet) -> None:
    """Build each engine's spec policy here once, so a bad one is reported in a line
    instead of as an engine crash after a minute of start-up."""
    for engine in engines.engines:
        raw = engine.spec.env.get(ENV_SPEC_POLICY)
        if raw:
            k_max = json.loads(engine.spec.argv[engine.spec.argv.index("--speculative-config") + 1])
            build_engine_spec_policy(json.loads(raw), k_max=k_max["num_speculative_tokens"])


def serve(cfg: LiveConfig, log_dir: Path | None = None, echo=print, restart: bool = False) -> None:
    """Start every engine, then the front end; run until SIGINT/SIGTERM; stop all.

    Every second the engines are looked at: one whose API server died has its whole
    process group reaped, and with ``restart`` it is started again; the front end
    takes its lane back once it answers ``/health``."""
    engines = EngineSet.from_config(cfg, log_dir=log_dir)
    fe = build_frontend(cfg, log_dir)  # bad policy configs fail here, before any engine starts
    check_engine_policies(engines)
    echo(f"starting {len(engines.engines)} engine(s); logs in {log_dir or cfg.log_dir}")
    engines.start(cfg.startup_timeout_s)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = ServerThread(build_app(cfg, fe), cfg.frontend.host, cfg.frontend.port)
        server.start()
        echo(f"serving {cfg.model_name} on http://{cfg.frontend.host}:{cfg.frontend.port} "
             f"({', '.join(f'{e.spec.entry.role}:{e.spec.entry.port}' for e in engines.engines)})")
        while not stop.wait(1.0):
            if not server.thread.is_alive():
                break
            engines.supervise(restart, cfg.startup_timeout_s, echo)
    finally:
        if server is not None:
            server.stop()
        engines.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        echo("stopped")
