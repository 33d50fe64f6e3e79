"""Fit a streamserve profile entry for SmolLM2-135M on one CPU thread (how cpu-profile.json
was made). transformers' eager forward stands in for vLLM's CPU kernels: SpecuStream only
needs the relative cost of verifying more tokens per step, which both share.

    python profile_cpu.py /path/to/smollm2 > cpu-profile.json
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()


def timed(fn, rep=4):
    fn()
    start = time.perf_counter()
    for _ in range(rep):
        fn()
    return (time.perf_counter() - start) / rep * 1e3


rows_p, rows_d = [], []
with torch.no_grad():
    for length in (64, 128, 256, 512):
        ids = torch.randint(100, 40000, (1, length))
        rows_p.append((length, length**2, timed(lambda: model(ids, use_cache=False), 2)))
    for batch in (1, 4):
        for context in (128, 384):
            ids = torch.randint(100, 40000, (batch, context))
            cache = model(ids, use_cache=True).past_key_values
            for n in (1, 2, 3, 5):
                new = torch.randint(100, 40000, (batch, n))

                def step():
                    model(new, past_key_values=cache, use_cache=True)
                    cache.crop(context)
                rows_d.append((batch * context, batch * n, timed(step)))

# least squares: prefill a + b*tokens + c*tokens^2; decode a + b*context + c*tokens
P = np.array([[1, t, s] for t, s, _ in rows_p]); yp = np.array([r[2] for r in rows_p])
D = np.array([[1, c, n] for c, n, _ in rows_d]); yd = np.array([r[2] for r in rows_d])
pa, pb, pc = np.linalg.lstsq(P, yp, rcond=None)[0]
da, db, dc = np.linalg.lstsq(D, yd, rcond=None)[0]
cfg = model.config
profile = {
    "format": "streamserve-profile", "version": 1,
    "source": "SmolLM2-135M-Instruct (float32), transformers eager forward, 1 CPU thread; fitted by "
              "docs/results/smollm2-ngram/profile_cpu.py",
    "units": "milliseconds; prefill a + b*sum(len) + c*sum(len^2); decode a + b*sum(context) + c*tokens",
    "models": {"smollm2-135m": {"num_layers": cfg.num_hidden_layers, "num_kv_heads": cfg.num_key_value_heads,
                                "head_dim": cfg.head_dim, "kv_dtype_bytes": 4, "weight_bytes": 538e6}},
    "gpus": {"cpu-1-thread": {"memory_gb": 2.0}},
    "drafts": {"ngram": {"a": 0.1, "b": 0.0, "c": 0.01, "note": "n-gram lookup on the host"},
               "small-model": {"a": 5.0, "b": 0.0, "c": 2.0, "note": "assumed"}},
    "entries": [{"model": "smollm2-135m", "gpu": "cpu-1-thread", "tp": 1,
                 "prefill": {"a": max(float(pa), 0.0), "b": max(float(pb), 0.0), "c": max(float(pc), 0.0)},
                 "decode": {"a": max(float(da), 0.0), "b": max(float(db), 0.0), "c": max(float(dc), 0.0)}}],
    "measurements": {"prefill_ms": rows_p, "decode_ms": rows_d},
}
json.dump(profile, sys.stdout, indent=1)
print()
