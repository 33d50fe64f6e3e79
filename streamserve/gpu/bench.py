"""`streamserve bench`: replay a workload against any OpenAI-compatible endpoint.

It measures as a client does, with ``vllm bench serve``'s definitions: TTFT is the
first chunk that carries a choice, each later such chunk adds one ITL sample, the last
ends the request, and TPOT is (end - TTFT) / (output tokens - 1). It writes the same
``summary.json``/``requests.csv`` as ``simulate``, so a simulated run, a run on our front end and a run on a plain vLLM server compare field
by field. Around the run it reads the endpoint's ``/metrics`` for speculation
counters (ours: per lane; plain vLLM: its own) and, on our front end, samples the
speculation depth k every ``k_sample_s`` to record how SpecuStream moved it.
"""
from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streamserve.gpu.lanes import M_ACCEPTED, M_DRAFT_TOKENS
from streamserve.gpu.protocol import CLASS_KEY
from streamserve.gpu.telemetry import by_label, parse_metrics
from streamserve.metrics import LaneUsage, LogHistogram, RunResult
from streamserve.request import Request, State
from streamserve.workload.base import Workload


@dataclass
class BenchOptions:
    endpoint: str
    model: str | None = None  # None: the first model /v1/models lists
    chat: bool = False
    ignore_eos: bool = False
    temperature: float = 0.0
    timeout_s: float = 600.0
    k_sample_s: float = 0.5
    seed: int = 0


LANE_SERIES = ("streamserve_lane_spec_draft_tokens", "streamserve_lane_spec_accepted_tokens", "streamserve_spec_k")


class SpecScrape:
    """Speculation counters of the endpoint, per lane where it is our front end."""

    def __init__(self, text: str) -> None:
        series = by_label(text, LANE_SERIES, "lane")
        drafted, accepted, k = (series[name] for name in LANE_SERIES)
        self.lanes: dict[int, tuple[float, float]] = {lane: (v, accepted.get(lane, 0.0)) for lane, v in drafted.items()}
        self.k: dict[int, int] = {lane: int(v) for lane, v in k.items()}
        metrics = parse_metrics(text)
        if not self.lanes and M_DRAFT_TOKENS in metrics:  # a plain vLLM server: one lane
            self.lanes[0] = (metrics[M_DRAFT_TOKENS], metrics.get(M_ACCEPTED, 0.0))


async def _scrape(client: httpx.AsyncClient, base: str) -> SpecScrape | None:
    try:
        r = await client.get(base + "/metrics", timeout=5.0)
        if r.status_code != 200:
            return None
    except httpx.HTTPError:
        return None
    return SpecScrape(r.text)


async def _model(client: httpx.AsyncClient, base: str) -> str:
    r = await client.get(base + "/v1/models", timeout=10.0)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


async def _one(client: httpx.AsyncClient, opts: BenchOptions, model: str, req: Request, prompt: str,
               t0: float) -> None:
    if opts.chat:
        url = opts.endpoint + "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_completion_tokens": req.output_len}
    else:
        url = opts.endpoint + "/v1/completions"
        body = {"prompt": prompt, "max_tokens": req.output_len}
    body.update(model=model, stream=True, stream_options={"include_usage": True}, temperature=opts.temperature,
                vllm_xargs={CLASS_KEY: req.dataset})  # the class travels to the decode engine's SpecuStream
    if opts.ignore_eos:
        body["ignore_eos"] = True
    req.prefill_start = time.monotonic() - t0
    last = math.nan
    itl: list[float] = []
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                try:
                    text = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                req.state, req.reason = State.FAILED, f"HTTP {r.status_code}: {text[:300]}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line[6:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    req.state, req.reason = State.FAILED, str(chunk["error"].get("message", chunk["error"]))[:300]
                    return
                usage = chunk.get("usage")
                if usage:
                    req.generated = int(usage.get("completion_tokens") or req.generated)
                    req.prompt_len = int(usage.get("prompt_tokens") or req.prompt_len)
                # As `vllm bench serve` counts: every chunk with a choice is a token event,
                # even when its text is empty (a special token, or the role of a chat reply);
                # the first gives TTFT, each next one an ITL, and the last one ends the request.
                if chunk.get("choices"):
                    now = time.monotonic() - t0
                    if math.isnan(req.first_token):
                        req.first_token = now
                    else:
                        itl.append(now - last)
                    last = now
    except httpx.HTTPError as e:
        req.state, req.reason = State.FAILED, f"{type(e).__name__}: {e}"[:300]
        return
    if math.isnan(req.first_token):
        req.state, req.reason, req.finish = State.FAILED, "no token came back", time.monotonic() - t0
        return
    req.finish = last
    req.state = State.FINISHED
    if itl:
        req.extra = {"itl": itl}


async def _run(workload: Workload, prompts: list[str], opts: BenchOptions) -> tuple[RunResult, dict[str, Any]]:
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(opts.timeout_s, connect=10.0), limits=limits) as client:
        model = opts.model or await _model(client, opts.endpoint)
        before = await _scrape(client, opts.endpoint)
        k_trace: list[tuple[float, int, int]] = []
        t0 = time.monotonic()
        stop = asyncio.Event()

        async def sample_k() -> None:
            last: dict[int, int] = {}
            while not stop.is_set():
                s = await _scrape(client, opts.endpoint)
                now = time.monotonic() - t0
                for lane, k in (s.k if s else {}).items():
                    if last.get(lane) != k:
                        last[lane] = k
                        k_trace.append((now, lane, k))
                try:
                    await asyncio.wait_for(stop.wait(), opts.k_sample_s)
                except asyncio.TimeoutError:
                    pass

        sampler = asyncio.create_task(sample_k())
        requests = [workload.request(i, 0.0) for i in range(len(workload))]
        arrivals = workload.arrival
        if arrivals is not None:
            async def timed(i: int) -> None:
                req = requests[i]
                req.arrival = float(arrivals[i])
                await asyncio.sleep(max(0.0, req.arrival - (time.monotonic() - t0)))
                req.arrival = time.monotonic() - t0  # what the client really did
                await _one(client, opts, model, req, prompts[i], t0)
            await asyncio.gather(*(timed(i) for i in range(len(requests))))
        else:
            queue = list(range(len(requests)))[::-1]

            async def client_loop() -> None:
                while queue:
                    req = requests[queue.pop()]
                    req.arrival = time.monotonic() - t0
                    await _one(client, opts, model, req, prompts[req.id], t0)
                    if workload.think_time:
                        await asyncio.sleep(workload.think_time)
            await asyncio.gather(*(client_loop() for _ in range(workload.concurrency or 1)))
        duration = time.monotonic() - t0
        stop.set()
        await sampler
        after = await _scrape(client, opts.endpoint)

    itl = LogHistogram()
    for r in requests:
        if r.extra and r.extra.get("itl"):
            itl.add_many(np.asarray(r.extra.pop("itl")))
    lanes = []
    extra: dict[str, Any] = {"endpoint": opts.endpoint, "model": model}
    if before is not None and after is not None:
        for lane, (drafted, accepted) in sorted(after.lanes.items()):
            d0, a0 = before.lanes.get(lane, (0.0, 0.0))
            if drafted - d0 > 0:
                lanes.append(LaneUsage(lane_id=lane, role="decode", busy_time=0.0, steps=0, mean_batch=0.0,
                                       peak_kv_usage=0.0, drafted=int(drafted - d0), accepted=int(accepted - a0)))
    extra["spec_k_trace"] = [{"t": round(t, 3), "lane": lane, "k": k} for t, lane, k in k_trace]
    return RunResult(requests=requests, duration=duration, itl=itl, lanes=lanes, k_trace=k_trace), extra


def run_bench(workload: Workload, prompts: list[str], opts: BenchOptions) -> tuple[RunResult, dict[str, Any]]:
    return asyncio.run(_run(workload, prompts, opts))


def write_k_trace(result: RunResult, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("time_s", "lane", "k"))
        for t, lane, k in result.k_trace:
            w.writerow((f"{t:.3f}", lane, k))
