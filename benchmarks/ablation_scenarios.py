"""The ablation over every scenario and several seeds, with results recorded.

One ablation run is one workload draw; p99 latency of a few thousand requests moves by a
few percent from draw to draw, which is as large as some of the effects measured. This
script runs ``streamserve ablate``'s study for each scenario over ``--seeds`` seeds and
records the per-seed figures, their means, and in how many seeds full StreamServe beat
each ablation, in ``benchmarks/results/ablation_scenarios.{json,md}``.

    PYTHONPATH=. python benchmarks/ablation_scenarios.py [--n 10000] [--seeds 3] [--model llama-3-8b --gpu A800-40GB]

The cluster is the built-in ``streamserve`` architecture on the given model and GPU
(default: the paper's Llama-3-8B on A800-40GB, roofline step model; OPT-13B's 2,048-token
window would turn most SUM requests away).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamserve.config import builtin_cluster
from streamserve.experiments.ablate import DEFAULT_SLO, TIGHT_SLO, SCENARIOS, run_ablation

METRICS = ("p99_e2el_ms", "request_goodput", "request_goodput_tight", "mean_tpot_ms", "p99_ttft_ms", "mean_k")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ablation_scenarios"))
    ap.add_argument("--model", default="llama-3-8b", help="the paper's setup: Llama-3-8B on 4 x A800-40GB")
    ap.add_argument("--gpu", default="A800-40GB")
    args = ap.parse_args()
    base = builtin_cluster("streamserve").model_copy(update={"model": args.model, "gpu": args.gpu})
    results: dict[str, dict] = {}
    lines = [f"# Ablation over scenarios ({args.model} on {args.gpu}, {args.n} requests, seeds 0-{args.seeds - 1}, bursty gamma CV 3 at 70% "
             f"of measured capacity, SLO TTFT {DEFAULT_SLO.ttft * 1e3:.0f} ms / TPOT {DEFAULT_SLO.tpot * 1e3:.0f} ms; "
             f"tight SLO TTFT {TIGHT_SLO.ttft * 1e3:.0f} ms / TPOT {TIGHT_SLO.tpot * 1e3:.0f} ms)",
             "", "Means over seeds; `wins` = seeds in which full StreamServe had lower p99 E2E / higher goodput "
             "/ higher goodput under the tight SLO than that variant.", ""]
    for name, sc in SCENARIOS.items():
        runs = [run_ablation(n=args.n, seed=seed, scenario=name, base=base) for seed in range(args.seeds)]
        variants = [r["variant"] for r in runs[0]["rows"]]
        per = {v: {m: [run["rows"][i][m] for run in runs] for m in METRICS} for i, v in enumerate(variants)}
        full = per["streamserve"]
        summary = {}
        for v in variants:
            mean = {m: float(np.mean([x for x in per[v][m] if x is not None])) if any(
                x is not None for x in per[v][m]) else None for m in METRICS}
            wins_p99 = sum(f < o for f, o in zip(full["p99_e2el_ms"], per[v]["p99_e2el_ms"]))
            wins_gp = sum(f > o for f, o in zip(full["request_goodput"], per[v]["request_goodput"]))
            wins_tight = sum(f > o for f, o in zip(full["request_goodput_tight"], per[v]["request_goodput_tight"]))
            summary[v] = {"mean": mean, "per_seed": per[v], "full_wins_p99": wins_p99, "full_wins_goodput": wins_gp,
                          "full_wins_goodput_tight": wins_tight}
        results[name] = {"what": sc.what, "capacity_rps": runs[0]["capacity_rps"], "variants": summary}
        lines += [f"## {name}: {sc.what}", "",
                  "variant | p99 E2E ms | goodput r/s | goodput r/s (tight) | mean TPOT ms | p99 TTFT ms | mean k | "
                  "wins p99 | wins goodput | wins goodput (tight)",
                  "--- | --- | --- | --- | --- | --- | --- | --- | --- | ---"]
        for v, s in summary.items():
            m = s["mean"]
            k = "-" if m["mean_k"] is None else f"{m['mean_k']:.2f}"
            wins = ("", "", "") if v == "streamserve" else (
                f"{s['full_wins_p99']}/{args.seeds}", f"{s['full_wins_goodput']}/{args.seeds}",
                f"{s['full_wins_goodput_tight']}/{args.seeds}")
            lines.append(f"{v} | {m['p99_e2el_ms']:.0f} | {m['request_goodput']:.3f} | "
                         f"{m['request_goodput_tight']:.3f} | {m['mean_tpot_ms']:.2f} | "
                         f"{m['p99_ttft_ms']:.0f} | {k} | {wins[0]} | {wins[1]} | {wins[2]}")
        lines.append("")
        print("\n".join(lines[-len(summary) - 5:]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"model": args.model, "gpu": args.gpu, "n": args.n,
                                                    "seeds": args.seeds, "scenarios": results},
                                                   indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
