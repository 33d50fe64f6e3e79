"""What ``plan`` writes: plan.csv, plan.png (goodput per GPU by placement), best.yaml
(the best placement as a cluster file), and the table it prints."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from streamserve.config import ClusterConfig, parse_cluster
from streamserve.tuning.placement import PlanResult


def table(results: list[PlanResult], title: str) -> Table:
    t = Table(title=title, header_style="bold")
    for col, just in (("placement", "left"), ("GPUs", "right"), ("max rate (req/s)", "right"),
                      ("goodput/GPU", "right"), ("attainment", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in results:
        if r.error:
            t.add_row(r.placement.name, str(r.placement.gpus), "error", r.error, "")
        else:
            t.add_row(r.placement.name, str(r.placement.gpus), f"{r.max_rate:.3g}", f"{r.per_gpu:.3g}",
                      f"{r.attainment_at_max:.1%}" if r.max_rate else "-")
    return t


def write_plan(base: ClusterConfig, budget: int, results: list[PlanResult], out: Path, command: str, slo: Any,
               attainment: float) -> Path | None:
    """plan.csv and plan.png always; best.yaml when some placement meets the SLO (its path)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "plan.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["placement", "gpus", "colocated", "prefill_lanes", "prefill_tp", "decode_lanes", "decode_tp",
                    "pairs", "max_rate", "goodput_per_gpu", "attainment_at_max", "runs", "error"])
        for r in results:
            p = r.placement
            w.writerow([p.name, p.gpus, p.colocated, p.prefill, p.prefill_tp, p.decode, p.decode_tp, p.paired,
                        f"{r.max_rate:.6g}", f"{r.per_gpu:.6g}", f"{r.attainment_at_max:.4f}", r.runs, r.error or ""])
    _plot(results, out / "plan.png", f"{base.model} on up to {budget} x {base.gpu}, SLO TTFT "
          f"{slo.ttft * 1e3 if slo.ttft else '-'} ms / TPOT {slo.tpot * 1e3 if slo.tpot else '-'} ms, "
          f"{attainment:.0%} attainment")
    if not results or results[0].max_rate <= 0:
        return None
    best = results[0].placement.cluster(base)
    data = {"model": best.model, "gpu": best.gpu, **best.model_dump(mode="json", exclude_defaults=True)}
    data["slo"] = {"ttft_ms": slo.ttft * 1e3 if slo.ttft else None, "tpot_ms": slo.tpot * 1e3 if slo.tpot else None}
    text = yaml.safe_dump(data, sort_keys=False)
    parse_cluster(yaml.safe_load(text), str(out / "best.yaml"), text)  # simulate must accept it
    header = (f"# Planned by: {command}\n# {results[0].placement.name}: {results[0].max_rate:.3g} req/s "
              f"({results[0].per_gpu:.3g} per GPU) at {attainment:.0%} SLO attainment\n")
    (out / "best.yaml").write_text(header + text)
    return out / "best.yaml"


def _plot(results: list[PlanResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(reversed(results))
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(shown) + 1.5))
    ax.barh([r.placement.name for r in shown], [r.per_gpu for r in shown],
            color=["tab:green" if r.placement.colocated else "tab:blue" for r in shown])
    ax.set_xlabel("goodput per GPU (req/s at the attainment target)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
