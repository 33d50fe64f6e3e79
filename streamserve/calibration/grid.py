"""The profiling grid: which request shapes to send so that every term of the step
model is exercised (``streamserve.perfmodel``).

* ``prefill``: one prompt at a time over a range of lengths (``overhead``, ``per_token``,
  the knee between ``weights`` and ``compute_per_token``, ``attn_sq``), each also a KV
  hand-off of that many tokens on a disaggregated deployment;
* ``batch``: several prompts at once (batched prefill: the same terms at larger ``T``
  with ``P2`` a sum over prompts rather than one square);
* ``decode``: ``B`` requests at once with long outputs, at two prompt lengths, so decode
  steps cover batch sizes and contexts (``per_ctx``); with speculation the decode
  engine's scheduler cycles k through ``0..k_max`` step by step (``kcycle.py``), so every
  depth is measured at every batch size, for prose and code prompts alike (acceptance is
  fitted per class);
* ``contend`` (deployments of several engines): requests arriving one every ``spacing``
  times the measured time to first token of a single prompt of that length, so that
  each engine steps while the others do: how much engines sharing a machine slow each
  other (the fit's ``contention`` term). Every other cell is a burst, sent at once; a
  profile run prefills a whole burst before it decodes any of it (``gather.py``), so those
  steps run one engine at a time and measure the step model alone.

A cell is ``requests`` requests sent by ``concurrency`` clients, or (``spacing`` > 0)
sent open loop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SIZES = ("ci", "small", "full")


@dataclass(frozen=True, slots=True)
class Cell:
    id: str
    phase: str  # prefill | batch | decode
    prompt_len: int
    output_len: int
    concurrency: int
    requests: int
    dataset: str  # prompt class: "prose" or "code" (see gpu/prompts.py)
    spacing: float = 0.0  # > 0: open loop, one request per spacing x a single prompt's measured TTFT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lengths(lo: int, hi: int) -> list[int]:
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return out


def build_grid(max_model_len: int, max_num_seqs: int, speculation: bool, size: str = "full",
               engines: int = 1) -> list[Cell]:
    """The cells of a profile run, in the order they run (cheap first, so an early look
    at a partial run already covers every phase)."""
    if size not in SIZES:
        raise ValueError(f"grid size must be one of {', '.join(SIZES)}, got {size!r}")
    longest = max(16, min(max_model_len // 2, {"ci": 256, "small": 512, "full": 1024}[size]))
    reps = {"ci": 1, "small": 2, "full": 3}[size]
    decode_out = {"ci": 16, "small": 32, "full": 48}[size]
    batches = [b for b in _lengths(1, {"ci": 4, "small": 16, "full": 32}[size]) if b <= max_num_seqs]
    classes = ("prose", "code") if speculation else ("prose",)
    cells: list[Cell] = []
    for rep in range(reps):
        for length in _lengths(16, longest):
            # prose: code tokenizes at about half the characters per token, and a long code
            # prompt would pass the context window (the class does not change a prefill's time)
            cells.append(Cell(f"prefill-{length}-r{rep}", "prefill", length, 2, 1, 1, "prose"))
    batch_lengths = [n for n in _lengths(32, longest) if n in ((32, 128, 512) if size == "full" else (32, 128))] or [32]
    for m in (2, 4) if size == "ci" else (2, 4, 8):
        if m > max_num_seqs:
            continue
        for length in batch_lengths:
            cells.append(Cell(f"batch-{m}x{length}", "batch", length, 2, m, m, "prose"))
    contexts = [64, min(512 if size == "full" else 256, max_model_len // 2)]
    for b in batches:
        for ctx in contexts:
            if ctx + decode_out > max_model_len:
                continue
            # acceptance per class is measured at the short context; the long one adds context only
            for dataset in classes if ctx == contexts[0] or size == "full" else classes[:1]:
                cells.append(Cell(f"decode-{b}x{ctx}-{dataset}", "decode", ctx, decode_out, b, b, dataset))
    if engines > 1:
        n = {"ci": 6, "small": 16, "full": 24}[size]
        for length in (64,) if size == "ci" else (64, 256):
            if length <= longest:  # a prefill cell of that length measures the spacing
                cells.append(Cell(f"contend-{length}", "contend", length, decode_out, 1, n, "prose", spacing=1.25))
    return cells
