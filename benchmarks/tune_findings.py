"""What the tuned configurations' gains come from: one parameter at a time, on unseen seeds.

``streamserve tune`` on the bursty paper mix (``results/tune_paper_mix*``) found
configurations that change every declared parameter at once. This script measures,
on the same workload (gamma arrivals, CV 3, 10 req/s, 4000 requests, SLO TTFT 1 s /
TPOT 50 ms) and on 16 seeds neither search ran, the shipped configuration, each single
change that the winners share, and the two winners themselves (their ``best.yaml``),
with paired differences against the shipped configuration.
Writes ``benchmarks/results/tune_findings.{json,md}``.

    PYTHONPATH=. python benchmarks/tune_findings.py [--seeds 16] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamserve.config import builtin_cluster, load_cluster
from streamserve.request import SLO
from streamserve.tuning.evaluate import Estimate, WorkloadArgs
from streamserve.tuning.runners import LocalPool, measure
from streamserve.tuning.space import apply

RESULTS = Path(__file__).parent / "results"
METRICS = ("goodput", "attainment", "p99_e2e", "p99_ttft", "mean_tpot")
SEED_BASE = 2_000_000  # seeds neither tune run saw (they searched 0-3, validated from 1,000,000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "tune_findings"))
    args = ap.parse_args()
    shipped = builtin_cluster("streamserve")
    configs = {
        "shipped": shipped,
        "scheduler.order: spf": apply(shipped, {"scheduler.order": "spf"}),
        "scheduler.order: edf": apply(shipped, {"scheduler.order": "edf"}),
        "router.local_max_prompt: 2406": apply(shipped, {"router.local_max_prompt": 2406}),
        "router.w_queue: 2": apply(shipped, {"router.w_queue": 2.0}),
        "winner, goodput only (tune_paper_mix)": load_cluster(RESULTS / "tune_paper_mix" / "best.yaml"),
        "winner, goodput and p99 E2E (tune_paper_mix_pareto)":
            load_cluster(RESULTS / "tune_paper_mix_pareto" / "best.yaml"),
    }
    workload = WorkloadArgs("mix", num_requests=4000, rate=10.0, arrival="gamma", cv=3.0)
    seeds = range(SEED_BASE, SEED_BASE + args.seeds)
    pool = LocalPool(args.workers)
    try:
        got = measure(pool, configs, workload, seeds, SLO(1.0, 0.05), METRICS)
    finally:
        pool.close()
    base = got["shipped"].per_seed
    table = {}
    for name, m in got.items():
        table[name] = {metric: {"mean": Estimate.of(m.per_seed[metric]).mean,
                                "ci95": Estimate.of(m.per_seed[metric]).half_width,
                                "diff": Estimate.of([a - b for a, b in zip(m.per_seed[metric], base[metric])]).mean,
                                "diff_ci95": Estimate.of([a - b for a, b in zip(m.per_seed[metric],
                                                                                base[metric])]).half_width}
                       for metric in METRICS}
    lines = [f"# Where the tuned gains come from ({args.seeds} unseen seeds, bursty paper mix, 10 req/s, 4000 "
             "requests; mean, and paired difference to shipped, ± 95% CI)", "",
             "configuration | goodput r/s | vs shipped | attainment | p99 E2E s | vs shipped | p99 TTFT s | "
             "mean TPOT ms", "--- | --- | --- | --- | --- | --- | --- | ---"]
    for name, t in table.items():
        g, e = t["goodput"], t["p99_e2e"]
        lines.append(f"{name} | {g['mean']:.2f} ± {g['ci95']:.2f} | {g['diff']:+.2f} ± {g['diff_ci95']:.2f} | "
                     f"{t['attainment']['mean']:.1%} | {e['mean'] / 1e3:.2f} | {e['diff'] / 1e3:+.2f} ± "
                     f"{e['diff_ci95'] / 1e3:.2f} | {t['p99_ttft']['mean'] / 1e3:.2f} | {t['mean_tpot']['mean']:.2f}")
    print("\n".join(lines))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"seeds": list(seeds), "table": table}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
