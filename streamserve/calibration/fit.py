"""`streamserve calibrate`: fit the step model to recorded engine steps.

The form is ``streamserve.perfmodel``'s, in milliseconds, one coefficient set for steps
that carry prompt tokens and one for decode-only steps::

    dt = (overhead + per_token*T + max(weights, compute_per_token*T) + attn_sq*P2 + per_ctx*C
          + draft_host*B*[k > 0] + kv_save*saved + kv_load*loaded + handoff*handoffs)
         * (1 + contention*overlap)

(``overlap``: how much of the step other engines of the deployment were in a step,
``roles.overlap``; without an ``overlap`` column, or with too few overlapping steps,
``contention`` is 0.) With enough of both, the step model is fitted to the steps that ran
alone and ``contention`` then to the others; otherwise the two are fitted jointly.

The last three terms are the connector's I/O inside the steps (a CPU connector writes
and reads KV synchronously); they become the simulator's KV link (``latency_ms``: the
per-hand-off cost, ``bandwidth_gbps``: the per-token cost over the model's KV bytes).
Residuals are in milliseconds, squared: the fit predicts a step's *mean* time. That is
what a simulator needs (its busy time, hence queueing and throughput, is a sum of step
times), and it matters where steps are slowed at random by other work on the machine:
on the shared 2-core machine of docs/results/fidelity/ a fit of relative errors with a
robust loss matched the typical (median) step and left the mean 2.9 times larger than
predicted. Every coefficient is bounded below by 0. A coefficient whose column never
varies in the data (e.g. ``attn_sq`` of decode-only steps) is fixed at 0 and reported
as such. One fifth of the steps, drawn at random, is held out and never seen by the
fit: its errors are the ones reported.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares, minimize_scalar

from streamserve.roofline import STEP_FIELDS, StepCoeffs

EXTRA_FIELDS = ("draft_host_ms_per_seq", "kv_save_ms_per_token", "kv_load_ms_per_token", "handoff_ms")
PARAMS = tuple(f"prompt.{f}" for f in STEP_FIELDS) + tuple(f"decode.{f}" for f in STEP_FIELDS) + EXTRA_FIELDS
MIN_ACCEPTANCE_STEPS = 5
MIN_CONTENTION_STEPS = 10  # steps that overlapped another engine's, needed to fit the contention term
ALONE = 0.05  # a step with less of another engine's step time over it than this share ran alone
MIN_ALONE_STEPS = 20  # steps that ran alone, needed to fit the step model on them only


@dataclass
class FitResult:
    params: dict[str, float]  # every coefficient, milliseconds
    fixed: list[str]  # coefficients the data cannot determine (held at 0)
    n_train: int
    n_test: int
    r2: float  # held-out
    median_ape: float  # held-out, fraction
    p90_ape: float
    r2_train: float
    seconds: float
    acceptance: dict[str, float] = field(default_factory=dict)  # per prompt class
    noise_floor: float = math.nan  # repeat_spread(): what no step model can explain
    contention: float = 0.0  # steps take (1 + contention * overlap) times the step model's time
    busy_ratio: float = math.nan  # held out: predicted / measured total step time
    test_measured: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_predicted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    test_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_overlap: np.ndarray = field(default_factory=lambda: np.zeros(0))  # roles.overlap of each held-out step

    def by_overlap(self) -> dict[str, dict[str, float]]:
        """Held-out errors of the steps that ran alone (the step model) and of those another
        engine stepped during (the step model times the contention term): steps and median
        and p90 absolute % error of each; a part without steps is left out."""
        out: dict[str, dict[str, float]] = {}
        ov = self.test_overlap
        for name, sel in (("alone", ov < ALONE), ("overlapped", ov >= ALONE)):
            if sel.any():
                ape = 100 * np.abs(self.test_predicted[sel] - self.test_measured[sel]) / self.test_measured[sel]
                out[name] = {"steps": int(sel.sum()), "median_abs_pct_error": float(np.median(ape)),
                             "p90_abs_pct_error": float(np.percentile(ape, 90))}
        return out

    def coeffs(self, which: str) -> StepCoeffs:
        return StepCoeffs(**{f: self.params[f"{which}.{f}"] for f in STEP_FIELDS})


def design(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's inputs from the step columns (``records.columns``)."""
    return {"T": cols["tokens"], "P2": cols["prompt_sq"], "C": cols["decode_ctx"],
            "draftB": cols["decode_seqs"] * (cols["k"] > 0), "saved": cols["kv_saved"],
            "loaded": cols["kv_loaded"], "handoffs": cols["handoffs"], "prompt": cols["prompt_tokens"] > 0}


def predict(p: dict[str, float] | np.ndarray, x: dict[str, np.ndarray]) -> np.ndarray:
    """Step times (ms) of the steps ``x`` under coefficients ``p`` (named, or in ``PARAMS`` order)."""
    v = np.asarray([p[name] for name in PARAMS]) if isinstance(p, dict) else p
    n = len(STEP_FIELDS)
    sel = x["prompt"]
    o, a, w, c, s, ctx = (np.where(sel, v[i], v[n + i]) for i in range(n))
    t = x["T"]
    return (o + a * t + np.maximum(w, c * t) + s * x["P2"] + ctx * x["C"]
            + v[2 * n] * x["draftB"] + v[2 * n + 1] * x["saved"] + v[2 * n + 2] * x["loaded"]
            + v[2 * n + 3] * x["handoffs"])


def jacobian(v: np.ndarray, x: dict[str, np.ndarray]) -> np.ndarray:
    """d predict / d coefficient, one row per step, in ``PARAMS`` order (the model is
    linear in every coefficient but the knee's two, which count on their side only)."""
    n = len(STEP_FIELDS)
    sel = x["prompt"]
    t = x["T"]
    out = np.zeros((len(t), len(PARAMS)))
    for off, rows in ((0, sel), (n, ~sel)):
        compute_bound = v[off + 3] * t > v[off + 2]
        m = rows.astype(np.float64)
        out[:, off] = m
        out[:, off + 1] = m * t
        out[:, off + 2] = m * ~compute_bound
        out[:, off + 3] = m * compute_bound * t
        out[:, off + 4] = m * x["P2"]
        out[:, off + 5] = m * x["C"]
    for j, col in enumerate(("draftB", "saved", "loaded", "handoffs")):
        out[:, 2 * n + j] = x[col]
    return out


def _undetermined(x: dict[str, np.ndarray]) -> list[str]:
    """Coefficients whose input column is zero on every step of their set."""
    fixed = []
    for which, sel in (("prompt", x["prompt"]), ("decode", ~x["prompt"])):
        if not sel.any():
            fixed += [f"{which}.{f}" for f in STEP_FIELDS]
            continue
        if not (x["P2"][sel] > 0).any():
            fixed.append(f"{which}.attn_sq_ms")
        if not (x["C"][sel] > 0).any():
            fixed.append(f"{which}.per_ctx_ms")
    for name, col in (("draft_host_ms_per_seq", "draftB"), ("kv_save_ms_per_token", "saved"),
                      ("kv_load_ms_per_token", "loaded"), ("handoff_ms", "handoffs")):
        if not (x[col] > 0).any():
            fixed.append(name)
    return fixed


def _start(x: dict[str, np.ndarray], y: np.ndarray, free: np.ndarray) -> list[np.ndarray]:
    """Starting points: a straight-line fit per set (no knee), split two ways between
    the memory-bound and compute-bound sides."""
    n = len(STEP_FIELDS)
    base = np.zeros(len(PARAMS))
    for off, sel in ((0, x["prompt"]), (n, ~x["prompt"])):
        if sel.sum() < 2:
            continue
        t = x["T"][sel]
        slope = max(float(np.polyfit(t, y[sel], 1)[0]), 1e-6) if np.ptp(t) > 0 else 1e-3
        floor = max(float(np.percentile(y[sel] - slope * t, 10)), 1e-3)
        base[off:off + n] = [floor / 2, slope / 2, floor / 2, slope / 2, 1e-7, 1e-5]
    base[2 * n:] = [1e-3, 1e-4, 1e-4, 1e-2]
    starts = []
    for split in (0.5, 0.1, 0.9):
        s = base.copy()
        for off in (0, n):
            over_w = s[off] + s[off + 2]
            lin_c = s[off + 1] + s[off + 3]
            s[off], s[off + 2] = over_w * (1 - split), over_w * split
            s[off + 1], s[off + 3] = lin_c * (1 - split), lin_c * split
        starts.append(np.where(free, np.maximum(s, 1e-9), 0.0))
    return starts


def _fit_shape(x_tr: dict[str, np.ndarray], y_tr: np.ndarray, free: np.ndarray,
               ov: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least squares (ms, every term bounded below by 0) of the step model's coefficients
    and, given each step's ``overlap`` with other engines, of the contention term:
    dt = step model x (1 + contention x overlap)."""
    with_c = ov is not None
    m = ov if ov is not None else np.zeros(len(y_tr))

    def full(theta: np.ndarray) -> np.ndarray:
        v = np.zeros(len(PARAMS))
        v[free] = theta[:int(free.sum())]
        return v

    def gamma(theta: np.ndarray) -> float:
        return float(theta[-1]) if with_c else 0.0

    scale = float(np.mean(y_tr))

    def residual(theta: np.ndarray) -> np.ndarray:
        return (predict(full(theta), x_tr) * (1.0 + gamma(theta) * m) - y_tr) / scale

    def jac(theta: np.ndarray) -> np.ndarray:
        g = gamma(theta)
        j = jacobian(full(theta), x_tr)[:, free] * (1.0 + g * m)[:, None]
        if with_c:
            j = np.hstack([j, (predict(full(theta), x_tr) * m)[:, None]])
        return j / scale

    best = None
    for start in _start(x_tr, y_tr, free):
        s0 = np.concatenate([start[free], [0.1]]) if with_c else start[free]
        sol = least_squares(residual, s0, jac=jac, bounds=(0.0, np.inf), loss="linear",
                            x_scale="jac", method="trf", tr_solver="lsmr", max_nfev=500)
        if best is None or sol.cost < best.cost:
            best = sol
    assert best is not None
    return full(best.x), gamma(best.x)


def _contention(alone_ms: np.ndarray, overlap: np.ndarray, measured_ms: np.ndarray) -> float:
    """Least squares gamma of measured = alone x (1 + gamma x overlap), at least 0: how
    much slower, on average, a step runs per unit of another engine's concurrent steps."""
    a = alone_ms * overlap
    denom = float(np.sum(a * a))
    return max(0.0, float(np.sum(a * (measured_ms - alone_ms))) / denom) if denom > 0 else 0.0


def fit_steps(cols: dict[str, np.ndarray], seed: int = 0, holdout: float = 0.2) -> FitResult:
    """Fit the coefficients on 80% of the steps and report errors on the other 20%."""
    t0 = time.perf_counter()
    y_all = cols["dt"] * 1e3
    keep = y_all > 0
    n = int(keep.sum())
    if n < 10:
        raise ValueError(f"only {n} usable steps; a fit needs at least 10 (profile a larger grid)")
    idx = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    rng.shuffle(idx)
    n_test = max(1, int(round(n * holdout)))
    test, train = np.sort(idx[:n_test]), np.sort(idx[n_test:])
    x_all = design(cols)
    x_tr = {k: v[train] for k, v in x_all.items()}
    y_tr = y_all[train]
    ov_all = cols.get("overlap")
    ov_tr = ov_all[train] if ov_all is not None else np.zeros(len(train))
    alone = ov_tr < ALONE
    overlapped = int((~alone).sum()) >= MIN_CONTENTION_STEPS
    # With enough of both, the step model from the steps that ran alone and the contention
    # term from the others on top: fitted jointly, the overlapped steps' wide spread (another
    # engine slows each by a different amount) leaked into the step model's coefficients.
    two_stage = overlapped and int(alone.sum()) >= MIN_ALONE_STEPS
    x_fit = {k: v[alone] for k, v in x_tr.items()} if two_stage else x_tr
    fixed = _undetermined(x_fit)
    free = np.array([name not in fixed for name in PARAMS])
    if two_stage:
        v, _ = _fit_shape(x_fit, y_tr[alone], free)
        gamma = _contention(predict(v, {k: val[~alone] for k, val in x_tr.items()}), ov_tr[~alone], y_tr[~alone])
    else:
        v, gamma = _fit_shape(x_tr, y_tr, free, ov_tr if overlapped else None)
    nf = len(STEP_FIELDS)
    for which, off, rows in (("prompt", 0, x_tr["prompt"]), ("decode", nf, ~x_tr["prompt"])):
        if rows.any() and not (v[off + 3] * x_tr["T"][rows] > v[off + 2]).any():
            # No step of this set was compute-bound: only overhead + weights is determined, and
            # compute_per_token only as "below weights / largest T". Keep the sum as overhead.
            v[off] += v[off + 2]
            v[off + 2] = v[off + 3] = 0.0
            fixed += [f"{which}.weights_ms", f"{which}.compute_ms_per_token"]
    params = {name: float(val) for name, val in zip(PARAMS, v)}
    x_te = {k: val[test] for k, val in x_all.items()}
    y_te = y_all[test]
    ov_te = ov_all[test] if ov_all is not None else np.zeros(len(test))
    pred_te = predict(v, x_te) * (1.0 + gamma * ov_te)
    ape = np.abs(pred_te - y_te) / y_te
    return FitResult(
        params=params, fixed=fixed, n_train=len(train), n_test=len(test),
        r2=r_squared(y_te, pred_te), median_ape=float(np.median(ape)), p90_ape=float(np.percentile(ape, 90)),
        r2_train=r_squared(y_tr, predict(v, x_tr) * (1.0 + gamma * ov_tr)), seconds=time.perf_counter() - t0, contention=gamma,
        busy_ratio=float(pred_te.sum() / y_te.sum()),
        acceptance=fit_acceptance(cols), noise_floor=repeat_spread(cols), test_measured=y_te, test_predicted=pred_te,
        test_prompt=x_te["prompt"], test_tokens=x_te["T"], test_overlap=ov_te)


def repeat_spread(cols: dict[str, np.ndarray]) -> float:
    """Median |dt - median dt of its group| / dt over steps whose shape repeats (same
    role, tokens, prompt tokens, decoding sequences, hand-off or not; groups of >= 3):
    how much steps that did the same work differ, i.e. the error floor no step model can
    go below on this machine (CPU contention, other processes)."""
    keys = np.stack([cols["tokens"], cols["prompt_tokens"], cols["decode_seqs"], cols["kv_loaded"] > 0,
                     cols["role"] == "decode"], axis=1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.ravel()
    dev = []
    for g in np.unique(group):
        dt = cols["dt"][group == g]
        if len(dt) >= 3:
            dev.append(np.abs(dt - np.median(dt)) / dt)
    return float(np.median(np.concatenate(dev))) if dev else math.nan


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else math.nan


def expected_accepted(alpha: float, k: np.ndarray) -> np.ndarray:
    """Mean accepted drafts of one sequence at depth k when each draft token is accepted
    with probability ``alpha`` until the first rejection (the simulator's model)."""
    if alpha >= 1.0:
        return k.astype(np.float64)
    return alpha * (1.0 - alpha ** k) / (1.0 - alpha)


def fit_acceptance(cols: dict[str, np.ndarray]) -> dict[str, float]:
    """Per prompt class, the acceptance rate alpha that best explains the accepted
    tokens of the decode steps that verified drafts (a sequence the drafter found no
    draft for counts as accepting none: alpha is what the simulator should use)."""
    out: dict[str, float] = {}
    spec = (cols["k"] > 0) & (cols["decode_seqs"] > 0) & (cols["prompt_tokens"] == 0)
    for name in sorted(set(cols["dataset"][spec].tolist())):
        sel = spec & (cols["dataset"] == name)
        if sel.sum() < MIN_ACCEPTANCE_STEPS:
            continue
        k, b, acc = cols["k"][sel], cols["decode_seqs"][sel], cols["accepted"][sel]

        def loss(alpha: float) -> float:
            return float(np.sum((acc - b * expected_accepted(alpha, k)) ** 2))

        out[name] = float(minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded").x)
    return out


def link_from_fit(params: dict[str, float], kv_bytes_per_token_spec: int) -> dict[str, float]:
    """The simulator's KV link (``LinkConfig``) equivalent to the fitted connector I/O."""
    per_token_ms = params["kv_save_ms_per_token"] + params["kv_load_ms_per_token"]
    bw = kv_bytes_per_token_spec / (per_token_ms * 1e-3) / 1e9 if per_token_ms > 0 else 1e6
    return {"bandwidth_gbps": bw, "latency_ms": params["handoff_ms"]}


def profile_json(fits: dict[str, FitResult], total: FitResult, meta: dict[str, Any], kv_bytes_spec: int,
                 source: str, overhead_ms: float | None = None) -> dict[str, Any]:
    """A version-2 profile (``streamserve/profiles/README.md``) holding one coefficient set
    per role (``*`` when the deployment has one role; ``roles.fit_by_role``), with the link,
    acceptance and fit quality of ``total`` (``roles.combined``) in a ``calibration``
    section the simulator's ``fidelity`` run reads."""
    method = meta["speculation"].get("method", "none")
    roles: dict[str, Any] = {}
    for role, fit in fits.items():
        body: dict[str, Any] = {"prompt": fit.coeffs("prompt").as_dict(), "decode": fit.coeffs("decode").as_dict()}
        if method == "ngram" and role != "prefill":
            body["draft"] = {"method": "ngram", "host_ms_per_seq": fit.params["draft_host_ms_per_seq"]}
        roles["*" if len(fits) == 1 else role] = body
    tps = sorted({int(lane["tp"]) for lane in meta["lanes"]})
    return {
        "format": "streamserve-profile", "version": 2, "source": source,
        "entries": [{"model": meta["perf_model"], "gpu": meta["gpu"], "tp": tp, "roles": roles} for tp in tps],
        "calibration": {
            "model_folder": meta["model"], "device": meta["device"], "dtype": meta.get("dtype"),
            "link": link_from_fit(total.params, kv_bytes_spec), "acceptance": total.acceptance,
            "request_overhead_ms": overhead_ms,
            "connector_io": {k: total.params[k] for k in EXTRA_FIELDS[1:]},
            "fixed_at_zero": {role: fit.fixed for role, fit in fits.items()},
            # a step takes (1 + contention * overlap) times its time alone, overlap = other engines
            # in a step meanwhile (roles.overlap); the simulator's lanes do not slow each other, so
            # fidelity applies it to each lane at the other lanes' simulated utilisation
            "contention": {("*" if len(fits) == 1 else role): fit.contention for role, fit in fits.items()},
            "objective": "least squares on step time (ms), one fit per engine role: the mean step time",
            "held_out": {"steps": total.n_test, "r2": total.r2, "median_abs_pct_error": 100 * total.median_ape,
                         "p90_abs_pct_error": 100 * total.p90_ape, "by_overlap": total.by_overlap(),
                         "by_role": {role: {"steps": f.n_test, "median_abs_pct_error": 100 * f.median_ape,
                                            "p90_abs_pct_error": 100 * f.p90_ape} for role, f in fits.items()}},
            "repeat_spread_pct": 100 * total.noise_floor, "held_out_busy_ratio": total.busy_ratio,
            "train_steps": total.n_train,
        },
    }


def request_overhead_ms(requests: list[dict[str, Any]], steps_by_cell: dict[str, list[Any]]) -> float | None:
    """What a client waits for its first token beyond the engine steps that make it,
    measured on the grid's single-prompt cells (one request alone in the deployment):
    median of client TTFT minus the busy time of the steps that carried its prompt (the
    prefill, and on a disaggregated deployment the decode engine's first step, which
    loads the KV and makes the token the client sees first). What is left is outside the
    engines' steps: the front end, HTTP and tokenization. ``fidelity`` delays each
    simulated request by it."""
    gaps = []
    for row in requests:
        cell = str(row.get("cell", ""))
        if not cell.startswith("prefill-") or cell not in steps_by_cell:
            continue
        prompt_steps = [s for s in steps_by_cell[cell] if s.prompt_tokens > 0]
        ttft = float(row.get("ttft", math.nan))
        if prompt_steps and ttft == ttft:
            gaps.append(1e3 * (ttft - sum(s.dt for s in prompt_steps)))
    return float(np.median(gaps)) if gaps else None
