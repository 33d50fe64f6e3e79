"""Convert DistServe's fitted latency coefficients into a streamserve profile (version 2).

    python scripts/profile_from_distserve.py /work/shared/data/profiles \
        > streamserve/profiles/default-a100.json

reads DistServe's two fits from that folder (LLMServe/DistServe, Apache-2.0,
simdistserve/estimators/profile_data): ``distserve-a100-80g.distserve.json``, iterations
of DistServe's own disaggregated engine, becomes the sets of prefill and decode lanes;
``distserve-a100-80g.vllm.json``, iterations of vLLM, becomes the sets of colocated
lanes (DistServe's vLLM baseline). This is how the shipped default profile is made.

DistServe's time model (simdistserve/estimators/time_estimator.py and
simdistserve/base/worker.py), in ms, per step of an instance's first pipeline stage:

* prefill: ``a + b * sum(l) + c * sum(l^2) + 1`` (``pp_const``) ``+ 2 + 1e-4 * sum(l)``
  (``add_ray_overhead`` over the tokens in the step);
* decode, ``B`` sequences of ``ctx_i`` tokens in KV: ``a + b * sum(ctx_i + 1) + c * B + 2 +
  1e-4 * sum(ctx_i)``, with the large-batch set (a, b, c) from ``B >= 95``.

Written in the one step formula (``streamserve/perfmodel.py``), exactly:

* prompt set: ``overhead = a + 3``, ``per_token = b + 1e-4``, ``attn_sq = c``
  (``sum(l^2)`` is ``P2`` for whole prompts), ``per_ctx`` = the decode set's (used only
  when a step mixes prompts and decodes, which DistServe's engines never do);
* decode set: ``per_ctx = b + 1e-4`` (KV read), ``per_token = b + c`` (the ``+1`` token
  and the per-sequence cost), ``overhead + weights = a + 2``. The fit was made at ``k =
  0`` and says nothing about a step past the memory/compute knee, so the converter adds
  the knee: ``weights`` = the roofline's weight-read time of the model on that GPU
  (``streamserve/roofline.py``, capped at ``a + 2``) and ``compute_per_token`` = the prefill
  fit's ``b`` at the same TP (the measured compute-bound rate per token). Below the knee
  (``compute_per_token * T < weights``, e.g. up to ~200 decode tokens on one A100)
  the step equals DistServe's small-batch fit; the large-batch fit is not carried over
  (docs/results/roofline_vs_distserve.md compares it with the knee).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamserve.roofline import StepCoeffs, step_coeffs  # noqa: E402
from streamserve.specs import GPUS, MODELS  # noqa: E402

# Models DistServe profiled, by their names in its files.
NAMES = {"facebook/opt-13b": "opt-13b"}
RAY_MS, RAY_PER_TOKEN_MS, PREFILL_PP_MS = 2.0, 1e-4, 1.0


def prompt_set(fit: dict, decode: StepCoeffs) -> StepCoeffs:
    a, b, c = fit["prefill"]
    return StepCoeffs(overhead_ms=a + PREFILL_PP_MS + RAY_MS, per_token_ms=b + RAY_PER_TOKEN_MS, attn_sq_ms=c,
                      per_ctx_ms=decode.per_ctx_ms)


def decode_set(fit: dict, weights_ms: float) -> StepCoeffs:
    a, b, c = fit["decoding_smallbs"]
    pa, pb, pc = fit["prefill"]
    fixed = a + RAY_MS
    w = min(weights_ms, fixed)
    return StepCoeffs(overhead_ms=fixed - w, per_token_ms=b + c, weights_ms=w, compute_ms_per_token=pb,
                      attn_sq_ms=pc, per_ctx_ms=b + RAY_PER_TOKEN_MS)


def convert(disagg: dict, colocated: dict, gpu: str, source: str) -> dict:
    entries = []
    g = GPUS[gpu]
    for ds_name, name in NAMES.items():
        m = MODELS[name]
        for tp in sorted(disagg[ds_name], key=int):
            w = step_coeffs(m, g, int(tp)).weights_ms
            roles: dict[str, dict[str, dict[str, float]]] = {}
            d = decode_set(disagg[ds_name][tp], w)
            p = prompt_set(disagg[ds_name][tp], d)
            roles["prefill"] = {"prompt": p.as_dict(), "decode": d.as_dict()}
            roles["decode"] = {"prompt": p.as_dict(), "decode": d.as_dict()}
            if tp in colocated.get(ds_name, {}):
                cd = decode_set(colocated[ds_name][tp], w)
                roles["colocated"] = {"prompt": prompt_set(colocated[ds_name][tp], cd).as_dict(), "decode": cd.as_dict()}
            entries.append({"model": name, "gpu": gpu, "tp": int(tp), "roles": roles})
    return {"format": "streamserve-profile", "version": 2, "source": source,
            "units": "milliseconds; step = overhead + per_token*T + max(weights, compute_per_token*T) "
                     "+ attn_sq*P2 + per_ctx*C (streamserve/profiles/README.md)",
            "entries": entries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="folder with distserve-a100-80g.distserve.json and distserve-a100-80g.vllm.json")
    ap.add_argument("--gpu", default="A100-80GB", choices=sorted(GPUS))
    args = ap.parse_args()
    folder = Path(args.folder)
    disagg = json.loads((folder / "distserve-a100-80g.distserve.json").read_text())
    colocated = json.loads((folder / "distserve-a100-80g.vllm.json").read_text())
    source = ("Coefficients fitted by DistServe (LLMServe/DistServe, Apache-2.0, simdistserve/estimators/"
              "profile_data) to iterations of facebook/opt-13b on A100-80GB: its disaggregated engine's fits "
              "(distserve-a100-80g.distserve.json) for prefill and decode lanes, vLLM's "
              "(distserve-a100-80g.vllm.json) for colocated lanes, with DistServe's per-step overheads "
              "(2 ms + 1e-4 ms per token, +1 ms per prefill); decode knee from the roofline weight read and "
              "the prefill fit's per-token rate. Converted by scripts/profile_from_distserve.py.")
    json.dump(convert(disagg, colocated, args.gpu, source), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
