"""Arrival processes: sorted arrival times in seconds for n requests."""
from __future__ import annotations

import numpy as np


def poisson(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exponential inter-arrival times at ``rate`` requests per second."""
    if rate <= 0:
        raise ValueError(f"rate: must be > 0 requests/s, got {rate}")
    return np.cumsum(rng.exponential(1.0 / rate, size=n))
