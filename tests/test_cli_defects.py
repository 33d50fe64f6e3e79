"""Regression tests for issue 11's defects 5-10: user input reaches the scheduler, and
every mistake ends in one line naming the file, the line and the field. Each failed on
558d8f0."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from streamserve.cli import main

DISAGG = "lanes:\n  - {role: prefill, pair: 0}\n  - {role: decode, pair: 0}\n"


def simulate(tmp_path: Path, *args: str) -> int:
    try:
        main(["simulate", "-q", "--out", str(tmp_path / "out"), *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def test_5_the_clusters_slo_reaches_the_scheduler_and_goodput_is_always_reported(tmp_path):
    cfg = write(tmp_path, "c.yaml", "lanes:\n  - {role: colocated}\nscheduler: {name: stream, overload: reject}\n"
                                    "slo: {ttft_ms: 300}\n")
    assert simulate(tmp_path, "--config", cfg, "-n", "300", "--rate", "20") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected"] > 0  # overload: reject acts on the cluster's SLO
    assert summary["slo"] == {"ttft_ms": 300.0, "tpot_ms": None}
    assert simulate(tmp_path, "--arch", "vllm-dp", "-n", "50") == 0  # no SLO given anywhere
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["slo"] == {"ttft_ms": 1000.0, "tpot_ms": 50.0} and "request_goodput" in summary


def test_6_kv_capacity_below_one_block_is_a_config_error(tmp_path, capsys):
    cfg = write(tmp_path, "c.yaml", "lanes:\n  - {role: colocated}\nengine:\n  kv_capacity_tokens: 8\n")
    line = one_line_error(capsys, simulate(tmp_path, "--config", cfg))
    assert "c.yaml:3" in line and "kv_capacity_tokens (8) must hold at least one block" in line


@pytest.mark.parametrize("content,expected", [
    (b"\xff\xfe\x00n\x00a\x00m\x00e", "not a UTF-8 text file"),
    (b"lanes: [{role: colocated}]\n\x80\x81\n", "not a UTF-8 text file"),
])
def test_7_a_binary_config_is_one_line(tmp_path, capsys, content, expected):
    cfg = write(tmp_path, "c.yaml", content)
    assert expected in one_line_error(capsys, simulate(tmp_path, "--config", cfg))


def test_7_negative_seed_and_bad_out_fail_before_running(tmp_path, capsys):
    assert "'--seed'" in one_line_error(capsys, simulate(tmp_path, "--seed", "-5"))
    (tmp_path / "out").write_text("a file")
    assert "'--out'" in one_line_error(capsys, simulate(tmp_path, "-n", "5"))


def test_8_token_counts_are_range_checked(tmp_path, capsys):
    trace = write(tmp_path, "t.csv", "prompt_len,output_len,arrival\n100,10,0\n1e23,10,1\n")
    line = one_line_error(capsys, simulate(tmp_path, "--workload", trace))
    assert "t.csv:3: prompt_len: length 1e+23 is above the bound" in line


@pytest.mark.parametrize("config,expected", [
    (DISAGG.replace(", pair: 0", "") + "scheduler: {name: stream, pairing: pairs}\n",
     "c.yaml:4: scheduler.pairing: 'pairs' needs lanes with pair ids"),
    (DISAGG + "speculation: {method: draft, k_max: 16}\nspec_policy:\n  name: fixed\n  k: 40\n",
     "c.yaml:7: spec_policy.k: 40 exceeds speculation.k_max (16)"),
    (DISAGG + "faults:\n  - {lane: 0, at: .inf, kind: down}\n", "c.yaml:5: faults.0.at: Input should be a finite number"),
    (DISAGG + "router:\n  name: flowguard\n  w_latency: bogus\n", "c.yaml:6: router.w_latency: "),
    (DISAGG + "router:\n  name: nosuch\n", "c.yaml:5: router.name: unknown router 'nosuch'"),
    (DISAGG + "scheduler:\n  name: stream\n  order: bogus\n", "c.yaml:6: scheduler.order: must be one of"),
])
def test_9_wrong_policy_options_name_file_line_and_field(tmp_path, capsys, config, expected):
    cfg = write(tmp_path, "c.yaml", config)
    assert expected in one_line_error(capsys, simulate(tmp_path, "--config", cfg))


@pytest.mark.parametrize("make,expected", [
    (lambda text: gzip.compress(text.encode()), "is gzip-compressed"),
    (lambda text: text.encode("utf-16"), "is UTF-16 text"),
    (lambda text: text.replace("100,10,0", "1" * (5 << 20) + ",10,0").encode(), "line longer than 4 MiB"),
])
def test_10_compressed_utf16_and_overlong_traces_say_so(tmp_path, capsys, make, expected):
    trace = write(tmp_path, "t.csv", make("prompt_len,output_len,arrival\n100,10,0\n200,20,1\n"))
    assert expected in one_line_error(capsys, simulate(tmp_path, "--workload", trace))


def test_10_an_overlong_jsonl_line_is_refused(tmp_path, capsys):
    trace = write(tmp_path, "t.jsonl", '{"prompt_len": 5, "output_len": 3, "text": "' + "a" * (5 << 20) + '"}\n')
    assert "t.jsonl:1: line longer than 4 MiB" in one_line_error(capsys, simulate(tmp_path, "--workload", trace))
