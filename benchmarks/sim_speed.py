"""How fast the simulator runs, and how its memory grows with the trace.

    python benchmarks/sim_speed.py [--requests 100000] [--arch streamserve] [--out results/bench]

1. Capacity: a short closed-loop run with far more clients than the cluster can serve
   gives the saturated request throughput.
2. Load: Poisson arrivals at 70% of that, Azure-conversation-like lengths (the default
   synthetic workload: median prompt ~1k tokens, median output ~130 tokens).
3. Each run size is simulated in a fresh process, so peak RSS is that run's own; the
   per-request slope of RSS against trace length shows what memory grows with.
Prints a table and writes ``sim_speed.json`` to --out.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path


def _cluster(arch: str, config: str | None):
    from streamserve.config import builtin_cluster, load_cluster

    return load_cluster(config) if config else builtin_cluster(arch)


def _capacity(arch: str, config: str | None) -> float:
    from streamserve.metrics import summarize
    from streamserve.sim import run
    from streamserve.workload.synthetic import synthetic

    result = run(_cluster(arch, config), synthetic(3000, None, 11, concurrency=256), seed=11)
    return float(summarize(result)["request_throughput"])


def _one(arch: str, config: str | None, n: int, rate: float, queue: mp.Queue) -> None:
    from streamserve.metrics import summarize
    from streamserve.sim import run
    from streamserve.workload.synthetic import synthetic

    workload = synthetic(n, rate, 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = run(_cluster(arch, config), workload, seed=1)
    wall = time.perf_counter() - t0
    summary = summarize(result)
    queue.put({
        "requests": n, "wall_s": wall, "sim_requests_per_s": n / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_run_mb": rss0 / 1024,
        "simulated_s": result.duration, "completed": summary["completed"],
        "mean_ttft_ms": summary["mean_ttft_ms"], "p99_e2el_ms": summary["p99_e2el_ms"],
        "lane_utilisation": [round(ln["utilisation"], 3) for ln in summary["lanes"]],
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--arch", default="streamserve")
    ap.add_argument("--config", help="a cluster file instead of a built-in architecture")
    ap.add_argument("--load", type=float, default=0.7)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()

    import streamserve

    hot_path = "compiled (mypyc)" if streamserve.COMPILED else "plain Python"
    print(f"hot path: {hot_path}")
    capacity = _capacity(args.arch, args.config)
    rate = args.load * capacity
    print(f"{args.config or args.arch}: saturated throughput {capacity:.2f} req/s; simulating at {rate:.2f} req/s ({args.load:.0%})")
    rows = []
    ctx = mp.get_context("spawn")
    for n in sorted({args.requests // 4, args.requests // 2, args.requests}):
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_one, args=(args.arch, args.config, n, rate, q))
        p.start()
        rows.append(q.get())
        p.join()
        r = rows[-1]
        print(f"{n:>8} requests: {r['wall_s']:6.2f} s wall, {r['sim_requests_per_s']:8.0f} req/s, "
              f"peak RSS {r['peak_rss_mb']:6.1f} MB, simulated {r['simulated_s']:.0f} s, "
              f"lanes busy {r['lane_utilisation']}")
    if len(rows) > 1:
        slope = (rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]) * 1024 / (rows[-1]["requests"] - rows[0]["requests"])
        print(f"RSS grows by {slope:.2f} KB per request (the per-request records)")
    else:
        slope = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "sim_speed.json" if not args.config else f"sim_speed-{Path(args.config).stem}.json"
    (out / name).write_text(json.dumps(
        {"arch": args.arch, "config": args.config, "hot_path": hot_path, "capacity_req_s": capacity, "rate_req_s": rate, "runs": rows,
         "rss_kb_per_request": slope}, indent=2) + "\n")
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
