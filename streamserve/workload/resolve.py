"""One entry point from command-line options (and a config's ``workload:`` mapping) to a
:class:`Workload`.

``spec`` says where lengths come from: nothing (the default synthetic workload), a
dataset name (``alpaca``, ``gsm8k``, ``humaneval``, ``sum``, ``mix``, ``mix:a=w,...``),
``random[:input_len=..,output_len=..,range_ratio=..,prefix_len=..]`` (``vllm bench``
style), a trace file (format detected, or ``fmt``), or a YAML/TOML workload spec file
holding the same fields as the config's ``workload:`` mapping. The options then say when
requests arrive: replayed from the trace (optionally time-scaled to ``rate``), Poisson,
Gamma with a CV, ON/OFF bursts, or a closed loop of ``concurrency`` clients.

Precedence: command-line options > spec file > the config's ``workload:`` mapping.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from streamserve.config import ConfigError, read_mapping, validation_message
from streamserve.workload import arrivals
from streamserve.workload.base import DEFAULT_ALPHA, Workload
from streamserve.workload.datasets import DATASETS, parse_mix, sample_mix
from streamserve.workload.errors import Warn, WorkloadError
from streamserve.workload.formats import SPEC_SUFFIXES, Trace, read_trace
from streamserve.workload.spec import WorkloadConfig
from streamserve.workload.synthetic import synthetic, vllm_random

DEFAULT_RATE = 5.0  # requests/s, for generators and untimed traces when --rate is not given
DEFAULT_NUM_REQUESTS = 1000  # for generators

__all__ = ["WorkloadError", "resolve_workload", "DEFAULT_RATE", "DEFAULT_NUM_REQUESTS"]


def _stderr_warn(msg: str) -> None:
    sys.stderr.write(f"warning: {msg}\n")


def resolve_workload(spec: str | None, *, fmt: str | None = None, num_requests: int | None = None,
                     rate: float | None = None, concurrency: int | None = None, seed: int = 0,
                     arrival: str | None = None, cv: float | None = None, strict: bool = False,
                     config: dict | None = None, warn: Callable[[str], None] = _stderr_warn,
                     config_origin: str = "config") -> Workload:
    """Build the workload the options describe; any problem is a one-line ``WorkloadError``."""
    cfg = _merge(spec, fmt, num_requests, rate, concurrency, arrival, cv, config, config_origin)
    rng = np.random.default_rng(seed)
    try:
        return _build(cfg, rng, seed, strict, warn)
    except WorkloadError:
        raise
    except (ValueError, OSError) as e:
        raise WorkloadError(f"workload {cfg.source or 'synthetic'}: {e}") from None


# ---------------------------------------------------------------- options
def _validate(data: dict[str, Any], origin: str, text: str | None, prefix: str) -> WorkloadConfig:
    try:
        return WorkloadConfig.model_validate(data)
    except ValidationError as e:
        raise WorkloadError(validation_message(e, origin, text, prefix=prefix)) from None


def _merge(spec: str | None, fmt: str | None, num_requests: int | None, rate: float | None,
           concurrency: int | None, arrival: str | None, cv: float | None, config: dict | None,
           config_origin: str) -> WorkloadConfig:
    data: dict[str, Any] = {}
    if config is not None:
        if not isinstance(config, dict):
            raise WorkloadError(f"{config_origin}: workload: expected a mapping of fields")
        _validate(config, config_origin, None, "workload.")
        data.update(config)
        src = config.get("source")
        origin = Path(config_origin)
        if isinstance(src, str) and _looks_like_path(src) and not Path(src).exists() and origin.is_file():
            data["source"] = str(origin.parent / src)  # relative to the config file that names it
    if spec is not None and Path(spec).suffix in SPEC_SUFFIXES:
        try:
            file_data, text = read_mapping(spec)
        except ConfigError as e:
            raise WorkloadError(str(e)) from None
        file_data = file_data.get("workload", file_data) if isinstance(file_data.get("workload"), dict) else file_data
        _validate(file_data, spec, text, "")
        src = file_data.get("source")
        if isinstance(src, str) and _looks_like_path(src) and not Path(src).is_absolute():
            file_data = {**file_data, "source": str(Path(spec).parent / src)}  # relative to the spec file
        data.update(file_data)
        spec = None
    cli = {"source": spec, "format": fmt, "num_requests": num_requests, "rate": rate,
           "concurrency": concurrency, "arrival": arrival, "cv": cv}
    data.update({k: v for k, v in cli.items() if v is not None})
    try:
        return WorkloadConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        flag = "--" + {"source": "workload", "num_requests": "num-requests"}.get(field, field)
        if field in cli and cli[field] is not None:
            raise WorkloadError(f"{flag}: {err['msg'].removeprefix('Value error, ')}") from None
        raise WorkloadError(validation_message(e, config_origin, None, prefix="workload.")) from None


def _looks_like_path(source: str) -> bool:
    return not (source in DATASETS or source.startswith("mix") or source.split(":")[0] == "random")


def _kv(spec: str, allowed: dict[str, type]) -> dict[str, Any]:
    """``name:key=value,...`` options to a dict, checking keys and types."""
    _, _, body = spec.partition(":")
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if key not in allowed or not eq:
            raise WorkloadError(f"--workload: {spec!r}: expected key=value with keys {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise WorkloadError(f"--workload: {spec!r}: {key} must be a {allowed[key].__name__}, got {value!r}") from None
    return out


# ---------------------------------------------------------------- building
def _build(cfg: WorkloadConfig, rng: np.random.Generator, seed: int, strict: bool, warn: Warn) -> Workload:
    src = cfg.source
    if src is None and cfg.format != "random":
        if cfg.arrival == "replay":
            raise WorkloadError("--arrival replay: the synthetic workload has no timestamps; give --workload PATH")
        n = cfg.num_requests or DEFAULT_NUM_REQUESTS
        base = synthetic(n, cfg.rate or DEFAULT_RATE, seed, concurrency=cfg.concurrency,
                         alpha=cfg.alpha.get("default", DEFAULT_ALPHA))
        trace = Trace(source="synthetic", prompt_len=base.prompt_len, output_len=base.output_len)
        return _finish(trace, "synthetic", {}, cfg, rng, warn)
    if src is not None and (src in DATASETS or src == "mix" or src.startswith("mix:")):
        try:
            weights = {src: 1.0} if src in DATASETS else parse_mix(src)
        except ValueError as e:
            raise WorkloadError(f"--workload: {e}") from None
        n = cfg.num_requests or DEFAULT_NUM_REQUESTS
        p, o, d, names = sample_mix(weights, n, rng)
        trace = Trace(source=src, prompt_len=p, output_len=o, dataset=d, datasets=names)
        return _finish(trace, src, {k: DATASETS[k].alpha for k in names}, cfg, rng, warn)
    if cfg.format == "random" or (src is not None and src.split(":")[0] == "random"):
        if src is not None and src.split(":")[0] == "random":
            cfg = cfg.model_copy(update=_kv(src, {"input_len": int, "output_len": int, "range_ratio": float,
                                                  "prefix_len": int}))
            cfg = _validate(cfg.model_dump(), "--workload", None, "")
        n = cfg.num_requests or DEFAULT_NUM_REQUESTS
        p, o = vllm_random(n, cfg.input_len, cfg.output_len, cfg.range_ratio, cfg.prefix_len, rng)
        trace = Trace(source="random", prompt_len=p, output_len=o)
        return _finish(trace, "random", {}, cfg, rng, warn)
    assert src is not None
    path = Path(src)
    if not path.exists():
        raise WorkloadError(
            f"--workload: {src!r} is neither a dataset ({', '.join(DATASETS)}, mix, mix:NAME=W,..., "
            "random[:input_len=N,...]) nor an existing file")
    trace = read_trace(path, cfg.format, cfg, strict, warn)
    return _finish(trace, path.name, {}, cfg, rng, warn)


def _limit(trace: Trace, cfg: WorkloadConfig, rng: np.random.Generator, warn: Warn) -> Trace:
    """``num_requests`` of a trace: the first N of a timed trace (its time structure intact),
    a seeded sample of an untimed one."""
    n = cfg.num_requests
    if n is None or n == len(trace):
        return trace
    if n > len(trace):
        if trace.source not in ("synthetic", "random") and trace.source not in DATASETS:
            warn(f"{trace.source}: --num-requests {n}: the trace has only {len(trace)} requests; using all of them")
        return trace
    if trace.timestamps is not None:
        return trace.take(np.arange(n))
    return trace.take(np.sort(rng.choice(len(trace), size=n, replace=False)))


def _arrivals(trace: Trace, cfg: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    n = len(trace)
    kind = cfg.arrival or ("replay" if trace.timestamps is not None else "poisson")
    ts = trace.timestamps
    trace_rate = None
    if ts is not None and n > 1 and ts[-1] > ts[0]:
        trace_rate = (n - 1) / float(ts[-1] - ts[0])
    if kind == "replay":
        if ts is None:
            raise WorkloadError(f"--arrival replay: {trace.source} has no timestamps (use poisson, gamma or onoff)")
        if cfg.rate is None:
            return ts - ts[0]
        if trace_rate is None:
            raise WorkloadError(f"--rate: {trace.source}: all requests arrive at once, so there is no rate to scale")
        return (ts - ts[0]) * (trace_rate / cfg.rate)
    rate = cfg.rate or trace_rate or DEFAULT_RATE
    if kind == "poisson":
        return arrivals.poisson(n, rate, rng)
    if kind == "gamma":
        if cfg.cv is None:
            raise WorkloadError("--cv: required with --arrival gamma (1 is Poisson, above 1 bursty)")
        return arrivals.gamma(n, rate, cfg.cv, rng)
    if cfg.onoff is not None:
        o = cfg.onoff
        process = arrivals.MMPP2(o.on_rate, o.off_rate, o.on_s, o.off_s)
        if cfg.rate is not None:
            process = process.scaled(cfg.rate / process.mean_rate)
        return arrivals.onoff(n, process, rng)
    if cfg.cv is None:
        raise WorkloadError("--cv: required with --arrival onoff (> 1), or give workload.onoff in the config")
    try:
        process = arrivals.MMPP2.from_cv(rate, cfg.cv, cfg.duty)
    except ValueError as e:
        raise WorkloadError(f"--{e}") from None
    return arrivals.onoff(n, process, rng)


def _finish(trace: Trace, name: str, alpha: dict[str, float], cfg: WorkloadConfig,
            rng: np.random.Generator, warn: Warn) -> Workload:
    trace = _limit(trace, cfg, rng, warn)
    if cfg.concurrency:
        for flag, value in (("--arrival", cfg.arrival), ("--rate", cfg.rate), ("--cv", cfg.cv)):
            if value is not None:
                warn(f"{flag} {value}: ignored with --concurrency (a closed loop sends on completion)")
        arrival = None
    else:
        if cfg.cv is not None and cfg.arrival not in ("gamma", "onoff"):
            warn(f"--cv {cfg.cv}: ignored with --arrival {cfg.arrival or 'default'} (it shapes gamma and onoff)")
        arrival = _arrivals(trace, cfg, rng)
    n = len(trace)
    datasets = trace.datasets
    fallback = cfg.alpha.get("default", DEFAULT_ALPHA)
    for key in cfg.alpha:
        if key != "default" and key not in datasets:
            warn(f"workload.alpha.{key}: no requests carry this dataset tag (tags: {', '.join(datasets)})")
    # Named datasets (``alpha`` given) carry a figure per draft method; the config's wins.
    by_method = {m: {d: DATASETS[d].acceptance[m] for d in alpha if d not in cfg.alpha}
                 for m in DATASETS[next(iter(alpha))].acceptance} if alpha else {}
    # Precedence per tag: the config's figure, the named dataset's, the config's default.
    alpha = {d: cfg.alpha.get(d, alpha.get(d, fallback)) for d in datasets}
    alpha.setdefault("default", fallback)
    return Workload(
        name=name, prompt_len=trace.prompt_len.astype(np.int64), output_len=trace.output_len.astype(np.int64),
        arrival=arrival,
        dataset=trace.dataset if trace.dataset is not None else np.zeros(n, dtype=np.int16),
        datasets=datasets, alpha=alpha, alpha_by_method=by_method, concurrency=cfg.concurrency,
        think_time=cfg.think_time,
        prompts=trace.prompts, hash_ids=trace.hash_ids,
    )
