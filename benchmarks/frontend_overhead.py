"""The front end's own cost: the TTFT it adds in front of one engine.

Starts one colocated vLLM engine (vLLM's CPU build, the tiny model, no speculation)
and `streamserve serve`'s front end for it in a separate process (so the client does
not share an interpreter with it), then sends the same streamed completion alternately
to the engine directly and through the front end, one request at a time (which one
goes first alternates pair by pair), and records each request's TTFT as a client sees
it (the first chunk that carries a choice, as `vllm bench serve` counts). The added
TTFT of a pair is front end minus direct; the summary gives its p50 and p99, and the
p50/p99 of each side.

    PYTHONPATH=. python benchmarks/frontend_overhead.py --pairs 150 --compare-bench \
        --out benchmarks/results/frontend_overhead.json

With ``--compare-bench`` it then runs `vllm bench serve` (through
``scripts/vllm_bench_serve.py``) and `streamserve bench` against the front end, each
with 30 requests of 64 prompt and 64 output tokens at 4 requests/s, and records their
mean TPOT and ITL: with ITL defined as vLLM defines it, the two clients agree, and on a
stream of one token per chunk ITL equals TPOT.

Needs vLLM's CPU build and `streamserve models prepare tiny`. The machine note written
with the result says what it was measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from liveclient import first_token, free_port

ROOT = Path(__file__).resolve().parents[1]


def ttft(client: httpx.Client, base: str, prompt: str, max_tokens: int) -> float:
    return first_token(client, base, {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                                      "temperature": 0, "ignore_eos": True})


def wait_up(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not come up")


def compare_benches(front: str, tmp: Path, env: dict[str, str]) -> dict[str, dict[str, float]]:
    from streamserve.gpu.models import model_dir

    keys = ("mean_tpot_ms", "median_tpot_ms", "mean_itl_ms", "median_itl_ms", "completed")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "vllm_bench_serve.py"), "--backend", "vllm",
                    "--base-url", front, "--model", "tiny", "--tokenizer", str(model_dir("tiny")),
                    "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "64",
                    "--num-prompts", "30", "--request-rate", "4", "--ignore-eos", "--seed", "1",
                    "--save-result", "--result-dir", str(tmp), "--result-filename", "vllm-bench.json"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    theirs = json.loads((tmp / "vllm-bench.json").read_text())
    subprocess.run([sys.executable, "-m", "streamserve.cli", "bench", "--endpoint", front, "-n", "30", "--rate", "4",
                    "--max-prompt-tokens", "64", "--max-output-tokens", "64", "--ignore-eos", "--seed", "1",
                    "--out", str(tmp / "ss-bench")], env=env, check=True, stdout=subprocess.DEVNULL)
    ours = json.loads((tmp / "ss-bench" / "summary.json").read_text())
    return {"vllm bench serve": {k: round(float(theirs[k]), 3) for k in keys if k in theirs},
            "streamserve bench": {k: round(float(ours[k]), 3) for k in keys if k in ours}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/frontend_overhead.json")
    ap.add_argument("--compare-bench", action="store_true", help="also run vllm bench serve and streamserve bench")
    args = ap.parse_args()
    bench: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="ss-overhead-"))
    engine_port, front_port = free_port(), free_port()
    cfg = {"name": "overhead", "model": "tiny", "device": "cpu", "dtype": "float32", "block_size": 32,
           "max_model_len": 1024, "engines": [{"role": "colocated", "port": engine_port}],
           "speculation": {"method": "none"}, "log_dir": str(tmp / "logs"),
           "frontend": {"host": "127.0.0.1", "port": front_port}}
    (tmp / "live.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    serve = subprocess.Popen([sys.executable, "-m", "streamserve.cli", "serve", "--config", str(tmp / "live.yaml")],
                             env=env, stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    engine, front = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{front_port}"
    try:
        wait_up(engine, 600)
        wait_up(front, 120)
        prompt = "The front end adds a hop between the client and the engine; how much does it cost? " * 2
        with httpx.Client(timeout=60) as client:
            for _ in range(10):  # warm both paths (connections, compiled kernels)
                ttft(client, engine, prompt, args.max_tokens)
                ttft(client, front, prompt, args.max_tokens)
            direct, via = [], []
            for i in range(args.pairs):
                p = prompt + str(i)
                if i % 2:
                    via.append(ttft(client, front, p, args.max_tokens))
                    direct.append(ttft(client, engine, p, args.max_tokens))
                else:
                    direct.append(ttft(client, engine, p, args.max_tokens))
                    via.append(ttft(client, front, p, args.max_tokens))
        if args.compare_bench:
            bench = compare_benches(front, tmp, env)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    d, v = np.array(direct) * 1e3, np.array(via) * 1e3
    added = v - d

    def pct(x: np.ndarray) -> dict[str, float]:
        return {"p50_ms": round(float(np.percentile(x, 50)), 3), "p99_ms": round(float(np.percentile(x, 99)), 3),
                "mean_ms": round(float(x.mean()), 3)}

    result = {
        "pairs": args.pairs, "max_tokens": args.max_tokens, "direct_ttft": pct(d), "front_end_ttft": pct(v),
        "added_ttft": pct(added),
        "added_ttft_of_medians_ms": round(float(np.median(v) - np.median(d)), 3),
        "goal": {"p50_ms": 2.0, "p99_ms": 5.0},
        "bench_clients_against_the_front_end": bench,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, no GPU; "
                   "shared with other jobs (noisy)",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
