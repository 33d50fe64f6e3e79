"""Collect the fidelity runs of this folder into summary.md (the table README quotes).

    python docs/results/fidelity/summarize.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = [("mean_ttft_ms", "TTFT mean"), ("p90_ttft_ms", "TTFT p90"), ("mean_tpot_ms", "TPOT mean"),
        ("p90_tpot_ms", "TPOT p90"), ("mean_e2el_ms", "E2E mean"), ("p90_e2el_ms", "E2E p90"),
        ("request_throughput", "throughput"), ("mean_k", "mean k")]


def fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.0f}%"


def main() -> None:
    lines = ["# Fidelity runs: simulated vs live, % error (simulated - live) / live", "",
             "| run | requests | live req/s | " + " | ".join(label for _, label in KEYS)
             + " | live engine busy time: measured / step model | profile |",
             "|---|---:|---:|" + "---:|" * len(KEYS) + "---:|---|"]
    for path in sorted(HERE.glob("*/fidelity.json")):
        data = json.loads(path.read_text())
        rows = {r["key"]: r for r in data["rows"]}
        check = data.get("live_step_check") or {}
        cells = [fmt(rows[k]["error_pct"]) if k in rows else "n/a" for k, _ in KEYS]
        step = f"{check['busy_s_measured']:.0f} s / {check['busy_s_predicted']:.0f} s" if check else "not kept"
        lines.append(f"| {path.parent.name} | {data['requests']} | {data['live']['request_throughput']:.2f} | "
                     + " | ".join(cells) + f" | {step} | {Path(data['profile']).name} |")
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
