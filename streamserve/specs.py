"""Model and GPU specifications: what the roofline step model (``roofline.py``) needs.

Every figure names its source. Models come from their published Hugging Face
``config.json`` (repository named per entry); parameter counts are computed from the
architecture (embeddings, attention, MLP, untied LM head) rather than copied, so a spec
cannot disagree with itself. GPUs come from NVIDIA's datasheets: dense (not sparse)
BF16/FP16 tensor FLOP/s, HBM bandwidth and memory, and the per-direction bandwidth of
the link tensor-parallel all-reduces run over.
"""
from __future__ import annotations

from dataclasses import dataclass


class SpecError(ValueError):
    """An unknown model or GPU name (the message names the known ones)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer, as its ``config.json`` describes it."""

    name: str
    hf_repo: str  # where the figures come from (its config.json)
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn: int  # intermediate size
    vocab: int
    max_model_len: int  # max_position_embeddings: the context window
    gated_mlp: bool = True  # SwiGLU (3 matrices) vs a plain 2-matrix MLP (OPT)
    tied_embeddings: bool = False
    dtype_bytes: int = 2  # bf16/fp16 weights and KV cache

    @property
    def layer_params(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn
        return attn + mlp

    @property
    def params(self) -> int:
        """Weights (norms and biases left out: < 0.1%)."""
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.num_layers * self.layer_params + embed

    @property
    def matmul_params(self) -> int:
        """Parameters a token multiplies through (the input embedding is a lookup)."""
        return self.num_layers * self.layer_params + self.vocab * self.hidden

    @property
    def weight_bytes(self) -> float:
        return float(self.params * self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    source: str
    dense_tflops: float  # BF16/FP16 tensor core, dense
    hbm_gbps: float  # GB/s (1e9 bytes)
    memory_gb: float
    tp_link_gbps: float  # GB/s per direction between the GPUs of one TP group
    tp_link: str
    kv_link_gbps: float  # GB/s per direction a KV hand-off can use between two GPUs
    efficiency: float  # attained fraction of peak FLOP/s and of peak HBM bandwidth


def _m(name: str, repo: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int, ctx: int,
       gated: bool = True, tied: bool = False) -> ModelSpec:
    return ModelSpec(name, repo, layers, hidden, heads, kv, hidden // heads, ffn, vocab, ctx, gated, tied)


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    # Targets.
    _m("opt-13b", "facebook/opt-13b", 40, 5120, 40, 40, 20480, 50272, 2048, gated=False, tied=True),
    _m("llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096),
    _m("llama-2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096),
    _m("llama-3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192),
    _m("llama-3-70b", "meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192),
    _m("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 28, 3584, 28, 4, 18944, 152064, 32768),
    _m("qwen2.5-14b", "Qwen/Qwen2.5-14B-Instruct", 48, 5120, 40, 8, 13824, 152064, 32768),
    # Draft models (method=draft), one per family.
    _m("opt-125m", "facebook/opt-125m", 12, 768, 12, 12, 3072, 50272, 2048, gated=False, tied=True),
    _m("llama-68m", "JackFram/llama-68m", 2, 768, 12, 12, 3072, 32000, 2048),
    _m("llama-3.2-1b", "meta-llama/Llama-3.2-1B", 16, 2048, 32, 8, 8192, 128256, 131072, tied=True),
    _m("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 24, 896, 14, 2, 4864, 151936, 32768, tied=True),
    # Small models the live runtime runs on a CPU (`streamserve models prepare`), for calibration.
    _m("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 30, 576, 9, 3, 1536, 49152, 8192, tied=True),
    _m("tiny-random", "streamserve/gpu/models.py build_tiny (random weights)", 2, 128, 2, 1, 256, 2048, 4096),
)}

# The draft model vLLM users pair with each target family (same tokenizer).
FAMILY_DRAFT = {"opt-13b": "opt-125m", "llama-2-7b": "llama-68m", "llama-2-13b": "llama-68m",
                "llama-3-8b": "llama-3.2-1b", "llama-3-70b": "llama-3.2-1b",
                "qwen2.5-7b": "qwen2.5-0.5b", "qwen2.5-14b": "qwen2.5-0.5b"}

_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021): 312 TFLOPS BF16 dense; NVLink 600 GB/s (300 per direction)"
_A800 = ("NVIDIA A800 datasheets (40GB PCIe, 80GB SXM): A100 silicon, 312 TFLOPS BF16 dense; "
         "NVLink 400 GB/s (200 per direction)")
_H = "NVIDIA H100 / H200 datasheets: 989 TFLOPS BF16 dense (SXM); NVLink 900 GB/s (450 per direction)"
# Efficiency: one factor per GPU for both FLOP/s and bandwidth. 0.6 on A100-class parts
# is what DistServe's measured OPT-13B A100-80GB fits imply (prefill of 512 tokens is
# compute-bound, decode at batch 1 bandwidth-bound; docs/results/roofline_vs_distserve.md
# shows both within ~10%); Hopper and Ada get the same factor (no measurement shipped:
# an assumption, stated).
GPUS: dict[str, GpuSpec] = {g.name: g for g in (
    GpuSpec("A100-40GB", _A100 + "; 40GB SXM: 1555 GB/s HBM2", 312.0, 1555.0, 40.0, 300.0, "NVLink3", 25.0, 0.6),
    GpuSpec("A100-80GB", _A100 + "; 80GB SXM: 2039 GB/s HBM2e", 312.0, 2039.0, 80.0, 300.0, "NVLink3", 25.0, 0.6),
    GpuSpec("A800-40GB", _A800 + "; 40GB: 1555 GB/s HBM2", 312.0, 1555.0, 40.0, 200.0, "NVLink3 (A800)", 25.0, 0.6),
    GpuSpec("A800-80GB", _A800 + "; 80GB: 2039 GB/s HBM2e", 312.0, 2039.0, 80.0, 200.0, "NVLink3 (A800)", 25.0, 0.6),
    GpuSpec("H100", _H + "; H100 SXM 80GB: 3350 GB/s HBM3", 989.0, 3350.0, 80.0, 450.0, "NVLink4", 50.0, 0.6),
    GpuSpec("H200", _H + "; H200 SXM 141GB: 4800 GB/s HBM3e", 989.0, 4800.0, 141.0, 450.0, "NVLink4", 50.0, 0.6),
    GpuSpec("L40S", "NVIDIA L40S datasheet: 362 TFLOPS BF16 dense (733 with sparsity), 864 GB/s GDDR6, "
            "48 GB; no NVLink: PCIe 4.0 x16, 32 GB/s per direction", 362.0, 864.0, 48.0, 32.0, "PCIe 4.0 x16",
            25.0, 0.6),
    # A CPU host running vLLM's CPU build: only fitted profiles are meant for it (its roofline is an
    # order-of-magnitude stand-in: ~0.1 TFLOP/s fp32 and ~10 GB/s for one or two cores of the 2-core
    # machine the results in docs/results/fidelity/ come from; KV lives in VLLM_CPU_KVCACHE_SPACE).
    GpuSpec("cpu", "a CPU host (vLLM CPU build); estimates, see the comment above", 0.1, 10.0, 24.0, 10.0,
            "host memory", 10.0, 1.0),
)}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise SpecError(f"model: unknown model {name!r} (known: {', '.join(MODELS)})") from None


def gpu_spec(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise SpecError(f"gpu: unknown GPU {name!r} (known: {', '.join(GPUS)})") from None
