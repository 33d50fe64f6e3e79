"""What one decode step of the simulator costs: the real ``SimLane`` step (planning,
acceptance sampling, per-class counts, the policy's depth and observation, ITL and k
bookkeeping) on a batch that only decodes and never finishes, with a fixed speculation
depth, so nothing but the step itself is timed.

With ``--event-every-step`` another process wakes about once per step, so steps end in
a SimPy timeout (a busy cluster); without it the lane runs ahead of the clock, as it
does whenever no other event is due before its step ends.

    python benchmarks/step_floor.py [--batch 8] [--steps 200000] [--k 5]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import simpy

from streamserve.config import EngineConfig
from streamserve.lanes import LaneRole
from streamserve.perfmodel import Profile
from streamserve.policies.speculation import FixedDepth
from streamserve.request import Request
from streamserve.sim.kv import Seq
from streamserve.sim.lane import SimLane
from streamserve.sim.record import Recorder


class _Host:
    """A host that has nothing to do: the batch never finishes."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def alpha_of(self, req: Request) -> float:
        return self.alpha

    def step_done(self, lane: SimLane, prefilled: list[Seq], finished: list[Seq], now: float) -> bool:
        raise AssertionError("no request may finish in this benchmark")

    def memory_freed(self, lane: SimLane) -> None:
        pass


def us_per_step(batch: int, steps: int, k: int = 5, alpha: float = 0.6, event_every_step: bool = False) -> float:
    env = simpy.Environment()
    perf = Profile.load().lane("opt-13b", "A100-80GB", 1, "small-model")
    engine = EngineConfig(max_num_seqs=max(batch, 1), kv_capacity_tokens=1 << 40)
    lane = SimLane(env, _Host(alpha), 0, LaneRole.DECODE, perf, engine, None, FixedDepth(k_max=k, k=k),
                   random.Random(1), Recorder(), kv_lease_s=30.0)
    for i in range(batch):
        req = Request(id=i, arrival=0.0, prompt_len=100, output_len=1 << 40)
        req.generated, req.first_token = 1, 0.0
        lane.enqueue_incoming(req)
        assert lane.reserve_next() is req
        lane.receive(req)
    dt = perf.step_time(0, 0.0, batch, 100 * batch, k)  # about one step: the lane's steps only grow
    if event_every_step:
        def ticker():
            while True:
                yield env.timeout(dt)

        env.process(ticker())
    env.run(until=10 * dt)
    start = lane.steps
    t0 = time.perf_counter()
    env.run(until=(steps + 10) * dt)
    wall = time.perf_counter() - t0
    return wall / (lane.steps - start) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--event-every-step", action="store_true")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    import streamserve

    hot_path = "compiled (mypyc)" if streamserve.COMPILED else "plain Python"
    us = us_per_step(args.batch, args.steps, args.k, event_every_step=args.event_every_step)
    mode = "a SimPy event every step" if args.event_every_step else "running ahead of the clock"
    print(f"hot path: {hot_path}; SimLane decode step, batch {args.batch}, k {args.k}, {mode}: {us:.2f} us")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_floor.json").write_text(json.dumps(
        {"batch": args.batch, "steps": args.steps, "k": args.k, "event_every_step": args.event_every_step,
         "hot_path": hot_path, "us_per_step": us}) + "\n")


if __name__ == "__main__":
    main()
