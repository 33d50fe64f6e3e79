"""The prefill/decode runs simulated again without the contention term (the profile's
``calibration.contention`` cleared), to show what it changes. Writes ablation.md.

    python docs/results/fidelity/ablation.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from streamserve.calibration.fidelity import run_fidelity  # noqa: E402
from streamserve.gpu.config import load_live  # noqa: E402

sys.path.insert(0, str(HERE))
from summarize import KEYS, fmt  # noqa: E402


def main() -> None:
    lines = ["# Prefill/decode runs: simulated vs live (% error) with and without the contention term", "",
             "| run | term | " + " | ".join(label for _, label in KEYS) + " |", "|---|---|" + "---:|" * len(KEYS)]
    cfg = load_live(str(HERE / "smollm2-pd.yaml"))
    for path in sorted(HERE.glob("pd-*/fidelity.json")):
        data = json.loads(path.read_text())
        rows_with = {r["key"]: r for r in data["rows"]}
        with tempfile.TemporaryDirectory() as tmp:
            prof = json.loads((ROOT / data["profile"]).read_text())
            prof["calibration"]["contention"] = {}
            flat = Path(tmp) / "profile-no-contention.json"
            flat.write_text(json.dumps(prof))
            result = run_fidelity(cfg, flat, None, Path(tmp) / "out", seed=int(data["seed"]), echo=lambda m: None,
                                  replay_live=path.parent)
        rows_without = {r["key"]: r for r in result["rows"]}
        for label, rows in (("with", rows_with), ("without", rows_without)):
            cells = [fmt(rows[k]["error_pct"]) if k in rows else "n/a" for k, _ in KEYS]
            lines.append(f"| {path.parent.name} | {label} | " + " | ".join(cells) + " |")
    (HERE / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
