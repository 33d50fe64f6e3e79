"""The OpenAI-compatible front end: the policies decide, this module carries it out.

Each client request becomes a ``Request`` and a ``Ticket``. The scheduler's actions
(``Submit``/``Reject``/``Fail``) resolve the ticket's placement; the request's handler
waits for it and then talks to the chosen engine:

* disaggregated: the prefill lane gets the prompt with ``max_tokens=1`` and
  ``kv_transfer_params`` asking for a remote decode; its answer's ``kv_transfer_params``
  go with the full request to the decode lane, whose tokens stream back to the client;
* colocated (``vllm-dp``): the whole request goes to the one lane.

When an engine stops answering, its lane is marked down and the scheduler's
``on_lane_down`` decides about the requests that were on it: it may place them again
(they restart from prefill, their KV is lost). A request whose tokens already reached
the client cannot be restarted invisibly; it ends with an error event instead.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from streamserve.gpu.errors import APIError, bad_request, unavailable
from streamserve.gpu.lanes import LiveLane, parse_prometheus
from streamserve.lanes import LaneRole, LaneStats
from streamserve.policies.base import Action, Fail, Reject, Router, Scheduler, Submit
from streamserve.request import Phase, Request, State

log = logging.getLogger("streamserve.frontend")

REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LaneBroken(Exception):
    """The connection to an engine failed in a way that may mean the engine is gone."""


# What a call to an engine raises when the engine is gone: httpx's errors, and the
# AttributeError httpcore's anyio backend raises when the socket of a connection being
# opened has already been closed (seen when an engine is killed mid-run).
TRANSPORT_ERRORS = (httpx.HTTPError, AttributeError)


@dataclass
class Ticket:
    """One client request being served.

    Placements queue up rather than sit in one future: a lane can fail between the
    moment a placement is made and the moment the handler acts on it, and the
    re-placement that follows must not be lost behind the stale one.
    """

    request: Request
    endpoint: str  # "completions" or "chat/completions"
    body: dict[str, Any]
    placements: asyncio.Queue = field(default_factory=asyncio.Queue)  # (lane_id, phase) or APIError
    kv_params: dict[str, Any] | None = None
    streamed: bool = False  # bytes already reached the client: no invisible retry
    complete: bool = False  # the engine sent [DONE]: nothing is left to lose
    closed: bool = False
    local: bool = False  # this attempt prefills on the lane that decodes it
    first_chunk: float = math.nan  # when the first token reached the front end (client-visible TTFT)

    def place(self, lane_id: int, phase: Phase) -> None:
        self.placements.put_nowait((lane_id, phase))

    def refuse(self, error: APIError) -> None:
        self.placements.put_nowait(error)

    def forget(self) -> None:
        """Drop the placements not yet acted on: they name the lane just lost."""
        while not self.placements.empty():
            self.placements.get_nowait()


class _View:
    """The scheduler's ClusterView of the live lanes."""

    def __init__(self, fe: "FrontEnd") -> None:
        self.fe = fe

    @property
    def disaggregated(self) -> bool:
        return self.fe.disaggregated

    def lanes(self, phase: Phase) -> list[LaneStats]:
        return [lane.stats() for lane in self.fe.lanes if lane.role.serves(phase)]

    def partner(self, lane_id: int) -> int | None:
        me = self.fe.lanes[lane_id]
        if me.pair is None:
            return None
        for lane in self.fe.lanes:
            if lane.pair == me.pair and lane.role is LaneRole.DECODE:
                return lane.lane_id
        return None


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.routed = Counter("streamserve_lane_requests", "Requests placed on a lane", ["lane", "role", "phase"], registry=r)
        self.outcomes = Counter("streamserve_requests", "Requests by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("streamserve_ttft_seconds", "Time to first token (streamed requests)",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("streamserve_tpot_seconds", "Time per output token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("streamserve_e2e_seconds", "Request latency", buckets=LATENCY_BUCKETS, registry=r)
        self.spec_k = Gauge("streamserve_spec_k", "Speculation depth the lane's SpecuStream chose last", ["lane"], registry=r)
        self.healthy = Gauge("streamserve_lane_healthy", "1 if the lane's engine answers", ["lane", "role"], registry=r)
        self.waiting = Gauge("streamserve_lane_waiting", "Engine's waiting requests", ["lane"], registry=r)
        self.running = Gauge("streamserve_lane_running", "Engine's running requests", ["lane"], registry=r)
        self.in_flight = Gauge("streamserve_lane_in_flight", "Requests the front end has on the lane", ["lane"], registry=r)
        self.kv_usage = Gauge("streamserve_lane_kv_usage", "Engine's KV cache usage (0-1)", ["lane"], registry=r)
        self.drafts = Gauge("streamserve_lane_spec_drafts", "Engine's spec-decode drafts so far", ["lane"], registry=r)
        self.draft_tokens = Gauge("streamserve_lane_spec_draft_tokens", "Engine's drafted tokens so far", ["lane"], registry=r)
        self.accepted = Gauge("streamserve_lane_spec_accepted_tokens", "Engine's accepted draft tokens so far", ["lane"], registry=r)
        self.pending = Gauge("streamserve_scheduler_pending", "Requests the scheduler holds on no lane", registry=r)

    def lane(self, lane: LiveLane) -> None:
        key = str(lane.lane_id)
        self.spec_k.labels(key).set(lane.spec_k)
        self.healthy.labels(key, lane.role.value).set(1 if lane.healthy else 0)
        self.waiting.labels(key).set(lane.waiting)
        self.running.labels(key).set(lane.running)
        self.in_flight.labels(key).set(len(lane.in_flight))
        self.kv_usage.labels(key).set(lane.kv_usage)
        self.drafts.labels(key).set(lane.spec.drafts)
        self.draft_tokens.labels(key).set(lane.spec.draft_tokens)
        self.accepted.labels(key).set(lane.spec.accepted)


class FrontEnd:
    def __init__(self, lanes: list[LiveLane], model_name: str, max_model_len: int, router: Router,
                 scheduler: Scheduler, engine_alive: Callable[[int], bool] | None = None,
                 metrics_interval: float = 0.5, request_timeout: float = 600.0) -> None:
        self.lanes = lanes
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.router = router
        self.scheduler = scheduler
        self.engine_alive = engine_alive
        self.metrics_interval = metrics_interval
        self.request_timeout = request_timeout
        self.disaggregated = any(lane.role is not LaneRole.COLOCATED for lane in lanes)
        self.view = _View(self)
        self.metrics = _Metrics()
        self.tickets: dict[int, Ticket] = {}
        self._ids = itertools.count()
        self._t0 = time.monotonic()
        self._client: httpx.AsyncClient | None = None
        self._monitor: asyncio.Task | None = None
        for lane in lanes:
            self.metrics.lane(lane)

    # ------------------------------------------------------------ life cycle
    def now(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.request_timeout, connect=5.0), limits=limits)
        await self.scrape_all()
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for action in self.scheduler.drain(self.now()):
            self._apply([action])
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "FrontEnd.start() was not awaited"
        return self._client

    # ------------------------------------------------------------ lanes
    async def scrape(self, lane: LiveLane) -> None:
        try:
            r = await self.client.get(lane.url + "/metrics", timeout=3.0)
            r.raise_for_status()
        except TRANSPORT_ERRORS:
            if lane.healthy:
                await self.lane_failed(lane.lane_id, "its /metrics did not answer")
            return
        lane.update(parse_prometheus(r.text))
        lane.read_k_trace()
        if not lane.healthy and await self._answers(lane):
            lane.healthy = True  # an engine that came back (restarted by hand) is used again
            lane.down_reason = ""
        self.metrics.lane(lane)

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(lane) for lane in self.lanes))

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval)
            try:
                await self.scrape_all()
                if self.scheduler.pending:
                    self._apply(self.scheduler.on_capacity(self.now(), self.view))
                self.metrics.pending.set(self.scheduler.pending)
            except Exception:  # the monitor must outlive any one bad scrape
                log.exception("lane monitor")

    async def _answers(self, lane: LiveLane) -> bool:
        if self.engine_alive is not None and not self.engine_alive(lane.lane_id):
            return False
        try:
            r = await self.client.get(lane.url + "/health", timeout=2.0)
            return r.status_code == 200
        except TRANSPORT_ERRORS:
            return False

    async def lane_failed(self, lane_id: int, cause: str) -> bool:
        """Check a lane after a failure on it; if its engine is gone, take the lane down
        and let the scheduler decide about its requests. Returns whether it is down."""
        lane = self.lanes[lane_id]
        if not lane.healthy:
            return True
        if await self._answers(lane):
            return False
        if not lane.healthy:  # another task took it down while we checked
            return True
        lane.healthy = False
        lane.down_reason = cause
        self.metrics.lane(lane)
        log.warning("lane %d (%s) is down: %s", lane_id, lane.role.value, cause)
        lost: list[Request] = []
        for rid in list(lane.in_flight):
            ticket = self.tickets.get(rid)
            lane.in_flight.pop(rid)
            if ticket is None or ticket.closed or ticket.complete:
                continue
            ticket.forget()
            if ticket.streamed:
                ticket.refuse(APIError(502, f"lane {lane_id} ({lane.role.value}) failed after tokens were sent: {cause}",
                                       type_="engine_failure", code="lane_down"))
                continue
            ticket.kv_params = None
            ticket.first_chunk = math.nan
            _reset(ticket.request)
            lost.append(ticket.request)
        self._apply(self.scheduler.on_lane_down(lane_id, lost, self.now(), self.view))
        return True

    # ------------------------------------------------------------ actions
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            ticket = self.tickets.get(action.request.id)
            if ticket is None or ticket.closed:
                continue
            if isinstance(action, Submit):
                lane = self.lanes[action.lane_id]
                lane.in_flight[action.request.id] = action.request
                self.metrics.routed.labels(str(lane.lane_id), lane.role.value, action.phase.value).inc()
                self.metrics.in_flight.labels(str(lane.lane_id)).set(len(lane.in_flight))
                ticket.place(action.lane_id, action.phase)
            elif isinstance(action, Reject):
                ticket.refuse(APIError(503, f"request rejected: {action.reason}", type_="service_unavailable",
                                       code="rejected"))
            elif isinstance(action, Fail):
                ticket.refuse(APIError(503, f"request failed: {action.reason}", type_="service_unavailable",
                                       code="failed"))

    def _leave_lanes(self, req: Request) -> None:
        """An ended request is in no lane's in-flight set, whichever placed it last."""
        for lane in self.lanes:
            if lane.in_flight.pop(req.id, None) is not None:
                self.metrics.in_flight.labels(str(lane.lane_id)).set(len(lane.in_flight))

    def _release(self, ticket: Ticket, lane_id: int) -> None:
        lane = self.lanes[lane_id]
        lane.in_flight.pop(ticket.request.id, None)
        self.metrics.in_flight.labels(str(lane_id)).set(len(lane.in_flight))

    async def _placement(self, ticket: Ticket) -> tuple[int, Phase]:
        """The next placement to act on. One on a lane that has since gone down is
        skipped: taking that lane down placed, refused or failed the request again."""
        while True:
            try:
                got = await asyncio.wait_for(ticket.placements.get(), self.request_timeout)
            except asyncio.TimeoutError:
                raise unavailable(f"no lane could take the request within {self.request_timeout:g} s") from None
            if isinstance(got, APIError):
                raise got
            if self.lanes[got[0]].healthy:
                return got

    def _usable(self, phase: Phase) -> bool:
        return any(lane.healthy for lane in self.lanes if lane.role.serves(phase))

    # ------------------------------------------------------------ requests
    async def admit(self, endpoint: str, raw: bytes) -> Ticket:
        """Validate a client request and make its Request; errors are ``APIError``."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        model = body.get("model", self.model_name)
        if model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist (this server serves `{self.model_name}`).",
                           param="model", code="model_not_found")
        body["model"] = self.model_name
        key = "prompt" if endpoint == "completions" else "messages"
        if key not in body:
            raise bad_request(f"missing field '{key}'", param=key)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if endpoint != "completions" \
            else body.get("max_tokens", 16)
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0):
            raise bad_request(f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
        if not (self._usable(Phase.PREFILL) and self._usable(Phase.DECODE)):
            raise unavailable("no healthy lane can serve the request: " + "; ".join(
                f"lane {lane.lane_id} down ({lane.down_reason})" for lane in self.lanes if not lane.healthy))
        prompt_len = await self._count_tokens(endpoint, body)
        budget = max_tokens if max_tokens is not None else self.max_model_len - prompt_len
        if prompt_len + budget > self.max_model_len or prompt_len >= self.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + budget} tokens ({prompt_len} in the prompt, {budget} for the completion).",
                param=key)
        rid = next(self._ids)
        request = Request(id=rid, arrival=self.now(), prompt_len=prompt_len, output_len=budget,
                          dataset=str(body.pop("streamserve_dataset", "default")))
        ticket = Ticket(request=request, endpoint=endpoint, body=body)
        self.tickets[rid] = ticket
        return ticket

    async def _count_tokens(self, endpoint: str, body: dict[str, Any]) -> int:
        lane = next((lane for lane in self.lanes if lane.healthy), None)
        if lane is None:
            raise unavailable("no healthy lane")
        if endpoint == "completions":
            prompt = body["prompt"]
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                raise bad_request("this server takes one prompt per request", param="prompt")
            payload: dict[str, Any] = {"model": self.model_name, "prompt": prompt}
        else:
            payload = {"model": self.model_name, "messages": body["messages"], "add_generation_prompt": True}
        try:
            r = await self.client.post(lane.url + "/tokenize", json=payload, timeout=30.0)
        except TRANSPORT_ERRORS as e:
            raise unavailable(f"could not tokenize on lane {lane.lane_id}: {e}") from None
        if r.status_code >= 400:
            raise _engine_error(r.status_code, r.content)
        return int(r.json()["count"])

    async def run(self, ticket: Ticket, emit: Callable[[bytes], Any] | None) -> dict[str, Any] | None:
        """Serve ``ticket`` to its end. Streaming: ``emit`` gets each SSE chunk and this
        returns None; otherwise returns the engine's JSON answer."""
        req = ticket.request
        try:
            self._apply(self.scheduler.on_arrival(req, self.now(), self.view))
            while True:
                lane_id, phase = await self._placement(ticket)
                try:
                    if phase is Phase.PREFILL and self.lanes[lane_id].role is LaneRole.PREFILL:
                        await self._prefill(ticket, lane_id)
                        continue
                    result = await self._generate(ticket, lane_id, emit)
                    self._finish(ticket)
                    return result
                except LaneBroken as e:
                    if not await self.lane_failed(lane_id, str(e)):
                        self._release(ticket, lane_id)
                        raise APIError(502, f"engine of lane {lane_id} failed the request: {e}",
                                       type_="engine_failure") from None
                    # down: the scheduler already re-placed, failed or queued the request
        except APIError as e:
            self._end(ticket, State.FAILED if e.status >= 500 else State.REJECTED, e.message)
            raise
        except BaseException:
            self._end(ticket, State.FAILED, "front end error or client gone")
            raise

    def _end(self, ticket: Ticket, state: State, reason: str) -> None:
        if ticket.closed:
            return
        ticket.closed = True
        req = ticket.request
        req.state, req.reason, req.finish = state, reason, self.now()
        self._leave_lanes(req)
        self.tickets.pop(req.id, None)
        self.metrics.outcomes.labels(state.value).inc()
        self._apply(self.scheduler.on_capacity(self.now(), self.view))

    def _finish(self, ticket: Ticket) -> None:
        req = ticket.request
        now = self.now()
        req.state, req.finish = State.FINISHED, now
        if math.isnan(req.decode_start):
            req.decode_start = now  # a one-token request: nothing to decode
        self._leave_lanes(req)
        if not math.isnan(ticket.first_chunk):  # what the client saw, not the prefill's end
            self.metrics.ttft.observe(ticket.first_chunk - req.arrival)
            if req.generated > 1:
                self.metrics.tpot.observe((now - ticket.first_chunk) / (req.generated - 1))
        self.metrics.e2e.observe(req.e2e)
        ticket.closed = True
        self.tickets.pop(req.id, None)
        self.metrics.outcomes.labels(State.FINISHED.value).inc()
        self._apply(self.scheduler.on_finish(req, now, self.view))  # routers get TPOT feedback here
        self._apply(self.scheduler.on_capacity(now, self.view))

    async def _post(self, lane_id: int, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.lanes[lane_id].url}/v1/{endpoint}"
        try:
            r = await self.client.post(url, json=body)
        except TRANSPORT_ERRORS as e:
            raise LaneBroken(f"{type(e).__name__}: {e}") from None
        if r.status_code >= 500:
            raise LaneBroken(f"HTTP {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            raise _engine_error(r.status_code, r.content)
        return r.json()

    async def _prefill(self, ticket: Ticket, lane_id: int) -> None:
        req = ticket.request
        req.state, req.prefill_start, req.prefill_lane = State.PREFILL, self.now(), lane_id
        req.attempts += 1
        body = {k: v for k, v in ticket.body.items() if k not in ("stream", "stream_options")}
        body["max_tokens"] = 1
        body.pop("max_completion_tokens", None)
        body["kv_transfer_params"] = dict(REMOTE_DECODE)
        answer = await self._post(lane_id, ticket.endpoint, body)
        ticket.kv_params = answer.get("kv_transfer_params")
        now = self.now()
        req.first_token = req.transfer_start = now  # the prefill's one token exists
        self._release(ticket, lane_id)
        self._apply(self.scheduler.on_prefill_done(req, now, self.view))

    async def _generate(self, ticket: Ticket, lane_id: int, emit: Callable[[bytes], Any] | None) -> dict[str, Any] | None:
        """Decode after a remote prefill, or run the whole request on this lane (a
        colocated lane, or a decode lane the router chose to prefill locally). The engine
        always streams, so the end of prefill is seen even for non-streamed requests."""
        req = ticket.request
        now = self.now()
        ticket.local = ticket.kv_params is None and math.isnan(req.transfer_start)
        if ticket.local:
            req.state, req.prefill_start, req.prefill_lane = State.PREFILL, now, lane_id
            req.attempts += 1
        else:
            req.state, req.decode_start, req.decode_lane = State.TRANSFER, now, lane_id
        body = dict(ticket.body)
        if ticket.kv_params:
            body["kv_transfer_params"] = ticket.kv_params
        if emit is not None:
            await self._stream(ticket, lane_id, body, emit)
            return None
        chunks: list[dict[str, Any]] = []

        async def keep(chunk: bytes) -> None:
            data = chunk[6:].strip()
            if data != b"[DONE]":
                chunks.append(json.loads(data))

        body["stream_options"] = {"include_usage": True}
        await self._stream(ticket, lane_id, body, keep)
        return assemble(ticket.endpoint, chunks)

    async def _stream(self, ticket: Ticket, lane_id: int, body: dict[str, Any], emit: Callable[[bytes], Any]) -> None:
        req = ticket.request
        emit_is_client = bool(ticket.body.get("stream"))  # else chunks are kept to assemble one answer
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        url = f"{self.lanes[lane_id].url}/v1/{ticket.endpoint}"
        try:
            async with self.client.stream("POST", url, json=body) as r:
                if r.status_code >= 500:
                    raise LaneBroken(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
                if r.status_code >= 400:
                    raise _engine_error(r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data.strip() == "[DONE]":
                        ticket.complete = True
                        await emit(b"data: [DONE]\n\n")
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    if "error" in chunk:
                        raise LaneBroken(f"engine error in stream: {chunk['error']}")
                    usage = chunk.get("usage")
                    if usage:
                        req.generated = int(usage.get("completion_tokens", req.generated))
                    if not chunk.get("choices"):
                        if client_wants_usage:
                            await emit(f"data: {data}\n\n".encode())
                        continue
                    if not client_wants_usage:
                        chunk.pop("usage", None)
                        data = json.dumps(chunk)
                    if _has_text(chunk) and math.isnan(ticket.first_chunk):
                        now = self.now()
                        ticket.first_chunk = now
                        if ticket.local:  # prefilled here: its first token ends the prefill
                            req.first_token = req.decode_start = now
                            req.decode_lane = lane_id
                            req.state = State.DECODE
                            self._apply(self.scheduler.on_prefill_done(req, now, self.view))
                        else:
                            req.state = State.DECODE
                    ticket.streamed = emit_is_client
                    await emit(f"data: {data}\n\n".encode())
        except TRANSPORT_ERRORS as e:
            raise LaneBroken(f"{type(e).__name__}: {e}") from None


def _reset(req: Request) -> None:
    """A request that lost its lane starts over: no phase of it has happened."""
    req.state = State.QUEUED
    req.generated = 0
    req.prefill_start = req.first_token = req.transfer_start = req.decode_start = math.nan
    req.prefill_lane = req.decode_lane = -1


def assemble(endpoint: str, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One non-streamed OpenAI answer from an engine's stream of chunks."""
    if not chunks:
        raise LaneBroken("the engine's stream ended without a chunk")
    chat = endpoint != "completions"
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
            "choices": [choices[i] for i in sorted(choices)], "usage": usage}


def _has_text(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices", []):
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _engine_error(status: int, content: bytes) -> APIError:
    """An engine's own 4xx answer, passed on with its message."""
    try:
        err = json.loads(content).get("error", {})
        message = err.get("message") or content.decode(errors="replace")
        return APIError(status, message, type_=err.get("type") or "invalid_request_error",
                        param=err.get("param"), code=err.get("code"))
    except (json.JSONDecodeError, AttributeError):
        return APIError(status, content.decode(errors="replace")[:500])


# ---------------------------------------------------------------- HTTP app
def create_app(fe: FrontEnd) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        await fe.start()
        try:
            yield
        finally:
            await fe.close()

    app = FastAPI(title="streamserve", lifespan=lifespan)

    async def generate(endpoint: str, http: HTTPRequest) -> Response:
        try:
            ticket = await fe.admit(endpoint, await http.body())
        except APIError as e:
            fe.metrics.outcomes.labels(State.REJECTED.value).inc()
            return e.response()
        if not ticket.body.get("stream"):
            try:
                return JSONResponse(await fe.run(ticket, None))
            except APIError as e:
                return e.response()
        return StreamingResponse(_sse(fe, ticket), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Response:
        return await generate("completions", http)

    @app.post("/v1/chat/completions")
    async def chat(http: HTTPRequest) -> Response:
        return await generate("chat/completions", http)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": fe.model_name, "object": "model", "owned_by": "streamserve",
                                             "max_model_len": fe.max_model_len}]}

    @app.get("/health")
    async def health() -> Response:
        lanes = [{"lane": lane.lane_id, "role": lane.role.value, "healthy": lane.healthy,
                  "reason": lane.down_reason} for lane in fe.lanes]
        ok = fe._usable(Phase.PREFILL) and fe._usable(Phase.DECODE)
        return JSONResponse({"status": "ok" if ok else "degraded", "lanes": lanes}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(fe.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def internal(_: HTTPRequest, exc: Exception) -> Response:
        log.exception("unhandled error")
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="internal_error").response()

    return app


async def _sse(fe: FrontEnd, ticket: Ticket) -> AsyncIterator[bytes]:
    """Run the request in a task and relay its chunks; an error after the first chunk
    becomes an OpenAI-style error event followed by ``[DONE]``."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def emit(chunk: bytes) -> None:
        await queue.put(chunk)

    async def body() -> None:
        try:
            await fe.run(ticket, emit)
        except APIError as e:
            await queue.put(f"data: {json.dumps(e.body())}\n\n".encode())
            await queue.put(b"data: [DONE]\n\n")
        finally:
            await queue.put(None)

    task = asyncio.create_task(body())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
    finally:
        if not task.done():
            task.cancel()


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
