"""What the simulated lanes report for metrics: inter-token gaps and speculation depth.

The recorder is the one owner of these buffers; lanes add to them through its methods
and the cluster reads the totals at the end. Inter-token gaps number one per decoding
sequence per step, so a decode step's lockstep sequences are kept as one
``(gap, count)`` pair and folded into a ``LogHistogram`` in bulk.
"""
from __future__ import annotations

import numpy as np

from streamserve.metrics import LogHistogram

ITL_FLUSH = 1 << 16


class Recorder:
    def __init__(self) -> None:
        self.itl = LogHistogram()
        self._gaps: list[float] = []  # gaps recorded one by one
        self._bulk: list[tuple[float, int]] = []  # (gap, count): a decode step's lockstep sequences
        self.k_trace: list[tuple[float, int, int]] = []  # (time, lane, k) at each change of k

    def gap(self, seconds: float) -> None:
        self._gaps.append(seconds)

    def lockstep(self, seconds: float, count: int) -> None:
        self._bulk.append((seconds, count))

    def k_changed(self, now: float, lane_id: int, k: int) -> None:
        self.k_trace.append((now, lane_id, k))

    def maybe_flush(self) -> None:
        if len(self._bulk) > ITL_FLUSH:
            self.flush()

    def flush(self) -> None:
        self.itl.add_many(np.asarray(self._gaps, dtype=np.float64))
        self._gaps.clear()
        if self._bulk:
            gaps, counts = zip(*self._bulk)
            self.itl.add_counts(np.asarray(gaps), np.asarray(counts, dtype=np.int64))
            self._bulk.clear()
