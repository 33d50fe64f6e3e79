"""One simulated engine: vLLM v1-style iteration-level scheduling on a SimPy clock.

Each loop iteration is one engine step and costs one SimPy event: decoding sequences
first (each fed ``k + 1`` tokens), then prompt chunks of running and waiting requests,
within ``max_num_seqs`` and ``max_num_batched_tokens``; KV blocks are allocated as
sequences grow, preempting the newest sequence for recompute when memory runs out; the
step time comes from the performance model.

The loop is the simulator's hot path, so it is written for speed: per-sequence work is
plain Python over ``__slots__`` objects (cheaper than numpy at the batch sizes a
latency-oriented cluster runs), lane totals are kept incrementally, and decoding
sequences advance in lockstep, so their inter-token gaps are recorded as one
``(step time, count)`` pair per step instead of one value per sequence.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Generator

import simpy

from streamserve.config import EngineConfig
from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import LanePerf
from streamserve.policies.base import SpecPolicy, StepObservation
from streamserve.request import Request

if TYPE_CHECKING:
    from streamserve.sim.cluster import Cluster

UTIL_WINDOW = 1.0  # seconds: time constant of the utilisation signal
STEP_EWMA = 0.2
ACCEPT_EWMA = 0.1
IN_STEP = -1.0  # ``Seq.last`` of a sequence whose last token came at the end of the previous step


def _log_alpha(alpha: float) -> float:
    """ln(alpha), clamped so that ``int(log(u) / ln_alpha)`` samples the accepted run
    length for any alpha in [0, 1] without branches (0 -> none accepted, 1 -> all)."""
    if alpha <= 0.0:
        return -math.inf
    if alpha >= 1.0:
        return -1e-300
    return math.log(alpha)


class Seq:
    """A request's life on one lane (rebuilt when it moves or is preempted)."""

    __slots__ = ("req", "target", "computed", "blocks", "cap", "ctx", "left", "last", "log_alpha", "decoding")

    def __init__(self, req: Request, log_alpha: float) -> None:
        self.req = req
        self.target = req.prompt_len + req.generated  # tokens to (re)compute: prompt and output so far
        self.computed = 0
        self.blocks = 0
        self.cap = 0  # blocks * block_size
        self.ctx = 0  # tokens in KV
        self.left = req.output_len - req.generated
        self.last = math.nan  # time of the request's latest token, when not IN_STEP
        self.log_alpha = log_alpha
        self.decoding = False


class SimLane:
    def __init__(self, env: simpy.Environment, cluster: "Cluster", lane_id: int, role: LaneRole,
                 perf: LanePerf, engine: EngineConfig, pair: int | None, spec: SpecPolicy | None,
                 rng: random.Random) -> None:
        self.env = env
        self.cluster = cluster
        self.lane_id = lane_id
        self.role = role
        self.perf = perf
        self.pair = pair
        self.spec = spec if spec is not None and spec.k_max > 0 and role is not LaneRole.PREFILL else None
        self.rng = rng
        self.max_num_seqs = engine.max_num_seqs
        self.max_tokens = engine.max_num_batched_tokens
        self.max_waiting = engine.max_waiting
        self.chunked = engine.enable_chunked_prefill
        self.block_size = engine.block_size
        capacity = engine.kv_capacity_tokens or perf.kv_capacity_tokens(engine.gpu_memory_utilization)
        self.total_blocks = capacity // self.block_size
        self.used_blocks = 0
        self.healthy = True
        self.slow = 1.0
        self.epoch = 0  # bumped when the lane fails, to void a step in flight

        self.waiting: deque[Seq] = deque()  # need prefill compute
        self.running: list[Seq] = []  # in the batch, oldest first (preemption takes the newest)
        self.dec: list[Seq] = []  # the decoding subset of ``running``
        self.ready: deque[Seq] = deque()  # decode lanes: KV arrived, waiting for a batch slot
        self.incoming: deque[Request] = deque()  # decode lanes: waiting for KV blocks to start a transfer
        self.held: dict[int, Seq] = {}  # prefill lanes: prefill done, KV kept until moved
        self.queued_tokens = 0
        self.ctx_dec = 0
        self.class_counts: dict[str, int] = {}

        # signals and accounting
        self.step_ewma = 0.0
        self.last_end = 0.0
        # Utilisation is kept lazily: the busy stretch under way started at ``busy_from``
        # with utilisation ``util0``; ``stats()`` works out the value at ``last_end``.
        self.busy_from = 0.0
        self.util0 = 0.0
        # KV slots reserved per decoding sequence beyond its context: the verify tokens
        # of the deepest step the policy may choose (vLLM reserves its drafter's
        # lookahead slots whatever depth a step uses).
        self.reserve = (self.spec.k_max if self.spec is not None else 0) + 1
        self.accept_ewma: float | None = None
        self.k = 0
        self.busy_time = 0.0
        self.steps = 0
        self.batch_sum = 0
        self.peak_blocks = 0
        self.drafted = 0
        self.accepted = 0
        self._wake: simpy.Event | None = None
        self.process = env.process(self._loop())

    # ------------------------------------------------------------ policy view
    @property
    def util(self) -> float:
        """Busy fraction over the last ``UTIL_WINDOW`` seconds, at the end of the latest step."""
        return 1.0 - (1.0 - self.util0) * math.exp((self.busy_from - self.last_end) / UTIL_WINDOW)

    def _start_step(self, now: float) -> None:
        """Account for the idle gap (if any) before a step that starts at ``now``."""
        if now > self.last_end:
            self.util0 = self.util * math.exp((self.last_end - now) / UTIL_WINDOW)
            self.busy_from = now

    def stats(self) -> LaneStats:
        return LaneStats(
            self.lane_id, self.role, self.healthy,
            len(self.waiting) + len(self.ready) + len(self.incoming), len(self.running),
            self.queued_tokens, self.used_blocks / self.total_blocks,
            (self.total_blocks - self.used_blocks) * self.block_size,
            self.max_num_seqs, self.max_waiting, self.step_ewma, self.util,
            self.accept_ewma, self.k, self.pair, self.perf.tp, self.ctx_dec, self.block_size,
        )

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def misfit(self, req: Request) -> str:
        """Why the request could never run here ('' if it can): its whole context must fit
        in KV, and without chunked prefill in one step's token budget (vLLM's own rule)."""
        need = req.prompt_len + req.output_len
        if self.blocks_for(need) > self.total_blocks:
            return f"needs {need} KV tokens; lane {self.lane_id} holds {self.total_blocks * self.block_size}"
        if not self.chunked and need > self.max_tokens:
            return (f"needs {need} tokens in one step without chunked prefill; lane {self.lane_id} "
                    f"has max_num_batched_tokens={self.max_tokens}")
        return ""

    # ------------------------------------------------------------ entry points
    def wake(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def add_prefill(self, req: Request) -> None:
        seq = Seq(req, _log_alpha(self.cluster.alpha_of(req)))
        self.waiting.append(seq)
        self.queued_tokens += seq.target
        self.wake()

    def add_incoming(self, req: Request) -> None:
        """A request whose KV must come here; it waits until blocks are free."""
        self.incoming.append(req)
        self.queued_tokens += req.prompt_len
        self.admit_incoming()

    def admit_incoming(self) -> None:
        free = self.total_blocks - self.used_blocks
        while self.incoming and self.healthy:
            req = self.incoming[0]
            need = self.blocks_for(req.prompt_len + 1)
            if need > free:
                break
            self.incoming.popleft()
            free -= need
            self.used_blocks += need
            self._note_blocks()
            self.cluster.start_transfer(req, self, need)

    def receive(self, req: Request, blocks: int, now: float) -> None:
        """KV for ``req`` has arrived: it joins the batch as a decoding sequence."""
        seq = Seq(req, _log_alpha(self.cluster.alpha_of(req)))
        seq.blocks = blocks
        seq.cap = blocks * self.block_size
        seq.ctx = req.prompt_len
        seq.computed = seq.target
        seq.last = req.first_token  # its first gap spans the transfer
        self.queued_tokens -= req.prompt_len
        self.ready.append(seq)
        self.wake()

    # ------------------------------------------------------------ memory
    def _note_blocks(self) -> None:
        if self.used_blocks > self.peak_blocks:
            self.peak_blocks = self.used_blocks

    def free_seq(self, seq: Seq) -> None:
        self.used_blocks -= seq.blocks
        seq.blocks = 0
        seq.cap = 0

    def _grow(self, seq: Seq, tokens: int) -> bool:
        """Give ``seq`` KV room for ``tokens`` in all; False if memory is short."""
        need = -(-tokens // self.block_size) - seq.blocks
        if need > self.total_blocks - self.used_blocks:
            return False
        seq.blocks += need
        seq.cap = seq.blocks * self.block_size
        self.used_blocks += need
        return True

    def _account(self, end: float, dt: float, batch: int) -> None:
        """Book a finished step of ``batch`` sequences and ``dt`` seconds."""
        self.last_end = end
        self.busy_time += dt
        self.steps += 1
        self.batch_sum += batch
        self.step_ewma = dt if self.steps == 1 else self.step_ewma + STEP_EWMA * (dt - self.step_ewma)

    def _reserve(self, seq: Seq) -> int:
        """KV slots a decoding sequence needs beyond its context before a step (never
        past its last token, so a request that fits the lane can always finish)."""
        return self.reserve if seq.left > self.reserve else seq.left

    def _start_decoding(self, seq: Seq) -> None:
        seq.decoding = True
        self.dec.append(seq)
        self.ctx_dec += seq.ctx
        ds = seq.req.dataset
        self.class_counts[ds] = self.class_counts.get(ds, 0) + 1

    def _stop_decoding(self, seq: Seq) -> None:
        seq.decoding = False
        self.dec.remove(seq)
        self.ctx_dec -= seq.ctx
        ds = seq.req.dataset
        left = self.class_counts[ds] - 1
        if left:
            self.class_counts[ds] = left
        else:
            del self.class_counts[ds]
        seq.req.generated = seq.req.output_len - seq.left

    def _preempt(self, seq: Seq, now: float) -> None:
        """Recompute preemption, as vLLM does: drop the KV, prefill again later."""
        self.running.remove(seq)
        if seq.decoding:
            self._stop_decoding(seq)
        else:
            self.queued_tokens -= seq.target - seq.computed
        self.free_seq(seq)
        req = seq.req
        req.preemptions += 1
        fresh = Seq(req, seq.log_alpha)
        fresh.last = now if seq.last == IN_STEP else seq.last
        self.waiting.appendleft(fresh)
        self.queued_tokens += fresh.target

    def take_all(self) -> list[Request]:
        """Empty the lane (it failed): every request on it, KV lost."""
        reqs = [s.req for s in self.running] + [s.req for s in self.waiting]
        reqs += [s.req for s in self.ready] + [s.req for s in self.held.values()] + list(self.incoming)
        for lst in (self.running, self.dec, self.waiting, self.ready, self.incoming):
            lst.clear()
        self.held.clear()
        self.used_blocks = 0
        self.queued_tokens = 0
        self.ctx_dec = 0
        self.class_counts.clear()
        self.epoch += 1
        return reqs

    # ------------------------------------------------------------ the engine loop
    def _loop(self) -> Generator[simpy.Event, Any, None]:  # noqa: C901 - one step is one piece of logic; splitting it costs calls per step
        env = self.env
        rnd = self.rng.random
        log = math.log
        cluster = self.cluster
        running, dec = self.running, self.dec
        no_joiners: list[Seq] = []
        now = env.now  # the lane's clock: ahead of env.now while it runs steps nobody can observe
        fast = True
        while True:
            if not self.healthy or not (running or self.waiting or self.ready):
                self._wake = env.event()
                yield self._wake
                self._wake = None
                now = env.now
                continue
            if fast and dec and len(dec) == len(running) and not self.ready and not self.waiting:
                now = yield from self._decode_steps(now)
                fast = False  # it stopped for a reason the general step handles: take one
                continue
            fast = True
            # Sequences whose KV arrived join the batch first.
            joiners = no_joiners
            if self.ready:
                joiners = []
                while self.ready and len(running) < self.max_num_seqs:
                    seq = self.ready.popleft()
                    running.append(seq)
                    self._start_decoding(seq)
                    joiners.append(seq)

            budget = self.max_tokens
            k = 0
            if dec:
                for seq in [s for s in dec if s.ctx + self._reserve(s) > s.cap]:
                    if not seq.decoding:
                        continue  # preempted below while making room for another
                    while not self._grow(seq, seq.ctx + self._reserve(seq)):
                        victim = running[-1]
                        self._preempt(victim, now)
                        if victim is seq:
                            break
            if dec:
                if self.spec is not None:
                    k = self.spec.depth(self.lane_id, len(dec), self.ctx_dec, now, self.class_counts)
                    if len(dec) * (k + 1) > budget:  # the engine cannot verify more than its budget
                        k = budget // len(dec) - 1
                budget -= len(dec) * (k + 1)

            chunks: list[tuple[Seq, int]] = []
            prefill_tokens = 0
            prefill_sq = 0.0
            if len(running) > len(dec):  # prompts part-way through a chunked prefill
                for seq in running:
                    if seq.decoding or budget <= 0:
                        continue
                    left = seq.target - seq.computed
                    chunk = left if left <= budget else (budget if self.chunked else 0)
                    if chunk > 0 and self._grow(seq, seq.computed + chunk):
                        budget -= chunk
                        prefill_tokens += chunk
                        prefill_sq += chunk * (2 * seq.computed + chunk)
                        chunks.append((seq, chunk))
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                seq = waiting[0]
                chunk = seq.target if seq.target <= budget else (budget if self.chunked else 0)
                if chunk <= 0 or not self._grow(seq, chunk):
                    break
                waiting.popleft()
                budget -= chunk
                prefill_tokens += chunk
                prefill_sq += chunk * chunk
                chunks.append((seq, chunk))
                running.append(seq)
                req = seq.req
                if req.prefill_start != req.prefill_start:  # NaN: first time on a lane
                    req.prefill_start = now
            n = len(dec)
            if not n and not chunks and self.ready:
                # Sequences whose KV has arrived hold the memory the batch needs. If the
                # batch is full of prompts that cannot grow, preempt the newest, as vLLM does
                # when it cannot schedule; either way, let the arrived ones in and retry.
                if len(running) >= self.max_num_seqs:
                    self._preempt(running[-1], now)
                continue
            if not n and not chunks:
                self._wake = env.event()  # blocked on memory: wait for a transfer or a failure
                yield self._wake
                self._wake = None
                now = env.now
                continue
            self._note_blocks()

            ctx = self.ctx_dec
            dt = self.perf.step_time(prefill_tokens, prefill_sq, n, ctx, k) * self.slow
            self._start_step(now)
            end = now + dt
            # Run ahead: if no other event is due before this step ends, nothing can see
            # the lane mid-step, so its results are applied at once and SimPy is only
            # asked to advance time when something visible happens (a token count that
            # finishes a request, a first token). The results are the same either way.
            deferred = end >= env.peek()
            if deferred:
                epoch = self.epoch
                yield env.timeout(end - env.now)
                if epoch != self.epoch:
                    now = env.now
                    continue  # failed mid-step: the cluster already took every request
                end = env.now  # the same instant, without float drift against the clock
            self._account(end, dt, n + len(chunks))

            finished: list[Seq] = []
            gaps = cluster.itl_buffer
            accepted = added = 0
            by_class: dict[str, list[int]] | None = None
            if n:
                if k:
                    if len(self.class_counts) > 1:
                        by_class = {}
                    for seq in dec:
                        g = int(log(1.0 - rnd()) / seq.log_alpha)
                        if g > k:
                            g = k
                        accepted += g
                        if by_class is not None:
                            c = by_class.setdefault(seq.req.dataset, [0, 0])
                            c[0] += k
                            c[1] += g
                        left = seq.left
                        tokens = g + 1 if g < left else left
                        seq.left = left - tokens
                        seq.ctx += tokens
                        added += tokens
                        if tokens == left:
                            finished.append(seq)
                else:
                    for seq in dec:
                        seq.ctx += 1
                        seq.left -= 1
                        if not seq.left:
                            finished.append(seq)
                    added = n
                self.ctx_dec += added
                lockstep = n
                for seq in joiners:
                    if seq.decoding:
                        gaps.append(end - seq.last)
                        seq.last = IN_STEP
                        lockstep -= 1
                cluster.itl_bulk.append((dt, lockstep))

            done_prefill: list[Seq] = []
            for seq, chunk in chunks:
                seq.computed += chunk
                self.queued_tokens -= chunk
                if seq.computed < seq.target:
                    continue
                req = seq.req
                req.generated += 1
                seq.left -= 1
                seq.ctx = seq.target
                if req.first_token != req.first_token:  # NaN: this is the first token
                    req.first_token = end
                    done_prefill.append(seq)
                else:
                    gaps.append(end - seq.last)
                seq.last = IN_STEP
                if self.role is LaneRole.PREFILL:
                    running.remove(seq)
                    if seq.left <= 0:
                        finished.append(seq)
                    else:
                        self.held[req.id] = seq
                elif seq.left <= 0:
                    finished.append(seq)
                else:
                    self._start_decoding(seq)

            if k and n:
                drafted = k * n
                self.drafted += drafted
                self.accepted += accepted
                rate = accepted / drafted
                self.accept_ewma = rate if self.accept_ewma is None else self.accept_ewma + ACCEPT_EWMA * (rate - self.accept_ewma)
            if self.spec is not None and n:
                self.spec.observe(StepObservation(
                    self.lane_id, k, n, ctx, k * n, accepted, dt, end,
                    None if by_class is None else {c: (v[0], v[1]) for c, v in by_class.items()}))
                if k != self.k:
                    cluster.k_trace.append((end, self.lane_id, k))
            self.k = k

            for seq in finished:
                if seq.decoding:
                    self._stop_decoding(seq)
                if self.role is not LaneRole.PREFILL:
                    running.remove(seq)
                seq.req.generated = seq.req.output_len
                self.free_seq(seq)
            if done_prefill or finished:
                if not deferred:
                    yield env.timeout(end - env.now)
                cluster.after_step(self, done_prefill, finished, end)
            now = end

    def _decode_steps(self, now: float) -> Generator[simpy.Event, Any, float]:
        """Steps of a batch that only decodes, the simulator's commonest case, for as long
        as it stays one (no prompt, no arrived KV, lane healthy and memory enough); returns
        the lane clock. The same step as ``_loop``'s general one, with all that cannot
        happen here left out: it is where most of a simulation's time goes."""
        env, cluster, spec, perf = self.env, self.cluster, self.spec, self.perf
        dec, running = self.dec, self.running
        rnd, log = self.rng.random, math.log
        bulk = cluster.itl_bulk
        lane_id, budget, reserve = self.lane_id, self.max_tokens, self.reserve
        grow = True
        while dec and len(dec) == len(running) and self.healthy and not self.ready and not self.waiting:
            if grow:
                for seq in dec:
                    left = seq.left
                    need = seq.ctx + (reserve if left > reserve else left)
                    if need > seq.cap and not self._grow(seq, need):
                        return now  # memory is short: the general step preempts
                self._note_blocks()
                grow = False
            n = len(dec)
            ctx = self.ctx_dec
            k = 0
            if spec is not None:
                k = spec.depth(lane_id, n, ctx, now, self.class_counts)
                if n * (k + 1) > budget:
                    k = budget // n - 1
            dt = perf.step_time(0, 0.0, n, ctx, k) * self.slow
            if now > self.last_end:
                self._start_step(now)
            end = now + dt
            deferred = end >= env.peek()
            if deferred:
                epoch = self.epoch
                yield env.timeout(end - env.now)
                if epoch != self.epoch:
                    return env.now  # failed mid-step: the cluster already took every request
                end = env.now
            self._account(end, dt, n)

            finished: list[Seq] = []
            accepted = added = 0
            if k:
                by_class: dict[str, list[int]] | None = {} if len(self.class_counts) > 1 else None
                for seq in dec:
                    g = int(log(1.0 - rnd()) / seq.log_alpha)
                    if g > k:
                        g = k
                    accepted += g
                    if by_class is not None:
                        c = by_class.setdefault(seq.req.dataset, [0, 0])
                        c[0] += k
                        c[1] += g
                    left = seq.left
                    tokens = g + 1 if g < left else left
                    left -= tokens
                    seq.left = left
                    seq.ctx += tokens
                    added += tokens
                    if not left:
                        finished.append(seq)
                    elif seq.ctx + reserve > seq.cap:
                        grow = True
            else:
                by_class = None
                for seq in dec:
                    seq.ctx += 1
                    seq.left -= 1
                    if not seq.left:
                        finished.append(seq)
                    elif seq.ctx + reserve > seq.cap:
                        grow = True
                added = n
            self.ctx_dec += added
            bulk.append((dt, n))
            if k:
                drafted = k * n
                self.drafted += drafted
                self.accepted += accepted
                rate = accepted / drafted
                self.accept_ewma = rate if self.accept_ewma is None else self.accept_ewma + ACCEPT_EWMA * (rate - self.accept_ewma)
            if spec is not None:
                spec.observe(StepObservation(
                    lane_id, k, n, ctx, k * n, accepted, dt, end,
                    None if by_class is None else {c: (v[0], v[1]) for c, v in by_class.items()}))
                if k != self.k:
                    cluster.k_trace.append((end, lane_id, k))
            self.k = k
            if finished:
                for seq in finished:
                    self._stop_decoding(seq)
                    running.remove(seq)
                    seq.req.generated = seq.req.output_len
                    self.free_seq(seq)
                if not deferred:
                    yield env.timeout(end - env.now)
                cluster.after_step(self, [], finished, end)
            now = end
        return now
