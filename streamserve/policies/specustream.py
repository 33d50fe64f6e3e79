"""SpecuStream: choose the speculation depth k of every decode step to maximise goodput.

The paper says only that SpecuStream "tunes speculation depth online from runtime
signals". This module makes that precise:

* **Objective.** For a batch of ``n_c`` sequences of workload class ``c`` with per-token
  acceptance ``alpha_c``, a step with depth ``k`` gives a sequence of class ``c``
  ``E_c(k) = (1 - alpha_c**(k+1)) / (1 - alpha_c)`` tokens in expectation (the verifier
  keeps the accepted prefix of the draft plus one token of its own) and takes
  ``T(k) = LanePerf.spec_step_time(batch, context, k)`` seconds. With one class, the best
  k maximises ``E(k) / T(k)``, the goodput. With several classes in one batch (k is per
  step, shared by the batch) "goodput" has two readings: the batch's tokens per second,
  ``sum_c n_c E_c(k) / T(k)`` (``objective: throughput``), or the requests' latency, whose
  mean time per output token is ``T(k) * sum_c n_c / E_c(k) / batch``; minimising that
  (``objective: latency``, the default) maximises the harmonic mean of the sequences' token
  rates. They differ when classes differ: throughput favours the k of the high-acceptance
  sequences, which the low-acceptance ones pay for in latency. Measured with four classes
  of acceptance 0.55-0.85 on two decode lanes (bursty load, 10000 requests x 4 seeds),
  ``latency`` gave the lower mean TPOT in every seed and the lower p99 E2E in 3 of 4.
* **Cheap enough to run every step.** ``T`` is convex in ``k`` (one verify token and one
  draft pass per extra depth; each verify token costs more once the step is past the
  memory/compute knee, which is where the best depth starts to fall with load), and the
  objective is unimodal in ``k``, so a climb from the previous k (usually three evaluations) finds
  the optimum; and while a lane's batch keeps its class counts the decision is reused for
  up to ``REFRESH`` steps. About 1-3 us per ``depth()`` and 3 us per ``observe()``.
* **Acceptance, online.** The runtime reports per step (and per class) how many tokens
  were drafted and accepted. Under the prefix-acceptance model the accepted count of one
  sequence is a geometric variable truncated at ``k``, so ``accepted / drafted`` is *not*
  an estimate of ``alpha`` (it is biased low, more so the larger ``k``). The estimator
  keeps exponentially-forgotten counts of accepted tokens ("successes") and of expected
  rejections ("failures": a sequence of depth ``k`` stops early with probability
  ``1 - alpha**k``), and estimates ``alpha = successes / (successes + failures)``, the
  Beta-posterior mean with a prior. Its fixed point solves the moment equation
  ``accepted per sequence = alpha (1 - alpha**k) / (1 - alpha)`` exactly, for any mix of
  ``k``. Forgetting (``decay`` per observation) lets it follow drift in ~20-60 steps.
* **Per lane and per class, with pooling.** A (lane, class) estimate shrinks towards the
  class estimate pooled over all lanes (``prior_strength`` pseudo-tokens), so a lane that
  has seen few sequences of a class starts from what the cluster knows instead of a guess.
* **k = 0 is reachable, and not a trap.** At large batches verification costs more than
  the accepted tokens bring, and the objective picks k = 0. A lane at k = 0 drafts
  nothing and so learns nothing about acceptance; every ``probe_every`` steps at k = 0 it
  runs one step at k = 1 to keep its estimate current (cost: a fraction of one step in
  ``probe_every``).
* **Inputs, and what each runtime can pass.** ``depth(lane, batch, context, now,
  classes)``: ``classes`` counts the batch's sequences by workload class
  (``Request.dataset``). ``observe(StepObservation)``: the step's drafted and accepted
  tokens, and in ``by_class`` the same per class. The estimate of a class on a lane
  falls back, in order, to the class pooled over lanes, the lane's unsplit estimate,
  the pooled unsplit estimate and ``prior_alpha``, so a runtime may pass classes to
  either call, both or neither and every estimate that is read is one that learns.
  The simulator passes both. vLLM's engine-side scheduler (``gpu/specsched.py``) can
  pass both too: a request's class travels as request metadata (the OpenAI request's
  ``vllm_xargs``, which vLLM puts in ``SamplingParams.extra_args``), ``classes`` is a
  count over its running requests, and ``by_class`` sums the per-request counts that
  vLLM hands to ``make_spec_decoding_stats`` (it names the request). Pooling forms in
  any one policy object that observes several lanes (the simulator shares one across
  its lanes); a live engine's own object sees only its lane unless the other lanes'
  observations (with their ``lane_id``) are relayed to it, and without that a
  class new to a lane starts from ``prior_alpha`` rather than from the cluster's
  estimate.
* **Hysteresis.** The previous k is kept unless another is better by ``switch_margin``
  (relative), which stops flapping between near-equal depths on a flat optimum.
"""
from __future__ import annotations

import math
from typing import ClassVar, Mapping

from mypy_extensions import mypyc_attr

from streamserve.perfmodel import LanePerf
from streamserve.policies.base import SpecPolicy, StepObservation

ALL = "*"  # the class key used when the runtime does not split a batch by dataset
ALPHA_CAP = 0.995  # keeps 1 - alpha away from 0 in the expected-tokens formula
OBJECTIVES = ("latency", "throughput")


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one sequence gains from a step of depth ``k`` at per-token acceptance ``alpha``."""
    a = min(max(alpha, 0.0), ALPHA_CAP)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def best_depth(perf: LanePerf, batch: int, context: int, alphas: Mapping[str, float],
               counts: Mapping[str, int], k_max: int, objective: str = "throughput") -> tuple[int, list[float]]:
    """Brute force over k: (best k, the objective for each k).

    ``throughput``: expected tokens per second of the batch. ``latency``: the harmonic
    mean of the sequences' token rates (the same k for a batch of one class). The
    reference the online controller is tested against; also handy in notebooks.
    """
    rates = []
    for k in range(k_max + 1):
        t = perf.spec_step_time(batch, context, k)
        if objective == "latency":
            rates.append(sum(counts.values()) / sum((n / expected_tokens(alphas[c], k) for c, n in counts.items()), 0.0) / t)
        else:
            rates.append(sum((n * expected_tokens(alphas[c], k) for c, n in counts.items()), 0.0) / t)
    best = max(range(k_max + 1), key=rates.__getitem__)
    return best, rates


class _Counts:
    """Forgotten success/failure counts of one acceptance estimate, and the estimate."""

    __slots__ = ("s", "f", "alpha")

    def __init__(self, alpha: float) -> None:
        self.s = 0.0
        self.f = 0.0
        self.alpha = alpha

    def update(self, accepted: int, seqs: float, k: int, decay: float, strength: float, prior: float) -> None:
        """Fold in one step; the estimate shrinks towards ``prior`` with weight ``strength``.

        Expected rejections: a sequence stops early with probability 1 - alpha^k."""
        self.s = self.s * decay + accepted
        a = ALPHA_CAP if ALPHA_CAP < self.alpha else self.alpha  # min(alpha, ALPHA_CAP)
        # math.pow, not **: mypyc compiles it to C's pow (the same value, unboxed)
        self.f = self.f * decay + seqs * (1.0 - math.pow(a, float(k)))
        self.alpha = (self.s + strength * prior) / (self.s + self.f + strength)


class _LaneState:
    """What SpecuStream remembers about one lane between steps."""

    __slots__ = ("batch", "classes", "age", "k", "idle", "single")

    def __init__(self) -> None:
        self.batch = -1  # batch size of the cached decision
        self.classes: dict[str, int] = {}  # class counts of the cached decision
        self.age = 0  # steps the cached decision has been reused
        self.k = -1  # the decision (-1: none yet)
        self.idle = 0  # consecutive k = 0 steps
        self.single = ALL  # the one class of the last batch, if it had one


@mypyc_attr(allow_interpreted_subclasses=True)  # a policy of your own may subclass it
class SpecuStream(SpecPolicy):
    name = "specustream"
    REFRESH = 8  # steps a decision is reused while the batch keeps its size and class mix
    # What `streamserve tune` may change, over what range (format: streamserve/tuning/space.py)
    SEARCH_SPACE: ClassVar[dict[str, str]] = {
        "prior_alpha": "float 0.3 0.95", "prior_strength": "float 1 64 log", "decay": "float 0.8 1",
        "probe_every": "int 4 128 log", "switch_margin": "float 0 0.1", "objective": "choice latency throughput"}

    def __init__(self, perf: Mapping[int, LanePerf], k_max: int, prior_alpha: float = 0.6,
                 prior_strength: float = 8.0, decay: float = 0.97, probe_every: int = 32,
                 switch_margin: float = 0.01, objective: str = "latency") -> None:
        if not perf:
            raise ValueError("perf: SpecuStream needs the lanes' performance models")
        if k_max < 0:
            raise ValueError(f"k_max: must be >= 0, got {k_max}")
        if not 0.0 < prior_alpha < 1.0:
            raise ValueError(f"prior_alpha: must be in (0, 1), got {prior_alpha}")
        if prior_strength <= 0:
            raise ValueError(f"prior_strength: must be > 0, got {prior_strength}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay: must be in (0, 1], got {decay}")
        if probe_every < 1:
            raise ValueError(f"probe_every: must be >= 1, got {probe_every}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if switch_margin < 0:
            raise ValueError(f"switch_margin: must be >= 0, got {switch_margin}")
        self.perf = dict(perf)
        self._default_perf = next(iter(self.perf.values()))
        self.k_max = k_max
        self.prior_alpha = prior_alpha
        self.prior_strength = prior_strength
        self.decay = decay
        self.probe_every = probe_every
        self.switch_margin = switch_margin
        self.objective = objective
        self._lane_counts: dict[tuple[int, str], _Counts] = {}
        self._pool_counts: dict[str, _Counts] = {}
        self._lanes: dict[int, _LaneState] = {}

    # ------------------------------------------------------------ estimates
    def pooled_alpha(self, cls: str) -> float:
        c = self._pool_counts.get(cls)
        return self.prior_alpha if c is None else c.alpha

    def _counts(self, lane_id: int, cls: str) -> _Counts | None:
        """The estimate that speaks for ``cls`` on ``lane_id``: the lane's own for the
        class, else the class's pooled over lanes, else the lane's unsplit one (a runtime
        that reports no per-class outcomes), else the pooled unsplit one."""
        counts, pools = self._lane_counts, self._pool_counts
        return counts.get((lane_id, cls)) or pools.get(cls) or counts.get((lane_id, ALL)) or pools.get(ALL)

    def alpha(self, lane_id: int, cls: str = ALL) -> float:
        """The current acceptance estimate for ``cls`` on ``lane_id``."""
        c = self._counts(lane_id, cls)
        return self.prior_alpha if c is None else c.alpha

    def observe(self, obs: StepObservation) -> None:
        k = obs.k
        if k <= 0 or obs.drafted <= 0:
            return
        st = self._lanes.get(obs.lane_id)
        if obs.by_class:
            for cls, (drafted, accepted) in obs.by_class.items():
                if drafted > 0:
                    self._fold(obs.lane_id, cls, drafted / k, accepted, k)
            if st is None or not st.classes:
                # depth() gets no class counts from this lane's runtime (or another
                # lane's steps are relayed here): it reads the unsplit estimate, so
                # that learns from the step too.
                self._fold(obs.lane_id, ALL, obs.drafted / k, obs.accepted, k)
        else:  # a batch of one class is reported without a split: it is the class depth() saw
            self._fold(obs.lane_id, ALL if st is None else st.single, obs.drafted / k, obs.accepted, k)

    def _fold(self, lane_id: int, cls: str, seqs: float, accepted: int, k: int) -> None:
        pool = self._pool_counts.get(cls)
        if pool is None:
            pool = self._pool_counts[cls] = _Counts(self.prior_alpha)
        pool.update(accepted, seqs, k, self.decay, self.prior_strength, self.prior_alpha)
        key = (lane_id, cls)
        lane = self._lane_counts.get(key)
        if lane is None:
            lane = self._lane_counts[key] = _Counts(pool.alpha)
        lane.update(accepted, seqs, k, self.decay, self.prior_strength, pool.alpha)

    # ------------------------------------------------------------ decision
    def _rate(self, terms: list[tuple[float, int]], batch: int, k: int, t: float) -> float:
        """The objective at depth ``k`` (higher is better).

        latency: the harmonic mean of the sequences' token rates (sequences over the sum of
        their seconds per token); throughput: tokens per second of the batch."""
        acc = 0.0
        if self.objective == "latency":
            for a, n in terms:
                acc += n * (1.0 - a) / (1.0 - math.pow(a, float(k + 1)))
            return batch / acc / t
        for a, n in terms:
            acc += n * (1.0 - math.pow(a, float(k + 1))) / (1.0 - a)
        return acc / t

    def depth(self, lane_id: int, batch_size: int, context_tokens: int, now: float,
              classes: dict[str, int] | None = None) -> int:
        if self.k_max == 0 or batch_size <= 0:
            return 0
        st = self._lanes.get(lane_id)
        if st is None:
            st = self._lanes[lane_id] = _LaneState()
        # The decision moves only when the batch or the estimates move; estimates move
        # slowly, so while the batch keeps its class counts it is refreshed every
        # ``REFRESH`` steps only (context grows slowly too).
        if st.batch == batch_size and st.age < self.REFRESH and (st.classes == classes if classes else not st.classes):
            st.age += 1
            best = st.k
        else:
            best = self._decide(st, lane_id, batch_size, context_tokens, classes)
        if best == 0:  # every ``probe_every`` consecutive steps at k = 0, run one at k = 1
            st.idle += 1
            if st.idle >= self.probe_every:
                st.idle = 0
                return 1
        else:
            st.idle = 0
        return best

    def _decide(self, st: _LaneState, lid: int, batch_size: int, context_tokens: int,
                classes: dict[str, int] | None) -> int:
        st.batch, st.classes, st.age = batch_size, dict(classes) if classes else {}, 1
        perf = self.perf.get(lid, self._default_perf)
        prior = self.prior_alpha
        if classes and len(classes) == 1:
            st.single = cls = next(iter(classes))
            classes = {cls: batch_size}
        else:
            st.single = ALL
        if not classes:
            classes = {ALL: batch_size}
        terms = []
        for cls, n in classes.items():
            if n > 0:
                c = self._counts(lid, cls)
                a = prior if c is None else c.alpha
                terms.append((a if a < ALPHA_CAP else ALPHA_CAP, n))
        if not terms:
            st.k = 0
            return 0
        prev = st.k
        if prev < 0 or prev > self.k_max:
            prev = min(self.k_max, 4)
        # Climb from the previous k: the objective is unimodal in k (tokens per step are
        # concave in k, step time convex: linear, turning steeper past the memory/compute
        # knee), so the local optimum is the global one, and it
        # is usually within one step of the last, so this costs ~3 evaluations, not k_max+1.
        f_prev = self._rate(terms, batch_size, prev, perf.spec_step_time(batch_size, context_tokens, prev))
        best, f_best = prev, f_prev
        while best < self.k_max:
            f = self._rate(terms, batch_size, best + 1, perf.spec_step_time(batch_size, context_tokens, best + 1))
            if f <= f_best:
                break
            best, f_best = best + 1, f
        if best == prev:
            while best > 0:
                f = self._rate(terms, batch_size, best - 1, perf.spec_step_time(batch_size, context_tokens, best - 1))
                if f <= f_best:
                    break
                best, f_best = best - 1, f
        if f_best <= f_prev * (1.0 + self.switch_margin):
            best = prev  # not worth a switch
        st.k = best
        return best
