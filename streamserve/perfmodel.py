"""Step-time and KV-transfer model of one lane, fitted from a JSON profile.

The functional forms are DistServe's (OSDI'24), which fit measured vLLM iterations well:

* prefill batch:  a + b * sum(len) + c * sum(len^2)                       (ms)
* decode step:    a + b * sum(context) + c * tokens_in_step               (ms)
  with a second coefficient set above a batch-size threshold;
* speculative step with depth k: the verify pass is a decode step that feeds k+1 tokens
  per sequence, plus k passes of the draft (its own a, b, c; ~0 for n-gram drafting);
* KV transfer: bytes (2 * layers * kv_heads * head_dim * dtype bytes per token) over the
  link bandwidth, plus the link latency.

The profile format is documented in ``streamserve/profiles/README.md``; its ``version``
field is checked so an old file fails with a clear message instead of a wrong answer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

PROFILE_FORMAT = "streamserve-profile"
PROFILE_VERSION = 1
DEFAULT_PROFILE = "default-a100.json"


class ProfileError(ValueError):
    """A profile file is missing, malformed, or has no entry for what was asked."""


@dataclass(slots=True, frozen=True)
class Coeffs:
    """``a + b * x + c * y`` in milliseconds (what x and y are depends on the use)."""

    a: float
    b: float
    c: float


@dataclass(slots=True, frozen=True)
class ModelShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int
    weight_bytes: float

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


@dataclass(slots=True, frozen=True)
class LanePerf:
    """Timing of one lane: a model on ``tp`` GPUs of one type. All results in seconds."""

    model: str
    gpu: str
    tp: int
    shape: ModelShape
    gpu_memory_bytes: float
    prefill: Coeffs
    decode_small: Coeffs
    decode_large: Coeffs
    large_batch_from: int
    draft: Coeffs

    # -- step times ---------------------------------------------------------
    def prefill_time(self, tokens: int, sum_sq: float) -> float:
        """A batch of prompts (or prompt chunks) with ``tokens`` in all, ``sum_sq`` the
        attention work (``len**2`` for a whole prompt, ``len*(2*done+len)`` for a chunk)."""
        if tokens <= 0:
            return 0.0
        p = self.prefill
        return (p.a + p.b * tokens + p.c * sum_sq) * 1e-3

    def decode_time(self, batch: int, context: int, k: int = 0) -> float:
        """Verify/decode pass over ``batch`` sequences holding ``context`` KV tokens in
        all, each fed ``k + 1`` tokens. Draft cost not included (see ``draft_time``)."""
        if batch <= 0:
            return 0.0
        d = self.decode_large if batch >= self.large_batch_from else self.decode_small
        return (d.a + d.b * context + d.c * batch * (k + 1)) * 1e-3

    def draft_time(self, batch: int, context: int, k: int) -> float:
        """``k`` sequential draft passes over the batch."""
        if k <= 0 or batch <= 0:
            return 0.0
        d = self.draft
        return k * (d.a + d.b * context + d.c * batch) * 1e-3

    def spec_step_time(self, batch: int, context: int, k: int) -> float:
        return self.decode_time(batch, context, k) + self.draft_time(batch, context, k)

    def step_time(self, prefill_tokens: int, prefill_sq: float, batch: int, context: int, k: int = 0) -> float:
        """One engine iteration mixing prefill chunks and decode sequences (chunked
        prefill): the fixed overhead is paid once, the variable parts add up."""
        if prefill_tokens <= 0:  # the common decode-only step, inlined: it runs every simulated step
            if batch <= 0:
                return 0.0
            d = self.decode_large if batch >= self.large_batch_from else self.decode_small
            ms = d.a + d.b * context + d.c * batch * (k + 1)
            if k > 0:
                f = self.draft
                ms += k * (f.a + f.b * context + f.c * batch)
            return ms * 1e-3
        if batch <= 0:
            return self.prefill_time(prefill_tokens, prefill_sq)
        d = self.decode_large if batch >= self.large_batch_from else self.decode_small
        p = self.prefill
        ms = (max(p.a, d.a) + p.b * prefill_tokens + p.c * prefill_sq
              + d.b * context + d.c * batch * (k + 1))
        return ms * 1e-3 + self.draft_time(batch, context, k)

    # -- memory and transfer ------------------------------------------------
    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """KV tokens that fit across the lane's ``tp`` GPUs after the weights."""
        free = self.tp * self.gpu_memory_bytes * gpu_memory_utilization - self.shape.weight_bytes
        if free <= 0:
            raise ProfileError(
                f"{self.model} does not fit on {self.tp} x {self.gpu} at "
                f"gpu_memory_utilization={gpu_memory_utilization}")
        return int(free // self.shape.kv_bytes_per_token)

    def kv_bytes(self, tokens: int) -> int:
        return tokens * self.shape.kv_bytes_per_token


def transfer_time(nbytes: float, bandwidth_gbps: float, latency_ms: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``bandwidth_gbps`` GB/s (bytes, 1e9)."""
    return latency_ms * 1e-3 + nbytes / (bandwidth_gbps * 1e9)


# ------------------------------------------------------------------ loading
def _coeffs(d: Any, where: str) -> Coeffs:
    try:
        return Coeffs(float(d["a"]), float(d["b"]), float(d["c"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"{where}: needs numeric fields a, b, c ({e})") from None


class Profile:
    """A parsed profile file: model shapes, GPUs, and fitted coefficients by (model, gpu, tp)."""

    def __init__(self, data: dict[str, Any], origin: str) -> None:
        self.origin = origin
        if data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{origin}: field 'format' must be {PROFILE_FORMAT!r}")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"{origin}: field 'version' is {data.get('version')!r}; this streamserve reads version {PROFILE_VERSION}")
        self.source: str = data.get("source", "")
        try:
            self.models = {name: ModelShape(**m) for name, m in data["models"].items()}
            self.gpus = {name: float(g["memory_gb"]) * 1e9 for name, g in data["gpus"].items()}
        except (KeyError, TypeError) as e:
            raise ProfileError(f"{origin}: bad 'models' or 'gpus' section ({e})") from None
        self.drafts = {name: _coeffs(c, f"{origin}: drafts.{name}") for name, c in data.get("drafts", {}).items()}
        self.entries: dict[tuple[str, str, int], dict[str, Any]] = {}
        for i, entry in enumerate(data.get("entries", [])):
            try:
                key = (entry["model"], entry["gpu"], int(entry["tp"]))
            except (KeyError, TypeError, ValueError):
                raise ProfileError(f"{origin}: entries[{i}] needs model, gpu and tp") from None
            self.entries[key] = entry

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
        return cls(data, origin)

    def lane(self, model: str, gpu: str, tp: int, draft: str | None = None) -> LanePerf:
        e = self.entries.get((model, gpu, tp))
        if e is None:
            have = ", ".join(f"{m}/{g}/tp{t}" for m, g, t in sorted(self.entries))
            raise ProfileError(f"{self.origin}: no entry for model={model} gpu={gpu} tp={tp} (have: {have})")
        where = f"{self.origin}: entry {model}/{gpu}/tp{tp}"
        dec = e.get("decode", {})
        large = dec.get("large_batch")
        small = _coeffs(dec, f"{where} decode")
        if draft is None:
            draft_c = Coeffs(0.0, 0.0, 0.0)
        elif draft in self.drafts:
            draft_c = self.drafts[draft]
        else:
            raise ProfileError(f"{self.origin}: no draft named {draft!r} (have: {', '.join(self.drafts) or 'none'})")
        return LanePerf(
            model=model, gpu=gpu, tp=tp,
            shape=self.models[model], gpu_memory_bytes=self.gpus[gpu],
            prefill=_coeffs(e.get("prefill"), f"{where} prefill"),
            decode_small=small,
            decode_large=_coeffs(large, f"{where} decode.large_batch") if large else small,
            large_batch_from=int(large["from_batch"]) if large else 1 << 30,
            draft=draft_c,
        )
