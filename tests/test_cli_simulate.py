"""The main job: `streamserve simulate` for each architecture, reproducible per seed."""
from __future__ import annotations

import csv
import json

import pytest

from streamserve.cli import main


@pytest.mark.parametrize("arch", ["streamserve", "vllm-tp", "vllm-dp"])
def test_simulate_writes_identical_outputs_for_a_seed(tmp_path, arch):
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        with pytest.raises(SystemExit) as e:
            main(["simulate", "--arch", arch, "--num-requests", "2000", "--seed", "1", "--out", str(out), "-q",
                  "--slo", "ttft:2000", "--slo", "tpot:100"])
        assert e.value.code in (None, 0)
        outs.append(out)
    a, b = ((o / "summary.json").read_text() for o in outs)
    assert a == b
    summary = json.loads(a)
    for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "mean_e2el_ms",
                "request_throughput", "output_throughput", "completed", "failed", "request_goodput"):
        assert key in summary
    assert summary["completed"] + summary["failed"] + summary["rejected"] == 2000
    with open(outs[0] / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2000
    assert {row["state"] for row in rows} <= {"finished", "failed", "rejected"}
