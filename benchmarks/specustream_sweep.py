"""SpecuStream against every fixed speculation depth, across load and burstiness.

    nice python benchmarks/specustream_sweep.py [--seeds 5] [--n 2000] [--out benchmarks/results]
        [--loads 0.4,0.7,0.9] [--arrivals poisson,gamma]

The paper's setup on the roofline step model: ``model: llama-3-8b`` on four A800-40GB
(the built-in ``streamserve`` architecture: two stream pairs, StreamScheduler, FlowGuard),
the paper's four datasets in equal parts (``mix``). For each draft method (``eagle``, the
default, and ``draft``, a Llama-3.2-1B draft model), each load (40%, 70%, 90% of the
capacity) and each arrival process (Poisson; gamma with coefficient of variation 3), every
policy runs on the same requests: ``fixed`` k = 0..k_max and ``specustream``. Capacity is
measured once per method: a closed loop of 256 clients under SpecuStream.
``--workload alpaca`` runs the same sweep on a decode-heavy workload (short prompts),
where the decode batch crosses the memory/compute knee under load. Goodput is
requests per second meeting the SLO, under the default (TTFT 1 s, TPOT 50 ms) and the
tight (TTFT 1 s, TPOT 15 ms) SLO of ``streamserve.experiments.ablate``. Writes
``specustream_sweep.json`` (every run) and ``specustream_sweep.md`` (mean and standard
deviation over seeds; SpecuStream's goodput against the best single fixed k).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import streamserve
from streamserve.config import ClusterConfig, builtin_cluster
from streamserve.experiments.ablate import DEFAULT_SLO, TIGHT_SLO, mean_k
from streamserve.metrics import summarize
from streamserve.sim import run
from streamserve.workload.resolve import resolve_workload

LOADS = (0.4, 0.7, 0.9)
ARRIVALS = (("poisson", None), ("gamma", 3.0))
MODEL, GPU, K_MAX = "llama-3-8b", "A800-40GB", 8


def cluster(method: str, policy: dict) -> ClusterConfig:
    base = builtin_cluster("streamserve")
    spec = base.speculation.model_copy(update={"method": method, "draft_model": "small-model", "k_max": K_MAX})
    return base.model_copy(update={"model": MODEL, "gpu": GPU, "speculation": spec,
                                   "spec_policy": base.spec_policy.model_validate(policy)})


POLICIES = [("specustream", {"name": "specustream"})] + [(f"k={k}", {"name": "fixed", "k": k}) for k in range(K_MAX + 1)]


def sweep(methods: list[str], seeds: int, n: int, workload: str = "mix", save: Path | None = None,
          loads: tuple[float, ...] = LOADS, arrivals: tuple[tuple[str, float | None], ...] = ARRIVALS) -> dict:
    runs: list[dict] = []
    caps: dict[str, float] = {}
    data = {"model": MODEL, "gpu": GPU, "workload": workload, "k_max": K_MAX, "n": n, "seeds": seeds, "capacity_rps": caps,
            "slo": {"default": [DEFAULT_SLO.ttft, DEFAULT_SLO.tpot], "tight": [TIGHT_SLO.ttft, TIGHT_SLO.tpot]},
            "machine": f"{platform.node()}: 2 shared cores, no GPU (noisy)",
            "hot_path": "compiled (mypyc)" if streamserve.COMPILED else "plain Python", "runs": runs}
    for method in methods:
        closed = resolve_workload(workload, num_requests=2000, concurrency=256, seed=1)
        caps[method] = cap = float(summarize(run(cluster(method, {"name": "specustream"}), closed, 0))["request_throughput"])
        for load in loads:
            for arrival, cv in arrivals:
                for seed in range(seeds):
                    wl = resolve_workload(workload, num_requests=n, rate=load * cap, arrival=arrival, cv=cv, seed=100 + seed)
                    wl.slo = DEFAULT_SLO
                    for name, policy in POLICIES:
                        t0 = time.perf_counter()
                        result = run(cluster(method, policy), wl, seed)
                        s, tight = summarize(result, DEFAULT_SLO), summarize(result, TIGHT_SLO)
                        runs.append({"method": method, "load": load, "arrival": arrival, "cv": cv, "seed": seed,
                                     "policy": name, "goodput": s["request_goodput"],
                                     "goodput_tight": tight["request_goodput"], "mean_tpot_ms": s["mean_tpot_ms"],
                                     "p99_ttft_ms": s["p99_ttft_ms"], "mean_k": mean_k(result),
                                     "wall_s": time.perf_counter() - t0})
                    print(method, load, arrival, seed, flush=True)
                if save is not None:  # what is done so far, so a long sweep can be reported part-way
                    save.write_text(json.dumps(data, indent=1) + "\n")
    return data


def _stats(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def report(data: dict) -> str:
    lines = [f"# SpecuStream vs fixed k: {data['model']} on 4 x {data['gpu']}, {data.get('workload', 'mix')} workload",
             "", f"Written by benchmarks/specustream_sweep.py ({data['n']} requests x {data['seeds']} seeds per "
             f"setting; capacity {', '.join(f'{m}: {c:.2f} req/s' for m, c in data['capacity_rps'].items())}; "
             f"{data['machine']}). Goodput in requests/s meeting the SLO, mean +- standard deviation over seeds. "
             "'best fixed' is the single k with the highest mean goodput in that row.", ""]
    lines += ["'one k' is the single fixed k with the highest goodput summed over all rows of that method "
              "and SLO (what an operator who must pick one k for every load would choose).", ""]
    for slo_key, label in (("goodput", "default SLO (TTFT 1 s, TPOT 50 ms)"), ("goodput_tight", "tight SLO (TTFT 1 s, TPOT 15 ms)")):
        lines += [f"## {label}", "",
                  "| method | load | arrivals | SpecuStream | mean k | best fixed | its goodput | SpecuStream vs best fixed "
                  "| one k | SpecuStream vs one k | k=0 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted({(r["method"], r["load"], r["arrival"]) for r in data["runs"]})
        one_k = {}
        for method in {m for m, _, _ in keys}:
            total: dict[str, float] = {}
            for r in data["runs"]:
                if r["method"] == method and r["policy"] != "specustream":
                    total[r["policy"]] = total.get(r["policy"], 0.0) + r[slo_key]
            one_k[method] = max(total, key=lambda p: total[p])
        for method, load, arrival in keys:
            rows = [r for r in data["runs"] if (r["method"], r["load"], r["arrival"]) == (method, load, arrival)]
            by = {}
            for r in rows:
                by.setdefault(r["policy"], []).append(r[slo_key])
            spec = _stats(by["specustream"])
            fixed = {p: _stats(v) for p, v in by.items() if p != "specustream"}
            best = max(fixed, key=lambda p: fixed[p][0])
            ks = [r["mean_k"] for r in rows if r["policy"] == "specustream" and r["mean_k"] is not None]
            gain = (spec[0] / fixed[best][0] - 1) * 100 if fixed[best][0] > 0 else float("nan")
            arr = "Poisson" if arrival == "poisson" else "gamma CV 3"
            one = one_k[method]
            gain_one = (spec[0] / fixed[one][0] - 1) * 100 if fixed[one][0] > 0 else float("nan")
            lines.append(f"| {method} | {load:.0%} | {arr} | {spec[0]:.3f} +- {spec[1]:.3f} | "
                         f"{statistics.fmean(ks) if ks else 0:.1f} | {best} | {fixed[best][0]:.3f} +- {fixed[best][1]:.3f} | "
                         f"{gain:+.1f}% | {one} | {gain_one:+.1f}% | {fixed['k=0'][0]:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--methods", default="eagle,draft")
    ap.add_argument("--workload", default="mix", help="a named workload (mix, alpaca, ...)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--loads", default=",".join(str(x) for x in LOADS), help="fractions of capacity")
    ap.add_argument("--arrivals", default="poisson,gamma", help="poisson and/or gamma (CV 3)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "specustream_sweep" if args.workload == "mix" else f"specustream_sweep_{args.workload}"
    if args.report_only:
        data = json.loads((out / f"{stem}.json").read_text())
    else:
        arrivals = tuple(a for a in ARRIVALS if a[0] in args.arrivals.split(","))
        if not arrivals or set(args.arrivals.split(",")) - {a for a, _ in ARRIVALS}:
            ap.error(f"--arrivals: {args.arrivals!r} (choose from poisson, gamma)")
        loads = tuple(float(x) for x in args.loads.split(","))
        data = sweep(args.methods.split(","), args.seeds, args.n, args.workload, out / f"{stem}.json", loads, arrivals)
        (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report(data) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
