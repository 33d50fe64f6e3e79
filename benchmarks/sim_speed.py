"""How fast the simulator runs, and how its memory grows with the trace; optionally the
same measurement for several source trees side by side (e.g. a branch against main).

    python benchmarks/sim_speed.py [--requests 100000] [--arch streamserve] [--trees . ../main] [--rounds 2]

1. Capacity: a short closed-loop run with far more clients than the cluster can serve
   gives the saturated request throughput (measured with the first tree; every tree then
   simulates the same workload).
2. Load: Poisson arrivals at 70% of that, Azure-conversation-like lengths (the default
   synthetic workload: median prompt ~1k tokens, median output ~130 tokens).
3. Each run is simulated in a fresh process (``PYTHONPATH`` set to its tree), so peak
   RSS is that run's own; the per-request slope of RSS against trace length shows what
   memory grows with. With several trees the runs alternate between them, ``--rounds``
   times, so a noisy machine's drift hits every tree alike.
Prints a table and writes ``sim_speed.json`` to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _cluster(arch: str, config: str | None):
    from streamserve.config import builtin_cluster, load_cluster

    return load_cluster(config) if config else builtin_cluster(arch)


def _capacity(arch: str, config: str | None) -> dict:
    import streamserve
    from streamserve.metrics import summarize
    from streamserve.sim import run
    from streamserve.workload.synthetic import synthetic

    result = run(_cluster(arch, config), synthetic(3000, None, 11, concurrency=256), seed=11)
    return {"capacity_req_s": float(summarize(result)["request_throughput"]), "compiled": streamserve.COMPILED}


def _one(arch: str, config: str | None, n: int, rate: float) -> dict:
    import streamserve
    from streamserve.metrics import summarize
    from streamserve.sim import run
    from streamserve.workload.synthetic import synthetic

    workload = synthetic(n, rate, 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(_cluster(arch, config), workload, seed=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary = summarize(result)
    return {
        "requests": n, "wall_s": wall, "sim_requests_per_s": n / wall, "compiled": streamserve.COMPILED,
        # CPU seconds of this process: what a shared machine's other jobs inflate least
        "cpu_s": cpu, "sim_requests_per_cpu_s": n / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_run_mb": rss0 / 1024,
        "simulated_s": result.duration, "completed": summary["completed"],
        "mean_ttft_ms": summary["mean_ttft_ms"], "p99_e2el_ms": summary["p99_e2el_ms"],
        "lane_utilisation": [round(ln["utilisation"], 3) for ln in summary["lanes"]],
    }


def _in_tree(tree: str | None, call: str, *args: object) -> dict:
    """Run ``call(*args)`` of this script in a fresh interpreter whose streamserve is ``tree``'s."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import sim_speed; "
            f"print(json.dumps(sim_speed.{call}(*{args!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd="/" if tree is not None else None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--arch", default="streamserve")
    ap.add_argument("--config", help="a cluster file instead of a built-in architecture")
    ap.add_argument("--load", type=float, default=0.7)
    ap.add_argument("--trees", nargs="+", help="source trees to compare (default: the streamserve this Python imports)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--machine", default="", help="what the figures were measured on, for the JSON")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    config = str(Path(args.config).resolve()) if args.config else None

    trees: list[str | None] = list(args.trees) if args.trees else [None]
    first = _in_tree(trees[0], "_capacity", args.arch, config)
    capacity = first["capacity_req_s"]
    rate = args.load * capacity
    print(f"{args.config or args.arch}: saturated throughput {capacity:.2f} req/s; simulating at {rate:.2f} req/s ({args.load:.0%})")
    sizes = sorted({args.requests // 4, args.requests // 2, args.requests})
    rows = []
    for rnd in range(args.rounds):
        for n in sizes:
            for tree in trees:
                r = _in_tree(tree, "_one", args.arch, config, n, rate)
                r.update(tree=tree or "installed", round=rnd,
                         hot_path="compiled (mypyc)" if r["compiled"] else "plain Python")
                rows.append(r)
                print(f"{r['tree']:>24} [{r['hot_path']}] {n:>8} requests: {r['wall_s']:6.2f} s wall, "
                      f"{r['sim_requests_per_s']:8.0f} req/s, {r['sim_requests_per_cpu_s']:8.0f} req/CPU-s, peak RSS {r['peak_rss_mb']:6.1f} MB, "
                      f"simulated {r['simulated_s']:.0f} s, lanes busy {r['lane_utilisation']}", flush=True)
    per_tree = {}
    for tree in trees:
        mine = [r for r in rows if r["tree"] == (tree or "installed")]
        big = [r for r in mine if r["requests"] == sizes[-1]]
        small = [r for r in mine if r["requests"] == sizes[0]]
        slope = None
        if len(sizes) > 1:
            slope = (min(r["peak_rss_mb"] for r in big) - min(r["peak_rss_mb"] for r in small)) * 1024 / (
                sizes[-1] - sizes[0])
        per_tree[tree or "installed"] = {
            "hot_path": mine[0]["hot_path"],
            "best_req_s": max(r["sim_requests_per_s"] for r in big),
            "median_req_s": sorted(r["sim_requests_per_s"] for r in big)[len(big) // 2],
            "best_req_per_cpu_s": max(r["sim_requests_per_cpu_s"] for r in big),
            "rss_kb_per_request": slope,
        }
        t = per_tree[tree or "installed"]
        print(f"{tree or 'installed'}: {sizes[-1]} requests, best {t['best_req_s']:.0f} req/s, "
              f"median {t['median_req_s']:.0f} req/s, best {t['best_req_per_cpu_s']:.0f} req/CPU-s [{t['hot_path']}]"
              + (f"; RSS grows {slope:.2f} KB per request" if slope is not None else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "sim_speed.json" if not args.config else f"sim_speed-{Path(args.config).stem}.json"
    (out / name).write_text(json.dumps(
        {"arch": args.arch, "config": args.config, "machine": args.machine, "load": args.load,
         "capacity_req_s": capacity, "rate_req_s": rate, "rounds": args.rounds, "trees": per_tree, "runs": rows},
        indent=2) + "\n")
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
