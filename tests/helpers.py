"""Small builders shared by the tests."""
from __future__ import annotations

import numpy as np

from streamserve.config import ClusterConfig, builtin_cluster
from streamserve.workload.base import Workload


def workload(prompts, outputs, arrivals, alpha: float = 0.7, datasets=("default",), codes=None) -> Workload:
    n = len(prompts)
    return Workload(
        name="test", prompt_len=np.asarray(prompts, dtype=np.int64), output_len=np.asarray(outputs, dtype=np.int64),
        arrival=np.asarray(arrivals, dtype=np.float64),
        dataset=np.zeros(n, dtype=np.int16) if codes is None else np.asarray(codes, dtype=np.int16),
        datasets=tuple(datasets), alpha={d: alpha for d in datasets})


def cluster(arch: str, **changes) -> ClusterConfig:
    """A built-in architecture with some top-level fields replaced (validated again)."""
    data = builtin_cluster(arch).model_dump()
    data.update(changes)
    return ClusterConfig.model_validate(data)
