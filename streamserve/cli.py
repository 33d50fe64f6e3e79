"""Command line: parse, load the config, call one runner, report.

Every user mistake ends in one line, ``Error: <where>: <what>``, and exit status 2;
tracebacks are for bugs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from streamserve.config import ARCHITECTURES, ClusterConfig, ConfigError, builtin_cluster, parse_cluster, read_mapping
from streamserve.metrics import DEFAULT_SLO, FORMATS, describe_slo, parquet_modules, parse_slo, summarize, write_outputs
from streamserve.perfmodel import ProfileError
from streamserve.policies.registry import PolicyError
from streamserve.request import SLO
from streamserve.workload.cli_options import workload_options
from streamserve.workload.datasets import window_note
from streamserve.workload.resolve import WorkloadError, resolve_workload

USER_ERRORS = (ConfigError, ProfileError, PolicyError, WorkloadError, OSError)
PROGRESS_FROM = 20_000  # requests: below this a run is over before a bar helps
PLOTS_FROM = 10_000  # requests: from this size on, simulate draws its plots unless --no-plots


def cluster_from(arch: str, config: str | None) -> ClusterConfig:
    """The cluster to run, its policy options checked too (file:line: field: problem)."""
    from streamserve.policycheck import check_policies

    if config:
        data, text = read_mapping(config)
        cluster = parse_cluster(data, config, text)
        check_policies(cluster, config, text)
    else:
        cluster = builtin_cluster(arch)
        check_policies(cluster, f"<builtin {arch}>")
    return cluster


def slo_from(items: tuple[str, ...], cluster: ClusterConfig) -> tuple[SLO, str]:
    """The run's SLO and where it came from: ``--slo``, else the cluster's ``slo:``, else
    ``DEFAULT_SLO``. It goes on every request, so the scheduler sees it (``overload:
    reject``, ``order: edf``) and goodput is measured against it."""
    if items:
        try:
            return parse_slo(items), "--slo"
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    s = cluster.slo
    if s.ttft_ms is not None or s.tpot_ms is not None:
        return SLO(None if s.ttft_ms is None else s.ttft_ms / 1e3, None if s.tpot_ms is None else s.tpot_ms / 1e3), "slo:"
    return SLO(DEFAULT_SLO.ttft, DEFAULT_SLO.tpot), "default"


def prepare_out(out: str) -> Path:
    """Create the output directory before a long run, so a bad --out fails at once."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".streamserve-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise click.BadParameter(f"{out}: {e.strerror or e}", param_hint="--out") from None
    return path


def summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    for col in ("mean", "median", "p99"):
        table.add_column(col, justify="right")
    for name, label in (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("itl", "ITL (ms)"), ("e2el", "E2E (ms)")):
        table.add_row(label, *(f"{summary[f'{s}_{name}_ms']:.1f}" for s in ("mean", "median", "p99")))
    table.add_section()
    rows = [
        ("completed / failed / rejected", f"{summary['completed']} / {summary['failed']} / {summary['rejected']}"),
        ("request throughput (req/s)", f"{summary['request_throughput']:.2f}"),
        ("output throughput (tok/s)", f"{summary['output_throughput']:.1f}"),
        ("mean queueing / KV transfer (ms)", f"{summary['mean_queue_ms']:.1f} / {summary['mean_transfer_ms']:.1f}"),
    ]
    if "request_goodput" in summary:
        rows.append(("goodput (req/s) / SLO attainment", f"{summary['request_goodput']:.2f} / {summary['slo_attainment']:.1%}"))
    if "spec_acceptance_rate" in summary:
        rows.append(("speculative acceptance rate", f"{summary['spec_acceptance_rate']:.3f}"))
    rows.append(("lane utilisation", "  ".join(f"{ln['lane']}:{ln['role'][0]} {ln['utilisation']:.0%}" for ln in summary["lanes"])))
    for label, value in rows:
        table.add_row(label, value, "", "")
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamserve")
def main_group() -> None:
    """streamserve: disaggregated, speculation-aware LLM serving, simulated or live."""


@main_group.command()
@click.option("--arch", type=click.Choice(ARCHITECTURES), default="streamserve", show_default=True,
              help="Built-in cluster to simulate (ignored with --config).")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="Cluster config file (YAML or TOML).")
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=None,
              help="Requests: generators make this many (default 1000); traces are cut to their first N.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean arrival rate, requests/s (default 5 for generators; traces replay as recorded).")
@workload_options
@click.option("--concurrency", type=click.IntRange(min=1), help="Closed loop of N clients instead of open arrivals.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--slo", multiple=True, metavar="ttft:MS|tpot:MS",
              help="SLO for the scheduler and goodput, e.g. --slo ttft:200 --slo tpot:50 "
                   "(default: the cluster's slo:, else ttft:1000 tpot:50).")
@click.option("--out", type=click.Path(file_okay=False), default="results/simulate", show_default=True,
              help="Directory for summary.json, the request records and plots.")
@click.option("--out-format", "out_format", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="Request records as requests.csv, or requests.parquet (needs pyarrow).")
@click.option("--plots/--no-plots", default=None,
              help=f"Write latency CDFs, k over time and lane usage PNGs (default: on from {PLOTS_FROM:,} requests).")
@click.option("--quiet", "-q", is_flag=True, help="No table, no progress bar.")
def simulate(arch: str, config: str | None, num_requests: int | None, rate: float | None,
             workload_spec: str | None, fmt: str | None, arrival: str | None, cv: float | None, strict: bool,
             concurrency: int | None, seed: int, slo: tuple[str, ...], out: str, out_format: str,
             plots: bool | None, quiet: bool) -> None:
    """Simulate a cluster on a workload and write summary.json and the request records."""
    from streamserve.sim import run

    if out_format == "parquet":
        parquet_modules()  # fail now, not after the run
    out_dir = prepare_out(out)
    cluster = cluster_from(arch, config)
    slo_obj, slo_origin = slo_from(slo, cluster)
    console = Console(stderr=True)
    if not quiet:
        console.print(f"SLO: {describe_slo(slo_obj)} ({slo_origin})", highlight=False)
    workload = resolve_workload(workload_spec, fmt=fmt, num_requests=num_requests, rate=rate,
                                concurrency=concurrency, seed=seed, arrival=arrival, cv=cv, strict=strict,
                                config=cluster.workload, config_origin=config or f"<builtin {arch}>",
                                warn=lambda m: console.print(f"[yellow]warning:[/yellow] {m}", highlight=False, soft_wrap=True))
    workload.slo = slo_obj
    over = window_note(workload, cluster.model)
    if over:
        console.print(f"[yellow]warning:[/yellow] {over}", highlight=False, soft_wrap=True)
    if quiet or len(workload) < PROGRESS_FROM:
        result = run(cluster, workload, seed)
    else:
        with Progress("simulating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("", total=len(workload))
            step = max(len(workload) // 200, 1)
            result = run(cluster, workload, seed,
                         on_settled=lambda _, n: bar.update(task, completed=n) if n % step == 0 else None)
    summary = summarize(result, slo_obj)
    summary.update({"arch": cluster.name, "workload": workload.name, "seed": seed, "num_requests": len(workload)})
    records = write_outputs(result, summary, out_dir, out_format)
    written = [out_dir / "summary.json", records]
    title = f"{cluster.name} on {workload.name} ({len(workload)} requests, seed {seed})"
    if plots or (plots is None and len(workload) >= PLOTS_FROM):
        from streamserve.plots import write_plots

        written += write_plots(result, out_dir, title)
    if not quiet:
        Console().print(summary_table(summary, title))
        console.print(f"wrote {', '.join(str(p) for p in written)}")


def _register_subcommands() -> None:
    """Commands that live with the code they run."""
    from streamserve.experiments.ablate import add_commands as add_ablate_commands
    from streamserve.gpu.commands import add_commands as add_live_commands
    from streamserve.calibration.commands import add_commands as add_calibration_commands

    add_ablate_commands(main_group)
    add_live_commands(main_group)
    from streamserve.tuning.commands import add_commands as add_tuning_commands
    add_tuning_commands(main_group)
    add_calibration_commands(main_group)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: click in non-standalone mode, so every error is one line."""
    try:
        main_group.main(args=argv, prog_name="streamserve", standalone_mode=False)
        sys.exit(0)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
