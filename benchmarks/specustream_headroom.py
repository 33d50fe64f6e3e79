"""How much any per-step choice of speculation depth could gain over the best fixed k.

    nice python benchmarks/specustream_headroom.py [--settings eagle:mix:0.9,draft:mix:0.9,...] [--n 2000]

Issue 12 item 7 asks SpecuStream for 10% more goodput than the best single fixed k on the
bursty mix. This measures the ceiling of that on the simulator's step model. One run of
``benchmarks/specustream_sweep.py``'s setup per setting (Llama-3-8B on four A800-40GB, the
built-in streamserve cluster, gamma arrivals with CV 3 at the given fraction of capacity,
seed 0) under SpecuStream, with every depth decision logged (lane, decode batch, context,
the batch's sequences per workload class, k). For every logged step and every k in
[0, k_max], the step's time comes from that lane's step model and each sequence's expected
tokens from the workload's true per-class acceptance (the rates the simulator draws from);
a sequence then spends step time / expected tokens per output token. Averaged over all
sequence-steps this gives the time per output token a decoding request sees: for each
fixed k, for the per-step oracle (each step at the k that minimises it: additive over
steps, so this is the best any per-step choice can do), and for SpecuStream's own
choices. The batches are SpecuStream's, so this is a first-order bound: a different
depth would also change the batches a little; and it speaks for TPOT, not for TTFT.
Writes ``benchmarks/results/specustream_headroom.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import specustream_sweep as sw  # noqa: E402
from streamserve.metrics import summarize  # noqa: E402
from streamserve.perfmodel import LanePerf  # noqa: E402
from streamserve.policies.specustream import SpecuStream, expected_tokens  # noqa: E402
from streamserve.sim import run  # noqa: E402
from streamserve.workload.datasets import DATASETS  # noqa: E402
from streamserve.workload.resolve import resolve_workload  # noqa: E402

SETTINGS = "eagle:mix:0.4,eagle:mix:0.9,draft:mix:0.4,draft:mix:0.9,eagle:alpaca:0.9"
LOG: list[tuple[int, int, int, tuple[tuple[str, int], ...], int]] = []
POLICIES: list[SpecuStream] = []


class LoggedSpecuStream(SpecuStream):
    """SpecuStream, deciding exactly as shipped, with every decision recorded."""

    def __init__(self, perf: dict[int, LanePerf], k_max: int) -> None:
        super().__init__(perf, k_max)
        POLICIES.append(self)

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        k = super().depth(lane_id, batch_size, context_tokens, now, classes)
        LOG.append((lane_id, batch_size, context_tokens, tuple(sorted(classes.items())) if classes else (), k))
        return k


def headroom(method: str, workload: str, load: float, n: int, seed: int = 0) -> dict:
    closed = resolve_workload(workload, num_requests=2000, concurrency=256, seed=1)
    cap = float(summarize(run(sw.cluster(method, {"name": "specustream"}), closed, 0))["request_throughput"])
    wl = resolve_workload(workload, num_requests=n, rate=load * cap, arrival="gamma", cv=3.0, seed=100 + seed)
    wl.slo = sw.DEFAULT_SLO
    LOG.clear()
    POLICIES.clear()
    result = run(sw.cluster(method, {"name": f"{__name__}:LoggedSpecuStream"}), wl, seed)
    policy = POLICIES[-1]
    ks = range(sw.K_MAX + 1)
    # Seconds per token each sequence of a step sees at depth k, summed over the step's
    # sequences: t(k) / E_c(k) per sequence of class c. Additive over steps, so the
    # per-step minimum is the exact optimum of the sum (SpecuStream's ``latency``
    # objective, its default, minimises exactly this per step).
    per_k = np.zeros(len(ks))
    oracle = chosen = 0.0
    oracle_k = np.zeros(len(ks))
    seq_steps = 0
    for lane, batch, ctx, classes, k_chosen in LOG:
        perf = policy.perf[lane]
        t = np.array([perf.spec_step_time(batch, ctx, k) for k in ks])
        alphas = [(DATASETS[c].acceptance[method], m) for c, m in classes]
        lat = np.array([sum(m / expected_tokens(a, k) for a, m in alphas) for k in ks]) * t
        per_k += lat
        j = int(lat.argmin())
        oracle_k[j] += 1
        oracle += lat[j]
        chosen += lat[k_chosen]
        seq_steps += batch
    ms = per_k / seq_steps * 1e3
    best = int(ms.argmin())
    batches = np.array([b for _, b, _, _, _ in LOG])
    s = summarize(result, sw.DEFAULT_SLO)
    perf = policy.perf[LOG[0][0]]
    return {
        "method": method, "workload": workload, "load": load, "arrival": "gamma CV 3", "seed": seed, "n": n,
        "capacity_rps": round(cap, 3), "decode_steps": len(LOG),
        "decode_batch": {"mean": round(float(batches.mean()), 1),
                         **{f"p{q}": float(np.percentile(batches, q)) for q in (10, 50, 90)}, "max": int(batches.max())},
        "ms_per_token": {f"k={k}": round(float(ms[k]), 3) for k in ks},
        "best_fixed_k": best,
        "oracle_ms_per_token": round(oracle / seq_steps * 1e3, 3),
        "oracle_speedup_over_best_fixed": round(float(per_k[best] / oracle) - 1, 4),
        "specustream_ms_per_token": round(chosen / seq_steps * 1e3, 3),
        "specustream_speedup_over_best_fixed": round(float(per_k[best] / chosen) - 1, 4),
        "oracle_k_share": {f"k={k}": round(float(oracle_k[k] / len(LOG)), 3) for k in ks if oracle_k[k]},
        "decode_step_ms": {f"batch {b}, ctx {c}, k={k}": round(perf.spec_step_time(b, c, k) * 1e3, 2)
                           for b, c in ((1, 1000), (32, 32000)) for k in (0, 8)},
        "lane_busy_share": {f"{u.role} {u.lane_id}": round(u.busy_time / result.duration, 3) for u in result.lanes},
        "goodput_rps": round(float(s["request_goodput"]), 3), "mean_tpot_ms": round(float(s["mean_tpot_ms"]), 2),
    }


def report(rows: list[dict]) -> str:
    lines = ["# Headroom of a per-step speculation depth over the best fixed k", "",
             "Written by benchmarks/specustream_headroom.py (Llama-3-8B on 4 x A800-40GB, built-in streamserve "
             "cluster, gamma CV 3, one seed of the given size; simulated time, so the shared 2-core machine's "
             "load does not change the figures). Time per output token over the decode steps SpecuStream "
             "ran, each step re-timed at every k with the lane's step model and the workload's true "
             "acceptance: the mean over sequence-steps of step time / expected tokens (the time per output token a decoding request sees). Speed-up: the best fixed k's ms/token "
             "over this one's, minus 1.", "",
             "| method | workload | load | decode batch p10 / p50 / p90 / max | best fixed k | its ms/token "
             "| per-step oracle, ms/token (speed-up) | SpecuStream, ms/token (speed-up) | oracle's k (share of steps) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["decode_batch"]
        best = r["ms_per_token"][f"k={r['best_fixed_k']}"]
        share = ", ".join(f"{k[2:]}: {v:.0%}" for k, v in r["oracle_k_share"].items() if v >= 0.01)
        lines.append(f"| {r['method']} | {r['workload']} | {r['load']:.0%} | {b['p10']:.0f} / {b['p50']:.0f} / "
                     f"{b['p90']:.0f} / {b['max']} | {r['best_fixed_k']} | "
                     f"{best:.2f} | {r['oracle_ms_per_token']:.2f} ({r['oracle_speedup_over_best_fixed']:+.1%}) | "
                     f"{r['specustream_ms_per_token']:.2f} ({r['specustream_speedup_over_best_fixed']:+.1%}) | {share} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=SETTINGS, help="method:workload:load, comma-separated")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "specustream_headroom"))
    args = ap.parse_args()
    rows = []
    for setting in args.settings.split(","):
        method, workload, load = setting.split(":")
        rows.append(headroom(method, workload, float(load), args.n))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    Path(args.out + ".md").write_text(report(rows))


if __name__ == "__main__":
    main()
