"""``streamserve tune`` and ``streamserve plan``: options in, one driver call, files out.

``add_commands(group)`` registers both on the streamserve CLI. Optuna, Ray and the
simulator are imported inside the commands, so other commands never pay for them.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from streamserve.config import ConfigError, builtin_cluster, load_cluster, read_mapping
from streamserve.metrics import parse_slo
from streamserve.request import SLO
from streamserve.tuning.errors import TuningError
from streamserve.tuning.evaluate import METRICS, WorkloadArgs
from streamserve.workload.cli_options import workload_options


class UserError(click.ClickException):
    """Printed as ``Error: ...`` with exit status 2, like the other commands' user errors."""

    exit_code = 2


def _slo(items: tuple[str, ...], default: SLO | None) -> SLO:
    """``--slo ttft:MS,tpot:MS`` (or the option repeated), else the cluster file's."""
    parts = [p for item in items for p in item.split(",") if p.strip()]
    if parts:
        try:
            return parse_slo(parts)
        except ValueError as e:
            raise UserError(str(e)) from None
    if default is None or (default.ttft is None and default.tpot is None):
        raise UserError("--slo: give an SLO (e.g. --slo ttft:1000,tpot:50): goodput needs one")
    return default


def _cluster_slo(cluster: Any) -> SLO:
    s = cluster.slo
    return SLO(None if s.ttft_ms is None else s.ttft_ms / 1e3, None if s.tpot_ms is None else s.tpot_ms / 1e3)


def _command_line() -> str:
    return "streamserve " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def add_commands(group: click.Group) -> None:
    group.add_command(tune_cmd)
    group.add_command(plan_cmd)


@click.command("tune")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Cluster file whose policy parameters are tuned (default: the built-in streamserve cluster).")
@workload_options
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=None,
              help="Requests per run (generators: default 1000; traces are cut to their first N).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Mean arrival rate, requests/s.")
@click.option("--objective", "objectives", multiple=True, type=click.Choice(sorted(METRICS)),
              help="What to optimise (default goodput); name two for a Pareto front, e.g. goodput and p99_e2e.")
@click.option("--param", "params", multiple=True, metavar="SECTION.KEY[=SPEC]",
              help="Tune only these (default: every parameter the policies declare); SPEC gives a range of "
                   "your own: 'float 0 2', 'int 8 512 log', 'choice fcfs spf'.")
@click.option("--trials", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds each trial runs (0..S-1); its value is the mean, with a 95% CI.")
@click.option("--validation-seeds", type=click.IntRange(min=2), default=8, show_default=True,
              help="Unseen seeds the winner and the starting configuration are re-evaluated on.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local processes running simulations.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Trials asked of the sampler at a time (the study depends on it, not on --workers).")
@click.option("--ray", "ray_address", metavar="ADDRESS|auto", default=None,
              help="Run the simulations as tasks on this Ray cluster instead of local processes.")
@click.option("--sampler", type=click.Choice(("tpe", "nsga2")), default="tpe", show_default=True)
@click.option("--sampler-seed", type=int, default=0, show_default=True)
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/study.db).")
@click.option("--study", "study_name", default="tune", show_default=True, help="Study name in the storage.")
@click.option("--slo", "slo_items", multiple=True, metavar="ttft:MS,tpot:MS",
              help="SLO for goodput and attainment (default: the cluster file's slo).")
@click.option("--live-config", type=click.Path(dir_okay=False), default=None,
              help="Also write best-live.yaml: this live config (serve --config) with the tuned policies.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="results/tune", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def tune_cmd(config: str | None, workload_spec: str | None, fmt: str | None, arrival: str | None, cv: float | None,
             strict: bool, num_requests: int | None, rate: float | None, objectives: tuple[str, ...],
             params: tuple[str, ...], trials: int, seeds: int, validation_seeds: int, workers: int, batch: int,
             ray_address: str | None, sampler: str, sampler_seed: int, storage: str | None, study_name: str,
             slo_items: tuple[str, ...], live_config: str | None, out: str, quiet: bool) -> None:
    """Search the cluster's policy parameters with Optuna, on simulations averaged over seeds;
    re-evaluate the winner on unseen seeds; write trials.csv, tune.png, best.yaml."""
    from streamserve.tuning import report
    from streamserve.tuning.runners import make_runner
    from streamserve.tuning.space import select
    from streamserve.tuning.study import VALIDATION_SEED_BASE, TuneSettings, open_study, validate, winners

    objectives = objectives or ("goodput",)
    if len(objectives) > 2 or len(set(objectives)) != len(objectives):
        raise UserError("--objective: name one objective, or two different ones for a Pareto front")
    try:
        if config:
            cluster, (raw, _) = load_cluster(config), read_mapping(config)
        else:
            cluster = builtin_cluster("streamserve")
            raw = yaml.safe_load(Path(__file__).parents[1].joinpath("configs", "streamserve.yaml").read_text())
        origin = config or "<builtin streamserve>"
        slo = _slo(slo_items, _cluster_slo(cluster))
        workload = WorkloadArgs(workload_spec, fmt, num_requests, rate, arrival, cv, None, cluster.workload, origin)
        workload.build(0, warn=lambda m: click.echo(f"warning: {m}", err=True))  # bad input fails here, once
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = TuneSettings(
            cluster=cluster, workload=workload, objectives=tuple(objectives), params=select(cluster, params),
            trials=trials, seeds=tuple(range(seeds)),
            validation_seeds=tuple(range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + validation_seeds)),
            slo=slo, batch=batch, sampler=sampler, sampler_seed=sampler_seed,
            storage=storage or f"sqlite:///{(out_dir / 'study.db').resolve()}", study_name=study_name)
        study = open_study(settings)
        runner = make_runner(workers, ray_address)
        try:
            outcomes = _run_with_progress(settings, study, runner, quiet)
            report.write_trials_csv(settings, outcomes, out_dir / "trials.csv")  # first: it says why trials failed
            chosen = winners(settings, study)
            if not quiet:
                click.echo(f"re-evaluating {len(chosen)} configuration(s) and the starting one on "
                           f"{validation_seeds} unseen seeds", err=True)
            validations = validate(settings, study, runner, chosen)
        finally:
            runner.close()
        command = _command_line()
        report.write_plot(settings, outcomes, chosen, out_dir / "tune.png")
        report.write_best_yaml(settings, raw, origin, validations[0], command, out_dir / "best.yaml")
        report.write_summary(report.summary(settings, outcomes, validations, command), out_dir / "summary.json")
        if live_config:
            report.write_live_yaml(settings, live_config, validations[0], command, out_dir / "best-live.yaml")
    except (TuningError, ConfigError, OSError) as e:
        raise UserError(str(e)) from None
    for line in report.verdict(settings, validations[0]):
        click.echo(line)
    live = ", best-live.yaml" if live_config else ""
    click.echo(f"wrote {out_dir}/trials.csv, tune.png, best.yaml{live}, summary.json (study: {settings.storage})")


def _run_with_progress(settings: Any, study: Any, runner: Any, quiet: bool) -> list[Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamserve.tuning.study import run_trials

    if quiet:
        return run_trials(settings, study, runner)
    done = sum(1 for t in study.trials if t.state.is_finished())
    best: dict[str, float] = {}

    def best_text() -> str:
        return "best " + ", ".join(f"{m} {v:.4g}" for m, v in best.items()) if best else ""

    with Progress(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[best]}"), console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=settings.trials, completed=done, best="")

        def on_trial(o: Any) -> None:
            if not o.error:
                for m in settings.objectives:
                    v = o.estimate(m).mean
                    if m not in best or (v > best[m] if METRICS[m].maximize else v < best[m]):
                        best[m] = v
            bar.update(task, advance=1, best=best_text())

        return run_trials(settings, study, runner, on_trial)


@click.command("plan")
@click.option("--model", default="opt-13b", show_default=True)
@click.option("--gpu", default="A100-80GB", show_default=True)
@click.option("--gpus", "budget", type=click.IntRange(min=1), required=True, help="GPU budget.")
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="Profile JSON (default: the shipped one).")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Cluster file whose policies, engine, link and speculation every placement uses "
                   "(default: the built-in streamserve cluster).")
@workload_options
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=500, show_default=True,
              help="Requests per run.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds per rate; attainment is their mean.")
@click.option("--slo", "slo_items", multiple=True, required=True, metavar="ttft:MS,tpot:MS")
@click.option("--attainment", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Share of requests that must meet the SLO.")
@click.option("--tolerance", type=click.FloatRange(0.001, 0.5), default=0.02, show_default=True,
              help="Relative precision of the highest rate.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--ray", "ray_address", metavar="ADDRESS|auto", default=None)
@click.option("--out", "out", type=click.Path(file_okay=False), default="results/plan", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def plan_cmd(model: str, gpu: str, budget: int, profile: str | None, config: str | None, workload_spec: str | None,
             fmt: str | None, arrival: str | None, cv: float | None, strict: bool, num_requests: int, seeds: int,
             slo_items: tuple[str, ...], attainment: float, tolerance: float, workers: int, ray_address: str | None,
             out: str, quiet: bool) -> None:
    """Search placements (colocated or disaggregated, lanes per role, TP per role, stream
    pairs) within a GPU budget for the most goodput per GPU under an SLO attainment target."""
    from streamserve.perfmodel import ProfileError
    from streamserve.tuning.plan_report import write_plan
    from streamserve.tuning.placement import run_plan

    slo = _slo(slo_items, None)
    try:
        base = load_cluster(config) if config else builtin_cluster("streamserve")
        base = base.model_copy(update={"model": model, "gpu": gpu, "profile": profile})
        workload = WorkloadArgs(workload_spec, fmt, num_requests, None, arrival, cv, None, base.workload,
                                config or "<builtin streamserve>")
        results = run_plan(base, budget, workload, tuple(range(seeds)), slo, attainment, tolerance, workers,
                           ray_address, progress=not quiet)
        best = write_plan(base, budget, results, Path(out), _command_line(), slo, attainment)
    except (TuningError, ConfigError, ProfileError, OSError) as e:
        raise UserError(str(e)) from None
    from rich.console import Console

    from streamserve.tuning.plan_report import table

    Console().print(table(results, f"{model} on up to {budget} x {gpu}: highest rate with {attainment:.0%} "
                                   f"of requests within the SLO"))
    if best is None:
        click.echo(f"no placement meets the SLO: none reaches {attainment:.0%} attainment at any rate "
                   f"(wrote {out}/plan.csv)")
        sys.exit(1)
    click.echo(f"best: {results[0].placement.name}: {results[0].per_gpu:.3g} req/s per GPU; wrote {best}, "
               f"{out}/plan.csv, {out}/plan.png")
