"""The calibration commands' only contact with the live runtime.

A ``Deployment`` is a live config's engines and front end, as ``streamserve serve`` runs
them, with every engine logging its steps (``streamserve/gpu/steplog.py``): engines that
speculate log from SpecuStream's scheduler, the others get ``StepLogScheduler``. With
``attach`` nothing is started: a ``streamserve serve`` of the same config (with
``profile_steps: true``) is already running, and its front end and step logs are used.
Workloads are sent with ``streamserve bench``'s client, so what is measured here is
what ``bench`` measures.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from streamserve.gpu.bench import BenchOptions, run_bench
from streamserve.gpu.config import LiveConfig
from streamserve.gpu.engine_args import EngineSpec, engine_specs, port_free, resolve_model
from streamserve.gpu.engines import EngineError, EngineSet, check_model
from streamserve.gpu.prompts import fill_prompts
from streamserve.metrics import RunResult
from streamserve.workload.base import Workload

STEP_LOG_NAME = "steps-lane{lane}.jsonl"  # as engine_args.engine_specs names it under log_dir


def model_folder(cfg: LiveConfig) -> Path:
    return Path(resolve_model(cfg.model))


def step_logging_specs(cfg: LiveConfig, log_dir: Path) -> list[EngineSpec]:
    """The engines of ``cfg``, each appending its steps to ``log_dir/steps-lane{i}.jsonl``
    (what ``profile_steps: true`` makes ``streamserve serve`` do)."""
    return engine_specs(cfg.model_copy(update={"profile_steps": True}), log_dir=log_dir)


class Deployment:
    """Engines and front end of one live config, for the length of a ``with`` block."""

    def __init__(self, cfg: LiveConfig, log_dir: Path, attach: bool = False) -> None:
        self.cfg = cfg
        self.attach = attach
        self.log_dir = Path(cfg.log_dir) if attach else log_dir
        self.endpoint = f"http://{_client_host(cfg.frontend.host)}:{cfg.frontend.port}"
        self.roles = {i: e.role for i, e in enumerate(cfg.engines)}
        self.engines: EngineSet | None = None
        self._server: Any = None

    def step_log(self, lane: int) -> Path:
        return self.log_dir / STEP_LOG_NAME.format(lane=lane)

    def k_trace(self, lane: int) -> Path:
        return self.log_dir / f"k-trace-lane{lane}.jsonl"

    def __enter__(self) -> "Deployment":
        if self.attach:
            if port_free(self.cfg.frontend.port):
                raise EngineError(f"--attach: nothing listens on {self.endpoint} (start `streamserve serve "
                                  f"--config ...` with profile_steps: true first)")
            return self
        from streamserve.gpu.app import ServerThread
        from streamserve.gpu.serve import build_app, build_frontend

        if not port_free(self.cfg.frontend.port):
            raise EngineError(f"frontend.port {self.cfg.frontend.port} is already in use")
        check_model(self.cfg.model)
        self.engines = EngineSet(step_logging_specs(self.cfg, self.log_dir))
        fe = build_frontend(self.cfg, self.log_dir)
        self.engines.start(self.cfg.startup_timeout_s)
        try:
            self._server = ServerThread(build_app(self.cfg, fe), self.cfg.frontend.host, self.cfg.frontend.port)
            self._server.start()
        except BaseException:
            self.engines.stop()
            raise
        return self

    def check_alive(self) -> None:
        """Raise ``EngineError`` naming the first engine that died."""
        if self.engines is None:
            return
        for engine in self.engines.engines:
            if not engine.alive():
                raise engine._fail("exited")

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
        if self.engines is not None:
            self.engines.stop()

    def send(self, workload: Workload, seed: int, timeout_s: float = 600.0) -> tuple[RunResult, dict[str, Any], float]:
        """Replay ``workload`` through the front end as ``streamserve bench --ignore-eos``
        does; also returns the wall clock (``time.time()``) of the run's time zero."""
        prompts = fill_prompts(workload, seed)
        opts = BenchOptions(endpoint=self.endpoint, model=self.cfg.model_name, ignore_eos=True, seed=seed,
                            timeout_s=timeout_s)
        wall0 = time.time()
        result, extra = run_bench(workload, prompts, opts)
        return result, extra, wall0


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def main(argv: list[str] | None = None) -> None:
    """``python -m streamserve.calibration.live --config live.yaml``: start the engines
    (every one logging its steps to log_dir) and the front end of a config, and hold
    them until SIGTERM/SIGINT, so that ``profile --attach`` and ``fidelity --attach``
    can share one start-up (what docs/results/fidelity/run.sh does)."""
    import argparse
    import signal
    import threading

    from streamserve.gpu.config import load_live

    parser = argparse.ArgumentParser(prog="python -m streamserve.calibration.live")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    cfg = load_live(args.config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Deployment(cfg, Path(cfg.log_dir)) as dep:
        print(f"ready: {dep.endpoint}", flush=True)
        while not stop.wait(1.0):
            dep.check_alive()


if __name__ == "__main__":
    main()
