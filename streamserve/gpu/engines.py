"""Start, watch and stop vLLM engines as child processes, one per lane.

Command lines and environments are built by pure functions (``engine_command``,
``engine_env``) so the GPU path (NixlConnector, CUDA_VISIBLE_DEVICES, TP) is unit
tested on machines that have no GPU. Each engine runs in its own process group: vLLM
forks engine-core and worker processes, and killing the group is the only way to be
sure none of them outlives a shutdown.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streamserve.gpu.config import EngineEntry, LiveConfig

SPEC_SCHEDULER_CLS = "streamserve.gpu.specsched.SpecuStreamScheduler"
ENV_SPEC_POLICY = "STREAMSERVE_SPEC_POLICY"  # JSON: the policy config the engine's scheduler builds
ENV_K_TRACE = "STREAMSERVE_K_TRACE"  # file the engine's scheduler appends k changes to
ENV_STEP_LOG = "STREAMSERVE_STEP_LOG"  # file it appends every step to (profile_steps: true)
BOUNDED_EXAMPLE_CONNECTOR = ("BoundedExampleConnector", "streamserve.gpu.kvstore")  # class, module
NIXL_SIDE_CHANNEL_BASE = 5600  # one NIXL handshake port per engine on a host


class EngineError(RuntimeError):
    """An engine could not start or died; the message carries the cause and its log tail."""


@dataclass
class EngineSpec:
    """Everything needed to start one engine: fully resolved, no defaults left."""

    lane_id: int
    entry: EngineEntry
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    k_trace_path: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry.port}"


def repo_root() -> Path:
    """The folder holding the ``streamserve`` package, put on the engines' PYTHONPATH so
    vLLM can import our scheduler class."""
    return Path(__file__).resolve().parents[2]


def kv_transfer_config(cfg: LiveConfig) -> dict[str, object] | None:
    """vLLM's ``--kv-transfer-config`` for a disaggregated deployment (None: colocated).

    Every engine is ``kv_both``: the front end, not the engine's role, decides per request
    whether it prefills for a remote decode or decodes a remote prefill (through the
    request's ``kv_transfer_params``), as vLLM's own disaggregated proxy does.
    """
    if not cfg.disaggregated:
        return None
    conf: dict[str, object] = {"kv_connector": cfg.connector, "kv_role": "kv_both"}
    if cfg.connector == "ExampleConnector":  # ours: the same, with a bounded folder (gpu/kvstore.py)
        conf.update(kv_connector=BOUNDED_EXAMPLE_CONNECTOR[0], kv_connector_module_path=BOUNDED_EXAMPLE_CONNECTOR[1],
                    kv_connector_extra_config={"shared_storage_path": cfg.kv.shared_storage_path})
    return conf


def speculative_config(cfg: LiveConfig) -> dict[str, object] | None:
    spec = cfg.speculation
    if spec.method == "none":
        return None
    conf: dict[str, object] = {"num_speculative_tokens": spec.k_max}
    if spec.method == "ngram":
        conf.update(method="ngram", prompt_lookup_min=spec.prompt_lookup_min,
                    prompt_lookup_max=spec.prompt_lookup_max)
    else:
        conf.update(model=spec.draft_model)
    return conf


def speculates(entry: EngineEntry, cfg: LiveConfig) -> bool:
    """Speculation runs where tokens are decoded: decode and colocated engines."""
    return cfg.speculation.method != "none" and entry.role != "prefill"


def resolve_model(model: str) -> str:
    """``tiny``/``smollm2`` name a prepared model in the cache; anything else is a path."""
    from streamserve.gpu.models import MODEL_NAMES, model_dir

    if model in MODEL_NAMES and not Path(model).exists():
        return str(model_dir(model))
    return model


def engine_command(lane_id: int, entry: EngineEntry, cfg: LiveConfig, python: str) -> list[str]:
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model(cfg.model),
        "--served-model-name", cfg.model_name,
        "--host", "127.0.0.1", "--port", str(entry.port),
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-seqs", str(entry.max_num_seqs),
        "--dtype", cfg.dtype,
        "--seed", str(cfg.seed),
        "--disable-uvicorn-access-log",
    ]
    if cfg.block_size is not None:
        argv += ["--block-size", str(cfg.block_size)]
    if cfg.device == "cuda":
        argv += ["--tensor-parallel-size", str(entry.tp),
                 "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    kv = kv_transfer_config(cfg)
    if kv is not None:
        argv += ["--kv-transfer-config", json.dumps(kv, sort_keys=True)]
    if speculates(entry, cfg):
        # Our scheduler subclasses the synchronous Scheduler; vLLM would otherwise pick
        # async scheduling on GPUs for some drafters and bypass it.
        argv += ["--speculative-config", json.dumps(speculative_config(cfg), sort_keys=True),
                 "--scheduler-cls", SPEC_SCHEDULER_CLS, "--no-async-scheduling"]
    return argv + list(entry.extra_args)


def engine_env(lane_id: int, entry: EngineEntry, cfg: LiveConfig, base: dict[str, str],
               k_trace: Path | None) -> dict[str, str]:
    env = dict(base)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)
    if cfg.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in entry.devices)
        if cfg.disaggregated and cfg.connector == "NixlConnector":
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(NIXL_SIDE_CHANNEL_BASE + lane_id)
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
    else:
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        threads = entry.cpu_threads or 1
        env["OMP_NUM_THREADS"] = str(threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    if speculates(entry, cfg):
        policy = cfg.spec_policy.model_dump()
        perf = cfg.perf.model_dump()
        if perf["profile"] is not None:  # the engine may run elsewhere than the config's folder
            perf["profile"] = str(Path(perf["profile"]).resolve())
        env[ENV_SPEC_POLICY] = json.dumps({
            "lane_id": lane_id, "tp": entry.tp, "policy": policy,
            "perf": perf, "draft": cfg.draft_profile_name,
        }, sort_keys=True)
        if k_trace is not None:
            env[ENV_K_TRACE] = str(k_trace)
            if cfg.profile_steps:
                env[ENV_STEP_LOG] = str(k_trace.with_name(f"steps-lane{lane_id}.jsonl"))
    return env


def engine_specs(cfg: LiveConfig, base_env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> list[EngineSpec]:
    """The resolved start recipe of every engine in ``cfg``, in lane order."""
    base = dict(os.environ if base_env is None else base_env)
    logs = Path(log_dir or cfg.log_dir)
    python = cfg.python or sys.executable
    specs = []
    for lane_id, entry in enumerate(cfg.engines):
        k_trace = logs / f"k-trace-lane{lane_id}.jsonl" if speculates(entry, cfg) else None
        specs.append(EngineSpec(
            lane_id=lane_id, entry=entry,
            argv=engine_command(lane_id, entry, cfg, python),
            env=engine_env(lane_id, entry, cfg, base, k_trace),
            log_path=logs / f"engine-{lane_id}-{entry.role}.log",
            k_trace_path=k_trace,
        ))
    return specs


# ---------------------------------------------------------------- supervision
def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_ERROR_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception): \S")


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of an engine log, preceded by its first error line: vLLM prints
    the root cause in the engine-core process long before the API server's own trace."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    tail = text[-lines:]
    first = next((line for line in text if _ERROR_LINE.search(line) and "WARNING" not in line), None)
    cause = f"first error: {first.strip()}\n...\n" if first is not None and first not in tail else ""
    return cause + "\n".join(tail)


def check_model(model: str) -> None:
    p = Path(resolve_model(model))
    if not (p / "config.json").is_file():
        hint = f" (run `streamserve models prepare {model}`)" if p.name in ("tiny", "smollm2") else ""
        raise EngineError(f"model {model!r}: no config.json in {p}{hint}")


@dataclass
class Engine:
    """One running engine process (and, through its process group, its children)."""

    spec: EngineSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)
    _reaped: bool = False

    @property
    def lane_id(self) -> int:
        return self.spec.lane_id

    @property
    def url(self) -> str:
        return self.spec.url

    def start(self) -> None:
        port = self.spec.entry.port
        if not port_free(port):
            raise EngineError(f"engine {self.lane_id} ({self.spec.entry.role}): port {port} is already in use")
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.spec.k_trace_path is not None:
            self.spec.k_trace_path.unlink(missing_ok=True)
        if ENV_STEP_LOG in self.spec.env:
            Path(self.spec.env[ENV_STEP_LOG]).unlink(missing_ok=True)
        self._log = open(self.spec.log_path, "ab")
        self.proc = subprocess.Popen(self.spec.argv, env=self.spec.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.started_at = time.monotonic()
        self._reaped = False

    def alive(self) -> bool:
        """Whether the engine's API server runs. Once it has died, its whole process
        group (vLLM's EngineCore and workers, which outlive it) is killed at once, so a
        dead engine holds no memory, device or port until shutdown."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        if not self._reaped:
            self._reaped = True
            _signal_group(self.proc.pid, signal.SIGKILL)
            if self._log is not None:
                self._log.close()
                self._log = None
        return False

    def restart(self, timeout: float) -> None:
        """Stop what is left of the engine, start it again with the same command, and
        wait until it answers ``/health`` (the front end then takes its lane back)."""
        self.stop(grace=5.0)
        self.restarts += 1
        self.start()
        self.wait_ready(time.monotonic() + timeout)

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _fail(self, what: str) -> EngineError:
        return EngineError(f"engine {self.lane_id} ({self.spec.entry.role}, port {self.spec.entry.port}) "
                           f"{what}; log {self.spec.log_path}:\n{log_tail(self.spec.log_path)}")

    def wait_ready(self, deadline: float) -> None:
        while True:
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise self._fail(f"exited with code {code} during start-up")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise self._fail("did not become healthy before the start-up timeout")
            time.sleep(1.0)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the engine's process group, then SIGKILL what is left after ``grace``."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)  # children of a finished leader may linger
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Hard-kill the whole engine at once (used to test lane failure)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class EngineSet:
    """All engines of one deployment: started together, stopped together."""

    def __init__(self, specs: list[EngineSpec]) -> None:
        self.engines = [Engine(spec) for spec in specs]
        self._restarting: set[int] = set()  # lanes whose engine a supervisor thread is restarting
        self._reported: set[int] = set()  # lanes whose engine's death was reported and not yet undone

    @classmethod
    def from_config(cls, cfg: LiveConfig, log_dir: Path | None = None) -> "EngineSet":
        check_model(cfg.model)
        if cfg.speculation.method == "draft":
            check_model(cfg.speculation.draft_model or "")
        return cls(engine_specs(cfg, log_dir=log_dir))

    def start(self, timeout: float) -> None:
        """Start every engine and wait until all answer /health; on any failure stop all."""
        try:
            for engine in self.engines:
                engine.start()
            deadline = time.monotonic() + timeout
            for engine in self.engines:
                engine.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for engine in self.engines:
            if engine.proc is not None and engine.alive():
                _signal_group(engine.proc.pid, signal.SIGTERM)  # all at once, then wait each
        for engine in self.engines:
            engine.stop()

    def supervise(self, restart: bool, timeout: float, echo=print) -> None:
        """One look at every engine: reap the process group of one whose API server died
        and, with ``restart``, start it again in a thread of its own (the front end
        serves from the other lanes meanwhile)."""
        for engine in self.engines:
            if engine.lane_id in self._restarting or engine.proc is None or engine.alive():
                continue
            if engine.lane_id in self._reported:
                continue
            self._reported.add(engine.lane_id)
            echo(f"engine {engine.lane_id} ({engine.spec.entry.role}) exited with code {engine.proc.returncode}; "
                 f"its process group was reaped" + ("; restarting it" if restart else ""))
            if restart:
                self._restarting.add(engine.lane_id)
                threading.Thread(target=self._restart, args=(engine, timeout, echo), daemon=True).start()

    def _restart(self, engine: Engine, timeout: float, echo) -> None:
        try:
            engine.restart(timeout)
            echo(f"engine {engine.lane_id} ({engine.spec.entry.role}) is back")
            self._reported.discard(engine.lane_id)
        except EngineError as e:
            echo(f"restarting engine {engine.lane_id} failed: {e}")
        finally:
            self._restarting.discard(engine.lane_id)

    def __enter__(self) -> "EngineSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
