"""The ablation study: full StreamServe against itself with one part taken away.

Variants, all on the same workload and seed:

* ``streamserve``: StreamScheduler + FlowGuard + SpecuStream on two stream pairs;
* ``no-flowguard``: routing by round-robin instead of FlowGuard;
* ``no-specustream``: a fixed speculation depth (k = 4) instead of SpecuStream;
* ``no-disaggregation``: the vllm-dp lanes (four colocated engines), same policies.

The load is bursty (gamma inter-arrival times, coefficient of variation ``cv``) at
``load`` times the capacity of the full StreamServe cluster. A scenario (``SCENARIOS``)
fixes the dataset mix (and so the speculative acceptance rates) and the cluster's
condition: the default ``paper`` is the paper's four datasets in equal parts
(``streamserve.workload.datasets``), interleaved at random. Capacity is measured, not
assumed: a closed-loop run with many more clients than the cluster can serve at once
keeps every lane saturated, and its request throughput is the capacity (the bottleneck
is whichever lanes are slowest for this request-size mix, so it is the fair scale).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from streamserve.config import ClusterConfig, FaultConfig, builtin_cluster
from streamserve.metrics import DEFAULT_SLO, RunResult, summarize
from streamserve.request import SLO
from streamserve.workload.base import Workload

# A second, tighter SLO, reported beside the first: >= 67 tokens/s, which a 13B model on
# one A100 meets only with speculation. Under the chat SLO every variant decodes fast
# enough and goodput is set by TTFT alone, which hides what speculation depth buys.
TIGHT_SLO = SLO(ttft=1.0, tpot=0.015)


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    make: Callable[[ClusterConfig], ClusterConfig]


def _full(base: ClusterConfig) -> ClusterConfig:
    return base


def _no_flowguard(base: ClusterConfig) -> ClusterConfig:
    return base.model_copy(update={"router": base.router.model_validate({"name": "round_robin"})})


def _no_specustream(base: ClusterConfig) -> ClusterConfig:
    return base.model_copy(update={"spec_policy": base.spec_policy.model_validate({"name": "fixed", "k": 4})})


def _no_disaggregation(base: ClusterConfig) -> ClusterConfig:
    dp = builtin_cluster("vllm-dp")
    return base.model_copy(update={"lanes": dp.lanes, "name": "streamserve-colocated"})


VARIANTS = (
    Variant("streamserve", "StreamScheduler + FlowGuard + SpecuStream, 2 stream pairs", _full),
    Variant("no-flowguard", "router: round_robin", _no_flowguard),
    Variant("no-specustream", "spec_policy: fixed k=4", _no_specustream),
    Variant("no-disaggregation", "lanes: 4 colocated (vllm-dp)", _no_disaggregation),
)


# Acceptance rates of a different shape from the built-in per-method tables
# (workload/datasets.py): assumed, chat lowest, code highest.
WEAK_DRAFT = {"alpaca": 0.55, "gsm8k": 0.7, "humaneval": 0.85, "sum": 0.75}


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    source: str  # a workload name for resolve_workload: a dataset, or "mix"
    alpha: dict[str, float] | None = None  # acceptance overrides per dataset
    slow_lane: int | None = None  # a lane running at half speed for the whole run


SCENARIOS = {sc.name: sc for sc in (
    Scenario("paper", "the paper's four datasets in equal parts, acceptance of the cluster's draft method "
             "(a draft model: 0.57-0.66; an EAGLE head: 0.81-0.91)", "mix"),
    Scenario("weak-draft", "the four datasets, acceptance 0.55-0.85 (assumed: chat lowest, code highest)",
             "mix", alpha=WEAK_DRAFT),
    Scenario("sum", "arXiv summarisation alone (long prompts)", "sum"),
    Scenario("straggler", "the four datasets; decode lane 1 runs at half speed", "mix", slow_lane=1),
)}


def scenario_workload(scenario: str, n: int, seed: int, rate: float | None = None, cv: float = 3.0,
                      concurrency: int | None = None, slo: SLO | None = None) -> Workload:
    """The scenario's requests: bursty gamma arrivals at ``rate`` (coefficient of variation
    ``cv``: 1 is Poisson, 3 sends most requests in tight bursts with long gaps between),
    or a closed loop of ``concurrency`` clients."""
    from streamserve.workload.resolve import resolve_workload

    sc = SCENARIOS[scenario]
    config = {"alpha": dict(sc.alpha)} if sc.alpha else None
    if concurrency:
        wl = resolve_workload(sc.source, num_requests=n, concurrency=concurrency, seed=seed, config=config)
    else:
        wl = resolve_workload(sc.source, num_requests=n, rate=rate, arrival="gamma", cv=cv, seed=seed,
                              config=config)
    wl.slo = slo
    return wl


def measure_capacity(cluster: ClusterConfig, scenario: str = "paper", n: int = 2000, clients: int = 256,
                     seed: int = 0) -> float:
    """Requests per second the cluster sustains when saturated (closed loop)."""
    from streamserve.sim import run  # the runtime, imported where it is used

    wl = scenario_workload(scenario, n, seed + 1, concurrency=clients)
    return float(summarize(run(cluster, wl, seed))["request_throughput"])


COLUMNS = ("variant", "completed", "rejected", "failed", "p99_e2el_ms", "mean_e2el_ms", "p99_ttft_ms",
           "mean_tpot_ms", "request_goodput", "slo_attainment", "output_throughput", "request_goodput_tight")


def run_ablation(n: int = 10000, load: float = 0.7, cv: float = 3.0, seed: int = 0, slo: SLO = DEFAULT_SLO,
                 scenario: str = "paper", base: ClusterConfig | None = None,
                 variants: tuple[Variant, ...] = VARIANTS, capacity: float | None = None) -> dict[str, Any]:
    """Run every variant on one workload; returns the rows and how the load was set.

    Capacity is measured on the healthy cluster, so a straggler scenario offers the same
    load as the others and shows what the slow lane costs.
    """
    from streamserve.sim import run

    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: unknown {scenario!r} (choose from {', '.join(SCENARIOS)})")
    sc = SCENARIOS[scenario]
    base = base or builtin_cluster("streamserve")
    cap = capacity if capacity is not None else measure_capacity(base, scenario, seed=seed)
    if sc.slow_lane is not None:
        base = base.model_copy(update={"faults": [FaultConfig(lane=sc.slow_lane, at=0.0, kind="slow", factor=2.0)]})
    rate = load * cap
    wl = scenario_workload(scenario, n, seed, rate=rate, cv=cv, slo=slo)
    rows = []
    for v in variants:
        result = run(v.make(base), wl, seed)
        s = summarize(result, slo)
        s["request_goodput_tight"] = summarize(result, TIGHT_SLO)["request_goodput"]
        row = {c: s.get(c) for c in COLUMNS[1:]}
        row["variant"] = v.name
        row["what"] = v.what
        row["mean_k"] = mean_k(result)
        rows.append(row)
    return {"scenario": sc.name, "scenario_what": sc.what, "capacity_rps": cap, "rate_rps": rate, "load": load,
            "cv": cv, "n": n, "seed": seed, "workload": sc.source, "alpha": dict(wl.alpha), "slow_lane": sc.slow_lane,
            "slo": {"ttft_ms": slo.ttft * 1e3 if slo.ttft else None, "tpot_ms": slo.tpot * 1e3 if slo.tpot else None},
            "rows": rows}


def mean_k(result: RunResult) -> float | None:
    """Time-weighted speculation depth over the decoding lanes (None: nothing decoded)."""
    decoding = {u.lane_id for u in result.lanes if u.role != "prefill" and u.steps}
    if not decoding or result.duration <= 0:
        return None
    total = 0.0
    last: dict[int, tuple[float, int]] = {}
    for t, lane, k in result.k_trace:
        if lane in last:
            t0, k0 = last[lane]
            total += k0 * (t - t0)
        last[lane] = (t, k)
    for t0, k0 in last.values():
        total += k0 * (result.duration - t0)
    return total / (result.duration * len(decoding))


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """ablation.json, ablation.csv and ablation.png (p99 E2E and goodput per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "ablation.json", out_dir / "ablation.csv", out_dir / "ablation.png"]
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS) + ["mean_k", "what"])
        w.writeheader()
        for row in report["rows"]:
            w.writerow(row)
    names = [r["variant"] for r in report["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar(names, [r["p99_e2el_ms"] / 1e3 for r in report["rows"]], color="tab:red")
    axes[0].set_ylabel("p99 end-to-end latency (s)")
    axes[1].bar(names, [r["request_goodput"] or 0.0 for r in report["rows"]], color="tab:green")
    axes[1].set_ylabel("goodput (requests/s within SLO)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"Ablation, scenario {report['scenario']}: bursty load (gamma, CV {report['cv']:g}) at "
                 f"{report['load']:.0%} of capacity ({report['rate_rps']:.2f} req/s), {report['n']} requests",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths


def format_table(report: dict[str, Any]) -> str:
    head = ("variant", "done", "rej", "fail", "p99 E2E ms", "mean E2E ms", "p99 TTFT ms", "mean TPOT ms",
            "goodput r/s", "SLO att.", "goodput r/s @TPOT 15ms", "tok/s", "mean k")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in report["rows"]:
        k = r["mean_k"]
        lines.append(" | ".join([
            r["variant"], str(r["completed"]), str(r["rejected"]), str(r["failed"]),
            f"{r['p99_e2el_ms']:.0f}", f"{r['mean_e2el_ms']:.0f}", f"{r['p99_ttft_ms']:.0f}",
            f"{r['mean_tpot_ms']:.1f}", f"{r['request_goodput']:.3f}", f"{r['slo_attainment']:.3f}",
            f"{r['request_goodput_tight']:.3f}",
            f"{r['output_throughput']:.0f}", "-" if k is None else f"{k:.2f}"]))
    return "\n".join(lines)


def add_commands(group: click.Group) -> None:
    """Register ``ablate`` on the CLI group."""

    @group.command("ablate")
    @click.option("-n", "--num-requests", default=10000, show_default=True, type=click.IntRange(min=10),
                  help="Requests per run (p99 of a few thousand moves by a few percent between seeds).")
    @click.option("--load", default=0.7, show_default=True, type=click.FloatRange(min=0.01),
                  help="Arrival rate as a fraction of the measured StreamServe capacity.")
    @click.option("--cv", default=3.0, show_default=True, type=click.FloatRange(min=0.01),
                  help="Coefficient of variation of inter-arrival times (1 = Poisson).")
    @click.option("--scenario", default="paper", show_default=True, type=click.Choice(list(SCENARIOS)),
                  help="Workload mix and cluster condition (see streamserve/experiments/ablate.py).")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--slo", "slo_items", multiple=True, metavar="ttft:MS|tpot:MS",
                  help="Goodput SLO (default ttft:1000 tpot:50).")
    @click.option("--out", "out_dir", default="results/ablation", show_default=True,
                  type=click.Path(file_okay=False, path_type=Path))
    def ablate(num_requests: int, load: float, cv: float, scenario: str, seed: int, slo_items: tuple[str, ...],
               out_dir: Path) -> None:
        """Full StreamServe vs. without FlowGuard, SpecuStream, or disaggregation."""
        from streamserve.metrics import parse_slo

        try:
            slo = parse_slo(slo_items) if slo_items else DEFAULT_SLO
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        report = run_ablation(n=num_requests, load=load, cv=cv, seed=seed, slo=slo, scenario=scenario)
        click.echo(f"scenario {scenario}: {report['scenario_what']}")
        click.echo(f"capacity {report['capacity_rps']:.2f} req/s (closed-loop saturation); "
                   f"offered {report['rate_rps']:.2f} req/s")
        click.echo(format_table(report))
        for p in write_report(report, out_dir):
            click.echo(f"wrote {p}")
