"""What a prompt that does not fill whole KV blocks costs when prefill and decode are
disaggregated: only whole blocks move, the rest is prefilled again on the decode engine.

Starts a prefill engine and a decode engine joined by the CPU build's connector
(``BoundedExampleConnector``, block size 32), plus a colocated engine as the reference,
all with the tiny model. For each prompt length it sends fresh random token ids (no
prefix-cache hit) through the disaggregated path, engine by engine as the front end
does, and reads from the decode engine's counters how many prompt tokens came from the
prefill engine (``vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}``)
and how many it computed again (``source="local_compute"``), and the decode request's
time to its first token. The colocated engine's TTFT for the same length is what a
local prefill costs.

    PYTHONPATH=. python benchmarks/partial_block.py --out docs/results/partial_block.json

Needs vLLM's CPU build and `streamserve models prepare tiny`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from streamserve.gpu.config import parse_live
from streamserve.gpu.engine_args import engine_specs
from streamserve.gpu.engines import EngineSet
from streamserve.gpu.models import prepare
from streamserve.gpu.protocol import prefill_body
from streamserve.gpu.telemetry import parse_metrics
from liveclient import first_token, free_port

EXTERNAL = 'vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}'
LOCAL = 'vllm:prompt_tokens_by_source_total{source="local_compute"}'
LENGTHS = (16, 31, 32, 33, 34, 48, 64, 65, 66, 96, 128, 129, 130, 256, 512)


def counters(client: httpx.Client, url: str) -> tuple[float, float]:
    m = parse_metrics(client.get(url + "/metrics").text)
    return m.get(EXTERNAL, 0.0), m.get(LOCAL, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="docs/results/partial_block.json")
    args = ap.parse_args()
    prepare("tiny")
    tmp = Path(tempfile.mkdtemp(prefix="ss-partial-"))
    base = {"model": "tiny", "served_model_name": "tiny", "device": "cpu", "dtype": "float32", "block_size": 32,
            "max_model_len": 1024, "speculation": {"method": "none"}, "log_dir": str(tmp / "logs"),
            "kv": {"shared_storage_path": str(tmp / "kv")}}
    disagg = parse_live({**base, "engines": [{"role": "prefill", "port": free_port()},
                                             {"role": "decode", "port": free_port()}]}, "partial")
    coloc = parse_live({**base, "log_dir": str(tmp / "logs-c"),
                        "engines": [{"role": "colocated", "port": free_port()}]}, "coloc")
    engines = EngineSet(engine_specs(disagg) + engine_specs(coloc))
    rng = np.random.default_rng(0)
    rows = []
    engines.start(timeout=900)
    try:
        p, d, c = (e.url for e in engines.engines)
        with httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm up every engine
                ids = rng.integers(100, 2000, 64).tolist()
                first_token(client, c, {"model": "tiny", "prompt": ids, "max_tokens": 1})
                kv = client.post(p + "/v1/completions", json=prefill_body({"model": "tiny", "prompt": ids})).json()
                first_token(client, d, {"model": "tiny", "prompt": ids, "max_tokens": 1,
                                        "kv_transfer_params": kv["kv_transfer_params"]})
            for n in LENGTHS:
                loaded, recomputed, decode_ttft, local_ttft = [], [], [], []
                for _ in range(args.reps):
                    ids = rng.integers(100, 2000, n).tolist()
                    kv = client.post(p + "/v1/completions",
                                     json=prefill_body({"model": "tiny", "prompt": ids})).json()["kv_transfer_params"]
                    e0, l0 = counters(client, d)
                    decode_ttft.append(first_token(client, d, {"model": "tiny", "prompt": ids, "max_tokens": 1,
                                                               "kv_transfer_params": kv}))
                    e1, l1 = counters(client, d)
                    loaded.append(e1 - e0)
                    recomputed.append(l1 - l0)
                    local_ttft.append(first_token(client, c, {"model": "tiny", "prompt": rng.integers(
                        100, 2000, n).tolist(), "max_tokens": 1}))
                rows.append({"prompt_tokens": n, "loaded_tokens": float(np.median(loaded)),
                             "recomputed_tokens": float(np.median(recomputed)),
                             "decode_first_token_ms": round(float(np.median(decode_ttft)) * 1e3, 2),
                             "colocated_prefill_ms": round(float(np.median(local_ttft)) * 1e3, 2)})
                print(rows[-1], flush=True)
    finally:
        engines.stop()
    result = {"block_size": 32, "reps": args.reps, "rows": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, tiny model (2 layers), "
                         "vLLM CPU build; shared with other jobs (noisy)",
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
