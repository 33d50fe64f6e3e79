"""Bad trace input gives one line naming the file, the line and the field; never a traceback."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamserve.workload.resolve import WorkloadError, resolve_workload

AZ_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _good_azure(n: int) -> list[str]:
    return [f"2023-11-16 18:15:{i // 10:02d}.{i % 10}000000,{100 + i},{10 + i}" for i in range(n)]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _err(path: Path, **kw) -> str:
    with pytest.raises(WorkloadError) as e:
        resolve_workload(str(path), warn=lambda m: None, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_empty_file(tmp_path: Path) -> None:
    assert _err(_write(tmp_path, "e.csv", "")) == f"{tmp_path}/e.csv: empty file"
    assert "empty file" in _err(_write(tmp_path, "blank.csv", "\n\n  \n"))


def test_header_only(tmp_path: Path) -> None:
    msg = _err(_write(tmp_path, "h.csv", AZ_HEADER))
    assert msg == f"{tmp_path}/h.csv:1: no data rows after the header"


def test_missing_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "m.csv", "TIMESTAMP,ContextTokens,Generated\n2023-11-16 18:15:00,1,2\n")
    msg = _err(p, fmt="azure")
    assert msg.startswith(f"{p}:1: GeneratedTokens: missing column (header has: TIMESTAMP, ContextTokens, Generated)")


def test_unknown_format(tmp_path: Path) -> None:
    p = _write(tmp_path, "u.csv", "foo,bar\n1,2\n")
    assert _err(p).startswith(f"{p}:1: unknown trace format (header: foo,bar)")
    j = _write(tmp_path, "u.jsonl", '{"a": 1}\n')
    assert _err(j).startswith(f"{j}:1: unknown JSONL format (keys: a)")
    assert "--format: 'parquet'" in _err(p, fmt="parquet") or "format" in _err(p, fmt="parquet")


@pytest.mark.parametrize("value,problem", [
    ("abc", "non-numeric value 'abc'"),
    ("", "empty value"),
    ("-5", "negative length -5"),
    ("nan", "NaN is not a token count"),
    ("NaN", "NaN is not a token count"),
    ("2.5", "length 2.5 is not a whole number of tokens"),
    ("0", "length 0 is below the minimum of 1"),
    ("inf", "inf is not a token count"),
])
def test_bad_length_names_line_and_field(tmp_path: Path, value: str, problem: str) -> None:
    rows = _good_azure(20)
    ts, p, _ = rows[13].split(",")
    rows[13] = f"{ts},{p},{value}"
    path = _write(tmp_path, "bad.csv", AZ_HEADER + "\n".join(rows) + "\n")
    assert _err(path) == f"{path}:15: GeneratedTokens: {problem}"


def test_bad_timestamp(tmp_path: Path) -> None:
    rows = _good_azure(5)
    rows[2] = "yesterday,1,1"
    path = _write(tmp_path, "t.csv", AZ_HEADER + "\n".join(rows))
    assert _err(path) == f"{path}:4: TIMESTAMP: not a timestamp: 'yesterday'"


def test_wrong_field_count_and_blank_line(tmp_path: Path) -> None:
    rows = _good_azure(6)
    rows[4] = rows[4].rsplit(",", 1)[0]  # truncated row
    path = _write(tmp_path, "f.csv", AZ_HEADER + "\n".join(rows) + "\n")
    assert _err(path) == f"{path}:6: expected 3 fields, found 2 (truncated or malformed row)"
    rows = _good_azure(6)
    path = _write(tmp_path, "b.csv", AZ_HEADER + "\n".join(rows[:3] + [""] + rows[3:]) + "\n\n")
    assert _err(path) == f"{path}:5: blank line inside the data"


def test_unsorted_timestamps_warn_or_fail(tmp_path: Path) -> None:
    rows = _good_azure(10)
    rows[6], rows[7] = rows[7], rows[6]
    path = _write(tmp_path, "s.csv", AZ_HEADER + "\n".join(rows) + "\n")
    warnings: list[str] = []
    w = resolve_workload(str(path), warn=warnings.append)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}:9: TIMESTAMP: timestamps are not sorted") and "sorted by time" in warnings[0]
    assert np.all(np.diff(w.arrival) >= 0)
    assert sorted(w.prompt_len.tolist()) == list(range(100, 110))
    assert w.prompt_len[6] == 106 and w.prompt_len[7] == 107  # rows moved with their times
    msg = _err(path, strict=True)
    assert msg.startswith(f"{path}:9: TIMESTAMP: timestamps are not sorted") and "--strict" in msg


def test_truncated_json_line(tmp_path: Path) -> None:
    good = json.dumps({"timestamp": 1, "input_length": 5, "output_length": 6, "hash_ids": [1]})
    path = _write(tmp_path, "m.jsonl", "\n".join([good, good, good[:-9]]) + "\n")
    msg = _err(path)
    assert msg.startswith(f"{path}:3: invalid JSON (") and "truncated" in msg


def test_jsonl_missing_and_bad_fields(tmp_path: Path) -> None:
    rows = [{"timestamp": i, "input_length": 5, "output_length": 6} for i in range(4)]
    del rows[2]["output_length"]
    path = _write(tmp_path, "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert _err(path, fmt="mooncake") == f"{path}:3: output_length: missing field"
    rows[2]["output_length"] = "many"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _err(path) == f"{path}:3: output_length: non-numeric value 'many'"
    rows[2]["output_length"] = -1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _err(path) == f"{path}:3: output_length: negative length -1"
    rows[2]["output_length"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _err(path) == f"{path}:3: output_length: null"


def test_sharegpt_truncated_and_bad_items(tmp_path: Path) -> None:
    conv = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    text = json.dumps([conv, conv], indent=1)
    path = _write(tmp_path, "s.json", text[: len(text) // 2 + 3])
    msg = _err(path)
    assert msg.startswith(f"{path}:") and "truncated" in msg
    path.write_text(json.dumps([conv, {"id": 3}], indent=1))
    assert _err(path) == f"{path}:14: conversations: missing, or not a list of turns"  # the item opens on line 14


def test_nonexistent_and_directory(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="neither a dataset .* nor an existing file"):
        resolve_workload(str(tmp_path / "nope.csv"))
    with pytest.raises(WorkloadError, match="is a directory"):
        resolve_workload(str(tmp_path))


# ---------------------------------------------------------------- property-based
BAD_VALUES = st.sampled_from(["abc", "", "-1", "-3.5", "nan", "NaN", "1.5", "0", "1e400", "--", "0x10", "1 2"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), data=st.data(), bad=BAD_VALUES)
def test_hypothesis_malformed_length_is_located(n: int, data: st.DataObject, bad: str) -> None:
    rows = _good_azure(n)
    row = data.draw(st.integers(0, n - 1))
    col = data.draw(st.sampled_from([1, 2]))
    fields = rows[row].split(",")
    fields[col] = bad
    rows[row] = ",".join(fields)
    name = ["ContextTokens", "GeneratedTokens"][col - 1]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "h.csv"
        path.write_text(AZ_HEADER + "\n".join(rows) + "\n")
        with pytest.raises(WorkloadError) as e:
            resolve_workload(str(path), warn=lambda m: None)
    assert str(e.value).startswith(f"{path}:{row + 2}: {name}: ")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_hypothesis_broken_rows_never_traceback(n: int, data: st.DataObject) -> None:
    """Random damage anywhere (cut lines, junk, extra commas) loads or fails with a located line."""
    rows = _good_azure(n)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, n - 1))
        how = data.draw(st.sampled_from(["cut", "junk", "comma", "swap"]))
        if how == "cut":
            rows[i] = rows[i][: data.draw(st.integers(0, len(rows[i])))]
        elif how == "junk":
            rows[i] = data.draw(st.text(alphabet="ab,.-9 \t", max_size=20))
        elif how == "comma":
            rows[i] += ","
        else:
            j = data.draw(st.integers(0, n - 1))
            rows[i], rows[j] = rows[j], rows[i]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.csv"
        path.write_text(AZ_HEADER + "\n".join(rows) + "\n")
        try:
            w = resolve_workload(str(path), warn=lambda m: None)
        except WorkloadError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
        else:
            kept = list(rows)
            while kept and not kept[-1].strip():  # blank lines at the end are not rows
                kept.pop()
            assert len(w) == len(kept)


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.one_of(
    st.fixed_dictionaries({"timestamp": st.integers(0, 10**6), "input_length": st.integers(1, 10**5),
                           "output_length": st.integers(1, 10**4)}).map(json.dumps),
    st.text(max_size=30)), min_size=1, max_size=12))
def test_hypothesis_jsonl_garbage(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.jsonl"
        path.write_text("\n".join(lines) + "\n")
        try:
            w = resolve_workload(str(path), fmt="mooncake", warn=lambda m: None)
        except WorkloadError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
        else:
            assert len(w) == sum(1 for x in lines if x.strip())


FORMAT_NAMES = ["auto", "azure", "burstgpt", "mooncake", "sharegpt", "csv", "jsonl"]
CSV_HEADS = [AZ_HEADER, "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n",
             "arrival,prompt_len,output_len\n", ""]


@settings(max_examples=150, deadline=None)
@given(fmt=st.sampled_from(FORMAT_NAMES), head=st.sampled_from(CSV_HEADS),
       body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                      st.text(alphabet='{}[]":,0123456789.-eE \nabc', max_size=200).map(str.encode)))
def test_hypothesis_any_bytes_any_format_is_loaded_or_one_line(fmt: str, head: str, body: bytes) -> None:
    """Whatever the bytes and the named format: a workload, or one WorkloadError line naming the file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "any.dat"
        path.write_bytes(head.encode() + body)
        try:
            w = resolve_workload(str(path), fmt=fmt, warn=lambda m: None)
        except WorkloadError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            assert len(w) >= 1 and w.prompt_len.min() >= 1 and w.output_len.min() >= 1
