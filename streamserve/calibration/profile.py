"""`streamserve profile`: drive a live deployment through the grid and keep its steps.

Each grid cell (``grid.py``) is sent through the front end; afterwards the steps the
engines logged during it are read from their step logs, tagged with lane, role, cell
and prompt class, and appended to ``DIR/steps.jsonl``; then the cell is marked done in
``DIR/cells.jsonl`` (format: ``records.py``). Run again with the same ``--out`` to
resume: finished cells are skipped, a cell cut off half-way is run again and its
partial steps are ignored.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamserve.calibration import records
from streamserve.calibration.gather import SCHEDULER_NAME
from streamserve.calibration.grid import Cell, build_grid
from streamserve.calibration.kcycle import POLICY_NAME
from streamserve.calibration.live import Deployment, model_folder
from streamserve.config import PolicyConfig
from streamserve.gpu.config import LiveConfig, PerfRef
from streamserve.specs import MODELS, ModelSpec
from streamserve.workload.base import Workload

SETTLE_S = 0.3  # after a cell's last response: the engine writes its last step line just after
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


class ProfileRunError(RuntimeError):
    """The profile run cannot go on (the message says why, in one line)."""


def hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileRunError(f"{path}: cannot read the model's config.json ({e})") from None


def _matches(spec: ModelSpec, hf: dict[str, Any]) -> bool:
    return (hf.get("num_hidden_layers"), hf.get("hidden_size"), hf.get("num_attention_heads"),
            hf.get("num_key_value_heads", hf.get("num_attention_heads")), hf.get("vocab_size")) == (
        spec.num_layers, spec.hidden, spec.num_heads, spec.num_kv_heads, spec.vocab)


def model_spec_for(cfg: LiveConfig) -> str:
    """The model spec (``streamserve.specs``) describing the served model: ``perf.model``
    when it matches the model's config.json, else the one spec that does."""
    hf = hf_config(model_folder(cfg))
    if cfg.perf.model in MODELS and _matches(MODELS[cfg.perf.model], hf):
        return cfg.perf.model
    found = [name for name, spec in MODELS.items() if _matches(spec, hf)]
    if len(found) != 1:
        raise ProfileRunError(
            f"perf.model {cfg.perf.model!r} does not describe {cfg.model} ({hf.get('num_hidden_layers')} layers, "
            f"hidden {hf.get('hidden_size')}) and {'no' if not found else 'more than one'} model spec does; "
            "add one to streamserve/specs.py and name it in perf.model")
    return found[0]


def kv_bytes_per_token(cfg: LiveConfig) -> int:
    """KV bytes per token as the engines store it (the served dtype, not the spec's)."""
    hf = hf_config(model_folder(cfg))
    dtype = cfg.dtype if cfg.dtype != "auto" else str(hf.get("dtype") or hf.get("torch_dtype") or "bfloat16")
    heads = int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
    return 2 * int(hf["num_hidden_layers"]) * int(hf.get("num_key_value_heads", heads)) * head_dim \
        * DTYPE_BYTES.get(dtype, 2)


def device_name(cfg: LiveConfig) -> str:
    return "cpu" if cfg.device == "cpu" else cfg.perf.gpu


def profiling_config(cfg: LiveConfig) -> LiveConfig:
    """``cfg`` with the profile run's changes: every step logged, k cycled on decoders,
    requests spread evenly (round robin, first come first served, a burst prefilled whole
    before it decodes: ``gather.py``)."""
    update: dict[str, Any] = {"profile_steps": True, "scheduler": PolicyConfig(name=SCHEDULER_NAME),
                              "router": PolicyConfig(name="round_robin"),
                              # the profile being made may be the one the config names: predict with the roofline
                              "perf": PerfRef(profile=None, model=cfg.perf.model, gpu=cfg.perf.gpu)}
    if cfg.speculation.method != "none":
        update["spec_policy"] = PolicyConfig(name=POLICY_NAME)
    return cfg.model_copy(update=update)


def make_meta(cfg: LiveConfig, size: str, config_path: str) -> dict[str, Any]:
    return {
        "format": records.FORMAT, "version": records.VERSION,
        "model": str(model_folder(cfg)), "served_model_name": cfg.model_name,
        "perf_model": model_spec_for(cfg), "gpu": device_name(cfg), "device": cfg.device, "dtype": cfg.dtype,
        "lanes": [{"lane": i, "role": e.role, "tp": e.tp, "max_num_seqs": e.max_num_seqs}
                  for i, e in enumerate(cfg.engines)],
        "speculation": cfg.speculation.model_dump(), "connector": cfg.connector if cfg.disaggregated else None,
        "kv_bytes_per_token": kv_bytes_per_token(cfg), "grid": size, "config": config_path,
    }


def cell_workload(cell: Cell, gap_s: float = 0.0) -> Workload:
    """The requests of ``cell``: a burst from ``concurrency`` clients, or (``gap_s`` > 0) one
    request every ``gap_s`` seconds."""
    n = cell.requests
    arrival = np.arange(n, dtype=np.float64) * gap_s if gap_s > 0 else None
    return Workload(name=cell.id, prompt_len=np.full(n, cell.prompt_len, dtype=np.int64),
                    output_len=np.full(n, cell.output_len, dtype=np.int64), arrival=arrival,
                    dataset=np.zeros(n, dtype=np.int16), datasets=(cell.dataset,),
                    concurrency=None if arrival is not None else cell.concurrency)


def cell_gap_s(out: Path, cell: Cell) -> float:
    """Seconds between the arrivals of a ``contend`` cell: its ``spacing`` times the median
    client TTFT of the run's single prompts of the same length (``prefill-*`` cells, which
    run earlier), so that the engines overlap on any machine, CPU or GPU."""
    if cell.spacing <= 0:
        return 0.0
    path = out / records.REQUESTS
    rows = records.read_jsonl(path) if path.is_file() else []
    ttft = [float(r["ttft"]) for r in rows
            if str(r.get("cell", "")).startswith(f"prefill-{cell.prompt_len}-r") and float(r.get("ttft", 0)) > 0]
    if not ttft:
        raise ProfileRunError(f"cell {cell.id}: no single prompt of {cell.prompt_len} tokens measured in {path} "
                              "to space its requests by")
    return cell.spacing * float(np.median(ttft))


@dataclass
class _LogTail:
    """Reads what an engine appended to its step log since the last read."""

    path: Path
    offset: int = 0
    pending: bytes = field(default=b"")

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.is_file() else 0
        self.pending = b""

    def new_lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = self.pending + f.read()
        self.offset += len(data) - len(self.pending)
        *lines, self.pending = data.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def run_profile(cfg: LiveConfig, out: Path, size: str = "full", attach: bool = False, seed: int = 0,
                config_path: str = "", on_cell: Callable[[int, int, Cell], None] | None = None) -> int:
    """Run every unfinished cell of the grid; return the number of steps kept in total."""
    out.mkdir(parents=True, exist_ok=True)
    meta = make_meta(cfg, size, config_path)
    meta_path = out / records.META
    if meta_path.is_file():
        old = records.read_meta(out)
        for key in ("model", "perf_model", "gpu", "lanes", "speculation", "grid"):
            if old.get(key) != meta.get(key):
                raise ProfileRunError(f"{out} holds a profile run with another {key} ({old.get(key)!r}); "
                                      "resume with the same config and grid, or choose another --out")
    else:
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    grid = build_grid(cfg.max_model_len, min(e.max_num_seqs for e in cfg.engines),
                      cfg.speculation.method != "none", size, engines=len(cfg.engines))
    done = records.finished_cells(out)
    todo = [c for c in grid if c.id not in done]
    kept = sum(int(c.get("steps", 0)) for c in done.values())
    if on_cell:
        on_cell(len(grid) - len(todo), len(grid), grid[0])
    if not todo:
        return kept
    run_cfg = cfg if attach else profiling_config(cfg)
    with Deployment(run_cfg, out / "engine-logs", attach=attach) as dep:
        tails = {lane: _LogTail(dep.step_log(lane)) for lane in dep.roles}
        # Warm-up, not recorded: an engine's first steps of each shape compile kernels.
        for warm in (Cell("warmup-1", "warmup", 64, 8, 1, 1, "prose"), Cell("warmup-4", "warmup", 128, 8, 4, 4, "code")):
            dep.send(cell_workload(warm), seed)
        for cell in todo:
            for tail in tails.values():
                tail.skip_to_end()
            t0 = time.monotonic()
            # each cell its own prompts: a prefix shared with an earlier cell would be served from
            # the prefix cache (and ExampleConnector would save only the part computed)
            result, _, _ = dep.send(cell_workload(cell, cell_gap_s(out, cell)), seed + zlib.crc32(cell.id.encode()))
            failed = [r for r in result.requests if r.state.name != "FINISHED"]
            if failed:
                dep.check_alive()
                raise ProfileRunError(f"cell {cell.id}: {len(failed)} of {len(result.requests)} requests failed "
                                      f"(first: {failed[0].reason})")
            time.sleep(SETTLE_S)
            steps = [records.StepRecord.from_engine(raw, lane, dep.roles[lane], cell.id, cell.dataset)
                     for lane, tail in tails.items() for raw in tail.new_lines() if "prompt_tokens" in raw]
            if not steps:
                where = f"{dep.log_dir} (a `streamserve serve` with profile_steps: true logs there)" if attach \
                    else str(dep.log_dir)
                raise ProfileRunError(f"cell {cell.id}: no engine logged a step in {where}")
            records.write_jsonl(out / records.STEPS, [records.as_row(s) for s in steps])
            records.write_jsonl(out / records.REQUESTS, [
                {"cell": cell.id, "prompt_tokens": r.prompt_len, "output_tokens": r.generated,
                 "ttft": r.ttft, "e2e": r.e2e} for r in result.requests])
            records.write_jsonl(out / records.CELLS, [{**cell.as_dict(), "steps": len(steps),
                                                      "wall_s": round(time.monotonic() - t0, 3)}])
            kept += len(steps)
            done[cell.id] = {}
            if on_cell:
                on_cell(len(done), len(grid), cell)
    return kept
