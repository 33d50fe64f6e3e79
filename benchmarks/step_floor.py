"""The floor under the simulator's decode step: the same per-sequence work as
``SimLane._decode_steps`` (one acceptance draw and a few updates per sequence, one SimPy
timeout per step) with policies that decide nothing. What the step model alone costs,
against which the real loop's policy calls and bookkeeping can be judged.

    python benchmarks/step_floor.py [--batch 8] [--steps 200000]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import simpy


class _Seq:
    __slots__ = ("left", "ctx", "log_alpha")

    def __init__(self, alpha: float) -> None:
        self.left = 1 << 60
        self.ctx = 0
        self.log_alpha = math.log(alpha)


def floor_us_per_step(batch: int, steps: int, k: int = 5, alpha: float = 0.6) -> float:
    env = simpy.Environment()
    dec = [_Seq(alpha) for _ in range(batch)]
    rnd, log = random.Random(1).random, math.log

    def loop():
        ctx = 0
        for _ in range(steps):
            added = 0
            for seq in dec:
                g = int(log(1.0 - rnd()) / seq.log_alpha)
                if g > k:
                    g = k
                left = seq.left
                tokens = g + 1 if g < left else left
                seq.left = left - tokens
                seq.ctx += tokens
                added += tokens
            ctx += added
            yield env.timeout(0.03 + 1e-6 * ctx)

    env.process(loop())
    t0 = time.perf_counter()
    env.run()
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    us = floor_us_per_step(args.batch, args.steps)
    print(f"bare decode step, batch {args.batch}: {us:.2f} us")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_floor.json").write_text(json.dumps({"batch": args.batch, "steps": args.steps, "us_per_step": us}) + "\n")


if __name__ == "__main__":
    main()
