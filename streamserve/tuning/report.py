"""What ``tune`` writes: trials.csv, tune.png (convergence or Pareto front), best.yaml,
summary.json; and the lines it prints about the winner."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from streamserve.config import parse_cluster
from streamserve.tuning.evaluate import METRICS, Estimate
from streamserve.tuning.space import apply_mapping
from streamserve.tuning.study import TrialOutcome, TuneSettings, Validation


def write_trials_csv(settings: TuneSettings, outcomes: list[TrialOutcome], path: Path) -> None:
    """One row per trial: parameters, then mean, CI half-width and per-seed values of each metric."""
    names = [p.name for p in settings.params]
    cols = ["trial", "state"] + names
    for m in settings.metrics:
        cols += [f"{m}_mean", f"{m}_ci95", f"{m}_per_seed"]
    cols.append("error")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for o in sorted(outcomes, key=lambda o: o.number):
            row: list[Any] = [o.number, "failed" if o.error else "complete"] + [o.params.get(n, "") for n in names]
            for m in settings.metrics:
                e = o.estimate(m)
                row += ["" if math.isnan(e.mean) else f"{e.mean:.6g}",
                        "" if math.isnan(e.half_width) else f"{e.half_width:.6g}",
                        ";".join(f"{v:.6g}" for v in o.per_seed.get(m, []))]
            row.append(o.error or "")
            w.writerow(row)


def write_plot(settings: TuneSettings, outcomes: list[TrialOutcome], front: list[int], path: Path) -> None:
    """One objective: each trial's mean (with its CI) and the best so far. Two: every
    trial in the objectives' plane, the Pareto front joined up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((o for o in outcomes if not o.error), key=lambda o: o.number)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = settings.objectives[0]
    if len(settings.objectives) == 1:
        est = [o.estimate(first) for o in ok]
        ax.errorbar([o.number for o in ok], [e.mean for e in est],
                    yerr=[0.0 if math.isnan(e.half_width) else e.half_width for e in est],
                    fmt="o", ms=3, color="tab:blue", ecolor="lightsteelblue", label="trial (mean, 95% CI)")
        best, line = None, []
        for e in est:
            if best is None or (e.mean > best if METRICS[first].maximize else e.mean < best):
                best = e.mean
            line.append(best)
        ax.step([o.number for o in ok], line, where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(METRICS[first].label)
    else:
        second = settings.objectives[1]
        ax.scatter([o.estimate(first).mean for o in ok], [o.estimate(second).mean for o in ok], s=10,
                   color="lightgray", label="trial (mean over seeds)")
        pts = sorted((o.estimate(first).mean, o.estimate(second).mean) for o in ok if o.number in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:red", ms=4, label="Pareto front")
        ax.set_xlabel(METRICS[first].label)
        ax.set_ylabel(METRICS[second].label)
    ax.legend(fontsize=8)
    ax.set_title(f"tune: {len(outcomes)} trials x {len(settings.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_best_yaml(settings: TuneSettings, raw: Mapping[str, Any], origin: str, v: Validation,
                    command: str, path: Path) -> None:
    """The starting cluster file with the winner's parameters, checked by the same
    validation ``simulate`` runs, with where it came from as a comment."""
    data = apply_mapping(raw, settings.cluster, v.params)
    text = yaml.safe_dump(data, sort_keys=False)
    parse_cluster(yaml.safe_load(text), str(path), text)  # a file simulate would refuse is a bug here
    lines = [f"# Tuned by: {command}", f"# from {origin}, trial {v.trial}; on {len(settings.validation_seeds)} "
             "unseen seeds (mean ± 95% CI, tuned vs starting configuration):"]
    for m in settings.objectives:
        lines.append(f"#   {m}: {v.estimate(m)} vs {v.baseline_estimate(m)} (difference {v.difference(m)})")
    path.write_text("\n".join(lines) + "\n" + text)


def _est(e: Estimate) -> dict[str, float | None]:
    return {"mean": e.mean, "ci95": None if math.isnan(e.half_width) else e.half_width, "n": e.n}


def summary(settings: TuneSettings, outcomes: list[TrialOutcome], validations: list[Validation],
            command: str) -> dict[str, Any]:
    return {
        "command": command,
        "objectives": list(settings.objectives),
        "trials": len(outcomes), "failed": sum(1 for o in outcomes if o.error),
        "search_seeds": list(settings.seeds), "validation_seeds": list(settings.validation_seeds),
        "search_space": {p.name: p.describe() for p in settings.params},
        "validated": [{
            "trial": v.trial, "params": v.params,
            "tuned": {m: _est(v.estimate(m)) for m in settings.metrics},
            "starting": {m: _est(v.baseline_estimate(m)) for m in settings.metrics},
            "difference": {m: _est(v.difference(m)) for m in settings.metrics},
        } for v in validations],
    }


def write_summary(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def verdict(settings: TuneSettings, v: Validation) -> list[str]:
    """Plain lines: how the winner compares with the starting configuration."""
    out = [f"winner: trial {v.trial}: " + ", ".join(f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                                                    for k, val in v.params.items())]
    for m in settings.objectives:
        d, base = v.difference(m), v.baseline_estimate(m)
        pct = 100 * d.mean / base.mean if base.mean else math.nan
        sign = 1 if METRICS[m].maximize else -1
        if math.isnan(d.half_width):
            call = "one seed: no interval"
        elif abs(d.mean) > d.half_width:
            call = "better, beyond the CI" if sign * d.mean > 0 else "worse, beyond the CI"
        else:
            call = "no different within the CI"
        out.append(f"  {m} on {len(settings.validation_seeds)} unseen seeds: {v.estimate(m)} vs starting "
                   f"{base} ({pct:+.1f}%, paired difference {d}: {call})")
    return out


def write_live_yaml(settings: TuneSettings, live_path: str, v: Validation, command: str, path: Path) -> None:
    """A live config (``serve --config``) with the winner's policy sections: the tuned
    cluster's scheduler, router and spec_policy replace the live file's."""
    from streamserve.config import read_mapping
    from streamserve.gpu.config import parse_live
    from streamserve.tuning.space import SECTIONS, apply

    data, _ = read_mapping(live_path)
    tuned = apply(settings.cluster, v.params)
    for section in SECTIONS:
        data[section] = getattr(tuned, section).model_dump()
    text = yaml.safe_dump(data, sort_keys=False)
    parse_live(yaml.safe_load(text), str(path), text)  # serve must accept it
    path.write_text(f"# Tuned by: {command}\n# {live_path} with the policies of trial {v.trial} (see best.yaml)\n"
                    + text)
