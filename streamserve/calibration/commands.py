"""The calibration commands: ``profile``, ``calibrate`` and ``fidelity``.

``add_commands(main)`` registers them on the streamserve CLI group. Each problem a user
can cause ends in one line, ``Error: ...``, exit status 2; ``fidelity`` exits 1 when a
``--max-error`` bound is exceeded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from streamserve.config import ConfigError
from streamserve.workload.cli_options import workload_options


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from streamserve.calibration.fidelity import FidelityError
    from streamserve.calibration.profile import ProfileRunError
    from streamserve.calibration.records import ProfileDirError
    from streamserve.gpu.engines import EngineError
    from streamserve.perfmodel import ProfileError
    from streamserve.policies.registry import PolicyError
    from streamserve.workload.resolve import WorkloadError

    return (ConfigError, EngineError, PolicyError, ProfileError, ProfileDirError, ProfileRunError, FidelityError,
            WorkloadError, OSError, ValueError)


@click.command("profile")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Live config whose engines are profiled.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Profile directory (created; an existing one is resumed).")
@click.option("--attach", is_flag=True,
              help="Use a running `streamserve serve` of this config (profile_steps: true) instead of starting engines.")
@click.option("--grid", "size", type=click.Choice(("ci", "small", "full")), default="full", show_default=True,
              help="How many cells: ci (a minute on a CPU), small, full.")
@click.option("--seed", type=int, default=0, show_default=True)
def profile_cmd(config_path: str, out_dir: str, attach: bool, size: str, seed: int) -> None:
    """Drive live engines through a grid of prompt, batch, decode and speculation shapes and
    record every engine step (DIR/steps.jsonl; format in streamserve/calibration/records.py)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamserve.calibration.profile import run_profile
    from streamserve.gpu.config import load_live

    try:
        cfg = load_live(config_path)
        with Progress(TextColumn("profiling {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("(starting engines)", total=None)

            def on_cell(done: int, total: int, cell) -> None:
                bar.update(task, completed=done, total=total, description=cell.id)

            kept = run_profile(cfg, Path(out_dir), size=size, attach=attach, seed=seed, config_path=config_path,
                               on_cell=on_cell)
    except _user_errors() as e:
        _fail(str(e).splitlines()[0] if "\n" in str(e) and "log" not in str(e) else str(e))
    click.echo(f"{kept} steps in {out_dir}/steps.jsonl; next: streamserve calibrate {out_dir} --out profile.json")


@click.command("calibrate")
@click.argument("profile_dir", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Profile JSON to write.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Residual plot (PNG); default: next to --out, named *-residuals.png.")
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the held-out fifth.")
def calibrate_cmd(profile_dir: str, out_path: str, plot_path: str | None, seed: int) -> None:
    """Fit the step model to a profile directory's steps and write a profile JSON."""
    import platform
    import time

    from streamserve.calibration import records
    from streamserve.calibration.fit import profile_json, request_overhead_ms
    from streamserve.calibration.roles import combined, fit_by_role
    from streamserve.calibration.report import coefficient_lines, residual_plot
    from streamserve.specs import MODELS

    try:
        meta, steps = records.read_steps(Path(profile_dir))
        if meta["perf_model"] not in MODELS:
            raise records.ProfileDirError(f"{profile_dir}/meta.json: perf_model {meta['perf_model']!r} is not a "
                                          "model spec of this streamserve")
        cols = records.columns(steps)
        fits = fit_by_role(cols, seed=seed)
        fit = combined(fits, cols)
    except _user_errors() as e:
        _fail(str(e))
    spec_kv = MODELS[meta["perf_model"]].kv_bytes_per_token
    source = (f"streamserve calibrate {profile_dir} ({len(steps)} engine steps of {meta['served_model_name']} on "
              f"{meta['device']}, {platform.node()}, {time.strftime('%Y-%m-%d')})")
    by_cell: dict[str, list] = {}
    for step in steps:
        by_cell.setdefault(step.cell, []).append(step)
    requests_path = Path(profile_dir) / records.REQUESTS
    overhead = request_overhead_ms(records.read_jsonl(requests_path), by_cell) if requests_path.is_file() else None
    data = profile_json(fits, fit, meta, spec_kv, source, overhead)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    png = Path(plot_path) if plot_path else out.with_name(out.stem + "-residuals.png")
    residual_plot(fit, png, f"{meta['served_model_name']} on {meta['device']}: {len(steps)} steps")
    click.echo(f"fitted {meta['perf_model']} on {meta['gpu']} from {fit.n_train} steps in {fit.seconds:.1f} s:")
    for role, role_fit in fits.items():
        if len(fits) > 1:
            click.echo(f" {role} engines ({role_fit.n_train} steps; held out {role_fit.n_test}: median |error| "
                       f"{100 * role_fit.median_ape:.1f}%, p90 {100 * role_fit.p90_ape:.1f}%, total time "
                       f"{role_fit.busy_ratio:.3f} x measured; repeatability {100 * role_fit.noise_floor:.1f}%):")
        for line in coefficient_lines(role_fit):
            click.echo(line)
    if fit.acceptance:
        click.echo("acceptance per class: " + ", ".join(f"{k} {v:.3f}" for k, v in fit.acceptance.items()))
    link = data["calibration"]["link"]
    click.echo(f"KV link: latency {link['latency_ms']:.3f} ms, {link['bandwidth_gbps']:.3g} GB/s")
    if overhead is not None:
        click.echo(f"request overhead (client TTFT beyond the steps that made the first token, single prompts): {overhead:.1f} ms")
    click.echo(f"R^2 {fit.r2_train:.4f} (train), {fit.r2:.4f} (held out); held-out {fit.n_test} steps: "
               f"median |error| {100 * fit.median_ape:.1f}%, p90 {100 * fit.p90_ape:.1f}%, total time "
               f"{fit.busy_ratio:.3f} x measured")
    parts = fit.by_overlap()
    if "overlapped" in parts:
        labels = {"alone": "steps run alone", "overlapped": "steps another engine stepped during"}
        click.echo("held out, by what ran meanwhile: " + "; ".join(
            f"{labels[name]} ({p['steps']}): median |error| {p['median_abs_pct_error']:.1f}%, "
            f"p90 {p['p90_abs_pct_error']:.1f}%" for name, p in parts.items()))
    click.echo(f"repeatability: steps of the same shape differ from their median by {100 * fit.noise_floor:.1f}% "
               "(median): the error even a model predicting each shape's median would have")
    click.echo(f"wrote {out} and {png}")


def _bounds(items: tuple[str, ...]) -> dict[str, float]:
    """``5`` (every latency stat), ``mean=5``, ``p90=10``, ``mean_ttft_ms=5``."""
    bounds: dict[str, float] = {}
    for item in items:
        key, _, value = item.rpartition("=")
        try:
            bounds[key or "*"] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected PCT or KEY=PCT", param_hint="--max-error") from None
    if "*" in bounds:
        pct = bounds.pop("*")
        for stat in ("mean", "median", "p90", "p99"):
            bounds.setdefault(stat, pct)
    return bounds


@click.command("fidelity")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Live config.")
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
              help="Profile written by `streamserve calibrate` for this config's model and device.")
@workload_options
@click.option("-n", "--num-requests", type=click.IntRange(min=1), default=None)
@click.option("--rate", type=float, default=None, help="Requests per second (generated workloads).")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=None, help="Clip prompt lengths.")
@click.option("--max-output-tokens", type=click.IntRange(min=1), default=None, help="Clip output lengths.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--attach", is_flag=True, help="Use a running `streamserve serve` of this config.")
@click.option("--max-error", "max_error", multiple=True, metavar="PCT|KEY=PCT",
              help="Exit 1 when |% error| exceeds this: PCT for every latency stat, or mean=5, p90=10, "
                   "mean_ttft_ms=5, request_throughput=5 ...")
@click.option("--replay-live", "replay_live", type=click.Path(file_okay=False), default=None,
              help="Do not run live: simulate again the live run recorded in this earlier --out (another profile).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="fidelity-out", show_default=True)
def fidelity_cmd(config_path: str, profile_path: str, workload_spec: str | None, fmt: str | None,
                 arrival: str | None, cv: float | None, strict: bool, num_requests: int | None, rate: float | None,
                 max_prompt_tokens: int | None, max_output_tokens: int | None, seed: int, attach: bool,
                 max_error: tuple[str, ...], replay_live: str | None, out_dir: str) -> None:
    """Run a workload live and in the simulator (same shape, policies, seed, arrival times and
    output lengths) and compare: table with % error, CDF plots, fidelity.json."""
    import numpy as np

    from streamserve.calibration.fidelity import bound_violations, run_fidelity
    from streamserve.calibration.report import markdown_table, step_check_line
    from streamserve.gpu.config import load_live
    from streamserve.workload.resolve import resolve_workload

    bounds = _bounds(max_error)
    try:
        cfg = load_live(config_path)
        if not Path(profile_path).is_file():
            raise FileNotFoundError(f"profile file not found: {profile_path}")
        if replay_live is not None:
            result = run_fidelity(cfg, Path(profile_path), None, Path(out_dir), seed=seed,
                                  echo=lambda m: click.echo(m, err=True), replay_live=Path(replay_live))
        else:
            workload = resolve_workload(workload_spec, fmt=fmt, num_requests=num_requests, rate=rate, seed=seed,
                                        arrival=arrival, cv=cv, strict=strict,
                                        warn=lambda m: click.echo(f"warning: {m}", err=True))
            if workload.arrival is None:
                raise ValueError("fidelity needs open arrivals (a rate or a timed trace), not a closed loop")
            if max_prompt_tokens is not None:
                workload.prompt_len = np.minimum(workload.prompt_len, max_prompt_tokens)
            if max_output_tokens is not None:
                workload.output_len = np.minimum(workload.output_len, max_output_tokens)
            result = run_fidelity(cfg, Path(profile_path), workload, Path(out_dir), seed=seed, attach=attach,
                                  echo=lambda m: click.echo(m, err=True))
    except _user_errors() as e:
        _fail(str(e).splitlines()[0])
    click.echo(markdown_table(result["rows"]))
    click.echo(step_check_line(result["live_step_check"]))
    click.echo(f"wrote {out_dir}/fidelity.json, table.md and {', '.join(result['plots'])}")
    bad = bound_violations(result["rows"], bounds)
    if bad:
        _fail("fidelity bound exceeded: " + "; ".join(bad), code=1)


def add_commands(group: click.Group) -> None:
    group.add_command(profile_cmd)
    group.add_command(calibrate_cmd)
    group.add_command(fidelity_cmd)
