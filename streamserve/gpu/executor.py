"""The request executor: the policies decide, this module carries it out on live lanes.

Each client request becomes a ``Request`` and a ``Ticket``. The scheduler's actions
resolve the ticket: a ``Submit`` queues a placement for the request's handler to act
on, a ``Reject`` or ``Fail`` ends it at once with a 503 (or, once its stream started,
an error event). The handler talks to the chosen engine:

* disaggregated: the prefill lane gets the prompt with ``max_tokens=1`` and
  ``kv_transfer_params`` asking for a remote decode; its answer's ``kv_transfer_params``
  go with the full request to the decode lane, whose tokens stream back to the client;
* colocated, or a prefill the router placed on the decode lane itself: the whole request
  goes to the one lane.

When an engine stops answering, its lane is marked down and the scheduler's
``on_lane_down`` decides about the requests that were on it: place them again (they
restart from prefill, their KV is lost) or end them. A request whose tokens already
reached the client cannot be restarted invisibly; it ends with an error event instead.
After carrying out any callback's actions the executor asks the scheduler's
``next_deadline()`` and arranges an ``on_timer`` call then, so a policy can bound how
long a request waits for a lane although it has no clock of its own.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from typing import Any, Awaitable, Callable

from streamserve.gpu import protocol
from streamserve.gpu.engine_client import EngineClient, LaneBroken
from streamserve.gpu.lanes import LANE_FAMILIES, LiveLane
from streamserve.gpu.protocol import APIError, ClientRequest
from streamserve.gpu.telemetry import FrontMetrics, only, parse_metrics
from streamserve.gpu.ticket import LiveView, Ticket, reset
from streamserve.lanes import LaneRole
from streamserve.policies.base import Action, Fail, Reject, Scheduler, Submit
from streamserve.request import Phase, Request, State

log = logging.getLogger("streamserve.frontend")

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class Executor:
    def __init__(self, lanes: list[LiveLane], scheduler: Scheduler, metrics_interval: float = 0.5,
                 request_timeout: float = 600.0) -> None:
        self.lanes = lanes
        self.scheduler = scheduler
        self.metrics_interval = metrics_interval
        self.request_timeout = request_timeout
        self.view = LiveView(lanes)
        self.metrics = FrontMetrics()
        self.tickets: dict[int, Ticket] = {}
        self._ids = itertools.count()
        self._t0 = time.monotonic()
        self._client: EngineClient | None = None
        self._monitor: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        for lane in lanes:
            self.metrics.lane(lane)

    @property
    def disaggregated(self) -> bool:
        return self.view.disaggregated

    # ------------------------------------------------------------ life cycle
    def now(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        self._client = EngineClient(self.request_timeout)
        await self.scrape_all()
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._apply(self.scheduler.drain(self.now()))
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> EngineClient:
        assert self._client is not None, "Executor.start() was not awaited"
        return self._client

    # ------------------------------------------------------------ lanes
    async def scrape(self, lane: LiveLane) -> None:
        text = await self.client.get_text(lane.url + "/metrics", timeout=3.0)
        if text is None:
            if lane.healthy:
                await self.lane_failed(lane.lane_id, "its /metrics did not answer")
            return
        lane.update(parse_metrics(only(text, LANE_FAMILIES)))
        if not lane.healthy and await self._answers(lane):
            lane.healthy = True  # an engine that came back (restarted) is used again
            lane.down_reason = ""
            log.warning("lane %d (%s) is back", lane.lane_id, lane.role.value)
            self._apply(self.scheduler.on_capacity(self.now(), self.view))
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
            except Exception:  # the monitor must outlive any one bad scrape
                log.exception("lane monitor")

    async def _answers(self, lane: LiveLane) -> bool:
        """Whether a lane's engine still serves: its ``/health`` answers (a dead
        engine's port refuses at once). A restarted engine, by ``--restart`` or by
        hand, is taken back by ``scrape`` as soon as it answers again."""
        return await self.client.healthy(lane.url)

    def usable(self, phase: Phase) -> bool:
        return any(lane.healthy for lane in self.lanes if lane.role.serves(phase))

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
        log.warning("lane %d (%s) is down: %s", lane_id, lane.role.value, cause)
        lost: list[Request] = []
        for rid in list(lane.in_flight):
            ticket = self.tickets.get(rid)
            lane.in_flight.pop(rid)
            if ticket is None or ticket.closed or ticket.complete:
                continue
            ticket.forget()
            if ticket.io is not None and ticket.io[0] == lane_id and not ticket.io[1].done():
                ticket.lane_lost = True  # a frozen engine may never close the socket: stop waiting on it
                ticket.io[1].cancel()
            if ticket.streamed:
                self._end(ticket, State.FAILED, f"lane {lane_id} failed after tokens were sent: {cause}",
                          protocol.engine_failed(f"lane {lane_id} ({lane.role.value}) failed after tokens were "
                                                 f"sent: {cause}"))
                continue
            ticket.kv_params = None
            reset(ticket.request)
            lost.append(ticket.request)
        self.metrics.lane(lane)
        self._apply(self.scheduler.on_lane_down(lane_id, lost, self.now(), self.view))
        return True

    # ------------------------------------------------------------ actions and time
    def _apply(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions, then arm the timer for its next deadline."""
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
                self._end(ticket, State.REJECTED, action.reason,
                          protocol.unavailable(f"request rejected: {action.reason}", "RequestRejected"))
            elif isinstance(action, Fail):
                self._end(ticket, State.FAILED, action.reason,
                          protocol.unavailable(f"request failed: {action.reason}", "RequestFailed"))
        self.metrics.pending.set(self.scheduler.pending)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.scheduler.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - self.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        try:
            self._apply(self.scheduler.on_timer(self.now(), self.view))
        except Exception:  # a timer callback has no caller to report to
            log.exception("scheduler timer")

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
        skipped: taking that lane down placed or ended the request again."""
        while True:
            try:
                got = await asyncio.wait_for(ticket.placements.get(), self.request_timeout)
            except asyncio.TimeoutError:
                raise protocol.unavailable(f"no lane could take the request within {self.request_timeout:g} s") from None
            if isinstance(got, APIError):
                raise got
            if self.lanes[got[0]].healthy:
                return got

    # ------------------------------------------------------------ requests
    async def admit(self, client: ClientRequest, index: int = 0) -> Ticket:
        """The ticket of prompt ``index`` of a checked client request; its prompt length
        comes from an engine's ``/tokenize``."""
        body = client.bodies[index]
        if not (self.usable(Phase.PREFILL) and self.usable(Phase.DECODE)):  # nothing could place it
            raise protocol.unavailable("no healthy lane can serve the request: " + "; ".join(
                f"lane {lane.lane_id} down ({lane.down_reason})" for lane in self.lanes if not lane.healthy))
        lane = next(lane for lane in self.lanes if lane.healthy)
        try:
            tok = await self.client.post(lane.url + "/tokenize", protocol.tokenize_body(body, client.endpoint))
        except LaneBroken as e:
            raise protocol.unavailable(f"cannot count the prompt's tokens: {e}") from None
        req = Request(id=next(self._ids), arrival=self.now(), prompt_len=int(tok.get("count", 0)),
                      output_len=protocol.budget(body, client.endpoint) or 0, dataset=client.dataset)
        ticket = Ticket(request=req, endpoint=client.endpoint, body=body)
        self.tickets[req.id] = ticket
        self.metrics.open.set(len(self.tickets))
        return ticket

    async def run(self, ticket: Ticket, emit: Emit | None) -> dict[str, Any]:
        """Serve one ticket to its end. With ``emit`` every engine chunk is handed on as
        it arrives (the client streams); the assembled answer is returned either way.
        Raises ``APIError``; every path ends the ticket exactly once."""
        self._apply(self.scheduler.on_arrival(ticket.request, self.now(), self.view))
        try:
            while True:
                lane_id, phase = await self._placement(ticket)
                try:
                    if phase is Phase.PREFILL and self.lanes[lane_id].role is LaneRole.PREFILL:
                        await self._prefill(ticket, lane_id)
                        continue
                    answer = await self._generate(ticket, lane_id, emit)
                    self._finish(ticket)
                    return answer
                except LaneBroken as e:
                    if not await self.lane_failed(lane_id, str(e)):
                        raise APIError(502, f"engine of lane {lane_id} failed the request: {e}",
                                       type_="EngineFailure") from None
                    # down: the scheduler already re-placed or ended the request
        except APIError as e:
            self._end(ticket, State.FAILED if e.status >= 500 else State.REJECTED, e.message)
            raise
        except BaseException:
            self._end(ticket, State.FAILED, "front end error or client gone")
            raise

    def drop(self, ticket: Ticket, reason: str) -> None:
        """End an admitted ticket that will not run (another prompt of its batch was refused)."""
        self._end(ticket, State.REJECTED, reason)

    def _end(self, ticket: Ticket, state: State, reason: str, error: APIError | None = None) -> None:
        """End a ticket unfinished; with ``error``, its handler raises it at once."""
        if ticket.closed:
            return
        ticket.closed = True
        if error is not None:
            ticket.forget()
            ticket.refuse(error)
        req = ticket.request
        req.state, req.reason, req.finish = state, reason, self.now()
        self._leave_lanes(req)
        self.tickets.pop(req.id, None)
        self.metrics.open.set(len(self.tickets))
        self.metrics.outcomes.labels(state.value).inc()
        self._apply(self.scheduler.on_capacity(self.now(), self.view))

    def _finish(self, ticket: Ticket) -> None:
        req = ticket.request
        now = self.now()
        req.state, req.finish = State.FINISHED, now
        if math.isnan(req.decode_start):
            req.decode_start = now  # a one-token request: nothing to decode
        self._leave_lanes(req)
        if not math.isnan(req.first_token):  # what the client saw, not the prefill's end
            self.metrics.ttft.observe(req.first_token - req.arrival)
            if req.generated > 1:
                self.metrics.tpot.observe((ticket.last_chunk - req.first_token) / (req.generated - 1))
        self.metrics.e2e.observe(req.e2e)
        ticket.closed = True
        self.tickets.pop(req.id, None)
        self.metrics.open.set(len(self.tickets))
        self.metrics.outcomes.labels(State.FINISHED.value).inc()
        self._apply(self.scheduler.on_finish(req, now, self.view))  # routers get TPOT feedback here
        self._apply(self.scheduler.on_capacity(now, self.view))

    async def _io(self, ticket: Ticket, lane_id: int, call: Awaitable[Any]) -> Any:
        """Run one engine call so that taking its lane down ends the wait on it at once
        (as ``LaneBroken``), whether or not the engine's socket closes."""
        task = asyncio.ensure_future(call)
        ticket.io = (lane_id, task)
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if ticket.lane_lost and (me is None or not me.cancelling()):
                raise LaneBroken(f"lane {lane_id} went down during the call") from None
            raise
        finally:
            ticket.io = None
            ticket.lane_lost = False

    async def _prefill(self, ticket: Ticket, lane_id: int) -> None:
        req = ticket.request
        req.state, req.prefill_start, req.prefill_lane = State.PREFILL, self.now(), lane_id
        req.attempts += 1
        url = f"{self.lanes[lane_id].url}/v1/{ticket.endpoint}"
        answer = await self._io(ticket, lane_id, self.client.post(url, protocol.prefill_body(ticket.body)))
        ticket.kv_params = answer.get("kv_transfer_params")
        now = self.now()
        req.prefill_end = req.transfer_start = now  # the prefill's one token exists (the client sees the decode's)
        self._release(ticket, lane_id)
        self._apply(self.scheduler.on_prefill_done(req, now, self.view))

    async def _generate(self, ticket: Ticket, lane_id: int, emit: Emit | None) -> dict[str, Any]:
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
        return await self._io(ticket, lane_id, self._decode(ticket, lane_id, emit))

    async def _decode(self, ticket: Ticket, lane_id: int, emit: Emit | None) -> dict[str, Any]:
        req = ticket.request
        chunks: list[dict[str, Any]] = []
        url = f"{self.lanes[lane_id].url}/v1/{ticket.endpoint}"
        async for chunk in self.client.stream(url, protocol.engine_body(ticket.body, ticket.kv_params)):
            if chunk is None:  # the engine's [DONE]
                ticket.complete = True
                break
            usage = chunk.get("usage")
            if usage:
                req.generated = int(usage.get("completion_tokens", req.generated))
            if protocol.has_choice(chunk):
                now = self.now()
                ticket.last_chunk = now
                if math.isnan(req.first_token):  # the client's first token
                    req.first_token = now
                    req.state = State.DECODE
                    if ticket.local:  # prefilled here: its first token ends the prefill
                        req.prefill_end = req.decode_start = now
                        req.decode_lane = lane_id
                        self._apply(self.scheduler.on_prefill_done(req, now, self.view))
            chunks.append(chunk)
            if emit is not None:
                await emit(chunk)
                ticket.streamed = ticket.streamed or protocol.has_choice(chunk)
        answer = protocol.assemble(ticket.endpoint, chunks)
        if answer is None:
            raise LaneBroken("the engine's stream ended without a chunk")
        return answer
