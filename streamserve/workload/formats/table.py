"""Column-wise readers for CSV and JSONL traces.

A production trace has millions of rows. Turning each row into a Python object before
the simulation starts costs seconds and gigabytes, so these readers parse a file in
chunks of a few megabytes straight into numpy arrays. Per chunk, every line's field
count is checked in numpy; a file whose fields are all numbers is then parsed by
``np.fromstring`` in C with no Python object per value, and any other file is split into
fields in one ``bytes.split`` and converted column by column by numpy. Only when a
conversion fails is the chunk walked row by row, to name the exact line that is bad.

Row ``i`` of a returned CSV table always comes from line ``first_line + i`` of the file
(a blank line in the middle of a CSV is a bad row, not skipped), so any check made on
the arrays can name the line of the first offending row. JSONL tables skip blank lines
and keep a row-to-line map instead.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Literal, Sequence

import numpy as np

from streamserve.workload.errors import WorkloadError, fail

Kind = Literal["float", "time", "text", "ints"]
CHUNK_BYTES = 16 << 20
MAX_LINE_BYTES = 4 << 20  # one request per line: longer is a broken or binary file, and would cost GBs to parse
# Leading bytes of files that are not UTF-8 text, and what to do about them.
NOT_TEXT = (
    (b"\x1f\x8b", "is gzip-compressed: decompress it first (gunzip -k FILE)"),
    (b"BZh", "is bzip2-compressed: decompress it first (bunzip2 -k FILE)"),
    (b"\xfd7zXZ", "is xz-compressed: decompress it first (unxz -k FILE)"),
    (b"\x28\xb5\x2f\xfd", "is zstd-compressed: decompress it first (zstd -d FILE)"),
    (b"PK\x03\x04", "is a zip archive: extract the trace from it first"),
    (b"\xff\xfe", "is UTF-16 text: convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 FILE)"),
    (b"\xfe\xff", "is UTF-16 text: convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 FILE)"),
)


@dataclass
class Table:
    """Parsed columns of one file; ``float``/``time`` columns are float64, ``text`` are bytes
    (numpy ``S``), ``ints`` (JSON lists) are a :class:`Ragged`."""

    path: Path
    first_line: int  # the file line of row 0 (1-based)
    columns: dict[str, object] = field(default_factory=dict)
    rows: int = 0
    time_is_datetime: dict[str, bool] = field(default_factory=dict)
    line_numbers: np.ndarray | None = None  # JSONL: blank lines are skipped, so rows map by table

    def line(self, row: int) -> int:
        if self.line_numbers is not None:
            return int(self.line_numbers[int(row)])
        return self.first_line + int(row)


@dataclass
class Ragged(abc.Sequence):
    """Variable-length integer lists in two flat arrays; item ``i`` is a tuple.

    Mooncake's ``hash_ids`` are a list per request; a tuple per row for a large trace
    would be millions of objects, so they stay flat until a request is materialised.
    """

    values: np.ndarray  # int64
    offsets: np.ndarray  # int64, len = items + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[int, ...]:  # type: ignore[override]
        i = int(i)
        if i < 0:
            i += len(self)
        return tuple(self.values[self.offsets[i]:self.offsets[i + 1]].tolist())

    def take(self, idx: np.ndarray) -> "Ragged":
        """The items at ``idx`` (a permutation or a subset), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        starts = self.offsets[idx]
        # Position j of the output comes from starts[item] + (j - offsets[item]).
        item = np.repeat(np.arange(len(idx)), lens)
        src = starts[item] + (np.arange(offsets[-1]) - offsets[item])
        return Ragged(self.values[src], offsets)


# ---------------------------------------------------------------- helpers
def check_readable(path: Path) -> None:
    """A one-line error unless ``path`` is a readable file of UTF-8 text (or plain ASCII)."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise WorkloadError(f"{path}: workload file not found") from None
    except IsADirectoryError:
        raise WorkloadError(f"{path}: is a directory, not a workload file") from None
    except PermissionError:
        raise WorkloadError(f"{path}: cannot read the file (permission denied)") from None
    for magic, what in NOT_TEXT:
        if head.startswith(magic):
            raise WorkloadError(f"{path}: {what}")
    if b"\x00" in head:  # UTF-16/32 without a byte-order mark, or a binary file
        raise WorkloadError(f"{path}: not UTF-8 text (NUL bytes at the start: UTF-16, or a binary file)")


def _longest_line(chunk: bytes) -> int:
    ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
    return int(np.diff(ends, prepend=-1, append=len(chunk)).max())


def bounded_lines(f: BinaryIO, path: Path, start: int = 1) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of an open file, refusing a line over ``MAX_LINE_BYTES``."""
    lineno = start
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES:
            raise WorkloadError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES >> 20} MiB "
                                "(a trace holds one request per line)")
        yield lineno, line
        lineno += 1


def _is_float(s: bytes) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _to_float(raw: np.ndarray, table: Table, row0: int, name: str) -> np.ndarray:
    try:
        return raw.astype(np.float64)
    except ValueError:
        for i, v in enumerate(raw):
            if not _is_float(bytes(v).strip()):
                shown = bytes(v).decode(errors="replace")
                what = "empty value" if not shown.strip() else f"non-numeric value {shown!r}"
                raise fail(table.path, table.line(row0 + i), name, what) from None
        raise


def _to_time(raw: np.ndarray, table: Table, row0: int, name: str, base: list[int]) -> np.ndarray:
    """Datetime strings (ISO 8601, optional UTC offset) to seconds since the first row."""
    try:
        with warnings.catch_warnings():
            # numpy converts an explicit UTC offset correctly but warns that it has no
            # timezone type; the offset is honoured, so the warning says nothing useful.
            warnings.simplefilter("ignore")
            ns = raw.astype("datetime64[ns]").astype(np.int64)
    except ValueError:
        for i, v in enumerate(raw):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    np.datetime64(bytes(v).decode(errors="replace").strip(), "ns")
            except ValueError:
                shown = bytes(v).decode(errors="replace")
                raise fail(table.path, table.line(row0 + i), name,
                           f"not a timestamp: {shown!r}") from None
        raise
    if not base:
        base.append(int(ns[0]))
    return (ns - base[0]).astype(np.float64) / 1e9


def _convert(raw: np.ndarray, kind: Kind, table: Table, row0: int, key: str, name: str,
             base: list[int]) -> np.ndarray:
    """Convert one chunk of column ``key`` (called ``name`` in the file)."""
    if kind == "text":
        # A copy at the column's own width: a view would keep the whole chunk's fields alive.
        return np.char.strip(raw)
    if kind == "time" and table.time_is_datetime.get(key):
        return _to_time(np.char.strip(raw), table, row0, name, base)
    return _to_float(raw, table, row0, name)


def _concat(parts: list[np.ndarray], kind: Kind) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    return np.zeros(0, dtype="S1" if kind == "text" else np.float64)


def find_column(header: Sequence[str], name: str) -> int | None:
    """Index of ``name`` in ``header``: exact match first, then ignoring case and spaces."""
    if name in header:
        return header.index(name)
    key = name.strip().lower()
    for i, h in enumerate(header):
        if h.strip().lower() == key:
            return i
    return None


# ---------------------------------------------------------------- CSV
def csv_header(path: Path) -> tuple[list[str], int]:
    """The header fields of a CSV file and the line they are on (after blank lines)."""
    check_readable(path)
    with path.open("rb") as f:
        for lineno, line in bounded_lines(f, path):
            text = line.decode("utf-8-sig", errors="replace").split("\r")[0].strip()
            if text:
                return [h.strip() for h in _csv_row(text, path, lineno)], lineno
    raise WorkloadError(f"{path}: empty file (no header and no rows)")


def read_csv(path: Path, columns: dict[str, tuple[str, Kind]]) -> Table:
    """Read the named columns of a CSV file with a header row.

    ``columns`` maps our field name to (the file's column name, its kind). A ``time``
    column holds numbers (seconds, or whatever unit the caller scales) or datetime
    strings; which one is decided by the first data row.
    """
    header, header_line = csv_header(path)
    idx: dict[str, int] = {}
    for name, (col, _kind) in columns.items():
        i = find_column(header, col)
        if i is None:
            raise fail(path, header_line, col,
                       f"missing column (header has: {', '.join(header) or 'nothing'})")
        idx[name] = i
    ncols = len(header)
    table = Table(path=path, first_line=header_line + 1)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    base: list[int] = []
    rows = 0
    numeric_file: bool | None = None  # every column of the file is a number: the fastest path
    with path.open("rb") as f:
        for _ in range(header_line):
            f.readline()
        pending_blank = 0  # blank lines seen at a chunk's end: bad only if rows follow
        while True:
            chunk = f.read(CHUNK_BYTES)
            if not chunk:
                break
            tail = f.readline(MAX_LINE_BYTES + 1)
            if len(tail) > MAX_LINE_BYTES:
                raise WorkloadError(f"{path}: a line longer than {MAX_LINE_BYTES >> 20} MiB after line "
                                    f"{table.line(rows)} (a trace holds one request per line)")
            chunk += tail
            if len(chunk) > MAX_LINE_BYTES and _longest_line(chunk) > MAX_LINE_BYTES:
                raise WorkloadError(f"{path}: a line longer than {MAX_LINE_BYTES >> 20} MiB after line "
                                    f"{table.line(rows)} (a trace holds one request per line)")
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            # Blank lines at the very end of the file are harmless; anywhere else they
            # are a bad row. Hold trailing ones back until we know whether rows follow.
            body = chunk.rstrip()
            if not body:
                pending_blank += max(chunk.count(b"\n"), 1)
                continue
            if pending_blank:
                raise fail(path, table.line(rows), None, "blank line inside the data")
            pending_blank = chunk.count(b"\n", len(body)) - 1
            quoted = b'"' in body
            if not quoted:
                n = _check_field_counts(body, ncols, table, rows)
            if numeric_file is None:
                first = body.split(b"\n", 1)[0]
                cells = [c.strip() for c in _csv_row(first.decode(errors="replace"), path, table.line(rows))]
                numeric_file = not quoted and all(_is_float(c.encode()) for c in cells)
                for name, (col, kind) in columns.items():
                    if kind == "time" and idx[name] < len(cells):
                        table.time_is_datetime[name] = bool(cells[idx[name]]) and not _is_float(cells[idx[name]].encode())
            values = _numeric_chunk(body, n, ncols) if numeric_file and not quoted else None
            if values is not None:
                for name in columns:
                    parts[name].append(values[:, idx[name]].copy())
                rows += n
                continue
            lines = body.split(b"\n")
            fields = _split_quoted(lines, ncols, table, rows) if quoted else _split(body, len(lines), ncols)
            for name, (col, kind) in columns.items():
                parts[name].append(_convert(fields[:, idx[name]], kind, table, rows, name, col, base))
            rows += len(lines)
    if rows == 0:
        raise WorkloadError(f"{path}:{header_line}: no data rows after the header")
    table.rows = rows
    table.columns = {name: _concat(parts[name], columns[name][1]) for name in columns}
    return table


def _check_field_counts(body: bytes, ncols: int, table: Table, row0: int) -> int:
    """The number of lines in ``body``, after checking each has ``ncols`` fields.

    Fields are counted in C: the commas before each line end, differenced. A blank line
    inside the data has one field, so it fails here too (unless the file has one column).
    """
    buf = np.frombuffer(body + b"\n", dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    commas = np.searchsorted(np.flatnonzero(buf == 44), ends)
    per_line = np.diff(commas, prepend=0) + 1
    bad = np.flatnonzero(per_line != ncols)
    if len(bad):
        i = int(bad[0])
        line = body.split(b"\n")[i]
        if not line.strip():
            raise fail(table.path, table.line(row0 + i), None, "blank line inside the data")
        raise fail(table.path, table.line(row0 + i), None,
                   f"expected {ncols} fields, found {per_line[i]} (truncated or malformed row)")
    return len(ends)


def _numeric_chunk(body: bytes, n: int, ncols: int) -> np.ndarray | None:
    """All fields of an all-numeric chunk as an (n, ncols) float array, parsed in C with no
    Python object per value; None when anything does not parse (the caller then takes
    the slow path, which finds and names the bad field)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, and stops, at the first unparsable field
        try:
            flat = np.fromstring(body.replace(b"\n", b","), dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning):
            return None
    if len(flat) != n * ncols:
        return None
    return flat.reshape(n, ncols)


def _split(body: bytes, n: int, ncols: int) -> np.ndarray:
    """A chunk (field counts already checked) to an (n, ncols) array of byte strings."""
    return np.array(body.replace(b"\n", b",").split(b","), dtype=bytes).reshape(n, ncols)


def _csv_row(text: str, path: Path, line: int) -> list[str]:
    try:
        return next(csv.reader([text]), [])
    except csv.Error as e:
        raise fail(path, line, None, f"malformed CSV row ({e})") from None


def _split_quoted(lines: list[bytes], ncols: int, table: Table, row0: int) -> np.ndarray:
    """The slow path for files that quote fields (a quoted field may hold a comma)."""
    out: list[list[bytes]] = []
    for i, line in enumerate(lines):
        row = _csv_row(line.decode("utf-8", errors="replace"), table.path, table.line(row0 + i))
        if len(row) != ncols:
            raise fail(table.path, table.line(row0 + i), None,
                       f"expected {ncols} fields, found {len(row)} (truncated or malformed row)")
        out.append([c.encode() for c in row])
    return np.array(out, dtype=bytes).reshape(len(lines), ncols)


# ---------------------------------------------------------------- JSONL
JSONL_FLUSH_ROWS = 1 << 16


def read_jsonl(path: Path, columns: dict[str, tuple[str, Kind]], optional: Sequence[str] = ()) -> Table:
    """Read fields of a JSON-lines file (one object per line) into columns.

    JSON has no fast columnar path without extra dependencies, so rows are decoded one
    by one; their values are gathered in lists that become arrays every 65,536 rows, so
    the Python objects alive at any time are those of one block, not of the file.
    """
    check_readable(path)
    table = Table(path=path, first_line=1)
    lines_of_rows: list[int] = []
    pending: dict[str, list] = {name: [] for name in columns}
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    lens: dict[str, list[int]] = {n: [] for n, (_, k) in columns.items() if k == "ints"}
    present = {name: True for name in columns}
    rows = 0

    def flush() -> None:
        for name, (key, kind) in columns.items():
            values = pending[name]
            if kind == "text" or table.time_is_datetime.get(name):
                continue  # kept as a list (text) or parsed at the end (datetimes)
            blocks[name].append(np.asarray(values, dtype=np.int64 if kind == "ints" else np.float64))
            pending[name] = []

    with path.open("rb") as f:
        for lineno, line in bounded_lines(f, path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = getattr(e, "msg", str(e))
                raise fail(path, lineno, None, f"invalid JSON ({msg}; truncated line?)") from None
            if not isinstance(obj, dict):
                raise fail(path, lineno, None, "expected a JSON object on each line")
            for name, (key, kind) in columns.items():
                if key not in obj:
                    if name in optional and (rows == 0 or not present[name]):
                        present[name] = False
                        continue
                    raise fail(path, lineno, key, "missing field")
                if rows > 0 and not present[name]:
                    raise fail(path, lineno, key, "field present here but missing on earlier lines")
                v = obj[key]
                if kind == "ints":
                    if not isinstance(v, list) or not all(type(x) is int and -(2**63) <= x < 2**63 for x in v):
                        raise fail(path, lineno, key, "expected a list of 64-bit integers")
                    pending[name].extend(v)
                    lens[name].append(len(v))
                elif kind == "text":
                    pending[name].append(str(v))
                elif kind == "time" and (table.time_is_datetime.get(name) or (rows == 0 and isinstance(v, str)
                                                                             and not _is_float(v.encode()))):
                    table.time_is_datetime[name] = True
                    pending[name].append(str(v))
                else:
                    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (
                            isinstance(v, str) and not _is_float(v.encode())):
                        what = "null" if v is None else f"non-numeric value {v!r}"
                        raise fail(path, lineno, key, what)
                    try:
                        pending[name].append(float(v))
                    except OverflowError:
                        raise fail(path, lineno, key, "number too large") from None
            lines_of_rows.append(lineno)
            rows += 1
            if rows % JSONL_FLUSH_ROWS == 0:
                flush()
    if rows == 0:
        raise WorkloadError(f"{path}: empty file (no JSON lines)")
    flush()
    table.rows = rows
    table.line_numbers = np.asarray(lines_of_rows, dtype=np.int64)
    base: list[int] = []
    for name, (key, kind) in columns.items():
        if not present[name]:
            continue
        if kind == "ints":
            offsets = np.zeros(rows + 1, dtype=np.int64)
            np.cumsum(np.asarray(lens[name], dtype=np.int64), out=offsets[1:])
            table.columns[name] = Ragged(_concat(blocks[name], kind).astype(np.int64), offsets)
        elif kind == "text":
            table.columns[name] = pending[name]
        elif table.time_is_datetime.get(name):
            raw = np.array([x.encode("utf-8", "replace") for x in pending[name]], dtype=bytes)
            table.columns[name] = _to_time(raw, table, 0, key, base)
        else:
            table.columns[name] = _concat(blocks[name], kind)
    return table
