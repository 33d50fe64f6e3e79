"""``plan``'s ranking against a brute-force scan, on DistServe's fixed-length check.

OPT-13B on A100-80GB (the shipped profile, DistServe's fitted coefficients), prompts of
512 and outputs of 128 tokens, Poisson arrivals. For each GPU budget, ``plan`` ranks
every placement by its highest rate meeting the attainment target (doubling, then
bisection); the brute force scans every placement (enumerated here independently, by
nested loops) on a rate grid, keeping the last grid rate below the first miss. The
script reports both rates per placement, whether plan's rate lies in the brute force's
grid cell (widened below by plan's bisection tolerance, 2%) and whether the two orders
agree up to the grid's resolution. Writes ``benchmarks/results/plan_vs_bruteforce.{json,md}``.

    PYTHONPATH=. python benchmarks/plan_vs_bruteforce.py [--gpus 2 4] [--n 300] [--step 0.5]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import kendalltau

from streamserve.config import builtin_cluster
from streamserve.request import SLO
from streamserve.tuning.evaluate import RunTask, WorkloadArgs, evaluate_run
from streamserve.tuning.placement import Placement, run_plan

FIXED = "random:input_len=512,output_len=128,range_ratio=0"
TOLERANCE = 0.02  # plan's relative precision of a highest rate (its default)


def every_placement(budget: int, tps: tuple[int, ...] = (1, 2, 4)) -> set[Placement]:
    out = {Placement(True, n, tp) for tp in tps for n in range(1, budget + 1) if n * tp <= budget}
    for tp_p in tps:
        for tp_d in tps:
            for p in range(1, budget + 1):
                for d in range(1, budget + 1):
                    if p * tp_p + d * tp_d <= budget:
                        out.add(Placement(False, p, tp_p, d, tp_d))
                        if p == d > 1:
                            out.add(Placement(False, p, tp_p, d, tp_d, paired=True))
    return out


def scan(cluster, workload: WorkloadArgs, slo: SLO, target: float, step: float) -> float:
    rate = step
    while True:
        r = evaluate_run(RunTask(cluster.model_dump(), workload, 0, (slo.ttft, slo.tpot), ("attainment",), rate=rate))
        if r.values["attainment"] < target:
            return rate - step
        rate += step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--step", type=float, default=0.5)
    ap.add_argument("--slo", default="250,100", help="TTFT,TPOT in ms")
    ap.add_argument("--attainment", type=float, default=0.9)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "plan_vs_bruteforce"))
    args = ap.parse_args()
    ttft, tpot = (float(x) / 1e3 for x in args.slo.split(","))
    slo = SLO(ttft, tpot)
    base = builtin_cluster("streamserve")
    workload = WorkloadArgs(FIXED, num_requests=args.n)
    report, lines = [], [f"# plan vs brute force: OPT-13B, A100-80GB, 512/128 tokens, {args.n} requests, "
                         f"SLO TTFT {ttft * 1e3:.0f} ms / TPOT {tpot * 1e3:.0f} ms, {args.attainment:.0%} attainment, "
                         f"grid step {args.step} req/s", ""]
    for budget in args.gpus:
        plan = run_plan(base, budget, workload, (0,), slo, args.attainment, TOLERANCE)
        assert {r.placement for r in plan} == every_placement(budget), "plan skipped or invented a placement"
        brute = {r.placement: scan(r.placement.cluster(base), workload, slo, args.attainment, args.step) for r in plan}
        rows = [{"placement": r.placement.name, "gpus": r.placement.gpus, "plan_rate": r.max_rate,
                 "brute_rate": brute[r.placement], "plan_per_gpu": r.per_gpu,
                 "brute_per_gpu": brute[r.placement] / r.placement.gpus} for r in plan]
        within = all(row["brute_rate"] * (1 - TOLERANCE) - 1e-9 <= row["plan_rate"]
                     <= row["brute_rate"] + args.step + 1e-9 for row in rows)
        inversions = [(a["placement"], b["placement"]) for i, a in enumerate(rows) for b in rows[i + 1:]
                      if a["brute_per_gpu"] < b["brute_per_gpu"] - args.step / min(a["gpus"], b["gpus"])]
        tau = float(kendalltau([r["plan_per_gpu"] for r in rows], [r["brute_per_gpu"] for r in rows]).statistic)
        report.append({"budget": budget, "rows": rows, "plan_rate_within_grid_cell": within,
                       "inversions_beyond_grid": inversions, "kendall_tau": tau,
                       "same_best": max(rows, key=lambda r: r["brute_per_gpu"])["brute_per_gpu"]
                       - rows[0]["brute_per_gpu"] <= args.step / rows[0]["gpus"]})
        lines += [f"## budget {budget} GPUs: {len(rows)} placements; Kendall tau {tau:.3f}; plan's rate in the "
                  f"brute force's grid cell: {'all' if within else 'NOT all'}; order inversions beyond the grid: "
                  f"{len(inversions)}", "",
                  "placement (plan's order) | GPUs | plan rate | brute rate | plan / GPU | brute / GPU",
                  "--- | --- | --- | --- | --- | ---"]
        lines += [f"{r['placement']} | {r['gpus']} | {r['plan_rate']:.2f} | {r['brute_rate']:.2f} | "
                  f"{r['plan_per_gpu']:.2f} | {r['brute_per_gpu']:.2f}" for r in rows]
        lines.append("")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
