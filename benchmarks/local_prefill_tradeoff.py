"""What conditional disaggregation (FlowGuard's ``local_prefill``) buys, and what it costs.

Prefilling a prompt on a decode lane rescues its TTFT when the prefill lanes are backed
up (goodput), but stalls every sequence in that decode batch for the prompt's prefill
(tail). The slowest 1% of the ablation's symmetric ``paper`` workload are long
summarisation outputs, whose E2E is almost all decode time, so p99 E2E follows the TPOT
of long requests; this script measures that TPOT directly (mean over requests with more
than ``LONG`` output tokens), which is far less noisy than one run's p99. It compares
round-robin, FlowGuard with no local prefill, and FlowGuard with local prefill capped at
each of ``CAPS`` prompt tokens: the curve along which ``local_max_prompt`` trades goodput
for tail. All variants run on the same workloads (bursty gamma arrivals, CV 3, at 70% of
the shipped cluster's capacity), for each seed.
Writes ``benchmarks/results/local_prefill_tradeoff.{json,md}``. The runs go through the
tuner's machinery (``streamserve.tuning``: the same run function, runners and metrics as
``streamserve tune``, which can search ``router.local_max_prompt`` itself); ``--workers``
spreads them over processes.

    PYTHONPATH=. python benchmarks/local_prefill_tradeoff.py [--n 10000] [--seeds 16] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamserve.config import ClusterConfig, builtin_cluster
from streamserve.experiments.ablate import DEFAULT_SLO, measure_capacity
from streamserve.tuning.evaluate import LONG_OUTPUT as LONG  # output tokens: every request in the p99 tail has more
from streamserve.tuning.evaluate import WorkloadArgs
from streamserve.tuning.runners import LocalPool, measure

CAPS = (32, 64, 128, 512, 2048)  # local_max_prompt values compared


def _router(base: ClusterConfig, **changes) -> ClusterConfig:
    return base.model_copy(update={"router": base.router.model_validate({**base.router.model_dump(), **changes})})


def variants(base: ClusterConfig) -> dict[str, ClusterConfig]:
    out = {"round-robin": base.model_copy(update={"router": base.router.model_validate({"name": "round_robin"})}),
           "flowguard, no local prefill": _router(base, local_prefill=False)}
    for cap in CAPS:
        shipped = " (shipped)" if base.router.local_prefill and cap == base.router.local_max_prompt else ""
        out[f"flowguard, local prefill <= {cap} tokens{shipped}"] = _router(base, local_prefill=True,
                                                                            local_max_prompt=cap)
    return out


# this script's names for the tuner's metrics
METRICS = {"p99_e2el_ms": "p99_e2e", "request_goodput": "goodput", "long_tpot_ms": "long_tpot",
           "long_ttft_ms": "long_ttft", "local_share": "local_share"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "local_prefill_tradeoff"))
    args = ap.parse_args()
    base = builtin_cluster("streamserve")
    seeds = range(args.seeds)
    rates = {seed: 0.7 * measure_capacity(base, "paper", seed=seed) for seed in seeds}
    workload = WorkloadArgs("mix", num_requests=args.n, arrival="gamma", cv=3.0)  # the paper scenario
    pool = LocalPool(args.workers)
    try:
        got = measure(pool, variants(base), workload, seeds, DEFAULT_SLO, list(METRICS.values()), rates=rates)
    finally:
        pool.close()
    per = {name: [{key: m.per_seed[metric][i] for key, metric in METRICS.items()} for i in range(args.seeds)]
           for name, m in got.items()}
    ref = per["round-robin"]
    summary = {}
    for name, runs in per.items():
        mean = {m: float(np.mean([r[m] for r in runs])) for m in METRICS}
        for m in ("p99_e2el_ms", "long_tpot_ms"):  # per-seed ratios: the seeds' own spread cancels
            mean[f"{m}_vs_rr_pct"] = float(np.mean([(r[m] / q[m] - 1) * 100 for r, q in zip(runs, ref)]))
        mean["p99_wins_vs_rr"] = sum(r["p99_e2el_ms"] < q["p99_e2el_ms"] for r, q in zip(runs, ref))
        summary[name] = {"mean": mean, "per_seed": runs}
    lines = [f"# Local prefill: goodput against the tail ({args.n} requests x seeds 0-{args.seeds - 1}, `paper` "
             f"scenario, bursty gamma CV 3 at 70% of capacity, SLO TTFT 1 s / TPOT 50 ms)", "",
             f"`long` = requests with more than {LONG} output tokens (all of the p99 E2E tail). Differences against "
             "round-robin are per-seed ratios, averaged; `p99 wins` counts seeds with a lower p99 E2E than "
             "round-robin.", "",
             "variant | p99 E2E ms | vs RR | p99 wins | goodput r/s | long TPOT ms | vs RR | long TTFT ms | "
             "prefilled on a decode lane", "--- | --- | --- | --- | --- | --- | --- | --- | ---"]
    for name, s in summary.items():
        m = s["mean"]
        lines.append(f"{name} | {m['p99_e2el_ms']:.0f} | {m['p99_e2el_ms_vs_rr_pct']:+.2f}% | "
                     f"{m['p99_wins_vs_rr']}/{args.seeds} | {m['request_goodput']:.3f} | {m['long_tpot_ms']:.3f} | "
                     f"{m['long_tpot_ms_vs_rr_pct']:+.2f}% | {m['long_ttft_ms']:.0f} | {m['local_share']:.1%}")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "seeds": args.seeds, "long_tokens": LONG,
                                                    "variants": summary}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
