"""HTTP to the engines: JSON calls, server-sent-event streams, health and metrics.

One ``httpx.AsyncClient`` for all engines. A failure that may mean the engine is gone
(a refused or broken connection, a 5xx, an error event inside a stream) is raised as
``LaneBroken``, for the executor to check the lane; an engine's 4xx is the client's
error and is raised as the engine's own ``APIError``.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx

from streamserve.gpu.protocol import APIError, engine_error


class LaneBroken(Exception):
    """The connection to an engine failed in a way that may mean the engine is gone."""


# What a call to an engine raises when the engine is gone: httpx's errors, and the
# AttributeError httpcore's anyio backend raises when the socket of a connection being
# opened has already been closed (seen when an engine is killed mid-run).
TRANSPORT_ERRORS = (httpx.HTTPError, AttributeError)

DONE = None  # what ``stream`` yields for the engine's ``data: [DONE]``
# vLLM's server closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s); httpx kept
# idle ones for as long, so a request sent on one as the server closed it failed with
# ReadError (HTTP 502/503 to the client, seen in profile runs). Drop them well before.
KEEPALIVE_EXPIRY_S = 2.0


class EngineClient:
    def __init__(self, request_timeout: float) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout, connect=5.0), limits=limits)

    async def close(self) -> None:
        await self.http.aclose()

    async def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self.http.post(url, json=body)
        except TRANSPORT_ERRORS as e:
            raise LaneBroken(f"{type(e).__name__}: {e}") from None
        if r.status_code >= 500:
            raise LaneBroken(f"HTTP {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            raise engine_error(r.status_code, r.content)
        return r.json()

    async def stream(self, url: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | None]:
        """The engine's events, one per ``data:`` line, each as it arrives (``DONE``
        for the end marker): never two events merged, never one split."""
        try:
            async with self.http.stream("POST", url, json=body) as r:
                if r.status_code >= 500:
                    raise LaneBroken(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
                if r.status_code >= 400:
                    raise engine_error(r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:].strip()
                    if data == "[DONE]":
                        yield DONE
                        return
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    if "error" in chunk:
                        raise LaneBroken(f"engine error in stream: {chunk['error']}")
                    yield chunk
        except TRANSPORT_ERRORS as e:
            raise LaneBroken(f"{type(e).__name__}: {e}") from None

    async def get_text(self, url: str, timeout: float) -> str | None:
        """The body of a GET, or None if the engine did not answer with 200."""
        try:
            r = await self.http.get(url, timeout=timeout)
        except TRANSPORT_ERRORS:
            return None
        return r.text if r.status_code == 200 else None

    async def healthy(self, base_url: str, timeout: float = 2.0) -> bool:
        try:
            r = await self.http.get(base_url + "/health", timeout=timeout)
        except TRANSPORT_ERRORS:
            return False
        return r.status_code == 200


__all__ = ["APIError", "DONE", "EngineClient", "LaneBroken", "TRANSPORT_ERRORS"]
