"""KV memory of one simulated engine, and the record of a request's life on it.

As nano-vllm keeps its block manager apart from its scheduler, a lane never does block
arithmetic itself: it asks its ``BlockPool`` to grow a sequence, to reserve room for KV
on its way in, or to free what a sequence held. The pool is the one owner of the block
count, so the count can only move through these methods.
"""
from __future__ import annotations

import math

from streamserve.request import Request

IN_STEP = -1.0  # ``Seq.last`` of a sequence whose last token came at the end of the previous step


def log_alpha(alpha: float) -> float:
    """ln(alpha), clamped so that ``int(log(u) / ln_alpha)`` samples the accepted run
    length for any alpha in [0, 1] without branches (0 -> none accepted, 1 -> all)."""
    if alpha <= 0.0:
        return -math.inf
    if alpha >= 1.0:
        return -1e-300
    return math.log(alpha)


class Seq:
    """A request's life on one lane (rebuilt when it moves or is preempted)."""

    __slots__ = ("req", "target", "computed", "blocks", "cap", "ctx", "left", "last", "log_alpha", "decoding",
                 "since", "pinned")

    def __init__(self, req: Request, log_alpha: float) -> None:
        self.req = req
        self.target = req.prompt_len + req.generated  # tokens to (re)compute: prompt and output so far
        self.computed = 0
        self.blocks = 0
        self.cap = 0  # blocks * block_size
        self.ctx = 0  # tokens in KV
        self.left = req.output_len - req.generated
        self.last = math.nan  # time of the request's latest token, when not IN_STEP
        self.log_alpha = log_alpha
        self.decoding = False
        self.since = 0.0  # prefill lanes: when its KV started waiting to be pulled
        self.pinned = False  # prefill lanes: its KV is being pulled, so its lease cannot end


class BlockPool:
    """Fixed-size KV blocks: how many exist, how many are used, and the high-water mark."""

    def __init__(self, capacity_tokens: int, block_size: int) -> None:
        if capacity_tokens < block_size:
            raise ValueError(f"KV capacity of {capacity_tokens} tokens is less than one block ({block_size})")
        self.block_size = block_size
        self.total = capacity_tokens // block_size
        self.used = 0
        self.peak = 0

    @property
    def free(self) -> int:
        return self.total - self.used

    @property
    def usage(self) -> float:
        return self.used / self.total

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def note_peak(self) -> None:
        """Record the high-water mark (called where a step has settled its memory)."""
        if self.used > self.peak:
            self.peak = self.used

    def grow(self, seq: Seq, tokens: int) -> bool:
        """Give ``seq`` room for ``tokens`` in all; False (nothing changed) if memory is short."""
        need = -(-tokens // self.block_size) - seq.blocks
        if need > self.total - self.used:
            return False
        seq.blocks += need
        seq.cap = seq.blocks * self.block_size
        self.used += need
        return True

    def release(self, seq: Seq) -> None:
        """Free everything ``seq`` holds."""
        self.used -= seq.blocks
        seq.blocks = 0
        seq.cap = 0

    def reserve(self, blocks: int) -> bool:
        """Set ``blocks`` aside for KV on its way in; False if they are not free."""
        if blocks > self.total - self.used:
            return False
        self.used += blocks
        return True

    def unreserve(self, blocks: int) -> None:
        self.used -= blocks

    def clear(self) -> None:
        """The engine died: all its memory is gone with it."""
        self.used = 0
