"""The OpenAI-compatible HTTP app: routes requests to the executor and relays answers.

``/v1/completions`` and ``/v1/chat/completions`` (streamed or not, a list of prompts
served as a batch), ``/v1/models``, ``/health`` and ``/metrics``. A streamed answer
starts only once its first event is known: an engine's 400 (a field the engine checks)
is then still a 400 with an error body, as vLLM answers, and not an error inside a
stream that already said 200.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamserve.gpu import protocol
from streamserve.gpu.executor import Executor
from streamserve.gpu.ticket import Ticket
from streamserve.gpu.protocol import APIError, ClientRequest
from streamserve.request import Phase, State

log = logging.getLogger("streamserve.frontend")


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(ex: Executor, model_name: str, max_model_len: int) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        await ex.start()
        try:
            yield
        finally:
            await ex.close()

    app = FastAPI(title="streamserve", lifespan=lifespan)

    async def generate(endpoint: str, http: HTTPRequest) -> Response:
        tickets: list[Ticket] = []
        try:
            client = protocol.parse_request(endpoint, await http.body(), model_name)
            for i in range(len(client.bodies)):
                tickets.append(await ex.admit(client, i))
        except APIError as e:
            for ticket in tickets:  # admitted prompts of a batch that cannot be served whole
                ex.drop(ticket, e.message)
            ex.metrics.outcomes.labels(State.REJECTED.value).inc()
            return error_response(e)
        if client.stream:
            return await _streamed(ex, client, tickets)
        return await _whole(ex, tickets)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Response:
        return await generate(protocol.COMPLETIONS, http)

    @app.post("/v1/chat/completions")
    async def chat(http: HTTPRequest) -> Response:
        return await generate(protocol.CHAT, http)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "streamserve",
                                             "max_model_len": max_model_len}]}

    @app.get("/health")
    async def health() -> Response:
        lanes = [{"lane": lane.lane_id, "role": lane.role.value, "healthy": lane.healthy,
                  "reason": lane.down_reason} for lane in ex.lanes]
        ok = ex.usable(Phase.PREFILL) and ex.usable(Phase.DECODE)
        return JSONResponse({"status": "ok" if ok else "degraded", "lanes": lanes}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(ex.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def internal(_: HTTPRequest, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    return app


async def _whole(ex: Executor, tickets: list[Ticket]) -> Response:
    runs = [asyncio.ensure_future(ex.run(t, None)) for t in tickets]
    try:
        answers = await asyncio.gather(*runs)
    except APIError as e:
        for run in runs:
            run.cancel()
        return error_response(e)
    return JSONResponse(answers[0] if len(answers) == 1 else protocol.merge_batch(list(answers)))


async def _streamed(ex: Executor, client: ClientRequest, tickets: list[Ticket]) -> Response:
    """Run every prompt of the request; relay their chunks as they come (a batch's
    choice indexes shifted to their place), then one usage chunk if asked, then
    ``[DONE]``. Nothing is sent before the first event, so an error that comes first
    is answered with its own status."""
    events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
    n = int(client.bodies[0].get("n") or 1)

    async def one(i: int, ticket: Ticket) -> None:
        async def emit(chunk: dict[str, Any]) -> None:
            await events.put(("chunk", i, chunk))

        try:
            await ex.run(ticket, emit)
            await events.put(("end", i, None))
        except APIError as e:
            await events.put(("error", i, e))

    runs = [asyncio.ensure_future(one(i, t)) for i, t in enumerate(tickets)]
    try:
        first = await events.get()
    except asyncio.CancelledError:  # the client left before the first event
        for run in runs:
            run.cancel()
        raise
    if first[0] == "error":
        for run in runs:
            run.cancel()
        return error_response(first[2])

    async def relay() -> AsyncIterator[bytes]:
        usage: dict[int, dict[str, Any]] = {}
        last_usage_chunk: dict[str, Any] | None = None
        ended = 0
        event = first
        try:
            while True:
                kind, i, item = event
                if kind == "error":
                    yield item.event()
                    yield protocol.DONE
                    return
                if kind == "end":
                    ended += 1
                    if ended == len(tickets):
                        if client.include_usage and last_usage_chunk is not None:
                            total = protocol.add_usage(list(usage.values()))
                            yield protocol.sse({**last_usage_chunk, "usage": total})
                        yield protocol.DONE
                        return
                elif protocol.has_choice(item):
                    yield protocol.sse(protocol.client_chunk(item, client.include_usage, i * n, client.batch))
                elif item.get("usage"):
                    usage[i], last_usage_chunk = item["usage"], item
                event = await events.get()
        finally:
            for run in runs:
                if not run.done():
                    run.cancel()

    return StreamingResponse(relay(), media_type="text/event-stream")


class ServerThread:
    """Run a FastAPI app under uvicorn in a background thread (tests, and `serve`)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the front end did not start (port in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
