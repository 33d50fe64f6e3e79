"""What a run writes besides summary.json: plots, and the request records as Parquet."""
from __future__ import annotations

import csv
import sys

import pytest

from streamserve.cli import main
from streamserve.metrics import REQUEST_COLUMNS


def simulate(*args: str) -> int:
    try:
        main(["simulate", "-q", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_plots_are_written_on_request(tmp_path):
    assert simulate("-n", "200", "--out", str(tmp_path), "--plots") == 0
    for name in ("latency_cdf.png", "spec_k.png", "lanes.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name


def test_no_plots_for_a_small_run_by_default(tmp_path):
    assert simulate("-n", "50", "--out", str(tmp_path)) == 0
    assert not list(tmp_path.glob("*.png"))


def test_parquet_holds_the_csv_columns_and_values(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    args = ("--arch", "vllm-dp", "-n", "120", "--seed", "4")
    assert simulate(*args, "--out", str(tmp_path / "c")) == 0
    assert simulate(*args, "--out", str(tmp_path / "p"), "--out-format", "parquet") == 0
    table = pq.read_table(tmp_path / "p" / "requests.parquet").to_pylist()
    with open(tmp_path / "c" / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(REQUEST_COLUMNS) == list(table[0])
    assert len(table) == len(rows) == 120
    for got, want in zip(table, rows):
        for col in REQUEST_COLUMNS:
            if want[col] == "":
                assert got[col] in (None, ""), col
            elif isinstance(got[col], float):
                assert got[col] == pytest.approx(float(want[col]), abs=1e-3), col
            else:
                assert str(got[col]) == want[col], col


def test_parquet_without_pyarrow_is_one_line_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert simulate("-n", "10", "--out", str(tmp_path), "--out-format", "parquet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs pyarrow" in err[0]
    assert not (tmp_path / "summary.json").exists()
