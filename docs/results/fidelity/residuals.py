"""Where the fidelity runs' residual comes from, from the engines' own step logs.

For every run of this folder: the profile's step model on the steps the engines logged
during the live run (``live/steps.jsonl``), as the ratio measured / predicted per step:
its spread (the simulator's steps have none: each takes its predicted time), how long
slow spells last (lag-1 autocorrelation of log ratio along each engine's steps), the
share of busy time in steps at least twice as slow as predicted, and on the
prefill/decode pair how much slower steps are while the other engine is also in a step
(the two share 2 cores; the simulator's lanes never slow each other). Writes
residuals.md.

    python docs/results/fidelity/residuals.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from streamserve.calibration import records  # noqa: E402
from streamserve.calibration.fidelity import Calibration  # noqa: E402
from streamserve.calibration.fit import design, predict  # noqa: E402
from streamserve.calibration.roles import overlap  # noqa: E402


def analyse(run: Path) -> dict[str, float] | None:
    data = json.loads((run / "fidelity.json").read_text())
    steps_path = run / "live" / "steps.jsonl"
    if not steps_path.is_file():
        return None
    steps = [records.StepRecord(**row) for row in records.read_jsonl(steps_path)]
    if not steps:
        return None
    cal = Calibration.load(HERE.parents[2] / data["profile"])
    cols = records.columns(steps)
    x = design(cols)
    pred = np.zeros(len(steps))
    for role in set(cols["role"].tolist()):
        sel = cols["role"] == role
        pred[sel] = predict(cal.params_of(role), {k: v[sel] for k, v in x.items()})
    y = cols["dt"] * 1e3
    r = y / pred
    ov_all = overlap(cols)
    contended = pred * (1.0 + np.array([cal.contention_of(str(role)) for role in cols["role"]]) * ov_all)
    ac = []
    for lane in np.unique(cols["lane"]):
        lr = np.log(r[cols["lane"] == lane][np.argsort(cols["t"][cols["lane"] == lane])])
        if len(lr) > 10:
            ac.append(float(np.corrcoef(lr[:-1], lr[1:])[0, 1]))
    out = {"steps": len(steps), "busy_measured_s": y.sum() / 1e3, "busy_predicted_s": pred.sum() / 1e3,
           "busy_contended_s": contended.sum() / 1e3,
           "r_p10": float(np.percentile(r, 10)), "r_p50": float(np.median(r)), "r_p90": float(np.percentile(r, 90)),
           "autocorr": float(np.mean(ac)) if ac else float("nan"),
           "slow_share": float(y[r >= 2].sum() / y.sum())}
    if len(np.unique(cols["lane"])) > 1:
        ov = ov_all
        both, alone = ov > 0.5, ov <= 0.5
        out["overlap_share"] = float(y[both].sum() / y.sum())
        out["r_alone"] = float(y[alone].sum() / pred[alone].sum()) if alone.any() else float("nan")
        out["r_both"] = float(y[both].sum() / pred[both].sum()) if both.any() else float("nan")
    return out


def main() -> None:
    lines = ["# Residuals of the fidelity runs, from the engines' step logs (`residuals.py`)", "",
             "ratio = measured / predicted step time (step model without the contention term), per engine step of "
             "the live run (in the simulator every step takes its predicted time). Each run with the profile it names.",
             "",
             "| run | steps | busy measured / predicted (with contention term) | ratio p10 / p50 / p90 | lag-1 autocorr. of log ratio | "
             "busy share in steps >= 2x predicted | pd: busy share with both engines in a step | "
             "pd: measured / predicted busy, one engine / both |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path in sorted(HERE.glob("*/fidelity.json")):
        a = analyse(path.parent)
        if a is None:
            continue
        pd = (f"{100 * a['overlap_share']:.0f}% | {a['r_alone']:.2f} / {a['r_both']:.2f}" if "overlap_share" in a
              else "n/a | n/a")
        lines.append(f"| {path.parent.name} | {a['steps']} | {a['busy_measured_s']:.0f} s / {a['busy_predicted_s']:.0f} s ({a['busy_contended_s']:.0f} s) "
                     f"| {a['r_p10']:.2f} / {a['r_p50']:.2f} / {a['r_p90']:.2f} | {a['autocorr']:.2f} | "
                     f"{100 * a['slow_share']:.0f}% | {pd} |")
    (HERE / "residuals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
