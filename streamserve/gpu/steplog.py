"""What one engine step computed, recorded from inside the engine (profiling).

``step_shape`` reads a vLLM ``SchedulerOutput`` right after it is scheduled and returns
the step's composition in the step model's own terms (``streamserve.perfmodel``):
prompt tokens and their attention work, decoding sequences and the KV they read,
draft tokens verified, and KV moved by the connector (tokens loaded from a remote
prefill, tokens whose KV this engine saves for a remote decode). The step-time fit
(``streamserve.calibration.fit``) needs exactly these columns; timings inferred from
HTTP could not separate them.

``StepLogScheduler`` is the scheduler ``streamserve profile`` gives engines that do not
speculate (prefill engines, colocated engines without drafts), so that every engine of
a deployment logs its steps to ``$STREAMSERVE_STEP_LOG``; speculating engines log the
same fields from ``specsched.SpecuStreamScheduler``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler


def step_shape(sched: Any, out: Any) -> dict[str, int]:
    """The composition of the step ``out`` that ``sched`` just scheduled.

    vLLM advances ``num_computed_tokens`` when it schedules, so the KV a request held
    before this step is ``num_computed_tokens - scheduled``."""
    prompt = p2 = batch = ctx = spec = loaded = saved = handoffs = 0
    new_ids = {r.req_id for r in out.scheduled_new_reqs}
    drafts = out.scheduled_spec_decode_tokens
    for rid, n in out.num_scheduled_tokens.items():
        req = sched.requests[rid]
        done = req.num_computed_tokens - n
        if done < req.num_prompt_tokens:  # a prompt chunk
            prompt += n
            p2 += n * (2 * done + n)
            params = req.kv_transfer_params or {}
            if params.get("do_remote_decode"):
                saved += n
        else:
            batch += 1
            ctx += done
            spec += len(drafts.get(rid, ()))
        if rid in new_ids and done > 0:  # KV that arrived with the request (connector or prefix cache)
            loaded += done
            handoffs += 1
    return {"prompt_tokens": prompt, "prompt_sq": p2, "decode_seqs": batch, "decode_ctx": ctx,
            "spec_tokens": spec, "kv_loaded": loaded, "kv_saved": saved, "handoffs": handoffs}


def append_record(path: str, record: dict[str, Any]) -> bool:
    """Append one JSON line; False when the file cannot be written (the caller stops
    logging: a full disk must not take the engine down)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        return False
    return True


class StepLogScheduler(Scheduler):
    """vLLM's scheduler, unchanged, plus one JSON line per step (``step_shape`` and the
    step's duration from the start of scheduling to the end of its output update)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_path: str | None = os.environ.get("STREAMSERVE_STEP_LOG") or None
        self._step_start = 0.0
        self._shape: dict[str, int] = {}

    def schedule(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._step_start = time.monotonic()
        out = super().schedule(*args, **kwargs)
        self._shape = step_shape(self, out) if self.steps_path is not None else {}
        return out

    def update_from_output(self, scheduler_output, model_runner_output):  # type: ignore[override]
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self.steps_path is not None and scheduler_output.total_num_scheduled_tokens > 0:
            record = {"t": time.time(), "dt": time.monotonic() - self._step_start,
                      "tokens": scheduler_output.total_num_scheduled_tokens,
                      "batch": len(scheduler_output.num_scheduled_tokens), "k": 0, "drafted": 0, "accepted": 0,
                      **self._shape}
            if not append_record(self.steps_path, record):
                self.steps_path = None
        return outputs
