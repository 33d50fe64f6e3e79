"""One simulated engine: vLLM v1-style iteration-level scheduling on a SimPy clock.

Each loop iteration is one engine step and costs one SimPy event: decoding sequences
first (each fed ``k + 1`` tokens), then prompt chunks of running and waiting requests,
within ``max_num_seqs`` and ``max_num_batched_tokens``; KV blocks are allocated as
sequences grow, preempting the newest sequence for recompute when memory runs out; the
step time comes from the performance model. With ``scheduling: prefill_first`` a step
that can prefill does only that (vLLM v0's scheduler, DistServe's vLLM baseline).

The lane owns its state: its queues, its KV blocks (``kv.BlockPool``), the requests it
holds for a decode lane to pull and those whose KV is on its way in, and its token
counts. Others change that state only through its methods (``add_prefill``,
``recompute``, ``enqueue_incoming`` / ``reserve_next`` / ``receive`` /
``cancel_incoming``, ``pin`` / ``release``, ``evacuate``), and the lane tells its host
what happened through the small ``LaneHost`` protocol, so it imports nothing of the
cluster.

The step is the simulator's hot path: per-sequence work is plain Python over
``__slots__`` objects (cheaper than numpy at a latency-oriented cluster's batch sizes),
lane totals are kept incrementally, and decoding sequences advance in lockstep, so their
inter-token gaps are recorded as one ``(step time, count)`` pair per step.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, Generator, Protocol

import simpy

from streamserve.config import EngineConfig
from streamserve.lanes import LaneRole, LaneStats
from streamserve.perfmodel import LanePerf
from streamserve.policies.base import SpecPolicy, StepObservation
from streamserve.request import Request
from streamserve.sim.kv import IN_STEP, BlockPool, Seq, log_alpha
from streamserve.sim.record import Recorder

UTIL_WINDOW = 1.0  # seconds: time constant of the utilisation signal
STEP_EWMA = 0.2
ACCEPT_EWMA = 0.1
SAMPLE_EVERY = 1.0  # seconds of simulated time between usage samples, at first
MAX_SAMPLES = 4096  # beyond this the samples are thinned out and the interval doubled


class LaneHost(Protocol):
    """What a lane tells the cluster it belongs to."""

    def alpha_of(self, req: Request) -> float:
        """Speculative acceptance rate of ``req``'s dataset."""

    def step_done(self, lane: "SimLane", prefilled: list[Seq], finished: list[Seq], now: float) -> bool:
        """A step ended at ``now``: ``prefilled`` got their first token, ``finished`` their last.
        True when that set off something else at this instant (a closed-loop client's
        next request) that must happen before the lane plans its next step."""

    def memory_freed(self, lane: "SimLane") -> None:
        """KV held for a decode lane was freed outside a step (its lease ran out)."""


class SimLane:
    def __init__(self, env: simpy.Environment, host: LaneHost, lane_id: int, role: LaneRole,
                 perf: LanePerf, engine: EngineConfig, pair: int | None, spec: SpecPolicy | None,
                 rng: random.Random, recorder: Recorder, kv_lease_s: float) -> None:
        self.env = env
        self.host = host
        self.lane_id = lane_id
        self.role = role
        self.perf = perf
        self.pair = pair
        self.spec = spec if spec is not None and spec.k_max > 0 and role is not LaneRole.PREFILL else None
        self.rng = rng
        self.rec = recorder
        self.lease = kv_lease_s
        self.max_num_seqs = engine.max_num_seqs
        self.max_tokens = engine.max_num_batched_tokens
        self.max_waiting = engine.max_waiting
        self.chunked = engine.enable_chunked_prefill
        self.prefill_first = engine.scheduling == "prefill_first" and role is not LaneRole.PREFILL
        capacity = engine.kv_capacity_tokens or perf.kv_capacity_tokens(engine.gpu_memory_utilization)
        self.kv = BlockPool(capacity, engine.block_size)
        self.down = 0  # faults holding the lane down; healthy when 0
        self.slow = 1.0
        self.epoch = 0  # bumped when the lane is emptied, to void a step in flight

        self.waiting: deque[Seq] = deque()  # need prefill compute
        self.running: list[Seq] = []  # in the batch, oldest first (preemption takes the newest)
        self.dec: list[Seq] = []  # the decoding subset of ``running``
        self.ready: deque[Seq] = deque()  # KV arrived, waiting for a batch slot
        self.incoming: deque[Request] = deque()  # KV to come here, waiting for free blocks
        self.reserved: dict[int, int] = {}  # request id -> blocks set aside for its KV in flight
        self.held: dict[int, Seq] = {}  # prefill done, KV kept until a decode lane pulls it
        self.queued_tokens = 0
        self.ctx_dec = 0
        self.class_counts: dict[str, int] = {}
        self._off_step: list[Seq] = []  # decoding sequences whose last token did not come at the last step's end
        self._regrow = False  # some decoding sequence may need more KV before the next step
        self._chunks: list[tuple[Seq, int]] = []  # this step's prompt chunks
        self._prefill_tokens = 0
        self._prefill_sq = 0.0
        self._prefill_only = False  # this step only prefills (``prefill_first``)

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
        self.drafted = 0
        self.accepted = 0
        self.samples: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]  # (time, busy seconds so far, KV usage)
        self._sample_every = SAMPLE_EVERY
        self._next_sample = SAMPLE_EVERY
        self._lease_armed = False
        self._wake: simpy.Event | None = None
        self.process = env.process(self._loop())

    # ------------------------------------------------------------ policy view
    @property
    def healthy(self) -> bool:
        return self.down == 0

    @property
    def util(self) -> float:
        """Busy fraction over the last ``UTIL_WINDOW`` seconds, at the end of the latest step."""
        return 1.0 - (1.0 - self.util0) * math.exp((self.busy_from - self.last_end) / UTIL_WINDOW)

    def stats(self) -> LaneStats:
        kv = self.kv
        return LaneStats(
            self.lane_id, self.role, self.down == 0,
            len(self.waiting) + len(self.ready) + len(self.incoming), len(self.running),
            self.queued_tokens, kv.used / kv.total, (kv.total - kv.used) * kv.block_size,
            self.max_num_seqs, self.max_waiting, self.step_ewma, self.util,
            self.accept_ewma, self.k, self.pair, self.perf.tp, self.ctx_dec, kv.block_size,
        )

    def misfit(self, req: Request) -> str:
        """Why the request could never run here ('' if it can): its whole context must fit
        in KV, and without chunked prefill in one step's token budget (vLLM's own rule)."""
        need = req.prompt_len + req.output_len
        if self.kv.blocks_for(need) > self.kv.total:
            return f"needs {need} KV tokens; lane {self.lane_id} holds {self.kv.total * self.kv.block_size}"
        if not self.chunked and need > self.max_tokens:
            return (f"needs {need} tokens in one step without chunked prefill; lane {self.lane_id} "
                    f"has max_num_batched_tokens={self.max_tokens}")
        return ""

    # ------------------------------------------------------------ work in
    def wake(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def add_prefill(self, req: Request) -> None:
        """Prefill ``req`` here (then decode it too, unless this is a prefill lane)."""
        seq = Seq(req, log_alpha(self.host.alpha_of(req)))
        self.waiting.append(seq)
        self.queued_tokens += seq.target
        self.wake()

    def recompute(self, req: Request) -> None:
        """Decode ``req`` here although its KV never came (it was freed at the source, or
        its transfer failed): prefill its prompt and first token again, then decode, as
        vLLM's ``kv_load_failure_policy: recompute`` does."""
        req.generated = 0  # the prefill lane's token never reached the client
        seq = Seq(req, log_alpha(self.host.alpha_of(req)))
        seq.last = req.first_token  # NaN: the client has no token yet (``_finish_chunks`` sets it)
        self.waiting.append(seq)
        self.queued_tokens += seq.target
        self.wake()

    def enqueue_incoming(self, req: Request) -> None:
        """A request whose KV is to come here; it waits for free blocks (``reserve_next``)."""
        self.incoming.append(req)
        self.queued_tokens += req.prompt_len

    def reserve_next(self) -> Request | None:
        """The next incoming request, with blocks set aside for its KV, if they are free."""
        if not self.incoming or self.down:
            return None
        req = self.incoming[0]
        need = self.kv.blocks_for(req.prompt_len + 1)
        if not self.kv.reserve(need):
            return None
        self.incoming.popleft()
        self.reserved[req.id] = need
        self.kv.note_peak()
        return req

    def receive(self, req: Request) -> None:
        """KV for ``req`` has arrived: it joins the batch as a decoding sequence. As in
        vLLM's disaggregated serving, the prefill's token stays on the prefill lane: this
        lane's first step samples the first token again from the loaded KV, and that is the
        token the client receives first (TTFT spans prefill, hand-off and that step)."""
        blocks = self.reserved.pop(req.id)
        req.generated = 0
        seq = Seq(req, log_alpha(self.host.alpha_of(req)))
        seq.blocks = blocks
        seq.cap = blocks * self.kv.block_size
        seq.ctx = req.prompt_len
        seq.computed = seq.target
        seq.last = math.nan  # its first token goes to the client after its first step here
        self.queued_tokens -= req.prompt_len
        self.ready.append(seq)
        self.wake()

    def cancel_incoming(self, req: Request) -> None:
        """``req``'s KV will not come (its source failed, or the transfer did)."""
        blocks = self.reserved.pop(req.id, None)
        if blocks is not None:
            self.kv.unreserve(blocks)
        else:
            self.incoming.remove(req)
        self.queued_tokens -= req.prompt_len

    # ------------------------------------------------------------ KV held for a decode lane
    def holds(self, req_id: int) -> bool:
        return req_id in self.held

    def pin(self, req_id: int) -> None:
        """A decode lane has started pulling this KV: its lease cannot end now."""
        self.held[req_id].pinned = True

    def release(self, req_id: int) -> None:
        """The held KV of ``req_id`` is no longer needed here (pulled, or given up)."""
        seq = self.held.pop(req_id)
        self.kv.release(seq)
        self.wake()

    def _hold(self, seq: Seq, now: float) -> None:
        seq.since = now
        self.held[seq.req.id] = seq
        if not self._lease_armed:
            self._arm_lease(now + self.lease)

    def _arm_lease(self, at: float) -> None:
        self._lease_armed = True
        self.env.timeout(max(at - self.env.now, 0.0)).callbacks.append(self._lease_due)

    def _lease_due(self, _event: simpy.Event) -> None:
        """Free KV nobody pulled within the lease (vLLM's NIXL connector does the same
        after ``VLLM_NIXL_ABORT_REQUEST_TIMEOUT``); a decode lane placed later recomputes it."""
        self._lease_armed = False
        now = self.env.now
        expired = [seq for seq in self.held.values() if not seq.pinned and seq.since + self.lease <= now]
        for seq in expired:
            del self.held[seq.req.id]
            self.kv.release(seq)
        oldest = min((seq.since for seq in self.held.values() if not seq.pinned), default=None)
        if oldest is not None:
            self._arm_lease(oldest + self.lease)
        if expired:
            self.wake()
            self.host.memory_freed(self)

    # ------------------------------------------------------------ failure
    def fail(self) -> list[Request]:
        """The engine went down: every request on it (each once), its KV lost. A lane
        already down loses nothing more."""
        self.down += 1
        return self.evacuate() if self.down == 1 else []

    def recover(self) -> None:
        self.down -= 1
        if not self.down:
            self.wake()

    def evacuate(self) -> list[Request]:
        """Empty the lane (it failed): every request on it, each once, KV lost."""
        seen: dict[int, Request] = {}
        for seqs in (self.running, self.waiting, self.ready, self.held.values()):
            for seq in seqs:
                seen[seq.req.id] = seq.req
        for req in self.incoming:
            seen[req.id] = req
        reqs = list(seen.values())
        assert len(reqs) == len(self.running) + len(self.waiting) + len(self.ready) + len(self.held) + len(
            self.incoming), f"lane {self.lane_id} holds a request twice"
        # KV reserved for transfers on their way here: the hand-off owns those requests.
        for seqs in (self.running, self.waiting, self.ready):
            seqs.clear()
        self.dec.clear()
        self.incoming.clear()
        self.held.clear()
        self.reserved.clear()
        self._off_step.clear()
        self.kv.clear()
        self.queued_tokens = 0
        self.ctx_dec = 0
        self.class_counts.clear()
        self.epoch += 1
        return reqs

    # ------------------------------------------------------------ memory and batch membership
    def _reserve_for(self, seq: Seq) -> int:
        """KV slots a decoding sequence needs beyond its context before a step (never
        past its last token, so a request that fits the lane can always finish)."""
        return self.reserve if seq.left > self.reserve else seq.left

    def _start_decoding(self, seq: Seq) -> None:
        seq.decoding = True
        self.dec.append(seq)
        self.ctx_dec += seq.ctx
        self._regrow = True
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
        self.kv.release(seq)
        req = seq.req
        req.preemptions += 1
        fresh = Seq(req, seq.log_alpha)
        fresh.last = now if seq.last == IN_STEP else seq.last
        self.waiting.appendleft(fresh)
        self.queued_tokens += fresh.target

    def _grow_decoding(self, now: float) -> None:
        """Give every decoding sequence room for the deepest step, preempting the newest
        sequences when memory is short."""
        kv, running, reserve, dec = self.kv, self.running, self.reserve, self.dec
        for i in range(len(dec)):
            seq = dec[i]
            left = seq.left
            need = seq.ctx + (reserve if left > reserve else left)
            if need > seq.cap and not kv.grow(seq, need):
                # Memory is short: this one and the rest that need room, in order, each
                # preempting the newest sequence until it fits (or is itself preempted).
                for short in [s for s in dec[i:] if s.ctx + self._reserve_for(s) > s.cap]:
                    if not short.decoding:
                        continue  # preempted while making room for another
                    while not kv.grow(short, short.ctx + self._reserve_for(short)):
                        victim = running[-1]
                        self._preempt(victim, now)
                        if victim is short:
                            break
                break
        self._regrow = False

    # ------------------------------------------------------------ one engine step
    def _admit_ready(self) -> None:
        """Sequences whose KV arrived join the batch."""
        running = self.running
        while self.ready and len(running) < self.max_num_seqs:
            seq = self.ready.popleft()
            running.append(seq)
            self._start_decoding(seq)
            self._off_step.append(seq)

    def _schedule_prompts(self, budget: int, now: float) -> None:
        """Prompt chunks for this step within ``budget`` tokens: prompts part-way through a
        chunked prefill first, then waiting ones, while memory and batch slots last."""
        chunks = self._chunks
        kv, running, chunked = self.kv, self.running, self.chunked
        if len(running) > len(self.dec):
            for seq in running:
                if seq.decoding or budget <= 0:
                    continue
                left = seq.target - seq.computed
                chunk = left if left <= budget else (budget if chunked else 0)
                if chunk > 0 and kv.grow(seq, seq.computed + chunk):
                    budget -= chunk
                    self._prefill_tokens += chunk
                    self._prefill_sq += chunk * (2 * seq.computed + chunk)
                    chunks.append((seq, chunk))
        waiting = self.waiting
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            chunk = seq.target if seq.target <= budget else (budget if chunked else 0)
            if chunk <= 0 or not kv.grow(seq, chunk):
                break
            waiting.popleft()
            budget -= chunk
            self._prefill_tokens += chunk
            self._prefill_sq += chunk * chunk
            chunks.append((seq, chunk))
            running.append(seq)
            req = seq.req
            if req.prefill_start != req.prefill_start:  # NaN: first time on a lane
                req.prefill_start = now

    def _plan(self, now: float) -> int:
        """Choose this step's work: returns k, or -1 when nothing can run. Decoding
        sequences are in ``dec`` (unless the step only prefills), prompts in ``_chunks``."""
        self._chunks.clear()
        self._prefill_tokens = 0
        self._prefill_sq = 0.0
        self._prefill_only = False
        if self.ready:
            self._admit_ready()
        dec = self.dec
        if self.prefill_first and (self.waiting or len(self.running) > len(dec)):
            self._schedule_prompts(self.max_tokens, now)
            if self._chunks:
                # A prefill-only step: the decoding sequences wait it out, so their next
                # gap is no longer one step long.
                for seq in dec:
                    if seq.last == IN_STEP:
                        seq.last = self.last_end
                        self._off_step.append(seq)
                self._prefill_only = True
                self.kv.note_peak()
                return 0
        budget = self.max_tokens
        k = 0
        if dec:
            if self._regrow:
                self._grow_decoding(now)
            if dec:
                n = len(dec)
                if self.spec is not None:
                    k = self.spec.depth(self.lane_id, n, self.ctx_dec, now, self.class_counts)
                    if n * (k + 1) > budget:  # the engine cannot verify more than its budget
                        k = budget // n - 1
                budget -= n * (k + 1)
        if len(self.running) > len(dec) or self.waiting:
            self._schedule_prompts(budget, now)
        if not dec and not self._chunks:
            return -1
        self.kv.note_peak()
        return k

    def _decode(self, k: int, finished: list[Seq]) -> tuple[int, dict[str, list[int]] | None]:
        """Advance every decoding sequence by one step of depth ``k``: its accepted
        draft tokens (sampled) and one more. Returns (accepted, per-class counts)."""
        dec, reserve = self.dec, self.reserve
        accepted = added = 0
        by_class: dict[str, list[int]] | None = None
        if k:
            rnd, log = self.rng.random, math.log
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
                left -= tokens
                seq.left = left
                seq.ctx += tokens
                added += tokens
                if not left:
                    finished.append(seq)
                elif seq.ctx + reserve > seq.cap:
                    self._regrow = True
        else:
            for seq in dec:
                seq.ctx += 1
                seq.left -= 1
                if not seq.left:
                    finished.append(seq)
                elif seq.ctx + reserve > seq.cap:
                    self._regrow = True
            added = len(dec)
        self.ctx_dec += added
        return accepted, by_class

    def _record_gaps(self, n: int, dt: float, end: float) -> None:
        """Inter-token gaps of the ``n`` sequences that just decoded: one lockstep entry for
        those whose previous token came at the end of the previous step."""
        lockstep = n
        if self._off_step:
            rec = self.rec
            for seq in self._off_step:
                if seq.decoding:
                    if seq.last == seq.last:
                        rec.gap(end - seq.last)
                    else:  # received KV: this step made the client's first token
                        seq.req.first_token = end
                    seq.last = IN_STEP
                    lockstep -= 1
            self._off_step.clear()
        self.rec.lockstep(dt, lockstep)

    def _finish_chunks(self, end: float, prefilled: list[Seq], finished: list[Seq]) -> None:
        """Book this step's prompt chunks; a completed prompt yields a token."""
        for seq, chunk in self._chunks:
            seq.computed += chunk
            self.queued_tokens -= chunk
            if seq.computed < seq.target:
                continue
            req = seq.req
            req.generated += 1
            seq.left -= 1
            seq.ctx = seq.target
            first = req.prefill_end != req.prefill_end  # NaN: this prefill made the first token
            if first:
                req.prefill_end = end
                prefilled.append(seq)
            if self.role is not LaneRole.PREFILL:
                if req.first_token != req.first_token:
                    req.first_token = end
                else:  # prefilled again after a preemption: the wait is an inter-token gap
                    self.rec.gap(end - seq.last)
            seq.last = IN_STEP
            if self.role is LaneRole.PREFILL:  # the client gets a token from here only if it is the last
                self.running.remove(seq)
                if seq.left <= 0:
                    req.first_token = end
                    finished.append(seq)
                else:
                    self._hold(seq, end)
            elif seq.left <= 0:
                finished.append(seq)
            else:
                self._start_decoding(seq)

    def _observe(self, k: int, n: int, ctx: int, accepted: int, dt: float, end: float,
                 by_class: dict[str, list[int]] | None) -> None:
        """Feed the step's speculation outcome to the lane's signals and the policy."""
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
                self.rec.k_changed(end, self.lane_id, k)
        self.k = k

    def _start_step(self, now: float) -> None:
        """Account for the idle gap (if any) before a step that starts at ``now``."""
        if now > self.last_end:
            self.util0 = self.util * math.exp((self.last_end - now) / UTIL_WINDOW)
            self.busy_from = now

    def _account(self, end: float, dt: float, batch: int) -> None:
        """Book a finished step of ``batch`` sequences and ``dt`` seconds."""
        self.last_end = end
        self.busy_time += dt
        self.steps += 1
        self.batch_sum += batch
        self.step_ewma = dt if self.steps == 1 else self.step_ewma + STEP_EWMA * (dt - self.step_ewma)
        if end >= self._next_sample:
            self.sample(end)

    def sample(self, now: float) -> None:
        """Usage over time, for plots: a few thousand points per lane however long the run."""
        samples = self.samples
        samples.append((now, self.busy_time, self.kv.used / self.kv.total))
        if len(samples) > MAX_SAMPLES:
            del samples[1::2]
            self._sample_every *= 2
        self._next_sample = now + self._sample_every

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        now = env.now  # the lane's clock: ahead of env.now while it runs steps nobody can observe
        while True:
            if self.down or not (self.running or self.waiting or self.ready):
                self._wake = env.event()
                yield self._wake
                self._wake = None
                now = env.now
                continue
            k = self._plan(now)
            if k < 0:
                if self.ready:
                    # Sequences whose KV has arrived hold the memory the batch needs. If the
                    # batch is full of prompts that cannot grow, preempt the newest, as vLLM
                    # does when it cannot schedule; either way, let the arrived ones in and retry.
                    if len(self.running) >= self.max_num_seqs:
                        self._preempt(self.running[-1], now)
                    continue
                self._wake = env.event()  # blocked on memory: wait for a transfer or a failure
                yield self._wake
                self._wake = None
                now = env.now
                continue
            chunks = self._chunks
            n = 0 if self._prefill_only else len(self.dec)
            ctx = 0 if self._prefill_only else self.ctx_dec  # a prefill-only step reads no decode KV
            dt = self.perf.step_time(self._prefill_tokens, self._prefill_sq, n, ctx, k) * self.slow
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
                    continue  # emptied mid-step: the cluster already took every request
                end = env.now  # the same instant, without float drift against the clock
            self._account(end, dt, n + len(chunks))

            finished: list[Seq] = []
            accepted = 0
            by_class: dict[str, list[int]] | None = None
            if n:
                accepted, by_class = self._decode(k, finished)
                self._record_gaps(n, dt, end)
            prefilled: list[Seq] = []
            if chunks:
                self._finish_chunks(end, prefilled, finished)
            if n or self.spec is not None:
                self._observe(k, n, ctx, accepted, dt, end, by_class)

            for seq in finished:
                if seq.decoding:
                    self._stop_decoding(seq)
                if self.role is not LaneRole.PREFILL:
                    self.running.remove(seq)
                seq.req.generated = seq.req.output_len
                self.kv.release(seq)
            if prefilled or finished:
                if not deferred:
                    yield env.timeout(end - env.now)
                if self.host.step_done(self, prefilled, finished, end):
                    yield env.timeout(0)  # let it happen first
            now = end
