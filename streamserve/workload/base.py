"""The column-wise request set every workload source produces.

A workload is a handful of numpy arrays, not a list of ``Request`` objects: a runtime
materialises each request only when it arrives, so a multi-million-row trace costs
arrays, not objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from streamserve.request import SLO, Request

DEFAULT_ALPHA = 0.7  # acceptance rate for datasets with no figure of their own


@dataclass
class Workload:
    name: str
    prompt_len: np.ndarray  # int64, tokens
    output_len: np.ndarray  # int64, tokens (>= 1)
    arrival: np.ndarray | None  # float64 seconds from the start, sorted; None: closed loop
    dataset: np.ndarray  # int16 codes into ``datasets``
    datasets: tuple[str, ...] = ("default",)
    alpha: dict[str, float] = field(default_factory=dict)  # speculative acceptance per dataset
    # Named datasets' acceptance per draft method (method -> tag -> alpha), for tags the
    # config did not override; ``alpha`` holds the default method's figure.
    alpha_by_method: dict[str, dict[str, float]] = field(default_factory=dict)
    concurrency: int | None = None  # closed loop: clients, each sends its next request on completion
    think_time: float = 0.0  # closed loop: seconds between a completion and the next send
    prompts: Sequence[str] | None = None
    hash_ids: Sequence[tuple[int, ...]] | None = None
    slo: SLO | None = None

    def __post_init__(self) -> None:
        n = len(self.prompt_len)
        if len(self.output_len) != n or len(self.dataset) != n:
            raise ValueError("workload columns differ in length")
        if self.arrival is None and not self.concurrency:
            raise ValueError("a workload needs arrival times or a concurrency")
        if self.arrival is not None and len(self.arrival) != n:
            raise ValueError("workload arrival column differs in length")

    def __len__(self) -> int:
        return len(self.prompt_len)

    def alpha_of(self, dataset: str, method: str | None = None) -> float:
        """Acceptance of ``dataset`` under draft ``method`` (default: the default method's)."""
        by_method = self.alpha_by_method.get(method or "", {})
        if dataset in by_method:
            return by_method[dataset]
        return self.alpha.get(dataset, self.alpha.get("default", DEFAULT_ALPHA))

    def request(self, i: int, arrival: float) -> Request:
        return Request(
            id=i, arrival=arrival,
            prompt_len=int(self.prompt_len[i]), output_len=int(self.output_len[i]),
            dataset=self.datasets[int(self.dataset[i])],
            slo=self.slo,
            prompt=None if self.prompts is None else self.prompts[i],
            hash_ids=None if self.hash_ids is None else self.hash_ids[i],
        )
