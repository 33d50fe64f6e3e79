"""The scheduler's queue of requests waiting for a prefill lane: one class per order.

As in vLLM v1's ``request_queue.py``, the order is an object chosen once, from the
config (``make_queue``); the scheduler then adds, peeks, pops, offers requests behind
a stuck head (``backfill``) and ends requests that waited too long (``expire``), and
never branches on the order's name. Each order implements four primitives on its own
structure (a deque for ``fcfs``, a heap for the keyed orders); everything else (what
went first, how many are queued, their prompt tokens, how long each has waited) is
written once here.

Requests that lost their lane go before every order's own (``prepend``): they have
waited once already, and their KV is gone. A request ended while queued (a timeout, a
lane that will not come back) is dropped lazily: it is marked gone and skipped when it
reaches the front, so ending one costs O(1) whatever the order.
"""
from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable

from mypy_extensions import mypyc_attr

from streamserve.request import Request

ORDERS = ("fcfs", "spf", "edf")


@mypyc_attr(allow_interpreted_subclasses=True)  # an order of your own may subclass it
class RequestQueue(ABC):
    """Requests held for a prefill lane, in the order they are offered to lanes."""

    def __init__(self) -> None:
        self._first: deque[Request] = deque()  # lost their lane: before the order's own
        self._gone: set[int] = set()  # ended while queued, still in a structure
        self._since: dict[int, float] = {}  # request id -> when it joined the queue
        self._joined: deque[tuple[float, Request]] = deque()  # (since, request), oldest first
        self._count = 0
        self.tokens = 0  # prompt tokens of the queued requests

    # ------------------------------------------------------------ per order
    @abstractmethod
    def _push(self, request: Request) -> None:
        """Put ``request`` in its place by the order."""

    @abstractmethod
    def _head(self) -> Request | None:
        """The order's first request (possibly a gone one), without removing it."""

    @abstractmethod
    def _pop_head(self) -> Request:
        """Remove and return the order's first request."""

    @abstractmethod
    def _restore(self, requests: list[Request]) -> None:
        """Put back ``requests`` just taken with ``_pop_head``, in the order taken, into
        the places they had."""

    # ------------------------------------------------------------ written once
    def __len__(self) -> int:
        return self._count

    @property
    def retrying(self) -> bool:
        """Whether requests that lost their lane wait at the front."""
        self.peek()  # drops ended ones from the front
        return bool(self._first)

    def add(self, request: Request, now: float) -> None:
        self._push(request)
        self._joined_at(request, now)

    def prepend(self, requests: list[Request], now: float) -> None:
        """``requests`` (in this order) go before everything queued."""
        self._first.extendleft(reversed(requests))
        for request in requests:
            self._joined_at(request, now)

    def _joined_at(self, request: Request, now: float) -> None:
        self._count += 1
        self.tokens += request.prompt_len
        self._since[request.id] = now
        self._joined.append((now, request))  # ``now`` never decreases: oldest first

    def _left(self, request: Request) -> None:
        self._count -= 1
        self.tokens -= request.prompt_len
        del self._since[request.id]

    def peek(self) -> Request | None:
        """The request to place next, or ``None`` when none waits."""
        while True:
            first = self._first
            request = first[0] if first else self._head()
            if request is None or not self._gone or request.id not in self._gone:
                return request
            self._gone.discard(request.id)
            if first:
                first.popleft()
            else:
                self._pop_head()

    def pop(self) -> Request:
        request = self.peek()
        if request is None:
            raise IndexError("pop from an empty request queue")
        if self._first:
            self._first.popleft()
        else:
            self._pop_head()
        self._left(request)
        return request

    def backfill(self, n: int, take: Callable[[Request], bool]) -> None:
        """Offer up to ``n`` requests behind the head to ``take``, in queue order; those
        it takes leave the queue, the others and the head keep their places and their
        waiting time. Only while no lost request waits at the front (those go first)."""
        if self.retrying:
            raise RuntimeError("backfill while lost requests wait at the front")
        taken: list[Request] = []
        while len(taken) <= n:
            request = self._head()
            if request is None:
                break
            self._pop_head()
            if self._gone and request.id in self._gone:
                self._gone.discard(request.id)
            else:
                taken.append(request)
        keep = taken[:1]
        for request in taken[1:]:
            if take(request):
                self._left(request)
            else:
                keep.append(request)
        self._restore(keep)

    def discard(self, request: Request) -> None:
        """End ``request``'s wait here (it is queued): it will be skipped, not placed."""
        self._gone.add(request.id)
        self._left(request)

    def oldest(self) -> float | None:
        """When the request that has waited longest joined the queue; ``None`` if empty.
        Amortised O(1): entries of requests that left are dropped as they surface."""
        joined, since = self._joined, self._since
        while joined:
            t, request = joined[0]
            if since.get(request.id) == t:
                return t
            joined.popleft()
        return None

    def expire(self, now: float, max_wait: float) -> list[Request]:
        """Remove and return every request that joined at least ``max_wait`` seconds
        before ``now``, longest-waiting first."""
        out: list[Request] = []
        while True:
            t = self.oldest()
            if t is None or t + max_wait > now:
                return out
            request = self._joined.popleft()[1]
            self.discard(request)
            out.append(request)

    def clear(self) -> list[Request]:
        """Remove and return every queued request, in queue order."""
        out: list[Request] = []
        while self.peek() is not None:
            out.append(self.pop())
        self._joined.clear()
        return out


@mypyc_attr(allow_interpreted_subclasses=True)
class FCFSQueue(RequestQueue):
    """First come, first served: a deque, O(1) and no keys."""

    def __init__(self) -> None:
        super().__init__()
        self._q: deque[Request] = deque()

    def _push(self, request: Request) -> None:
        self._q.append(request)

    def _head(self) -> Request | None:
        return self._q[0] if self._q else None

    def _pop_head(self) -> Request:
        return self._q.popleft()

    def _restore(self, requests: list[Request]) -> None:
        self._q.extendleft(reversed(requests))


@mypyc_attr(allow_interpreted_subclasses=True)
class KeyedQueue(RequestQueue):
    """A heap by ``key(request)``; the key ends with the request id, which runtimes give
    in arrival order, so equal keys go first come, first served and a request put back
    finds its old place."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[tuple[float, float, int], Request]] = []

    @abstractmethod
    def key(self, request: Request) -> tuple[float, float, int]: ...

    def _push(self, request: Request) -> None:
        heapq.heappush(self._heap, (self.key(request), request))

    def _head(self) -> Request | None:
        return self._heap[0][1] if self._heap else None

    def _pop_head(self) -> Request:
        return heapq.heappop(self._heap)[1]

    def _restore(self, requests: list[Request]) -> None:
        for request in requests:
            self._push(request)


@mypyc_attr(allow_interpreted_subclasses=True)
class SPFQueue(KeyedQueue):
    """Shortest prompt first: lower mean TTFT, but long prompts wait under load."""

    def key(self, request: Request) -> tuple[float, float, int]:
        return (float(request.prompt_len), request.arrival, request.id)


@mypyc_attr(allow_interpreted_subclasses=True)
class EDFQueue(KeyedQueue):
    """Earliest TTFT deadline first. A request without a TTFT SLO has the deadline
    ``arrival + default_deadline`` (infinite by default: after every request with one)."""

    def __init__(self, default_deadline: float = math.inf) -> None:
        super().__init__()
        self.default_deadline = default_deadline

    def key(self, request: Request) -> tuple[float, float, int]:
        slo = request.slo
        ttft = slo.ttft if slo is not None and slo.ttft is not None else self.default_deadline
        return (request.arrival + ttft, request.arrival, request.id)


def make_queue(order: str, default_deadline: float = math.inf) -> RequestQueue:
    """The queue for ``order`` (one of ``ORDERS``)."""
    if order == "fcfs":
        return FCFSQueue()
    if order == "spf":
        return SPFQueue()
    if order == "edf":
        return EDFQueue(default_deadline)
    raise ValueError(f"order: must be one of {', '.join(ORDERS)}, got {order!r}")
