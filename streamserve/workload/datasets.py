"""The paper's four workloads by name (``alpaca``, ``gsm8k``, ``humaneval``, ``sum``) and mixes.

StreamServe is evaluated on ALPACA, GSM8K, HUMANEVAL and SUM, 80 queries each. The
datasets themselves are not shipped; each is modelled by its prompt and output length
distributions and by the speculative acceptance rate a typical draft reaches on it.
Every figure names its source; figures that are our estimates say so.

Acceptance rates, per draft method (``speculation.method``), each from its source:

* ``eagle`` (an EAGLE-style head, the default method ``DEFAULT_DRAFT_METHOD``): EAGLE-2
  (Li et al., "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees",
  EMNLP 2024, Table 1, Vicuna-7B, temperature 0) reports the average acceptance length
  tau (tokens per target forward pass, draft depth 6) on HumanEval, GSM8K, Alpaca and
  CNN/DailyMail summarisation; we use those values rounded to one decimal (HumanEval
  5.3, GSM8K 5.0, Alpaca 4.9, CNN/DM 4.1, as we read the table). EAGLE-2 drafts a tree,
  so a chain of the same depth would accept somewhat less.
* ``draft`` (a small draft model) and ``ngram`` (prompt lookup): Spec-Bench (Xia et al.,
  ACL Findings 2024; hemingkx/Spec-Bench Leaderboard.md, A100, Vicuna-7B-v1.3, greedy)
  gives the mean accepted tokens over all tasks, SpS (a 68M draft model) 2.28 and PLD
  (prompt lookup) 1.73, and per-task speedups only. We spread the overall tau over the
  tasks in proportion to (speedup - 1) (our estimate: within one method the draft cost is
  the same, so the speed-up grows with the accepted length), with Spec-Bench's
  multi-turn conversation for Alpaca, its GSM8K-based maths for GSM8K, its CNN/DM
  summarisation for SUM, and the overall figure for HumanEval (Spec-Bench has no code
  task). Prompt lookup copies from the prompt, so summarisation gains most (2.8).
  Depths: SpS 5 (Hugging Face assisted generation's starting draft length), PLD 10
  (prompt-lookup-decoding's default ``num_pred_tokens``).

The simulator's acceptance model is per token, so each tau becomes the per-token rate
alpha of a chain draft of that depth with the same mean accepted length, solving
``tau = (1 - alpha^(d+1)) / (1 - alpha)`` (Leviathan et al., ICML 2023, eq. 1).

Acceptance by position in the draft (issue 12 item 6) is not modelled, for want of a
figure to set it from. The sources disagree on whether it falls, by draft head: EAGLE
measures "n-alpha", the acceptance of a chain draft's token when n of the head's inputs
are its own estimates and the tokens before it were accepted, and EAGLE-3 (Li et al.,
2025, Sec. 4.1 and Fig. 7; MT-bench, LLaMA-Instruct 3.1 8B) reports that EAGLE's drops
significantly as n grows while EAGLE-3's stays almost unchanged; the values are drawn in
a figure only, for one dataset. EAGLE-2's premise is that a draft token's acceptance
depends on its position and its context. The figures the rates above come from, EAGLE-2
Table 1 and Spec-Bench, are mean accepted lengths at one depth, per dataset, with no
per-position breakdown, and no per-position figure for a draft model or prompt lookup
per dataset was found; the per-position rates vLLM and llama.cpp log are marginal (the
share of steps whose position i was accepted), which falls with i even at a constant
per-token rate, so they do not show a decay either. A decay per
method would be our guess, so one alpha per (dataset, method) is kept, fit to the
source's mean accepted length at the source's depth: right at that depth; if the
conditional rate does fall with position, it overstates acceptance deeper and
understates it shallower. Should a sourced decay ``d`` (the i-th draft token accepted,
given the ones before, with probability ``alpha * d**i``) be adopted, the run length
still needs one random number: ``P(G >= g) = alpha**g * d**(g(g-1)/2)``, so ``G`` is
the floor of the positive root of a quadratic in ``g``. ``workload.alpha`` overrides
any of these figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq

from streamserve.workload.synthetic import LengthDist

if TYPE_CHECKING:
    from streamserve.workload.base import Workload

EAGLE2_DEPTH = 6
EAGLE2_TAU = {"humaneval": 5.3, "gsm8k": 5.0, "alpaca": 4.9, "sum": 4.1}
DEFAULT_DRAFT_METHOD = "eagle"  # with its cost, streamserve.roofline.draft_coeffs("eagle", ...)
# Spec-Bench, A100 / Vicuna-7B: (overall mean accepted tokens, overall speedup,
# speedup on the task standing for each dataset (None: no such task), draft depth).
_SPEC_BENCH = {
    "draft": (2.28, 1.49, {"alpaca": 1.66, "gsm8k": 1.47, "sum": 1.62, "humaneval": None}, 5),
    "ngram": (1.73, 1.59, {"alpaca": 1.64, "gsm8k": 1.61, "sum": 2.43, "humaneval": None}, 10),
}


def alpha_from_tau(tau: float, depth: int = EAGLE2_DEPTH) -> float:
    """Per-token acceptance of a chain draft of ``depth`` tokens whose mean accepted length is ``tau``."""
    if not 1.0 < tau < depth + 1:
        raise ValueError(f"tau must be in (1, {depth + 1}), got {tau}")
    return float(brentq(lambda a: (1 - a ** (depth + 1)) / (1 - a) - tau, 1e-9, 1 - 1e-9))


def _spec_bench_tau(method: str, dataset: str) -> float:
    tau, speedup, by_task, _ = _SPEC_BENCH[method]
    task = by_task[dataset]
    return tau if task is None else 1.0 + (tau - 1.0) * (task - 1.0) / (speedup - 1.0)


def _acceptance(dataset: str) -> dict[str, float]:
    """Per-token acceptance of ``dataset`` under each draft method (module doc)."""
    out = {"eagle": alpha_from_tau(EAGLE2_TAU[dataset])}
    for method, (_, _, _, depth) in _SPEC_BENCH.items():
        out[method] = alpha_from_tau(_spec_bench_tau(method, dataset), depth)
    return out


class QuantileTable:
    """A joint (prompt, output) length distribution from empirical quantiles.

    The prompt length is drawn by inverse CDF from ``prompt_q``; the output length from
    the output quantiles of the prompt-decile bin the draw fell in, which keeps the
    dataset's negative correlation (long papers leave less room in the context for the
    summary) that independent marginals would lose.
    """

    def __init__(self, prompt_q: list[int], output_q: list[list[int]]) -> None:
        self.prompt_q = np.asarray(prompt_q, dtype=np.float64)
        self.output_q = np.asarray(output_q, dtype=np.float64)
        self.p_levels = np.linspace(0.0, 1.0, len(prompt_q))
        self.o_levels = np.linspace(0.0, 1.0, self.output_q.shape[1])

    @classmethod
    def fit(cls, prompt: np.ndarray, output: np.ndarray, n_prompt: int = 41, n_bins: int = 10,
            n_output: int = 21) -> "QuantileTable":
        """The table for observed lengths (how ``SUM_TABLE`` below was made)."""
        pq = np.quantile(prompt, np.linspace(0, 1, n_prompt))
        order = np.argsort(prompt, kind="stable")
        oq = [np.quantile(output[b], np.linspace(0, 1, n_output)) for b in np.array_split(order, n_bins)]
        return cls([int(round(x)) for x in pq], [[int(round(x)) for x in row] for row in oq])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        u = rng.random(n)
        v = rng.random(n)
        p = np.interp(u, self.p_levels, self.prompt_q)
        bins = np.minimum((u * len(self.output_q)).astype(np.int64), len(self.output_q) - 1)
        o = np.empty(n)
        for b in range(len(self.output_q)):
            sel = bins == b
            o[sel] = np.interp(v[sel], self.o_levels, self.output_q[b])
        return (np.maximum(np.rint(p), 1).astype(np.int64), np.maximum(np.rint(o), 1).astype(np.int64))


# SUM: arXiv summarisation with the Llama-2 tokenizer, from microsoft/vidur (MIT licence),
# data/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv
# (28,257 requests; prompt median 2730, mean 2588; output median 167, mean 291 tokens).
# Fitted once with QuantileTable.fit: prompt quantiles every 2.5%, and output
# quantiles every 5% within each prompt decile. tests/test_workload_datasets.py checks
# these figures against the file when it is present.
SUM_TABLE = QuantileTable(
    [1, 331, 749, 1019, 1242, 1418, 1564, 1687, 1802, 1896, 1986, 2067, 2150, 2229, 2308, 2379, 2453,
     2529, 2596, 2663, 2730, 2795, 2861, 2930, 2996, 3063, 3127, 3186, 3249, 3311, 3370, 3429, 3490,
     3541, 3597, 3649, 3702, 3759, 3813, 3876, 4054],
    [[10, 62, 84, 104, 120, 139, 155, 175, 196, 224, 266, 378, 868, 1670, 2142, 2482, 2775, 2987, 3272, 3582, 4056],
     [14, 55, 73, 85, 97, 109, 118, 128, 137, 148, 159, 172, 186, 202, 218, 240, 265, 299, 346, 490, 2806],
     [5, 57, 75, 86, 97, 108, 117, 127, 136, 145, 156, 167, 177, 192, 204, 222, 247, 279, 332, 429, 2125],
     [11, 58, 74, 88, 100, 110, 119, 130, 140, 152, 163, 175, 186, 199, 213, 231, 253, 282, 334, 424, 1753],
     [20, 58, 77, 91, 103, 113, 124, 134, 144, 154, 165, 176, 189, 202, 217, 233, 256, 287, 324, 394, 1558],
     [17, 60, 79, 92, 105, 115, 126, 138, 147, 156, 166, 178, 192, 204, 217, 234, 256, 280, 323, 405, 1203],
     [11, 64, 81, 94, 105, 115, 126, 137, 147, 156, 167, 179, 192, 204, 219, 238, 261, 289, 336, 422, 1022],
     [12, 64, 84, 99, 111, 123, 132, 142, 153, 164, 175, 187, 200, 212, 228, 247, 270, 295, 331, 389, 827],
     [21, 70, 88, 102, 112, 123, 132, 142, 152, 162, 172, 184, 198, 211, 226, 241, 259, 283, 314, 369, 539],
     [12, 59, 74, 88, 98, 107, 115, 122, 129, 137, 146, 153, 163, 172, 183, 193, 204, 220, 239, 271, 384]],
)


def _lognormal_with_mean(mean: float, sigma: float, lo: int, hi: int) -> LengthDist:
    """A lognormal of the given mean (the median is mean / exp(sigma^2 / 2))."""
    return LengthDist(dist="lognormal", median=mean / float(np.exp(sigma * sigma / 2)), sigma=sigma, min=lo, max=hi)


@dataclass(frozen=True)
class Dataset:
    name: str
    prompt: LengthDist | None
    output: LengthDist | None
    acceptance: dict[str, float]  # per draft method: eagle, draft, ngram
    table: QuantileTable | None = None
    source: str = ""

    @property
    def alpha(self) -> float:
        """Acceptance under the default draft method."""
        return self.acceptance[DEFAULT_DRAFT_METHOD]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.table is not None:
            return self.table.sample(n, rng)
        assert self.prompt is not None and self.output is not None
        return self.prompt.sample(n, rng), self.output.sample(n, rng)


DATASETS: dict[str, Dataset] = {
    # Alpaca: mean prompt 19.31 and mean output 58.45 tokens (Kwon et al., "Efficient Memory
    # Management for LLM Serving with PagedAttention" (vLLM), SOSP 2023, Fig. 11). The
    # widths (sigma) are our estimate of the histograms' spread.
    "alpaca": Dataset("alpaca", _lognormal_with_mean(19.31, 0.55, 2, 512),
                      _lognormal_with_mean(58.45, 0.9, 1, 1024),
                      _acceptance("alpaca"),
                      source="lengths: vLLM (SOSP'23) Fig. 11 means; acceptance: EAGLE-2 Table 1, Spec-Bench"),
    # GSM8K (Cobbe et al., 2021): grade-school word problems, zero-shot, chain-of-thought
    # answers. Estimate: questions average ~46 words (~60 Llama tokens); answers ~120
    # tokens of worked reasoning. Both are our estimates, not published figures.
    "gsm8k": Dataset("gsm8k", _lognormal_with_mean(60.0, 0.35, 16, 400),
                     _lognormal_with_mean(120.0, 0.5, 8, 1024),
                     _acceptance("gsm8k"),
                     source="lengths: our estimate; acceptance: EAGLE-2 Table 1, Spec-Bench"),
    # HumanEval (Chen et al., 2021): 164 Python function signatures with docstrings.
    # Estimate: prompts ~135 Llama tokens on average, completions ~100 tokens (a function
    # body); both are our estimates, not published figures.
    "humaneval": Dataset("humaneval", _lognormal_with_mean(135.0, 0.45, 30, 800),
                         _lognormal_with_mean(100.0, 0.6, 8, 1024),
                         _acceptance("humaneval"),
                         source="lengths: our estimate; acceptance: EAGLE-2 Table 1, Spec-Bench"),
    # SUM: arXiv summarisation lengths (microsoft/vidur, MIT), see SUM_TABLE. Acceptance:
    # EAGLE-2's summarisation task is CNN/DailyMail, the closest published figure.
    "sum": Dataset("sum", None, None, _acceptance("sum"), table=SUM_TABLE,
                   source="lengths: microsoft/vidur arXiv summarisation (Llama-2 tokens); "
                          "acceptance: EAGLE-2 Table 1 and Spec-Bench, CNN/DM"),
}
PAPER_MIX = {"alpaca": 0.25, "gsm8k": 0.25, "humaneval": 0.25, "sum": 0.25}  # 80 queries each


def window_note(workload: "Workload", model: str) -> str:
    """A warning line when some requests of ``workload`` cannot fit ``model``'s context
    window (prompt + output above it): the runtimes reject those, as vLLM answers 400."""
    from streamserve.specs import MODELS

    spec = MODELS.get(model)
    if spec is None or len(workload) == 0:
        return ""
    over = int(np.count_nonzero(workload.prompt_len + workload.output_len > spec.max_model_len))
    if not over:
        return ""
    return (f"workload {workload.name}: {over} of {len(workload)} requests ({over / len(workload):.0%}) need more "
            f"than {model}'s context window of {spec.max_model_len} tokens (prompt + output); they will be rejected")


def parse_mix(spec: str) -> dict[str, float]:
    """``mix`` (the paper's equal mix) or ``mix:alpaca=0.5,sum=0.5`` to normalised weights."""
    if spec == "mix":
        return dict(PAPER_MIX)
    body = spec.removeprefix("mix:")
    weights: dict[str, float] = {}
    for part in body.split(","):
        name, eq, w = part.partition("=")
        name = name.strip()
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r} in {spec!r} (choose from {', '.join(DATASETS)})")
        try:
            weight = float(w) if eq else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} in {spec!r} is not a number: {w!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"weight of {name!r} in {spec!r} must be a finite number >= 0")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"weights in {spec!r} sum to 0")
    return {k: v / total for k, v in weights.items() if v > 0}


def exact_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split ``n`` by ``weights`` exactly (largest remainder), as the paper's 80 x 4 split."""
    raw = {k: w * n for k, w in weights.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    left = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:left]:
        counts[k] += 1
    return counts


def sample_mix(weights: dict[str, float], n: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Lengths and dataset codes for ``n`` requests, shuffled so the datasets interleave."""
    names = tuple(weights)
    counts = exact_counts(weights, n)
    p_parts, o_parts, d_parts = [], [], []
    for code, name in enumerate(names):
        p, o = DATASETS[name].sample(counts[name], rng)
        p_parts.append(p)
        o_parts.append(o)
        d_parts.append(np.full(counts[name], code, dtype=np.int16))
    order = rng.permutation(n)
    return (np.concatenate(p_parts)[order], np.concatenate(o_parts)[order],
            np.concatenate(d_parts)[order], names)
