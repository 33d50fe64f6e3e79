"""Start, watch and stop vLLM engines as child processes, one per lane.

Command lines and environments come from the pure functions of ``engine_args``; this
module runs them. Each engine runs in its own process group: vLLM forks engine-core
and worker processes, and killing the group is the only way to be sure none of them
outlives a shutdown.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streamserve.gpu.config import MODEL_DRAFTERS, LiveConfig
from streamserve.gpu.engine_args import ENV_STEP_LOG, EngineSpec, busy_ports, engine_specs, resolve_model


class EngineError(RuntimeError):
    """An engine could not start or died; the message carries the cause and its log tail."""


# ---------------------------------------------------------------- supervision
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
        busy = busy_ports(self.spec)  # the HTTP port, then any NIXL side channels
        if busy:
            raise EngineError(f"engine {self.lane_id} ({self.spec.entry.role}): port {busy[0]} is already in use")
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
        if cfg.speculation.method in MODEL_DRAFTERS:
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
