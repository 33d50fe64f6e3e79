"""Step-formula coefficients from first principles: a model spec on a GPU spec.

The roofline of one engine step on ``tp`` GPUs (``eff`` = the GPU's efficiency factor,
attained fraction of peak; bandwidth and FLOP/s are summed over the TP group):

* weights are read from HBM once per step: ``weights_ms = weight bytes / (tp * HBM * eff)``;
* each scheduled token multiplies through the weights: ``2 * params`` FLOPs, so
  ``compute_ms_per_token = 2 * params / (tp * FLOP/s * eff)``;
* the step takes the larger of the two (memory- or compute-bound): the knee;
* attention over a prompt chunk: ``2 * layers * heads * head_dim * l * (2 * done + l)``
  FLOPs (QK^T and AV, causal), so ``attn_sq_ms = 2 * layers * heads * head_dim / (tp * FLOP/s * eff)``;
* a decoding sequence reads its KV once per step: ``per_ctx_ms = KV bytes per token / (tp * HBM * eff)``;
* with ``tp > 1``, two all-reduces per layer of ``hidden * dtype`` bytes per token over
  the TP link (ring: ``2 * (tp - 1) / tp`` of the data per GPU) add to ``per_token_ms``,
  and their latency (``ALLREDUCE_LATENCY_MS`` each) to ``overhead_ms``;
* every step pays the serving framework's fixed cost ``STEP_OVERHEAD_MS`` and
  ``HOST_MS_PER_TOKEN`` per token: the values DistServe's simulator charges per step
  (LLMServe/DistServe, simdistserve/base/worker.py, ``add_ray_overhead``: 2 ms + 1e-4 ms
  per token).

Drafts, by method: ``ngram`` costs ``NGRAM_MS_PER_SEQ`` of host time per sequence and
step; a draft model runs ``k`` passes of its own roofline step (one token per sequence,
on one GPU of the lane's type) plus ``PASS_LAUNCH_MS_PER_LAYER`` per layer; an EAGLE head
runs ``k`` passes of one decoder layer of the target, its feature fusion (``2 * hidden``
to ``hidden``) and the target's LM head.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamserve.specs import FAMILY_DRAFT, GpuSpec, ModelSpec, SpecError, model_spec

STEP_FIELDS = ("overhead_ms", "per_token_ms", "weights_ms", "compute_ms_per_token", "attn_sq_ms", "per_ctx_ms")
STEP_OVERHEAD_MS = 2.0  # DistServe simdistserve/base/worker.py add_ray_overhead: base_overhead = 2 (ms)
HOST_MS_PER_TOKEN = 1e-4  # the same function: k = 0.0001 ms per token
ALLREDUCE_LATENCY_MS = 0.01  # estimate: NCCL small-message all-reduce latency within one node, ~10 us
PASS_LAUNCH_MS_PER_LAYER = 0.01  # estimate: ~2 kernel launches of ~5 us per layer and draft pass
NGRAM_MS_PER_SEQ = 0.02  # estimate: prompt-lookup of one sequence's history on the host per step


@dataclass(slots=True, frozen=True)
class StepCoeffs:
    """One coefficient set of the step formula, in milliseconds (``perfmodel`` doc)."""

    overhead_ms: float = 0.0
    per_token_ms: float = 0.0
    weights_ms: float = 0.0
    compute_ms_per_token: float = 0.0
    attn_sq_ms: float = 0.0
    per_ctx_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"overhead_ms": self.overhead_ms, "per_token_ms": self.per_token_ms,
                "weights_ms": self.weights_ms, "compute_ms_per_token": self.compute_ms_per_token,
                "attn_sq_ms": self.attn_sq_ms, "per_ctx_ms": self.per_ctx_ms}


@dataclass(slots=True, frozen=True)
class DraftCoeffs:
    """The draft's cost, in milliseconds (``perfmodel`` doc)."""

    method: str = "none"
    host_ms_per_seq: float = 0.0
    pass_overhead_ms: float = 0.0
    pass_weights_ms: float = 0.0
    pass_ms_per_token: float = 0.0
    pass_per_ctx_ms: float = 0.0


NO_DRAFT = DraftCoeffs()


def _bw(gpu: GpuSpec, tp: int) -> float:
    """Attained HBM bytes per millisecond over the TP group."""
    return tp * gpu.hbm_gbps * 1e9 * gpu.efficiency * 1e-3


def _flops(gpu: GpuSpec, tp: int) -> float:
    """Attained FLOPs per millisecond over the TP group."""
    return tp * gpu.dense_tflops * 1e12 * gpu.efficiency * 1e-3


def step_coeffs(model: ModelSpec, gpu: GpuSpec, tp: int) -> StepCoeffs:
    """The roofline coefficient set of ``model`` on ``tp`` x ``gpu`` (module doc)."""
    bw, flops = _bw(gpu, tp), _flops(gpu, tp)
    overhead = STEP_OVERHEAD_MS
    per_token = HOST_MS_PER_TOKEN
    if tp > 1:
        n = 2 * model.num_layers  # all-reduces per step
        overhead += n * ALLREDUCE_LATENCY_MS
        link = gpu.tp_link_gbps * 1e9 * gpu.efficiency * 1e-3  # bytes per ms
        per_token += n * 2.0 * (tp - 1) / tp * model.hidden * model.dtype_bytes / link
    return StepCoeffs(
        overhead_ms=overhead,
        per_token_ms=per_token,
        weights_ms=model.matmul_params * model.dtype_bytes / bw,
        compute_ms_per_token=2.0 * model.matmul_params / flops,
        attn_sq_ms=2.0 * model.num_layers * model.num_heads * model.head_dim / flops,
        per_ctx_ms=model.kv_bytes_per_token / bw,
    )


def draft_coeffs(draft: str | None, target: ModelSpec, gpu: GpuSpec, tp: int) -> DraftCoeffs:
    """The draft's cost by method: ``None``/``"none"``, ``"ngram"``, ``"eagle"``,
    ``"small-model"`` (the target family's draft model, ``specs.FAMILY_DRAFT``) or the
    spec name of a draft model."""
    if draft is None or draft == "none":
        return NO_DRAFT
    if draft == "ngram":
        return DraftCoeffs("ngram", host_ms_per_seq=NGRAM_MS_PER_SEQ)
    bw, flops = _bw(gpu, 1), _flops(gpu, 1)
    if draft == "eagle":
        t = target
        params = t.layer_params + 2 * t.hidden * t.hidden + t.vocab * t.hidden
        return DraftCoeffs("eagle", pass_overhead_ms=2 * PASS_LAUNCH_MS_PER_LAYER,
                           pass_weights_ms=params * t.dtype_bytes / bw,
                           pass_ms_per_token=2.0 * params / flops,
                           pass_per_ctx_ms=t.kv_bytes_per_token / t.num_layers / bw)
    name = FAMILY_DRAFT.get(target.name, "") if draft == "small-model" else draft
    if not name:
        raise SpecError(f"speculation.draft_model: no default draft model for {target.name} (name one of the "
                        f"model specs)")
    d = model_spec(name)
    return DraftCoeffs(f"draft:{d.name}", pass_overhead_ms=d.num_layers * PASS_LAUNCH_MS_PER_LAYER,
                       pass_weights_ms=d.matmul_params * d.dtype_bytes / bw,
                       pass_ms_per_token=2.0 * d.matmul_params / flops,
                       pass_per_ctx_ms=d.kv_bytes_per_token / bw)
