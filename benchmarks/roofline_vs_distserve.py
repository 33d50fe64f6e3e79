"""Single-step times: the roofline default and the shipped profile against DistServe's fits.

    python benchmarks/roofline_vs_distserve.py [/work/shared/data/profiles] > benchmarks/results/roofline_vs_distserve.md

DistServe's times are its simulator's formulas (simdistserve/estimators/time_estimator.py
and base/worker.py ``add_ray_overhead``) over its fitted coefficients for OPT-13B on one
A100-80GB (``distserve-a100-80g.distserve.json``, read from the folder given; not shipped):
prefill ``a + b*sum(l) + c*sum(l^2) + 1 + 2 + 1e-4*sum(l)``; decode of ``B`` sequences of
576 tokens ``a + b*B*577 + c*B + 2 + 1e-4*B*576``, with the large-batch set from B = 95.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamserve.perfmodel import Profile  # noqa: E402

CTX = 576


def distserve(fit: dict, kind: str, n: int, length: int) -> float:
    if kind == "prefill":
        a, b, c = fit["prefill"]
        return a + b * n * length + c * n * length**2 + 1 + 2 + 1e-4 * n * length
    a, b, c = fit["decoding_smallbs"] if n < fit["decoding_large_small_bs_threshold"] else fit["decoding_largebs"]
    return a + b * n * (CTX + 1) + c * n + 2 + 1e-4 * n * CTX


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/profiles")
    fit = json.loads((folder / "distserve-a100-80g.distserve.json").read_text())["facebook/opt-13b"]["1"]
    empty = Profile({"format": "streamserve-profile", "version": 2}, "none")
    roof = {r: empty.lane("opt-13b", "A100-80GB", 1, role=r) for r in ("prefill", "decode")}
    prof = {r: Profile.load().lane("opt-13b", "A100-80GB", 1, role=r) for r in ("prefill", "decode")}
    cases = [("prefill", 1, 512), ("prefill", 4, 512)] + [("decode", b, CTX) for b in (1, 16, 64, 128, 256)]
    print("# Single-step times, OPT-13B on one A100-80GB: roofline and shipped profile vs DistServe\n")
    print("Written by `benchmarks/roofline_vs_distserve.py` (pure arithmetic, no timing: machine-independent).")
    print("DistServe: its simulator's formulas over its disaggregated-engine fits; roofline: "
          "`streamserve/roofline.py` (A100-80GB efficiency 0.6); profile: the shipped "
          "`default-a100.json` (DistServe's fits in the one step formula, with a roofline knee; "
          "no large-batch set, so B >= 95 compares the knee against DistServe's large-batch fit).\n")
    print("| step | DistServe (ms) | roofline (ms) | roofline error | profile (ms) | profile error |")
    print("|---|---|---|---|---|---|")
    for kind, n, length in cases:
        ref = distserve(fit, kind, n, length)
        if kind == "prefill":
            r = roof["prefill"].prefill_time(n * length, n * length**2) * 1e3
            p = prof["prefill"].prefill_time(n * length, n * length**2) * 1e3
            what = f"prefill {n} x {length}"
        else:
            r = roof["decode"].decode_time(n, n * CTX) * 1e3
            p = prof["decode"].decode_time(n, n * CTX) * 1e3
            what = f"decode batch {n}, context {CTX}"
        print(f"| {what} | {ref:.2f} | {r:.2f} | {(r / ref - 1) * 100:+.1f}% | {p:.2f} | {(p / ref - 1) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
