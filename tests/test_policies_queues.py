"""The request queues: each order against a plain sorted list, and the bookkeeping that
is written once (lost requests first, tokens, waiting times, lazy removal, backfill)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.policies.queues import EDFQueue, FCFSQueue, SPFQueue, make_queue
from streamserve.request import SLO, Request


def req(i: int, prompt: int = 100, arrival: float | None = None, ttft: float | None = None) -> Request:
    return Request(id=i, arrival=float(i) if arrival is None else arrival, prompt_len=prompt, output_len=5,
                   slo=None if ttft is None else SLO(ttft=ttft))


def reference_key(order: str, r: Request) -> tuple[float, float, int]:
    if order == "fcfs":
        return (0.0, 0.0, r.id)
    if order == "spf":
        return (float(r.prompt_len), r.arrival, r.id)
    ttft = r.slo.ttft if r.slo is not None and r.slo.ttft is not None else math.inf
    return (r.arrival + ttft, r.arrival, r.id)


def test_make_queue_picks_the_class_once_and_refuses_unknown_orders() -> None:
    assert type(make_queue("fcfs")) is FCFSQueue
    assert type(make_queue("spf")) is SPFQueue
    assert type(make_queue("edf", 2.0)) is EDFQueue and make_queue("edf", 2.0).default_deadline == 2.0
    with pytest.raises(ValueError, match="order: must be one of fcfs, spf, edf, got 'lifo'"):
        make_queue("lifo")


@settings(max_examples=150, deadline=None)
@given(order=st.sampled_from(["fcfs", "spf", "edf"]),
       ops=st.lists(st.tuples(st.sampled_from(["add", "pop", "lost", "discard", "backfill", "expire"]),
                              st.integers(1, 40), st.integers(0, 3)), max_size=80))
def test_every_order_matches_a_sorted_list(order: str, ops: list[tuple[str, int, int]]) -> None:
    """Model check: the queue pops what a sorted list of the same requests would, lost
    requests first (latest loss first, in their order), with exact counts and tokens."""
    q = make_queue(order)
    model: list[Request] = []  # the order's own requests
    front: list[Request] = []  # lost ones, in the order they go
    since: dict[int, float] = {}
    now, next_id = 0.0, 0
    for op, x, y in ops:
        now += 0.5
        if op == "add":
            r = req(next_id, prompt=x, arrival=now - y, ttft=None if y == 0 else float(x % 7))
            next_id += 1
            q.add(r, now)
            model.append(r)
            since[r.id] = now
        elif op == "pop" and (front or model):
            expected = front.pop(0) if front else min(model, key=lambda r: reference_key(order, r))
            if expected in model:
                model.remove(expected)
            assert q.pop() is expected
            del since[expected.id]
        elif op == "lost":
            lost = [req(next_id + i, prompt=x) for i in range(y + 1)]
            next_id += y + 1
            q.prepend(lost, now)
            front[:0] = lost
            since.update({r.id: now for r in lost})
        elif op == "discard" and (front or model):
            pool = front + model
            victim = pool[x % len(pool)]
            q.discard(victim)
            (front if victim in front else model).remove(victim)
            del since[victim.id]
        elif op == "backfill" and not front and model:
            ranked = sorted(model, key=lambda r: reference_key(order, r))
            offered: list[Request] = []

            def take(r: Request) -> bool:
                offered.append(r)
                return r.prompt_len % 2 == 0

            q.backfill(y, take)
            assert offered == ranked[1:y + 1]  # the head stays; the next y in order
            for r in offered:
                if r.prompt_len % 2 == 0:
                    model.remove(r)
                    del since[r.id]
        elif op == "expire":
            max_wait = float(x % 5)
            expired = q.expire(now, max_wait)
            due = sorted((r for r in front + model if since[r.id] + max_wait <= now), key=lambda r: since[r.id])
            assert sorted(r.id for r in expired) == sorted(r.id for r in due)
            assert [since[r.id] for r in expired] == sorted(since[r.id] for r in expired)
            for r in expired:
                (front if r in front else model).remove(r)
                del since[r.id]
        assert len(q) == len(front) + len(model)
        assert q.tokens == sum(r.prompt_len for r in front + model)
        assert q.retrying == bool(front)
        assert q.oldest() == (min(since.values()) if since else None)
    rest = q.clear()
    assert rest == front + sorted(model, key=lambda r: reference_key(order, r))
    assert len(q) == 0 and q.tokens == 0 and q.oldest() is None and q.peek() is None


def test_backfill_keeps_the_waiting_time_of_requests_it_does_not_take() -> None:
    q = FCFSQueue()
    for i in range(4):
        q.add(req(i), float(i))
    q.backfill(8, lambda r: r.id == 2)
    assert [q.pop().id for _ in range(3)] == [0, 1, 3]
    assert q.oldest() is None
    with pytest.raises(IndexError):
        q.pop()


def test_backfill_is_refused_while_lost_requests_wait_first() -> None:
    q = SPFQueue()
    q.add(req(0), 0.0)
    q.prepend([req(1)], 1.0)
    with pytest.raises(RuntimeError, match="lost requests"):
        q.backfill(2, lambda r: True)


def test_a_lost_request_waits_anew_from_its_loss() -> None:
    q = FCFSQueue()
    q.add(req(0), 0.0)
    r = q.pop()
    q.prepend([r], 7.0)
    assert q.oldest() == 7.0
    assert q.expire(36.9, 30.0) == [] and q.expire(37.0, 30.0) == [r] and len(q) == 0
