"""What the simulated lanes report for metrics: inter-token gaps and speculation depth.

The recorder is the one owner of these buffers; lanes add to them through its methods
and the cluster reads the totals at the end. Inter-token gaps number one per decoding
sequence per step, so a decode step's lockstep sequences are kept as one
(gap, count) entry, in two flat lists (no tuple per step for the allocator and the
garbage collector to handle), and folded into a ``LogHistogram`` in bulk.
"""
from __future__ import annotations

import numpy as np

from streamserve.metrics import LogHistogram

ITL_FLUSH = 1 << 16


class Recorder:
    def __init__(self) -> None:
        self.itl = LogHistogram()
        self._gaps: list[float] = []  # gaps recorded one by one
        # (gap, count) of each decode step's lockstep sequences, as two parallel lists
        self._bulk_gaps: list[float] = []
        self._bulk_counts: list[int] = []
        self.k_trace: list[tuple[float, int, int]] = []  # (time, lane, k) at each change of k

    def gap(self, seconds: float) -> None:
        self._gaps.append(seconds)

    def lockstep(self, seconds: float, count: int) -> None:
        self._bulk_gaps.append(seconds)
        self._bulk_counts.append(count)

    def k_changed(self, now: float, lane_id: int, k: int) -> None:
        self.k_trace.append((now, lane_id, k))

    def maybe_flush(self) -> None:
        if len(self._bulk_gaps) > ITL_FLUSH:
            self.flush()

    def flush(self) -> None:
        self.itl.add_many(np.asarray(self._gaps, dtype=np.float64))
        self._gaps.clear()
        if self._bulk_gaps:
            self.itl.add_counts(np.asarray(self._bulk_gaps, dtype=np.float64),
                                np.asarray(self._bulk_counts, dtype=np.int64))
            self._bulk_gaps.clear()
            self._bulk_counts.clear()
