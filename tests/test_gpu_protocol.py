"""The OpenAI rules of the front end, without a server: what is checked, how a request
becomes the prefill and decode bodies, how chunks become one answer, error shapes."""
from __future__ import annotations

import json

import pytest

from streamserve.gpu import protocol
from streamserve.gpu.protocol import APIError, parse_request


def _parse(endpoint: str, body: object) -> protocol.ClientRequest:
    return parse_request(endpoint, json.dumps(body).encode(), "m")


def test_errors_have_vllms_shape():
    body = APIError(400, "bad", param="body.messages").body()
    assert body == {"error": {"message": "bad", "type": "BadRequestError", "param": "body.messages", "code": 400}}
    assert APIError(404, "x").body()["error"]["type"] == "NotFoundError"
    assert protocol.unavailable("y").body()["error"]["code"] == 503
    assert protocol.engine_failed("z").event().startswith(b'data: {"error": ')


@pytest.mark.parametrize("endpoint,body,param", [
    ("chat/completions", {"max_tokens": 3}, "body.messages"),
    ("chat/completions", {"messages": "hi"}, "body.messages"),
    ("completions", {}, "prompt"),
    ("completions", {"prompt": 5}, "body.prompt"),
    ("completions", {"prompt": "x", "max_tokens": 4.5}, "body.max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": "4"}, "body.max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": "x", "stream": "maybe"}, "body.stream"),
    ("completions", {"prompt": "x", "model": "other"}, "model"),
])
def test_the_param_of_an_error_names_the_field(endpoint, body, param):
    with pytest.raises(APIError) as e:
        _parse(endpoint, body)
    assert e.value.param == param


def test_what_vllm_accepts_is_accepted():
    r = _parse("completions", {"prompt": "x", "max_tokens": 4.0, "stream": "yes"})
    assert r.bodies[0]["max_tokens"] == 4 and isinstance(r.bodies[0]["max_tokens"], int) and r.stream
    batch = _parse("completions", {"prompt": ["a", "b", [1, 2]], "max_tokens": 2})
    assert batch.batch and [b["prompt"] for b in batch.bodies] == ["a", "b", [1, 2]]
    assert not _parse("completions", {"prompt": [1, 2, 3]}).batch  # token ids are one prompt
    assert _parse("completions", {"prompt": "x", "vllm_xargs": {"streamserve_class": "humaneval"}}).dataset == "humaneval"


def test_only_the_decode_request_carries_decode_parameters():
    body = {"model": "m", "prompt": "x", "max_tokens": 8, "min_tokens": 5, "n": 2, "stream": True,
            "stream_options": {"include_usage": False}, "temperature": 0.5}
    pre = protocol.prefill_body(body)
    assert pre["max_tokens"] == 1 and pre["kv_transfer_params"]["do_remote_decode"] is True
    assert not {"min_tokens", "n", "stream", "stream_options"} & pre.keys() and pre["temperature"] == 0.5
    dec = protocol.engine_body(body, {"remote": 1})
    assert dec["min_tokens"] == 5 and dec["n"] == 2 and dec["kv_transfer_params"] == {"remote": 1}
    assert dec["stream"] is True and dec["stream_options"] == {"include_usage": True}
    assert body["stream_options"] == {"include_usage": False}  # the client's body is not changed


def test_chunks_become_one_answer_and_a_batch_one_reply():
    chunks = [{"id": "a", "created": 1, "model": "m", "choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["x"]}}]},
              {"id": "a", "choices": [{"index": 0, "text": "", "finish_reason": None}]},
              {"id": "a", "choices": [{"index": 0, "text": "y", "finish_reason": "length", "logprobs": {"tokens": ["y"]}}]},
              {"id": "a", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}]
    one = protocol.assemble("completions", chunks)
    assert one["choices"][0]["text"] == "xy" and one["choices"][0]["finish_reason"] == "length"
    assert one["choices"][0]["logprobs"] == {"tokens": ["x", "y"]} and one["usage"]["total_tokens"] == 5
    assert one["usage"]["completion_tokens_details"] is None  # as vLLM's non-streamed usage has it
    assert protocol.assemble("completions", []) is None
    both = protocol.merge_batch([one, one])
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert both["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10,
                             "prompt_tokens_details": None, "completion_tokens_details": None}
    shifted = protocol.client_chunk(chunks[0], include_usage=False, index=3, batch=True)
    assert shifted["choices"][0]["index"] == 3 and chunks[0]["choices"][0]["index"] == 0
    assert protocol.has_choice(chunks[1]) and not protocol.has_choice(chunks[3])  # empty text is still a token


def test_engine_errors_pass_through():
    e = protocol.engine_error(400, b'{"error": {"message": "m", "type": "Bad Request", "param": "body.x", "code": 400}}')
    assert (e.status, e.type, e.param) == (400, "Bad Request", "body.x")
    assert protocol.engine_error(422, b"not json").status == 422


def test_the_front_end_drops_idle_engine_connections_before_the_engine_does():
    """A request sent on a kept-alive connection as vLLM's server closed it failed with
    ReadError (HTTP 503 "cannot count the prompt's tokens: ReadError", 502 on a prefill,
    in profile runs): the client must let idle connections go first."""
    import asyncio

    from streamserve.gpu.engine_client import KEEPALIVE_EXPIRY_S, EngineClient

    try:
        from vllm import envs
        server_keep_alive = envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE
    except ImportError:  # the installed vLLM's default, as of 0.32
        server_keep_alive = 5
    assert KEEPALIVE_EXPIRY_S <= server_keep_alive / 2

    async def expiry() -> float:
        client = EngineClient(5.0)
        try:
            return client.http._transport._pool._keepalive_expiry
        finally:
            await client.close()

    assert asyncio.run(expiry()) == KEEPALIVE_EXPIRY_S
