"""`streamserve fidelity`: one workload live and in the simulator, compared.

The live run goes through the front end of a live config (``live.Deployment``), with the
policies of the config predicting with the calibrated profile. The simulator then runs
the same cluster shape (``cluster_from_live``), the same policies and seed, the profile's
fitted steps, KV link and acceptance, on the live run's *actual* arrival times, prompt
lengths (as the engines tokenized them) and output lengths, so that what differs is the
model of the engines, not the workload. Both sides are summarised by ``metrics.summarize``.
"""
from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.calibration import records, report
from streamserve.calibration.fit import PARAMS, design, predict
from streamserve.calibration.roles import overlap
from streamserve.calibration.live import Deployment
from streamserve.calibration.profile import device_name, kv_bytes_per_token, model_spec_for
from streamserve.config import ClusterConfig, EngineConfig, LaneConfig, LinkConfig, SpeculationConfig
from streamserve.gpu.config import LiveConfig, PerfRef
from streamserve.gpu.prompts import CODE_DATASETS
from streamserve.metrics import LogHistogram, RunResult, summarize, write_outputs
from streamserve.perfmodel import Profile, ProfileError
from streamserve.request import Request, State
from streamserve.workload.base import Workload

VLLM_MAX_NUM_BATCHED_TOKENS = 2048  # vLLM's SchedulerConfig default when the config does not set it
VLLM_BLOCK_SIZE = 16


class FidelityError(RuntimeError):
    """The fidelity run cannot be carried out or compared (one line)."""


@dataclass
class Calibration:
    """The ``calibration`` section of a profile written by ``streamserve calibrate``."""

    path: Path
    profile: Profile
    link: dict[str, float]
    acceptance: dict[str, float]
    params: dict[str, float]  # the fit's coefficients by ``fit.PARAMS`` name (ms); connector terms of every role
    request_overhead_s: float = 0.0  # fit.request_overhead_ms, seconds
    role_params: dict[str, dict[str, float]] | None = None  # per role ("*": every role), ``fit.PARAMS`` names
    contention: dict[str, float] | None = None  # per role: step time x (1 + c * other engines busy)

    def contention_of(self, role: str) -> float:
        c = self.contention or {}
        return float(c.get(role, c.get("*", 0.0)))

    def params_of(self, role: str) -> dict[str, float]:
        roles = self.role_params or {"*": self.params}
        return roles.get(role) or roles.get("*") or next(iter(roles.values()))

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        profile = Profile.load(path)
        data = json.loads(Path(path).read_text())
        section = data.get("calibration")
        if not isinstance(section, dict):
            raise ProfileError(f"{path}: no 'calibration' section (write the profile with `streamserve calibrate`)")
        link = section.get("link") or {}
        role_params: dict[str, dict[str, float]] = {}
        try:
            connector = {k: float(v) for k, v in section.get("connector_io", {}).items()}
            for name, body in data["entries"][0]["roles"].items():
                params = {p: 0.0 for p in PARAMS}
                for which in ("prompt", "decode"):
                    params.update({f"{which}.{k}": float(v) for k, v in body[which].items()})
                params["draft_host_ms_per_seq"] = float(body.get("draft", {}).get("host_ms_per_seq", 0.0))
                params.update(connector)
                role_params[str(name)] = params
            merged = dict(next(iter(role_params.values())))
            merged["draft_host_ms_per_seq"] = max(p["draft_host_ms_per_seq"] for p in role_params.values())
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, StopIteration):
            raise ProfileError(f"{path}: not a profile written by `streamserve calibrate` "
                               "(entries[0].roles.<role>.prompt/decode)") from None
        return cls(Path(path), profile, {"bandwidth_gbps": float(link.get("bandwidth_gbps", 1e6)),
                                         "latency_ms": float(link.get("latency_ms", 0.0))},
                   {str(k): float(v) for k, v in (section.get("acceptance") or {}).items()}, merged,
                   float(section.get("request_overhead_ms") or 0.0) * 1e-3, role_params,
                   {str(k): float(v) for k, v in (section.get("contention") or {}).items()})


def check_profile_covers(cal: Calibration, model: str, gpu: str, tps: set[int]) -> None:
    """A profile fitted on another model (or device, or TP) must not be used silently."""
    for tp in sorted(tps):
        if not cal.profile.has(model, gpu, tp):
            held = ", ".join(f"{m} on {g} (tp {t})" for m, g, t in cal.profile.entries) or "nothing"
            raise FidelityError(f"{cal.path}: no fitted entry for {model} on {gpu} (tp {tp}); it holds {held}: "
                                "calibrate a profile of this model (`streamserve profile` then `streamserve calibrate`)")


def _flag(args: list[str], name: str) -> int | None:
    if name in args and args.index(name) + 1 < len(args):
        return int(args[args.index(name) + 1])
    return None


def cluster_from_live(cfg: LiveConfig, cal: Calibration, model: str, gpu: str) -> ClusterConfig:
    """The simulated twin of a live deployment: one lane per engine, the engines' batch
    limits and KV capacity, the profile's fitted steps and KV link, the same policies."""
    lanes = []
    for e in cfg.engines:
        engine: dict[str, Any] = {"max_num_seqs": e.max_num_seqs}
        budget = _flag(e.extra_args, "--max-num-batched-tokens")
        engine["max_num_batched_tokens"] = max(budget or VLLM_MAX_NUM_BATCHED_TOKENS, e.max_num_seqs)
        lanes.append(LaneConfig(role=e.role, tp=e.tp, pair=e.pair, replicas=1, engine=engine))
    engine_cfg: dict[str, Any] = {"block_size": cfg.block_size or VLLM_BLOCK_SIZE}
    if cfg.device == "cpu":  # KV lives in VLLM_CPU_KVCACHE_SPACE, in the served dtype
        engine_cfg["kv_capacity_tokens"] = cfg.cpu_kvcache_space_gib * 2**30 // kv_bytes_per_token(cfg)
    else:
        engine_cfg["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    spec = cfg.speculation
    if spec.method == "none":
        speculation = SpeculationConfig(method="none", k_max=spec.k_max)
    elif spec.method == "ngram":
        speculation = SpeculationConfig(method="ngram", k_max=spec.k_max)
    else:
        speculation = SpeculationConfig(method="draft", k_max=spec.k_max)
    return ClusterConfig(
        name=f"{cfg.name} (simulated)", model=model, gpu=gpu, profile=str(cal.path), engine=EngineConfig(**engine_cfg),
        lanes=lanes, link=LinkConfig(**cal.link), speculation=speculation,
        scheduler=cfg.scheduler, router=cfg.router, spec_policy=cfg.spec_policy)


def prompt_class(dataset: str) -> str:
    return "code" if dataset.lower() in CODE_DATASETS else "prose"


def replay_workload(live: RunResult, name: str, datasets: tuple[str, ...], cal: Calibration) -> Workload:
    """The simulator's workload: the live requests as they really arrived and ran, each
    reaching the engines the profile's request overhead later."""
    reqs = sorted(live.requests, key=lambda r: r.arrival)
    alpha = {}
    for name_ in datasets:
        fitted = cal.acceptance.get(prompt_class(name_))
        alpha[name_] = fitted if fitted is not None else (float(np.mean(list(cal.acceptance.values())))
                                                          if cal.acceptance else 0.0)
    codes = {d: i for i, d in enumerate(datasets)}
    return Workload(
        name=f"{name} (live replay)",
        prompt_len=np.array([r.prompt_len for r in reqs], dtype=np.int64),
        output_len=np.array([max(1, r.generated) for r in reqs], dtype=np.int64),
        arrival=np.array([max(0.0, r.arrival) + cal.request_overhead_s for r in reqs], dtype=np.float64),
        dataset=np.array([codes[r.dataset] for r in reqs], dtype=np.int16),
        datasets=datasets, alpha=alpha)


def contended_profile(cal: Calibration, sim: RunResult, out: Path) -> Path | None:
    """The profile with each role's coefficients scaled by 1 + contention x the other
    lanes' utilisation in ``sim`` (engines sharing cores slow each other down; the
    simulator's lanes do not), written to ``out``; None when nothing is scaled."""
    if not sim.lanes or len(sim.lanes) < 2 or not any((cal.contention or {}).values()) or sim.duration <= 0:
        return None
    util = {ln.lane_id: ln.busy_time / sim.duration for ln in sim.lanes}
    factor: dict[str, float] = {}
    for ln in sim.lanes:
        role = ln.role
        others = sum(u for lane, u in util.items() if lane != ln.lane_id)
        factor[role] = max(factor.get(role, 1.0), 1.0 + cal.contention_of(role) * others)
    data = json.loads(cal.path.read_text())
    for entry in data["entries"]:
        roles = entry["roles"]
        for name in list(roles):
            targets = [name] if name != "*" else sorted(factor)
            for role in targets:
                body = copy.deepcopy(roles[name])
                f = factor.get(role, 1.0)
                for which in ("prompt", "decode"):
                    body[which] = {k: float(v) * f for k, v in body[which].items()}
                if "draft" in body:
                    body["draft"]["host_ms_per_seq"] = float(body["draft"]["host_ms_per_seq"]) * f
                roles[role] = body
            if name == "*" and factor:
                del roles[name]
    data["calibration"]["contention_factors"] = factor
    path = out / "profile-contended.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def simulate_contended(cfg: LiveConfig, cal: Calibration, model: str, gpu: str, workload: Workload, seed: int,
                       out: Path) -> tuple[ClusterConfig, RunResult]:
    """Simulate ``workload``; where the profile has a contention term, again with each
    lane's steps slowed by the other lanes' utilisation of the first pass, twice (the
    utilisation depends on the slowdown; two passes settle it to a few percent)."""
    from streamserve.sim import run as simulate

    cluster = cluster_from_live(cfg, cal, model, gpu)
    sim = simulate(cluster, workload, seed)
    for _ in range(2):
        path = contended_profile(cal, sim, out)
        if path is None:
            break
        cluster = cluster.model_copy(update={"profile": str(path)})
        sim = simulate(cluster, workload, seed)
    return cluster, sim


def load_live_run(folder: Path) -> tuple[RunResult, dict[str, Any], dict[str, Any]]:
    """The live side of an earlier fidelity run (``DIR/live/requests.csv`` and
    ``DIR/fidelity.json``), to simulate it again with another profile (``--replay-live``)."""
    try:
        data = json.loads((folder / "fidelity.json").read_text())
        with open(folder / "live" / "requests.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        reqs = []
        for row in rows:
            r = Request(id=int(row["id"]), arrival=float(row["arrival"]), prompt_len=int(row["prompt_len"]),
                        output_len=int(row["output_len"]), dataset=row["dataset"])
            r.generated, r.state = int(row["generated"]), State(row["state"])
            r.first_token = float(row["first_token"] or "nan")
            r.finish = float(row["finish"] or "nan")
            reqs.append(r)
        live = RunResult(requests=reqs, duration=float(data["live"]["duration"]), itl=LogHistogram())
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        raise FidelityError(f"{folder}: not a fidelity run with its live side ({type(e).__name__}: {e})") from None
    return live, data["live"], data.get("live_step_check") or {}


def live_steps(dep: Deployment, since_wall: float) -> list[records.StepRecord]:
    """The steps every engine logged during the live run."""
    steps = []
    for lane, role in dep.roles.items():
        path = dep.step_log(lane)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                raw = json.loads(line)
                if raw.get("t", 0.0) >= since_wall and "prompt_tokens" in raw:
                    steps.append(records.StepRecord.from_engine(raw, lane, role, "fidelity", "live"))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return steps


def step_check(steps: list[records.StepRecord], cal: Calibration) -> dict[str, float]:
    """The profile's step model on the live run's own steps: whether the engines ran as
    fast during the run as while profiled (CPU contention shows here), apart from
    everything outside the engines (front end, HTTP, queueing)."""
    if not steps:
        return {}
    cols = records.columns(steps)
    measured = cols["dt"] * 1e3
    x = design(cols)
    ov = overlap(cols)
    pred = np.zeros(len(measured))
    for role in set(cols["role"].tolist()):
        sel = cols["role"] == role
        pred[sel] = predict(cal.params_of(role), {k: v[sel] for k, v in x.items()}) \
            * (1.0 + cal.contention_of(role) * ov[sel])
    ape = np.abs(pred - measured) / measured
    return {"steps": len(steps), "median_abs_pct_error": float(100 * np.median(ape)),
            "p90_abs_pct_error": float(100 * np.percentile(ape, 90)),
            "busy_s_measured": float(measured.sum() / 1e3), "busy_s_predicted": float(pred.sum() / 1e3)}


def live_spec_figures(steps: list[records.StepRecord]) -> dict[str, float]:
    """Mean k (drafts planned per decoding sequence and step: sum(k * B) / sum(B)) and
    accepted drafts per decoding sequence and step, over the decode engines' steps."""
    dec = [s for s in steps if s.role != "prefill" and s.decode_seqs > 0]
    seqs = sum(s.decode_seqs for s in dec)
    if not seqs:
        return {}
    return {"mean_k": sum(s.k * s.decode_seqs for s in dec) / seqs,
            "accepted_per_seq_step": sum(s.accepted for s in dec) / seqs}


def sim_spec_figures(result: RunResult) -> dict[str, float]:
    lanes = [ln for ln in result.lanes if ln.role != "prefill"]
    seqs = sum(ln.steps * ln.mean_batch for ln in lanes)
    if not seqs:
        return {}
    return {"mean_k": sum(float(ln.drafted) for ln in lanes) / seqs,
            "accepted_per_seq_step": sum(float(ln.accepted) for ln in lanes) / seqs}


def _values(result: RunResult) -> dict[str, np.ndarray]:
    done = [r for r in result.requests if r.state is State.FINISHED]
    out = {"ttft": np.array([r.ttft for r in done]) * 1e3, "e2el": np.array([r.e2e for r in done]) * 1e3,
           "tpot": np.array([r.tpot for r in done if r.generated > 1]) * 1e3}
    out["itl"] = _hist_points(result.itl)
    return out


def _hist_points(h: LogHistogram) -> np.ndarray:
    """ITLs are kept as a histogram: its percentiles 0.5..99.5 stand for the gaps."""
    if h.n == 0:
        return np.zeros(0)
    return np.array([h.percentile(float(q)) for q in np.arange(0.5, 100, 1.0)]) * 1e3


def run_fidelity(cfg: LiveConfig, profile_path: Path, workload: Workload | None, out: Path, seed: int = 0,
                 attach: bool = False, echo=print, replay_live: Path | None = None) -> dict[str, Any]:
    """Run ``workload`` live and simulated (or simulate the live run recorded in
    ``replay_live`` again); write table, plots and fidelity.json to ``out``."""
    cal = Calibration.load(profile_path)
    model, gpu = model_spec_for(cfg), device_name(cfg)
    check_profile_covers(cal, model, gpu, {e.tp for e in cfg.engines})
    live_cfg = cfg.model_copy(update={"perf": PerfRef(profile=str(profile_path.resolve()), model=model, gpu=gpu),
                                      "profile_steps": True})
    out.mkdir(parents=True, exist_ok=True)
    if replay_live is not None:
        live, s_live, _ = load_live_run(replay_live)
        saved = replay_live / "live" / "steps.jsonl"  # the check is redone with this profile, when it can be
        check = step_check([records.StepRecord(**row) for row in records.read_jsonl(saved)], cal) \
            if saved.is_file() else {}
        echo(f"live: the {len(live.requests)} requests recorded in {replay_live}")
        datasets = tuple(sorted({r.dataset for r in live.requests}))
        cluster, sim = simulate_contended(live_cfg, cal, model, gpu, replay_workload(
            live, str(s_live.get("workload", "replay")), datasets, cal), seed, out)
        for r in sim.requests:
            r.arrival -= cal.request_overhead_s
        s_sim = summarize(sim)
        if cfg.speculation.method != "none":
            s_sim.update(sim_spec_figures(sim))
        return _write(cfg, cluster, live, sim, s_live, s_sim, check, str(s_live.get("workload", "replay")),
                      len(live.requests), seed, profile_path, out)
    assert workload is not None
    echo(f"live: {len(workload)} requests through {cfg.name}'s front end")
    with Deployment(live_cfg, out / "engine-logs", attach=attach) as dep:
        live, extra, wall0 = dep.send(workload, seed)
        failed = [r for r in live.requests if r.state is not State.FINISHED]
        if failed:
            try:
                dep.check_alive()
            except Exception as e:  # an engine died: that is the cause to report
                raise FidelityError(f"live run failed: {str(e).splitlines()[0]}") from None
            raise FidelityError(f"live run failed: {len(failed)} of {len(live.requests)} requests did not finish "
                                f"(first: {failed[0].reason})")
        steps = live_steps(dep, wall0)
    echo("simulated: the same requests, arrival times and output lengths")
    cluster, sim = simulate_contended(live_cfg, cal, model, gpu, replay_workload(
        live, workload.name, workload.datasets, cal), seed, out)
    for r in sim.requests:  # the client sent it that much earlier (calibrate's request overhead)
        r.arrival -= cal.request_overhead_s
    s_live, s_sim = summarize(live), summarize(sim)
    s_live.update(extra)
    if cfg.speculation.method != "none":
        s_live.update(live_spec_figures(steps))
        s_sim.update(sim_spec_figures(sim))
    check = step_check(steps, cal)
    s_live["workload"] = workload.name
    write_outputs(live, s_live, out / "live")
    (out / "live" / "steps.jsonl").unlink(missing_ok=True)
    records.write_jsonl(out / "live" / "steps.jsonl", [records.as_row(st) for st in steps])
    return _write(cfg, cluster, live, sim, s_live, s_sim, check, workload.name, len(workload), seed, profile_path,
                  out)


def _write(cfg: LiveConfig, cluster: ClusterConfig, live: RunResult, sim: RunResult, s_live: dict[str, Any],
           s_sim: dict[str, Any], check: dict[str, Any], workload_name: str, n: int, seed: int, profile_path: Path,
           out: Path) -> dict[str, Any]:
    rows = report.comparison(s_live, s_sim)
    write_outputs(sim, s_sim, out / "sim")
    title = f"{cfg.name}, {workload_name}"
    plots = report.cdf_plots(_values(live), _values(sim), out, title)
    result = {"config": cfg.name, "workload": workload_name, "requests": n, "seed": seed,
              "profile": str(profile_path), "rows": rows, "live": _plain(s_live), "sim": _plain(s_sim),
              "cluster": cluster.model_dump(), "plots": [p.name for p in plots], "live_step_check": check}
    (out / "fidelity.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "table.md").write_text(f"# {title} ({n} requests, seed {seed})\n\n"
                                  + report.markdown_table(rows) + "\n\n" + report.step_check_line(check) + "\n")
    return result


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}


def bound_violations(rows: list[dict[str, Any]], bounds: dict[str, float]) -> list[str]:
    """Rows whose |% error| exceeds their bound; ``bounds`` maps a stat or a metric key
    (``mean``, ``p90``, ``mean_ttft_ms``, ``request_throughput``, ...) to a percentage; a
    stat bound covers the latency rows, a key bound wins over it."""
    bad = []
    for r in rows:
        stat = r["key"].split("_", 1)[0]
        limit = bounds.get(r["key"], bounds.get(stat) if r["key"].endswith("_ms") else None)
        if limit is not None and not math.isnan(r["error_pct"]) and abs(r["error_pct"]) > limit:
            bad.append(f"{r['metric']}: {r['error_pct']:+.1f}% (bound {limit:g}%)")
    return bad
