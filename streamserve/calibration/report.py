"""Tables and plots of the calibration commands: the fit's residuals, and the live
versus simulated comparison of a fidelity run (table, CDF overlays, fidelity.json)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.calibration.fit import FitResult

METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
STATS = ("mean", "median", "p90", "p99")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def residual_plot(fit: FitResult, path: Path, title: str) -> None:
    """Held-out steps: predicted against measured, and % error against tokens scheduled."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    y, p, sel = fit.test_measured, fit.test_predicted, fit.test_prompt
    for mask, label, color in ((sel, "steps with prompt tokens", "tab:orange"), (~sel, "decode-only steps", "tab:blue")):
        a.scatter(y[mask], p[mask], s=8, alpha=0.6, label=label, color=color)
        b.scatter(fit.test_tokens[mask], 100 * (p[mask] - y[mask]) / y[mask], s=8, alpha=0.6, color=color)
    lim = [0.8 * float(min(y.min(), p.min())), 1.25 * float(max(y.max(), p.max()))]
    a.plot(lim, lim, "k--", lw=0.8)
    a.set(xscale="log", yscale="log", xlabel="measured step time (ms)", ylabel="predicted (ms)",
          title=f"held-out steps: R^2 {fit.r2:.3f}")
    a.legend(fontsize=8)
    b.axhline(0, color="k", lw=0.8)
    b.set(xscale="log", xlabel="tokens scheduled", ylabel="error (%)",
          title=f"median |err| {100 * fit.median_ape:.1f}%, p90 {100 * fit.p90_ape:.1f}%")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def coefficient_lines(fit: FitResult) -> list[str]:
    lines = []
    for name, value in fit.params.items():
        note = "  (not determined by the data: held at 0)" if name in fit.fixed else ""
        if name in fit.fixed and name.endswith((".weights_ms", ".compute_ms_per_token")):
            note = "  (no compute-bound step: the weight read is in overhead_ms)"
        lines.append(f"  {name:34s} {value:.6g}{note}")
    return lines


def pct_error(sim: float, live: float) -> float:
    if live == 0 or math.isnan(live) or math.isnan(sim):
        return math.nan
    return 100.0 * (sim - live) / live


def comparison(live: dict[str, Any], sim: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the side-by-side table: metric, live, simulated, % error."""
    rows = []
    for key, label in METRICS:
        for stat in STATS:
            name = f"{stat}_{key}_ms"
            rows.append({"metric": f"{label} {stat} (ms)", "key": name, "live": live[name], "sim": sim[name],
                         "error_pct": pct_error(sim[name], live[name])})
    for name, label in (("request_throughput", "throughput (req/s)"), ("output_throughput", "output tok/s"),
                        ("mean_k", "mean k"), ("accepted_per_seq_step", "accepted drafts per sequence-step"),
                        ("spec_acceptance_rate", "acceptance (accepted / drafted)")):
        if name in live or name in sim:
            lv, sv = float(live.get(name, math.nan)), float(sim.get(name, math.nan))
            rows.append({"metric": label, "key": name, "live": lv, "sim": sv, "error_pct": pct_error(sv, lv)})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = ["| metric | live | simulated | error |", "|---|---:|---:|---:|"]
    for r in rows:
        err = "n/a" if math.isnan(r["error_pct"]) else f"{r['error_pct']:+.1f}%"
        out.append(f"| {r['metric']} | {r['live']:.4g} | {r['sim']:.4g} | {err} |")
    return "\n".join(out)


def cdf_plots(live: dict[str, np.ndarray], sim: dict[str, np.ndarray], folder: Path, title: str) -> list[Path]:
    """One PNG per metric: the live and the simulated CDF on one axis."""
    plt = _pyplot()
    paths = []
    for key, label in METRICS:
        a, b = np.sort(live.get(key, np.zeros(0))), np.sort(sim.get(key, np.zeros(0)))
        if len(a) == 0 and len(b) == 0:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for values, name, style in ((a, "live", "-"), (b, "simulated", "--")):
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), style, label=f"{name} (n={len(values)})")
        ax.set(xlabel=f"{label} (ms)", ylabel="fraction of requests" if key != "itl" else "fraction of gaps",
               title=f"{title}: {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"cdf_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def step_check_line(check: dict[str, Any]) -> str:
    if not check:
        return "No engine step of the live run to check the step model on (none logged, or not kept)."
    return (f"Step model on the live run's own {check['steps']} engine steps: median |error| "
            f"{check['median_abs_pct_error']:.1f}%, p90 {check['p90_abs_pct_error']:.1f}%; engine busy time "
            f"{check['busy_s_measured']:.1f} s measured, {check['busy_s_predicted']:.1f} s predicted.")
