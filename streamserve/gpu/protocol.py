"""The OpenAI rules of the front end, without I/O: what a client request must look like,
how it becomes the bodies sent to a prefill and a decode engine, how an engine's stream
becomes one answer, and what an error looks like.

Nothing here opens a socket or reads a clock, so every rule is tested without a server
(``tests/test_gpu_protocol.py``), as h11 keeps HTTP's rules apart from the I/O.

The front end checks only what it needs to place a request (the model, the prompt or
messages, the token budget, ``stream``); every other field is left to the engine, which
is vLLM itself, so its answer is vLLM's. The app waits for a request's first event before
it starts a stream, so an engine's 400 reaches the client as a 400 too. Error bodies
have vLLM's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status as ``code`` and ``param`` spelled as vLLM spells a field (``body.max_tokens``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

COMPLETIONS = "completions"
CHAT = "chat/completions"
ENDPOINTS = (COMPLETIONS, CHAT)
CLASS_KEY = "streamserve_class"  # in ``vllm_xargs``: the request's workload class (dataset)

# Sent to a prefill engine so that it keeps the KV for a decode engine to pull.
REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
# Fields that make no sense for a one-token prefill (or ask for more than one sequence):
# only the decode request carries them. ``min_tokens: 5`` with the prefill's
# ``max_tokens: 1`` is a 400 from vLLM.
DECODE_ONLY = ("stream", "stream_options", "min_tokens", "max_completion_tokens", "n", "best_of",
               "use_beam_search", "length_penalty")


class APIError(Exception):
    """An error to send to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _type_of(status)
        self.param = param

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def event(self) -> bytes:
        """The error as the last event of a stream that already started (then ``[DONE]``)."""
        return sse(self.body())


def _type_of(status: int) -> str:
    """vLLM's error types: ``BadRequestError``, ``NotFoundError``, ...; others by phrase."""
    return {400: "BadRequestError", 404: "NotFoundError"}.get(status) or HTTPStatus(status).phrase.replace(" ", "")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def unavailable(message: str, kind: str = "ServiceUnavailableError") -> APIError:
    """A request the cluster cannot serve now (no healthy lane, rejected, failed)."""
    return APIError(503, message, type_=kind)


def engine_failed(message: str) -> APIError:
    """An engine died under a request whose tokens already reached the client."""
    return APIError(502, message, type_="LaneDown")


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


@dataclass
class ClientRequest:
    """A checked client request: one body per prompt (a list of prompts is a batch,
    answered as one, as vLLM does)."""

    endpoint: str
    bodies: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    dataset: str  # the workload class it names in ``vllm_xargs``, else "default"

    @property
    def batch(self) -> bool:
        return len(self.bodies) > 1


# pydantic's error type, as vLLM reports a field that fails its schema; its own checks
# (VLLMValidationError) report "BadRequestError" and the bare field name.
SCHEMA = "Bad Request"
TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def _integer(body: dict[str, Any], key: str) -> None:
    """``max_tokens: 4.0`` is 4, as pydantic's lax mode reads it for vLLM; 4.5 is not."""
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not value.is_integer()):
        raise APIError(400, f"{key}: must be an integer, got {value!r}", type_=SCHEMA, param=f"body.{key}")
    body[key] = int(value)
    if body[key] < 1:
        raise bad_request(f"{key} must be at least 1, got {body[key]}.", param=key)


def _flag(value: Any, key: str) -> bool:
    """A boolean as pydantic's lax mode reads one ("yes", 1, "off", ...)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise APIError(400, f"{key}: must be a boolean, got {value!r}", type_=SCHEMA, param=f"body.{key}")


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def parse_request(endpoint: str, raw: bytes, model_name: str) -> ClientRequest:
    """Check what the front end needs of a client request; everything else is the
    engine's to check. Raises ``APIError``."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        pos = getattr(e, "pos", getattr(e, "start", 0))
        raise APIError(400, f"request body is not valid JSON: {e}", type_=SCHEMA, param=f"body.{pos}") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", type_=SCHEMA, param="body")
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(404, f"The model `{model}` does not exist.", param="model")
    body["model"] = model_name
    stream = _flag(body.get("stream"), "stream")
    for key in ("max_tokens", "max_completion_tokens"):
        _integer(body, key)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    xargs = body.get("vllm_xargs")
    dataset = str(xargs.get(CLASS_KEY, "default")) if isinstance(xargs, dict) else "default"
    if endpoint == CHAT:
        messages = body.get("messages")
        if messages is None:
            raise APIError(400, "messages: field required", type_=SCHEMA, param="body.messages")
        if not isinstance(messages, list):
            raise APIError(400, "messages: must be a list of messages", type_=SCHEMA, param="body.messages")
        bodies = [body]
    else:
        prompt = body.get("prompt")
        if prompt is None or prompt == "" or prompt == []:
            raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", param="prompt")
        if isinstance(prompt, str) or _is_tokens(prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and all(isinstance(p, str) or _is_tokens(p) for p in prompt):
            prompts = list(prompt)
        else:
            raise APIError(400, "prompt: must be a string, a list of strings, or token ids", type_=SCHEMA,
                           param="body.prompt")
        bodies = [body] if len(prompts) == 1 else [{**body, "prompt": p} for p in prompts]
    return ClientRequest(endpoint, bodies, stream, include_usage, dataset)


def budget(body: dict[str, Any], endpoint: str) -> int | None:
    """The most tokens the request may generate, if it says."""
    if endpoint == CHAT and body.get("max_completion_tokens") is not None:
        return int(body["max_completion_tokens"])
    value = body.get("max_tokens")
    return None if value is None else int(value)


def tokenize_body(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """What to ask an engine's ``/tokenize`` to count the prompt's tokens."""
    if endpoint == CHAT:
        out: dict[str, Any] = {k: body[k] for k in ("model", "messages", "tools", "chat_template",
                                                    "add_generation_prompt") if k in body}
        out.setdefault("add_generation_prompt", True)
        return out
    return {"model": body["model"], "prompt": body["prompt"]}


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request a prefill engine gets: one token, and keep the KV for a decode engine."""
    out = {k: v for k, v in body.items() if k not in DECODE_ONLY}
    out["max_tokens"] = 1
    out["kv_transfer_params"] = dict(REMOTE_DECODE)
    return out


def engine_body(body: dict[str, Any], kv_params: dict[str, Any] | None) -> dict[str, Any]:
    """The request a decode (or colocated) engine gets: the client's, always streamed
    with usage, so the front end sees each token as the engine sends it."""
    out = dict(body)
    if kv_params:
        out["kv_transfer_params"] = kv_params
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return out


def has_choice(chunk: dict[str, Any]) -> bool:
    """A chunk that carries a token event (its text may be empty, as for a special
    token); the usage-only chunk at the end does not."""
    return bool(chunk.get("choices"))


def client_chunk(chunk: dict[str, Any], include_usage: bool, index: int = 0, batch: bool = False) -> dict[str, Any]:
    """An engine chunk as the client gets it: usage only if asked for, and a batch
    member's choice index shifted to its place in the batch (vLLM numbers choices
    prompt by prompt)."""
    if not include_usage and "usage" in chunk:
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    if batch and chunk.get("choices"):
        chunk = {**chunk, "choices": [{**c, "index": index + int(c.get("index", 0))} for c in chunk["choices"]]}
    return chunk


def assemble(endpoint: str, chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One non-streamed OpenAI answer from an engine's stream of chunks (None: no chunk)."""
    if not chunks:
        return None
    chat = endpoint == CHAT
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for part in chunk.get("choices") or []:
            i = part.get("index", 0)
            acc = choices.setdefault(i, {"index": i, "logprobs": None, "finish_reason": None, "stop_reason": None,
                                         **({"message": {"role": "assistant", "content": ""}} if chat else {"text": ""})})
            if chat:
                acc["message"]["content"] += (part.get("delta") or {}).get("content") or ""
            else:
                acc["text"] += part.get("text") or ""
            lp = part.get("logprobs")
            if lp:
                if acc["logprobs"] is None:
                    acc["logprobs"] = {k: list(v) if isinstance(v, list) else v for k, v in lp.items()}
                else:
                    for k, v in lp.items():
                        if isinstance(v, list):
                            acc["logprobs"].setdefault(k, []).extend(v)
            for key in ("finish_reason", "stop_reason"):
                if part.get(key) is not None:
                    acc[key] = part[key]
    first = chunks[0]
    return {"id": first.get("id"), "object": "chat.completion" if chat else "text_completion",
            "created": first.get("created"), "model": first.get("model"),
            "choices": [choices[i] for i in sorted(choices)], "usage": whole_usage(usage)}


def whole_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Usage as a non-streamed vLLM answer has it: the token-detail fields a stream's
    usage chunk leaves out are there, as null, unless the stream gave them."""
    if usage is None:
        return None
    return {"prompt_tokens_details": None, "completion_tokens_details": None, **usage}


def merge_batch(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The answers to a batch's prompts as one answer: choices numbered prompt by
    prompt, usage summed."""
    out = dict(answers[0])
    choices: list[dict[str, Any]] = []
    for answer in answers:
        for choice in answer["choices"]:
            choices.append({**choice, "index": len(choices)})
    out["choices"] = choices
    out["usage"] = whole_usage(add_usage([a.get("usage") for a in answers]))
    return out


def add_usage(parts: list[dict[str, Any] | None]) -> dict[str, int] | None:
    known = [p for p in parts if p]
    if not known:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(int(p.get(k) or 0) for p in known) for k in keys}


def engine_error(status: int, content: bytes) -> APIError:
    """An engine's own 4xx answer, passed on as it is."""
    try:
        err = json.loads(content).get("error", {})
        message = err.get("message") or content.decode(errors="replace")
        return APIError(status, message, type_=err.get("type"), param=err.get("param"))
    except (json.JSONDecodeError, AttributeError):
        return APIError(status, content.decode(errors="replace")[:500])
