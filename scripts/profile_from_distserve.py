"""Convert DistServe's fitted latency coefficients into a streamserve profile.

    python scripts/profile_from_distserve.py ../shared/data/profiles/distserve-a100-80g.vllm.json \
        --model facebook/opt-13b --name opt-13b > streamserve/profiles/default-a100.json

This is how the shipped default profile was made; run it on your own DistServe-style
fits to get a profile for another model or GPU.
"""
from __future__ import annotations

import argparse
import json
import sys

# Architecture of the models DistServe profiled (from their Hugging Face configs).
SHAPES = {
    "facebook/opt-13b": dict(num_layers=40, num_kv_heads=40, head_dim=128, kv_dtype_bytes=2, weight_bytes=25.7e9),
    "facebook/opt-66b": dict(num_layers=64, num_kv_heads=72, head_dim=128, kv_dtype_bytes=2, weight_bytes=132e9),
}


def convert(src: dict, model: str, name: str, gpu: str, memory_gb: float, source: str) -> dict:
    entries = []
    for tp, fit in sorted(src[model].items(), key=lambda kv: int(kv[0])):
        a, b, c = fit["prefill"]
        sa, sb, sc = fit["decoding_smallbs"]
        la, lb, lc = fit["decoding_largebs"]
        entries.append({
            "model": name, "gpu": gpu, "tp": int(tp),
            "prefill": {"a": a, "b": b, "c": c},
            "decode": {"a": sa, "b": sb, "c": sc,
                       "large_batch": {"from_batch": fit["decoding_large_small_bs_threshold"], "a": la, "b": lb, "c": lc}},
        })
    return {
        "format": "streamserve-profile",
        "version": 1,
        "source": source,
        "units": "milliseconds; prefill a + b*sum(len) + c*sum(len^2); decode a + b*sum(context) + c*tokens",
        "models": {name: SHAPES[model]},
        "gpus": {gpu: {"memory_gb": memory_gb}},
        "drafts": {
            "ngram": {"a": 0.3, "b": 0.0, "c": 0.002,
                      "note": "assumed: n-gram lookup runs on the host, ~0.3 ms per pass"},
            "small-model": {"a": 2.0, "b": 0.0, "c": 0.002,
                            "note": "assumed: a ~125M-parameter draft is launch-bound at ~2 ms per pass on A100"},
        },
        "entries": entries,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("distserve_json")
    ap.add_argument("--model", default="facebook/opt-13b", choices=sorted(SHAPES))
    ap.add_argument("--name", default="opt-13b")
    ap.add_argument("--gpu", default="A100-80GB")
    ap.add_argument("--memory-gb", type=float, default=80.0)
    args = ap.parse_args()
    with open(args.distserve_json) as f:
        src = json.load(f)
    source = ("Coefficients fitted by DistServe (LLMServe/DistServe, Apache-2.0, "
              f"file {args.distserve_json.rsplit('/', 1)[-1]}) to vLLM iterations of {args.model} on "
              f"{args.gpu}; converted by scripts/profile_from_distserve.py. Draft costs are assumptions.")
    json.dump(convert(src, args.model, args.name, args.gpu, args.memory_gb, source), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
