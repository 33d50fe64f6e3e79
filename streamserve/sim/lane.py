"""One simulated engine: vLLM v1-style iteration-level scheduling on a SimPy clock.

Each loop iteration is one engine step, and costs one SimPy event: the batch is formed
(running sequences first, then waiting prompts, within ``max_num_seqs`` and
``max_num_batched_tokens``, chunking prompts when chunked prefill is on), KV blocks are
allocated (preempting the newest sequence for recompute when memory runs out), the step
time comes from the performance model, and after the timeout each sequence advances.
Per-sequence work is plain Python over ``__slots__`` objects: at the batch sizes a
latency-oriented cluster runs, that beats numpy's per-call overhead.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING

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


class Seq:
    """A request's life on one lane (reset when it moves or is preempted)."""

    __slots__ = ("req", "target", "computed", "blocks", "ctx", "last", "log_alpha", "decoding")

    def __init__(self, req: Request, alpha: float) -> None:
        self.req = req
        self.target = req.prompt_len + req.generated  # tokens to (re)compute: prompt and all output so far
        self.computed = 0
        self.blocks = 0
        self.ctx = 0
        self.last = math.nan
        self.log_alpha = math.log(alpha) if 0.0 < alpha < 1.0 else (0.0 if alpha >= 1.0 else -math.inf)
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
        self.running: list[Seq] = []  # in the batch
        self.ready: deque[Seq] = deque()  # decode lanes: KV arrived, waiting for a batch slot
        self.incoming: deque[Request] = deque()  # decode lanes: waiting for KV blocks to start a transfer
        self.held: dict[int, Seq] = {}  # prefill lanes: prefill done, KV kept until moved
        self.queued_tokens = 0
        self.n_dec = 0
        self.ctx_dec = 0
        self.class_counts: dict[str, int] = {}

        # signals and accounting
        self.step_ewma = 0.0
        self.util = 0.0
        self.last_end = 0.0
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
    def stats(self) -> LaneStats:
        return LaneStats(
            self.lane_id, self.role, self.healthy,
            len(self.waiting) + len(self.ready) + len(self.incoming), len(self.running),
            self.queued_tokens, self.used_blocks / self.total_blocks,
            (self.total_blocks - self.used_blocks) * self.block_size,
            self.max_num_seqs, self.max_waiting, self.step_ewma, self.util,
            self.accept_ewma, self.k, self.pair, self.perf.tp, self.ctx_dec,
        )

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def fits(self, req: Request) -> bool:
        """Whether the request could ever run here (its whole context in KV)."""
        return self.blocks_for(req.prompt_len + req.output_len) <= self.total_blocks

    # ------------------------------------------------------------ entry points
    def wake(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def add_prefill(self, req: Request) -> None:
        seq = Seq(req, self.cluster.alpha_of(req))
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
        seq = Seq(req, self.cluster.alpha_of(req))
        seq.blocks = blocks
        seq.ctx = req.prompt_len
        seq.computed = seq.target
        seq.last = req.first_token  # the next gap spans the transfer
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

    def _start_decoding(self, seq: Seq) -> None:
        seq.decoding = True
        self.n_dec += 1
        self.ctx_dec += seq.ctx
        ds = seq.req.dataset
        self.class_counts[ds] = self.class_counts.get(ds, 0) + 1

    def _stop_decoding(self, seq: Seq) -> None:
        if seq.decoding:
            seq.decoding = False
            self.n_dec -= 1
            self.ctx_dec -= seq.ctx
            ds = seq.req.dataset
            left = self.class_counts[ds] - 1
            if left:
                self.class_counts[ds] = left
            else:
                del self.class_counts[ds]

    def _preempt(self, seq: Seq) -> None:
        """Recompute preemption, as vLLM does: drop the KV, prefill again later."""
        self.running.remove(seq)
        if not seq.decoding:
            self.queued_tokens -= seq.target - seq.computed
        self._stop_decoding(seq)
        self.free_seq(seq)
        req = seq.req
        req.preemptions += 1
        fresh = Seq(req, 0.5)
        fresh.log_alpha = seq.log_alpha
        fresh.last = seq.last
        self.waiting.appendleft(fresh)
        self.queued_tokens += fresh.target

    def take_all(self) -> list[Request]:
        """Empty the lane (it failed): every request on it, KV lost."""
        reqs = [s.req for s in self.running] + [s.req for s in self.waiting]
        reqs += [s.req for s in self.ready] + [s.req for s in self.held.values()] + list(self.incoming)
        self.running.clear()
        self.waiting.clear()
        self.ready.clear()
        self.held.clear()
        self.incoming.clear()
        self.used_blocks = 0
        self.queued_tokens = 0
        self.n_dec = 0
        self.ctx_dec = 0
        self.class_counts.clear()
        self.epoch += 1
        return reqs

    # ------------------------------------------------------------ the engine loop
    def _loop(self):  # noqa: C901 - the step is one piece of logic; splitting it costs calls per step
        env = self.env
        rng_random = self.rng.random
        while True:
            if not self.healthy or not (self.running or self.waiting or self.ready):
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            now = env.now
            running = self.running
            # Sequences whose KV arrived join the batch first.
            while self.ready and len(running) < self.max_num_seqs:
                seq = self.ready.popleft()
                running.append(seq)
                self._start_decoding(seq)

            k = 0
            if self.spec is not None and self.n_dec:
                k = self.spec.depth(self.stats(), self.n_dec, self.ctx_dec, now, self.class_counts)
            budget = self.max_tokens
            bs = self.block_size
            decode: list[Seq] = []
            chunks: list[tuple[Seq, int]] = []
            prefill_tokens = 0
            prefill_sq = 0.0
            ctx = 0
            i = 0
            while i < len(running):
                seq = running[i]
                if seq.decoding:
                    if budget < k + 1:
                        i += 1
                        continue
                    need = -(-(seq.ctx + k + 1) // bs) - seq.blocks
                    if need > 0:
                        while need > self.total_blocks - self.used_blocks and running[-1] is not seq:
                            self._preempt(running[-1])
                        if need > self.total_blocks - self.used_blocks:
                            self._preempt(seq)
                            continue
                        seq.blocks += need
                        self.used_blocks += need
                    budget -= k + 1
                    ctx += seq.ctx
                    decode.append(seq)
                else:
                    left = seq.target - seq.computed
                    chunk = left if left <= budget else (budget if self.chunked else 0)
                    if chunk > 0:
                        need = -(-(seq.computed + chunk) // bs) - seq.blocks
                        if need <= self.total_blocks - self.used_blocks:
                            seq.blocks += need
                            self.used_blocks += need
                            budget -= chunk
                            prefill_tokens += chunk
                            prefill_sq += chunk * (2 * seq.computed + chunk)
                            chunks.append((seq, chunk))
                i += 1
            while self.waiting and budget > 0 and len(running) < self.max_num_seqs:
                seq = self.waiting[0]
                left = seq.target
                chunk = left if left <= budget else (budget if self.chunked else 0)
                if chunk <= 0:
                    break
                need = -(-chunk // bs)
                if need > self.total_blocks - self.used_blocks:
                    break
                self.waiting.popleft()
                seq.blocks = need
                self.used_blocks += need
                budget -= chunk
                prefill_tokens += chunk
                prefill_sq += chunk * chunk
                chunks.append((seq, chunk))
                running.append(seq)
                req = seq.req
                if req.prefill_start != req.prefill_start:  # NaN: first time on a lane
                    req.prefill_start = now
            if not decode and not chunks:
                self._wake = env.event()  # blocked on memory: wait for a transfer or a failure
                yield self._wake
                self._wake = None
                continue
            self._note_blocks()

            n = len(decode)
            dt = self.perf.step_time(prefill_tokens, prefill_sq, n, ctx, k) * self.slow
            idle = now - self.last_end
            if idle > 0:
                self.util *= math.exp(-idle / UTIL_WINDOW)
            decay = math.exp(-dt / UTIL_WINDOW)
            self.util = self.util * decay + (1.0 - decay)
            epoch = self.epoch
            yield env.timeout(dt)
            if epoch != self.epoch:
                continue  # failed mid-step: the cluster already took every request
            end = env.now
            self.last_end = end
            self.busy_time += dt
            self.steps += 1
            self.batch_sum += n + len(chunks)
            self.step_ewma = dt if self.steps == 1 else self.step_ewma + STEP_EWMA * (dt - self.step_ewma)

            finished: list[Seq] = []
            gaps = self.cluster.itl_buffer
            drafted = accepted = added = 0
            by_class: dict[str, list[int]] | None = {} if (k and len(self.class_counts) > 1) else None
            for seq in decode:
                req = seq.req
                if k:
                    la = seq.log_alpha
                    if la == 0.0:
                        g = k
                    elif la == -math.inf:
                        g = 0
                    else:
                        g = int(math.log(1.0 - rng_random()) / la)
                        if g > k:
                            g = k
                    drafted += k
                    accepted += g
                    if by_class is not None:
                        c = by_class.setdefault(req.dataset, [0, 0])
                        c[0] += k
                        c[1] += g
                    tokens = g + 1
                else:
                    tokens = 1
                rem = req.output_len - req.generated
                if tokens > rem:
                    tokens = rem
                req.generated += tokens
                seq.ctx += tokens
                added += tokens
                gaps.append(end - seq.last)
                seq.last = end
                if req.generated >= req.output_len:
                    finished.append(seq)
            self.ctx_dec += added

            done_prefill: list[Seq] = []
            for seq, chunk in chunks:
                seq.computed += chunk
                self.queued_tokens -= chunk
                if seq.computed >= seq.target:
                    req = seq.req
                    req.generated += 1
                    seq.ctx = seq.target
                    if req.first_token != req.first_token:  # NaN: this is the first token
                        req.first_token = end
                        done_prefill.append(seq)
                    else:
                        gaps.append(end - seq.last)
                    seq.last = end
                    if self.role is LaneRole.PREFILL:
                        running.remove(seq)
                        if req.generated >= req.output_len:
                            finished.append(seq)
                        else:
                            self.held[req.id] = seq
                    else:
                        self._start_decoding(seq)
                        if req.generated >= req.output_len:
                            finished.append(seq)

            if k:
                self.drafted += drafted
                self.accepted += accepted
                rate = accepted / drafted
                self.accept_ewma = rate if self.accept_ewma is None else self.accept_ewma + ACCEPT_EWMA * (rate - self.accept_ewma)
            if self.spec is not None and n:
                self.spec.observe(StepObservation(
                    self.lane_id, k, n, ctx, drafted, accepted, dt, end,
                    None if by_class is None else {c: (v[0], v[1]) for c, v in by_class.items()}))
                if k != self.k:
                    self.cluster.k_trace.append((end, self.lane_id, k))
            self.k = k

            for seq in finished:
                if seq.decoding:
                    self._stop_decoding(seq)
                if seq in running:
                    running.remove(seq)
                self.free_seq(seq)
            if done_prefill or finished:
                self.cluster.after_step(self, done_prefill, finished, end)
