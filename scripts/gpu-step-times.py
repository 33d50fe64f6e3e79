"""Measure prefill and decode step times of a model spec in plain PyTorch: no vLLM, no
network, no weights to download.

It builds a Llama-architecture decoder with random weights from a model spec (the
architecture numbers of its published ``config.json``), then times, with the device
synchronised around each step:

* prefill steps: ``batch`` prompts of ``prompt_len`` tokens, causal attention;
* decode steps: ``batch`` sequences with ``context`` tokens of KV each, scoring
  ``1 + k`` tokens per sequence (k = 0 is a plain decode, k > 0 a speculative verify).

Each point is set beside the step model's prediction for that GPU (``perfmodel``'s
``Profile.lane``, which uses the roofline over the model and GPU specs when no fitted
entry exists) where streamserve can make one. The output is the measured profile:
every point, the device, the versions, and the ratio measured / predicted.

This is what a GPU box that has PyTorch but no vLLM can still tell (scripts/gpu-smoke.sh
runs it there). It is not vLLM's engine: no paged KV, no CUDA graphs, no fused kernels
beyond PyTorch's scaled_dot_product_attention, so it bounds the weights/attention part
of a step and not the serving framework's overhead.

    python scripts/gpu-step-times.py                       # llama-3-8b on cuda:0
    python scripts/gpu-step-times.py --model tiny --device cpu --quick --out /tmp/t.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Arch:
    """The numbers a Llama-style decoder's ``config.json`` gives."""

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads


# Until the model-spec module (streamserve/specs.py, issue 12) is on this branch, the
# architectures come from here; ``arch()`` prefers that module's spec when it exists.
# llama-3-8b: meta-llama/Meta-Llama-3-8B config.json. tiny: streamserve's test model
# (streamserve/gpu/models.py build_tiny), for a CPU run of seconds.
FALLBACK = {
    "llama-3-8b": Arch("llama-3-8b", 32, 4096, 32, 8, 14336, 128256),
    "tiny": Arch("tiny", 2, 128, 2, 1, 256, 2048),
}


def arch(name: str) -> tuple[Arch, str]:
    try:
        from streamserve.specs import model_spec  # type: ignore[import-not-found]
    except ImportError:
        model_spec = None
    if model_spec is not None and name != "tiny":
        m = model_spec(name)
        return Arch(name, m.num_layers, m.hidden, m.num_heads, m.num_kv_heads, m.ffn, m.vocab), "streamserve.specs"
    if name not in FALLBACK:
        raise SystemExit(f"gpu-step-times: unknown model {name!r} (known here: {', '.join(FALLBACK)})")
    return FALLBACK[name], "scripts/gpu-step-times.py FALLBACK (until streamserve.specs is merged)"


# ---------------------------------------------------------------- the model
def build(a: Arch, device: Any, dtype: Any) -> dict[str, Any]:
    """Random weights, scaled like a trained model's (std 0.02), as plain tensors."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)

    def w(*shape: int) -> Any:
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.02).to(device=device, dtype=dtype)

    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    layers = [{"wqkv": w(q + 2 * kv, a.hidden), "wo": w(a.hidden, q), "w13": w(2 * a.ffn, a.hidden),
               "w2": w(a.hidden, a.ffn), "n1": torch.ones(a.hidden, device=device, dtype=dtype),
               "n2": torch.ones(a.hidden, device=device, dtype=dtype)} for _ in range(a.num_layers)]
    return {"embed": w(a.vocab, a.hidden), "layers": layers, "norm": torch.ones(a.hidden, device=device, dtype=dtype),
            "head": w(a.vocab, a.hidden)}


def _rms(x: Any, weight: Any) -> Any:
    import torch

    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * weight


def _rope(x: Any, pos: Any) -> Any:
    """Rotary position embedding (theta 500000, as Llama 3) on [B, H, T, D]."""
    import torch

    d = x.shape[-1]
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = pos.float()[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def forward(a: Arch, m: dict[str, Any], tokens: Any, kv_cache: list[tuple[Any, Any]] | None, start: int) -> Any:
    """One step over ``tokens`` [B, T]. With ``kv_cache`` (per layer, [B, Hkv, S, D] with
    the step's slots at ``start:start+T``) the step's K/V are written into it and
    attention reads ``S = start + T`` positions; without, attention is causal over T."""
    import torch
    import torch.nn.functional as F

    b, t = tokens.shape
    hd, h, hkv = a.head_dim, a.num_heads, a.num_kv_heads
    pos = torch.arange(start, start + t, device=tokens.device)
    x = m["embed"][tokens]
    for i, layer in enumerate(m["layers"]):
        y = _rms(x, layer["n1"])
        qkv = y @ layer["wqkv"].T
        q, k, v = qkv.split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q = _rope(q.view(b, t, h, hd).transpose(1, 2), pos)
        k = _rope(k.view(b, t, hkv, hd).transpose(1, 2), pos)
        v = v.view(b, t, hkv, hd).transpose(1, 2)
        if kv_cache is None:
            keys, values, causal = k, v, True
        else:
            kc, vc = kv_cache[i]
            kc[:, :, start:start + t] = k
            vc[:, :, start:start + t] = v
            keys, values, causal = kc[:, :, :start + t], vc[:, :, :start + t], False
        keys = keys.repeat_interleave(h // hkv, dim=1)
        values = values.repeat_interleave(h // hkv, dim=1)
        if causal or t == 1:
            att = F.scaled_dot_product_attention(q, keys, values, is_causal=causal)
        else:  # verify: each of the t new tokens sees the cache and the new tokens before it
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + att.transpose(1, 2).reshape(b, t, h * hd) @ layer["wo"].T
        y = _rms(x, layer["n2"])
        gate, up = (y @ layer["w13"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ layer["w2"].T
    return _rms(x[:, -1], m["norm"]) @ m["head"].T  # logits of each sequence's last token, as an engine samples


# ---------------------------------------------------------------- timing
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(fn: Any, device: Any, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def predictor(model: str, gpu: str | None) -> tuple[Any, str]:
    """The step model's lane for ``model`` on one ``gpu`` (None with the reason when
    streamserve cannot predict for that pair)."""
    if gpu is None:
        return None, "no GPU name to predict for"
    try:
        from streamserve.perfmodel import Profile

        return Profile.load(None).lane(model, gpu, 1), f"perfmodel Profile.lane({model!r}, {gpu!r}, tp=1)"
    except Exception as e:  # an unknown pair is a reason to report, not to stop measuring
        return None, f"no prediction: {str(e).splitlines()[0]}"


def gpu_spec_name(device_name: str) -> str | None:
    """The GPU spec name matching a CUDA device name (e.g. 'NVIDIA H200' -> 'H200')."""
    try:
        from streamserve.specs import GPUS  # type: ignore[import-not-found]
        names = list(GPUS)
    except ImportError:
        names = ["A100-40GB", "A100-80GB", "A800-40GB", "A800-80GB", "H100", "H200", "L40S"]
    up = device_name.upper()
    for name in sorted(names, key=len, reverse=True):
        family, _, mem = name.partition("-")
        if family in up and (not mem or mem in up.replace(" ", "")):
            return name
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    a, source = arch(args.model)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    gpu = args.gpu or (gpu_spec_name(dev_name) if device.type == "cuda" else None)
    lane, pred_source = predictor(args.model, gpu)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    m = build(a, device, dtype)
    built_s = time.perf_counter() - t0
    quick = args.quick
    prefill_grid = [(b, p) for b in ((1, 2) if quick else (1, 4, 8)) for p in ((16, 64) if quick else (128, 512, 2048))]
    decode_grid = [(b, c, k) for b in ((1, 4) if quick else (1, 8, 32, 128)) for c in ((64,) if quick else (512, 2048))
                   for k in ((0, 2) if quick else (0, 2, 4))]
    out: dict[str, Any] = {
        "format": "streamserve-step-times", "version": 1,
        "model": args.model, "arch": asdict(a), "arch_source": source, "weights": "random (std 0.02), seed 0",
        "device": str(device), "device_name": dev_name, "gpu_spec": gpu, "dtype": args.dtype,
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "build_s": round(built_s, 2), "repeats": args.repeats, "prediction": pred_source,
        "units": "milliseconds per step (median of repeats, device synchronised)",
        "prefill": [], "decode": [],
    }
    gen = torch.Generator(device="cpu").manual_seed(1)
    for b, p in prefill_grid:
        tokens = torch.randint(0, a.vocab, (b, p), generator=gen).to(device)
        row: dict[str, Any] = {"batch": b, "prompt_len": p, "tokens": b * p}
        try:
            row["ms"] = round(time_step(lambda: forward(a, m, tokens, None, 0), device, args.repeats), 4)
        except torch.OutOfMemoryError:
            row["ms"] = None
            row["note"] = "out of memory"
        if lane is not None and row["ms"] is not None:
            row["predicted_ms"] = round(lane.prefill_time(b * p, float(b * p * p)) * 1e3, 4)
            row["measured_over_predicted"] = round(row["ms"] / row["predicted_ms"], 3)
        out["prefill"].append(row)
        print(f"prefill batch {b:4d} x {p:5d} tokens: {row['ms']} ms", flush=True)
    for b, c, k in decode_grid:
        t = 1 + k
        row = {"batch": b, "context": c, "k": k, "tokens": b * t}
        try:
            cache = [(torch.zeros(b, a.num_kv_heads, c + t, a.head_dim, device=device, dtype=dtype),
                      torch.zeros(b, a.num_kv_heads, c + t, a.head_dim, device=device, dtype=dtype))
                     for _ in range(a.num_layers)]
            tokens = torch.randint(0, a.vocab, (b, t), generator=gen).to(device)
            row["ms"] = round(time_step(lambda: forward(a, m, tokens, cache, c), device, args.repeats), 4)
            del cache
        except torch.OutOfMemoryError:
            row["ms"] = None
            row["note"] = "out of memory"
        if lane is not None and row["ms"] is not None:
            row["predicted_ms"] = round(lane.decode_time(b, b * c, k) * 1e3, 4)
            row["measured_over_predicted"] = round(row["ms"] / row["predicted_ms"], 3)
        out["decode"].append(row)
        print(f"decode batch {b:4d}, context {c:5d}, k {k}: {row['ms']} ms", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratios = [r["measured_over_predicted"] for r in out["prefill"] + out["decode"] if "measured_over_predicted" in r]
    out["measured_over_predicted_geomean"] = round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3) \
        if ratios else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="Time prefill and decode steps of a random-weight model in PyTorch.")
    ap.add_argument("--model", default="llama-3-8b", help="model spec name (default llama-3-8b; tiny for a CPU check)")
    ap.add_argument("--device", default=None, help="cuda:0 when a GPU is visible, else cpu")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="bfloat16 on GPUs, float32 on CPU")
    ap.add_argument("--gpu", default=None, help="GPU spec name for the prediction (default: from the device name)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a small grid (CI)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output JSON (default docs/results/gpu/step-times-<model>-<device>.json)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu-step-times: PyTorch is not importable; nothing to measure")
        return 2
    if args.device is None:
        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    result = measure(args)
    tag = (result["gpu_spec"] or result["device_name"] or "device").replace(" ", "-")
    out = args.out or ROOT / "docs" / "results" / "gpu" / f"step-times-{args.model}-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"gpu-step-times: {len(result['prefill'])} prefill and {len(result['decode'])} decode points on "
          f"{result['device_name']} in {out}; measured/predicted (geometric mean): "
          f"{result['measured_over_predicted_geomean']} ({result['prediction']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
