"""Baseline speculation-depth policies."""
from __future__ import annotations

from mypy_extensions import mypyc_attr

from streamserve.policies.base import SpecPolicy


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class FixedDepth(SpecPolicy):
    """The same k every step (k=0: no speculation), as vLLM's static config does."""

    name = "fixed"

    def __init__(self, k_max: int, k: int = 4) -> None:
        if k < 0:
            raise ValueError(f"k: must be >= 0, got {k}")
        self.k_max = k_max
        self.k = min(k, k_max)

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        return self.k


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class NoSpeculation(SpecPolicy):
    """Plain decoding: k = 0 every step."""

    name = "none"

    def __init__(self, k_max: int = 0) -> None:
        self.k_max = k_max

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        return 0


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class BatchSizeTable(SpecPolicy):
    """k looked up from the batch size, as vLLM's ``num_speculative_tokens_per_batch_size``.

    ``table`` is a list of ``[low, high, k]`` (batch sizes ``low..high`` inclusive use
    ``k``); batch sizes no row covers use ``k_max`` (vLLM's ``num_speculative_tokens``).
    The default shrinks k as the batch grows, the usual shape of such schedules: deep
    drafts when decoding is memory-bound, none once verification is compute-bound.
    """

    name = "batch_table"
    DEFAULT_TABLE = ((1, 4, 5), (5, 16, 4), (17, 48, 3), (49, 96, 2), (97, 1 << 30, 0))

    def __init__(self, k_max: int, table: list[list[int]] | None = None) -> None:
        rows = [tuple(r) for r in (table if table is not None else self.DEFAULT_TABLE)]
        for i, row in enumerate(rows):
            if len(row) != 3 or not all(isinstance(x, int) for x in row):
                raise ValueError(f"table[{i}]: expected [low, high, k] integers, got {list(row)}")
            low, high, k = row
            if low < 1 or high < low or k < 0:
                raise ValueError(f"table[{i}]: need 1 <= low <= high and k >= 0, got {list(row)}")
        self.k_max = k_max
        self.table = [(low, high, min(k, k_max)) for low, high, k in sorted(rows)]

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        for low, high, k in self.table:
            if low <= batch_size <= high:
                return k
        return self.k_max
