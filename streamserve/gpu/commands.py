"""The live runtime's commands: ``serve``, ``bench`` and ``models prepare``.

``add_commands(main)`` registers them on the streamserve CLI group. Imports of the
heavy parts (FastAPI, httpx, torch) happen inside each command, so ``streamserve
simulate`` never pays for them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from streamserve.config import ConfigError
from streamserve.workload.cli_options import workload_options


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Live config (YAML/TOML): engines, connector, speculation, policies.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where engine logs and k traces go (default: the config's log_dir).")
@click.option("--restart", is_flag=True, help="Start an engine that died again (its lane is used once it answers).")
def serve_cmd(config_path: str, log_dir: str | None, restart: bool) -> None:
    """Start the vLLM engines and the OpenAI-compatible front end of a live config."""
    from streamserve.gpu.config import load_live
    from streamserve.gpu.engines import EngineError
    from streamserve.gpu.serve import serve
    from streamserve.policies.registry import PolicyError
    from streamserve.perfmodel import ProfileError

    try:
        cfg = load_live(config_path)
        serve(cfg, Path(log_dir) if log_dir else None, echo=click.echo, restart=restart)
    except (ConfigError, EngineError, PolicyError, ProfileError) as e:
        _fail(str(e))


def _clip(workload, max_prompt: int | None, max_output: int | None) -> None:
    import numpy as np

    if max_prompt is not None:
        workload.prompt_len = np.minimum(workload.prompt_len, max_prompt)
    if max_output is not None:
        workload.output_len = np.minimum(workload.output_len, max_output)


@click.command("bench")
@click.option("--endpoint", required=True, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
@workload_options
@click.option("-n", "--num-requests", type=click.IntRange(min=1), default=None)
@click.option("--rate", type=float, default=None, help="Requests per second, unless the trace is replayed as timed.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Closed loop of N clients instead of open arrivals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", default=None, help="Model name to request (default: the first the endpoint lists).")
@click.option("--chat", is_flag=True, help="Use /v1/chat/completions instead of /v1/completions.")
@click.option("--ignore-eos", is_flag=True, help="Generate exactly the workload's output lengths.")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=None,
              help="Clip prompt lengths (small models, CPUs).")
@click.option("--max-output-tokens", type=click.IntRange(min=1), default=None, help="Clip output lengths.")
@click.option("--slo", "slo_items", multiple=True, metavar="ttft:MS|tpot:MS", help="SLO for goodput.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-out", show_default=True)
def bench_cmd(endpoint: str, workload_spec: str | None, fmt: str | None, arrival: str | None, cv: float | None,
              strict: bool, num_requests: int | None, rate: float | None, concurrency: int | None, seed: int,
              model: str | None, chat: bool, ignore_eos: bool, max_prompt_tokens: int | None,
              max_output_tokens: int | None, slo_items: tuple[str, ...], out_dir: str) -> None:
    """Replay a workload against an OpenAI-compatible endpoint (ours or plain vLLM);
    write summary.json, requests.csv and k_trace.csv as `simulate` does."""
    from streamserve.gpu.bench import BenchOptions, run_bench, write_k_trace
    from streamserve.gpu.prompts import fill_prompts
    from streamserve.metrics import parse_slo, summarize, write_outputs
    from streamserve.workload.resolve import resolve_workload

    try:
        slo = parse_slo(slo_items)
        workload = resolve_workload(workload_spec, fmt=fmt, num_requests=num_requests, rate=rate,
                                    concurrency=concurrency, seed=seed, arrival=arrival, cv=cv, strict=strict,
                                    warn=lambda m: click.echo(f"warning: {m}", err=True))
    except (ValueError, ConfigError, OSError) as e:
        _fail(str(e))
    _clip(workload, max_prompt_tokens, max_output_tokens)
    prompts = fill_prompts(workload, seed)
    opts = BenchOptions(endpoint=endpoint.rstrip("/"), model=model, chat=chat, ignore_eos=ignore_eos, seed=seed)
    try:
        result, extra = run_bench(workload, prompts, opts)
    except Exception as e:  # the endpoint is down or not OpenAI-compatible
        _fail(f"bench against {endpoint}: {type(e).__name__}: {e}")
    summary = summarize(result, slo)
    summary.update(extra)
    summary["workload"] = workload.name
    out = Path(out_dir)
    write_outputs(result, summary, out)
    write_k_trace(result, out / "k_trace.csv")
    keys = ("completed", "failed", "duration", "request_throughput", "output_throughput", "mean_ttft_ms",
            "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "spec_acceptance_rate")
    click.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1))
    click.echo(f"wrote {out}/summary.json, requests.csv, k_trace.csv")


@click.group("models")
def models_group() -> None:
    """Models the live runtime serves without a model hub."""


@models_group.command("prepare")
@click.argument("name", type=click.Choice(["tiny", "smollm2"]))
@click.option("--force", is_flag=True, help="Rebuild even if cached.")
def prepare_cmd(name: str, force: bool) -> None:
    """Build (tiny) or convert (smollm2) a model into the cache; print its folder."""
    from streamserve.gpu.models import ModelError, prepare

    try:
        click.echo(str(prepare(name, force=force)))
    except ModelError as e:
        _fail(str(e))


def add_commands(group: click.Group) -> None:
    group.add_command(serve_cmd)
    group.add_command(bench_cmd)
    group.add_command(models_group)
