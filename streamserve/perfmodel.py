"""Step-time and KV-transfer model of one lane: one formula for every step vLLM runs.

A step computes what it schedules, so it costs (milliseconds, all terms >= 0)::

    step = overhead + per_token * T + max(weights, compute_per_token * T)
           + attn_sq * P2 + per_ctx * C + draft(B, C, k)

* ``T``: tokens scheduled: prompt/chunk tokens, plus ``k + 1`` per decoding sequence
  (one plain decode token, or the k draft tokens it verifies and one of its own);
* ``P2 = sum(l * (2 * done + l))`` over the prompt chunks in the step (attention work of
  a chunk of ``l`` tokens after ``done`` already in KV; ``l**2`` for a whole prompt);
* ``C``: KV tokens held by the decoding sequences (read once by attention);
* ``B``: decoding sequences; ``k``: speculation depth.

``max(weights, compute_per_token * T)`` is the roofline knee: a small step streams the
weights from memory once and the tokens ride along for free; past the knee the step is
compute-bound and every token costs its FLOPs. Verifying ``k`` draft tokens costs exactly
what ``k`` more scheduled tokens cost, on whichever side of the knee the step falls.
``per_token`` is the part of a token's cost that does not overlap the weight stream
(host-side work, TP all-reduces). A lane has two coefficient sets: one for steps that
carry prompt tokens, one for decode-only steps (the same numbers for a roofline; a
fitted profile may differ, as DistServe's fits do).

The draft's own cost depends on the method (``draft(B, C, k)``, zero when ``k = 0``)::

    draft = host_per_seq * B + k * (pass_overhead + max(pass_weights, pass_per_token * B)
                                    + pass_per_ctx * C)

n-gram lookup runs on the host (``host_per_seq``, no passes); a draft model runs ``k``
passes of its own step (the same roofline, from its spec); an EAGLE-style head runs ``k``
passes of one decoder layer plus the LM head.

Coefficients come from a fitted profile (``Profile``, format in
``streamserve/profiles/README.md``) when it has an entry for the (model, GPU, TP), else
from the roofline over a model spec and a GPU spec (``streamserve/roofline.py``).
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from streamserve.roofline import NO_DRAFT, STEP_FIELDS, DraftCoeffs, StepCoeffs, draft_coeffs, step_coeffs
from streamserve.specs import GpuSpec, ModelSpec, SpecError, gpu_spec, model_spec

PROFILE_FORMAT = "streamserve-profile"
PROFILE_VERSION = 2
DEFAULT_PROFILE = "default-a100.json"
ROLES = ("prefill", "decode", "colocated")


class ProfileError(ValueError):
    """A profile file is missing, malformed, or has no entry for what was asked."""




class LanePerf:
    """Timing of one lane: a model on ``tp`` GPUs of one type, in one role. Seconds.

    The coefficients are turned into seconds once, here, so ``step_time`` (called once
    per simulated step) is a handful of multiply-adds."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp: int, prompt: StepCoeffs, decode: StepCoeffs,
                 draft: DraftCoeffs = NO_DRAFT, source: str = "") -> None:
        self.model = model.name
        self.gpu = gpu.name
        self.tp = tp
        self.spec = model
        self.gpu_spec = gpu
        self.prompt = prompt
        self.decode = decode
        self.draft = draft
        self.source = source
        self.max_model_len = model.max_model_len
        self.gpu_memory_bytes = gpu.memory_gb * 1e9
        s = 1e-3
        self._p_over, self._p_lin, self._p_w = prompt.overhead_ms * s, prompt.per_token_ms * s, prompt.weights_ms * s
        self._p_comp, self._p_sq, self._p_ctx = (prompt.compute_ms_per_token * s, prompt.attn_sq_ms * s,
                                                 prompt.per_ctx_ms * s)
        self._d_over, self._d_lin, self._d_w = decode.overhead_ms * s, decode.per_token_ms * s, decode.weights_ms * s
        self._d_comp, self._d_sq, self._d_ctx = (decode.compute_ms_per_token * s, decode.attn_sq_ms * s,
                                                 decode.per_ctx_ms * s)
        self._x_seq, self._x_over, self._x_w = (draft.host_ms_per_seq * s, draft.pass_overhead_ms * s,
                                                draft.pass_weights_ms * s)
        self._x_tok, self._x_ctx = draft.pass_ms_per_token * s, draft.pass_per_ctx_ms * s

    # -- step times ---------------------------------------------------------
    def step_time(self, prefill_tokens: int, prefill_sq: float, batch: int, context: int, k: int = 0) -> float:
        """One engine iteration: ``prefill_tokens`` prompt/chunk tokens of attention work
        ``prefill_sq``, and ``batch`` decoding sequences holding ``context`` KV tokens in
        all, each fed ``k + 1`` tokens, drafting included. Seconds."""
        tokens = prefill_tokens + batch * (k + 1)
        if tokens <= 0:
            return 0.0
        if prefill_tokens > 0:
            t = self._p_over + self._p_lin * tokens + self._p_sq * prefill_sq + self._p_ctx * context
            w = self._p_w
            c = self._p_comp * tokens
        else:
            t = self._d_over + self._d_lin * tokens + self._d_ctx * context
            w = self._d_w
            c = self._d_comp * tokens
        t += c if c > w else w
        if k > 0 and batch > 0:
            pw = self._x_w
            pc = self._x_tok * batch
            t += self._x_seq * batch + k * (self._x_over + (pc if pc > pw else pw) + self._x_ctx * context)
        return t

    def prefill_time(self, tokens: int, sum_sq: float) -> float:
        """A prompt-only step of ``tokens`` tokens with attention work ``sum_sq``."""
        return self.step_time(tokens, sum_sq, 0, 0, 0)

    def decode_time(self, batch: int, context: int, k: int = 0) -> float:
        """The verify/decode pass of a decode-only step, without the draft's cost."""
        if batch <= 0:
            return 0.0
        return self.step_time(0, 0.0, batch, context, k) - self.draft_time(batch, context, k)

    def draft_time(self, batch: int, context: int, k: int) -> float:
        """The draft's cost of a step of depth ``k`` (0 for ``k = 0``)."""
        if k <= 0 or batch <= 0:
            return 0.0
        pw = self._x_w
        pc = self._x_tok * batch
        return self._x_seq * batch + k * (self._x_over + (pc if pc > pw else pw) + self._x_ctx * context)

    def spec_step_time(self, batch: int, context: int, k: int) -> float:
        """A decode-only step of depth ``k``, drafting included."""
        return self.step_time(0, 0.0, batch, context, k)

    def step_overhead(self) -> float:
        """The fixed part of a step, seconds: the overhead plus the weight read of a
        small (memory-bound) step; what an extra iteration costs beyond its tokens."""
        return self._d_over + self._d_w

    def prefill_seconds_per_token(self) -> float:
        """Marginal seconds per prompt token of a large prompt step (past the knee)."""
        return self._p_lin + self._p_comp if self._p_comp > 0 else self._p_lin

    # -- memory and transfer ------------------------------------------------
    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """KV tokens that fit across the lane's ``tp`` GPUs after the weights."""
        free = self.tp * self.gpu_memory_bytes * gpu_memory_utilization - self.spec.weight_bytes
        if free <= 0:
            raise ProfileError(
                f"{self.model} does not fit on {self.tp} x {self.gpu} at "
                f"gpu_memory_utilization={gpu_memory_utilization}")
        return int(free // self.spec.kv_bytes_per_token)

    def kv_bytes(self, tokens: int) -> int:
        return tokens * self.spec.kv_bytes_per_token


def transfer_time(nbytes: float, bandwidth_gbps: float, latency_ms: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``bandwidth_gbps`` GB/s (bytes, 1e9)."""
    return latency_ms * 1e-3 + nbytes / (bandwidth_gbps * 1e9)


# ------------------------------------------------------------------ loading
def _step_coeffs(d: Any, where: str) -> StepCoeffs:
    if not isinstance(d, dict):
        raise ProfileError(f"{where}: expected a mapping of {', '.join(STEP_FIELDS)}")
    unknown = set(d) - set(STEP_FIELDS)
    if unknown:
        raise ProfileError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: {', '.join(STEP_FIELDS)})")
    try:
        values = {f: float(d.get(f, 0.0)) for f in STEP_FIELDS}
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: fields must be numbers") from None
    for f, v in values.items():
        if not v >= 0:
            raise ProfileError(f"{where}.{f}: must be >= 0, got {v}")
    return StepCoeffs(**values)


def _draft_coeffs(d: Any, where: str) -> DraftCoeffs:
    fields = ("host_ms_per_seq", "pass_overhead_ms", "pass_weights_ms", "pass_ms_per_token", "pass_per_ctx_ms")
    if not isinstance(d, dict) or not isinstance(d.get("method"), str) or set(d) - {"method", *fields}:
        raise ProfileError(f"{where}: expected method and any of {', '.join(fields)}")
    try:
        values = {f: float(d.get(f, 0.0)) for f in fields}
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: fields must be numbers") from None
    if not all(v >= 0 for v in values.values()):
        raise ProfileError(f"{where}: coefficients must be >= 0")
    return DraftCoeffs(d["method"], **values)


class Profile:
    """A parsed profile file: fitted coefficient sets by (model, GPU, TP) and lane role."""

    def __init__(self, data: dict[str, Any], origin: str) -> None:
        self.origin = origin
        if data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{origin}: field 'format' must be {PROFILE_FORMAT!r}")
        version = data.get("version")
        if version == 1:
            raise ProfileError(
                f"{origin}: profile format version 1 (separate prefill/decode a, b, c fits) is no longer read; "
                "convert DistServe-style fits with scripts/profile_from_distserve.py, or write version 2 "
                "(streamserve/profiles/README.md)")
        if version != PROFILE_VERSION:
            raise ProfileError(f"{origin}: field 'version' is {version!r}; this streamserve reads version {PROFILE_VERSION}")
        self.source: str = str(data.get("source", ""))
        self.entries: dict[tuple[str, str, int], dict[str, tuple[StepCoeffs, StepCoeffs]]] = {}
        self.drafts: dict[tuple[tuple[str, str, int], str], DraftCoeffs] = {}
        for i, entry in enumerate(data.get("entries", [])):
            where = f"{origin}: entries[{i}]"
            try:
                key = (str(entry["model"]), str(entry["gpu"]), int(entry["tp"]))
                roles = entry["roles"]
            except (KeyError, TypeError, ValueError):
                raise ProfileError(f"{where}: needs model, gpu, tp and roles") from None
            if not isinstance(roles, dict) or not roles:
                raise ProfileError(f"{where}.roles: expected a mapping of lane role to coefficient sets")
            sets: dict[str, tuple[StepCoeffs, StepCoeffs]] = {}
            for role, body in roles.items():
                if role not in ROLES and role != "*":
                    raise ProfileError(f"{where}.roles: unknown role {role!r} (roles: {', '.join(ROLES)}, *)")
                if not isinstance(body, dict) or not ({"prompt", "decode"} & set(body)):
                    raise ProfileError(f"{where}.roles.{role}: needs a 'prompt' or a 'decode' set (or both)")
                given = {name: _step_coeffs(body[name], f"{where}.roles.{role}.{name}")
                         for name in ("prompt", "decode") if name in body}
                sets[role] = (given.get("prompt") or given["decode"], given.get("decode") or given["prompt"])
                if "draft" in body:  # a fitted draft cost (streamserve calibrate), used for its method
                    self.drafts[(key, role)] = _draft_coeffs(body["draft"], f"{where}.roles.{role}.draft")
            self.entries[key] = sets

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Profile":
        """Load ``path``, or the profile shipped with streamserve when ``None``."""
        if path is None:
            text = resources.files("streamserve.profiles").joinpath(DEFAULT_PROFILE).read_text()
            origin = f"<builtin {DEFAULT_PROFILE}>"
        else:
            p = Path(path)
            if not p.is_file():
                raise ProfileError(f"profile file not found: {p}")
            text, origin = p.read_text(), str(p)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{origin}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{origin}: expected a JSON object")
        return cls(data, origin)

    def has(self, model: str, gpu: str, tp: int) -> bool:
        return (model, gpu, tp) in self.entries

    def lane(self, model: str, gpu: str, tp: int, draft: str | None = None, role: str = "decode") -> LanePerf:
        """The lane's model: this profile's fitted sets for (model, gpu, tp) and ``role``
        when it has them, else the roofline. ``draft``: ``None`` (no speculation),
        ``"ngram"``, ``"eagle"``, ``"small-model"`` (the family's draft model) or a draft
        model's spec name."""
        try:
            mspec, gspec = model_spec(model), gpu_spec(gpu)
            draft_c = draft_coeffs(draft, mspec, gspec, tp)
        except SpecError as e:
            raise ProfileError(str(e)) from None
        sets = self.entries.get((model, gpu, tp))
        if sets is not None and (role in sets or "*" in sets):
            prompt, decode = sets.get(role) or sets["*"]
            fitted = self.drafts.get(((model, gpu, tp), role if role in sets else "*"))
            if fitted is not None and fitted.method == draft_c.method:
                draft_c = fitted
            return LanePerf(mspec, gspec, tp, prompt, decode, draft_c, source=f"profile {self.origin}")
        step = step_coeffs(mspec, gspec, tp)
        return LanePerf(mspec, gspec, tp, step, step, draft_c, source=f"roofline {gpu} eff {gspec.efficiency}")
