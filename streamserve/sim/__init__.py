"""The SimPy runtime: a cluster model driven by the same policy objects as live serving."""
from __future__ import annotations

from typing import Callable

from streamserve.config import ClusterConfig
from streamserve.metrics import RunResult
from streamserve.request import Request
from streamserve.sim.cluster import Cluster, SimulationError
from streamserve.workload.base import Workload

__all__ = ["run", "Cluster", "SimulationError"]


def run(cluster: ClusterConfig, workload: Workload, seed: int = 0,
        on_settled: Callable[[Request, int], None] | None = None) -> RunResult:
    """Simulate ``workload`` on ``cluster``; deterministic for a given ``seed``.

    ``on_settled(request, n)`` is called once per request as it ends, ``n`` the number
    ended so far (for progress display, or to stream results out).
    """
    return Cluster(cluster, workload, seed, on_settled).run()
