"""calibrate's fit: steps generated from known coefficients give those coefficients back."""
from __future__ import annotations

import time

import numpy as np
import pytest

from streamserve.calibration.fit import PARAMS, expected_accepted, fit_acceptance, fit_steps, predict

TRUE = {
    "prompt.overhead_ms": 3.0, "prompt.per_token_ms": 0.004, "prompt.weights_ms": 6.0,
    "prompt.compute_ms_per_token": 0.03, "prompt.attn_sq_ms": 2e-6, "prompt.per_ctx_ms": 1e-4,
    "decode.overhead_ms": 2.0, "decode.per_token_ms": 0.01, "decode.weights_ms": 5.0,
    "decode.compute_ms_per_token": 0.05, "decode.attn_sq_ms": 0.0, "decode.per_ctx_ms": 2e-4,
    "draft_host_ms_per_seq": 0.05, "kv_save_ms_per_token": 0.002, "kv_load_ms_per_token": 0.001,
    "handoff_ms": 0.8,
}


def synthetic_steps(n: int, seed: int = 1, noise: float = 0.0) -> dict[str, np.ndarray]:
    """Steps shaped like a profile run's: prompts alone, batched, with decodes riding
    along (chunked prefill), hand-offs; decode-only steps over batch, context and k."""
    rng = np.random.default_rng(seed)
    cols = {name: np.zeros(n) for name in ("tokens", "prompt_tokens", "prompt_sq", "decode_seqs", "decode_ctx",
                                           "spec_tokens", "k", "accepted", "kv_loaded", "kv_saved", "handoffs")}
    prompt = rng.random(n) < 0.5
    for i in range(n):
        if prompt[i]:
            m = int(rng.integers(1, 5))
            lengths = rng.integers(8, 1024, size=m)
            done = rng.integers(0, 512, size=m) * (rng.random(m) < 0.3)
            b = int(rng.integers(0, 8)) if rng.random() < 0.3 else 0
            cols["prompt_tokens"][i] = lengths.sum()
            cols["prompt_sq"][i] = float(np.sum(lengths * (2 * done + lengths)))
            cols["decode_seqs"][i] = b
            cols["decode_ctx"][i] = b * int(rng.integers(16, 1024)) if b else 0
            cols["tokens"][i] = lengths.sum() + b
            if rng.random() < 0.5:
                cols["kv_saved"][i] = lengths.sum()
            elif rng.random() < 0.5:
                cols["kv_loaded"][i] = done.sum()
                cols["handoffs"][i] = int((done > 0).sum())
        else:
            b = int(rng.integers(1, 65))
            k = int(rng.integers(0, 5))
            cols["decode_seqs"][i] = b
            cols["k"][i] = k
            cols["decode_ctx"][i] = b * int(rng.integers(16, 2048))
            cols["tokens"][i] = b * (k + 1)
            cols["spec_tokens"][i] = b * k
    cols["dataset"] = np.where(rng.random(n) < 0.5, "prose", "code")
    cols["role"] = np.array(["decode"] * n)
    from streamserve.calibration.fit import design
    cols["dt"] = predict(TRUE, design(cols)) * 1e-3 * (1 + noise * rng.standard_normal(n))
    return cols


def test_fit_recovers_known_coefficients_within_2_percent():
    fit = fit_steps(synthetic_steps(4000))
    assert "decode.attn_sq_ms" in fit.fixed  # decode-only steps carry no prompt attention
    for name in PARAMS:
        if name in fit.fixed:
            continue
        assert fit.params[name] == pytest.approx(TRUE[name], rel=0.02), name
    assert fit.median_ape < 1e-3 and fit.r2 > 0.999


def test_fit_reports_held_out_error_of_noisy_steps():
    fit = fit_steps(synthetic_steps(3000, noise=0.05))
    assert 0.02 < fit.median_ape < 0.06  # what 5% noise gives on unseen steps, not less
    assert fit.n_test == 600 and fit.n_train == 2400


def test_fit_of_20000_steps_takes_under_60_seconds():
    cols = synthetic_steps(20000, noise=0.02)
    t0 = time.perf_counter()
    fit_steps(cols)
    assert time.perf_counter() - t0 < 60


def test_acceptance_per_class():
    rng = np.random.default_rng(3)
    n = 400
    k = rng.integers(1, 5, size=n).astype(float)
    b = rng.integers(1, 9, size=n).astype(float)
    cls = np.where(np.arange(n) % 2 == 0, "code", "prose")
    alpha = np.where(cls == "code", 0.8, 0.4)
    acc = np.array([sum(min(int(np.log(1 - rng.random()) / np.log(a)), int(kk)) for _ in range(int(bb)))
                    for a, bb, kk in zip(alpha, b, k)], dtype=float)
    cols = {"k": k, "decode_seqs": b, "prompt_tokens": np.zeros(n), "dataset": cls, "accepted": acc}
    got = fit_acceptance(cols)
    assert got["code"] == pytest.approx(0.8, abs=0.05)
    assert got["prose"] == pytest.approx(0.4, abs=0.05)
    assert expected_accepted(0.5, np.array([2]))[0] == pytest.approx(0.75)


def test_repeat_spread_is_the_noise_of_identical_steps():
    from streamserve.calibration.fit import repeat_spread

    cols = synthetic_steps(3000)
    cols["tokens"] = cols["tokens"] % 7  # few shapes, many repeats
    cols["prompt_tokens"] = cols["prompt_tokens"] % 3
    cols["decode_seqs"] = cols["decode_seqs"] % 2
    cols["kv_loaded"] = np.zeros(3000)
    cols["dt"] = np.full(3000, 0.05)
    assert repeat_spread(cols) == 0.0
    cols["dt"] = 0.05 * np.exp(0.1 * np.random.default_rng(0).standard_normal(3000))
    assert 0.05 < repeat_spread(cols) < 0.09  # median |dev| of a 10% log-normal spread: ~6.7%


def test_each_role_gets_its_own_coefficients():
    """Prefill and decode engines of one deployment: two sets, each recovered, and the
    profile holds one per role (the simulator looks them up by lane role)."""
    from streamserve.calibration.fit import profile_json
    from streamserve.calibration.roles import combined, fit_by_role

    pre, dec = synthetic_steps(1500, seed=2), synthetic_steps(1500, seed=3)
    slower = {**TRUE, "prompt.overhead_ms": 9.0, "decode.overhead_ms": 7.0}
    from streamserve.calibration.fit import design
    dec["dt"] = predict(slower, design(dec)) * 1e-3
    pre["role"] = np.array(["prefill"] * 1500)
    cols = {k: np.concatenate([pre[k], dec[k]]) for k in pre}
    fits = fit_by_role(cols)
    assert set(fits) == {"prefill", "decode"}
    assert fits["prefill"].params["prompt.overhead_ms"] == pytest.approx(3.0, rel=0.02)
    assert fits["decode"].params["prompt.overhead_ms"] == pytest.approx(9.0, rel=0.02)
    total = combined(fits, cols)
    assert total.n_test == fits["prefill"].n_test + fits["decode"].n_test and total.median_ape < 1e-3
    meta = {"perf_model": "smollm2-135m", "gpu": "cpu", "lanes": [{"tp": 1}], "speculation": {"method": "ngram"},
            "model": "m", "device": "cpu"}
    roles = profile_json(fits, total, meta, 1000, "test")["entries"][0]["roles"]
    assert set(roles) == {"prefill", "decode"} and "draft" in roles["decode"] and "draft" not in roles["prefill"]
    assert roles["decode"]["prompt"]["overhead_ms"] == pytest.approx(9.0, rel=0.02)


def test_handoff_cost_is_what_a_loading_step_takes_beyond_decoding():
    """A decode engine's step that takes in h requests with KV costs a decode step of
    B + h sequences plus the hand-off cost per request: that cost is recovered."""
    from streamserve.calibration.fit import design
    from streamserve.calibration.roles import handoff_cost_ms

    rng = np.random.default_rng(5)
    n = 200
    b, h = rng.integers(0, 8, n).astype(float), rng.integers(1, 3, n).astype(float)
    ctx, loaded = b * 300.0, h * 128.0
    decoding = {"tokens": b + h, "prompt_tokens": np.zeros(n), "prompt_sq": np.zeros(n), "decode_seqs": b + h,
                "decode_ctx": ctx + loaded, "k": np.zeros(n), "kv_saved": np.zeros(n), "kv_loaded": np.zeros(n),
                "handoffs": np.zeros(n)}
    cols = {"tokens": b + h * 5, "prompt_tokens": h * 5, "prompt_sq": h * 25, "decode_seqs": b, "decode_ctx": ctx,
            "spec_tokens": np.zeros(n), "k": np.zeros(n), "kv_loaded": loaded, "kv_saved": np.zeros(n),
            "handoffs": h}
    cols["dt"] = (predict(TRUE, design(decoding)) + 40.0 * h) * 1e-3
    assert handoff_cost_ms(TRUE, cols) == pytest.approx(40.0, rel=1e-6)


def test_contention_with_another_engine_is_fitted_apart_from_the_step_model():
    cols = synthetic_steps(3000, seed=4)
    ov = (np.random.default_rng(6).random(3000) < 0.4).astype(float)
    cols["overlap"] = ov
    cols["dt"] = cols["dt"] * (1 + 0.4 * ov)
    fit = fit_steps(cols)
    assert fit.contention == pytest.approx(0.4, rel=0.02)
    assert fit.params["decode.overhead_ms"] == pytest.approx(TRUE["decode.overhead_ms"], rel=0.02)
    assert fit.median_ape < 1e-3


def test_held_out_errors_are_told_apart_for_steps_run_alone_and_overlapped():
    cols = synthetic_steps(2000, seed=5)
    ov = (np.random.default_rng(7).random(2000) < 0.3).astype(float)
    cols["overlap"] = ov
    # another engine slows a step by 40% on average, but by a different amount each time
    cols["dt"] = cols["dt"] * (1 + 0.4 * ov * np.random.default_rng(8).uniform(0, 2, 2000))
    parts = fit_steps(cols).by_overlap()
    assert parts["alone"]["steps"] + parts["overlapped"]["steps"] == 400
    assert parts["alone"]["median_abs_pct_error"] < 2.0 < parts["overlapped"]["median_abs_pct_error"]


def test_overlap_is_the_share_of_a_step_another_engine_was_busy():
    from streamserve.calibration.roles import overlap

    cols = {"t": np.array([1.0, 2.0, 1.5, 3.0]), "dt": np.array([1.0, 1.0, 1.0, 0.5]), "lane": np.array([0, 0, 1, 1])}
    assert overlap(cols) == pytest.approx([0.5, 0.5, 1.0, 0.0])


def test_fidelity_slows_each_lane_by_its_contention_at_the_other_lanes_utilisation(tmp_path):
    import json

    from streamserve.calibration.fidelity import Calibration, contended_profile
    from streamserve.metrics import LaneUsage, LogHistogram, RunResult

    step = {"overhead_ms": 10.0, "per_token_ms": 1.0, "weights_ms": 0.0, "compute_ms_per_token": 0.0,
            "attn_sq_ms": 0.0, "per_ctx_ms": 0.0}
    prof = {"format": "streamserve-profile", "version": 2, "source": "test",
            "entries": [{"model": "smollm2-135m", "gpu": "cpu", "tp": 1, "roles": {
                "prefill": {"prompt": step, "decode": step},
                "decode": {"prompt": step, "decode": step, "draft": {"method": "ngram", "host_ms_per_seq": 2.0}}}}],
            "calibration": {"link": {}, "acceptance": {}, "contention": {"prefill": 0.5, "decode": 0.2}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    cal = Calibration.load(path)
    sim = RunResult(requests=[], duration=10.0, itl=LogHistogram(), lanes=[
        LaneUsage(0, "prefill", busy_time=4.0, steps=1, mean_batch=1.0, peak_kv_usage=0.0),
        LaneUsage(1, "decode", busy_time=8.0, steps=1, mean_batch=1.0, peak_kv_usage=0.0)])
    out = json.loads(contended_profile(cal, sim, tmp_path).read_text())
    roles = out["entries"][0]["roles"]
    assert roles["prefill"]["prompt"]["overhead_ms"] == pytest.approx(10.0 * (1 + 0.5 * 0.8))
    assert roles["decode"]["decode"]["per_token_ms"] == pytest.approx(1.0 * (1 + 0.2 * 0.4))
    assert roles["decode"]["draft"]["host_ms_per_seq"] == pytest.approx(2.0 * 1.08)
    sim.lanes = sim.lanes[:1]  # one engine: nothing to slow it down
    assert contended_profile(cal, sim, tmp_path) is None
