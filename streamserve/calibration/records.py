"""The profile directory ``streamserve profile`` writes and ``streamserve calibrate`` reads.

Layout (every file JSON or JSON Lines, one object per line)::

    DIR/meta.json       what was profiled: model, profile entry (perf model, gpu), lanes, speculation
    DIR/cells.jsonl     one line per finished grid cell (id, phase, shape, steps kept, wall time)
    DIR/steps.jsonl     one line per engine step, annotated with its lane and cell
    DIR/requests.jsonl  one line per request the grid sent (client-side TTFT and E2E)

A step line (``StepRecord``) holds what the engine scheduled and how long the step took,
measured inside the engine (``streamserve/gpu/steplog.py``). Lines of a cell that did not
finish (an interrupted run) are ignored, so a resumed run never counts a step twice.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"
CELLS = "cells.jsonl"
STEPS = "steps.jsonl"
REQUESTS = "requests.jsonl"
FORMAT = "streamserve-steps"
VERSION = 1


class ProfileDirError(ValueError):
    """A profile directory is missing, empty or corrupt (the message names file and line)."""


@dataclass(slots=True)
class StepRecord:
    """One engine step. Times in seconds; token counts as the step model defines them."""

    lane: int  # lane id in the live config
    role: str  # prefill | decode | colocated
    cell: str  # grid cell it ran in
    dataset: str  # prompt class of the cell (acceptance is fitted per class)
    dt: float  # duration: start of scheduling to end of the output update
    tokens: int  # T: tokens scheduled (prompt chunks + decode tokens + verified drafts)
    prompt_tokens: int  # of which prompt/chunk tokens
    prompt_sq: int  # P2 = sum l * (2 * done + l) over the prompt chunks
    decode_seqs: int  # B: decoding sequences
    decode_ctx: int  # C: KV tokens those sequences held before the step
    spec_tokens: int  # draft tokens verified in this step
    k: int  # depth the verified drafts were made with (0: no speculation)
    accepted: int  # draft tokens accepted
    kv_loaded: int  # KV tokens that arrived with new requests (remote prefill)
    kv_saved: int  # prompt tokens whose KV the step saved for a remote decode
    handoffs: int  # new requests that arrived with KV
    t: float = 0.0  # wall clock at the step's end (time.time())

    @classmethod
    def from_engine(cls, raw: dict[str, Any], lane: int, role: str, cell: str, dataset: str) -> "StepRecord":
        """A line of an engine's step log plus where it ran."""
        return cls(lane=lane, role=role, cell=cell, dataset=dataset, dt=float(raw["dt"]),
                   tokens=int(raw["tokens"]), prompt_tokens=int(raw["prompt_tokens"]),
                   prompt_sq=int(raw["prompt_sq"]), decode_seqs=int(raw["decode_seqs"]),
                   decode_ctx=int(raw["decode_ctx"]), spec_tokens=int(raw["spec_tokens"]), k=int(raw["k"]),
                   accepted=int(raw["accepted"]), kv_loaded=int(raw["kv_loaded"]), kv_saved=int(raw["kv_saved"]),
                   handoffs=int(raw["handoffs"]), t=float(raw.get("t", 0.0)))


STEP_FIELDS = tuple(f.name for f in fields(StepRecord))
NUMERIC = tuple(f for f in STEP_FIELDS if f not in ("role", "cell", "dataset"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProfileDirError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ProfileDirError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not folder.is_dir():
        raise ProfileDirError(f"{folder}: no such profile directory (make one with `streamserve profile`)")
    if not path.is_file():
        raise ProfileDirError(f"{folder}: not a profile directory (no {META}; make one with `streamserve profile`)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileDirError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ProfileDirError(f"{path}: field 'format' must be {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ProfileDirError(f"{path}: field 'version' is {meta.get('version')!r}; this streamserve reads {VERSION}")
    for key in ("model", "perf_model", "gpu", "lanes", "speculation", "kv_bytes_per_token"):
        if key not in meta:
            raise ProfileDirError(f"{path}: missing field {key!r}")
    return meta


def finished_cells(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / CELLS
    if not path.is_file():
        return {}
    cells = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if "id" not in row:
            raise ProfileDirError(f"{path}:{n}: missing field 'id'")
        cells[str(row["id"])] = row
    return cells


def read_steps(folder: Path) -> tuple[dict[str, Any], list[StepRecord]]:
    """The meta data and the steps of every finished cell of a profile directory."""
    meta = read_meta(folder)
    done = finished_cells(folder)
    path = folder / STEPS
    if not done or not path.is_file():
        raise ProfileDirError(f"{folder}: no finished grid cell, nothing to fit (run `streamserve profile` "
                              "to the end, or resume it)")
    steps = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if raw.get("cell") not in done:
                    continue
                steps.append(StepRecord(**{k: raw[k] for k in STEP_FIELDS if k in raw}))
            except json.JSONDecodeError as e:
                raise ProfileDirError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            except (TypeError, AttributeError) as e:
                raise ProfileDirError(f"{path}:{n}: not a step record ({e})") from None
    if not steps:
        raise ProfileDirError(f"{path}: no step of a finished cell (were the engines started with step logging?)")
    return meta, steps


def columns(steps: list[StepRecord]) -> dict[str, np.ndarray]:
    """The steps as numpy columns (what the fit works on)."""
    cols = {name: np.array([getattr(s, name) for s in steps], dtype=np.float64) for name in NUMERIC}
    cols["dataset"] = np.array([s.dataset for s in steps])
    cols["role"] = np.array([s.role for s in steps])
    return cols


def as_row(step: StepRecord) -> dict[str, Any]:
    return asdict(step)
