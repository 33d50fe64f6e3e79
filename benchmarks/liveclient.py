"""What the live benchmarks share: a free local port, and the client-side time to the
first streamed token of one completion (as ``vllm bench serve`` counts it: the first
chunk that carries a choice)."""
from __future__ import annotations

import json
import socket
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_token(client: httpx.Client, url: str, body: dict) -> float:
    """Seconds from sending ``body`` to ``url``'s /v1/completions until its first token."""
    body = {**body, "stream": True}
    t0 = time.perf_counter()
    took = None
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if took is None and line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                took = time.perf_counter() - t0
    if took is None:
        raise RuntimeError("no token came back")
    return took
