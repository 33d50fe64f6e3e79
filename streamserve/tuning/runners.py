"""Where runs execute: inline, a local process pool (``--workers``), or Ray tasks (``--ray``).

Every runner maps a module-level function over plain-data items and yields the results
as they complete; callers match results to items by the tag they carry, never by
order, so the answer does not depend on which run finished first. The function is the
same in all three (``evaluate.evaluate_run`` for ``tune``, ``placement.max_rate`` for
``plan``), which is what makes a trial's value independent of where it ran.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from streamserve.config import ClusterConfig
from streamserve.request import SLO
from streamserve.tuning.errors import TuningError
from streamserve.tuning.evaluate import RunResultValues, RunTask, WorkloadArgs, evaluate_run


class Runner(Protocol):
    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


class LocalPool:
    """A process pool over this machine's cores; ``workers=1`` runs in this process."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise TuningError(f"--workers: must be >= 1, got {workers}")
        self.workers = workers
        # spawn, not fork: the parent runs a progress-bar thread, and forking a threaded
        # process can deadlock; a worker pays one import of streamserve, once
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                      if workers > 1 else None)

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        if self._pool is None:
            for item in items:
                yield fn(item)
            return
        futures = [self._pool.submit(fn, item) for item in items]
        for f in as_completed(futures):
            yield f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class RayRunner:
    """Ray tasks on the cluster at ``address`` (``auto``: the one this machine belongs to).

    If Ray is already initialised in this process (a test, a notebook), that instance is
    used and left running. The cluster's workers import streamserve themselves, so it
    must be installed there (the same version as here).
    """

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise TuningError("--ray: Ray is not installed here (pip install 'streamserve[ray]')") from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise TuningError(f"--ray {address}: cannot connect to a Ray cluster ({e})") from None
        self._remote: dict[Callable[[Any], Any], Any] = {}
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        ray = self._ray
        remote = self._remote.setdefault(fn, ray.remote(num_cpus=1)(fn))
        pending = [remote.remote(item) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()


def make_runner(workers: int, ray_address: str | None) -> Runner:
    return RayRunner(ray_address) if ray_address else LocalPool(workers)


@dataclass
class Measured:
    """One configuration over seeds: each metric's per-seed values, in seed order, or
    the first error a run gave."""

    per_seed: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None


def measure(runner: Runner, configs: Mapping[Any, ClusterConfig], workload: WorkloadArgs, seeds: Sequence[int],
            slo: SLO, metrics: Sequence[str], rates: Mapping[int, float] | None = None,
            on_done: Callable[[Any, Measured], None] | None = None) -> dict[Any, Measured]:
    """Every configuration on every seed (``rates``: a rate per seed, else the
    workload's): the one loop behind tune's trials and validation and the benchmarks'
    comparisons. ``on_done(key, measured)`` is called as each configuration completes."""
    tasks = [RunTask(cfg.model_dump(), workload, seed, (slo.ttft, slo.tpot), tuple(metrics),
                     rate=None if rates is None else rates[seed], tag=(key, seed))
             for key, cfg in configs.items() for seed in seeds]
    got: dict[Any, dict[int, RunResultValues]] = {key: {} for key in configs}
    out: dict[Any, Measured] = {}
    for r in runner.imap(evaluate_run, tasks):
        key, seed = r.tag
        got[key][seed] = r
        if len(got[key]) == len(seeds):
            runs = [got[key][s] for s in seeds]
            errors = [x.error for x in runs if x.error]
            out[key] = (Measured(error=errors[0]) if errors
                        else Measured({m: [x.values[m] for x in runs] for m in metrics}))
            if on_done is not None:
                on_done(key, out[key])
    return {key: out[key] for key in configs}
