"""SpecuStream inside a vLLM engine: a v1 ``Scheduler`` whose speculation depth comes
from a streamserve ``SpecPolicy`` at every step.

vLLM reads the depth of each step from ``self.dynamic_sd_lookup[batch_size]`` (its
"dynamic speculative decoding" table, normally filled from a static batch-size
schedule). We put an object there whose ``__getitem__`` asks the policy, so the
policy sees the real batch of the step being scheduled; vLLM itself caps nothing, so
the value is clamped to ``num_speculative_tokens`` (the drafter's buffers are sized
for it). Drafts proposed at the end of step t with depth k_t are verified in step
t+1; ``make_spec_decoding_stats`` is where vLLM counts them per request, and the step
is reported to the policy in ``update_from_output``.

This module is loaded by the engine process (``--scheduler-cls``), which finds the
policy config in ``$STREAMSERVE_SPEC_POLICY`` (JSON written by ``engines.engine_env``)
and appends each change of k to ``$STREAMSERVE_K_TRACE`` for the front end to read
(and, with ``profile_steps: true``, every step's tokens and duration to
``$STREAMSERVE_STEP_LOG``, to fit a profile of the engine's real step costs).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

from streamserve.gpu.policyload import build_engine_spec_policy
from streamserve.gpu.steplog import step_shape
from streamserve.policies.base import SpecPolicy, StepObservation


class _PolicyLookup:
    """Stands in for vLLM's batch-size -> k table; each lookup is one policy decision."""

    def __init__(self, owner: "SpecuStreamScheduler") -> None:
        self.owner = owner

    def __getitem__(self, batch_size: int) -> int:
        return self.owner.choose_k(int(batch_size))

    def __len__(self) -> int:  # vLLM never asks, but a table-like object should answer
        return self.owner.max_num_seqs + 1


class SpecuStreamScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raw = os.environ.get("STREAMSERVE_SPEC_POLICY")
        if not raw:
            raise RuntimeError("SpecuStreamScheduler needs $STREAMSERVE_SPEC_POLICY (set by streamserve serve)")
        conf = json.loads(raw)
        self.lane_id: int = int(conf["lane_id"])
        self.k_cap: int = int(self.num_spec_tokens)
        self.policy: SpecPolicy = build_engine_spec_policy(conf, k_max=self.k_cap)
        self.max_num_seqs: int = self.scheduler_config.max_num_seqs
        self.trace_path = os.environ.get("STREAMSERVE_K_TRACE") or None
        self.steps_path = os.environ.get("STREAMSERVE_STEP_LOG") or None
        self._t0 = time.monotonic()
        self._k_now = 0  # depth chosen for the step being scheduled
        self._k_prev = 0  # depth the drafts being verified now were made with
        self._last_logged_k: int | None = None
        self._step_start = 0.0
        self._drafted = 0
        self._accepted = 0
        self._shape: dict[str, int] = {}  # step_shape of the step in flight (profile_steps)
        self.dynamic_sd_lookup = _PolicyLookup(self)  # type: ignore[assignment]

    # ------------------------------------------------------------ decisions
    def _context_tokens(self) -> int:
        return sum(r.num_computed_tokens for r in self.running)

    def choose_k(self, batch_size: int) -> int:
        now = time.monotonic() - self._t0
        k = self.policy.depth(self.lane_id, batch_size, self._context_tokens(), now)
        k = max(0, min(int(k), self.k_cap))
        self._k_now = k
        if k != self._last_logged_k:
            self._last_logged_k = k
            self._trace({"t": time.time(), "k": k, "batch": batch_size})
        return k

    def _trace(self, record: dict[str, Any]) -> None:
        if self.trace_path is None:
            return
        try:
            with open(self.trace_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError:
            self.trace_path = None  # a full disk must not take the engine down

    def _log_step(self, record: dict[str, Any]) -> None:
        try:
            with open(self.steps_path, "a") as f:  # type: ignore[arg-type]
                f.write(json.dumps(record) + "\n")
        except OSError:
            self.steps_path = None

    # ------------------------------------------------------------ vLLM hooks
    def schedule(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._k_prev = self._k_now
        self._step_start = time.monotonic()
        out = super().schedule(*args, **kwargs)
        self._shape = step_shape(self, out) if self.steps_path is not None else {}
        return out

    def make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens: int,  # type: ignore[override]
                                 num_accepted_tokens: int, num_invalid_spec_tokens, request_id: str):
        invalid = (num_invalid_spec_tokens or {}).get(request_id, 0)
        self._drafted += num_draft_tokens - invalid
        self._accepted += num_accepted_tokens
        return super().make_spec_decoding_stats(spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                                num_invalid_spec_tokens, request_id)

    def update_from_output(self, scheduler_output, model_runner_output):  # type: ignore[override]
        self._drafted = self._accepted = 0
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        end = time.monotonic()
        batch = len(scheduler_output.num_scheduled_tokens)
        if batch == 0:
            return outputs
        duration = end - self._step_start
        if self.steps_path is not None:
            self._log_step({"dt": duration, "tokens": scheduler_output.total_num_scheduled_tokens, "batch": batch,
                            "k": self._k_prev, "context": self._context_tokens(), "drafted": self._drafted,
                            "accepted": self._accepted, "t": time.time(), **self._shape})
        self.policy.observe(StepObservation(
            lane_id=self.lane_id, k=self._k_prev, batch_size=batch, context_tokens=self._context_tokens(),
            drafted=self._drafted, accepted=self._accepted, step_time=duration, now=end - self._t0,
        ))
        return outputs
