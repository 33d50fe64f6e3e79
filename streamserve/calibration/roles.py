"""The fit of a deployment with several engines: one coefficient set per engine role,
their held-out errors together, the hand-off cost a decode engine pays, and how much of
each step other engines were busy (``overlap``, the input of the contention term).

A prefill engine's prompt steps compute whole prompts and write their KV out; a decode
engine's "prompt" steps compute the few prompt tokens the connector did not bring and
read the KV in. Fitted as one set they blurred each other; the simulator and the live
policies look coefficients up by lane role.
"""
from __future__ import annotations

import numpy as np

from streamserve.calibration.fit import (FitResult, design, fit_acceptance, fit_steps, predict, r_squared,
                                         repeat_spread)

MIN_ROLE_STEPS = 20  # fewer steps of a role than this: one fit for every role


def overlap(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Per step, how many other engines were in a step during it, on average (0: it ran
    alone; 1: another engine was busy the whole time). Engines sharing a machine's cores
    slow each other down; the fit's ``contention`` term is this column's cost. Steps of one
    engine do not overlap each other, so each other engine's busy time up to a moment is a
    running sum."""
    out = np.zeros(len(cols["dt"]))
    if "t" not in cols or "lane" not in cols:
        return out
    end = cols["t"]
    start = end - cols["dt"]
    lanes = np.unique(cols["lane"])
    for other in lanes:
        theirs = cols["lane"] == other
        order = np.argsort(start[theirs])
        s, e = start[theirs][order], end[theirs][order]
        busy = np.concatenate([[0.0], np.cumsum(e - s)])

        def busy_until(x: np.ndarray) -> np.ndarray:
            i = np.searchsorted(s, x, side="right")  # that engine's steps begun by x
            last = np.maximum(i - 1, 0)
            return np.where(i > 0, busy[last] + np.clip(x - s[last], 0.0, e[last] - s[last]), 0.0)

        mine = ~theirs
        out[mine] += (busy_until(end[mine]) - busy_until(start[mine])) / cols["dt"][mine]
    return out


def fit_by_role(cols: dict[str, np.ndarray], seed: int = 0, holdout: float = 0.2) -> dict[str, FitResult]:
    """One fit per engine role (``prefill``, ``decode``, ``colocated``). On a disaggregated
    deployment a "step with prompt tokens" is two different things: on the prefill engine
    a full prompt whose KV is written out, on the decode engine the few prompt tokens the
    connector did not bring plus the KV it reads in; fitted as one set (as before) they
    blurred each other. The simulator looks coefficients up by the lane's role."""
    cols = {**cols, "overlap": overlap(cols)}
    roles = sorted(set(cols["role"].tolist()))
    if len(roles) == 1 or min(int(np.sum((cols["role"] == r) & (cols["dt"] > 0))) for r in roles) < MIN_ROLE_STEPS:
        return {"*" if len(roles) > 1 else roles[0]: fit_steps(cols, seed, holdout)}  # too few steps to split
    return {role: fit_steps({k: v[cols["role"] == role] for k, v in cols.items()}, seed, holdout)
            for role in roles}


def combined(fits: dict[str, FitResult], cols: dict[str, np.ndarray]) -> FitResult:
    """The held-out errors of every role's fit together (one set of coefficients per role
    stays in ``fits``; ``params`` here are the connector and drafter terms of the role that
    carries them: saving on prefill engines, loading and drafting on decode engines)."""
    if len(fits) == 1:
        return next(iter(fits.values()))
    parts = list(fits.values())
    y = np.concatenate([f.test_measured for f in parts])
    pred = np.concatenate([f.test_predicted for f in parts])
    ape = np.abs(pred - y) / y
    params = dict(next(iter(fits.values())).params)
    for name, role in (("kv_save_ms_per_token", "prefill"), ("kv_load_ms_per_token", "decode"),
                       ("handoff_ms", "decode"), ("draft_host_ms_per_seq", "decode")):
        if role in fits:
            params[name] = fits[role].params[name]
    if "decode" in fits and "prefill" in fits:
        params["kv_load_ms_per_token"] = 0.0
        params["handoff_ms"] = handoff_cost_ms(fits["decode"].params, {k: v[cols["role"] == "decode"]
                                                                       for k, v in cols.items()})
    return FitResult(
        params=params, fixed=[], n_train=sum(f.n_train for f in parts), n_test=len(y), r2=r_squared(y, pred),
        median_ape=float(np.median(ape)), p90_ape=float(np.percentile(ape, 90)),
        r2_train=float(np.average([f.r2_train for f in parts], weights=[f.n_train for f in parts])),
        seconds=sum(f.seconds for f in parts), acceptance=fit_acceptance(cols), noise_floor=repeat_spread(cols),
        busy_ratio=float(pred.sum() / y.sum()), test_measured=y, test_predicted=pred,
        test_prompt=np.concatenate([f.test_prompt for f in parts]),
        test_tokens=np.concatenate([f.test_tokens for f in parts]),
        test_overlap=np.concatenate([f.test_overlap for f in parts]))


def handoff_cost_ms(params: dict[str, float], cols: dict[str, np.ndarray]) -> float:
    """What a hand-off costs a decode engine fed by a prefill engine, per hand-off: the
    time of its steps that took in requests with KV beyond a decode step of the same
    sequences with the new ones already decoding (what the simulator runs once the KV has
    arrived). It is the KV read (ExampleConnector: one file per layer) plus the few prompt
    tokens the connector did not bring; the simulator has no step for it, so it becomes
    the link's latency (the request's first token comes that much later there too)."""
    sel = cols["handoffs"] > 0
    if not sel.any():
        return 0.0
    n = int(sel.sum())
    h = cols["handoffs"][sel]
    b = cols["decode_seqs"][sel] + h
    decoding = {"T": b + cols["spec_tokens"][sel], "P2": np.zeros(n), "C": cols["decode_ctx"][sel] + cols["kv_loaded"][sel],
                "draftB": b * (cols["k"][sel] > 0), "saved": np.zeros(n), "loaded": np.zeros(n),
                "handoffs": np.zeros(n), "prompt": np.zeros(n, dtype=bool)}
    return float(np.sum(cols["dt"][sel] * 1e3 - predict(params, decoding)) / np.sum(h))
