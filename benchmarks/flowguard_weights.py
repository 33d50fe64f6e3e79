"""Sweep FlowGuard's weights on the ablation workload; the measurement behind its defaults.

Each setting routes the same bursty workloads (the ablation's ``paper`` scenario: the
paper's four datasets, gamma arrivals with CV 3 at 70% of the measured capacity) over
several seeds, on the symmetric cluster and
with one decode lane running at half speed (a straggler: what the latency signal is
for). The script records mean p99 E2E, goodput and TPOT per setting and scenario, with
round-robin as the reference, in ``benchmarks/results/flowguard_weights.json`` (and
prints a table). The runs go through the tuner's machinery (``streamserve.tuning``:
the same run function, runners and metrics as ``streamserve tune``), so ``--workers``
spreads them over processes; ``streamserve tune --param router.w_latency ...`` searches
the same weights instead of comparing fixed settings.

    PYTHONPATH=. python benchmarks/flowguard_weights.py [--n 5000] [--seeds 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamserve.config import FaultConfig, PolicyConfig, builtin_cluster
from streamserve.experiments.ablate import DEFAULT_SLO, measure_capacity
from streamserve.tuning.evaluate import WorkloadArgs
from streamserve.tuning.runners import LocalPool, measure

ZERO = {"w_latency": 0.0, "w_queue": 0.0, "w_util": 0.0, "w_kv": 0.0, "w_accept": 0.0}
SETTINGS = {
    "round_robin": {"name": "round_robin"},
    "flowguard (defaults)": {"name": "flowguard"},
    "latency only": {"name": "flowguard", **ZERO, "w_latency": 1.0},
    "queue only": {"name": "flowguard", **ZERO, "w_queue": 1.0},
    "kv only": {"name": "flowguard", **ZERO, "w_kv": 1.0},
    "latency 1, queue 1": {"name": "flowguard", **ZERO, "w_latency": 1.0, "w_queue": 1.0},
    "latency 0.25, queue 1, kv 0.5": {"name": "flowguard", **ZERO, "w_latency": 0.25, "w_queue": 1.0, "w_kv": 0.5},
    "latency 1, queue 0.2, util 0.1, kv 0.5, accept 0.1": {
        "name": "flowguard", "w_latency": 1.0, "w_queue": 0.2, "w_util": 0.1, "w_kv": 0.5, "w_accept": 0.1},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "flowguard_weights.json"))
    args = ap.parse_args()
    base = builtin_cluster("streamserve")
    cap = measure_capacity(base)
    scenarios = {"symmetric": base,
                 "decode lane 1 at half speed": base.model_copy(
                     update={"faults": [FaultConfig(lane=1, at=0.0, kind="slow", factor=2.0)]})}
    configs = {f"{sc} | {name}": cluster.model_copy(update={"router": PolicyConfig(**router)})
               for sc, cluster in scenarios.items() for name, router in SETTINGS.items()}
    workload = WorkloadArgs("mix", num_requests=args.n, rate=0.7 * cap, arrival="gamma", cv=3.0)  # the paper scenario
    metrics = {"p99_e2el_ms": "p99_e2e", "request_goodput": "goodput", "mean_tpot_ms": "mean_tpot",
               "mean_ttft_ms": "mean_ttft"}
    pool = LocalPool(args.workers)
    try:
        got = measure(pool, configs, workload, range(args.seeds), DEFAULT_SLO, list(metrics.values()))
    finally:
        pool.close()
    table = {name: {key: float(np.mean(m.per_seed[metric])) for key, metric in metrics.items()}
             for name, m in got.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "seeds": args.seeds, "capacity_rps": cap, "load": 0.7, "cv": 3.0,
                               "slo": {"ttft_ms": 1000, "tpot_ms": 50}, "settings": SETTINGS, "mean": table},
                              indent=2) + "\n")
    print(f"{'scenario | setting':85s} {'p99 E2E ms':>10s} {'goodput':>8s} {'TPOT ms':>8s} {'TTFT ms':>8s}")
    for name, r in table.items():
        print(f"{name:85s} {r['p99_e2el_ms']:10.0f} {r['request_goodput']:8.3f} {r['mean_tpot_ms']:8.2f} "
              f"{r['mean_ttft_ms']:8.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
