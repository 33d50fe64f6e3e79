"""Wall time of a ``streamserve tune`` study on one core and on a pool of workers.

A 100-trial study (default) of the shipped cluster's whole declared search space on the
bursty paper mix (gamma arrivals, CV 3, 10 req/s), each trial ``--n`` requests x
``--seeds`` seeds, in memory (no SQLite, no validation: the search loop alone), once per
``--workers`` value. The study is the same in every case (the sampler asks in batches of
4 whatever the workers), so the trial values must agree too; the script checks that.
Writes ``benchmarks/results/tune_walltime.{json,md}``.

    PYTHONPATH=. python benchmarks/tune_walltime.py [--trials 100] [--n 1000] [--seeds 2] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from streamserve import COMPILED
from streamserve.config import builtin_cluster
from streamserve.request import SLO
from streamserve.tuning.evaluate import WorkloadArgs
from streamserve.tuning.runners import LocalPool
from streamserve.tuning.space import select
from streamserve.tuning.study import TuneSettings, open_study, run_trials


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune_walltime"))
    args = ap.parse_args()
    cluster = builtin_cluster("streamserve")
    rows, values = [], {}
    for workers in args.workers:
        settings = TuneSettings(
            cluster=cluster, workload=WorkloadArgs("mix", num_requests=args.n, rate=10.0, arrival="gamma", cv=3.0),
            objectives=("goodput",), params=select(cluster), trials=args.trials, seeds=tuple(range(args.seeds)),
            validation_seeds=(), slo=SLO(1.0, 0.05), batch=4)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        pool = LocalPool(workers)
        try:
            outcomes = run_trials(settings, open_study(settings), pool)
        finally:
            pool.close()
        wall = time.perf_counter() - t0
        values[workers] = [(o.number, o.per_seed) for o in outcomes]
        rows.append({"workers": workers, "wall_s": wall, "s_per_trial": wall / args.trials,
                     "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0]})
        print(f"{workers} worker(s): {wall:.1f} s for {args.trials} trials ({wall / args.trials:.2f} s/trial)")
    same = all(v == values[args.workers[0]] for v in values.values())
    report = {"trials": args.trials, "n": args.n, "seeds": args.seeds, "search_space": len(select(cluster)),
              "compiled": COMPILED, "cpus": os.cpu_count(), "python": platform.python_version(),
              "identical_trial_values": same, "runs": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# tune wall time: {args.trials} trials x {args.seeds} seeds x {args.n} requests "
             f"({'compiled' if COMPILED else 'plain Python'}, {os.cpu_count()} CPUs, shared: noisy)", "",
             "workers | wall (s) | s / trial | load avg before -> after", "--- | --- | --- | ---"]
    lines += [f"{r['workers']} | {r['wall_s']:.1f} | {r['s_per_trial']:.2f} | "
              f"{r['load_avg_before']:.1f} -> {r['load_avg_after']:.1f}" for r in rows]
    lines += ["", f"identical trial values across worker counts: {same}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if not same:
        raise SystemExit("trial values differ between worker counts")


if __name__ == "__main__":
    main()
