"""SpecuStream inside a vLLM engine: a v1 ``Scheduler`` whose speculation depth comes
from a streamserve ``SpecPolicy`` at every step.

vLLM reads the depth of each step from ``self.dynamic_sd_lookup[batch_size]`` (its
"dynamic speculative decoding" table, normally filled from a static batch-size
schedule; streamserve passes one listing every k from 0 to k_max, so that vLLM plans
CUDA graphs for each). We put an object there whose ``__getitem__`` asks the policy, so the
policy sees the real batch of the step being scheduled; vLLM itself caps nothing, so
the value is clamped to ``num_speculative_tokens`` (the drafter's buffers are sized
for it). Drafts proposed at the end of step t with depth k_t are verified in step
t+1; ``make_spec_decoding_stats`` is where vLLM counts them per request, and the step
is reported to the policy in ``update_from_output``. Each request's workload class
travels with it from the client (``vllm_xargs: {"streamserve_class": ...}``), so the
policy gets the batch's class counts in ``depth`` and per-class outcomes in ``observe``,
as in the simulator.

This module is loaded by the engine process (``--scheduler-cls``), which finds the
policy config in ``$STREAMSERVE_SPEC_POLICY`` (JSON written by ``engine_args.engine_env``)
and appends each change of k to ``$STREAMSERVE_K_TRACE`` (a log; the front end reads
k from the engine's spec-decode counters) (and, with ``profile_steps: true``, every step's tokens and duration to
``$STREAMSERVE_STEP_LOG``, to fit a profile of the engine's real step costs).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

from streamserve.gpu.policyload import build_engine_spec_policy
from streamserve.gpu.protocol import CLASS_KEY
from streamserve.gpu.steplog import step_shape
from streamserve.policies.base import SpecPolicy, StepObservation


SUPPORTED = "0.32"  # the vLLM release whose scheduler these hooks were written and checked against
_LOOKUP_READ = re.compile(r"=\s*self\.dynamic_sd_lookup\[\s*len\(num_scheduled_tokens\)\s*\]")
_STATS_PARAMS = ["spec_decoding_stats", "num_draft_tokens", "num_accepted_tokens", "num_invalid_spec_tokens",
                 "request_id"]


class VllmHookError(RuntimeError):
    """The installed vLLM no longer has the scheduler hook SpecuStream drives k through."""


def vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def _fail(problem: str) -> VllmHookError:
    return VllmHookError(f"vLLM {vllm_version()}: {problem}; SpecuStreamScheduler was written against vLLM "
                         f"{SUPPORTED}'s dynamic_sd_lookup and would otherwise run at a fixed k (install vLLM "
                         f"{SUPPORTED}, or update streamserve/gpu/specsched.py)")


def check_vllm_hooks(scheduler_cls: type = Scheduler) -> None:
    """Check, before any request, that ``scheduler_cls`` still uses the hooks this module
    overrides as it did in vLLM 0.32: ``schedule`` takes each step's k from
    ``self.dynamic_sd_lookup[len(num_scheduled_tokens)]`` into
    ``num_spec_tokens_to_schedule``, ``__init__`` builds that lookup, and
    ``make_spec_decoding_stats`` / ``update_from_output`` keep their signatures. vLLM
    proposals would restructure the lookup; if one lands, the engine must stop with this
    error rather than serve with k silently fixed at k_max."""
    try:
        schedule = inspect.getsource(scheduler_cls.schedule)
        init = inspect.getsource(scheduler_cls.__init__)
    except (OSError, TypeError, AttributeError) as e:
        raise _fail(f"the source of {scheduler_cls.__name__}.schedule/__init__ cannot be read ({e})") from None
    if not _LOOKUP_READ.search(schedule):
        raise _fail(f"{scheduler_cls.__name__}.schedule no longer reads k as self.dynamic_sd_lookup[len(num_scheduled_tokens)]")
    if "num_spec_tokens_to_schedule" not in schedule:
        raise _fail(f"{scheduler_cls.__name__}.schedule no longer hands k on as num_spec_tokens_to_schedule")
    if "self.dynamic_sd_lookup" not in init:
        raise _fail(f"{scheduler_cls.__name__}.__init__ no longer builds self.dynamic_sd_lookup")
    stats = getattr(scheduler_cls, "make_spec_decoding_stats", None)
    params = list(inspect.signature(stats).parameters)[1:] if callable(stats) else None
    if params != _STATS_PARAMS:
        raise _fail(f"{scheduler_cls.__name__}.make_spec_decoding_stats takes {params}, not {_STATS_PARAMS}")
    update = getattr(scheduler_cls, "update_from_output", None)
    if not callable(update) or list(inspect.signature(update).parameters)[1:3] != ["scheduler_output",
                                                                                    "model_runner_output"]:
        raise _fail(f"{scheduler_cls.__name__}.update_from_output(scheduler_output, model_runner_output) is gone")


def check_k_table(lookup: object, k_cap: int) -> None:
    """After vLLM's ``__init__``: the lookup it built from the engine's
    ``num_speculative_tokens_per_batch_size`` lists every k from 0 to ``k_cap`` (so CUDA
    graphs were planned for each), before this module replaces it."""
    if not isinstance(lookup, list):
        raise _fail(f"dynamic_sd_lookup is {type(lookup).__name__} after Scheduler.__init__, not the list built "
                    "from num_speculative_tokens_per_batch_size (was the table dropped, e.g. with data parallelism?)")
    listed = sorted(set(lookup[1:]))
    if listed != list(range(k_cap + 1)):
        raise _fail(f"dynamic_sd_lookup lists k = {listed}, not every k from 0 to {k_cap}")


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
        check_vllm_hooks(Scheduler)
        super().__init__(*args, **kwargs)
        check_k_table(self.dynamic_sd_lookup, int(self.num_spec_tokens))
        raw = os.environ.get("STREAMSERVE_SPEC_POLICY")
        if not raw:
            raise RuntimeError("SpecuStreamScheduler needs $STREAMSERVE_SPEC_POLICY (set by streamserve serve)")
        conf = json.loads(raw)
        self.lane_id: int = int(conf["lane_id"])
        self.k_cap: int = int(self.num_spec_tokens)
        # not ``self.policy``: that is vLLM's own scheduling policy (FCFS or priority)
        self.spec_policy: SpecPolicy = build_engine_spec_policy(conf, k_max=self.k_cap)
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
        self._by_class: dict[str, list[int]] = {}  # class -> [drafted, accepted] in the step being updated
        self._shape: dict[str, int] = {}  # step_shape of the step in flight (profile_steps)
        self.dynamic_sd_lookup = _PolicyLookup(self)  # type: ignore[assignment]

    # ------------------------------------------------------------ decisions
    def _context_tokens(self) -> int:
        return sum(r.num_computed_tokens for r in self.running)

    def _class_of(self, request: Any) -> str:
        """The workload class the client named (``vllm_xargs.streamserve_class``, which
        vLLM keeps in the request's ``sampling_params.extra_args``)."""
        extra = getattr(request.sampling_params, "extra_args", None) or {}
        return str(extra.get(CLASS_KEY, "default"))

    def _classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.running:
            c = self._class_of(r)
            counts[c] = counts.get(c, 0) + 1
        return counts

    def choose_k(self, batch_size: int) -> int:
        now = time.monotonic() - self._t0
        k = self.spec_policy.depth(self.lane_id, batch_size, self._context_tokens(), now, self._classes())
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
        request = self.requests.get(request_id)
        if request is not None and num_draft_tokens:
            tally = self._by_class.setdefault(self._class_of(request), [0, 0])
            tally[0] += num_draft_tokens - invalid
            tally[1] += num_accepted_tokens
        return super().make_spec_decoding_stats(spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                                num_invalid_spec_tokens, request_id)

    def update_from_output(self, scheduler_output, model_runner_output):  # type: ignore[override]
        self._drafted = self._accepted = 0
        self._by_class = {}
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
        self.spec_policy.observe(StepObservation(
            lane_id=self.lane_id, k=self._k_prev, batch_size=batch, context_tokens=self._context_tokens(),
            drafted=self._drafted, accepted=self._accepted, step_time=duration, now=end - self._t0,
            by_class={c: (d, a) for c, (d, a) in self._by_class.items()} or None,
        ))
        return outputs
