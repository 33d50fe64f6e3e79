"""Where a pd profile's single-step error comes from: step_drift.md.

    python docs/results/fidelity/step_drift.py

For each pd profile (`profile-pd-threads-bound/`: the engines' torch threads bound to a
core each; `profile-pd/`: the whole engines), fits it as `streamserve calibrate` does (one
fit per role, the step model on the steps that ran alone), then, over all its steps,
reports ratio = measured / step model alone:

* per burst cell, the median ratio of the decode engine's steps that ran alone (drift
  from one cell to the next: something the cell's inputs do not say slows or speeds all
  its steps),
* how much steps of the same shape within one cell differ (the machine's own spread),
* the spread of the ratio of the steps another engine stepped during, per unit of overlap.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streamserve.calibration import records
from streamserve.calibration.fit import ALONE, design, predict
from streamserve.calibration.roles import fit_by_role, overlap

HERE = Path(__file__).resolve().parent


def section(folder: str) -> list[str]:
    _, steps = records.read_steps(HERE / folder)
    cols = records.columns(steps)
    cols["overlap"] = overlap(cols)
    cells = np.array([s.cell for s in steps])
    fits = fit_by_role(cols)
    ratio = np.full(len(steps), np.nan)
    for role, fit in fits.items():
        sel = cols["role"] == role
        x = design({k: v[sel] for k, v in cols.items()})
        ratio[sel] = cols["dt"][sel] * 1e3 / predict(fit.params, x)
    alone = cols["overlap"] < ALONE
    dec = (cols["role"] == "decode") & (cols["handoffs"] == 0)
    lines = [f"## `{folder}/`", "", "Decode engine, steps that ran alone, per burst cell:", "",
             "| cell | steps | median ratio | p10 / p90 ratio |", "|---|---:|---:|---:|"]
    medians = []
    for cell in sorted(set(cells[dec & alone].tolist())):
        m = dec & alone & (cells == cell)
        if m.sum() < 8 or cell.startswith("contend"):
            continue
        r = ratio[m]
        medians.append(float(np.median(r)))
        lines.append(f"| {cell} | {m.sum()} | {np.median(r):.2f} | {np.percentile(r, 10):.2f} / {np.percentile(r, 90):.2f} |")
    devs = []
    keys = np.stack([cols["tokens"], cols["prompt_tokens"], cols["decode_seqs"], cols["spec_tokens"]], axis=1)
    for cell in sorted(set(cells.tolist())):
        m = dec & alone & (cells == cell)
        if not m.any():
            continue
        _, group = np.unique(keys[m], axis=0, return_inverse=True)
        dt = cols["dt"][m]
        for g in np.unique(group.ravel()):
            d = dt[group.ravel() == g]
            if len(d) >= 3:
                devs.append(np.abs(d - np.median(d)) / d)
    dev = np.concatenate(devs)
    ov = dec & ~alone & (cols["overlap"] > 0.5)
    lines += ["", f"Median ratio per burst cell: {min(medians):.2f} to {max(medians):.2f} over {len(medians)} cells.", "",
              "Same shape, same cell:", "",
              f"Decode steps that ran alone with the same tokens, prompt tokens, sequences and draft tokens in "
              f"one cell (groups of >= 3; {len(dev)} steps) differ from their group's median by "
              f"{100 * np.median(dev):.1f}% (median), {100 * np.percentile(dev, 90):.1f}% (p90).", "",
              "Steps another engine stepped during:", "",
              f"Decode steps with overlap > 0.5 ({ov.sum()} steps): ratio p10 / p50 / p90 "
              + " / ".join(f"{q:.2f}" for q in np.percentile(ratio[ov], [10, 50, 90]))
              + f"; the fitted contention term predicts 1 + {fits['decode'].contention:.2f} x overlap on average.", ""]
    return lines


def main() -> None:
    lines = ["# The pd profiles' steps against their step model (`step_drift.py`)", "",
             "ratio = measured / predicted by the step model alone (fitted as `calibrate` does).", ""]
    for folder in ("profile-pd-threads-bound", "profile-pd"):
        lines += section(folder)
    (HERE / "step_drift.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
