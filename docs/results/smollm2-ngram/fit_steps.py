"""Refit a profile's decode coefficients from a live engine's own steps.

`profile_steps: true` makes each speculating engine log every step (tokens scheduled,
duration, context) to log_dir/steps-lane<N>.jsonl. This fits
``decode_ms = a + b * context + c * tokens`` to those steps by least squares and writes
a copy of the base profile with that decode entry, so SpecuStream weighs k with the
engine's real costs instead of a stand-in's.

    python fit_steps.py steps-lane1.jsonl base-profile.json > vllm-cpu-profile.json
"""
import json
import sys

import numpy as np
from scipy.optimize import least_squares

steps = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
steps = [s for s in steps if s["tokens"] <= 4 * s["batch"] * (s["k"] + 1)]  # drop steps that prefilled
X = np.array([[1.0, s["context"], s["tokens"]] for s in steps])
y = np.array([s["dt"] * 1e3 for s in steps])
# Robust (soft-L1) fit: on a disaggregated decode engine some steps also load a new
# request's KV from the connector and take seconds; they must not drag the line.
fit = least_squares(lambda p: X @ p - y, x0=np.array([20.0, 0.0, 5.0]), loss="soft_l1", f_scale=10.0,
                    bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, np.inf]))
a, b, c = fit.x
resid = y - X @ fit.x
profile = json.load(open(sys.argv[2]))
entry = profile["entries"][0]
entry["decode"] = {"a": max(float(a), 0.0), "b": max(float(b), 0.0), "c": max(float(c), 0.0)}
profile["source"] += f"; decode refitted from {len(steps)} live vLLM steps (fit_steps.py, median abs error {float(np.median(np.abs(resid))):.1f} ms)"
profile.pop("measurements", None)
json.dump(profile, sys.stdout, indent=1)
print()
