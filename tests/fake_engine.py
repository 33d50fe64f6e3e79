"""A stand-in for one vLLM api_server: the endpoints the front end uses, recording what
it receives. Lets the front end's handoff, errors and failure handling be tested
without vLLM."""
from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from streamserve.gpu.app import ServerThread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEngine:
    """Answers completions with ``tokens`` words "w0 w1 ...", ``delay`` seconds apart."""

    def __init__(self, name: str, delay: float = 0.0, max_model_len: int = 512) -> None:
        self.name = name
        self.delay = delay
        self.max_model_len = max_model_len
        self.received: list[dict[str, Any]] = []
        self.drafted = 0  # spec-decode counters, growing as a decode engine's would
        self.streaming = 0  # streams open now, and the most open at once
        self.max_streaming = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerThread | None = None
        self.app = self._app()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200)

        @app.get("/metrics")
        async def metrics() -> Response:
            text = (
                '# HELP vllm:num_requests_running x\n'
                f'vllm:num_requests_running{{engine="0",model_name="m"}} 0.0\n'
                f'vllm:num_requests_waiting{{engine="0",model_name="m"}} 0.0\n'
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.25\n'
                f'vllm:cache_config_info{{block_size="16",engine="0",num_gpu_blocks="1000"}} 1.0\n'
                f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="m"}} {self.drafted}.0\n'
                f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {4 * self.drafted}.0\n'
                f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {3 * self.drafted}.0\n'
            )
            return Response(text, media_type="text/plain")

        @app.post("/tokenize")
        async def tokenize(request: Request) -> Response:
            body = await request.json()
            text = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
            return JSONResponse({"count": len(str(text).split()), "max_model_len": self.max_model_len})

        async def complete(request: Request, chat: bool) -> Response:
            body = await request.json()
            self.received.append(body)
            temperature = body.get("temperature")
            if temperature is not None and not isinstance(temperature, (int, float)):  # as vLLM's schema says
                return JSONResponse({"error": {"message": "temperature: not a number", "type": "Bad Request",
                                               "param": "body.temperature", "code": 400}}, status_code=400)
            if body.get("min_tokens", 0) > (body.get("max_tokens") or 16):
                return JSONResponse({"error": {"message": "min_tokens must be less than or equal to max_tokens",
                                               "type": "BadRequestError", "param": "min_tokens", "code": 400}},
                                    status_code=400)
            self.drafted += 10
            n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
            words = [f"{self.name}{i}" for i in range(n)]
            kv = {"from": self.name} if (body.get("kv_transfer_params") or {}).get("do_remote_decode") else None
            if not body.get("stream"):
                await asyncio.sleep(self.delay * n)
                text = " ".join(words)
                choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat \
                    else {"index": 0, "text": text}
                return JSONResponse({"id": "x", "choices": [choice], "kv_transfer_params": kv,
                                     "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}})

            async def gen():
                self.streaming += 1
                self.max_streaming = max(self.max_streaming, self.streaming)
                try:
                    for i, w in enumerate(words):
                        await asyncio.sleep(self.delay)
                        piece = w if i == 0 else " " + w
                        choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                        yield f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"
                finally:
                    self.streaming -= 1
                usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
                yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(gen(), media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await complete(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await complete(request, chat=True)

        return app

    def start(self) -> "FakeEngine":
        self.server = ServerThread(self.app, "127.0.0.1", self.port)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.server.force_exit = True
            self.server.stop()
            self.server = None
